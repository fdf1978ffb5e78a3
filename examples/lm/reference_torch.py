#!/usr/bin/python3
"""PyTorch reference for tapegrad-lm: the same model, data split, batching, optimizer and
validation as `tapegrad-lm train` (examples/lm), so the two loss curves can be compared at equal
steps and the time per step measured side by side. Run with Debian's torch (/usr/bin/python3):

  /usr/bin/python3 examples/lm/reference_torch.py --text ../shared/data/tinyshakespeare/input.txt \
      --steps 300 --eval-every 100 --threads 1 [model options as tapegrad-lm's]

Prints one JSON line per evaluation and a final summary line (torch.get_num_threads() included).
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn


def char_vocab(tokens):
    # <unk> at id 0, then every training character in code point order (TextVocab::build).
    return ["<unk>"] + sorted(set(tokens) - {"<unk>"})


def batchify(ids, streams):
    n = len(ids) // streams
    return torch.tensor(ids[: n * streams], dtype=torch.long).view(streams, n).t().contiguous()  # [L, B]


def chunks(data, bptt):
    for start in range(0, data.size(0) - 1, bptt):
        t = min(bptt, data.size(0) - 1 - start)
        yield data[start:start + t], data[start + 1:start + 1 + t].reshape(-1)


class RNNModel(nn.Module):
    def __init__(self, cell, vocab, embed, hidden, layers, dropout, tie):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(embed, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab)
        if tie:
            self.decoder.weight = self.embedding.weight
        self.drop = nn.Dropout(dropout)

    def forward(self, x, state):
        out, state = self.rnn(self.drop(self.embedding(x)), state)
        return self.decoder(self.drop(out).reshape(-1, out.size(-1))), state


def detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def validate(model, data, bptt):
    model.eval()
    total, state = 0.0, None
    with torch.no_grad():
        for x, y in chunks(data, bptt):
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits, y, reduction="sum").item()
    model.train()
    return total / ((data.size(0) - 1) * data.size(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--text", required=True)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--model", default="lstm")
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--tie-weights", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0 = --time-limit / one epoch)")
    p.add_argument("--time-limit", type=float, default=0, help="seconds of training (evaluation not counted)")
    p.add_argument("--no-eval", action="store_true", help="timing runs: skip validation")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = open(a.text, encoding="utf-8").read()
    tokens = list(text)  # code points, as tapegrad-lm --level char
    n_valid = int(len(tokens) * a.valid_fraction)
    vocab = char_vocab(tokens[: len(tokens) - n_valid])
    index = {c: i for i, c in enumerate(vocab)}
    ids = [index.get(c, 0) for c in tokens]
    train = batchify(ids[: len(ids) - n_valid], a.batch)
    valid = batchify(ids[len(ids) - n_valid:], a.eval_batch)

    model = RNNModel(a.model, len(vocab), a.embed, a.hidden, a.layers, a.dropout, a.tie_weights)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    params = sum(p.numel() for p in model.parameters())
    step, train_seconds, loss_sum, loss_count, best = 0, 0.0, 0.0, 0, float("inf")
    done = False
    while not done:
        state = None
        for x, y in chunks(train, a.bptt):
            t0 = time.perf_counter()
            opt.zero_grad()
            logits, state = model(x, detach(state))
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            if a.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            lv = loss.item()
            train_seconds += time.perf_counter() - t0
            step += 1
            loss_sum += lv * y.numel()
            loss_count += y.numel()
            done = (a.steps and step >= a.steps) or (a.time_limit and train_seconds >= a.time_limit)
            if not a.no_eval and (step % a.eval_every == 0 or done):
                v = validate(model, valid, a.bptt)
                best = min(best, v)
                print(json.dumps({"step": step, "train_loss": loss_sum / loss_count, "valid_loss": v,
                                  "valid_bpc": v / math.log(2), "train_seconds": train_seconds,
                                  "seconds_per_step": train_seconds / step}), flush=True)
                loss_sum, loss_count = 0.0, 0
            if done:
                break
        if not a.steps and not a.time_limit:
            done = True
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "step": step, "parameters": params, "vocab": len(vocab),
                      "best_valid_loss": None if a.no_eval else best, "train_seconds": train_seconds,
                      "seconds_per_step": train_seconds / max(step, 1)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
