#!/usr/bin/env bash
# tapegrad-train --np 2 (data-parallel over MPI) end to end on a slice of SST-2 (~45 s on 2 cores):
#  1. `train --np 2` relaunches itself under mpirun, trains, and only rank 0 prints (mpirun's
#     --tag-output shows which rank wrote each line); the final JSON line says world_size 2.
#  2. 2 processes x batch 16 train like 1 process x batch 32 (dropout off): the first
#     evaluation's train loss and dev loss agree to 1e-4 relative.
#  3. --stop-after then --resume with --np 2 (through a hostfile "localhost slots=2") ends
#     bit-identical to the uninterrupted 2-process run of 1.
#  4. Only rank 0 writes: started by mpirun directly with a different --save per rank (MPMD),
#     rank 1's folder is never created.
#  5. A rank that fails (rank 1 cannot read its --train file) ends the whole job non-zero within
#     30 s, with "rank 1: error: ..." on stderr.
#  6. SIGINT to the launching process: every rank stops after the same step, rank 0 saves
#     last/ there, the job exits 130; resumed with --np 2 it ends bit-identical to 1.
#  7. SIGTERM to the launching process: the same, exit 143 ("terminated (SIGTERM)").
# usage: train_np_check.sh MPIRUN path/to/tapegrad-train
# TAPEGRAD_DATA points at the folder holding sst2/ (default <repo>/../shared/data); without the
# data the test prints SKIP and exits 77, which CTest reports as skipped.
set -euo pipefail
mpirun=$1
bin=$2
source "$(dirname "$0")/../cli_lib.sh"
require_sst2 train_np_check
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export TG_MPIRUN=$mpirun
start=$SECONDS

root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)

base=(--train "$data/train.tsv" --dev "$data/dev.tsv" --max-train 3000 --model gru --embed 32 --hidden 32
      --pooling max --epochs 1 --batch 32 --lr 3e-3 --seed 3)
args=("${base[@]}" --eval-every 30)

# ---- 1. --np 2: runs, world_size 2, only rank 0 prints ----
TG_MPIRUN_ARGS=--tag-output "$bin" train "${args[@]}" --np 2 --save "$tmp/a" >"$tmp/a.out" 2>"$tmp/a.err" ||
  fail "train --np 2 exited $?: $(tail -5 "$tmp/a.err")"
grep -q '^\[1,0\]<stdout>:tapegrad-train: 3000 train / 872 dev examples.*2 processes x batch 16' "$tmp/a.out" ||
  fail "no rank-0 start line naming 2 processes x batch 16: $(head -3 "$tmp/a.out")"
if grep -q '^\[1,1\]<std' "$tmp/a.out" "$tmp/a.err"; then
  fail "rank 1 printed: $(grep -h '^\[1,1\]<std' "$tmp/a.out" "$tmp/a.err" | head -3)"
fi
summary=$(tail -n 1 "$tmp/a.out" | sed 's/^\[1,0\]<stdout>://')
[ "$(field "$summary" world_size)" = 2 ] || fail "final JSON line lacks world_size 2: $summary"
[ "$(grep -c '"world_size"' "$tmp/a.out")" -eq 1 ] || fail "expected exactly one JSON summary line"
[ "$(wc -l <"$tmp/a/metrics.jsonl")" -eq 4 ] || fail "expected 4 evaluations (every 30 of 94 steps + end of epoch)"
[ -s "$tmp/a/best/dev_predictions.jsonl" ] || fail "best/dev_predictions.jsonl missing"
[ "$(wc -l <"$tmp/a/best/dev_predictions.jsonl")" -eq 872 ] || fail "best/dev_predictions.jsonl is not 872 lines"
grep -Eq '"world_size": ?2' "$tmp/a/last/trainer.json" || fail "last/trainer.json lacks world_size 2"
echo "ok   --np 2: world_size 2, only rank 0 printed, dev accuracy $(field "$summary" dev_accuracy), $(field "$summary" steps) steps"

# ---- 2. 2 x batch 16 == 1 x batch 32 (no dropout) ----
nodrop=(--dropout 0 --stop-after 30 -q)
"$bin" train "${args[@]}" "${nodrop[@]}" --save "$tmp/one" >/dev/null || fail "1-process run failed"
"$bin" train "${args[@]}" "${nodrop[@]}" --np 2 --save "$tmp/two" >/dev/null || fail "2-process run failed"
for k in train_loss dev_loss; do
  v1=$(field "$(head -1 "$tmp/one/metrics.jsonl")" "$k")
  v2=$(field "$(head -1 "$tmp/two/metrics.jsonl")" "$k")
  awk -v a="$v1" -v b="$v2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-4 * (a < 0 ? -a : a)) }' ||
    fail "$k after 30 steps: 1 process $v1, 2 processes $v2 (more than 1e-4 relative apart)"
  echo "ok   $k after 30 steps: 1 process x 32 $v1, 2 processes x 16 $v2"
done

# ---- 3. stop, then resume with --np 2 through a hostfile: bit-identical ----
"$bin" train "${args[@]}" --np 2 --save "$tmp/b" --stop-after 45 -q >"$tmp/b.out" || fail "--stop-after 45 failed"
[ "$(field "$(tail -n 1 "$tmp/b.out")" steps)" = 45 ] || fail "did not stop at step 45"
echo "localhost slots=2" >"$tmp/hosts"
resumed=$("$bin" train --resume "$tmp/b" --np 2 --hostfile "$tmp/hosts" -q 2>"$tmp/b.err" | tail -n 1) ||
  fail "resume --np 2 --hostfile failed: $(tail -5 "$tmp/b.err")"
for k in dev_accuracy final_dev_loss steps world_size weights_checksum; do
  [ "$(field "$resumed" "$k")" = "$(field "$summary" "$k")" ] ||
    fail "resumed $k $(field "$resumed" "$k") != uninterrupted $(field "$summary" "$k")"
done
same_run_folders "$tmp/a" "$tmp/b"
echo "ok   stopped at step 45, resumed with --np 2 --hostfile (localhost slots=2): bit-identical ($(field "$resumed" weights_checksum))"

# ---- 4. only rank 0 writes (mpirun directly, a different --save per rank) ----
"$mpirun" "${root[@]}" --oversubscribe \
  -np 1 "$bin" train "${base[@]}" --stop-after 10 --eval-every 5 -q --save "$tmp/r0" : \
  -np 1 "$bin" train "${base[@]}" --stop-after 10 --eval-every 5 -q --save "$tmp/r1" >"$tmp/m.out" 2>"$tmp/m.err" ||
  fail "mpirun -np 1 ... : -np 1 ... failed: $(tail -5 "$tmp/m.err")"
[ "$(field "$(tail -n 1 "$tmp/m.out")" world_size)" = 2 ] || fail "started by mpirun: world_size is not 2"
[ -s "$tmp/r0/last/model.safetensors" ] || fail "rank 0 did not write its checkpoint"
[ ! -e "$tmp/r1" ] || fail "rank 1 wrote to its --save folder: $(find "$tmp/r1" | head -5)"
echo "ok   started by mpirun directly: only rank 0 wrote (rank 1's --save folder never created)"

# ---- 5. a failing rank ends the job ----
t0=$SECONDS
set +e
timeout 60 "$mpirun" "${root[@]}" --oversubscribe \
  -np 1 "$bin" train "${args[@]}" -q : \
  -np 1 "$bin" train "${args[@]/$data\/train.tsv/$tmp/missing.tsv}" -q >"$tmp/f.out" 2>"$tmp/f.err"
rc=$?
set -e
((SECONDS - t0 <= 30)) || fail "the job took $((SECONDS - t0)) s to end after rank 1 failed"
[ "$rc" -ne 0 ] || fail "mpirun exited 0 although rank 1 failed"
[ "$rc" -ne 124 ] || fail "the job hung after rank 1 failed"
grep -q "^rank 1: error: .*missing.tsv" "$tmp/f.err" || fail "no 'rank 1: error: ... missing.tsv' line: $(head -5 "$tmp/f.err")"
echo "ok   rank 1 failed: mpirun exited $rc after $((SECONDS - t0)) s ($(grep -m1 '^rank 1: error' "$tmp/f.err"))"
# ---- 6, 7. Ctrl-C (SIGINT) and SIGTERM to the launcher save last/ on every rank's same step ----
# The signal goes out as soon as the first checkpoint (step 30 of 94) is seen, polled every 10 ms.
# A job that ends before the signal reaches it (a machine fast enough to do the remaining 64
# steps in that time) proves nothing either way: it is run again, up to 3 attempts.
total=$(field "$summary" steps)
# stop_and_resume SIG RC MESSAGE: the job stops with status RC, rank 0 prints MESSAGE once; resumed
# with --np 2 it ends bit-identical to the uninterrupted run of 1.
stop_and_resume() {
  local sig=$1 want_rc=$2 message=$3 attempt pid deadline rc msg at resumed
  for attempt in 1 2 3; do
    rm -rf "$tmp/c"
    "$bin" train "${args[@]}" --np 2 --save "$tmp/c" -q >"$tmp/c.out" 2>"$tmp/c.err" &
    pid=$!
    deadline=$((SECONDS + 60))  # a hang, not a slow machine
    until [ -s "$tmp/c/last/trainer.json" ]; do
      kill -0 "$pid" 2>/dev/null || fail "the --np 2 run ended before its first checkpoint: $(tail -5 "$tmp/c.err")"
      [ $SECONDS -lt $deadline ] || fail "no checkpoint from the --np 2 run after 60 s"
      sleep 0.01
    done
    kill -"$sig" "$pid" 2>/dev/null || true  # fails when the job is over: its status says so below
    set +e
    wait "$pid"
    rc=$?
    set -e
    if grep -Eq "^ \"step\": $total,\$" "$tmp/c/last/trainer.json" && ! grep -q "$message at step" "$tmp/c.err"; then
      echo "note: the --np 2 job ended (step $total, exit $rc) before SIG$sig reached its training loop; once more"
      rc=missed
      continue
    fi
    break
  done
  [ "$rc" != missed ] || fail "3 --np 2 jobs all ended before SIG$sig reached them"
  [ "$rc" -eq "$want_rc" ] || fail "SIG$sig: the --np 2 job exited $rc, expected $want_rc: $(tail -5 "$tmp/c.err")"
  msg=$(grep -h "$message at step" "$tmp/c.err") || fail "SIG$sig: no '$message at step' message: $(tail -5 "$tmp/c.err")"
  [ "$(grep -c "$message at step" "$tmp/c.err")" -eq 1 ] || fail "SIG$sig: more than one rank reported it"
  at=$(sed -E 's/.* at step ([0-9]+).*/\1/' <<<"$msg")
  grep -Eq "^ \"step\": $at,\$" "$tmp/c/last/trainer.json" || fail "SIG$sig at step $at but last/ holds another step"
  resumed=$("$bin" train --resume "$tmp/c" --np 2 -q 2>"$tmp/c.err2" | tail -n 1) || fail "resume after SIG$sig failed"
  [ "$(field "$resumed" weights_checksum)" = "$(field "$summary" weights_checksum)" ] ||
    fail "resumed after SIG$sig at step $at: weights $(field "$resumed" weights_checksum) != $(field "$summary" weights_checksum)"
  cmp -s "$tmp/a/last/optimizer.json" "$tmp/c/last/optimizer.json" || fail "resumed after SIG$sig: optimizer state differs"
  echo "ok   SIG$sig to the --np 2 launcher: exit $rc at step $at with last/ saved by rank 0; resumed: bit-identical"
}
stop_and_resume INT 130 "interrupted"
stop_and_resume TERM 143 "terminated (SIGTERM)"
echo "train_np_check: all checks passed in $((SECONDS - start)) s"
