#!/usr/bin/env python3
"""Checks that tapegrad's checkpoints are plain safetensors, with numpy only (no torch, no
safetensors package).

  C++ -> Python: tapegrad-train trains tiny models (LSTM; bidirectional GRU with max pooling;
                 two-layer tanh RNN with mean pooling); this script parses model.safetensors by
                 hand (header layout, alignment, offsets, CRC-32), re-implements the classifier's
                 forward pass in numpy from those weights, and compares it with
                 `tapegrad-train predict --json`.
  Python -> C++: this script writes a checkpoint (safetensors written with numpy, F32 and F64
                 tensors, with and without a checksum); `tapegrad-train predict` must load it and
                 give the logits numpy computes. A file with bad offsets must be rejected.

usage: safetensors_numpy_check.py path/to/tapegrad-train
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

try:
    import numpy as np
except ImportError:  # e.g. a pyenv python3 first on PATH; Debian's python3-numpy lives here
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("FAIL: numpy is not installed (Debian: apt-get install python3-numpy)")
    sys.exit(1)

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|'[a-z]+|[^\sa-z0-9]")


def read_safetensors(path):
    """Returns (tensors, metadata), checking the file's structure on the way."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert 8 + n <= len(raw), "header runs past the file"
    assert (8 + n) % 8 == 0, "data section is not 8-byte aligned"
    header_text = raw[8:8 + n].decode("utf-8")
    assert header_text.rstrip(" ") == header_text.strip(), "header padding must be trailing spaces"
    header = json.loads(header_text)
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    names = list(header)
    spans = sorted((header[k]["data_offsets"], k) for k in names)
    pos = 0
    for (b, e), k in spans:
        assert b == pos, f"{k}: gap or overlap at {b} (expected {pos})"
        pos = e
    assert pos == len(data), "data section has trailing bytes"
    # tapegrad writes tensors in name order
    assert [k for _, k in spans] == sorted(names), "tensors are not stored in name order"
    if "tapegrad_checksum" in meta:
        want = meta["tapegrad_checksum"]
        got = "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)
        assert want == got, f"checksum {want} != {got}"
    tensors = {}
    for k in names:
        h = header[k]
        b, e = h["data_offsets"]
        dt = np.dtype(DTYPES[h["dtype"]]).newbyteorder("<")
        a = np.frombuffer(data[b:e], dtype=dt).reshape(h["shape"])
        tensors[k] = a.astype(np.float64) if h["dtype"] != "I64" else a
    return tensors, meta


def write_safetensors(path, tensors, metadata=None, checksum=False):
    """tensors: name -> numpy array (float32, float64 or int64)."""
    names = sorted(tensors)
    header, chunks, pos = {}, [], 0
    code = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}
    for k in names:
        a = np.ascontiguousarray(tensors[k])
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[k] = {"dtype": code[a.dtype], "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        chunks.append(b)
        pos += len(b)
    data = b"".join(chunks)
    meta = dict(metadata or {})
    if checksum:
        meta["tapegrad_checksum"] = "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


# ---- the classifier's forward pass (eval mode) in numpy, float64 ----

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def cell_step(kind, x, h, c, p):
    gi = p["weight_ih"] @ x + p["bias_ih"]
    gh = p["weight_hh"] @ h + p["bias_hh"]
    H = h.shape[0]
    if kind == "rnn":
        return np.tanh(gi + gh), None
    if kind == "lstm":
        g = gi + gh
        i, f, gg, o = sigmoid(g[:H]), sigmoid(g[H:2 * H]), np.tanh(g[2 * H:3 * H]), sigmoid(g[3 * H:])
        c2 = f * c + i * gg
        return o * np.tanh(c2), c2
    r = sigmoid(gi[:H] + gh[:H])
    z = sigmoid(gi[H:2 * H] + gh[H:2 * H])
    n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
    return (1 - z) * n + z * h, None


def forward(model, w, ids):
    """One sentence (list of ids) -> logit."""
    kind, L, H = model["cell"], model["layers"], model["hidden"]
    D = 2 if model["bidirectional"] else 1
    x = w["embedding.weight"][ids]  # [T, E]
    T = len(ids)
    finals = []
    for l in range(L):
        outs = []
        for d in range(D):
            p = {k: w[f"rnn.cell{l}{'_reverse' if d else ''}.{k}"]
                 for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            h, c = np.zeros(H), np.zeros(H)
            out = np.zeros((T, H))
            for t in (range(T) if d == 0 else reversed(range(T))):
                h, c = cell_step(kind, x[t], h, c, p)
                out[t] = h
            outs.append(out)
            finals.append(h)
        x = np.concatenate(outs, axis=1)
    if model["pooling"] == "last":
        feat = np.concatenate(finals[-D:])
    elif model["pooling"] == "max":
        feat = x.max(axis=0)
    else:
        feat = x.mean(axis=0)
    return float((w["fc.weight"] @ feat + w["fc.bias"])[0])


def encode(sentence, vocab, max_len):
    index = {word: i for i, word in enumerate(vocab)}
    ids = [index.get(t, 1) for t in TOKEN_RE.findall(sentence.lower())][:max_len]
    return ids or [1]


# ---- the checks ----

SENTENCES = [
    "a great , moving film",
    "dull and boring , a terrible mess",
    "not good",
    "the acting is wonderful but the story is weak and the ending is bad",
    "zyzzyva",  # unknown word
    "",         # no tokens at all -> <unk>
    "fun fun fun fun fun fun fun fun fun fun fun fun fun fun fun fun fun fun fun fun",
]

POS = "great moving wonderful fun good charming delightful brilliant".split()
NEG = "dull boring terrible mess bad weak awful tedious".split()
FILL = "the a film movie story acting is and but , .".split()


def make_tsv(path, n, seed):
    rng = np.random.default_rng(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(FILL, size=int(rng.integers(1, 9))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POS if y else NEG)))
        rows.append(" ".join(words) + " \t" + str(y))
    open(path, "w").write("\n".join(rows) + "\n")


def run(cmd, expect_ok=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def predict(binary, ckpt):
    r = run([binary, "predict", "--checkpoint", ckpt, "--json"] + SENTENCES)
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(lines) == len(SENTENCES), r.stdout
    return lines


def compare(tag, model, w, vocab, max_len, preds):
    worst = 0.0
    for s, p in zip(SENTENCES, preds):
        want = forward(model, w, encode(s, vocab, max_len))
        err = abs(want - p["logit"]) / max(1.0, abs(want))
        worst = max(worst, err)
        assert err < 1e-5, f"{tag}: '{s}': numpy logit {want}, tapegrad {p['logit']}"
        assert p["label"] == (1 if p["logit"] > 0 else 0)
        assert abs(p["probability"] - 1 / (1 + np.exp(-p["logit"]))) < 1e-12
    print(f"ok   {tag}: {len(preds)} logits agree with numpy (max rel. error {worst:.1e})")


def cpp_to_python(binary, tmp):
    make_tsv(f"{tmp}/train.tsv", 64, 1)
    make_tsv(f"{tmp}/dev.tsv", 16, 2)
    configs = [
        ["--model", "lstm"],
        ["--model", "gru", "--bidirectional", "--pooling", "max", "--embed-dropout", "0.2"],
        ["--model", "rnn", "--layers", "2", "--pooling", "mean", "--max-len", "6"],
    ]
    for i, cfg in enumerate(configs):
        run_dir = f"{tmp}/run{i}"
        run([binary, "train", "--train", f"{tmp}/train.tsv", "--dev", f"{tmp}/dev.tsv", "--embed", "8",
             "--hidden", "6", "--epochs", "2", "--batch", "8", "--lr", "0.01", "--save", run_dir, "-q"] + cfg)
        ckpt = f"{run_dir}/last"
        w, meta = read_safetensors(f"{ckpt}/model.safetensors")
        assert "tapegrad_checksum" in meta, meta
        config = json.load(open(f"{ckpt}/config.json"))
        model = config["model"]
        vocab = open(f"{ckpt}/vocab.txt", encoding="utf-8").read().split("\n")[:-1]
        V, E, H = model["vocab_size"], model["embed"], model["hidden"]
        G = {"rnn": 1, "lstm": 4, "gru": 3}[model["cell"]]
        D = 2 if model["bidirectional"] else 1
        assert len(vocab) == V and vocab[:2] == ["<pad>", "<unk>"]
        assert w["embedding.weight"].shape == (V, E)
        assert not w["embedding.weight"][0].any(), "padding row must stay zero"
        assert w["rnn.cell0.weight_ih"].shape == (G * H, E)
        assert w["rnn.cell0.weight_hh"].shape == (G * H, H)
        assert w["fc.weight"].shape == (1, D * H) and w["fc.bias"].shape == (1,)
        print(f"ok   C++ -> numpy: {ckpt}/model.safetensors parsed ({len(w)} tensors, checksum verified)")
        compare(f"{' '.join(cfg)}", model, w, vocab, config["training"]["max-len"], predict(binary, ckpt))


def python_to_cpp(binary, tmp):
    rng = np.random.default_rng(7)
    vocab = ["<pad>", "<unk>"] + sorted(set(POS + NEG + FILL))
    V, E, H = len(vocab), 5, 4
    for cell, G, bi, pooling, checksum in [("lstm", 4, False, "last", False), ("gru", 3, True, "mean", True),
                                           ("rnn", 1, True, "max", True)]:
        D = 2 if bi else 1
        w = {"embedding.weight": rng.normal(size=(V, E)).astype(np.float32)}
        w["embedding.weight"][0] = 0
        for d in range(D):
            s = "_reverse" if d else ""
            # F64 for the recurrent weights: tapegrad converts on load
            w[f"rnn.cell0{s}.weight_ih"] = rng.uniform(-0.5, 0.5, size=(G * H, E))
            w[f"rnn.cell0{s}.weight_hh"] = rng.uniform(-0.5, 0.5, size=(G * H, H))
            w[f"rnn.cell0{s}.bias_ih"] = rng.uniform(-0.5, 0.5, size=(G * H,)).astype(np.float32)
            w[f"rnn.cell0{s}.bias_hh"] = rng.uniform(-0.5, 0.5, size=(G * H,)).astype(np.float32)
        w["fc.weight"] = rng.normal(size=(1, D * H)).astype(np.float32)
        w["fc.bias"] = np.array([0.1], dtype=np.float32)
        ckpt = f"{tmp}/py_{cell}"
        os.makedirs(ckpt)
        model = {"vocab_size": V, "embed": E, "hidden": H, "layers": 1, "cell": cell, "bidirectional": bi,
                 "dropout": 0.5, "embed_dropout": 0.0, "pooling": pooling, "padding_idx": 0}
        json.dump({"model": model, "training": {"max-len": 100}}, open(f"{ckpt}/config.json", "w"))
        open(f"{ckpt}/vocab.txt", "w").write("\n".join(vocab) + "\n")
        write_safetensors(f"{ckpt}/model.safetensors", w, {"format": "pt"}, checksum=checksum)
        # tapegrad computes in float32: compare against float32-rounded weights
        w64 = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}
        compare(f"numpy -> C++ ({cell}, {'bi' if bi else 'uni'}, {pooling}, checksum {checksum})", model, w64, vocab,
                100, predict(binary, ckpt))

    # a corrupt file is refused with a message naming it
    bad = f"{tmp}/py_lstm/model.safetensors"
    raw = bytearray(open(bad, "rb").read())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["fc.bias"]["data_offsets"][1] += 4
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    open(bad, "wb").write(struct.pack("<Q", len(text)) + text + bytes(raw[8 + n:]))
    r = run([binary, "predict", "--checkpoint", f"{tmp}/py_lstm", "x"], expect_ok=False)
    assert r.returncode != 0 and "model.safetensors" in r.stderr and "fc.bias" in r.stderr, r.stderr
    print(f"ok   corrupt file refused: {r.stderr.strip()}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="tg_st_numpy_") as tmp:
        cpp_to_python(binary, tmp)
        python_to_cpp(binary, tmp)
    print("safetensors_numpy_check: all checks passed")


if __name__ == "__main__":
    main()
