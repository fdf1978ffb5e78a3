#!/usr/bin/env bash
# The seed example's promise: for seeds 1-10 and every cell, the output has the documented form,
# the loss falls at every report to at most 0.02 at epoch 300, and both test sentences are right.
set -euo pipefail
bin=$1
fail=0
for cell in rnn lstm gru; do
  for seed in 1 2 3 4 5 6 7 8 9 10; do
    out=$("$bin" --seed "$seed" --cell "$cell" --predict "an unknown zyzzyva word")
    verdict=$(awk '
      /^Epoch [0-9]+\/300, Loss = [0-9]+\.[0-9][0-9][0-9][0-9]$/ { n++; l = $NF + 0; if (n > 1 && l >= prev) bad = "loss did not fall"; prev = l }
      /^=== Testing ===$/ { testing = 1 }
      /^\[.The., .movie., .is., .bad.\] → Prediction: 0$/ { ok0 = 1 }
      /^\[.The., .movie., .is., .good.\] → Prediction: 1$/ { ok1 = 1 }
      /zyzzyva.*Prediction: [01]$/ { unk = 1 }
      END {
        if (n != 6) bad = bad " expected 6 epoch lines, got " n
        if (prev > 0.02) bad = bad " final loss " prev " > 0.02"
        if (!testing || !ok0 || !ok1) bad = bad " wrong or missing test predictions"
        if (!unk) bad = bad " unknown words not classified"
        print bad == "" ? "ok" : bad
      }' <<<"$out")
    if [ "$verdict" != ok ]; then
      echo "cell=$cell seed=$seed: $verdict"; echo "$out"; fail=1
    fi
  done
done
[ $fail -eq 0 ] && echo "sentiment: 30 runs ok"
exit $fail
