#!/usr/bin/env bash
# HTTPS, wharf vs nginx vs Caddy, each terminating TLS with the same kind of certificate (an
# ECDSA P-256 leaf for bench.localhost signed by wharf's CA: wharf issues its own, the others
# get one made with openssl from the CA's key) and forwarding to the same HTTP/1.1 backend
# (nginx answering "ok", kept alive upstream). h2load drives every case; it sends SNI
# bench.localhost from the URL and connects to 127.0.0.1 (--connect-to), so nothing on the
# machine has to resolve the name. Cases:
#   h1 keep-alive    h2load --h1, 32 connections, one request in flight on each
#   h1 resumed       h2load --h1 with "Connection: close": the server closes after each
#                    response and h2load reconnects, so every request is a new TCP
#                    connection and a TLS 1.3 handshake; each h2load client keeps its TLS
#                    session, so all but its first handshake are resumptions (PSK with
#                    X25519, no certificate; all three servers resume), as a browser's are
#   h1 full          h2load --h1 with as many clients as requests, started at a fixed rate
#                    (-r, 600 per second): each client has one connection and a new session,
#                    so each request is a full TLS 1.3 handshake (certificate, ECDSA
#                    signature); req/s is then the offered rate while a server keeps up,
#                    and CPU per request is CPU per full handshake
# In both handshake cases handshakes/s = req/s.
#   h2 32x10         h2load, 32 connections x 10 streams
# Per run: req/s, p99 (from h2load's per-request log), the proxy's CPU time per request
# (utime+stime of its processes from /proc/PID/stat, before and after), and how often per
# request it went to sleep for want of events (the voluntary context switches of all its
# threads, /proc/PID/task/*/status): the next writer to a sleeping proxy, h2load or the
# backend, pays on the first CPU for waking it (bench/wakeups.sh). Rounds rotate the
# order of the targets; medians are reported. h2load and the backend run on the first CPU,
# the proxies on the second (one worker each: nginx worker_processes 1, Caddy's Go runtime
# sees one CPU). Everything listens on 127.0.0.1, on ports the OS picks. nginx is told to send
# the backend the forwarding headers wharf sends (X-Forwarded-For, -Proto, -Host, Via; Caddy
# adds the X-Forwarded ones by default), so the backend on CPU 0 parses a request of the same
# size from each (without them nginx's upstream request was 76 bytes to wharf's 193).
#
#   bash bench/https.sh [--rounds N] [--scale F]   (F multiplies the request counts)
#   (needs nginx, h2load, openssl and Caddy: bash ../shared/bench/install.sh)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
rounds=3 scale=1
while (($#)); do
  case $1 in
    --rounds) rounds=$2 ;;
    --scale) scale=$2 ;;
    *) echo "bench/https.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
peers=${BENCH_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/proxy-bench-peers}
caddy=$peers/caddy-pypi/bin/caddy
[[ -x $caddy ]] || caddy=$(command -v caddy || true)
for tool in nginx h2load openssl taskset "$caddy"; do
  command -v "$tool" >/dev/null || { echo "bench/https.sh: needs ${tool:-caddy} (bash ../shared/bench/install.sh)" >&2; exit 1; }
done
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
wharf=$root/target/release/wharf
scratch
cpus=$(nproc)
client_cpu=0 proxy_cpu=$((cpus > 1 ? 1 : 0))
host=bench.localhost

backend=$(free_port) nginx_port=$(free_port) caddy_port=$(free_port) wharf_port=$(free_port)
export WHARF_STATE_DIR=$work/wharf/state WHARF_RUNTIME_DIR=$work/wharf/run
ca=$("$wharf" ca)
# The peers' leaf: P-256, SAN bench.localhost, signed by wharf's CA (as wharf's own are).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/leaf.key" 2>/dev/null
openssl req -new -key "$work/leaf.key" -subj "/CN=$host" -out "$work/leaf.csr"
openssl x509 -req -in "$work/leaf.csr" -CA "$ca" -CAkey "$WHARF_STATE_DIR/ca/wharf-ca-key.pem" \
  -CAcreateserial -days 2 -sha256 -out "$work/leaf.pem" 2>/dev/null -extfile <(printf '%s\n' \
    "subjectAltName=DNS:$host" basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature \
    extendedKeyUsage=serverAuth)
openssl verify -CAfile "$ca" "$work/leaf.pem" >/dev/null
chmod -R a+rX "$work"

backend_conf "$work/backend" "$backend"
nginx_conf "$work/nginx" "ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $work/leaf.pem; ssl_certificate_key $work/leaf.key;
  upstream backend { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$nginx_port ssl http2 backlog=4096; server_name $host; location / {
    proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_buffering off; proxy_request_buffering off;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
    proxy_set_header Via \"1.1 nginx\"; } }"
taskset -c $client_cpu nginx -p "$work/backend" -c "$work/backend/nginx.conf"
taskset -c $proxy_cpu nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"

mkdir -p "$work/caddy/home"
cat >"$work/caddy/Caddyfile" <<CONF
{
	admin off
	auto_https off
	skip_install_trust
	grace_period 1s
	servers {
		protocols h1 h2
	}
}
https://$host:$caddy_port {
	bind 127.0.0.1
	tls $work/leaf.pem $work/leaf.key
	reverse_proxy 127.0.0.1:$backend {
		transport http {
			keepalive 75s
			keepalive_idle_conns 128
			keepalive_idle_conns_per_host 128
		}
	}
}
CONF
HOME=$work/caddy/home XDG_DATA_HOME=$work/caddy XDG_CONFIG_HOME=$work/caddy \
  taskset -c $proxy_cpu "$caddy" run --config "$work/caddy/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
caddy_pid=$!
pids+=("$caddy_pid")

taskset -c $proxy_cpu "$wharf" proxy --listen "127.0.0.1:$wharf_port" >"$work/wharf.log" 2>&1 &
wharf_pid=$!
pids+=("$wharf_pid")
up() { for _ in $(seq 300); do curl -s -o /dev/null "$@" && return; sleep 0.1; done; curl -sS -o /dev/null "$@"; }
up "127.0.0.1:$wharf_port" || { echo "bench/https.sh: wharf did not start:" >&2; cat "$work/wharf.log" >&2; exit 1; }
"$wharf" alias bench "127.0.0.1:$backend" >/dev/null 2>&1
nginx_pid=$(cat "$work/nginx/nginx.pid")
declare -A port=([wharf]=$wharf_port [nginx]=$nginx_port [caddy]=$caddy_port)
# The processes whose CPU time counts as the proxy's (nginx: master and worker).
declare -A procs=([wharf]=$wharf_pid [nginx]="$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" [caddy]=$caddy_pid)
for t in wharf nginx caddy; do
  up --cacert "$ca" --connect-to "$host:${port[$t]}:127.0.0.1:${port[$t]}" "https://$host:${port[$t]}/" || true
  body=$(curl -sS --cacert "$ca" --connect-to "$host:${port[$t]}:127.0.0.1:${port[$t]}" "https://$host:${port[$t]}/" 2>&1 || true)
  [[ $body == ok ]] || { echo "bench/https.sh: $t does not answer ok over HTTPS: $body" >&2; cat "$work/$t.log" "$work/nginx/error.log" 2>/dev/null >&2; exit 1; }
done

# ticks PIDS...: their utime+stime, in clock ticks (a process's own line counts all its threads).
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done; echo $t; }
# sleeps PIDS...: the voluntary context switches of all their threads.
sleeps() { local p; for p in "$@"; do cat /proc/"$p"/task/*/status; done | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }

# CASE: name|requests|h2load arguments (URL added by run). Request counts, not durations:
# h2load's timed mode (-D) stalls once servers close connections (1.52).
cases=("h1 keep-alive, 32 conns|60000|--h1 -c 32 -m 1"
  "h1 new connection per request, resumed handshakes, 32 conns|6000|--h1 -c 32 -m 1 -H connection:close"
  "h1 full handshakes, one per client, 600/s offered|3000|--h1 -c = -r 60 --rate-period 100ms"
  "h2, 32 conns x 10 streams|100000|-c 32 -m 10")
# busy0: CPU 0's busy and total jiffies, from /proc/stat (as bench/cpus.sh reads them).
busy0() { awk '/^cpu0 / {t=0; for (i=2;i<=9;i++) t+=$i; printf "%d %d", t-$5-$6, t}' /proc/stat; }
# run TARGET ARGS: one measurement, "req/s p99-µs cpu-µs/req cpu0-busy-% sleeps/req".
run() {
  local t=$1 out before after cpu0 slept
  # shellcheck disable=SC2086
  before=$(ticks ${procs[$t]}) cpu0=$(busy0) slept=$(sleeps ${procs[$t]})
  rm -f "$work/h2load.log"
  # shellcheck disable=SC2086
  out=$(taskset -c $client_cpu h2load $2 --log-file "$work/h2load.log" \
    --connect-to "127.0.0.1:${port[$t]}" "https://$host:${port[$t]}/" 2>&1) || true
  # shellcheck disable=SC2086
  after=$(ticks ${procs[$t]}) cpu0="$cpu0 $(busy0)" slept=$(($(sleeps ${procs[$t]}) - slept))
  grep -q ", 0 failed, 0 errored" <<<"$out" && grep -q "status codes: [1-9][0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" <<<"$out" ||
    { echo "bench/https.sh: $t failed requests ($2):" >&2; echo "$out" >&2; exit 1; }
  # h2load's log: start µs, status, µs until the end of the response.
  local p99
  p99=$(cut -f3 "$work/h2load.log" | sort -n | awk '{a[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; print a[i]}')
  awk -v p99="$p99" -v d="$((after - before))" -v hz="$(getconf CLK_TCK)" -v c="$cpu0" -v s="$slept" '
    /^requests:/ {n = $8} /^finished in/ {rps = $4}
    END {split(c, x, " "); printf "%.0f %d %.1f %.0f %.3f\n", rps, p99, d / hz * 1e6 / n, 100 * (x[3] - x[1]) / (x[4] - x[2]), s / n}' <<<"$out"
}

echo "h2load $(h2load --version | awk '{print $2}'), nginx $(nginx -v 2>&1 | sed 's/.*\///'), caddy $("$caddy" version | awk '{print $1}'), $rounds rounds; h2load and backend on cpu $client_cpu, proxies on cpu $proxy_cpu"
targets=(wharf nginx caddy)
declare -A runs
for round in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    IFS='|' read -r name n args <<<"$c"
    n=$(echo "$n * $scale / 1" | bc)
    args="-n $n ${args/-c =/-c $n}"
    for k in 0 1 2; do
      t=${targets[$(((k + round - 1) % 3))]}
      line=$(run "$t" "$args")
      runs[$name|$t]+=$line$'\n'
      echo "round $round, $name, $t: req/s p99-µs cpu-µs/req cpu0-% sleeps/req = $line" >&2
    done
  done
done

# median COLUMN: the median of one column of a target's runs.
median() { awk -v c="$1" 'NF {print $c}' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
span() { awk 'NF {print $1}' | sort -g | sed -n '1p;$p' | paste -sd- ; }
printf '\n| case | target | req/s | / nginx | spread req/s | p99 µs | proxy CPU µs/req | proxy CPU busy | cpu 0 busy (h2load, backend) | proxy sleeps/req |\n|---|---|---:|---:|---|---:|---:|---:|---:|---:|\n'
for c in "${cases[@]}"; do
  name=${c%%|*}
  n=$(median 1 <<<"${runs[$name|nginx]}")
  for t in wharf nginx caddy; do
    r=${runs[$name|$t]}
    printf '| %s | %s | %.0f | %.2f | %s | %.0f | %.1f | %.0f %% | %.0f %% | %.3f |\n' "$name" "$t" "$(median 1 <<<"$r")" \
      "$(echo "$(median 1 <<<"$r") / $n" | bc -l)" "$(span <<<"$r")" "$(median 2 <<<"$r")" "$(median 3 <<<"$r")" \
      "$(echo "$(median 1 <<<"$r") * $(median 3 <<<"$r") / 10000" | bc -l)" "$(median 4 <<<"$r")" "$(median 5 <<<"$r")"
  done
done
echo
echo "(handshake cases: each request is a new TLS 1.3 connection, so handshakes/s = req/s and CPU per request = CPU per handshake; proxy CPU busy = req/s x CPU per request, of its one CPU)"
