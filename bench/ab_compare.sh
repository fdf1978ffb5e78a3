#!/usr/bin/env bash
# Two builds of bench_rnn_bench alternated in one window (A, B, A, B, ...), so machine noise hits
# both alike: each line is one run's median and min ms/step.
#   [THREADS=N] bash bench/ab_compare.sh OLD/bench/bench_rnn_bench NEW/bench/bench_rnn_bench [ROUNDS] [CONFIG...]
# (THREADS: threads per run, default 1)
# e.g. an older commit built in a worktree:
#   git worktree add --detach ../old a0e326e && cmake -S ../old -B ../old/build -DCMAKE_BUILD_TYPE=Release &&
#   cmake --build ../old/build --target bench_rnn_bench &&
#   bash bench/ab_compare.sh ../old/build/bench/bench_rnn_bench build/release/bench/bench_rnn_bench 3 toy small
set -euo pipefail
a=$1 b=$2 rounds=${3:-3} threads=${THREADS:-1}
shift 2; [ $# -gt 0 ] && shift
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(toy small lstm-small medium)
echo "config build median_ms min_ms ($threads thread(s); load $(cut -d' ' -f1 /proc/loadavg))"
for c in "${configs[@]}"; do
  for ((i = 0; i < rounds; ++i)); do
    for which in A B; do
      bin=$a; [ $which = B ] && bin=$b
      OPENBLAS_NUM_THREADS=$threads "$bin" step --config "$c" --threads "$threads" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], sys.argv[2], d["median_ms"], d["min_ms"])' "$c" "$which"
    done
  done
done
