#!/usr/bin/env bash
# Run wharf's whole test suite on a fresh machine: provision the real peers the tests use
# (curl, h2load, systemd's tools, headless Chromium, NSS's certutil and vfychain, openssl,
# update-ca-certificates, puma, a project-local Python venv with gunicorn, uv, websockets and
# grpcio, and project-local npm packages: Vite), then `cargo test`. Extra arguments go to
# cargo test.
#
# `--soak` adds the soak tier: tests too long for every run (`#[ignore]`d, such as a minute of
# load with the proxy's memory watched). Run it before a release.
set -euo pipefail

args=()
soak=false
for arg in "$@"; do
  if [[ $arg == --soak ]]; then soak=true; else args+=("$arg"); fi
done
if $soak; then
  # The ignored tests too: after the caller's `--` if there is one, else after a new one.
  has_separator=false
  for arg in "${args[@]}"; do [[ $arg == -- ]] && has_separator=true; done
  $has_separator || args+=(--)
  args+=(--include-ignored)
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v systemd-socket-activate >/dev/null || missing+=(systemd)
command -v python3 >/dev/null || missing+=(python3)
command -v chromium >/dev/null || missing+=(chromium)
command -v certutil >/dev/null && command -v vfychain >/dev/null || missing+=(libnss3-tools)
command -v openssl >/dev/null || missing+=(openssl)
command -v npm >/dev/null || missing+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v puma >/dev/null || missing+=(puma ruby-rack)
command -v update-ca-certificates >/dev/null || missing+=(ca-certificates)
command -v git >/dev/null || missing+=(git)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "tests/run.sh: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: the tests need ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

venv=target/test-venv
stamp=$venv/.requirements
if ! cmp -s tests/requirements.txt "$stamp" 2>/dev/null; then
  echo "tests/run.sh: preparing $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$stamp"
fi

# npm packages (tests/node/package.json) go into target/test-node, as the venv does. Vite 8
# needs Node.js 20.19 or later (Debian 12's own nodejs is 18).
node_modules=target/test-node
stamp=$node_modules/.package.json
if ! cmp -s tests/node/package.json "$stamp" 2>/dev/null; then
  echo "tests/run.sh: preparing $node_modules"
  mkdir -p "$node_modules"
  cp tests/node/package.json "$node_modules/package.json"
  (cd "$node_modules" && npm install --no-audit --no-fund --loglevel=error)
  cp tests/node/package.json "$stamp"
fi

exec cargo test "${args[@]}"
