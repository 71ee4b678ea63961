#!/usr/bin/env bash
# Builds the Eddy container images with docker or podman.
#
# Usage: scripts/build-images.sh [options]
#   --tag TAG            image tag (default: the workspace version, e.g. 0.1.0)
#   --prebuilt DIR       pack binaries already built on this machine from DIR (e.g.
#                        target/x86_64-unknown-linux-gnu/release): no base image is pulled
#   --engine ENGINE      docker or podman (default: whichever is found, podman first)
#   --repository PREFIX  image name prefix, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/ (default none)
#   --only IMAGE         build only eddy-agent or eddy-fips-proxy
#   --fips               compile the agent with its `fips` feature (GovCloud; needs cmake + Go in the build
#                        stage); with --prebuilt, check that DIR/eddy-agent was built that way
#   --debug-dir DIR      with --prebuilt: where the binaries' debug info goes (default: the --prebuilt DIR)
#   -h, --help           this text
# Binaries go into the images stripped; their debug info is kept beside them as NAME.debug (linked with
# .gnu_debuglink, for symbolising a core dump or a perf profile: gdb/perf find it by that name). Without
# --prebuilt the debug info stays in the build stage: `--target debug -o type=local,dest=DIR` exports it.
# Prints each image's size.
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
tag="" prebuilt="" engine="" repository="" only="" fips="" debug_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --prebuilt) need_value "$@"; prebuilt="$2"; shift 2 ;;
    --engine) need_value "$@"; engine="$2"; shift 2 ;;
    --repository) need_value "$@"; repository="$2"; shift 2 ;;
    --only) need_value "$@"; only="$2"; shift 2 ;;
    --fips) fips=1; shift ;;
    --debug-dir) need_value "$@"; debug_dir="$2"; shift 2 ;;
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
case "$only" in ""|eddy-agent|eddy-fips-proxy) ;; *) die "--only must be eddy-agent or eddy-fips-proxy, not $only" ;; esac
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
if [ -z "$tag" ]; then
  tag="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -1)"
fi
# shellcheck disable=SC2206 # ENGINE_ARGS is a word list by design
engine_args=(${ENGINE_ARGS:-})

mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
# Prints an image's size as the engine reports it (uncompressed layers).
report() {
  local size
  size="$("$engine" "${engine_args[@]}" image inspect --format '{{.Size}}' "$1" 2>/dev/null || echo 0)"
  echo "built $1: $(mb "$size")${2:+ ($2)}"
}
# strip_into SRC DEST: DEST = SRC without symbols or debug info, linked to $debug_dir/NAME.debug.
strip_into() {
  local name
  name="$(basename "$1")"
  objcopy --only-keep-debug "$1" "$debug_dir/$name.debug"
  objcopy --strip-all --add-gnu-debuglink="$debug_dir/$name.debug" "$1" "$2"
  echo "$name: $(mb "$(stat -c %s "$1")") → $(mb "$(stat -c %s "$2")") stripped; debug info in $debug_dir/$name.debug"
}

if [ -n "$prebuilt" ]; then
  certs=/etc/ssl/certs/ca-certificates.crt
  [ -f "$certs" ] || die "$certs not found (Debian: apt-get install ca-certificates)"
  command -v objcopy >/dev/null || die "objcopy not found (Debian: apt-get install binutils)"
  debug_dir="${debug_dir:-$prebuilt}"
  mkdir -p "$debug_dir"
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  static_or_die() {
    if file "$1" 2>/dev/null | grep -q "dynamically linked"; then
      die "$1 is dynamically linked; the FROM scratch image needs the static build (.cargo/config.toml)"
    fi
  }
  if want eddy-agent; then
    [ -x "$prebuilt/eddy-agent" ] || die "$prebuilt/eddy-agent not found: run 'cargo build --release -p eddy-agent' first"
    static_or_die "$prebuilt/eddy-agent"
    if [ -n "$fips" ] && ! "$prebuilt/eddy-agent" --version | grep -q "features: fips"; then
      die "$prebuilt/eddy-agent was built without the fips feature: cargo build --release -p eddy-agent --features fips"
    fi
    mkdir -p "$ctx/agent"
    stripped="$(strip_into "$prebuilt/eddy-agent" "$ctx/agent/eddy-agent")"
    cp "$certs" "$ctx/agent/"
    "$engine" "${engine_args[@]}" build --target prebuilt -f "$here/agent/Dockerfile" \
      -t "${repository}eddy-agent:$tag" "$ctx/agent"
    report "${repository}eddy-agent:$tag" "$stripped"
  fi
  if want eddy-fips-proxy; then
    if [ -x "$prebuilt/eddy-fips-proxy" ]; then
      static_or_die "$prebuilt/eddy-fips-proxy"
      mkdir -p "$ctx/fips-proxy"
      stripped="$(strip_into "$prebuilt/eddy-fips-proxy" "$ctx/fips-proxy/eddy-fips-proxy")"
      cp "$certs" "$ctx/fips-proxy/"
      "$engine" "${engine_args[@]}" build --target prebuilt -f "$here/fips-proxy/Dockerfile" \
        -t "${repository}eddy-fips-proxy:$tag" "$ctx/fips-proxy"
      report "${repository}eddy-fips-proxy:$tag" "$stripped"
    elif [ -n "$only" ]; then
      die "$prebuilt/eddy-fips-proxy not found: run 'cargo build --release -p eddy-fips-proxy' first"
    else
      echo "skipped eddy-fips-proxy: $prebuilt/eddy-fips-proxy not built ('cargo build --release -p eddy-fips-proxy')"
    fi
  fi
else
  if want eddy-agent; then
    "$engine" "${engine_args[@]}" build --target image -f "$here/agent/Dockerfile" \
      --build-arg "AGENT_FEATURES=${fips:+fips}" -t "${repository}eddy-agent:$tag" "$here"
    report "${repository}eddy-agent:$tag"
  fi
  if want eddy-fips-proxy; then
    "$engine" "${engine_args[@]}" build --target image -f "$here/fips-proxy/Dockerfile" \
      -t "${repository}eddy-fips-proxy:$tag" "$here"
    report "${repository}eddy-fips-proxy:$tag"
  fi
fi
