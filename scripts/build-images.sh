#!/usr/bin/env bash
# Builds the Eddy container images with docker or podman.
#
# Usage: scripts/build-images.sh [options]
#   --tag TAG            image tag (default: the workspace version, e.g. 0.1.0)
#   --prebuilt DIR       pack binaries already built on this machine from DIR (e.g.
#                        target/x86_64-unknown-linux-gnu/release): no base image is pulled
#   --engine ENGINE      docker or podman (default: whichever is found, podman first)
#   --repository PREFIX  image name prefix, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/ (default none)
#   -h, --help           this text
# Builds eddy-agent:TAG (agent/Dockerfile) and eddy-fips-proxy:TAG (fips-proxy/Dockerfile; with --prebuilt,
# only when DIR holds eddy-fips-proxy: `cargo build --release -p eddy-fips-proxy`).
# Extra engine arguments can be given in ENGINE_ARGS (e.g. "--runtime runc --cgroup-manager cgroupfs").
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() {
  echo "build-images.sh: $*" >&2
  echo "(run with --help for usage)" >&2
  exit 2
}
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

here="$(cd "$(dirname "$0")/.." && pwd)"
tag="" prebuilt="" engine="" repository=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --prebuilt) need_value "$@"; prebuilt="$2"; shift 2 ;;
    --engine) need_value "$@"; engine="$2"; shift 2 ;;
    --repository) need_value "$@"; repository="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done

if [ -z "$engine" ]; then
  for e in podman docker; do
    if command -v "$e" >/dev/null 2>&1 && "$e" version >/dev/null 2>&1; then engine="$e"; break; fi
  done
  [ -n "$engine" ] || die "neither podman nor docker works here; install one (Debian: apt-get install podman runc)"
fi
case "$engine" in docker|podman) ;; *) die "--engine must be docker or podman, not $engine" ;; esac
if [ -z "$tag" ]; then
  tag="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -1)"
fi
# shellcheck disable=SC2206 # ENGINE_ARGS is a word list by design
engine_args=(${ENGINE_ARGS:-})

if [ -n "$prebuilt" ]; then
  [ -x "$prebuilt/eddy-agent" ] || die "$prebuilt/eddy-agent not found: run 'cargo build --release -p eddy-agent' first"
  if file "$prebuilt/eddy-agent" 2>/dev/null | grep -q "dynamically linked"; then
    die "$prebuilt/eddy-agent is dynamically linked; the FROM scratch image needs the static build (.cargo/config.toml)"
  fi
  certs=/etc/ssl/certs/ca-certificates.crt
  [ -f "$certs" ] || die "$certs not found (Debian: apt-get install ca-certificates)"
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$prebuilt/eddy-agent" "$certs" "$ctx/"
  "$engine" "${engine_args[@]}" build --target prebuilt -f "$here/agent/Dockerfile" -t "${repository}eddy-agent:$tag" "$ctx"
  echo "built ${repository}eddy-agent:$tag"
  if [ -x "$prebuilt/eddy-fips-proxy" ]; then
    if file "$prebuilt/eddy-fips-proxy" 2>/dev/null | grep -q "dynamically linked"; then
      die "$prebuilt/eddy-fips-proxy is dynamically linked; the FROM scratch image needs the static build"
    fi
    pctx="$ctx/fips-proxy"
    mkdir -p "$pctx"
    cp "$prebuilt/eddy-fips-proxy" "$certs" "$pctx/"
    "$engine" "${engine_args[@]}" build --target prebuilt -f "$here/fips-proxy/Dockerfile" \
      -t "${repository}eddy-fips-proxy:$tag" "$pctx"
    echo "built ${repository}eddy-fips-proxy:$tag"
  else
    echo "skipped eddy-fips-proxy: $prebuilt/eddy-fips-proxy not built ('cargo build --release -p eddy-fips-proxy')"
  fi
else
  "$engine" "${engine_args[@]}" build --target image -f "$here/agent/Dockerfile" -t "${repository}eddy-agent:$tag" "$here"
  echo "built ${repository}eddy-agent:$tag"
  "$engine" "${engine_args[@]}" build --target image -f "$here/fips-proxy/Dockerfile" \
    -t "${repository}eddy-fips-proxy:$tag" "$here"
  echo "built ${repository}eddy-fips-proxy:$tag"
fi
