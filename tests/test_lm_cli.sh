#!/usr/bin/env bash
# tapegrad-lm end to end on a tiny generated text (a few seconds):
#  1. training writes best/, last/ (every checkpoint file), metrics.jsonl, and a final JSON line;
#  2. a run stopped (--stop-after) and resumed (--resume) ends bit-identical to the uninterrupted
#     run, across an epoch boundary, with dropout on: weights, optimizer, carried state, metrics;
#     Ctrl-C saves last/ and exits 130;
#  3. --tie-weights shares the embedding with the decoder (vocab x hidden fewer parameters);
#  4. bad input is refused with a message naming the file, the option or the position;
#  5. sampling is reproducible: the same --seed gives the same text, another seed another one;
#     a corrupted checkpoint is refused;
#  6. word level: a capped vocabulary with <eos>, trained and sampled.
# usage: test_lm_cli.sh path/to/tapegrad-lm
set -euo pipefail
bin=$1
source "$(dirname "$0")/cli_lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ~2,400 characters of verse-like text (deterministic), with one non-ASCII code point.
for i in $(seq 1 40); do
  printf 'ROMEO: line %d of the caf\xc3\xa9 play,\nJULIET: and %d more.\n' "$i" $((i * 7 % 13))
done >"$tmp/small.txt"
# metrics without the timing fields
timeless() { sed -E 's/"(train_seconds|seconds_per_step|eval_seconds|elapsed)":[^,}]*,?//g' "$1"; }
expect_error() {  # expect_error PATTERN CMD...: CMD fails and its stderr matches PATTERN
  local pattern=$1 err
  shift
  if err=$("$@" 2>&1 >/dev/null); then fail "accepted: $*"; fi
  grep -q -- "$pattern" <<<"$err" || fail "message for '$*' lacks '$pattern': $err"
}

args=(--text "$tmp/small.txt" --embed 32 --hidden 32 --batch 8 --bptt 32 --eval-batch 2 --dropout 0.1
      --lr 3e-3 --eval-every 5 --epochs 3 --seed 7 -q)

# ---- 1. train ----
out=$("$bin" train "${args[@]}" --stop-after 10 --save "$tmp/a")
summary=$(tail -n 1 <<<"$out")
echo "uninterrupted: $summary"
[ "$(field "$summary" status)" = '"stop-after"' ] || fail "status is not stop-after: $summary"
[ "$(field "$summary" step)" = 10 ] || fail "not 10 steps: $summary"
loss=$(field "$summary" last_valid_loss)
awk -v l="$loss" 'BEGIN { exit !(l > 0 && l < 10) }' || fail "validation loss $loss out of range"
for d in best last; do
  for f in config.json vocab.json model.safetensors state.safetensors optimizer.json trainer.json manifest.json; do
    [ -s "$tmp/a/$d/$f" ] || fail "$d/$f missing"
  done
done
# 7 chunks per epoch: evaluations at 5, 7 (end of epoch 1) and 10
[ "$(wc -l <"$tmp/a/metrics.jsonl")" = 3 ] || fail "metrics.jsonl does not hold 3 evaluations"
grep -q '"valid_bpc"' "$tmp/a/metrics.jsonl" || fail "metrics lack valid_bpc"
if command -v gnuplot >/dev/null; then [ -s "$tmp/a/metrics.png" ] || fail "metrics.png missing"; fi

# ---- 2. stop and resume: bit-identical ----
"$bin" train "${args[@]}" --stop-after 5 --save "$tmp/b" >/dev/null
"$bin" train --resume "$tmp/b" --stop-after 10 -q >/dev/null
for f in model.safetensors optimizer.json state.safetensors; do
  cmp -s "$tmp/a/last/$f" "$tmp/b/last/$f" || fail "resumed run's last/$f differs from the uninterrupted run's"
done
cmp -s <(timeless "$tmp/a/metrics.jsonl") <(timeless "$tmp/b/metrics.jsonl") ||
  fail "metrics differ: $(diff <(timeless "$tmp/a/metrics.jsonl") <(timeless "$tmp/b/metrics.jsonl"))"
expect_error "cannot change when resuming" "$bin" train --resume "$tmp/b" --hidden 64 -q
expect_error "not empty.*tapegrad-lm train --resume" "$bin" train "${args[@]}" --stop-after 1 --save "$tmp/a"
echo "resume: bit-identical"

# Ctrl-C: the run validates, saves last/ and exits 130; --resume continues from there.
"$bin" train --text "$tmp/small.txt" --embed 16 --hidden 16 --batch 4 --bptt 16 --eval-batch 2 --epochs 1000000 --eval-every 0 \
  --save "$tmp/int" >"$tmp/int.out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "^tapegrad-lm:" "$tmp/int.out" && break; sleep 0.05; done
sleep 0.3
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" = 130 ] || fail "an interrupted run exited with $rc, not 130: $(cat "$tmp/int.out")"
grep -q '"status":"interrupted"' "$tmp/int.out" || fail "no interrupted status: $(tail -n 2 "$tmp/int.out")"
[ -s "$tmp/int/last/trainer.json" ] || fail "an interrupted run left no last/"
"$bin" train --resume "$tmp/int" --epochs 1000000 --stop-after $(($(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$tmp/int/last/trainer.json") + 2)) -q >/dev/null
echo "interrupt: saved and resumed"

# ---- 3. tied weights ----
untied=$("$bin" train "${args[@]}" --stop-after 1 | tail -n 1)
tied=$("$bin" train "${args[@]}" --tie-weights --stop-after 1 | tail -n 1)
vocab=$(field "$tied" vocab)
[ $(($(field "$untied" parameters) - $(field "$tied" parameters))) = $((vocab * 32)) ] ||
  fail "tied model does not share the vocab x hidden matrix: $untied / $tied"
expect_error "needs --embed equal to --hidden" "$bin" train --text "$tmp/small.txt" --embed 16 --hidden 32 --tie-weights

# ---- 4. bad input ----
: >"$tmp/empty.txt"
printf 'ok\nbad \xff byte\n' >"$tmp/latin1.txt"
expect_error "no such file" "$bin" train --text "$tmp/missing.txt"
expect_error "empty" "$bin" train --text "$tmp/empty.txt"
expect_error "invalid UTF-8 at byte 7 (line 2, column 5)" "$bin" train --text "$tmp/latin1.txt"
expect_error "too short for one chunk of 4000 steps.*--bptt" "$bin" train --text "$tmp/small.txt" --bptt 4000
expect_error "validation part.*--eval-batch" "$bin" train --text "$tmp/small.txt" --bptt 8 --eval-batch 500
expect_error "unknown recurrent cell" "$bin" train --text "$tmp/small.txt" --model transformer
echo "bad input: refused"

# ---- 5. sampling ----
sample=("$bin" sample --checkpoint "$tmp/a" --prompt "ROMEO:" --length 200 --temperature 0.8 --top-k 10)
s1=$("${sample[@]}" --seed 3)
s2=$("${sample[@]}" --seed 3)
s3=$("${sample[@]}" --seed 4)
[ "$s1" = "$s2" ] || fail "the same seed gave different samples"
[ "$s1" != "$s3" ] || fail "seeds 3 and 4 gave the same 200 characters"
[[ "$s1" == ROMEO:* ]] || fail "the sample does not start with the prompt: $s1"
[ "$(printf '%s' "$s1" | python3 -c 'import sys; print(len(sys.stdin.read()))')" -ge 200 ] || fail "sample too short"
g1=$("$bin" sample --checkpoint "$tmp/a/last" --prompt "JULIET:" --length 50 --temperature 0)
g2=$("$bin" sample --checkpoint "$tmp/a/last" --prompt "JULIET:" --length 50 --temperature 0 --seed 9)
[ "$g1" = "$g2" ] || fail "greedy sampling depends on the seed"
expect_error "temperature" "$bin" sample --checkpoint "$tmp/a" --temperature -1
expect_error "top-k" "$bin" sample --checkpoint "$tmp/a" --top-k -2
cp -r "$tmp/a/best" "$tmp/broken"
python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-5] ^= 1; open(p, "wb").write(b)' \
  "$tmp/broken/model.safetensors"
expect_error "does not match manifest.json" "$bin" sample --checkpoint "$tmp/broken"
mkdir "$tmp/classifier" && echo '{"format": "tapegrad-text-classifier"}' >"$tmp/classifier/config.json"
expect_error "not a tapegrad-lm checkpoint" "$bin" sample --checkpoint "$tmp/classifier"
echo "sampling: reproducible"

# ---- 6. word level: <eos> at line ends, a capped vocabulary ----
words=$("$bin" train --text "$tmp/small.txt" --level word --vocab-cap 20 --embed 16 --hidden 16 --batch 2 --bptt 8 \
  --eval-batch 1 --stop-after 2 --save "$tmp/w" -q | tail -n 1)
[ "$(field "$words" vocab)" = 20 ] || fail "--vocab-cap 20 not applied: $words"
grep -q '"<eos>"' "$tmp/w/best/vocab.json" || fail "no <eos> token in the word vocabulary"
"$bin" sample --checkpoint "$tmp/w" --prompt "ROMEO: line" --length 10 --seed 1 >/dev/null
echo "word level: trained and sampled"
echo "PASS"
