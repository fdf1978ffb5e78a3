#!/usr/bin/env bash
# Checkpoint integrity (issue 14), on 256 SST-2 rows and an 8-wide LSTM (~5-10 s on 2 cores):
#  1. every checkpoint folder holds manifest.json whose sizes and SHA-256 agree with coreutils'
#     sha256sum for every file tapegrad wrote there;
#  2. predict and resume refuse a checkpoint whose files do not match it: one vocabulary word
#     changed, config.json's pooling changed, a flipped byte in model.safetensors, a missing
#     file, a deleted or unreadable manifest, a crafted manifest entry; each error names the file
#     and says what to do; nothing is written by a refused resume;
#  3. config.json's model section and vocab.txt's SHA-256 are compared with what model.safetensors
#     records, even when the manifest was rewritten to match the edit;
#  4. a checkpoint from before manifests (no manifest, no tapegrad_manifest metadata) loads with a
#     warning; a user's file in best/ is not checked;
#  5. non-finite weights are refused by predict and resume (naming the parameter and the index);
#     predict --allow-non-finite loads them with a warning;
#  6. a FIFO in place of vocab.txt is refused without blocking.
# usage: test_cli_integrity.sh path/to/tapegrad-train
set -euo pipefail
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
source "$(dirname "$0")/cli_lib.sh"
require_sst2 test_cli_integrity
command -v python3 >/dev/null || { echo "SKIP: python3 not found; test_cli_integrity not run"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
cases=0
head -n 257 "$data/train.tsv" >"$tmp/train.tsv"
head -n 101 "$data/dev.tsv" >"$tmp/dev.tsv"
timeout=$(command -v timeout)
# No gnuplot (half a run's time); a hang (a FIFO read) ends after 60 s instead of blocking CTest.
tg() { PATH=/nonexistent "$timeout" 60 "$bin" "$@"; }
expect_fail() {  # expect_fail NAME ARGS...: exits 1; stderr in $err
  local name=$1 rc=0
  shift
  tg "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  err=$(grep -v 'gnuplot not found' "$tmp/err" || true)
  [ "$rc" = 1 ] || fail "$name: exit status $rc, expected 1: $err"
  cases=$((cases + 1))
}
has() { grep -qF -- "$2" <<<"$err" || fail "$1: message lacks '$2': $err"; }
A=(--train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --epochs 1 --batch 32 --eval-every 4 --embed 8 --hidden 8 -q)
tg train "${A[@]}" --save "$tmp/ref" --stop-after 6 >/dev/null 2>&1 || fail "reference run failed"
sentence="a gripping , funny and moving film"
want=$(tg predict --checkpoint "$tmp/ref" "$sentence" 2>/dev/null)

# ---- 1. the manifest agrees with sha256sum ----
for sub in best last; do
  m="$tmp/ref/$sub/manifest.json"
  [ -s "$m" ] || fail "$sub/manifest.json missing"
  n=0
  for f in "$tmp/ref/$sub"/*; do
    name=$(basename "$f")
    [ "$name" = manifest.json ] && continue
    sum=$(sha256sum "$f" | cut -d' ' -f1)
    grep -q "\"$name\"" "$m" || fail "$sub/manifest.json does not list $name"
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["files"][sys.argv[2]]; sys.exit(e["sha256"]!=sys.argv[3] or e["bytes"]!=int(sys.argv[4]))' \
      "$m" "$name" "$sum" "$(stat -c %s "$f")" || fail "$sub/manifest.json: $name differs from sha256sum $sum"
    n=$((n + 1))
  done
  [ "$n" -ge 5 ] || fail "$sub/manifest.json covers only $n files"
done
cases=$((cases + 1))
echo "ok   best/ and last/ manifests agree with sha256sum and stat for every file"

# ---- 2. changed, corrupt, missing files ----
fresh() { rm -rf "$tmp/c" && cp -r "$tmp/ref" "$tmp/c"; }
# one vocabulary word changed (same length, so only the checksum tells)
fresh
same_length_word() { awk 'NR == 10 { gsub(/./, "z") } 1' "$1" >"$1.new" && mv "$1.new" "$1"; }
same_length_word "$tmp/c/best/vocab.txt"
cmp -s "$tmp/c/best/vocab.txt" "$tmp/ref/best/vocab.txt" && fail "could not edit vocab.txt"
[ "$(stat -c %s "$tmp/c/best/vocab.txt")" = "$(stat -c %s "$tmp/ref/best/vocab.txt")" ] || fail "the edit changed the size"
expect_fail "vocab word changed (predict)" predict --checkpoint "$tmp/c" "$sentence"
has vocab "checkpoint $tmp/c/best: vocab.txt does not match manifest.json"
has vocab "(SHA-256 "
has vocab "changed or corrupted after the checkpoint was written"
has vocab "Restore the original vocab.txt from a backup or use another checkpoint (e.g. --checkpoint $tmp/c/last)"
cp -r "$tmp/c" "$tmp/c.before"
same_length_word "$tmp/c/last/vocab.txt"
cp "$tmp/c/last/vocab.txt" "$tmp/c.before/last/vocab.txt"
expect_fail "vocab word changed (resume)" train --resume "$tmp/c" --stop-after 8
has "vocab resume" "checkpoint $tmp/c/last: vocab.txt does not match manifest.json"
diff -r "$tmp/c.before" "$tmp/c" >/dev/null || fail "a refused resume changed the run folder"
rm -rf "$tmp/c.before"
# ... and with the manifest rewritten to match: the vocabulary digest in the weights refuses it
rewrite_manifest "$tmp/c/best"
expect_fail "vocab word changed, manifest rewritten" predict --checkpoint "$tmp/c" "$sentence"
has "vocab (metadata)" "checkpoint $tmp/c/best: vocab.txt is not the vocabulary the weights were trained with"
# pooling changed in config.json
fresh
sed -i 's/"pooling": "last"/"pooling": "max"/' "$tmp/c/best/config.json"
grep -q '"pooling": "max"' "$tmp/c/best/config.json" || fail "could not edit pooling"
expect_fail "pooling changed" predict --checkpoint "$tmp/c" "$sentence"
has pooling "config.json does not match manifest.json"
# ... and with the manifest rewritten to match: the model description in the weights refuses it
rewrite_manifest "$tmp/c/best"
expect_fail "pooling changed, manifest rewritten" predict --checkpoint "$tmp/c" "$sentence"
has "pooling (metadata)" "config.json does not describe the model in model.safetensors (model.pooling: config.json says \"max\", the weights were trained with \"last\")"
has "pooling (metadata)" "Restore config.json's \"model\" section"
# a flipped byte in the weights (the safetensors CRC would also catch it; the manifest comes first)
fresh
printf '\x55' | dd of="$tmp/c/best/model.safetensors" bs=1 seek=$(($(stat -c %s "$tmp/c/best/model.safetensors") - 9)) conv=notrunc status=none
expect_fail "flipped weight byte" predict --checkpoint "$tmp/c/best" "$sentence"
has "flipped byte" "model.safetensors does not match manifest.json (SHA-256"
# missing files
fresh
rm "$tmp/c/last/trainer.json"
expect_fail "missing trainer.json" train --resume "$tmp/c/last" --save "$tmp/c2"
has "missing trainer" "has no trainer.json"
rm "$tmp/c/best/vocab.txt"
expect_fail "missing vocab.txt" predict --checkpoint "$tmp/c/best" "$sentence"
has "missing vocab" "checkpoint $tmp/c/best: vocab.txt is missing (manifest.json lists it"
fresh
rm "$tmp/c/last/manifest.json"
expect_fail "deleted manifest" train --resume "$tmp/c" --stop-after 8
has "deleted manifest" "manifest.json is missing, but model.safetensors records that the checkpoint was written with one"
has "deleted manifest" "e.g. tapegrad-train train --resume $tmp/c/best --save NEW_FOLDER"
fresh
echo '{"files": ' >"$tmp/c/best/manifest.json"
expect_fail "unreadable manifest" predict --checkpoint "$tmp/c" "$sentence"
has "unreadable manifest" "manifest.json is unreadable"
fresh
python3 - "$tmp/c/best/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["files"]["../../secret"] = {"bytes": 1, "sha256": "00"}
json.dump(m, open(sys.argv[1], "w"))
EOF
expect_fail "crafted manifest entry" predict --checkpoint "$tmp/c" "$sentence"
has "crafted manifest" "lists '../../secret', which is not a file name in the checkpoint folder"
fresh
python3 - "$tmp/c/best/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
del m["files"]["vocab.txt"]
json.dump(m, open(sys.argv[1], "w"))
EOF
sed -i '10s/.*/zzzzz/' "$tmp/c/best/vocab.txt"
expect_fail "vocab.txt dropped from the manifest" predict --checkpoint "$tmp/c" "$sentence"
has "dropped entry" "manifest.json does not list vocab.txt"
echo "ok   changed vocab word, changed pooling (also with a rewritten manifest), flipped weight byte, missing files, deleted/unreadable/crafted manifests: refused, naming the file"

# ---- 4. checkpoints from before manifests; user files ----
fresh
rm "$tmp/c/best/manifest.json"
safetensors_edit "$tmp/c/best/model.safetensors" old
got=$(tg predict --checkpoint "$tmp/c" "$sentence" 2>"$tmp/err") || fail "a checkpoint from before manifests was refused: $(cat "$tmp/err")"
[ "$got" = "$want" ] || fail "old checkpoint: prediction $got, expected $want"
grep -qF "warning: checkpoint $tmp/c/best has no manifest.json (written by a tapegrad-train before checkpoint manifests)" "$tmp/err" ||
  fail "old checkpoint: no warning: $(cat "$tmp/err")"
sed -i 's/"pooling": "last"/"pooling": "mean"/' "$tmp/c/best/config.json"
expect_fail "old checkpoint, pooling changed" predict --checkpoint "$tmp/c" "$sentence"
has "old pooling" "model.pooling: config.json says \"mean\", the weights were trained with \"last\""
fresh
echo "my notes" >"$tmp/c/best/notes.txt"
got=$(tg predict --checkpoint "$tmp/c" "$sentence" 2>"$tmp/err") || fail "a user's file in best/ made the checkpoint fail: $(cat "$tmp/err")"
[ "$got" = "$want" ] || fail "user file: prediction $got, expected $want"
cases=$((cases + 2))
echo "ok   a checkpoint from before manifests loads with a warning (pooling still checked); a user's notes.txt is not checked"

# ---- 5. non-finite weights ----
fresh
for sub in best last; do
  safetensors_edit "$tmp/c/$sub/model.safetensors" nan
  rewrite_manifest "$tmp/c/$sub"
done
expect_fail "NaN weights (predict)" predict --checkpoint "$tmp/c" "$sentence"
has "nan predict" "$tmp/c/best/model.safetensors: parameter '"
has "nan predict" "parameter 'fc.bias' [1] holds NaN at [0]"
has "nan predict" "tapegrad-train predict --allow-non-finite --checkpoint $tmp/c"
got=$(tg predict --allow-non-finite --checkpoint "$tmp/c" "$sentence" 2>"$tmp/err") || fail "--allow-non-finite refused: $(cat "$tmp/err")"
grep -q "loaded anyway (--allow-non-finite)" "$tmp/err" || fail "--allow-non-finite: no warning: $(cat "$tmp/err")"
grep -qi "nan" <<<"$got" || fail "--allow-non-finite: expected a nan prediction, got $got"
cases=$((cases + 1))
cp -r "$tmp/c" "$tmp/c.before"
expect_fail "NaN weights (resume)" train --resume "$tmp/c" --stop-after 8
has "nan resume" "training cannot continue from non-finite weights"
has "nan resume" "predict --allow-non-finite --checkpoint $tmp/c/last"
diff -r -x tapegrad.lock "$tmp/c.before" "$tmp/c" >/dev/null || fail "a refused resume from NaN weights changed the run folder"
echo "ok   NaN weights refused by predict and resume (parameter and index named); predict --allow-non-finite: '$got'"

# ---- 6. a FIFO in place of a checkpoint file ----
fresh
rm "$tmp/c/best/vocab.txt" && mkfifo "$tmp/c/best/vocab.txt"
expect_fail "FIFO vocab.txt" predict --checkpoint "$tmp/c/best" "$sentence"
has fifo "vocab.txt is not a regular file"
echo "ok   a FIFO as vocab.txt: refused at once"
echo "test_cli_integrity: all $cases cases passed in $((SECONDS - start)) s"
