#!/usr/bin/env bash
# wharf's proxy side by side with a direct connection, nginx and HAProxy (choose peers with
# BENCH_TARGETS, e.g. direct,nginx,haproxy,caddy,portless,socket-proxyd,wharf), on loopback, with
# ../shared/bench/run.sh: wrk for keep-alive small responses, one connection per request,
# 1 MiB bodies and a single connection; alternating rounds; medians, spread and ratios.
# Extra arguments go to ../shared/bench/run.sh (--rounds, --duration, --cases, ...).
# Results: bench/results/<timestamp>/report.md
# Then the HTTPS cases (bench/https.sh: wharf, nginx and Caddy terminating TLS; h2load),
# unless BENCH_HTTPS=0; `bash bench/run.sh https [--rounds N]` runs only those.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ ${1:-} == https ]] && shift && exec bash "$root/bench/https.sh" "$@"
shared=$root/../shared/bench
[[ -x $shared/run.sh ]] || { echo "bench/run.sh: needs ../shared/bench beside the repository" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null || "$shared/install.sh"

wharf=$root/target/release/wharf
# Each run gets private state in the harness's scratch dir ({dir}); the route is an alias, so
# the proxy forwards exactly as it does for `wharf run` instances.
env="WHARF_STATE_DIR={dir}/state WHARF_RUNTIME_DIR={dir}/run"
"$shared/run.sh" \
  --targets "${BENCH_TARGETS:-direct,nginx,haproxy,wharf}" \
  --out "$root/bench/results/$(date +%Y%m%d-%H%M%S)" \
  --target wharf \
  --cmd "$env exec $wharf proxy --listen 127.0.0.1:{port}" \
  --setup "h={host}; $env $wharf alias \"\${h%.localhost}\" {backend}" \
  --version-cmd "$wharf --version" \
  "$@"
case " $* " in *" --help "* | *" -h "* | *" --list "*) exit 0 ;; esac
[[ ${BENCH_HTTPS:-1} == 0 ]] || bash "$root/bench/https.sh"
