#!/usr/bin/env bash
# Installs what Eddy needs on Debian 12 (root). Usage: install-deps.sh build|test|packages PKG...
#   build: clang-19 + libbpf headers (kernel programs), iproute2, binutils (objcopy: stripped images),
#          cmake + golang-go (the AWS-LC FIPS module that aws-lc-fips-sys builds for fips-proxy/)
#   test:  build + what the integration tests drive (iproute2 ip/tc, kmod, prometheus + promtool,
#          jq and python3-venv for the deploy-artifact tools, podman + runc + ca-certificates for the
#          container image smoke test, openssl + nginx-light as TLS peers of the FIPS proxy tests,
#          dnsmasq-base (the binary only, no service) as the DNS server of the DNS tests, nftables
#          for the NAT test, chromium + fonts-dejavu-core as the browser of the service map test)
#   packages PKG...: just these, where missing (NAME:ARCH adds that dpkg architecture first); the
#          other scripts' own tools (qemu for the kernel matrix, the arm64 cross toolchain)
# The Rust toolchain is not installed here: Eddy needs cargo/rustc >= 1.95 (rustup).
set -euo pipefail

what=${1:-build}
case "$what" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  build|test|packages) ;;
  *) echo "install-deps.sh: unknown target '$what' (build|test|packages PKG...)" >&2; exit 2 ;;
esac

if [ "$what" = packages ]; then
  shift
  pkgs=("$@")
else
  pkgs=(clang-19 llvm-19 libbpf-dev linux-libc-dev iproute2 python3 cmake golang-go binutils)
fi
if [ "$what" = test ]; then
  pkgs+=(kmod prometheus jq python3-venv podman runc ca-certificates openssl nginx-light dnsmasq-base nftables chromium fonts-dejavu-core)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: missing Debian packages: ${missing[*]}; run as root (sudo) to install them" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for p in "${missing[@]}"; do
    case "$p" in
      *:*) dpkg --print-foreign-architectures | grep -qx "${p#*:}" || dpkg --add-architecture "${p#*:}" ;;
    esac
  done
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$what" = packages ] && exit 0

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps.sh: cargo not found. Install Rust >= 1.95 with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.95.0\n' "$have" | sort -V | head -n1)" != "1.95.0" ]; then
  echo "install-deps.sh: rustc $have is too old; Eddy needs >= 1.95 (rustup update)." >&2
  exit 1
fi
