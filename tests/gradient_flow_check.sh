#!/usr/bin/env bash
# examples/gradient_flow in --quick mode: the CSVs have every cell x clip setting, every norm is
# finite, and at initialisation the tanh RNN's gradient vanishes towards t = 1 while the RNN with
# W_hh = 2 * orthogonal explodes there (both hold by orders of magnitude, for any seed).
set -euo pipefail
bin=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" --quick --no-plot --seed "${SEED:-1}" --out "$dir" >"$dir/stdout"

fail=0
check() {  # check NAME VERDICT
  if [ "$2" != ok ]; then echo "$1: $2"; fail=1; fi
}

cells="rnn rnn_big lstm lstm_fb gru gru_zb"
# grad_flow.csv: 3 probes (train steps 0, 10, 20) x T = 50 steps of ||dL/dh_t|| per cell and clip
# setting, and as many of ||dL/dc_t|| for the LSTMs.
check grad_flow.csv "$(awk -F, -v cells="$cells" '
  NR == 1 { if ($0 != "cell,clip,train_step,t,state,grad_norm,relative") bad = bad " bad header: " $0; next }
  {
    n[$1 "," $2 "," $5]++
    if ($6 !~ /^[0-9.e+-]+$/ || $6 < 0 || $6 > 1e30) bad = bad " non-finite norm at line " NR
    if ($2 == "none" && $3 == 0 && $5 == "h" && ($4 == 1 || $4 == 50)) at0[$1 "," $4] = $6
  }
  END {
    split(cells, cs, " ")
    for (i in cs) for (k = 0; k < 2; k++) {
      key = cs[i] "," (k ? "1" : "none")
      if (n[key ",h"] != 150) bad = bad " " key ",h: " n[key ",h"] + 0 " rows, expected 150"
      want = cs[i] ~ /^lstm/ ? 150 : 0
      if (n[key ",c"] != want) bad = bad " " key ",c: " n[key ",c"] + 0 " rows, expected " want
    }
    first = at0["rnn,1"]; last = at0["rnn,50"]
    if (!(first > 0 && last > 0 && first < 1e-3 * last)) bad = bad " rnn: no vanishing at init (" first " vs " last ")"
    first = at0["rnn_big,1"]; last = at0["rnn_big,50"]
    if (!(first > 10 * last)) bad = bad " rnn_big: no explosion at init (" first " vs " last ")"
    print bad == "" ? "ok" : bad
  }' "$dir/grad_flow.csv")"

# grad_norm.csv: one row per training step (20) per cell and clip setting, finite loss and norm.
check grad_norm.csv "$(awk -F, -v cells="$cells" '
  NR == 1 { if ($0 != "cell,clip,train_step,loss,grad_norm") bad = bad " bad header: " $0; next }
  {
    n[$1 "," $2]++
    if ($4 !~ /^[0-9.e+-]+$/ || $5 !~ /^[0-9.e+-]+$/ || $5 > 1e30) bad = bad " non-finite value at line " NR
  }
  END {
    split(cells, cs, " ")
    for (i in cs) for (k = 0; k < 2; k++) {
      key = cs[i] "," (k ? "1" : "none")
      if (n[key] != 20) bad = bad " " key ": " n[key] + 0 " rows, expected 20"
    }
    print bad == "" ? "ok" : bad
  }' "$dir/grad_norm.csv")"

# summary.csv: one row per cell and clip setting with an accuracy in [0, 1].
check summary.csv "$(awk -F, '
  NR == 1 { if ($0 != "cell,clip,final_loss,accuracy,learned_at,ratio_init,ratio_final") bad = bad " bad header: " $0; next }
  { rows++; if (!($4 >= 0 && $4 <= 1)) bad = bad " accuracy " $4 " at line " NR }
  END { if (rows != 12) bad = bad " " rows + 0 " rows, expected 12"; print bad == "" ? "ok" : bad }' "$dir/summary.csv")"

[ -f "$dir/plots.gp" ] || { echo "plots.gp missing"; fail=1; }
if [ $fail -ne 0 ]; then cat "$dir/stdout"; exit 1; fi
echo "gradient_flow: CSVs ok"
