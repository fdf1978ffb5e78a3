#!/usr/bin/env bash
# tapegrad-train under hostile use (issue 14), on 256 SST-2 rows and an 8-wide LSTM (each case
# well under a second; ~15-30 s in all on 2 cores, Release):
#  1. a fresh run into a used folder is refused and changes nothing; --overwrite replaces only
#     tapegrad's files (user files in the folder, best/ and last/ survive); leftovers of a run
#     killed before its first checkpoint do not count as a used folder;
#  2. a second run into a locked folder fails at once naming the holder's pid; SIGTERM saves
#     last/ and exits 143, and the run resumes from there (bit-identity: test_kill_resume.sh 2);
#  3. nothing read from a checkpoint chooses where to write or what to read: a copied last/
#     needs --save, a crafted training.save is ignored, a crafted training.train is checked and
#     its contents never printed (crafted with a rewritten manifest.json, which would otherwise
#     refuse the edit: see test_cli_integrity.sh);
#  4. --resume DIR/best does not overwrite the newer DIR/last (a new --save is required);
#  5. sizes are checked before allocating (options and config.json, train and predict);
#  6. stray positional arguments and bad option values are refused;
#  7. a resume on other data is refused unless --allow-data-change;
#  8. a write that fails (file size limit, as a full disk) leaves no *.tmp and keeps last/;
#  9. the same on a really full disk (ENOSPC on a 2 MB tmpfs in a private mount namespace,
#     tests/enospc_case.sh), and the run resumes once space is freed.
# TAPEGRAD_DATA points at the folder holding sst2/ (default <repo>/../shared/data). Without the
# data the test prints SKIP and exits 77, which CTest reports as skipped.
# usage: test_cli_hostile.sh path/to/tapegrad-train
set -euo pipefail
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
source "$(dirname "$0")/cli_lib.sh"
require_sst2 test_cli_hostile
tmp=$(mktemp -d)
bg=""
cleanup() {
  [ -n "$bg" ] && kill -9 "$bg" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
start=$SECONDS
head -n 257 "$data/train.tsv" >"$tmp/train.tsv"
head -n 101 "$data/dev.tsv" >"$tmp/dev.tsv"
sed -n '1p;258,513p' "$data/train.tsv" >"$tmp/other.tsv"  # 256 other rows
# No gnuplot for the runs (half their time); its warning goes to stderr.
tg() { PATH=/nonexistent "$bin" "$@"; }
# expect_fail RC NAME ARGS...: the command exits with RC; its stderr is in $err
expect_fail() {
  local want=$1 name=$2 rc=0
  shift 2
  tg "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  err=$(grep -v 'gnuplot not found' "$tmp/err" || true)
  [ "$rc" = "$want" ] || fail "$name: exit status $rc, expected $want: $err"
}
has() { grep -qF -- "$2" <<<"$err" || fail "$1: message lacks '$2': $err"; }
unchanged() { diff -r -x tapegrad.lock "$1" "$2" >/dev/null || fail "$3: $2 changed: $(diff -r -x tapegrad.lock "$1" "$2" | head -3)"; }
step_of() { grep -E '^ "step": [0-9]+' "$1/trainer.json" | sed -E 's/[^0-9]*([0-9]+).*/\1/'; }

A0=(--train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --epochs 1 --batch 32 --eval-every 4 -q)
A=("${A0[@]}" --embed 8 --hidden 8)
tg train "${A[@]}" --save "$tmp/ref" >"$tmp/ref.out" 2>/dev/null || fail "reference run failed"
ref=$(tail -n 1 "$tmp/ref.out")

# ---- 1. used folders ----
cp -r "$tmp/ref" "$tmp/used"
echo "my notes" >"$tmp/used/best/notes.txt"
echo "keep" >"$tmp/used/last/keep.txt"
echo "top" >"$tmp/used/README"
cp -r "$tmp/used" "$tmp/used.before"
expect_fail 1 "fresh run into a used folder" train "${A[@]}" --seed 2 --save "$tmp/used"
for s in "is not empty" "--resume $tmp/used" "--save ANOTHER_FOLDER" "--overwrite"; do has "used folder" "$s"; done
unchanged "$tmp/used.before" "$tmp/used" "refused fresh run"
mkdir "$tmp/mine" && echo x >"$tmp/mine/notes.txt"
expect_fail 1 "fresh run into a folder of user files" train "${A[@]}" --save "$tmp/mine"
[ "$(ls -A "$tmp/mine")" = notes.txt ] || fail "a refused run left files in a user's folder: $(ls -A "$tmp/mine")"
mkdir "$tmp/empty"
tg train "${A[@]}" --save "$tmp/empty" >/dev/null 2>&1 || fail "a fresh run into an empty folder was refused"
tg train "${A[@]}" --seed 2 --save "$tmp/used" --overwrite >/dev/null 2>&1 || fail "--overwrite failed"
[ "$(cat "$tmp/used/best/notes.txt")" = "my notes" ] && [ "$(cat "$tmp/used/last/keep.txt")" = keep ] &&
  [ "$(cat "$tmp/used/README")" = top ] || fail "--overwrite lost a user file: $(ls -R "$tmp/used")"
grep -q '"seed": 2' "$tmp/used/last/config.json" || fail "--overwrite did not replace last/"
cmp -s "$tmp/used/best/model.safetensors" "$tmp/used.before/best/model.safetensors" && fail "--overwrite did not replace best/"
ls -d "$tmp/used"/*.tmp "$tmp/used"/*.old 2>/dev/null && fail "--overwrite left temporary folders"
# what a run killed before its first checkpoint leaves is not another run
mkdir -p "$tmp/left/last.tmp" && : >"$tmp/left/tapegrad.lock" && : >"$tmp/left/last.tmp/model.safetensors.tmp"
tg train "${A[@]}" --save "$tmp/left" >/dev/null 2>&1 || fail "leftovers of a killed run were taken for another run"
[ ! -e "$tmp/left/last.tmp" ] || fail "last.tmp was not cleaned up"
echo "ok   used folder refused unchanged (exit 1, says --resume/--save/--overwrite); --overwrite kept 3 user files"

# ---- 2. the lock; SIGTERM ----
long=(--train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --embed 8 --hidden 8 --epochs 100000 --batch 32 --eval-every 0 -q)
(PATH=/nonexistent exec "$bin" train "${long[@]}" --save "$tmp/locked" >"$tmp/locked.out" 2>"$tmp/locked.err") &
bg=$!
for _ in $(seq 1 300); do [ "$(cat "$tmp/locked/tapegrad.lock" 2>/dev/null)" = "$bg" ] && break; sleep 0.05; done
[ "$(cat "$tmp/locked/tapegrad.lock" 2>/dev/null)" = "$bg" ] || fail "the running training did not record its pid"
sleep 0.3
t0=$(date +%s%N)
expect_fail 1 "second run into a locked folder" train "${A[@]}" --save "$tmp/locked"
has lock "is in use by another tapegrad-train run (pid $bg"
expect_fail 1 "resume of a locked folder" train --resume "$tmp/ref" --save "$tmp/locked"
has lock "(pid $bg"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
kill -TERM "$bg"
rc=0
wait "$bg" || rc=$?
holder=$bg bg=""
[ "$rc" = 143 ] || fail "SIGTERM: exit status $rc, expected 143: $(cat "$tmp/locked.err")"
msg=$(grep 'terminated (SIGTERM) at step' "$tmp/locked.err") || fail "SIGTERM: no message: $(cat "$tmp/locked.err")"
at=$(sed -E 's/.*at step ([0-9]+).*/\1/' <<<"$msg")
[ "$(step_of "$tmp/locked/last")" = "$at" ] || fail "SIGTERM at step $at but last/ holds step $(step_of "$tmp/locked/last")"
out=$(tg train --resume "$tmp/locked" --stop-after $((at + 3)) 2>/dev/null | tail -n 1) || fail "resume after SIGTERM failed"
[ "$(field "$out" steps)" = $((at + 3)) ] || fail "resume after SIGTERM: $out"
echo "ok   locked folder refused in $ms ms naming pid $holder; SIGTERM: exit 143, last/ at step $at ($msg)"

# ---- 3. nothing from the checkpoint chooses where to write or what to read ----
cp -r "$tmp/ref" "$tmp/orig" && cp -r "$tmp/ref/last" "$tmp/backup1" && cp -r "$tmp/orig" "$tmp/orig.before"
expect_fail 1 "resume of a copied last/ without --save" train --resume "$tmp/backup1" --epochs 2
has "copied last/" "is a checkpoint folder outside a run folder"
has "copied last/" "--save DIR"
unchanged "$tmp/orig.before" "$tmp/orig" "resume of a copied last/"
tg train --resume "$tmp/backup1" --epochs 2 --save "$tmp/cont" >/dev/null 2>&1 || fail "resume of a copy with --save failed"
[ -f "$tmp/cont/last/trainer.json" ] && [ "$(step_of "$tmp/cont/last")" = 16 ] || fail "--save did not receive the run"
unchanged "$tmp/orig.before" "$tmp/orig" "resume with --save"
# a crafted training.save naming a victim folder is never used
mkdir "$tmp/victim" && echo precious >"$tmp/victim/file"
cp -r "$tmp/ref" "$tmp/crafted"
sed -i "s#\"save\": \"[^\"]*\"#\"save\": \"$tmp/victim\"#" "$tmp/crafted/last/config.json"
grep -q "\"save\": \"$tmp/victim\"" "$tmp/crafted/last/config.json" || fail "could not craft training.save"
rewrite_manifest "$tmp/crafted/last"  # else the manifest refuses the edit (test_cli_integrity.sh)
tg train --resume "$tmp/crafted" --epochs 2 >/dev/null 2>&1 || fail "resume of the crafted checkpoint failed"
[ "$(ls -A "$tmp/victim")" = file ] && [ "$(cat "$tmp/victim/file")" = precious ] || fail "training.save was written to"
[ "$(step_of "$tmp/crafted/last")" = 16 ] || fail "the crafted run did not continue in its own folder"
# a crafted training.train: checked, and its contents never printed
printf 'SECRET-LINE-1 of a private file\nSECRET-LINE-2\n' >"$tmp/secret"
for target in "$tmp/secret" "$tmp/victim" "$tmp/nowhere"; do
  rm -rf "$tmp/crafted2" && cp -r "$tmp/ref" "$tmp/crafted2"
  sed -i "s#\"train\": \"[^\"]*\"#\"train\": \"$target\"#" "$tmp/crafted2/last/config.json"
  rewrite_manifest "$tmp/crafted2/last"
  expect_fail 1 "crafted training.train $target" train --resume "$tmp/crafted2" --epochs 2
  grep -q SECRET <<<"$err$(cat "$tmp/out")" && fail "an error quoted a file named by config.json: $err"
  has "crafted training.train" "$target (the training file named by the checkpoint's config.json; give another with --train FILE)"
done
has "crafted training.train" "does not exist"
tg train --resume "$tmp/crafted2" --epochs 2 --train "$tmp/train.tsv" >/dev/null 2>&1 || fail "--train did not replace a bad training.train"
echo "ok   resume writes only into its own folder (copied last/ needs --save; crafted training.save ignored); crafted training.train: only its path is printed"

# ---- 4. --resume DIR/best does not overwrite the newer DIR/last ----
cp -r "$tmp/ref" "$tmp/bl" && cp -r "$tmp/bl" "$tmp/bl.before"
bs=$(step_of "$tmp/bl/best") ls_=$(step_of "$tmp/bl/last")
if [ "$bs" != "$ls_" ]; then
  expect_fail 1 "--resume DIR/best" train --resume "$tmp/bl/best" --epochs 2
  has "--resume best" "would overwrite $tmp/bl/last, which holds a later state (step $ls_)"
  has "--resume best" "--save NEW_FOLDER"
  unchanged "$tmp/bl.before" "$tmp/bl" "--resume DIR/best"
  tg train --resume "$tmp/bl/best" --epochs 2 --save "$tmp/branch" >/dev/null 2>&1 || fail "--resume DIR/best --save NEW failed"
  unchanged "$tmp/bl.before" "$tmp/bl" "--resume DIR/best --save NEW"
  echo "ok   --resume DIR/best (step $bs) refused while DIR/last holds step $ls_; with --save NEW it runs, DIR unchanged"
else
  fail "the reference run's best/ and last/ are both at step $bs: pick a configuration whose accuracy falls"
fi

# ---- 5. sizes are checked before anything is allocated ----
t0=$(date +%s%N)
expect_fail 1 "--embed 2^62" train "${A0[@]}" --hidden 8 --embed 4611686018427387904
has "--embed 2^62" "--embed 4611686018427387904 needs too much memory"
has "--embed 2^62" "this machine has"
expect_fail 1 "--layers 1e9" train "${A0[@]}" --embed 8 --layers 1000000000
has "--layers 1e9" "--layers 1000000000 needs too much memory"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
TG_TRAIN_MEMORY_LIMIT=4e9 expect_fail 1 "--embed 100000" train --train "$data/train.tsv" --dev "$tmp/dev.tsv" --max-train 2000 --hidden 8 --embed 100000
has "--embed 100000" "--embed 100000 needs too much memory"
has "--embed 100000" "this machine has 4.0 GB (TG_TRAIN_MEMORY_LIMIT)"
grep -q "GB" <<<"$err" || fail "no estimate in: $err"
msg100k=$err
cp -r "$tmp/ref" "$tmp/huge"
sed -i 's/"embed": 8,/"embed": 4611686018427387904,/' "$tmp/huge/last/config.json" "$tmp/huge/best/config.json"
grep -q 4611686018427387904 "$tmp/huge/last/config.json" || fail "could not craft config.json"
# As if another tool wrote the weights (no model description to compare config.json with) and
# the manifest were rewritten: only the size check stands between the file and the allocator.
for sub in best last; do
  safetensors_edit "$tmp/huge/$sub/model.safetensors" foreign
  rewrite_manifest "$tmp/huge/$sub"
done
expect_fail 1 "embed 2^62 in config.json (train --resume)" train --resume "$tmp/huge"
has "config embed" "--embed 4611686018427387904 (from $tmp/huge/last/config.json) needs too much memory"
expect_fail 1 "embed 2^62 in config.json (predict)" predict --checkpoint "$tmp/huge" "a fine film"
has "config embed predict" "$tmp/huge/best/config.json: model.embed"
has "config embed predict" "this machine has"
echo "ok   sizes refused in $ms ms before allocating: $(cut -c1-160 <<<"$msg100k")..."

# ---- 6. stray arguments, bad values ----
cd "$tmp"
expect_fail 2 "--save my run" train "${A[@]}" --save my run
has "--save my run" "unexpected argument 'run' (after 'my')"
[ ! -e my ] || fail "--save my run created 'my'"
expect_fail 2 "-q epochs 5" train --train "$tmp/train.tsv" --dev "$tmp/dev.tsv" -q epochs 5
has "-q epochs 5" "unexpected argument 'epochs'"
has "-q epochs 5" "did you mean --epochs?"
cd - >/dev/null
expect_fail 1 "--weight-decay inf" train "${A[@]}" --weight-decay inf
has "--weight-decay inf" "must be finite"
expect_fail 1 "--seed -1" train "${A[@]}" --seed -1
has "--seed -1" "--seed must be an integer from 0 to 2^64-1"
expect_fail 1 "--seed 2^64" train "${A[@]}" --seed 18446744073709551616
for o in adam adamw; do
  expect_fail 1 "--momentum with $o" train "${A[@]}" --optimizer $o --momentum 0.9
  has "--momentum $o" "--momentum 0.9 applies to --optimizer sgd only"
done
tg train "${A[@]}" --optimizer sgd --momentum 0.9 >/dev/null 2>&1 || fail "--momentum with sgd refused"
set +e
tg train "${A[@]}" --np 2 --hostfile "$tmp" >/dev/null 2>"$tmp/err"
set -e
if grep -q "built without MPI" "$tmp/err"; then
  echo "     (no MPI in this build: --hostfile not checked)"
else
  grep -qF -- "--hostfile $tmp is a directory" "$tmp/err" || fail "--hostfile DIR: $(cat "$tmp/err")"
fi
echo "ok   stray arguments refused (exit 2); --weight-decay inf, --seed -1, --momentum with adam/adamw, --hostfile DIR refused"

# ---- 7. data fingerprint ----
cp -r "$tmp/ref" "$tmp/fp" && tg train "${A[@]}" --save "$tmp/fp2" --stop-after 3 >/dev/null 2>&1
cp -r "$tmp/fp2" "$tmp/fp2.before"
expect_fail 1 "resume with other --train rows" train --resume "$tmp/fp2" --train "$tmp/other.tsv"
has fingerprint "--train $tmp/other.tsv: these training rows differ from the ones the checkpoint was trained on"
has fingerprint "--allow-data-change"
unchanged "$tmp/fp2.before" "$tmp/fp2" "refused data change"
cp "$tmp/train.tsv" "$tmp/moved.tsv"
tg train --resume "$tmp/fp2" --train "$tmp/moved.tsv" --stop-after 4 >/dev/null 2>&1 || fail "a moved, identical --train was refused"
tg train --resume "$tmp/fp2" --train "$tmp/other.tsv" --allow-data-change >/dev/null 2>"$tmp/err" || fail "--allow-data-change refused: $(cat "$tmp/err")"
grep -q "differ from the checkpoint's" "$tmp/err" || fail "--allow-data-change: no warning"
echo "ok   other training rows refused on resume (folder unchanged); a moved identical file and --allow-data-change accepted"

# ---- 8. a failing write (file size limit, like a full disk) ----
tg train "${A[@]}" --save "$tmp/full" --stop-after 2 >/dev/null 2>&1
cp -r "$tmp/full" "$tmp/full.before"
rc=0
( trap '' XFSZ; ulimit -f 8; tg train --resume "$tmp/full" --stop-after 3 ) >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "write past the file size limit: exit $rc: $(cat "$tmp/err")"
grep -q "the partial $tmp/full/last.tmp was removed and the previous checkpoint is kept" "$tmp/err" ||
  fail "no cleanup message: $(cat "$tmp/err")"
ls -d "$tmp/full"/*.tmp "$tmp/full"/*/*.tmp 2>/dev/null && fail "a failed write left *.tmp behind"
unchanged "$tmp/full.before" "$tmp/full" "failed write"
echo "ok   a failed write: exit 1, no *.tmp left, last/ unchanged ($(grep -o 'File too large' "$tmp/err" | head -1))"

# ---- 9. a really full disk (ENOSPC): a 2 MB tmpfs in a private mount namespace ----
# `unshare -rm` (an unprivileged user namespace) mounts it without root; it vanishes with the
# namespace. Where user namespaces are off, this case is skipped with a note (8 covers EFBIG).
if unshare -rm true 2>/dev/null; then
  mkdir "$tmp/disk"
  unshare -rm bash "$(dirname "$0")/enospc_case.sh" "$bin" "$tmp/disk" "$tmp/enospc.last" "${A[@]}" >"$tmp/enospc.out" 2>&1 ||
    fail "disk-full case: $(cat "$tmp/enospc.out")"
  out=$(cat "$tmp/enospc.out")
  for want in "rc=1" "No space left on device" cleanup-message "tmp-left=0" last-unchanged resumed-after-freeing; do
    grep -qx -- "$want" <<<"$out" || fail "disk full (ENOSPC): no '$want' in: $out; stderr: $(cat "$tmp/enospc.last.err")"
  done
  echo "ok   a full 2 MB tmpfs (ENOSPC): exit 1, no *.tmp left, last/ unchanged, resumed once space was freed"
else
  echo "     (unshare -rm is not permitted here: the ENOSPC case is skipped; 8 covers a failing write)"
fi
echo "test_cli_hostile: all checks passed in $((SECONDS - start)) s"
