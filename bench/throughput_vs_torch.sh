#!/usr/bin/env bash
# Training throughput of tapegrad against PyTorch in the same session, runs alternated
# (tapegrad, torch, tapegrad, torch, ...), for the two recommended configurations:
#   sst2: `./run.sh sst2` (tapegrad-train, LSTM, max pooling, embed dropout 0.25, Adam 2e-3,
#         min-freq 2) vs bench/sst2_torch.py; the same batches on both sides; examples/s.
#   lm:   `./run.sh lm` (tapegrad-lm, char LSTM, embed 32, hidden 128, batch 16, bptt 64, Adam 3e-3)
#         vs examples/lm/reference_torch.py; characters (tokens)/s.
# Only the training steps are timed on either side (data loading and evaluation are not).
#
# usage (from the project root, after a Release build): bench/throughput_vs_torch.sh [ROUNDS]
# env: BUILD_DIR (build/release), THREADS (1), SST2_STEPS (200), LM_STEPS (300),
#      TAPEGRAD_DATA (../shared/data), PYTHON (/usr/bin/python3: Debian's python3-torch)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
BUILD=${BUILD_DIR:-build/release}
THREADS=${THREADS:-1}
SST2_STEPS=${SST2_STEPS:-200}
LM_STEPS=${LM_STEPS:-300}
DATA=${TAPEGRAD_DATA:-../shared/data}
PY=${PYTHON:-/usr/bin/python3}
CORES=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TG_NUM_THREADS=$THREADS

die() { echo "throughput_vs_torch: $*" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
for b in tapegrad-train tapegrad-lm; do
  [ -x "$BUILD/examples/$b" ] || die "$BUILD/examples/$b not found: build it (./run.sh builds build/release) or set BUILD_DIR"
done
for f in "$DATA/sst2/train.tsv" "$DATA/sst2/dev.tsv" "$DATA/tinyshakespeare/input.txt"; do
  [ -f "$f" ] || die "$f not found (set TAPEGRAD_DATA)"
done
"$PY" -c 'import torch' 2>/dev/null ||
  die "PyTorch is MISSING: '$PY -c \"import torch\"' fails (Debian: apt-get install python3-torch; or set PYTHON)"

# The recommended configurations, every shape option spelled out so both sides stay equal.
SST2=(--model lstm --pooling max --embed-dropout 0.25 --lr 2e-3 --min-freq 2
      --embed 128 --hidden 256 --dropout 0.5 --batch 64 --clip 5 --max-len 100 --seed 1)
LM=(--model lstm --embed 32 --hidden 128 --layers 1 --batch 16 --bptt 64 --lr 3e-3 --clip 5 --seed 1)
LM_TOKENS_PER_STEP=$((16 * 64))  # every chunk is full: an epoch has ~880 chunks, LM_STEPS stays below

# field NAME: the number after "NAME": in the last JSON line of stdin.
field() { tail -n 1 | grep -o "\"$1\": *[-0-9.eE+]*" | sed 's/.*: *//'; }

run_sst2_tapegrad() {
  "$BUILD/examples/tapegrad-train" train --train "$DATA/sst2/train.tsv" --dev "$DATA/sst2/dev.tsv" "${SST2[@]}" \
    --layers 1 --optimizer adam --epochs 1 --stop-after "$SST2_STEPS" --threads "$THREADS" --quiet |
    field examples_per_second
}
run_sst2_torch() {
  "$PY" bench/sst2_torch.py --train "$DATA/sst2/train.tsv" "${SST2[@]}" --epochs 1 \
    --steps "$SST2_STEPS" --threads "$THREADS" | field examples_per_second
}
run_lm_tapegrad() {
  "$BUILD/examples/tapegrad-lm" train --text "$DATA/tinyshakespeare/input.txt" "${LM[@]}" --epochs 1 \
    --eval-every 0 --stop-after "$LM_STEPS" --threads "$THREADS" --quiet | field tokens_per_second
}
run_lm_torch() {
  local out steps secs
  out=$("$PY" examples/lm/reference_torch.py --text "$DATA/tinyshakespeare/input.txt" "${LM[@]}" \
          --steps "$LM_STEPS" --no-eval --threads "$THREADS" | tail -n 1)
  steps=$(field step <<<"$out") secs=$(field train_seconds <<<"$out")
  awk -v s="$steps" -v t="$secs" -v k="$LM_TOKENS_PER_STEP" 'BEGIN { printf "%.1f\n", s * k / t }'
}

echo "throughput_vs_torch: $ROUNDS round(s), $THREADS thread(s), sst2 $SST2_STEPS steps, lm $LM_STEPS steps;" \
     "torch $("$PY" -c 'import torch; print(torch.__version__)'), $CORES cores, build $BUILD"
declare -A fig
for ((r = 1; r <= ROUNDS; r++)); do
  for task in sst2 lm; do
    for impl in tapegrad torch; do
      v=$("run_${task}_${impl}")
      [ -n "$v" ] || die "round $r: $task $impl printed no figure"
      fig[$task,$impl,$r]=$v
      printf 'round %d  %-4s %-8s %10.1f %s/s   loadavg after %s\n' "$r" "$task" "$impl" "$v" \
        "$([ "$task" = sst2 ] && echo examples || echo chars)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    done
  done
done

fmt_list() { awk '{ for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? ", " : ""), $i }'; }
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "| task | unit | tapegrad runs | torch runs | ratio per round | median tapegrad | median torch | median ratio tapegrad/torch |"
echo "|---|---|---|---|---|---:|---:|---:|"
for task in sst2 lm; do
  tg="" pt="" ratios=""
  for ((r = 1; r <= ROUNDS; r++)); do
    tg+=" ${fig[$task,tapegrad,$r]}" pt+=" ${fig[$task,torch,$r]}"
    ratios+=" $(awk -v a="${fig[$task,tapegrad,$r]}" -v b="${fig[$task,torch,$r]}" 'BEGIN { print a / b }')"
  done
  printf '| %s | %s | %s | %s | %s | %.0f | %.0f | %.2f |\n' "$task" \
    "$([ "$task" = sst2 ] && echo "examples/s ($SST2_STEPS steps)" || echo "chars/s ($LM_STEPS steps)")" \
    "$(fmt_list <<<"$tg")" "$(fmt_list <<<"$pt")" \
    "$(awk '{ for (i = 1; i <= NF; i++) printf "%s%.2f", (i > 1 ? ", " : ""), $i }' <<<"$ratios")" "$(median <<<"${tg# }")" "$(median <<<"${pt# }")" \
    "$(median <<<"${ratios# }")"
done
echo "(ratio: per-round tapegrad/torch, median over rounds; > 1 means tapegrad is faster)"
