#!/usr/bin/python3
"""PyTorch twin of `./run.sh sst2` (tapegrad-train's recommended SST-2 configuration), for
training-throughput comparisons (bench/throughput_vs_torch.sh). Run with Debian's torch:

  /usr/bin/python3 bench/sst2_torch.py --train ../shared/data/sst2/train.tsv --steps 300 --threads 1

Model: Embedding(padding_idx 0) -> Dropout(0.25) -> LSTM over a packed batch -> max over each
row's real time steps -> Dropout(0.5) -> Linear(256, 1) -> BCE with logits; Adam 2e-3, global
gradient-norm clipping at 5, batch 64. Tokeniser and vocabulary rule are those of tapegrad-train
and ../shared/bench/accuracy/train_ref.py; the example order is tapegrad's own permutation
(data/batching.cpp: splitmix64-seeded mt19937_64, Fisher-Yates), so with the same --seed, rows
and steps both programs train on exactly the same batches.

Timed, per step (as tapegrad-train times it): zero_grad, forward, loss, loss.item(), backward,
clipping, Adam. Not timed: reading and tokenising the file, the vocabulary, building the padded
batches of an epoch. No evaluation. Prints one JSON line.
"""
import argparse
import json
import os
import re
import time
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD, UNK = 0, 1
TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|'[a-z]+|[^\sa-z0-9]")
M64 = (1 << 64) - 1


def read_tsv(path, max_rows):
    rows = []
    with open(path, encoding="utf-8") as f:
        f.readline()  # header
        for line in f:
            if max_rows and len(rows) == max_rows:
                break
            text, label = line.rstrip("\n").rsplit("\t", 1)
            rows.append((TOKEN_RE.findall(text.lower()), int(label)))
    return rows


def build_vocab(rows, min_freq):  # <pad>, <unk>, then by count (descending), ties by word
    cnt = Counter(t for toks, _ in rows for t in toks)
    words = sorted((w for w, c in cnt.items() if c >= min_freq), key=lambda w: (-cnt[w], w))
    return {w: i for i, w in enumerate(["<pad>", "<unk>"] + words)}


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


class MT19937_64:  # std::mt19937_64
    def __init__(self, seed):
        self.mt = [seed & M64]
        for i in range(1, 312):
            prev = self.mt[-1]
            self.mt.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & M64)
        self.i = 312

    def __call__(self):
        mt = self.mt
        if self.i == 312:
            for k in range(312):
                x = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
                mt[k] = mt[(k + 156) % 312] ^ (x >> 1) ^ (0xB5026F5AA96619E9 if x & 1 else 0)
            self.i = 0
        y = mt[self.i]
        self.i += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        return y ^ (y >> 43)


def permutation(n, seed, epoch):  # tg::data::permutation (shuffle stream 0)
    rng = MT19937_64(splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ 0))
    p = list(range(n))
    for i in range(n, 1, -1):
        threshold = (2**64 - i) % i
        while (r := rng()) < threshold:
            pass
        j = r % i
        p[i - 1], p[j] = p[j], p[i - 1]
    return p


def make_batch(items):
    lens = torch.tensor([len(ids) for ids, _ in items], dtype=torch.long)
    x = torch.full((len(items), int(lens.max())), PAD, dtype=torch.long)
    for i, (ids, _) in enumerate(items):
        x[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return x, lens, torch.tensor([float(y) for _, y in items])


class Classifier(nn.Module):
    def __init__(self, vocab, embed, hidden, dropout, embed_dropout):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.emb_drop = nn.Dropout(embed_dropout)
        self.rnn = nn.LSTM(embed, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x, lens):
        e = self.emb_drop(self.emb(x))
        out, _ = self.rnn(pack_padded_sequence(e, lens, batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, batch_first=True, padding_value=-1e30)  # padded steps never win
        return self.out(self.drop(out.max(dim=1).values)).squeeze(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--max-train", type=int, default=0, help="first N rows only (0 = all), as tapegrad-train's")
    p.add_argument("--steps", type=int, default=0, help="stop after N steps (0 = all epochs), as --stop-after")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", choices=["lstm"], default="lstm")  # accepted so both sides take one option list
    p.add_argument("--pooling", choices=["max"], default="max")
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--embed-dropout", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--max-len", type=int, default=100)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rows = read_tsv(a.train, a.max_train)
    vocab = build_vocab(rows, a.min_freq)
    data = [([vocab.get(t, UNK) for t in toks][:a.max_len] or [UNK], y) for toks, y in rows]
    model = Classifier(len(vocab), a.embed, a.hidden, a.dropout, a.embed_dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    lossf = nn.BCEWithLogitsLoss()

    step, seen, tokens, train_seconds = 0, 0, 0, 0.0
    for epoch in range(1, a.epochs + 1):
        order = permutation(len(data), a.seed, epoch)
        batches = [make_batch([data[j] for j in order[i:i + a.batch]]) for i in range(0, len(order), a.batch)]
        for x, lens, y in batches:
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = lossf(model(x, lens), y)
            loss.item()
            loss.backward()
            if a.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            train_seconds += time.perf_counter() - t0
            step, seen, tokens = step + 1, seen + len(y), tokens + int(lens.sum())
            if step == a.steps:
                break
        if step == a.steps:
            break
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "vocab": len(vocab), "params": sum(q.numel() for q in model.parameters()), "train_rows": len(data), "steps": step, "examples": seen,
                      "tokens": tokens, "train_seconds": train_seconds,
                      "examples_per_second": seen / train_seconds}), flush=True)


if __name__ == "__main__":
    main()
