# Shared by the training-CLI tests (source it): where SST-2 is, JSON fields, run comparisons.
# TAPEGRAD_DATA points at the folder holding sst2/ (default <repo>/../shared/data).

# require_sst2 TEST_NAME: sets $data, or prints SKIP and exits 77 (CTest: skipped, not passed).
require_sst2() {
  local lib_dir
  lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  data=${TAPEGRAD_DATA:-$lib_dir/../../shared/data}/sst2
  if [ ! -f "$data/train.tsv" ] || [ ! -f "$data/dev.tsv" ]; then
    echo "SKIP: SST-2 data not found in $data (set TAPEGRAD_DATA to the folder holding sst2/); $1 not run"
    exit 77
  fi
}

fail() { echo "FAIL: $*" >&2; exit 1; }
field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2-; }
# metrics.jsonl without the timing fields, which differ run to run
deterministic() { sed -E 's/"(elapsed|examples_per_second)":[^,}]*,?//g' "$1"; }

# same_run_folders A B: the two run folders hold the same metrics, final weights and optimizer state.
same_run_folders() {
  cmp -s <(deterministic "$1/metrics.jsonl") <(deterministic "$2/metrics.jsonl") ||
    fail "metrics differ: $(diff <(deterministic "$1/metrics.jsonl") <(deterministic "$2/metrics.jsonl"))"
  cmp -s "$1/last/model.safetensors" "$2/last/model.safetensors" || fail "final weights differ"
  cmp -s "$1/last/optimizer.json" "$2/last/optimizer.json" || fail "final optimizer state differs"
}
