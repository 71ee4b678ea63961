#!/usr/bin/env bash
# Installs the tools the deploy-artifact tests use, in two Python virtual environments
# under $EDDY_TOOLS_DIR (default /opt/eddy-tools), from PyPI:
#   moto/     moto[server]     (local AWS emulator: moto_server on 127.0.0.1)
#   awscli/   awscli, cfn-lint (awscli pins botocore, so it lives apart from moto)
# Idempotent: an environment whose tools already run is left alone. Prints where they are.
# Usage: scripts/install-aws-tools.sh [--force]   (--force recreates both environments)
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
force=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --force) force=1 ;;
    *) echo "install-aws-tools.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

dir="${EDDY_TOOLS_DIR:-/opt/eddy-tools}"
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "install-aws-tools.sh: $python not found: install Python 3 with venv (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "install-aws-tools.sh: $python lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
mkdir -p "$dir"

# make_venv NAME "PROGRAM ARGS" PACKAGE...   (venv/bin/PROGRAM ARGS must succeed afterwards)
make_venv() {
  local name="$1" check
  read -r -a check <<<"$2"
  shift 2
  local venv="$dir/$name"
  if [ "$force" -eq 0 ] && [ -x "$venv/bin/python" ] && "$venv/bin/${check[0]}" "${check[@]:1}" >/dev/null 2>&1; then
    echo "install-aws-tools.sh: $venv already set up (skipped)"
    return
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  "$venv/bin/${check[0]}" "${check[@]:1}" >/dev/null
  echo "install-aws-tools.sh: installed $* into $venv"
}

make_venv moto "moto_server --help" "moto[server]"
make_venv awscli "aws --version" awscli cfn-lint
"$dir/awscli/bin/cfn-lint" --version >/dev/null

cat <<EOF
moto_server: $dir/moto/bin/moto_server
aws:         $dir/awscli/bin/aws ($("$dir/awscli/bin/aws" --version 2>&1))
cfn-lint:    $dir/awscli/bin/cfn-lint ($("$dir/awscli/bin/cfn-lint" --version 2>&1))
EOF
