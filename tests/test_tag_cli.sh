#!/usr/bin/env bash
# tapegrad-tag end to end on a tiny synthetic CoNLL-U corpus made here (a few seconds):
#  1. training with --test writes the documented run folder (best/, last/, metrics.jsonl and .png,
#     test.json, confusion.tsv and .png), prints the per-tag table and a final JSON line, and
#     learns the toy grammar;
#  2. `eval` of best/ on the test file gives exactly the accuracy the training run reported;
#  3. a run stopped mid-epoch (--stop-after) and resumed ends bit-identical to the
#     uninterrupted run (weights of best/ and last/, optimizer state, metrics);
#  4. bad input is refused with file:line messages (wrong column count, bad ID, UPOS '_'), or
#     skipped with --skip-bad-lines; missing/empty files, bad options, changed settings on
#     resume, a used --save folder and an edited checkpoint are refused with clear errors.
# usage: test_tag_cli.sh path/to/tapegrad-tag
set -euo pipefail
bin=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2-; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A toy grammar: DET ADJ? NOUN VERB (ADP DET NOUN)? PUNCT, with a deterministic word choice, so
# the tags are learnable from the words and their suffixes.
make_corpus() {  # make_corpus FILE SENTENCES OFFSET
  awk -v n="$2" -v off="$3" 'BEGIN {
    split("the a this every", det); split("big small red old happy", adj);
    split("cat dog house car tree bird river", noun); split("runs sees likes eats finds", verb);
    split("in on near under", adp);
    for (s = 0; s < n; s++) {
      k = s + off; id = 0;
      printf "# sent_id = %d\n", k;
      printf "%d\t%s\t_\tDET\t_\t_\t0\t_\t_\t_\n", ++id, (k % 5 == 0 ? "The" : det[k % 4 + 1]);
      if (k % 3 != 0) printf "%d\t%s\t_\tADJ\t_\t_\t0\t_\t_\t_\n", ++id, adj[(k * 7) % 5 + 1];
      printf "%d\t%s\t_\tNOUN\t_\t_\t0\t_\t_\t_\n", ++id, noun[(k * 3) % 7 + 1];
      printf "%d\t%s\t_\tVERB\t_\t_\t0\t_\t_\t_\n", ++id, verb[(k * 11) % 5 + 1];
      if (k % 2 == 0) {
        printf "%d-%d\t%s\t_\t_\t_\t_\t_\t_\t_\t_\n", id + 1, id + 2, "xx";
        printf "%d\t%s\t_\tADP\t_\t_\t0\t_\t_\t_\n", ++id, adp[k % 4 + 1];
        printf "%d\t%s\t_\tDET\t_\t_\t0\t_\t_\t_\n", ++id, det[(k * 5) % 4 + 1];
        printf "%d\t%s\t_\tNOUN\t_\t_\t0\t_\t_\t_\n", ++id, noun[(k * 13) % 7 + 1];
      }
      printf "%d\t.\t_\tPUNCT\t_\t_\t0\t_\t_\t_\n\n", ++id;
    } }' >"$1"
}
make_corpus "$tmp/train.conllu" 96 0
make_corpus "$tmp/dev.conllu" 24 1000
make_corpus "$tmp/test.conllu" 24 2000

args=(--train "$tmp/train.conllu" --dev "$tmp/dev.conllu" --test "$tmp/test.conllu" --word-embed 16 --char-embed 8
      --char-filters 8 --hidden 16 --epochs 6 --batch 16 --lr 2e-2 --min-freq 1 --seed 3)

# ---- 1. train ----
out=$("$bin" train "${args[@]}" --save "$tmp/a")
summary=$(tail -n 1 <<<"$out")
acc=$(field "$summary" test_accuracy)
echo "run: $summary"
awk -v a="$acc" 'BEGIN { exit !(a > 0.9) }' || fail "test accuracy $acc is not above 0.9 on the toy grammar"
grep -q '^tag  *precision  *recall  *F1  *support$' <<<"$out" || fail "no per-tag table in the output"
grep -Eq '^NOUN +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9]+$' <<<"$out" || fail "no NOUN row in the per-tag table"
for d in best last; do
  for f in model.safetensors config.json vocab.txt chars.txt optimizer.json trainer.json manifest.json; do
    [ -s "$tmp/a/$d/$f" ] || fail "$d/$f missing"
  done
done
[ "$(wc -l <"$tmp/a/metrics.jsonl")" -eq 6 ] || fail "expected 6 evaluations in metrics.jsonl"
for f in test.json confusion.tsv; do [ -s "$tmp/a/$f" ] || fail "$f missing"; done
if command -v gnuplot >/dev/null; then
  for f in metrics.png confusion.png; do [ -s "$tmp/a/$f" ] || fail "$f missing"; done
fi
[ "$(head -n 1 "$tmp/a/confusion.tsv" | cut -f 1-2)" = "$(printf "gold\\\\predicted\tADJ")" ] || fail "confusion.tsv header: $(head -n 1 "$tmp/a/confusion.tsv")"
echo "ok   run folder complete, test accuracy $acc"

# ---- 2. eval reproduces the test accuracy ----
ev=$("$bin" eval --checkpoint "$tmp/a" --data "$tmp/test.conllu" | tail -n 1)
[ "$(field "$ev" accuracy)" = "$acc" ] || fail "eval gives $(field "$ev" accuracy), training reported $acc"
[ "$(field "$ev" loss)" = "$(field "$summary" test_loss)" ] || fail "eval's loss $(field "$ev" loss) differs from training's"
echo "ok   eval of best/ reproduces the test accuracy ($acc) and loss ($(field "$ev" loss)) exactly"

# ---- 3. stop mid-epoch (epochs 2 and 3 of 6, 6 batches each), resume, compare ----
"$bin" train "${args[@]}" --save "$tmp/b" --stop-after 8 -q >"$tmp/b.out"
[ "$(field "$(tail -n 1 "$tmp/b.out")" steps)" = 8 ] || fail "did not stop at step 8: $(tail -n 1 "$tmp/b.out")"
"$bin" train --resume "$tmp/b" --stop-after 11 -q >/dev/null
"$bin" train --resume "$tmp/b" -q >"$tmp/b2.out"
for f in best/model.safetensors last/model.safetensors last/optimizer.json; do
  cmp -s "$tmp/a/$f" "$tmp/b/$f" || fail "$f differs between the uninterrupted and the resumed run"
done
strip() { sed -E 's/"(train_seconds|sentences_per_s|eval_seconds)":[^,}]*,?//g' "$1"; }
cmp -s <(strip "$tmp/a/metrics.jsonl") <(strip "$tmp/b/metrics.jsonl") || fail "metrics differ after resume"
[ "$(field "$(tail -n 1 "$tmp/b2.out")" test_accuracy)" = "$acc" ] || fail "resumed run's test accuracy differs"
echo "ok   stopped at steps 8 and 11 and resumed twice: bit-identical to the uninterrupted run"

# ---- 4. bad input ----
refuse() {  # refuse "what is expected in the message" command...
  local want=$1; shift
  local err rc=0
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  [ "$rc" -ne 0 ] || fail "accepted (expected: $want): $*"
  grep -qF -- "$want" <<<"$err" || fail "message lacks '$want': $err"
}
small=(--dev "$tmp/dev.conllu" --word-embed 8 --char-embed 4 --char-filters 4 --hidden 8 --epochs 1 -q)
cp "$tmp/train.conllu" "$tmp/cols.conllu"
sed -i '7s/^\(.*\)\t_\t_$/\1/' "$tmp/cols.conllu"
refuse "cols.conllu:7: expected 10 tab-separated columns (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), got 8" \
  "$bin" train --train "$tmp/cols.conllu" "${small[@]}"
cp "$tmp/train.conllu" "$tmp/id.conllu"
sed -i '3s/^2\t/7\t/' "$tmp/id.conllu"
refuse "id.conllu:3: word ID 7 out of order (expected 2)" "$bin" train --train "$tmp/id.conllu" "${small[@]}"
cp "$tmp/train.conllu" "$tmp/upos.conllu"
sed -i '3s/\tNOUN\t/\t_\t/' "$tmp/upos.conllu"
refuse "upos.conllu:3: word 2 ('cat'): UPOS (column 4) is '_'" "$bin" train --train "$tmp/upos.conllu" "${small[@]}"
out=$("$bin" train --train "$tmp/upos.conllu" "${small[@]}" --skip-bad-lines 2>"$tmp/skip.err")
grep -q "skipped 1 malformed line(s)" "$tmp/skip.err" || fail "--skip-bad-lines gave no warning: $(cat "$tmp/skip.err")"
[ "$(field "$(tail -n 1 <<<"$out")" train_sentences)" = 95 ] || fail "--skip-bad-lines did not drop one sentence"
refuse "cannot open $tmp/none.conllu" "$bin" train --train "$tmp/none.conllu" "${small[@]}"
: >"$tmp/empty.conllu"
refuse "$tmp/empty.conllu: the training set has no sentences" "$bin" train --train "$tmp/empty.conllu" "${small[@]}"
refuse "--lr must be > 0" "$bin" train --train "$tmp/train.conllu" "${small[@]}" --lr -1
refuse "--batch must be >= 1" "$bin" train --train "$tmp/train.conllu" "${small[@]}" --batch 0
refuse "--train FILE and --dev FILE are required" "$bin" train --dev "$tmp/dev.conllu"
refuse "--hidden cannot be changed when resuming" "$bin" train --resume "$tmp/b" --hidden 32
refuse "the folder is not empty" "$bin" train "${args[@]}" --save "$tmp/a"
cp -r "$tmp/a" "$tmp/c"
echo "zebra" >>"$tmp/c/best/vocab.txt"
refuse "vocab.txt does not match manifest.json" "$bin" eval --checkpoint "$tmp/c" --data "$tmp/test.conllu"
mkdir "$tmp/d" && echo '{"format": "tapegrad-text-classifier"}' >"$tmp/d/config.json"
refuse "not a tapegrad-tag checkpoint" "$bin" eval --checkpoint "$tmp/d" --data "$tmp/test.conllu"
echo "ok   bad input refused with file:line messages"
echo "PASS test_tag_cli"
