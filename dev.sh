#!/usr/bin/env bash
# The two commands of the README, on a fresh Debian 12 machine:
#   ./dev.sh serve [ftx serve options]   build, then run the server (defaults: ./ftx-data, 127.0.0.1:7021)
#   ./dev.sh test                        build, then run the whole test suite
# Each installs the Debian packages it needs when they are missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")"

BUILD_DIR=${FTX_BUILD_DIR:-build}
JOBS=${FTX_JOBS:-2}
PACKAGES=(g++ make cmake pkg-config libasio-dev libcli11-dev libssl-dev libspdlog-dev libfmt-dev libgtest-dev)

log() { printf '[dev.sh] %s\n' "$*" >&2; }

install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    sudo=(sudo)
  fi
  log "installing: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
  install_missing "${PACKAGES[@]}"
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFTX_WERROR=ON "$@" >/dev/null
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    build >&2
    exec "$BUILD_DIR/ftx" serve "$@"
    ;;
  test)
    build
    (cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS" --timeout 600)
    # The Docker image, built and run with podman (needs root; installs podman when missing).
    timeout 1200 bash tests/docker/docker_test.sh "$BUILD_DIR/ftx" .
    ;;
  *)
    echo "usage: ./dev.sh serve [ftx serve options] | ./dev.sh test" >&2
    exit 2
    ;;
esac
