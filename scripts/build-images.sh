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
#   --debug-dir DIR      with --prebuilt: where the binaries' debug info goes (default: the --prebuilt DIR;
#                        with more than one architecture, DIR/<arch>)
#   --arch LIST          amd64 (default), arm64, or amd64,arm64 (needs --prebuilt or --build): one image per
#                        architecture, NAME:TAG-<arch>, and with both a manifest list NAME:TAG naming the two
#                        (podman only); each image is smoke-run (`--version`; arm64 through qemu-aarch64-static)
#   --prebuilt-arm64 DIR the arm64 binaries (default target/aarch64-unknown-linux-gnu/release)
#   --build              compile the release binaries first: the host's with cargo, arm64's with
#                        scripts/cross-build.sh; then pack them as with --prebuilt. One command for both:
#                        scripts/build-images.sh --build --arch amd64,arm64
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
tag="" prebuilt="" engine="" repository="" only="" fips="" debug_dir="" archs=amd64 prebuilt_arm64="" build=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --prebuilt) need_value "$@"; prebuilt="$2"; shift 2 ;;
    --engine) need_value "$@"; engine="$2"; shift 2 ;;
    --repository) need_value "$@"; repository="$2"; shift 2 ;;
    --only) need_value "$@"; only="$2"; shift 2 ;;
    --fips) fips=1; shift ;;
    --debug-dir) need_value "$@"; debug_dir="$2"; shift 2 ;;
    --arch) need_value "$@"; archs="$2"; shift 2 ;;
    --prebuilt-arm64) need_value "$@"; prebuilt_arm64="$2"; shift 2 ;;
    --build) build=1; shift ;;
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
# Architectures: amd64 and/or arm64, each packed from prebuilt binaries of its own.
IFS=, read -r -a arch_list <<<"$archs"
for a in "${arch_list[@]}"; do
  case "$a" in amd64|arm64) ;; *) die "--arch takes amd64 and/or arm64, not $a" ;; esac
done
multi=""
[ "${#arch_list[@]}" -gt 1 ] && multi=1
[ -n "$multi" ] && [ "$engine" != podman ] && die "a manifest list of several architectures needs podman (--engine podman)"
if [ -n "$build" ]; then
  features=()
  [ -n "$fips" ] && features=(--features eddy-agent/fips)
  for a in "${arch_list[@]}"; do
    if [ "$a" = amd64 ]; then
      (cd "$here" && cargo build --release --locked -p eddy-agent -p eddy-fips-proxy --bins ${features[@]+"${features[@]}"})
    else
      "$here/scripts/cross-build.sh" --fips-proxy ${fips:+--agent-features fips}
    fi
  done
  prebuilt="${prebuilt:-$here/target/x86_64-unknown-linux-gnu/release}"
fi
if [ -z "$prebuilt" ] && { [ -n "$multi" ] || [ "$archs" != amd64 ]; }; then
  die "--arch $archs needs --prebuilt DIR or --build (images of other architectures are packed, not compiled in a build stage)"
fi
prebuilt_arm64="${prebuilt_arm64:-$here/target/aarch64-unknown-linux-gnu/release}"

if [ -n "$prebuilt" ]; then
  certs=/etc/ssl/certs/ca-certificates.crt
  [ -f "$certs" ] || die "$certs not found (Debian: apt-get install ca-certificates)"
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  # check_binary FILE ARCH: a static executable of that architecture (FROM scratch has no loader).
  check_binary() {
    local desc
    desc="$(file -b "$1" 2>/dev/null || true)"
    if echo "$desc" | grep -q "dynamically linked"; then
      die "$1 is dynamically linked; the FROM scratch image needs the static build (.cargo/config.toml)"
    fi
    case "$2:$desc" in
      amd64:*x86-64*|arm64:*aarch64*|*:) ;;
      *) die "$1 is not an $2 executable: $desc" ;;
    esac
  }
  # smoke IMAGE ARCH BINARY: the image's entry point answers --version (arm64: through qemu-aarch64-static,
  # bind-mounted, so the host's binfmt_misc is not needed).
  smoke() {
    local out run=(run --rm --network none) rc=0
    if [ "$2" = arm64 ]; then
      command -v qemu-aarch64-static >/dev/null || { echo "smoke-run of $1 skipped: no qemu-aarch64-static"; return; }
      run+=(--platform linux/arm64 -v /usr/bin/qemu-aarch64-static:/qemu-aarch64-static:ro
        --entrypoint /qemu-aarch64-static "$1" "/$3")
    else
      run+=("$1")
    fi
    out="$("$engine" "${engine_args[@]}" "${run[@]}" --version 2>&1)" || rc=$?
    # podman applies its default ulimits (1048576 files, 4194304 processes) to every container; where the
    # caller may not set rlimits (nested containers, CI sandboxes) the run fails before the entry point.
    # The smoke run needs none: once more without them (a containers.conf of its own, unless one is set).
    if [ "$rc" -ne 0 ] && [ "$engine" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] &&
      echo "$out" | grep -q "error setting rlimit"; then
      printf '[containers]\ndefault_ulimits = []\n' >"$ctx/containers.conf"
      echo "smoke-run $1: podman could not set its default ulimits here; running it without them"
      rc=0
      out="$(CONTAINERS_CONF="$ctx/containers.conf" "$engine" "${engine_args[@]}" "${run[@]}" --version 2>&1)" || rc=$?
    fi
    [ "$rc" -eq 0 ] || die "smoke-run of $1 failed: $out"
    echo "smoke-run $1 ($2): $(echo "$out" | head -n1)"
  }
  # pack ARCH DIR: the images of ARCH from the binaries in DIR.
  pack() {
    local arch=$1 dir=$2 suffix="" ddir objcopy=objcopy ref stripped
    [ -n "$multi" ] && suffix="-$arch"
    ddir="${debug_dir:-$dir}"
    [ -n "$multi" ] && [ -n "$debug_dir" ] && ddir="$debug_dir/$arch"
    mkdir -p "$ddir"
    [ "$arch" = arm64 ] && objcopy=aarch64-linux-gnu-objcopy
    command -v "$objcopy" >/dev/null ||
      die "$objcopy not found (Debian: apt-get install binutils; for arm64 binutils-aarch64-linux-gnu)"
    # strip_into SRC DEST: DEST = SRC without symbols or debug info, linked to $ddir/NAME.debug.
    strip_into() {
      local name
      name="$(basename "$1")"
      "$objcopy" --only-keep-debug "$1" "$ddir/$name.debug"
      "$objcopy" --strip-all --add-gnu-debuglink="$ddir/$name.debug" "$1" "$2"
      echo "$name ($arch): $(mb "$(stat -c %s "$1")") → $(mb "$(stat -c %s "$2")") stripped; debug info in $ddir/$name.debug"
    }
    if want eddy-agent; then
      [ -x "$dir/eddy-agent" ] || die "$dir/eddy-agent not found: run 'cargo build --release -p eddy-agent' (arm64: scripts/cross-build.sh) first"
      check_binary "$dir/eddy-agent" "$arch"
      if [ -n "$fips" ] && [ "$arch" = amd64 ] && ! "$dir/eddy-agent" --version | grep -q "features: fips"; then
        die "$dir/eddy-agent was built without the fips feature: cargo build --release -p eddy-agent --features fips"
      fi
      rm -rf "$ctx/agent"; mkdir -p "$ctx/agent"
      stripped="$(strip_into "$dir/eddy-agent" "$ctx/agent/eddy-agent")"
      cp "$certs" "$ctx/agent/"
      ref="${repository}eddy-agent:$tag$suffix"
      "$engine" "${engine_args[@]}" build --platform "linux/$arch" --target prebuilt -f "$here/agent/Dockerfile" \
        -t "$ref" "$ctx/agent"
      report "$ref" "$stripped"
      smoke "$ref" "$arch" eddy-agent
    fi
    if want eddy-fips-proxy; then
      if [ -x "$dir/eddy-fips-proxy" ]; then
        check_binary "$dir/eddy-fips-proxy" "$arch"
        rm -rf "$ctx/fips-proxy"; mkdir -p "$ctx/fips-proxy"
        stripped="$(strip_into "$dir/eddy-fips-proxy" "$ctx/fips-proxy/eddy-fips-proxy")"
        cp "$certs" "$ctx/fips-proxy/"
        ref="${repository}eddy-fips-proxy:$tag$suffix"
        "$engine" "${engine_args[@]}" build --platform "linux/$arch" --target prebuilt \
          -f "$here/fips-proxy/Dockerfile" -t "$ref" "$ctx/fips-proxy"
        report "$ref" "$stripped"
        smoke "$ref" "$arch" eddy-fips-proxy
      elif [ -n "$only" ]; then
        die "$dir/eddy-fips-proxy not found: run 'cargo build --release -p eddy-fips-proxy' (arm64: scripts/cross-build.sh --fips-proxy) first"
      else
        echo "skipped eddy-fips-proxy ($arch): $dir/eddy-fips-proxy not built"
      fi
    fi
  }
  for a in "${arch_list[@]}"; do
    if [ "$a" = arm64 ]; then pack arm64 "$prebuilt_arm64"; else pack amd64 "$prebuilt"; fi
  done
  # The manifest list: one tag, both architectures (an existing image or list of that name is replaced).
  if [ -n "$multi" ]; then
    for image in eddy-agent eddy-fips-proxy; do
      want "$image" || continue
      list="${repository}$image:$tag"
      parts=()
      for a in "${arch_list[@]}"; do
        "$engine" "${engine_args[@]}" image exists "$list-$a" && parts+=("$list-$a")
      done
      [ "${#parts[@]}" -gt 0 ] || continue
      "$engine" "${engine_args[@]}" manifest rm "$list" >/dev/null 2>&1 || true
      "$engine" "${engine_args[@]}" image rm "$list" >/dev/null 2>&1 || true
      "$engine" "${engine_args[@]}" manifest create "$list" >/dev/null
      for part in "${parts[@]}"; do
        # By image ID: a short name in containers-storage: would be qualified as docker.io/library/….
        id="$("$engine" "${engine_args[@]}" image inspect --format '{{.Id}}' "$part")"
        "$engine" "${engine_args[@]}" manifest add "$list" "containers-storage:$id" >/dev/null
      done
      platforms="$("$engine" "${engine_args[@]}" manifest inspect "$list" |
        python3 -c 'import json,sys; print(", ".join(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"]))')"
      echo "manifest list $list: $platforms"
    done
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
