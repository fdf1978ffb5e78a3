#!/usr/bin/env bash
# The one entry point: installs missing Debian packages, builds, and runs what you ask for.
#   ./run.sh sentiment [options]   train the seed sentiment example (options pass through)
#   ./run.sh test [--sanitize]     build and run every test (CTest); --sanitize: ASan+UBSan build
#   ./run.sh bench [CONFIG...]     RNN training-step benchmark, against libtorch when installed
#   ./run.sh train ... | predict ... | sst2    the training CLI (see README)
#   ./run.sh gradient-flow         the gradient-norm-per-time-step experiment and its plot
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

PACKAGES=(cmake g++ make pkg-config libboost-dev libboost-program-options-dev libfmt-dev doctest-dev
          libopenblas-dev nlohmann-json3-dev gnuplot-nox python3-numpy bc
          libopenmpi-dev openmpi-bin libboost-mpi-dev)

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "run.sh: installing missing packages: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

JOBS=$(nproc 2>/dev/null || echo 2)

build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS" >&2
}

RELEASE="$ROOT/build/release"
cmd=${1:-help}
[ $# -gt 0 ] && shift

case "$cmd" in
  sentiment)
    ensure_packages
    build "$RELEASE"
    exec "$RELEASE/examples/sentiment" "$@"
    ;;
  test)
    ensure_packages
    if [ "${1:-}" = "--sanitize" ]; then
      dir="$ROOT/build/sanitize"
      build "$dir" -DTG_SANITIZE=ON -DTG_BUILD_EXAMPLES=OFF
      ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir "$dir" --output-on-failure -j"$JOBS"
    else
      build "$RELEASE"
      ctest --test-dir "$RELEASE" --output-on-failure -j"$JOBS"
    fi
    ;;
  bench)
    ensure_packages
    build "$RELEASE"
    exec bash "$ROOT/bench/run_bench.sh" "$RELEASE" "$@"
    ;;
  train|predict)
    ensure_packages
    build "$RELEASE"
    exec "$RELEASE/examples/tapegrad-train" "$cmd" "$@"
    ;;
  sst2)
    ensure_packages
    build "$RELEASE"
    data="${TAPEGRAD_DATA:-$ROOT/../shared/data}/sst2"
    exec "$RELEASE/examples/tapegrad-train" train --train "$data/train.tsv" --dev "$data/dev.tsv" \
      --save "$ROOT/runs/sst2" "$@"
    ;;
  gradient-flow)
    ensure_packages
    build "$RELEASE"
    exec "$RELEASE/examples/gradient_flow" "$@"
    ;;
  autograd-example)
    ensure_packages
    build "$RELEASE"
    exec "$RELEASE/examples/autograd_basics"
    ;;
  *)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    [ "$cmd" = help ] || exit 2
    ;;
esac
