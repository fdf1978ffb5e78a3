#!/usr/bin/python3
"""Generates the PyTorch references of the second-order examples (examples/second_order/) and
their test (tests/test_second_order.cpp). Run offline with Debian's PyTorch (torch 1.13 + numpy;
the python3 first on PATH may lack torch), from the repository root:

    /usr/bin/python3 tests/second_order/generate.py

It writes, next to this file:
  reference_hvp_lstm.json   Embedding -> LSTM (packed by lengths) -> last h -> Linear -> BCE with
                            logits: weights, data, v, loss, gradient and the Hessian-vector product
                            H v of the loss with respect to all weights
  reference_wgan_gp.json    a GRU critic trained 4 Adam steps on the WGAN-GP critic loss
                            critic(fake).mean() - critic(real).mean() + lambda * penalty,
                            penalty = mean((||d critic(x_hat) / d x_hat|| - 1)^2): initial weights,
                            per-step data, and per step the penalty, its gradient w.r.t. the weights,
                            the loss and the weights after the step
  reference_hessian.json    W, b, x, f(x), its gradient and exact Hessian (torch.autograd.functional.hessian)
                            of f(x) = sum(tanh(x W^T + b) * softmax(x)) + sum(sigmoid(x) * x^2) / n

Everything is float64 and a function of this file alone: weights and data are drawn with numpy
from fixed seeds (not from torch's initialisers), so both sides start from identical numbers.
Tensors are stored as {"shape": [...], "data": [row-major values]}; Python writes floats with
repr, which round-trips exactly. Parameter names are PyTorch's (lstm.weight_ih_l0, ...).
"""
import json
import os

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))


def enc(t):
    a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return {"shape": list(a.shape), "data": [float(x) if a.dtype.kind == "f" else int(x) for x in a.reshape(-1)]}


def write(name, obj):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def set_params(module, rng, scale=0.5):
    """Every parameter U(-scale, scale) from numpy, in named_parameters order."""
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.from_numpy(rng.uniform(-scale, scale, size=tuple(p.shape))))


# ---- 1. Hessian-vector product of an LSTM classifier's loss ---------------------------------------
class LSTMClassifier(nn.Module):
    def __init__(self, vocab, embed, hidden):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, ids, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.fc(h_n[-1]).reshape(-1)


def hvp_lstm():
    rng = np.random.RandomState(1301)
    V, E, H, B, T = 7, 3, 4, 3, 5
    model = LSTMClassifier(V, E, H)
    set_params(model, rng)
    ids = torch.from_numpy(rng.randint(0, V, size=(B, T)).astype(np.int64))
    lengths = torch.tensor([5, 3, 4], dtype=torch.int64)
    labels = torch.tensor([1.0, 0.0, 1.0])
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    v = [torch.from_numpy(rng.normal(size=tuple(p.shape))) for p in params]

    loss = F.binary_cross_entropy_with_logits(model(ids, lengths), labels)
    g = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    # H v by double backward is what torch.autograd.functional.hvp computes. (functional.hvp itself
    # needs the loss as a function of the weights; torch.nn.utils.stateless.functional_call does not
    # give that for nn.LSTM in torch 1.13, which keeps reading its cached _flat_weights, so the LSTM
    # weights would silently be constants.) Cross-check: central differences of the gradient along v.
    def grad_at(shift):
        with torch.no_grad():
            for p, x in zip(params, v):
                p.add_(x, alpha=shift)
        out = torch.autograd.grad(F.binary_cross_entropy_with_logits(model(ids, lengths), labels), params)
        with torch.no_grad():
            for p, x in zip(params, v):
                p.sub_(x, alpha=shift)
        return out
    h = 1e-5
    fd = [(a - b) / (2 * h) for a, b in zip(grad_at(h), grad_at(-h))]
    err = max(float((a - b).abs().max()) for a, b in zip(hv, fd))
    scale = max(float(a.abs().max()) for a in hv)
    print(f"hvp_lstm: max |H v - finite differences| = {err:.2e} (max |H v| {scale:.2e})")
    assert err < 1e-7 * max(1.0, scale)

    write("reference_hvp_lstm.json", {
        "sizes": {"vocab": V, "embed": E, "hidden": H, "batch": B, "steps": T},
        "ids": enc(ids), "lengths": enc(lengths), "labels": enc(labels),
        "names": names,
        "params": {n: enc(p) for n, p in zip(names, params)},
        "v": {n: enc(x) for n, x in zip(names, v)},
        "loss": float(loss),
        "grad": {n: enc(x) for n, x in zip(names, g)},
        "hvp": {n: enc(x) for n, x in zip(names, hv)},
    })


# ---- 2. WGAN-GP gradient penalty with a GRU critic ---------------------------------------------------
class GRUCritic(nn.Module):
    def __init__(self, features, hidden):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x):  # x [B, T, features] -> [B]
        _, h_n = self.gru(x)
        return self.fc(h_n[-1]).reshape(-1)


def wgan_gp():
    rng = np.random.RandomState(1302)
    I, H, B, T, STEPS, LAM, LR = 2, 3, 4, 4, 4, 10.0, 0.01
    critic = GRUCritic(I, H)
    set_params(critic, rng)
    names = [n for n, _ in critic.named_parameters()]
    initial = {n: enc(p) for n, p in critic.named_parameters()}
    opt = torch.optim.Adam(critic.parameters(), lr=LR, betas=(0.5, 0.9))
    steps = []
    for _ in range(STEPS):
        real = torch.from_numpy(rng.normal(1.0, 0.5, size=(B, T, I)))
        fake = torch.from_numpy(rng.normal(-0.5, 1.0, size=(B, T, I)))
        eps = torch.from_numpy(rng.uniform(0.0, 1.0, size=(B, 1, 1)))
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
        d_hat = critic(x_hat)
        (g,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        penalty = ((g.reshape(B, -1).norm(dim=1) - 1) ** 2).mean()
        # The penalty's own gradient w.r.t. the critic's weights: second derivatives of the critic.
        # fc.bias does not reach d critic / dx, so it is unused (null in the file).
        penalty_grad = torch.autograd.grad(penalty, list(critic.parameters()), retain_graph=True, allow_unused=True)
        loss = critic(fake).mean() - critic(real).mean() + LAM * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append({"real": enc(real), "fake": enc(fake), "eps": enc(eps),
                      "penalty": float(penalty), "loss": float(loss),
                      "penalty_grad": {n: None if x is None else enc(x) for n, x in zip(names, penalty_grad)},
                      "params_after": {n: enc(p) for n, p in critic.named_parameters()}})
    write("reference_wgan_gp.json", {
        "sizes": {"features": I, "hidden": H, "batch": B, "steps": T},
        "lambda": LAM, "adam": {"lr": LR, "beta1": 0.5, "beta2": 0.9, "eps": 1e-8},
        "names": names, "params": initial, "train": steps,
    })


# ---- 3. the exact Hessian of a small function ------------------------------------------------------
def hessian():
    rng = np.random.RandomState(1303)
    n = 5
    W = torch.from_numpy(rng.uniform(-1, 1, size=(n, n)))
    b = torch.from_numpy(rng.uniform(-0.5, 0.5, size=(n,)))
    x = torch.from_numpy(rng.normal(size=(1, n)))

    def f(x):
        return (torch.tanh(x @ W.T + b) * torch.softmax(x, 1)).sum() + (torch.sigmoid(x) * x * x).sum() / n

    xr = x.clone().requires_grad_()
    y = f(xr)
    (g,) = torch.autograd.grad(y, xr)
    Hm = torch.autograd.functional.hessian(f, x).reshape(n, n)
    write("reference_hessian.json", {"W": enc(W), "b": enc(b), "x": enc(x), "f": float(y), "grad": enc(g),
                                     "hessian": enc(Hm)})


if __name__ == "__main__":
    hvp_lstm()
    wgan_gp()
    hessian()
