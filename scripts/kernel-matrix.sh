#!/usr/bin/env bash
# Boots the kernels ECS instances run (Debian cloud builds of 5.10, 6.1 and 6.12) under qemu, each with an
# initramfs holding eddy-agent and the guest test driver (eddy-matrix-guest), runs the driver's scenarios
# (exact byte/packet/failure/DNS counts and ECS labels against the agent's /flows, /dns and /status) and
# reports per kernel. Kernels in --cgroup-v1 boot a second time as a cgroup v1-only host (the ECS AL2 AMI,
# Bottlerocket aws-ecs-1: v1 hierarchies under /sys/fs/cgroup, no cgroup2 mounted) for the ecs_cgroup_v1
# scenario and a few basic ones; the report shows that boot as its own row, "<series> (cgroup v1)".
#
# Usage: scripts/kernel-matrix.sh [--arch amd64|arm64] [--kernels 5.10,6.1,6.12] [--cgroup-v1 5.10] [--out DIR]
#                                 [--no-build] [--keep] [--refresh] [--accel auto|kvm|tcg] [--timeout SECONDS]
#                                 [--agent-arg ARG]...
#   --arch      amd64 (default): qemu-system-x86_64 with the x86-64 binaries; arm64: the Graviton matrix,
#               qemu-system-aarch64 (-machine virt -cpu max, TCG) on Debian's cloud-arm64 kernels with the
#               aarch64 binaries of scripts/cross-build.sh (the report still runs the host's eddy-matrix-guest)
#   --kernels   kernel series to boot, comma-separated (default 5.10,6.1,6.12)
#   --cgroup-v1 of those, the ones also booted as a cgroup v1-only host (default 5.10; "none" for none)
#   --out       results directory (default target/kernel-matrix): DIR/matrix.json, DIR/<run>/{console.log,
#               results.jsonl} (run: the series, or <series>-cgroup-v1)
#   --no-build  use the binaries already in target/x86_64-unknown-linux-gnu/debug
#   --keep      keep the initramfs staging tree and the per-kernel initramfs
#   --refresh   look for newer kernel packages even when one of the series is cached
#   --accel     kvm, tcg, or auto (default: a short KVM probe boot, TCG when KVM fails)
#   --timeout   limit per kernel boot, seconds (default 480)
#   --agent-arg one more argument for `eddy-agent run` in the guest (repeat it; e.g. --agent-arg
#               --disabled-hooks --agent-arg 'tcp_sock counters (live via iter/task_file)' to test a fallback)
# Exit status: 0 only when every scenario passed on every kernel. Root (Debian 12): installs qemu-system-x86,
# busybox-static and cpio when missing. Kernels are cached in ${EDDY_TOOLS_DIR:-/opt/eddy-tools}/kernels.
set -euo pipefail
# Errors inside $(...) (kernel fetching runs there) stop the script too.
shopt -s inherit_errexit
# Everything runs inside main(), which bash reads whole before running it: editing this file while a run is
# in progress cannot change what that run executes.
main() {
cd "$(dirname "$0")/.."
repo=$PWD

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }

arch=amd64
kernels=5.10,6.1,6.12
cgroup_v1=5.10
out=target/kernel-matrix
build=1
keep=0
refresh=0
accel=auto
timeout_s=480
agent_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --arch) arch=${2:?--arch needs a value}; shift 2 ;;
    --kernels) kernels=${2:?--kernels needs a value}; shift 2 ;;
    --cgroup-v1) cgroup_v1=${2:?--cgroup-v1 needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    --refresh) refresh=1; shift ;;
    --accel) accel=${2:?--accel needs a value}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift 2 ;;
    --agent-arg) agent_args+=("${2?--agent-arg needs a value}"); shift 2 ;;
    *) echo "kernel-matrix.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$accel" in auto|kvm|tcg) ;; *) echo "kernel-matrix.sh: --accel must be auto, kvm or tcg" >&2; exit 2 ;; esac
case "$arch" in
  amd64) qemu=qemu-system-x86_64 qemu_pkg=qemu-system-x86 triple=x86_64-unknown-linux-gnu strip=strip ;;
  # An arm64 guest on this x86-64 host is emulated (TCG) whatever --accel says.
  arm64) qemu=qemu-system-aarch64 qemu_pkg=qemu-system-arm triple=aarch64-unknown-linux-gnu
    strip=aarch64-linux-gnu-strip accel=tcg ;;
  *) echo "kernel-matrix.sh: --arch must be amd64 or arm64" >&2; exit 2 ;;
esac
mkdir -p "$out"
out=$(cd "$out" && pwd)

log() { printf '[kernel-matrix] %s\n' "$*" >&2; }
die() { printf 'kernel-matrix.sh: %s\n' "$*" >&2; exit 1; }

# One run per results directory (a second one would delete the first one's initramfs).
exec 8>"$out/.lock"
flock -n 8 || die "another kernel-matrix.sh is using $out; wait for it or pick another --out"

# ---------------------------------------------------------------------------------------------------------
# Host packages: qemu, a static busybox for the guest's shell tools, cpio for the initramfs, the CA bundle
# the agent's image carries.
# ---------------------------------------------------------------------------------------------------------
pkgs=("$qemu_pkg" busybox-static cpio gzip)
[ "$arch" = arm64 ] && pkgs+=(binutils-aarch64-linux-gnu)
scripts/install-deps.sh packages "${pkgs[@]}" || die "could not install ${pkgs[*]} (see above)"

# ---------------------------------------------------------------------------------------------------------
# Kernels: Debian cloud builds (BTF, virtio as modules: we need neither modules nor disks), fetched with a
# PRIVATE apt configuration per suite (own sources.list, lists and cache under the tools dir; the machine's
# sources and lists are never touched) and cached unpacked, so a second run downloads nothing.
# ---------------------------------------------------------------------------------------------------------
tools=${EDDY_TOOLS_DIR:-/opt/eddy-tools}
kcache=$tools/kernels
mkdir -p "$kcache"
# The kernel cache and the VMs are shared by every run on this machine: one run at a time holds fd 9's lock,
# while fetching and again for the boots (two TCG guests on 2 cores would distort each other's timing).
exec 9>"$kcache/.lock"
machine_lock() {
  flock -n 9 && return
  log "another kernel-matrix.sh run holds $kcache/.lock: waiting"
  flock 9
}
machine_unlock() { flock -u 9; }
machine_lock

suite_of() {
  case "$1" in
    5.10) echo bullseye ;;
    6.1) echo bookworm ;;
    6.12) echo trixie ;;
    *) die "unknown kernel series '$1' (known: 5.10 from bullseye, 6.1 from bookworm, 6.12 from trixie)" ;;
  esac
}

# The archive keyring that signs a suite. Debian's debian-archive-keyring ships one file per release
# (debian-archive-<suite>-stable.gpg); the combined keyring covers the suite when that file is there. If the
# installed keyring predates the suite, take the newest debian-archive-keyring package of bookworm (point
# releases, -updates, -backports: signed by bookworm's key, which every Debian 12 keyring has) and use it.
keyring_for() {
  local suite=$1 sys=/usr/share/keyrings
  if [ -f "$sys/debian-archive-$suite-stable.gpg" ] && [ -z "${EDDY_MATRIX_FORCE_KEYRING_FETCH:-}" ]; then
    echo "$sys/debian-archive-keyring.gpg"
    return
  fi
  local kdir=$kcache/keyring
  if [ ! -f "$kdir/usr/share/keyrings/debian-archive-$suite-stable.gpg" ]; then
    log "the installed debian-archive-keyring has no key for $suite: fetching a newer one from bookworm"
    local adir=$kcache/apt/keyring
    mkdir -p "$adir/lists/partial" "$adir/cache/archives/partial" "$adir/dl"
    cat >"$adir/sources.list" <<EOF
deb [signed-by=$sys/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=$sys/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=$sys/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
EOF
    apt_in "$adir" apt-get -qq update >&2
    (cd "$adir/dl" && rm -f ./*.deb && apt_in "$adir" apt-get -qq download debian-archive-keyring >&2)
    rm -rf "$kdir"; mkdir -p "$kdir"
    dpkg-deb -x "$adir"/dl/debian-archive-keyring_*.deb "$kdir"
    [ -f "$kdir/usr/share/keyrings/debian-archive-$suite-stable.gpg" ] ||
      die "no debian-archive-keyring available from bookworm covers $suite"
  fi
  echo "$kdir/usr/share/keyrings/debian-archive-keyring.gpg"
}

# Runs an apt command ($2...) with the private configuration rooted at $1: its own sources.list, lists and
# cache, no preferences, one architecture ($apt_arch). Nothing of the machine's apt state is read or written.
apt_arch=$arch
apt_in() {
  local d=$1; shift
  local cmd=$1; shift
  "$cmd" -o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o Dir::Etc::Preferences=/dev/null \
    -o Dir::Etc::PreferencesParts=/dev/null -o APT::Architecture="$apt_arch" -o APT::Architectures="$apt_arch" \
    -o APT::Sandbox::User=root "$@"
}

# Resolves series $1 to a cached kernel directory (printed on stdout), downloading it if needed.
fetch_kernel() {
  local series=$1 suite pointer dir
  suite=$(suite_of "$series")
  pointer=$kcache/series-$series
  [ "$arch" = amd64 ] || pointer=$pointer-$arch
  if [ "$refresh" -eq 0 ] && [ -f "$pointer" ]; then
    dir=$kcache/$(cat "$pointer")
    if [ -f "$dir/vmlinuz" ] && [ -f "$dir/package" ]; then
      log "kernel $series: cached $(cat "$dir/package") (use --refresh to look for a newer one)"
      echo "$dir"
      return
    fi
  fi
  local adir=$kcache/apt/$suite keyring
  [ "$arch" = amd64 ] || adir=$adir-$arch
  keyring=$(keyring_for "$suite")
  mkdir -p "$adir/lists/partial" "$adir/cache/archives/partial" "$adir/dl"
  cat >"$adir/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian $suite main
deb [signed-by=$keyring] http://deb.debian.org/debian $suite-updates main
deb [signed-by=$keyring] http://deb.debian.org/debian-security $suite-security main
EOF
  log "kernel $series: apt-get update ($suite, $suite-updates, $suite-security; private lists in $adir)"
  apt_in "$adir" apt-get -qq update >&2 || die "apt-get update for $suite failed (see above)"
  # Package names such as linux-image-5.10.0-46-cloud-amd64-unsigned or
  # linux-image-6.12.118+deb13-cloud-arm64-unsigned, newest first (version sort). The newest one that has a
  # candidate and downloads wins (a mirror may list a package it does not serve yet: then the next one).
  local re name version release x
  re="^linux-image-${series//./\\.}\\.[^ ]*-cloud-$arch-unsigned\$"
  for name in $(apt_in "$adir" apt-cache search --names-only "$re" | awk '{print $1}' | sort -V -r); do
    version=$(apt_in "$adir" apt-cache policy "$name" | awk '/Candidate:/ {print $2}')
    [[ $version =~ ^[0-9] ]] || continue
    release=${name#linux-image-}; release=${release%-unsigned}
    dir=$kcache/$release
    if [ -f "$dir/vmlinuz" ] && [ "$(cat "$dir/package" 2>/dev/null)" = "$name $version" ]; then
      log "kernel $series: newest is $name $version, already cached"
    else
      log "kernel $series: downloading $name $version"
      rm -f "$adir"/dl/*.deb
      if ! (cd "$adir/dl" && apt_in "$adir" apt-get -qq download "$name" >&2); then
        log "kernel $series: $name $version could not be downloaded; trying the next older package"
        continue
      fi
      x=$adir/dl/x
      rm -rf "$x"; mkdir -p "$x"
      dpkg-deb -x "$adir"/dl/*.deb "$x"
      rm -rf "$dir"; mkdir -p "$dir"
      # Only the kernel image and its config are kept (no module is loaded in the guest).
      cp "$x/boot/vmlinuz-$release" "$dir/vmlinuz"
      cp "$x/boot/config-$release" "$dir/config"
      echo "$name $version" >"$dir/package"
      rm -rf "$x" "$adir"/dl/*.deb
    fi
    grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$dir/config" || log "WARNING: $release has no CONFIG_DEBUG_INFO_BTF"
    echo "$release" >"$pointer"
    echo "$dir"
    return
  done
  die "no package matching $re could be fetched from $suite"
}

IFS=, read -r -a series_list <<<"$kernels"
[ "$cgroup_v1" = none ] && cgroup_v1=
IFS=, read -r -a v1_list <<<"$cgroup_v1"
for s in ${v1_list[@]+"${v1_list[@]}"}; do
  [[ ,$kernels, == *,$s,* ]] || die "--cgroup-v1 $s: not one of --kernels $kernels"
done
# The boots: each series, and after it its cgroup v1-only boot when asked for.
runs=()
for s in "${series_list[@]}"; do
  runs+=("$s")
  if [[ ,$cgroup_v1, == *,$s,* ]]; then runs+=("$s-cgroup-v1"); fi
done
declare -A kdir
for s in "${series_list[@]}"; do
  kdir[$s]=$(fetch_kernel "$s")
done

# The guest's busybox: the host's for amd64; for arm64, Debian bookworm's busybox-static:arm64, fetched
# with the private apt configuration and cached unpacked (the host's packages stay amd64 only).
guest_busybox() {
  if [ "$arch" = amd64 ]; then echo /bin/busybox; return; fi
  local bdir=$tools/busybox-$arch adir=$kcache/apt/bookworm-$arch x
  if [ ! -x "$bdir/busybox" ]; then
    mkdir -p "$adir/lists/partial" "$adir/cache/archives/partial" "$adir/dl"
    [ -f "$adir/sources.list" ] || cat >"$adir/sources.list" <<EOF
deb [signed-by=$(keyring_for bookworm)] http://deb.debian.org/debian bookworm main
EOF
    log "busybox ($arch): downloading busybox-static from bookworm"
    apt_in "$adir" apt-get -qq update >&2 || die "apt-get update for bookworm ($arch) failed (see above)"
    rm -f "$adir"/dl/*.deb
    (cd "$adir/dl" && apt_in "$adir" apt-get -qq download busybox-static >&2) ||
      die "busybox-static ($arch) could not be downloaded"
    x=$adir/dl/x
    rm -rf "$x"; mkdir -p "$x" "$bdir"
    dpkg-deb -x "$adir"/dl/busybox-static_*.deb "$x"
    cp "$x/bin/busybox" "$bdir/busybox"
    rm -rf "$x" "$adir"/dl/*.deb
  fi
  echo "$bdir/busybox"
}
busybox=$(guest_busybox)
machine_unlock

# ---------------------------------------------------------------------------------------------------------
# Binaries: exactly the feature set scripts/test.sh builds, so nothing is compiled twice. For arm64 the
# guest's binaries come from scripts/cross-build.sh; the report runs the host's eddy-matrix-guest.
# ---------------------------------------------------------------------------------------------------------
hostbin=$repo/target/x86_64-unknown-linux-gnu/debug
bindir=$repo/target/$triple/debug
if [ "$build" -eq 1 ]; then
  log "cargo build --workspace --locked --features eddy-agent/fips --bins"
  cargo build --workspace --locked --features eddy-agent/fips --bins || die "cargo build failed (see above)"
  if [ "$arch" = arm64 ]; then
    scripts/cross-build.sh --debug || die "scripts/cross-build.sh failed (see above)"
  fi
fi
for b in "$bindir/eddy-agent" "$bindir/eddy-matrix-guest" "$hostbin/eddy-matrix-guest"; do
  [ -x "$b" ] || die "$b is missing: run without --no-build"
done

# ---------------------------------------------------------------------------------------------------------
# initramfs: busybox (every applet linked, except busybox itself: a self-link makes the kernel fail the exec
# with "error -40"), the two static binaries (debug info stripped: RAM is the root fs), and /init.
# ---------------------------------------------------------------------------------------------------------
stage=$out/initramfs
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root}
cp "$busybox" "$stage/bin/busybox"
# The applet list is the same for both architectures' bookworm busybox-static: the host's answers.
for applet in $(/bin/busybox --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$stage/$(dirname "$applet")"
  ln -sf /bin/busybox "$stage/$applet"
done
command -v "$strip" >/dev/null 2>&1 || die "$strip (binutils) is needed: the debug agent carries line tables (~80 MB)"
for b in eddy-agent eddy-matrix-guest; do
  "$strip" --strip-debug -o "$stage/bin/$b" "$bindir/$b"
done
# No CA bundle on purpose: the agent's clients for plain-http host endpoints (ECS agent, task
# metadata, IMDS) must work without a trust store (agent/src/plain_http.rs); the ECS scenarios show it.
# Extra agent arguments, one per line (the driver appends them to `eddy-agent run`).
mkdir -p "$stage/etc/eddy-matrix"
: >"$stage/etc/eddy-matrix/agent-args"
for a in ${agent_args[@]+"${agent_args[@]}"}; do printf '%s\n' "$a" >>"$stage/etc/eddy-matrix/agent-args"; done
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
cat >"$stage/init" <<'EOF'
#!/bin/sh
# PID 1 of the matrix guest: mounts what the agent needs, runs the driver, powers off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
cgroup=v2
if grep -q 'eddy.cgroup=v1' /proc/cmdline; then
  # A cgroup v1-only host, as the ECS AL2 AMI and Bottlerocket aws-ecs-1 have it: a tmpfs at
  # /sys/fs/cgroup, one v1 hierarchy per controller the kernel offers (cpu,cpuacct and net_cls,net_prio
  # together, as systemd mounts them) plus name=systemd, and no cgroup2 anywhere.
  cgroup=v1
  mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
  for c in $(awk '!/^#/ && $4 == 1 {print $1}' /proc/cgroups); do
    case $c in
      cpu|cpuacct) m=cpu,cpuacct ;;
      net_cls|net_prio) m=net_cls,net_prio ;;
      *) m=$c ;;
    esac
    [ -d "/sys/fs/cgroup/$m" ] && continue
    mkdir -p "/sys/fs/cgroup/$m"
    mount -t cgroup -o "$m" cgroup "/sys/fs/cgroup/$m" 2>/dev/null ||
      { echo "EDDY-CGROUP-V1 the kernel refuses a v1 hierarchy for $m"; rmdir "/sys/fs/cgroup/$m"; }
  done
  mkdir -p /sys/fs/cgroup/systemd
  mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
  echo "EDDY-CGROUP-V1 $(grep -c ' - cgroup ' /proc/self/mountinfo) v1 hierarchies:" \
    "$(ls /sys/fs/cgroup | tr '\n' ' ')"
else
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi
mount -t bpf bpf /sys/fs/bpf
[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ulimit -l unlimited
ip link set lo up
# Results go to their own serial port, byte for byte: the second 8250 on x86 (ttyS0 is the console); on
# arm64 the console is the PL011 (ttyAMA0) and the results port a PCI 8250, ttyS0.
results=/dev/ttyS1
[ "$(uname -m)" = aarch64 ] && results=/dev/ttyS0
stty -F "$results" raw -echo 115200 2>/dev/null
if grep -q 'eddy.probe' /proc/cmdline; then
  echo "EDDY-PROBE-OK $(uname -r)"
  poweroff -f
fi
echo "EDDY-INIT $(uname -r), $(nproc) CPUs, $(grep MemTotal /proc/meminfo)"
/bin/eddy-matrix-guest guest --results "$results" --agent /bin/eddy-agent \
  --agent-args-file /etc/eddy-matrix/agent-args --cgroup "$cgroup"
echo "EDDY-DRIVER-EXIT $?"
sync
# The serial ports drain after the last write returns: give them a moment before the power goes.
sleep 2
poweroff -f
EOF
chmod 755 "$stage/init"
initrd=$out/initramfs.cpio.gz
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$initrd"
log "initramfs: $initrd ($(du -h "$initrd" | cut -f1))"

# ---------------------------------------------------------------------------------------------------------
# qemu. Nested KVM is often broken on cloud VMs ("KVM internal error. Suberror: 1 ... emulation failure"):
# with --accel auto, a probe boot (init prints a marker and powers off) decides; TCG otherwise.
# ---------------------------------------------------------------------------------------------------------
boot() { # boot ACCEL KERNEL_DIR RUN_DIR TIMEOUT APPEND_EXTRA
  local acc=$1 k=$2 d=$3 t=$4 extra=$5 cpu=max
  [ "$acc" = kvm ] && cpu=host
  mkdir -p "$d"
  rm -f "$d/console.log" "$d/results.jsonl" "$d/qemu.log"
  local machine=() console=ttyS0 results=(-serial "file:$d/results.jsonl")
  if [ "$arch" = arm64 ]; then
    # pauth-impdef: QEMU's cheap pointer-authentication algorithm (the architected one is slow under TCG).
    machine=(-machine virt) cpu=max,pauth-impdef=on console=ttyAMA0
    results=(-chardev "file,id=results,path=$d/results.jsonl" -device pci-serial,chardev=results)
  fi
  timeout -k 10 "$t" "$qemu" ${machine[@]+"${machine[@]}"} -accel "$acc" -cpu "$cpu" -m 2048 -smp 2 \
    -display none -monitor none -no-reboot -nic none \
    -kernel "$k/vmlinuz" -initrd "$initrd" -append "console=$console panic=-1 quiet $extra" \
    -serial "file:$d/console.log" "${results[@]}" </dev/null >"$d/qemu.log" 2>&1
}

# The KVM probe: a boot whose /init prints a marker and powers off; given up as soon as KVM reports an
# internal error (the guest then hangs), after 20 s at most.
probe_kvm() { # probe_kvm KERNEL_DIR RUN_DIR
  local k=$1 d=$2 pid
  boot kvm "$k" "$d" 20 eddy.probe=1 &
  pid=$!
  for _ in $(seq 1 80); do
    sleep 0.25
    kill -0 "$pid" 2>/dev/null || break
    grep -qs 'KVM internal error' "$d/qemu.log" "$d/console.log" && break
  done
  # The timeout(1) inside boot ends qemu at 20 s anyway; stop it now (our own child, by its process id).
  pkill -TERM -P "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep -qs EDDY-PROBE-OK "$d/console.log"
}

machine_lock
if [ "$accel" = auto ]; then
  accel=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    probe=$out/kvm-probe
    first=${series_list[0]}
    if probe_kvm "${kdir[$first]}" "$probe"; then
      accel=kvm
      log "KVM works: using -accel kvm"
    else
      why=$(grep -h -m1 -o 'KVM internal error.*' "$probe"/*.log 2>/dev/null ||
        echo "the guest did not reach /init within 20 s")
      log "KVM probe boot failed ($why): using TCG"
    fi
  else
    log "/dev/kvm is not usable: using TCG"
  fi
fi

# ---------------------------------------------------------------------------------------------------------
# One kernel after another (2 cores: the guest gets both).
# ---------------------------------------------------------------------------------------------------------
started_all=$(date +%s)
for r in "${runs[@]}"; do
  s=${r%-cgroup-v1}
  extra=
  [ "$r" != "$s" ] && extra=eddy.cgroup=v1
  d=$out/$r
  k=${kdir[$s]}
  log "run $r: booting $(cat "$k/package") ($accel, timeout ${timeout_s}s${extra:+, $extra})"
  t0=$(date +%s)
  set +e
  boot "$accel" "$k" "$d" "$timeout_s" "$extra"
  rc=$?
  if [ "$accel" = kvm ] && grep -q 'KVM internal error' "$d/qemu.log" "$d/console.log" 2>/dev/null; then
    # The probe booted, but KVM broke later: this kernel and the next ones under TCG.
    log "run $r: $(grep -h -m1 -o 'KVM internal error.*' "$d/qemu.log" "$d/console.log"): again with TCG"
    accel=tcg
    t0=$(date +%s)
    boot "$accel" "$k" "$d" "$timeout_s" "$extra"
    rc=$?
  fi
  if ! grep -q 'EDDY-INIT' "$d/console.log" 2>/dev/null && grep -q 'Kernel panic' "$d/console.log" 2>/dev/null; then
    # The guest kernel died during its own boot, before /init (so before anything of Eddy ran): seen
    # once in a while under TCG (an int3 oops while patching kernel text). Boot it once more.
    log "run $r: the guest kernel panicked before /init ($(grep -h -m1 -o 'RIP: [^ ]*' "$d/console.log" || echo '?')): booting again"
    cp "$d/console.log" "$d/console-boot-panic.log" 2>/dev/null || true
    t0=$(date +%s)
    boot "$accel" "$k" "$d" "$timeout_s" "$extra"
    rc=$?
  fi
  set -e
  wall=$(( $(date +%s) - t0 ))
  exit_state=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    exit_state=timeout
    log "run $r: TIMEOUT after ${timeout_s}s; console tail:"
    tail -n 40 "$d/console.log" | tr -d '\r' >&2 || true
  elif [ "$rc" -ne 0 ]; then
    exit_state="qemu exit $rc"
    log "run $r: qemu exited with $rc: $(tail -n 5 "$d/qemu.log")"
  elif ! grep -q '"done"' "$d/results.jsonl" 2>/dev/null; then
    exit_state="guest stopped before the driver finished"
    log "run $r: the driver did not finish; console tail:"
    tail -n 40 "$d/console.log" | tr -d '\r' >&2 || true
  fi
  log "run $r: ${wall}s wall ($exit_state)"
  read -r pkg pkg_version <"$k/package"
  cat >"$d/meta.json" <<EOF
{"series": "$s", "run": "$r", "arch": "$arch", "package": "$pkg", "package_version": "$pkg_version",
 "release": "$(basename "$k")", "accel": "$accel", "wall_seconds": $wall, "exit": "$exit_state",
 "timeout_seconds": $timeout_s, "append": "$extra"}
EOF
done
machine_unlock
total=$(( $(date +%s) - started_all ))
log "all kernels: ${total}s wall"

if [ "$keep" -eq 0 ]; then
  rm -rf "$stage" "$initrd" "$out/kvm-probe"
fi

# The report (per-kernel scenario lines, the hook table, DIR/matrix.json) and the exit status.
"$hostbin/eddy-matrix-guest" report --out "$out" --series "$(IFS=,; echo "${runs[*]}")" \
  --total-seconds "$total"
}

main "$@"
