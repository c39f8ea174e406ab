#!/usr/bin/env bash
# pyenv.sh — the Python the tests use: a venv in build/pyvenv over Debian's
# /usr/bin/python3 (--system-site-packages, so Debian's PyTorch and NumPy
# are seen) with tests/requirements.txt installed by pip. Idempotent: the
# Debian packages are installed only when missing, the venv made only when
# absent, pip run only when requirements.txt changed since the last install.
# Prints the venv's interpreter on stdout (progress goes to stderr):
#
#   FS_PYTHON=$(scripts/pyenv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-pip python3-torch python3-numpy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "pyenv: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >&2
fi

venv=build/pyvenv
req=tests/requirements.txt
stamp=$venv/.requirements.sha256
if [ ! -x $venv/bin/python ]; then
  echo "pyenv: creating $venv over /usr/bin/python3" >&2
  mkdir -p build
  /usr/bin/python3 -m venv --system-site-packages $venv
fi
want=$(sha256sum $req | cut -d' ' -f1)
if [ "$(cat $stamp 2>/dev/null || true)" != "$want" ]; then
  echo "pyenv: pip install -r $req" >&2
  $venv/bin/python -m pip install -q --disable-pip-version-check --no-input -r $req >&2
  echo "$want" >$stamp
fi
echo "$PWD/$venv/bin/python"
