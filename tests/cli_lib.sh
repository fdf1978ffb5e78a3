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
# same_fields RUN_JSON REFERENCE_JSON KEY...: each key has the same value in both final JSON lines.
same_fields() {
  local got=$1 want=$2 k
  shift 2
  for k in "$@"; do
    [ "$(field "$got" "$k")" = "$(field "$want" "$k")" ] ||
      fail "resumed $k $(field "$got" "$k") != uninterrupted $(field "$want" "$k")"
  done
}
same_run_folders() {
  cmp -s <(deterministic "$1/metrics.jsonl") <(deterministic "$2/metrics.jsonl") ||
    fail "metrics differ: $(diff <(deterministic "$1/metrics.jsonl") <(deterministic "$2/metrics.jsonl"))"
  cmp -s "$1/last/model.safetensors" "$2/last/model.safetensors" || fail "final weights differ"
  cmp -s "$1/last/optimizer.json" "$2/last/optimizer.json" || fail "final optimizer state differs"
}

# Crafting checkpoints (python3): what a deliberate editor would do.
# rewrite_manifest DIR: what a deliberate editor would do (recompute every listed checksum)
rewrite_manifest() {
  python3 - "$1" <<'EOF'
import hashlib, json, os, sys
d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))
for name, e in m["files"].items():
    raw = open(os.path.join(d, name), "rb").read()
    e["bytes"], e["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
EOF
}
# safetensors_edit FILE MODE: MODE nan (fc.bias := NaN, CRC fixed, so every output is nan), old
# (drop the tapegrad_manifest metadata entry, as files written before manifests) or foreign (also
# drop tapegrad_model, as a file another tool wrote: config.json is then the only description)
safetensors_edit() {
  python3 - "$1" "$2" <<'EOF'
import json, struct, sys, zlib
path, mode = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + n])
data = bytearray(raw[8 + n:])
meta = header["__metadata__"]
if mode == "nan":
    name = "fc.bias"
    begin = header[name]["data_offsets"][0]
    data[begin:begin + 4] = struct.pack("<f", float("nan"))
    meta["tapegrad_checksum"] = "crc32:%08x" % (zlib.crc32(bytes(data)) & 0xFFFFFFFF)
else:
    del meta["tapegrad_manifest"]
    if mode == "foreign":
        del meta["tapegrad_model"]
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(path, "wb").write(struct.pack("<Q", len(text)) + text + bytes(data))
EOF
}

