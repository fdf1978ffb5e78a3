#!/usr/bin/env bash
# The one entry point: installs missing Debian packages, builds, and runs what you ask for.
#   ./run.sh sentiment [options]   train the seed sentiment example (options pass through)
#   ./run.sh test [--sanitize]     build and run every test (CTest); --sanitize: ASan+UBSan build
#   ./run.sh bench [CONFIG...]     RNN training-step benchmark, against libtorch when installed
#   ./run.sh throughput [ROUNDS]   SST-2 and char-LM training throughput against PyTorch, runs alternated
#   ./run.sh train ... | predict ... | sst2    the training CLI; sst2: the recommended SST-2 run
#   ./run.sh lm [options] | lm sample --checkpoint DIR ...   character LM on tinyshakespeare (docs/lm.md)
#   ./run.sh tag [options] | tag eval ...   BiLSTM part-of-speech tagger on UD English-LinES (docs/tagging.md)
#   ./run.sh lines-source [options]  9-class source-text identification on UD English-LinES (docs/training.md)
#   ./run.sh gradient-flow         the gradient-norm-per-time-step experiment and its plot
#   ./run.sh fuzz [SECONDS]        libFuzzer targets (clang, ASan+UBSan), each for SECONDS (default 60)
#   ./run.sh soak [STEPS [ASAN_STEPS]]  toy-model memory soak (100,000 steps), then under ASan/LSan
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

# coreutils/util-linux/mount: the CLI tests use sha256sum, timeout, mkfifo, unshare and mount (tmpfs);
# mawk: the tests and bench scripts use awk (priority required, but not essential).
PACKAGES=(cmake g++ make pkg-config coreutils util-linux mount mawk libboost-dev libboost-program-options-dev libfmt-dev doctest-dev
          libopenblas-dev nlohmann-json3-dev gnuplot-nox python3 python3-numpy bc procps
          strace libopenmpi-dev openmpi-bin libboost-mpi-dev)
# Only `./run.sh fuzz` needs these: clang, its libFuzzer/sanitizer runtimes (libclang_rt.fuzzer,
# only recommended by clang on Debian 12) and llvm-symbolizer for readable reports.
FUZZ_PACKAGES=(clang libclang-rt-14-dev llvm)

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

# args = the (option, value) pairs of the array `recommended` whose option the command line ("$@")
# does not give itself, as --opt or --opt=value.
merge_recommended() {
  args=()
  local i opt given a
  for ((i = 0; i < ${#recommended[@]}; i += 2)); do
    opt=${recommended[i]} given=0
    for a in "$@"; do [[ "$a" == "$opt" || "$a" == "$opt="* ]] && given=1; done
    [ "$given" = 1 ] || args+=("$opt" "${recommended[i + 1]}")
  done
}

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
    ensure_packages libtorch-dev libdnnl-dev  # the libtorch and oneDNN peers the ratios are taken against
    build "$RELEASE"
    exec bash "$ROOT/bench/run_bench.sh" "$RELEASE" "$@"
    ;;
  throughput)
    ensure_packages python3-torch  # the PyTorch side (Debian's, at /usr/bin/python3)
    build "$RELEASE"
    BUILD_DIR="$RELEASE" exec bash "$ROOT/bench/throughput_vs_torch.sh" "$@"
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
    # The README's recommended configuration; an option given on the command line replaces its entry.
    recommended=(--model lstm --pooling max --embed-dropout 0.25 --lr 2e-3 --min-freq 2 --save "$ROOT/runs/sst2")
    merge_recommended "$@"
    exec "$RELEASE/examples/tapegrad-train" train --train "$data/train.tsv" --dev "$data/dev.tsv" "${args[@]}" "$@"
    ;;
  lm)
    ensure_packages
    cmake -S "$ROOT" -B "$RELEASE" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$RELEASE" --target tapegrad-lm -j"$JOBS" >&2
    if [ "${1:-}" = sample ]; then shift; exec "$RELEASE/examples/tapegrad-lm" sample "$@"; fi
    [ "${1:-}" = train ] && shift
    # The recommended configuration (docs/lm.md); an option given on the command line replaces its entry.
    recommended=(--text "${TAPEGRAD_DATA:-$ROOT/../shared/data}/tinyshakespeare/input.txt" --model lstm --embed 32
                 --hidden 128 --layers 1 --batch 16 --bptt 64 --lr 3e-3 --time-limit 600 --epochs 100
                 --eval-every 1000 --save "$ROOT/runs/lm")
    merge_recommended "$@"
    for a in "$@"; do [ "$a" = --resume ] && args=(); done  # a resumed run keeps its own options
    exec "$RELEASE/examples/tapegrad-lm" train "${args[@]}" "$@"
    ;;
  tag)  # BiLSTM UPOS tagger on UD English-LinES (docs/tagging.md); `tag eval ...` / `tag --resume DIR` pass through
    ensure_packages
    build "$RELEASE"
    [ "${1:-}" = eval ] && { shift; exec "$RELEASE/examples/tapegrad-tag" eval "$@"; }
    [[ " $* " == *" --resume"* ]] && exec "$RELEASE/examples/tapegrad-tag" train "$@"
    ud="${TAPEGRAD_DATA:-$ROOT/../shared/data}/ud_english_lines/en_lines-ud"
    # The recommended configuration (README); an option given on the command line replaces its entry.
    defaults=(--train "$ud-train.conllu" --dev "$ud-dev.conllu" --test "$ud-test.conllu" --epochs 30 --seed 1
              --save "$ROOT/runs/tag")
    keep=()
    for ((i = 0; i < ${#defaults[@]}; i += 2)); do
      [[ " $* " == *" ${defaults[i]} "* || " $* " == *" ${defaults[i]}="* ]] || keep+=("${defaults[i]}" "${defaults[i + 1]}")
    done
    exec "$RELEASE/examples/tapegrad-tag" train "${keep[@]}" "$@"
    ;;
  lines-source)  # which of 9 source texts a UD English-LinES sentence is from (docs/training.md, "Multi-class data")
    ensure_packages
    cmake -S "$ROOT" -B "$RELEASE" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$RELEASE" --target tapegrad-train -j"$JOBS" >&2
    ud="${TAPEGRAD_DATA:-$ROOT/../shared/data}/ud_english_lines/en_lines-ud"
    out="$ROOT/build/lines-source"
    mkdir -p "$out"
    # sent_id en_lines-ud-SPLIT-docN-M: label N-1; the sentence is the "# text = " line (tabs made spaces).
    for split in train dev test; do
      [ -f "$ud-$split.conllu" ] || { echo "run.sh lines-source: $ud-$split.conllu not found (set TAPEGRAD_DATA)" >&2; exit 1; }
      awk 'BEGIN { print "sentence\tlabel" }
           /^# sent_id = / { n = split($4, p, "-"); doc = p[n - 1]; sub(/^doc/, "", doc) }
           /^# text = / { t = substr($0, 10); gsub(/\t/, " ", t); print t "\t" (doc - 1) }' \
        "$ud-$split.conllu" >"$out/$split.tsv.tmp" && mv "$out/$split.tsv.tmp" "$out/$split.tsv"
    done
    printf '%s\n' access-help auster bellow conrad europarl gordimer rowling winterson cusk >"$out/label-names.txt"
    # The recommended configuration; an option given on the command line replaces its entry.
    recommended=(--model lstm --pooling max --embed 64 --hidden 128 --epochs 15 --batch 32
                 --lr 3e-3 --embed-dropout 0.25 --seed 1 --label-names "$out/label-names.txt"
                 --save "$ROOT/runs/lines-source")
    merge_recommended "$@"
    [[ " $* " == *" --bidirectional "* || " $* " == *" --resume"* ]] || args+=(--bidirectional)
    "$RELEASE/examples/tapegrad-train" train --train "$out/train.tsv" --dev "$out/dev.tsv" "${args[@]}" "$@" | tee "$out/train.log"
    # The test split, once, with the best checkpoint: accuracy and macro-F1 over the 9 classes.
    run=$(tail -n 1 "$out/train.log" | grep -o '"save":"[^"]*"' | cut -d'"' -f4)
    [ -n "$run" ] || exit 0
    tail -n +2 "$out/test.tsv" | cut -f2 >"$out/test.gold"
    tail -n +2 "$out/test.tsv" | cut -f1 | "$RELEASE/examples/tapegrad-train" predict --checkpoint "$run" |
      cut -d' ' -f1 | paste "$out/test.gold" - |
      awk -F'\t' '{ n++; ok += $1 == $2; g[$1]++; p[$2]++; if ($1 == $2) h[$1]++; if ($1 + 0 > k) k = $1 + 0 }
        END { for (c = 0; c <= k; c++) { pr = p[c] ? h[c] / p[c] : 0; rc = g[c] ? h[c] / g[c] : 0
                if (g[c] || p[c]) { f += pr + rc > 0 ? 2 * pr * rc / (pr + rc) : 0; m++ } }
              printf "{\"test_accuracy\":%.4f,\"test_macro_f1\":%.4f,\"test_examples\":%d,\"checkpoint\":\"%s\"}\n",
                     ok / n, f / m, n, run }' run="$run" | tee "$run/test.json"
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
  fuzz)
    ensure_packages "${FUZZ_PACKAGES[@]}"
    secs=${1:-60}
    [[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh fuzz: SECONDS must be a positive integer, got '$secs'" >&2; exit 2; }
    dir="$ROOT/build/fuzz"
    CC=clang CXX=clang++ cmake -S "$ROOT/tests/fuzz" -B "$dir" >/dev/null
    cmake --build "$dir" -j"$JOBS" >&2
    exec bash "$ROOT/tests/fuzz/run_fuzz.sh" "$dir" "$secs"
    ;;
  soak)
    ensure_packages
    steps=${1:-100000}
    asan_steps=${2:-100000}
    cmake -S "$ROOT" -B "$RELEASE" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$RELEASE" --target tapegrad_soak -j"$JOBS" >&2
    # Training; grad-on forwards nobody backwards (their graphs must die with them); both interleaved.
    for mode in train forward-only mixed; do "$RELEASE/tests/soak/tapegrad_soak" --steps "$steps" --mode "$mode"; done
    dir="$ROOT/build/sanitize"
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DTG_SANITIZE=ON -DTG_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$dir" --target tapegrad_soak -j"$JOBS" >&2
    # No quarantine: freed blocks are reused at once, so RSS must stay flat here too; LeakSanitizer
    # runs at exit and makes the program fail if anything leaked.
    ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=0:thread_local_quarantine_size_kb=0 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "$dir/tests/soak/tapegrad_soak" --steps "$asan_steps" --mode mixed
    echo "soak: LeakSanitizer reported no leak (ASan+UBSan build, $asan_steps steps)"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    [ "$cmd" = help ] || exit 2
    ;;
esac
