#!/usr/bin/env bash
# Runs every libFuzzer target built in BUILD_DIR for SECONDS each, two at a time.
#   tests/fuzz/run_fuzz.sh BUILD_DIR SECONDS [TARGET...]
# (`./run.sh fuzz SECONDS` builds the targets and calls this.)
#
# First replays tests/fuzz/regressions/<target>/* (inputs of fixed findings), then fuzzes from
# the seed corpus tests/fuzz/corpus/<target>/ plus the corpus earlier runs grew in
# BUILD_DIR/work/<target>/. Prints executions per target. Exits non-zero on any finding (crash,
# sanitizer report, leak, timeout, failed property check); the input is saved under
# BUILD_DIR/findings/<target>/ and the log is printed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "$1" && pwd)
SECONDS_EACH=$2
shift 2
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(safetensors dataset tokenizer vocab conllu)
PARALLEL=${FUZZ_PARALLEL:-2}

# Leaks are findings (libFuzzer checks each input); UB aborts (the build uses -fno-sanitize-recover).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

status=0
# 1. Regression inputs: each must run clean.
for t in "${TARGETS[@]}"; do
  shopt -s nullglob
  inputs=("$HERE/regressions/$t"/*)
  shopt -u nullglob
  [ ${#inputs[@]} -eq 0 ] && continue
  if "$BUILD/fuzz_$t" -runs=1 -timeout=10 "${inputs[@]}" >"$BUILD/regressions_$t.log" 2>&1; then
    echo "fuzz: $t: ${#inputs[@]} regression input(s) pass"
  else
    echo "fuzz: $t: a regression input FAILED:"
    tail -n 40 "$BUILD/regressions_$t.log"
    status=1
  fi
done

# 2. Fuzz each target for SECONDS_EACH, PARALLEL at a time.
run_one() {
  local t=$1
  mkdir -p "$BUILD/work/$t" "$BUILD/findings/$t"
  "$BUILD/fuzz_$t" "$BUILD/work/$t" "$HERE/corpus/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$BUILD/findings/$t/" >"$BUILD/fuzz_$t.log" 2>&1
  echo $? >"$BUILD/fuzz_$t.rc"
}
for t in "${TARGETS[@]}"; do
  rm -f "$BUILD/fuzz_$t.rc"
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  run_one "$t" &
done
wait
for t in "${TARGETS[@]}"; do
  rc=$(cat "$BUILD/fuzz_$t.rc" 2>/dev/null || echo 99)
  log="$BUILD/fuzz_$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  corpus=$(ls "$BUILD/work/$t" | wc -l)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ${execs:-?} executions in ${SECONDS_EACH} s (${speed:-?}/s), corpus $corpus inputs, no finding"
  else
    echo "fuzz: $t: FINDING (exit $rc) after ${execs:-?} executions; input saved in $BUILD/findings/$t/:"
    ls -1 "$BUILD/findings/$t/"
    grep -v -E '^#[0-9]+|^INFO:|^MS:|^stat::' "$log" | tail -n 60
    status=1
  fi
done
exit $status
