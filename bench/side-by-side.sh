# Sourced by bench/syscalls.sh and bench/peers.sh, which set `me` (the script's name), `tools`
# (the commands it needs, with `apt` the packages that bring them), `root`, `shared` and
# `proxies` first. Starts ../shared/bench's backend, placed as in its runs (proxy on CPU 1,
# backend on CPU 0, one worker or thread), and defines start_target to start each proxy; wharf
# runs as bench/run.sh runs it (an alias to the backend): $WHARF_BIN, or this repository's
# release build, built now when `proxies` names wharf. BENCH_WORK is a scratch directory removed
# on exit, with everything started there stopped.

for tool in $tools; do
  command -v "$tool" >/dev/null || { echo "$me: needs $tool (apt-get install $apt)" >&2; exit 1; }
done
[[ -d $shared/lib ]] || { echo "$me: needs ../shared/bench beside the repository" >&2; exit 1; }
if [[ -z ${WHARF_BIN:-} && $proxies == *wharf* ]]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi
wharf=${WHARF_BIN:-$root/target/release/wharf}

# shellcheck source=/dev/null
source "$shared/lib/common.sh"
# shellcheck source=/dev/null
source "$shared/lib/backend.sh"
BENCH_WORK=$(mktemp -d)
trap 'bench_stop_all; rm -rf "$BENCH_WORK"' EXIT
mkdir -p "$BENCH_WORK/logs"
export BENCH_WORK BENCH_HOST=bench.localhost BENCH_BACKEND_ADDR=127.0.0.1
export BENCH_PROXY_CPUS=1 BENCH_BACKEND_CPUS=0 BENCH_PROXY_NCPU=1
BENCH_BACKEND_PORT=$(bench_free_port)
export BENCH_BACKEND_PORT
backend_start "$BENCH_BACKEND_PORT"

target_wharf_start() {
  local port=$1 dir="$BENCH_WORK/t-wharf"
  mkdir -p "$dir"
  bench_spawn "$BENCH_GROUP" proxy env WHARF_STATE_DIR="$dir/state" WHARF_RUNTIME_DIR="$dir/run" \
    "$wharf" proxy --listen "127.0.0.1:$port"
  bench_wait_port "$port" 30 "$BENCH_GROUP"
  WHARF_STATE_DIR="$dir/state" WHARF_RUNTIME_DIR="$dir/run" \
    "$wharf" alias "${BENCH_HOST%.localhost}" "127.0.0.1:$BENCH_BACKEND_PORT" >/dev/null
}

# start_target PROXY: start PROXY (wharf, or one of ../shared/bench/targets) in a group of its
# own, BENCH_GROUP, and wait for it; its port in `port`.
start_target() {
  [[ $1 == wharf ]] || source "$shared/targets/$1.sh"
  BENCH_GROUP=$1
  port=$(bench_free_port)
  "target_$1_start" "$port"
  bench_wait_port "$port" 30 "$BENCH_GROUP"
}
