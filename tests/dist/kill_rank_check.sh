#!/usr/bin/env bash
# A dying rank must end the whole MPI job quickly, never leave the others hanging in a collective.
#   kill_rank_check.sh MPIRUN TESTS_BINARY
# 1. SIGKILL rank 1 of a 2-rank training loop: mpirun must exit non-zero within 30 s and rank 0
#    must be gone.
# 2. Rank 1 throws inside dist::run_or_abort: same, and every rank's log names the error.
# 3. Rank 1 throws outside run_or_abort (in a thread): the terminate handler aborts the job.
# 4. dist::maybe_relaunch_under_mpirun (a CLI's --np 2) starts 2 ranks from a plain launch.
set -uo pipefail
mpirun=$1
bin=$2
limit=30
work=$(mktemp -d)
mpipid=""
cleanup() {
  [ -n "$mpipid" ] && kill -9 "$mpipid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- log:"; cat "$work/log" 2>/dev/null; exit 1; }

launch() {  # launch ARGS...: starts mpirun -np 2 BIN ARGS in the background
  "$mpirun" --allow-run-as-root --oversubscribe -np 2 "$bin" "$@" >"$work/log" 2>&1 &
  mpipid=$!
}

ms() { echo $(($(date +%s%N) / 1000000)); }
wait_exit() {  # wait_exit SECONDS: waits for mpirun; sets rc and elapsed (s), fails on timeout
  local t0
  t0=$(ms)
  while kill -0 "$mpipid" 2>/dev/null; do
    (($(ms) - t0 > $1 * 1000)) && fail "mpirun still running $1 s later"
    sleep 0.2
  done
  wait "$mpipid"
  rc=$?
  mpipid=""
  elapsed=$(awk -v d=$(($(ms) - t0)) 'BEGIN { printf "%.1f", d / 1000 }')
}

# ---- 1. SIGKILL ----
launch --spin 120
for _ in $(seq 1 300); do  # up to 60 s for start-up on a loaded machine
  [ "$(grep -c '^ready rank' "$work/log")" -ge 2 ] && break
  kill -0 "$mpipid" 2>/dev/null || fail "job ended before both ranks were ready"
  sleep 0.2
done
[ "$(grep -c '^ready rank' "$work/log")" -ge 2 ] || fail "ranks did not start"
pid0=$(sed -n 's/^ready rank 0 pid \([0-9]*\)$/\1/p' "$work/log")
pid1=$(sed -n 's/^ready rank 1 pid \([0-9]*\)$/\1/p' "$work/log")
[ -n "$pid0" ] && [ -n "$pid1" ] || fail "could not read the ranks' pids"
kill -9 "$pid1"
wait_exit "$limit"
[ "$rc" -ne 0 ] || fail "mpirun exited 0 after a rank was killed"
alive() {  # a zombie (exited, not yet reaped by a container's init) counts as gone
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
for _ in $(seq 1 25); do alive "$pid0" || break; sleep 0.2; done
if alive "$pid0"; then
  ps -o pid,ppid,stat,etime,cmd -p "$pid0"
  kill -9 "$pid0"
  fail "rank 0 (pid $pid0) still alive 5 s after mpirun exited"
fi
echo "ok: SIGKILL of rank 1: mpirun exited $rc after $elapsed s, rank 0 gone"

# ---- 2. exception inside run_or_abort ----
launch --throw-on-rank 1
wait_exit 60  # includes start-up
[ "$rc" -ne 0 ] || fail "mpirun exited 0 after a rank threw"
grep -q '^rank 1: error: injected failure at step 5' "$work/log" || fail "no 'rank 1: error:' line"
echo "ok: exception on rank 1: mpirun exited $rc after $elapsed s (start-up included)"

# ---- 3. exception escaping a thread (std::terminate) ----
launch --throw-on-rank 1 --unhandled
wait_exit 60
[ "$rc" -ne 0 ] || fail "mpirun exited 0 after std::terminate on a rank"
grep -q '^rank 1: error: injected failure in a thread' "$work/log" || fail "no 'rank 1: error:' line"
echo "ok: std::terminate on rank 1: mpirun exited $rc after $elapsed s (start-up included)"

# ---- 4. relaunch under mpirun ----
out=$(TG_MPIRUN=$mpirun timeout 60 "$bin" --relaunch 2 2>&1) || { echo "$out"; echo "FAIL: --relaunch 2 exited non-zero"; exit 1; }
for r in 0 1; do
  grep -q "^relaunched rank $r of 2 child=1$" <<<"$out" || { echo "$out"; echo "FAIL: no rank $r of 2"; exit 1; }
done
out=$(timeout 60 "$bin" --relaunch 1 2>&1)
grep -q "^relaunched rank 0 of 1 child=0$" <<<"$out" || { echo "$out"; echo "FAIL: --relaunch 1 should not relaunch"; exit 1; }
echo "ok: maybe_relaunch_under_mpirun started 2 ranks"
