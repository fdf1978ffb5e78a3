#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/ (checked in; rerun to regenerate).

Small valid inputs and near misses for each reader, so the fuzzer starts from the interesting
structure instead of random bytes.
"""
import json
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    path = os.path.join(HERE, "corpus", target, name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def safetensors(tensors, metadata=None, checksum=True, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes); written like tapegrad writes them."""
    header, data = {}, b""
    for name, dtype, shape, raw in sorted(tensors):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    meta = dict(metadata or {})
    if checksum:
        meta["tapegrad_checksum"] = "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(n, start=0.0, step=0.01):
    return struct.pack("<%df" % n, *[start + step * i for i in range(n)])


def model_tensors(hidden=16, embed=8, vocab=16):
    """The fuzz target's model: TextClassifier(vocab 16, embed 8, hidden 16, RNN)."""
    return [
        ("embedding.weight", "F32", [vocab, embed], f32(vocab * embed)),
        ("rnn.cell0.weight_ih", "F32", [hidden, embed], f32(hidden * embed, -0.5)),
        ("rnn.cell0.weight_hh", "F32", [hidden, hidden], f32(hidden * hidden, 0.1, -0.001)),
        ("rnn.cell0.bias_ih", "F32", [hidden], f32(hidden)),
        ("rnn.cell0.bias_hh", "F32", [hidden], f32(hidden, 1.0)),
        ("fc.weight", "F32", [1, hidden], f32(hidden)),
        ("fc.bias", "F32", [1], f32(1)),
    ]


def main():
    # --- safetensors -------------------------------------------------------------------------
    model = model_tensors()
    good = safetensors(model, {"format": "pt"})
    put("safetensors", "model_valid", good)
    put("safetensors", "model_no_checksum", safetensors(model, {"format": "pt"}, checksum=False))
    put("safetensors", "model_f64", safetensors(
        [(n, "F64", s, struct.pack("<%dd" % (len(r) // 4), *struct.unpack("<%df" % (len(r) // 4), r)))
         for n, _, s, r in model], checksum=False))
    put("safetensors", "model_wrong_shape", safetensors(
        [(n, d, [s[0] // 2, s[1] * 2] if n == "rnn.cell0.weight_hh" else s, r) for n, d, s, r in model],
        checksum=False))
    put("safetensors", "model_wrong_name", safetensors(
        [("rnn.weight_hh_l0" if n == "rnn.cell0.weight_hh" else n, d, s, r) for n, d, s, r in model],
        checksum=False))
    put("safetensors", "model_missing", safetensors(model[:-1], checksum=False))
    put("safetensors", "model_i64", safetensors(
        [("fc.bias", "I64", [1], struct.pack("<q", 7)) if n == "fc.bias" else (n, d, s, r)
         for n, d, s, r in model], checksum=False))
    put("safetensors", "model_truncated", good[: len(good) - 100])
    flipped = bytearray(good)
    flipped[-7] ^= 0x10
    put("safetensors", "model_bitflip", bytes(flipped))
    put("safetensors", "tiny", safetensors([("x", "F32", [2], f32(2))]))
    put("safetensors", "tiny_unpadded", safetensors([("x", "F32", [2], f32(2))], checksum=False, pad=False))
    put("safetensors", "scalar_and_empty", safetensors(
        [("s", "F64", [], struct.pack("<d", 1.5)), ("e", "F32", [0, 3], b""), ("i", "I64", [2], struct.pack("<2q", -1, 2))],
        {"note": "x"}))
    put("safetensors", "rank8", safetensors([("r", "F32", [1] * 8, f32(1))], checksum=False))
    put("safetensors", "bf16", safetensors([("b", "BF16", [2], b"\0\0\0\0")], checksum=False))
    overlap = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                         separators=(",", ":")).encode()
    put("safetensors", "overlap", struct.pack("<Q", len(overlap)) + overlap + f32(3))
    put("safetensors", "empty_header", struct.pack("<Q", 2) + b"{}")
    put("safetensors", "short", b"\x08\x00\x00")

    # --- dataset (TSV / label<TAB>text) ---------------------------------------------------------
    put("dataset", "glue_sst2", "sentence\tlabel\nhide new secretions from the parental units \t0\n"
        "contains no wit , only labored gags \t0\nthat loves its characters \t1\n")
    put("dataset", "glue_crlf_bom", b"\xef\xbb\xbfsentence\tlabel\r\na film \t1\r\nbad \t0\r\n\r\n")
    put("dataset", "glue_utf8", "sentence\tlabel\non the worst clichés the filmmakers could dredge up \t0\n"
        "naïve , rêve — 映画 \t1\n")
    put("dataset", "glue_invalid_utf8", b"sentence\tlabel\ngood \xff\xfe film \t1\nok \t0\n\xc3\t1\n")
    put("dataset", "glue_bad_rows", "sentence\tlabel\nno tab here\ntwo\ttabs\t1\nlabel two \t2\n\nafter blank \t1\n")
    put("dataset", "glue_no_header", "a movie \t1\n")
    put("dataset", "label_text", "0\tthe movie is bad\n1\tthe movie is good\n12\tmulti class \n")
    put("dataset", "label_text_bad", "-1\tneg\n1.0\tfloat\n99999999999\tbig\n 1\tspace\n1\t\n")
    put("dataset", "control_bytes", b"sentence\tlabel\na\x00b\x1b[31m \t1\n\x7f\t0\n")

    # --- tokenizer -------------------------------------------------------------------------------
    put("tokenizer", "contractions", "Don't stop -- it 's well-made , isn't it ? 'tis a--b")
    put("tokenizer", "unicode", "Les clichés du cinéma — naïve ★★★ 映画 😀 \u00a0nbsp\u2009thin\u3000ideo")
    put("tokenizer", "invalid", b"ok \xff \xc3 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf \xf0\x9f\x98")
    put("tokenizer", "spaces", "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \u0085\u2028\u2029\u202f\u205f")
    put("tokenizer", "digits_quotes", "1990's 3-D '90s ' ' ''a 'A b'-c x'")

    # --- vocab -----------------------------------------------------------------------------------
    put("vocab", "valid", "<pad>\n<unk>\nthe\nmovie\nis\ngood\nbad\n")
    put("vocab", "valid_no_final_newline", "<pad>\n<unk>\nclichés\n映画\n's")
    put("vocab", "crlf", "<pad>\r\n<unk>\r\nthe\r\n")
    put("vocab", "duplicate", "<pad>\n<unk>\nthe\nthe\n")
    put("vocab", "missing_unk", "<pad>\nthe\n")
    put("vocab", "empty_line", "<pad>\n<unk>\n\nthe\n")
    put("vocab", "invalid_utf8", b"<pad>\n<unk>\n\xff\xfe\n")
    put("vocab", "nul", b"<pad>\n<unk>\na\x00b\n")
    put("vocab", "empty", "")

    # --- conllu (CoNLL-U) ------------------------------------------------------------------------
    def row(i, form, upos):
        return f"{i}\t{form}\t{form.lower()}\t{upos}\t_\t_\t0\troot\t_\t_\n"
    put("conllu", "valid", "# sent_id = 1\n# text = Don't go.\n" + row("1-2", "Don't", "_") + row(1, "Do", "AUX")
        + row(2, "n't", "PART") + row(3, "go", "VERB") + row("3.1", "x", "_") + row(4, ".", "PUNCT") + "\n"
        + row(1, "Yes", "INTJ") + "\n")
    put("conllu", "no_final_blank", row(1, "clichés", "NOUN") + row(2, "映画", "NOUN"))
    put("conllu", "crlf_bom", b"\xef\xbb\xbf# c\r\n" + row(1, "a", "DET").replace("\n", "\r\n").encode() + b"\r\n")
    put("conllu", "bad_columns", "1\ta\tb\n\n" + row(1, "a", "DET"))
    put("conllu", "bad_ids", row(2, "a", "DET") + "\n" + row("x", "b", "X") + "\n" + row("2-1", "c", "_") + "\n"
        + row("1.x", "d", "_") + "\n" + row("0.1", "e", "_") + row(1, "f", "X"))
    put("conllu", "bad_fields", row(1, "", "DET") + "\n" + row(1, "a", "_") + "\n" + row(1, "a", "A B") + "\n"
        + row(1, "a", "DET") + "# late\n  \n")
    put("conllu", "range_open", row("1-3", "abc", "_") + row(1, "a", "X") + "\n")
    put("conllu", "invalid_utf8", b"1\t\xff\t_\tX\t_\t_\t0\t_\t_\t_\n")
    put("conllu", "empty", "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
