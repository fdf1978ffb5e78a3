#!/usr/bin/python3
"""PyTorch reference for tapegrad-tag: the same BiLSTM tagger, data, vocabularies and training
recipe, so accuracy and sentences/s can be compared on this machine.

    /usr/bin/python3 examples/tag/reference_torch.py --data ../shared/data/ud_english_lines \
        --epochs 20 --seed 1 --threads 1 [--max-train N] [--json OUT.json]

Model (as examples/tag/tagger.h): word embedding (padding 0, words lowercased, min-freq 2) and a
width-3 char CNN over each word's characters (one linear over 3 neighbouring character
embeddings, padded windows masked out of the max, tanh), concatenated -> dropout -> BiLSTM over
the packed sentence -> dropout -> linear -> cross-entropy per token (padding ignored). Adam,
gradient-norm clipping, dev UPOS accuracy after every epoch picks the weights scored on test.
Timing: forward, backward and update only (this script's Python batch building is left out;
tapegrad-tag's train_seconds includes its batch building, so the comparison favours PyTorch).
"""
import argparse
import collections
import json
import os
import random
import sys
import time


def _threads_from_argv():
    for i, x in enumerate(sys.argv):
        if x == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if x.startswith("--threads="):
            return x.split("=", 1)[1]
    return "1"


# Debian's torch calls OpenBLAS without setting its thread count (BLAS_INFO=generic), so
# torch.set_num_threads does not reach OpenBLAS, which then starts one thread per core and
# crawls on a shared machine: give it --threads as tapegrad-tag's --threads does.
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads_from_argv())

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402


def read_conllu(path):
    sents, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                if cur:
                    sents.append(cur)
                cur = []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if "-" in cols[0] or "." in cols[0]:
                continue
            cur.append((cols[1], cols[3]))
    if cur:
        sents.append(cur)
    return sents


def build_vocab(tokens, min_freq):
    """tapegrad's data::Vocab::build: <pad>=0, <unk>=1, most frequent first, ties in byte order."""
    counts = collections.Counter(tokens)
    words = [w for w, c in counts.items() if c >= min_freq and w not in ("<pad>", "<unk>")]
    words.sort(key=lambda w: (-counts[w], w.encode("utf-8")))
    return {w: i + 2 for i, w in enumerate(words)}


def lower_ascii(s):
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


class Tagger(nn.Module):
    def __init__(self, n_words, n_chars, n_tags, a):
        super().__init__()
        self.word_embedding = nn.Embedding(n_words, a.word_embed, padding_idx=0)
        self.char_embedding = nn.Embedding(n_chars, a.char_embed, padding_idx=0)
        self.char_conv = nn.Linear(3 * a.char_embed, a.char_filters)
        self.lstm = nn.LSTM(a.word_embed + a.char_filters, a.hidden, num_layers=a.layers, batch_first=True,
                            bidirectional=True, dropout=a.dropout if a.layers > 1 else 0.0)
        self.out = nn.Linear(2 * a.hidden, n_tags)
        self.drop = nn.Dropout(a.dropout)
        self.filters = a.char_filters

    def forward(self, words, lengths, chars, char_mask, slots):
        B, T = words.shape
        L = chars.shape[1] - 2
        ce = self.char_embedding(chars)
        windows = torch.cat([ce[:, 0:L], ce[:, 1:L + 1], ce[:, 2:L + 2]], 2)
        feats = torch.tanh((self.char_conv(windows) + char_mask).max(1).values)
        per_slot = torch.zeros(B * T, self.filters, dtype=feats.dtype).index_add(0, slots, feats).view(B, T, -1)
        x = self.drop(torch.cat([self.word_embedding(words), per_slot], 2))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=T)
        return self.out(self.drop(h))


def encode(sents, wv, cv, tags, a):
    out = []
    for s in sents:
        w = [wv.get(lower_ascii(f), 1) for f, _ in s]
        c = [[cv.get(ch, 1) for ch in f[:a.max_word_len]] for f, _ in s]
        t = [tags.get(u, -1) for _, u in s]
        out.append((w, c, t))
    return out


def make_batch(data, rows):
    B = len(rows)
    lengths = [len(data[r][0]) for r in rows]
    T = max(lengths)
    L = max(max(len(c) for c in data[r][1]) for r in rows)
    N = sum(lengths)
    words = torch.zeros(B, T, dtype=torch.long)
    targets = torch.full((B * T,), -100, dtype=torch.long)
    chars = torch.zeros(N, L + 2, dtype=torch.long)
    mask = torch.full((N, L, 1), -1e30)
    slots = torch.empty(N, dtype=torch.long)
    gold = []
    k = 0
    for i, r in enumerate(rows):
        w, c, t = data[r]
        words[i, :len(w)] = torch.tensor(w)
        for j in range(len(w)):
            if t[j] >= 0:
                targets[i * T + j] = t[j]
            gold.append(t[j])
            slots[k] = i * T + j
            chars[k, 1:1 + len(c[j])] = torch.tensor(c[j])
            mask[k, :len(c[j])] = 0
            k += 1
    return words, torch.tensor(lengths), chars, mask, slots, targets, gold


def evaluate(model, data, batch):
    model.eval()
    correct = tokens = 0
    loss_sum = 0.0
    with torch.no_grad():
        for b0 in range(0, len(data), batch):
            rows = list(range(b0, min(len(data), b0 + batch)))
            words, lengths, chars, mask, slots, targets, gold = make_batch(data, rows)
            logits = model(words, lengths, chars, mask, slots).reshape(-1, model.out.out_features)
            loss_sum += nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            pred = logits.argmax(1)
            T = words.shape[1]
            k = 0
            for i, n in enumerate(lengths.tolist()):
                for t in range(n):
                    tokens += 1
                    correct += int(gold[k] >= 0 and pred[i * T + t].item() == gold[k])
                    k += 1
    model.train()
    return correct / tokens, loss_sum / tokens


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--word-embed", type=int, default=100)
    p.add_argument("--char-embed", type=int, default=30)
    p.add_argument("--char-filters", type=int, default=50)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--max-word-len", type=int, default=30)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bucket", action="store_true", help="batches of sentences of similar length")
    p.add_argument("--max-train", type=int, default=0, help="first N training sentences only (speed runs)")
    p.add_argument("--no-eval", action="store_true", help="skip dev/test evaluation (speed runs)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    d = a.data
    train = read_conllu(os.path.join(d, "en_lines-ud-train.conllu"))
    dev = read_conllu(os.path.join(d, "en_lines-ud-dev.conllu"))
    test = read_conllu(os.path.join(d, "en_lines-ud-test.conllu"))
    if a.max_train:
        train = train[:a.max_train]
    wv = build_vocab([lower_ascii(f) for s in train for f, _ in s], a.min_freq)
    cv = build_vocab([ch for s in train for f, _ in s for ch in f], 1)
    tag_list = sorted({u for s in train for _, u in s})
    tags = {u: i for i, u in enumerate(tag_list)}
    tr, dv, te = (encode(x, wv, cv, tags, a) for x in (train, dev, test))
    model = Tagger(len(wv) + 2, len(cv) + 2, len(tag_list), a)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n_params = sum(x.numel() for x in model.parameters())
    print(f"reference: {len(tr)} train / {len(dv)} dev / {len(te)} test sentences, {len(wv) + 2} words, "
          f"{len(cv) + 2} chars, {len(tag_list)} tags, {n_params} parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    best, best_state, best_epoch, history = -1.0, None, 0, []
    train_seconds, sentences = 0.0, 0
    for epoch in range(1, a.epochs + 1):
        order = list(range(len(tr)))
        random.shuffle(order)
        if a.bucket:  # as tapegrad-tag --bucket: sort pools of 20 batches by length, shuffle the batches
            pool = 20 * a.batch
            order = [i for p0 in range(0, len(order), pool)
                     for i in sorted(order[p0:p0 + pool], key=lambda i: len(tr[i][0]))]
        batches = [order[b0:b0 + a.batch] for b0 in range(0, len(order), a.batch)]
        if a.bucket:
            random.shuffle(batches)
        loss_sum = tokens = 0
        for rows in batches:
            words, lengths, chars, mask, slots, targets, _ = make_batch(tr, rows)
            t0 = time.perf_counter()  # after the Python batch building, which would be unfair to torch
            opt.zero_grad()
            logits = model(words, lengths, chars, mask, slots).reshape(-1, len(tag_list))
            loss = nn.functional.cross_entropy(logits, targets, ignore_index=-100)
            loss.backward()
            if a.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            train_seconds += time.perf_counter() - t0
            sentences += len(lengths)
            n = int(lengths.sum())
            loss_sum += loss.item() * n
            tokens += n
        rec = {"epoch": epoch, "train_loss": loss_sum / tokens, "train_seconds": train_seconds,
               "sentences_per_s": sentences / train_seconds}
        if not a.no_eval:
            acc, dloss = evaluate(model, dv, a.eval_batch)
            rec.update(dev_accuracy=acc, dev_loss=dloss)
            if acc > best:
                best, best_epoch = acc, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history.append(rec)
        print(json.dumps(rec), flush=True)
    result = {"framework": "pytorch", "torch": torch.__version__, "threads": a.threads,
              "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "seed": a.seed,
              "epochs": a.epochs, "bucket": a.bucket, "parameters": n_params, "train_sentences": len(tr),
              "train_seconds": train_seconds, "train_sentences_per_s": sentences / train_seconds}
    if not a.no_eval:
        model.load_state_dict(best_state)
        test_acc, test_loss = evaluate(model, te, a.eval_batch)
        result.update(best_dev_accuracy=best, best_epoch=best_epoch, test_accuracy=test_acc, test_loss=test_loss)
    result["history"] = history
    print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
