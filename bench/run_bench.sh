#!/usr/bin/env bash
# ./run.sh bench [CONFIG...]: tapegrad's RNN training step (SPEC.md configs) and, when Debian's
# libtorch is installed, the PyTorch reference from ../shared/bench built and run in the same
# session, one after the other, so the ratio libtorch/tapegrad is measured on the same machine.
# LSTM configs also run the oneDNN peer (bench_onednn_lstm: oneDNN's fused lstm_forward/backward,
# what PyTorch 2.x uses for CPU LSTM training) when it was built (libdnnl-dev installed). Every
# config also runs as a captured step (bench_rnn_bench --captured, autograd/capture.h): its rows
# follow the seed example's, with ratios against the same peers.
set -euo pipefail
build=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(toy small medium lstm-small lstm-medium)
ref_src="${TAPEGRAD_BENCH_REF:-$root/../shared/bench}"
ref_build="$build/torch-ref"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

have_ref=0
if [ -f "$ref_src/bench.cpp" ] && dpkg-query -W -f='${Status}' libtorch-dev 2>/dev/null | grep -q "ok installed"; then
  if [ ! -x "$ref_build/bench_cpp" ]; then
    echo "building the libtorch reference (once) ..." >&2
    cmake -S "$ref_src" -B "$ref_build" -DCMAKE_BUILD_TYPE=Release >/dev/null 2>&1 &&
      cmake --build "$ref_build" -j"$(nproc)" --target bench_cpp >/dev/null 2>&1 || true
  fi
  [ -x "$ref_build/bench_cpp" ] && have_ref=1
else
  echo "libtorch-dev is not installed: printing tapegrad's numbers only (apt-get install libtorch-dev)" >&2
fi

onednn="$build/bench/bench_onednn_lstm"
[ -x "$onednn" ] || echo "bench_onednn_lstm was not built (apt-get install libdnnl-dev): no oneDNN column" >&2

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
# A command's stdout, then on the last line its process's peak RSS in MB (rusage of the child):
# the libtorch and oneDNN programs do not report it, and tapegrad's column is its whole process too.
with_rss() {
  python3 -c 'import resource, subprocess, sys
sys.stdout.write(subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, text=True).stdout)
print("%.1f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))' "$@"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() {  # whole-process wall seconds of a command, median of 5 runs
  for _ in 1 2 3 4 5; do
    s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
    echo "$e - $s" | bc -l
  done | median
}

# The machine's practical FP32 peak in this same session: OpenBLAS sgemm at its best size.
declare -A peak
sgemm_src="$ref_src/sgemm_bench.c"
if [ -f "$sgemm_src" ] && cc -O2 -o "$build/sgemm_bench" "$sgemm_src" $(pkg-config --cflags --libs openblas) 2>/dev/null; then
  while IFS=$'\t' read -r th _ _ _ _ _ _ gf; do
    [[ "$th" =~ ^[0-9]+$ ]] || continue
    if [ -z "${peak[$th]:-}" ] || [ "$(echo "$gf > ${peak[$th]}" | bc -l)" = 1 ]; then peak[$th]=$gf; fi
  done < <(OPENBLAS_NUM_THREADS=2 "$build/sgemm_bench" 0.2)
fi

cores=$("$build/bench/bench_rnn_bench" cores)
thread_counts=(1)
[ "$cores" -gt 1 ] && thread_counts+=("$cores")
declare -A rows captured_rows ours_ms
# One table row: config name, tapegrad's JSON line, and the peers' figures of this config (globals).
row() {
  local gf of_peak="n/a"
  gf=$(json "$2" gflops)
  [ -n "${peak[$th]:-}" ] && of_peak=$(printf '%.0f %%' "$(echo "100 * $gf / ${peak[$th]}" | bc -l)")
  printf '| %s | %.4f | %.1f | %s | %.1f | %s | %s | %s | %s | %s | %s |' "$1" "$(json "$2" median_ms)" "$gf" "$of_peak" \
    "$(json "$2" peak_rss_mb)" "${ref_ms:-n/a}" "$([ -n "$ratio" ] && printf '%.2fx' "$ratio" || echo n/a)" "${ref_rss:-n/a}" \
    "${dnnl_ms:-n/a}" "$([ -n "$dnnl_ratio" ] && printf '%.2fx' "$dnnl_ratio" || echo n/a)" "${dnnl_rss:-n/a}"
}
for th in "${thread_counts[@]}"; do
  rows[$th]=""
  for c in "${configs[@]}"; do
    # tapegrad runs OpenBLAS on one thread and splits large products over its own team
    # (kernels/cpu_gemm.cpp): more OpenBLAS threads would only poll for work that never comes.
    ours=$(OPENBLAS_NUM_THREADS=1 "$build/bench/bench_rnn_bench" step --config "$c" --threads "$th")
    ours_ms[$th,$c]=$(json "$ours" median_ms)
    echo "$ours"
    ref_ms="" ratio="" dnnl_ms="" dnnl_ratio="" ref_rss="" dnnl_rss=""
    if [ -x "$onednn" ] && [[ "$c" == lstm-* ]]; then
      out=$(OMP_NUM_THREADS=$th with_rss "$onednn" step --config "$c" --threads "$th")
      dnnl=$(head -n -1 <<<"$out") dnnl_rss=$(tail -n 1 <<<"$out")
      echo "$dnnl"
      dnnl_ms=$(json "$dnnl" median_ms)
      dnnl_ratio=$(echo "$dnnl_ms / $(json "$ours" median_ms)" | bc -l)
    fi
    if [ $have_ref -eq 1 ] && [ "$c" != lstm-medium ]; then  # ../shared/bench has no lstm-medium
      out=$(OMP_NUM_THREADS=$th OPENBLAS_NUM_THREADS=$th with_rss "$ref_build/bench_cpp" step --config "$c" --variant module --threads "$th")
      ref=$(head -n -1 <<<"$out") ref_rss=$(tail -n 1 <<<"$out")
      echo "$ref"
      ref_ms=$(json "$ref" median_ms)
      ratio=$(echo "$ref_ms / $(json "$ours" median_ms)" | bc -l)
    fi
    rows[$th]+="$(row "$c" "$ours")"$'\n'
    # The same step captured once and replayed (autograd/capture.h), against the same peers.
    ours=$(OPENBLAS_NUM_THREADS=1 "$build/bench/bench_rnn_bench" step --config "$c" --threads "$th" --captured)
    echo "$ours"
    [ -n "$ref_ms" ] && ratio=$(echo "$ref_ms / $(json "$ours" median_ms)" | bc -l)
    [ -n "$dnnl_ms" ] && dnnl_ratio=$(echo "$dnnl_ms / $(json "$ours" median_ms)" | bc -l)
    captured_rows[$th]+="$(row "$c, captured step" "$ours")"$'\n'
  done
done

ours_toy=$(TG_NUM_THREADS=1 wall "$build/examples/sentiment")
toy_row="| seed example, whole process (300 epochs x 8 sentences) | $(printf '%.4f' "$ours_toy") s | | | |"
if [ $have_ref -eq 1 ]; then
  ref_toy=$(wall "$ref_build/bench_cpp" toytrain --variant module --threads 1)
  toy_row="$toy_row $(printf '%.3f s | %.1fx | |' "$ref_toy" "$(echo "$ref_toy / $ours_toy" | bc -l)")"
else
  toy_row="$toy_row n/a | n/a | |"
fi
toy_row="$toy_row | | | |"

for th in "${thread_counts[@]}"; do
  echo
  echo "$th thread(s); sgemm peak in this run: ${peak[$th]:-n/a} GFLOP/s"
  echo "| config | tapegrad median ms/step | GFLOP/s | of sgemm peak | peak RSS MB | libtorch median ms/step | libtorch/tapegrad | libtorch peak RSS MB | oneDNN median ms/step | oneDNN/tapegrad | oneDNN peak RSS MB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "${rows[$th]}"
  [ "$th" = 1 ] && echo "$toy_row"
  printf '%s' "${captured_rows[$th]}"
done
if [ ${#thread_counts[@]} -gt 1 ]; then
  th=${thread_counts[1]}
  line="tapegrad on $th threads against its own 1-thread step (1-thread ms / $th-thread ms):"
  for c in "${configs[@]}"; do line+=" $c $(printf '%.2fx' "$(echo "${ours_ms[1,$c]} / ${ours_ms[$th,$c]}" | bc -l)")"; done
  echo
  echo "$line"
fi
echo
echo "OpenBLAS kernels: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset (OpenBLAS picks them for this CPU)}; oneDNN picks its own ISA"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) vCPUs, $cores cores available; load average at end $(cut -d" " -f1 /proc/loadavg); $(date -u +%Y-%m-%d)"
