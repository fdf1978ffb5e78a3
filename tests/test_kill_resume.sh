#!/usr/bin/env bash
# No lost work (issue 7), on a slice of SST-2 (~20-40 s on 2 cores, Release):
#  1. SIGKILL: a run checkpointing every 25 steps (--eval-every 25) is killed with SIGKILL at a
#     random moment after a randomly chosen checkpoint (possibly while it writes the next one),
#     then resumed with --resume: its final weights, optimizer state, best checkpoint, dev
#     predictions and metrics equal the uninterrupted run's bit for bit.
#  2. SIGINT: a run interrupted with SIGINT saves DIR/last at the step it stopped, says so and
#     exits 130; resumed, it too ends bit-identical to the uninterrupted run.
# Set TG_KILL_SEED to replay a particular random kill point (the seed used is printed).
# TAPEGRAD_DATA points at the folder holding sst2/ (default <repo>/../shared/data). Without the
# data the test prints SKIP and exits 77, which CTest reports as skipped.
# usage: test_kill_resume.sh path/to/tapegrad-train
set -euo pipefail
bin=$1
source "$(dirname "$0")/cli_lib.sh"
require_sst2 test_kill_resume
tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
start=$SECONDS
seed=${TG_KILL_SEED:-$(( $(date +%s%N) % 100000 ))}
RANDOM=$seed
echo "kill seed $seed (TG_KILL_SEED=$seed replays it)"

fail() { echo "FAIL: $* (TG_KILL_SEED=$seed)" >&2; exit 1; }
# The step of the newest complete checkpoint in run folder $1 (empty if none yet).
ckpt_step() {
  local t
  for t in "$1/last/trainer.json" "$1/last.old/trainer.json"; do
    # the top-level "step" (trainer.json is written with a one-space indent; "step" also
    # appears, deeper, in every history record)
    if s=$(grep -E '^ "step": [0-9]+' "$t" 2>/dev/null | sed -E 's/[^0-9]*([0-9]+).*/\1/'); then
      echo "$s"
      return
    fi
  done
}

# 4000 rows, batch 32: 125 steps per epoch, 250 in all, a checkpoint every 25 steps.
args=(--train "$data/train.tsv" --dev "$data/dev.tsv" --max-train 4000 --model gru --embed 32 --hidden 32
      --pooling max --epochs 2 --batch 32 --lr 3e-3 --eval-every 25 --seed 5 -q)
total=250

"$bin" train "${args[@]}" --save "$tmp/a" >"$tmp/a.out" || fail "uninterrupted run failed"
ref=$(tail -n 1 "$tmp/a.out")
[ "$(field "$ref" steps)" = $total ] || fail "uninterrupted run made $(field "$ref" steps) steps, expected $total"
echo "uninterrupted: $(field "$ref" steps) steps in $((SECONDS - start)) s, weights $(field "$ref" weights_checksum)"

same_as_reference() {  # same_as_reference DIR SUMMARY WHAT
  local k
  for k in dev_accuracy epoch_of_best step_of_best final_dev_accuracy final_dev_loss steps skipped_steps weights_checksum; do
    [ "$(field "$2" "$k")" = "$(field "$ref" "$k")" ] || fail "$3: $k $(field "$2" "$k") != uninterrupted $(field "$ref" "$k")"
  done
  cmp -s "$tmp/a/last/model.safetensors" "$1/last/model.safetensors" || fail "$3: final weights differ"
  cmp -s "$tmp/a/last/optimizer.json" "$1/last/optimizer.json" || fail "$3: final optimizer state differs"
  cmp -s "$tmp/a/best/model.safetensors" "$1/best/model.safetensors" || fail "$3: best weights differ"
  cmp -s "$tmp/a/best/dev_predictions.jsonl" "$1/best/dev_predictions.jsonl" || fail "$3: best dev predictions differ"
  cmp -s <(deterministic "$tmp/a/metrics.jsonl") <(deterministic "$1/metrics.jsonl") ||
    fail "$3: metrics differ: $(diff <(deterministic "$tmp/a/metrics.jsonl") <(deterministic "$1/metrics.jsonl") | head -6)"
}

# Starts a run saving to $1 in the background and waits until it has checkpointed at step >= $2.
start_and_wait() {
  "$bin" train "${args[@]}" --save "$1" >"$1.out" 2>"$1.err" &
  pid=$!
  local s
  for _ in $(seq 1 3000); do  # up to 5 min on a very busy machine
    s=$(ckpt_step "$1")
    [ -n "$s" ] && [ "$s" -ge "$2" ] && return
    kill -0 "$pid" 2>/dev/null || fail "run $1 ended before its checkpoint at step $2: $(cat "$1.err")"
    sleep 0.1
  done
  fail "no checkpoint at step $2 after 5 minutes"
}

# ---- 1. SIGKILL at a random point after a random checkpoint ----
after=$(( (RANDOM % 6 + 1) * 25 ))            # checkpoint 25 .. 150
delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", (r % 40) / 100 }')  # then 0 .. 0.39 s more
start_and_wait "$tmp/b" "$after"
sleep "$delay"
kill -9 "$pid" 2>/dev/null || fail "run finished before it could be killed (checkpoint $after + ${delay} s)"
set +e
{ wait "$pid"; } 2>/dev/null
rc=$?
set -e
pid=""
[ "$rc" -eq 137 ] || fail "killed run exited $rc, expected 137 (SIGKILL)"
killed_at=$(ckpt_step "$tmp/b")
[ -n "$killed_at" ] || fail "no checkpoint left after the kill: $(ls -R "$tmp/b")"
[ "$killed_at" -lt $total ] || fail "the run had finished when it was killed"
resumed=$("$bin" train --resume "$tmp/b" -q 2>"$tmp/b.err2" | tail -n 1) || fail "resume failed: $(cat "$tmp/b.err2")"
same_as_reference "$tmp/b" "$resumed" "SIGKILL ${delay} s after checkpoint $after, resumed from step $killed_at"
echo "ok   SIGKILL ${delay} s after the step-$after checkpoint, resumed from step $killed_at: bit-identical"

# ---- 2. SIGINT saves DIR/last and exits 130 ----
after=$(( (RANDOM % 6 + 1) * 25 ))
start_and_wait "$tmp/c" "$after"
sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", (r % 40) / 100 }')"
kill -INT "$pid"
set +e
{ wait "$pid"; } 2>/dev/null
rc=$?
set -e
pid=""
[ "$rc" -eq 130 ] || fail "SIGINT: exit status $rc, expected 130: $(cat "$tmp/c.err")"
msg=$(grep 'interrupted at step' "$tmp/c.err") || fail "SIGINT: no 'interrupted at step' message: $(cat "$tmp/c.err")"
at=$(sed -E 's/.*interrupted at step ([0-9]+).*/\1/' <<<"$msg")
[ "$(ckpt_step "$tmp/c")" = "$at" ] || fail "SIGINT at step $at but last/ holds step $(ckpt_step "$tmp/c")"
[ ! -e "$tmp/c/last.tmp" ] || fail "SIGINT left a half-written last.tmp"
resumed=$("$bin" train --resume "$tmp/c" -q 2>"$tmp/c.err2" | tail -n 1) || fail "resume after SIGINT failed: $(cat "$tmp/c.err2")"
same_as_reference "$tmp/c" "$resumed" "SIGINT at step $at, resumed"
echo "ok   SIGINT at step $at: exit 130, last/ saved at that step ($msg); resumed: bit-identical"
echo "test_kill_resume: all checks passed in $((SECONDS - start)) s"
