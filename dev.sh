#!/usr/bin/env bash
# The two commands of the README, on a fresh Debian 12 machine:
#   ./dev.sh serve [ftx serve options]   build, then run the server (defaults: ./ftx-data, 127.0.0.1:7021)
#   ./dev.sh test                        build, then run the whole test suite
# Each installs the Debian packages it needs when they are missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")"

BUILD_DIR=${FTX_BUILD_DIR:-build}
JOBS=${FTX_JOBS:-2}
PACKAGES=(g++ make cmake pkg-config libasio-dev libcli11-dev libssl-dev libspdlog-dev libfmt-dev libgtest-dev nlohmann-json3-dev)
# libFuzzer; man page check; bench smokes (small files: rsync, nc; peers: socat, nginx, vsftpd, sshd, curl, time)
TEST_PACKAGES=(clang-14 libclang-rt-14-dev help2man rsync netcat-openbsd python3 socat nginx vsftpd openssh-server
               openssh-client curl time openssl iperf3 jq iputils-ping iproute2)

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

# build DIR [cmake options...]
build() {
  local dir=$1; shift
  install_missing "${PACKAGES[@]}"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFTX_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS"
}

step() { printf '\n[dev.sh] ==== %s\n' "$*" >&2; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    build "$BUILD_DIR" >&2
    exec "$BUILD_DIR/ftx" serve "$@"
    ;;
  test)
    install_missing "${TEST_PACKAGES[@]}"
    step "build and run every test (unit, integration, CLI, faults)"
    build "$BUILD_DIR"
    (cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS" --timeout 600)
    step "smoke of the peer benchmark: ftx, raw TCP, rsync, nginx, vsftpd, scp (copies checked, times not judged)"
    # Not a ctest: as root it makes a local user for vsftpd (bench/peers.sh says what it changes).
    SMOKE=1 STRICT=1 FTX="$BUILD_DIR/ftx" timeout 600 bash bench/peers.sh
    step "smoke of the long-link benchmark: ftx and iperf3 between two namespaces over tests/netsim (25 ms, 0.1 % loss)"
    # Not a ctest either: it creates network namespaces (root); everything it makes goes at its end.
    SMOKE=1 STRICT=1 FTX="$BUILD_DIR/ftx" NETSIM="$BUILD_DIR/netsim" timeout 300 bash bench/netsim.sh
    if [ "${FTX_TEST_QUICK:-0}" = 1 ]; then
      log "FTX_TEST_QUICK=1: skipping the sanitizer, fuzz and container runs"
      exit 0
    fi

    step "the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer"
    build build-asan -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
       ctest --output-on-failure -j "$JOBS" --timeout 900)

    step "the concurrency tests under ThreadSanitizer"
    # -Wno-tsan: asio's fences (which TSan does not model) warn in g++ 12.
    install_missing "${PACKAGES[@]}"
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFTX_WERROR=ON \
      -DCMAKE_CXX_FLAGS="-fsanitize=thread -Wno-tsan" >/dev/null
    cmake --build build-tsan -j "$JOBS" --target integration_test
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" timeout 900 build-tsan/tests/integration_test --gtest_brief=1

    step "fuzz the frame codec for ${FTX_FUZZ_SECONDS:-60} s"
    timeout 900 bash tests/fuzz/run.sh "${FTX_FUZZ_SECONDS:-60}"

    step "build and run the Docker image (podman)"
    timeout 1200 bash tests/docker/docker_test.sh "$BUILD_DIR/ftx" .
    ;;
  *)
    echo "usage: ./dev.sh serve [ftx serve options] | ./dev.sh test" >&2
    exit 2
    ;;
esac
