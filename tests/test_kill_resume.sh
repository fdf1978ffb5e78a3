#!/usr/bin/env bash
# No lost work (issues 7 and 14), on a slice of SST-2 (~30-60 s on 2 cores, Release):
#  1. SIGKILL: a run checkpointing every 25 steps (--eval-every 25) is killed with SIGKILL at a
#     random moment after a randomly chosen checkpoint (possibly while it writes the next one),
#     then resumed with --resume: its final weights, optimizer state, best checkpoint, dev
#     predictions and metrics equal the uninterrupted run's bit for bit.
#  2. SIGINT / SIGTERM: a run interrupted with SIGINT (SIGTERM) saves DIR/last at the step it
#     stopped, says so and exits 130 (143); resumed, it too ends bit-identical to the
#     uninterrupted run.
#  3. deterministic kills (strace; skipped without it): a tiny run SIGKILLed at each of its
#     rename(2) calls, and a run killed between the two renames of a checkpoint swap killed
#     again at each rename of its resumed run, always leave a complete checkpoint and resume
#     bit-identical (~15 s).
# Signals come at a random fraction of the time the uninterrupted run took from a checkpoint to
# its end on this machine (never a fixed delay a fast machine would outrun); a run that still ends
# first is tried again, up to 3 times. Set TG_KILL_SEED to replay a particular random kill point
# (the seed used is printed).
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

# Seconds the uninterrupted run took from its step-$1 checkpoint to its end (metrics.jsonl's
# "elapsed", evaluations and checkpoint writes included).
rest_after() {
  local line at="" end
  end=$(field "$(tail -n 1 "$tmp/a/metrics.jsonl")" elapsed)
  while read -r line; do
    [ "$(field "$line" step)" = "$1" ] && at=$(field "$line" elapsed)
  done <"$tmp/a/metrics.jsonl"
  [ -n "$at" ] && [ -n "$end" ] || fail "metrics.jsonl of the uninterrupted run has no elapsed time at step $1"
  awk -v a="$at" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

# Starts a run saving to $1 in the background and waits until it has checkpointed at step >= $2
# (polled every 10 ms, so a fast run is caught soon after that checkpoint).
start_and_wait() {
  rm -rf "$1" "$1.out" "$1.err"
  "$bin" train "${args[@]}" --save "$1" >"$1.out" 2>"$1.err" &
  pid=$!
  local s deadline=$((SECONDS + 300))  # 5 min: a hang, not a slow machine
  while [ $SECONDS -lt $deadline ]; do
    s=$(ckpt_step "$1")
    [ -n "$s" ] && [ "$s" -ge "$2" ] && return
    kill -0 "$pid" 2>/dev/null || fail "run $1 ended before its checkpoint at step $2: $(cat "$1.err")"
    sleep 0.01
  done
  fail "no checkpoint at step $2 after 5 minutes"
}

# The moment of a signal is not a fixed number of seconds (a fast machine would finish the run
# first): pick_moment ATTEMPT sets $after (a checkpoint) and $delay, a random 0-39% of the time
# the uninterrupted run had left after that checkpoint on this machine. Later attempts (the run
# ended before its signal, which proves nothing either way): the first checkpoint, no delay.
pick_moment() {
  if [ "$1" -eq 1 ]; then
    after=$(( (RANDOM % 6 + 1) * 25 ))
    frac=$(( RANDOM % 40 ))
  else
    after=25
    frac=0
  fi
  rest=$(rest_after "$after")
  delay=$(awk -v f="$frac" -v r="$rest" 'BEGIN { printf "%.3f", f / 100 * r }')
}

# signal_run DIR SIGNAL: sends SIGNAL to the run in DIR and waits for it; sets $rc, or "missed"
# when the run had already ended normally.
signal_run() {
  kill "-$2" "$pid" 2>/dev/null || true  # fails when the run is over: its status says so below
  set +e
  { wait "$pid"; } 2>/dev/null
  rc=$?
  set -e
  pid=""
  if [ "$rc" -eq 0 ]; then
    [ "$(ckpt_step "$1")" = $total ] || fail "run $1 exited 0 at step $(ckpt_step "$1") after SIG$2"
    echo "note: run $1 ended before SIG$2 came ($frac% of ${rest} s after checkpoint $after); once more"
    rc=missed
  fi
}

# ---- 1. SIGKILL at a random point after a random checkpoint ----
killed_at=""
for attempt in 1 2 3; do
  pick_moment $attempt
  start_and_wait "$tmp/b" "$after"
  sleep "$delay"
  signal_run "$tmp/b" KILL
  [ "$rc" = missed ] && continue
  [ "$rc" -eq 137 ] || fail "killed run exited $rc, expected 137 (SIGKILL): $(cat "$tmp/b.err")"
  killed_at=$(ckpt_step "$tmp/b")
  [ -n "$killed_at" ] || fail "no checkpoint left after the kill: $(ls -R "$tmp/b")"
  [ "$killed_at" -lt $total ] && break
  echo "note: killed after the final checkpoint ($frac% of ${rest} s after checkpoint $after); once more"
  killed_at=""
done
[ -n "$killed_at" ] || fail "3 runs all ended before they could be killed"
resumed=$("$bin" train --resume "$tmp/b" -q 2>"$tmp/b.err2" | tail -n 1) || fail "resume failed: $(cat "$tmp/b.err2")"
same_as_reference "$tmp/b" "$resumed" "SIGKILL ${delay} s after checkpoint $after, resumed from step $killed_at"
echo "ok   SIGKILL ${delay} s ($frac% of ${rest} s) after the step-$after checkpoint, resumed from step $killed_at: bit-identical"

# ---- 2. SIGINT and SIGTERM save DIR/last and exit 130 / 143 ----
for sig in INT TERM; do
  want=$([ $sig = INT ] && echo 130 || echo 143)
  said=$([ $sig = INT ] && echo "interrupted" || echo "terminated (SIGTERM)")
  d="$tmp/c$sig"
  at=""
  for attempt in 1 2 3; do
    pick_moment $attempt
    start_and_wait "$d" "$after"
    sleep "$delay"
    signal_run "$d" $sig
    [ "$rc" = missed ] && continue
    if [ "$(ckpt_step "$d")" = $total ] && ! grep -qF "$said at step" "$d.err"; then
      # after the last step the default handler is back: the signal ends the process, nothing to test
      echo "note: SIG$sig came after the last step ($frac% of ${rest} s after checkpoint $after, exit $rc); once more"
      continue
    fi
    [ "$rc" -eq "$want" ] || fail "SIG$sig: exit status $rc, expected $want: $(cat "$d.err")"
    msg=$(grep -F "$said at step" "$d.err") || fail "SIG$sig: no '$said at step' message: $(cat "$d.err")"
    at=$(sed -E 's/.* at step ([0-9]+).*/\1/' <<<"$msg")
    break
  done
  [ -n "$at" ] || fail "SIG$sig: 3 runs all ended before the signal"
  [ "$(ckpt_step "$d")" = "$at" ] || fail "SIG$sig at step $at but last/ holds step $(ckpt_step "$d")"
  [ ! -e "$d/last.tmp" ] || fail "SIG$sig left a half-written last.tmp"
  resumed=$("$bin" train --resume "$d" -q 2>"$d.err2" | tail -n 1) || fail "resume after SIG$sig failed: $(cat "$d.err2")"
  same_as_reference "$d" "$resumed" "SIG$sig at step $at, resumed"
  echo "ok   SIG$sig at step $at: exit $want, last/ saved at that step ($msg); resumed: bit-identical"
done

# ---- 3. deterministic kills at every rename, and a second kill after a kill between renames ----
# strace -e inject=rename:signal=KILL:when=N SIGKILLs the run as it enters its N-th rename(2):
# every step of every checkpoint swap (DIR/x -> DIR/x.old, DIR/x.tmp -> DIR/x), of the files
# inside a staged folder and of metrics.jsonl. A tiny run (256 rows, 8 steps, checkpoints at
# steps 4 and 8) is killed at each rename in turn and then resumed (or, if it died before its
# first checkpoint, started again in the same folder); then the state "killed between the two
# renames of a last/ swap" is killed again at each rename of its resumed run. Every state must
# resume and end bit-identical to the uninterrupted tiny run.
strace_bin=$(command -v strace || true)
if [ -z "$strace_bin" ] || ! "$strace_bin" -qq -o /dev/null true 2>/dev/null; then
  echo "SKIP 3: strace is missing or cannot trace here (./run.sh installs it); deterministic kills not run"
else
  head -n 257 "$data/train.tsv" >"$tmp/t.tsv"
  head -n 101 "$data/dev.tsv" >"$tmp/d.tsv"
  tiny=(--train "$tmp/t.tsv" --dev "$tmp/d.tsv" --embed 8 --hidden 8 --epochs 1 --batch 32 --eval-every 4 --seed 3 -q)
  tg() { PATH=/nonexistent "$bin" "$@"; }  # no gnuplot: fewer renames, half the time
  tg train "${tiny[@]}" --save "$tmp/tref" >"$tmp/tref.out" 2>/dev/null || fail "tiny reference run failed"
  "$strace_bin" -qq -o "$tmp/renames.txt" -e trace=rename env PATH=/nonexistent "$bin" train "${tiny[@]}" \
    --save "$tmp/ttrace" >/dev/null 2>&1 || fail "traced tiny run failed"
  nren=$(grep -c '^rename(' "$tmp/renames.txt" || true)
  [ "$nren" -ge 6 ] || fail "expected the tiny run to rename at least 6 times, saw $nren: $(head -3 "$tmp/renames.txt")"
  # the first "last.tmp -> last" that follows a "last -> last.old": the kill between the renames
  between=$(grep -n '^rename(' "$tmp/renames.txt" | awk -F: '/\/last", ".*\/last.old"/ { seen = 1 } seen && /\/last.tmp", ".*\/last"\)/ { print NR; exit }')
  [ -n "$between" ] || fail "no last/ swap after a first last/ in the trace: $(cat "$tmp/renames.txt")"
  tiny_same() {  # tiny_same DIR WHAT: DIR ended like the tiny reference
    cmp -s "$tmp/tref/last/model.safetensors" "$1/last/model.safetensors" || fail "$2: final weights differ"
    cmp -s "$tmp/tref/last/optimizer.json" "$1/last/optimizer.json" || fail "$2: final optimizer state differs"
    cmp -s "$tmp/tref/best/model.safetensors" "$1/best/model.safetensors" || fail "$2: best weights differ"
    cmp -s <(deterministic "$tmp/tref/metrics.jsonl") <(deterministic "$1/metrics.jsonl") || fail "$2: metrics differ"
    ls -d "$1"/*.tmp "$1"/*.old >/dev/null 2>&1 && fail "$2: left $(ls -d "$1"/*.tmp "$1"/*.old)"
    return 0
  }
  # kill_at N DIR ARGS...: runs ARGS on DIR, SIGKILLed at its N-th rename; sets $krc
  kill_at() {
    local n=$1 dir=$2
    shift 2
    krc=0
    { "$strace_bin" -qq -o /dev/null -e trace=rename -e inject=rename:signal=KILL:when=$n \
      env PATH=/nonexistent "$bin" "$@" >/dev/null 2>"$dir.err"; } 2>/dev/null || krc=$?
  }
  any_ckpt() {
    local c
    for c in last last.old best best.old; do [ -f "$1/$c/trainer.json" ] && return 0; done
    return 1
  }
  # finish DIR WHAT: what a user does next (resume, or start again if nothing was saved), then compare
  finish() {
    if any_ckpt "$1"; then  # --resume DIR takes last/ (or last.old/, or best/ before the first last/)
      tg train --resume "$1" -q >/dev/null 2>"$1.err2" || fail "$2: resume failed: $(cat "$1.err2")"
    else
      tg train "${tiny[@]}" --save "$1" >/dev/null 2>"$1.err2" || fail "$2: fresh run into the folder failed: $(cat "$1.err2")"
    fi
    tiny_same "$1" "$2"
  }
  kills=0
  for n in $(seq 1 "$nren"); do
    d="$tmp/k1_$n"
    kill_at "$n" "$d" train "${tiny[@]}" --save "$d"
    [ "$krc" -ne 0 ] || fail "kill at rename $n: the run was not killed"
    finish "$d" "killed at rename $n of $nren"
    kills=$((kills + 1))
  done
  echo "ok   killed at each of the $nren renames of a run, then resumed: all bit-identical"
  # kill 1 between the renames of a last/ swap, then kill 2 at each rename of the resumed run
  kill_at "$between" "$tmp/between" train "${tiny[@]}" --save "$tmp/between"
  [ -d "$tmp/between/last.old" ] && [ -d "$tmp/between/last.tmp" ] && [ ! -e "$tmp/between/last" ] ||
    fail "kill at rename $between did not leave last.old + last.tmp without last: $(ls "$tmp/between")"
  n=1
  while :; do
    d="$tmp/k2_$n"
    rm -rf "$d" && cp -r "$tmp/between" "$d"
    kill_at "$n" "$d" train --resume "$d" -q
    [ "$krc" -eq 0 ] && break  # the resumed run made fewer than n renames: it finished
    any_ckpt "$d" || fail "second kill at rename $n: no complete checkpoint left: $(ls -R "$d")"
    finish "$d" "killed between the renames, then at rename $n of the resumed run"
    kills=$((kills + 1)) n=$((n + 1))
  done
  tiny_same "$d" "resumed after a kill between the renames"
  echo "ok   killed between the renames of a last/ swap (rename $between), then again at each of the $((n - 1)) renames of the resumed run: always a complete checkpoint, all bit-identical ($kills kills)"
fi
echo "test_kill_resume: all checks passed in $((SECONDS - start)) s"
