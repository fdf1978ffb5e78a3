#!/usr/bin/env bash
# tapegrad-train in multi-class mode on a tiny synthetic K=4 data set generated here, where one
# word (of four) decides the label and the rest is noise (a few seconds on 2 cores):
#  1. the run learns it (dev accuracy far above chance 25%), infers K=4, and the final JSON line
#     holds macro-F1 and the per-class report (named by --label-names); the run folder holds
#     confusion.tsv (counts summing to the dev rows) and, with gnuplot, confusion.png;
#  2. predict prints the label and 4 probabilities summing to 1, and reproduces the training-time
#     dev predictions of best/ bit for bit;
#  3. stopped mid-run (--stop-after) and resumed: bit-identical to the uninterrupted run;
#  4. errors: a dev label >= K (file, line, label and K named), --classes below the largest label,
#     too few --label-names, --classes 1;
#  5. a binary run (labels 0/1) gets the per-class report of both classes and a model section
#     without num_classes (as checkpoints written before multi-class support);
#  6. with mpirun: --np 2 gathers the K logits of both ranks' dev batches exactly (best/'s dev
#     predictions = predict's) and trains like 1 process (first dev loss to 1e-5 relative).
# usage: test_multiclass_cli.sh path/to/tapegrad-train
set -euo pipefail
bin=$1
source "$(dirname "$0")/cli_lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# gen FILE ROWS SEED K: "noise... <class word> noise...\t<label>"
gen() {
  awk -v n="$2" -v seed="$3" -v k="$4" 'BEGIN {
    srand(seed); split("apple river stone cloud", w, " "); split("a the is of and to in it was on", f, " ")
    print "sentence\tlabel"
    for (i = 0; i < n; i++) {
      l = int(rand() * k); s = ""
      for (j = 0; j < 3; j++) s = s f[1 + int(rand() * 10)] " "
      s = s w[l + 1]
      for (j = 0; j < 2; j++) s = s " " f[1 + int(rand() * 10)]
      print s "\t" l
    }
  }' >"$1"
}
gen "$tmp/train.tsv" 400 1 4
gen "$tmp/dev.tsv" 120 2 4
printf 'apple\nriver\nstone\ncloud\n' >"$tmp/names.txt"
args=(--train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --embed 16 --hidden 16 --epochs 4 --batch 16 --lr 0.01
      --dropout 0 --label-names "$tmp/names.txt" --threads 1 --seed 3 -q)

# ---- 1. train ----
summary=$("$bin" train "${args[@]}" --save "$tmp/a" | tail -n 1)
acc=$(field "$summary" dev_accuracy)
f1=$(field "$summary" dev_macro_f1)
echo "K=4 run: dev accuracy $acc, macro-F1 $f1"
awk -v a="$acc" -v f="$f1" 'BEGIN { exit !(a > 0.8 && f > 0.75) }' ||
  fail "dev accuracy $acc / macro-F1 $f1 not above 0.8 / 0.75 (chance is 0.25): $summary"
[ "$(field "$summary" classes)" = 4 ] || fail "K was not inferred as 4: $summary"
python3 - "$summary" "$tmp/a" <<'PY' || fail "bad per-class report or confusion.tsv"
import json, sys, os
s = json.loads(sys.argv[1]); run = sys.argv[2]
pc = s["dev_per_class"]
assert [c["name"] for c in pc] == ["apple", "river", "stone", "cloud"], pc
assert sum(c["support"] for c in pc) == 120, pc
assert abs(sum(c["f1"] for c in pc) / 4 - s["dev_macro_f1"]) < 1e-12
rows = [l.split("\t") for l in open(os.path.join(run, "confusion.tsv")).read().splitlines()]
assert rows[0][1:] == ["apple", "river", "stone", "cloud"], rows[0]
assert sum(int(x) for r in rows[1:] for x in r[1:]) == 120
m = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
assert all("dev_macro_f1" in r and len(r["dev_per_class"]) == 4 for r in m)
cfg = json.load(open(os.path.join(run, "best", "config.json")))
assert cfg["model"]["num_classes"] == 4 and cfg["training"]["classes"] == 4, cfg
PY
if command -v gnuplot >/dev/null; then [ -s "$tmp/a/confusion.png" ] || fail "confusion.png missing"; fi
echo "ok   per-class report, confusion.tsv, metrics.jsonl fields, K in config.json"

# ---- 2. predict ----
line=$("$bin" predict --checkpoint "$tmp/a" "the river is here")
awk '{ s = $2 + $3 + $4 + $5; exit !(NF == 9 && $1 ~ /^[0-3]$/ && s > 0.9995 && s < 1.0005) }' <<<"$line" ||
  fail "predict did not print a label and 4 probabilities summing to 1: $line"
[ "$(cut -d' ' -f1 <<<"$line")" = 1 ] || fail "'the river is here' not predicted as class 1 (river): $line"
tail -n +2 "$tmp/dev.tsv" | cut -f1 | "$bin" predict --threads 1 --json --checkpoint "$tmp/a" >"$tmp/pred.jsonl"
cmp -s "$tmp/pred.jsonl" "$tmp/a/best/dev_predictions.jsonl" || fail "predict --json differs from best/dev_predictions.jsonl"
python3 - "$tmp/pred.jsonl" <<'PY' || fail "JSON probabilities do not sum to 1"
import json, sys
for l in open(sys.argv[1]):
    p = json.loads(l)
    assert len(p["probabilities"]) == 4 and abs(sum(p["probabilities"]) - 1) < 1e-12
    assert p["label"] == max(range(4), key=lambda c: p["logits"][c])
PY
echo "ok   predict: label + 4 probabilities (sum 1); --json equals the training-time dev predictions"

# ---- 3. stop and resume ----
"$bin" train "${args[@]}" --save "$tmp/b" --stop-after 37 >/dev/null
resumed=$("$bin" train --resume "$tmp/b" -q | tail -n 1)
same_fields "$resumed" "$summary" weights_checksum dev_accuracy dev_macro_f1 final_dev_loss
same_run_folders "$tmp/a" "$tmp/b"
cmp -s "$tmp/a/confusion.tsv" "$tmp/b/confusion.tsv" || fail "confusion.tsv differs after resume"
echo "ok   stopped at step 37 and resumed: bit-identical ($(field "$resumed" weights_checksum))"

# ---- 4. errors ----
# expect_error NAME PATTERN ARGS...: train must fail with a message matching PATTERN
expect_error() {
  local name=$1 pattern=$2
  shift 2
  if "$bin" train "$@" -q >"$tmp/$name.out" 2>"$tmp/$name.err"; then fail "$name: accepted"; fi
  grep -qE -e "$pattern" "$tmp/$name.err" || fail "$name: unexpected message: $(cat "$tmp/$name.err")"
  echo "ok   $name: $(head -c 300 "$tmp/$name.err")"
}
{ head -n 5 "$tmp/dev.tsv"; printf 'the sky is grey\t4\n'; } >"$tmp/dev_bad.tsv"
expect_error dev_label "dev_bad.tsv:6: label must be an integer from 0 to 3, got '4' .*4 classes" \
  --train "$tmp/train.tsv" --dev "$tmp/dev_bad.tsv" --epochs 1
expect_error classes_small "train.tsv:[0-9]+: label must be an integer from 0 to 2, got '3' .*--classes 3" \
  --train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --classes 3 --epochs 1
expect_error classes_one "--classes must be 0 .* or 2\.\." --train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --classes 1
printf 'apple\nriver\n' >"$tmp/two_names.txt"
expect_error label_names "two_names.txt has 2 names but the data has 4 classes" \
  --train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --label-names "$tmp/two_names.txt" --epochs 1

# ---- 5. binary ----
gen "$tmp/train2.tsv" 200 4 2
gen "$tmp/dev2.tsv" 60 5 2
bsum=$("$bin" train --train "$tmp/train2.tsv" --dev "$tmp/dev2.tsv" --embed 8 --hidden 8 --epochs 2 --batch 16 \
       --threads 1 --save "$tmp/bin" -q | tail -n 1)
python3 - "$bsum" "$tmp/bin" <<'PY' || fail "binary run: bad per-class report or model section: $bsum"
import json, sys, os
s = json.loads(sys.argv[1])
assert s["classes"] == 2 and len(s["dev_per_class"]) == 2 and sum(c["support"] for c in s["dev_per_class"]) == 60
assert "num_classes" not in json.load(open(os.path.join(sys.argv[2], "best", "config.json")))["model"]
PY
line=$("$bin" predict --checkpoint "$tmp/bin" "the stone")
awk '{ exit !($1 >= 0 && $1 <= 1 && ($2 == 0 || $2 == 1)) }' <<<"$line" || fail "binary predict format changed: $line"
echo "ok   binary run: per-class report of 2 classes, model section as before, predict format unchanged"

# ---- 6. data-parallel (--np 2) ----
if ! command -v mpirun >/dev/null; then echo "skip --np 2: no mpirun"; exit 0; fi
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
np_args=(--train "$tmp/train.tsv" --dev "$tmp/dev.tsv" --embed 16 --hidden 16 --epochs 1 --batch 16 --lr 0.01
         --dropout 0 --threads 1 -q)
timeout 120 "$bin" train "${np_args[@]}" --np 2 --save "$tmp/np" >"$tmp/np.out" 2>"$tmp/np.err" ||
  fail "train --np 2 exited $?: $(tail -5 "$tmp/np.err")"
[ "$(field "$(tail -n 1 "$tmp/np.out")" world_size)" = 2 ] || fail "--np 2 summary lacks world_size 2"
tail -n +2 "$tmp/dev.tsv" | cut -f1 | "$bin" predict --threads 1 --json --checkpoint "$tmp/np" |
  cmp -s - "$tmp/np/best/dev_predictions.jsonl" || fail "--np 2: gathered dev predictions differ from predict's"
"$bin" train "${np_args[@]}" --save "$tmp/one" >/dev/null
l2=$(grep -o '"dev_loss":[^,]*' "$tmp/np/metrics.jsonl" | head -1 | cut -d: -f2)
l1=$(grep -o '"dev_loss":[^,]*' "$tmp/one/metrics.jsonl" | head -1 | cut -d: -f2)
awk -v a="$l1" -v b="$l2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * a) }' ||
  fail "--np 2 dev loss $l2 differs from 1 process's $l1"
echo "ok   --np 2: K logits gathered exactly, dev loss $l2 vs 1 process $l1"
