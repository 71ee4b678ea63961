#!/usr/bin/env bash
# Builds the arm64 (Graviton, aarch64-unknown-linux-gnu) static binaries on this x86-64 machine:
# eddy-agent, the load generator (eddy-loadgen) and the kernel-matrix guest driver (eddy-matrix-guest),
# and with --fips-proxy eddy-fips-proxy (its AWS-LC FIPS module cross-compiled: cmake, Go, gcc-aarch64).
#
# Usage: scripts/cross-build.sh [--debug] [--fips-proxy] [--agent-features LIST] [--check]
#   --debug           the debug profile (what scripts/kernel-matrix.sh --arch arm64 boots); default release
#   --fips-proxy      also build eddy-fips-proxy
#   --agent-features  cargo features of eddy-agent (e.g. fips)
#   --check           only install the toolchain and say what it is
# Output: target/aarch64-unknown-linux-gnu/{debug,release}/. Each binary is checked to be a static aarch64
# executable and run once under qemu-aarch64-static (`--version`/`--help`).
#
# The compiler: rustup cannot fetch another target's standard library here (no internet but the package
# registries), so the arm64 build uses Debian's rustc-web/cargo-web (bookworm-security, rustc >= 1.95, in
# /usr/bin) with libstd-rust-web-dev:arm64 (`dpkg --add-architecture arm64`), linked by
# gcc-aarch64-linux-gnu (.cargo/config.toml). The host build keeps the rustup toolchain; both share
# target/ (the host artifacts of each compiler are keyed by its version, so neither rebuilds the other's).
# Root installs what is missing (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "cross-build.sh: $*" >&2; exit 1; }

profile=release fips_proxy=0 agent_features="" check=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --debug) profile=debug; shift ;;
    --fips-proxy) fips_proxy=1; shift ;;
    --agent-features) agent_features=${2:?--agent-features needs a value}; shift 2 ;;
    --check) check=1; shift ;;
    *) echo "cross-build.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

target=aarch64-unknown-linux-gnu
# Debian's Rust for the cross build; the rustup one (first on PATH) has no aarch64 standard library.
rustc=/usr/bin/rustc cargo=/usr/bin/cargo
pkgs=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  binutils-aarch64-linux-gnu qemu-user-static file)
# The kernel programs (clang, libbpf headers) and the FIPS module (cmake, Go) need what the host build needs.
scripts/install-deps.sh build
scripts/install-deps.sh packages "${pkgs[@]}"
have=$("$rustc" --version | awk '{print $2}')
if [ "$(printf '%s\n1.95.0\n' "$have" | sort -V | head -n1)" != "1.95.0" ]; then
  die "Debian's rustc-web is $have; Eddy needs >= 1.95 (bookworm-security carries newer ones: apt-get update)"
fi
sysroot=$("$rustc" --print sysroot)
[ -d "$sysroot/lib/rustlib/$target/lib" ] ||
  die "$rustc has no $target standard library ($sysroot/lib/rustlib/$target): install libstd-rust-web-dev:arm64"
echo "cross-build.sh: $("$rustc" --version) for $target, linker $(aarch64-linux-gnu-gcc -dumpversion)"
[ "$check" -eq 1 ] && exit 0

args=(build --locked --target "$target" -p eddy-agent -p eddy-tests --bins)
[ "$profile" = release ] && args+=(--release)
[ -n "$agent_features" ] && args+=(--features "eddy-agent/$agent_features")
[ "$fips_proxy" -eq 1 ] && args+=(-p eddy-fips-proxy)
echo "cross-build.sh: cargo ${args[*]}"
RUSTC=$rustc RUSTDOC=/usr/bin/rustdoc "$cargo" "${args[@]}"

out=target/$target/$profile
bins=(eddy-agent eddy-loadgen eddy-matrix-guest)
[ "$fips_proxy" -eq 1 ] && bins+=(eddy-fips-proxy)
for b in "${bins[@]}"; do
  f=$out/$b
  desc=$(file -b "$f")
  case "$desc" in
    *ARM\ aarch64*static*|*ARM\ aarch64*static-pie*) ;;
    *) die "$f is not a static aarch64 executable: $desc" ;;
  esac
  flag=--help
  case "$b" in eddy-agent|eddy-fips-proxy) flag=--version ;; esac
  rc=0
  ran=$(qemu-aarch64-static "$f" "$flag" 2>&1) || rc=$?
  [ "$rc" -eq 0 ] || die "$f $flag under qemu-aarch64-static exited $rc: $(printf '%s' "$ran" | head -n3)"
  ran=$(printf '%s\n' "$ran" | head -n1)
  printf '%-18s %6.1f MB  %s\n' "$b" "$(awk -v b="$(stat -c %s "$f")" 'BEGIN { print b / 1e6 }')" \
    "runs under qemu-aarch64: $ran"
done
