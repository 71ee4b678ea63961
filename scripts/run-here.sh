#!/usr/bin/env bash
# Installs what is missing (Debian 12, as root), builds Eddy, and runs the agent on
# this machine: flows are printed as JSON lines every 5 s, and the local API answers
# on http://127.0.0.1:9780 (/status, /flows). Extra arguments go to `eddy-agent run`.
# Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

if [ "$(id -u)" -ne 0 ]; then
  echo "run-here.sh: the agent loads eBPF programs and needs root: run it as root (e.g. sudo scripts/run-here.sh)" >&2
  exit 1
fi
scripts/install-deps.sh build
# The same build as scripts/test.sh (debug, whole workspace, FIPS feature): running both compiles the
# AWS SDK once. Release binaries and images: scripts/build-images.sh.
cargo build --workspace --locked --features eddy-agent/fips --bins
echo "eddy-agent: API on http://127.0.0.1:9780 (try: curl -s 127.0.0.1:9780/flows); flows below every 5 s" >&2
exec target/x86_64-unknown-linux-gnu/debug/eddy-agent run --output jsonl --export-interval 5s "$@"
