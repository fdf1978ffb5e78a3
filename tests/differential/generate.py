#!/usr/bin/python3
"""Generates tests/differential/reference.txt: random float64 programs over tapegrad's op set,
run with PyTorch, with their losses and gradients, for tests/differential/differential.cpp.

Run offline with Debian's PyTorch (the python3 first on PATH may lack torch):

    /usr/bin/python3 tests/differential/generate.py [--out tests/differential/reference.txt]
    tar czf tests/differential/reference.tar.gz -C tests/differential reference.txt  # what is committed

Output is a function of the seed and this file alone (torch is deterministic on CPU for these
ops in float64). Format, one record per line, programs separated by "end":

    prog ID KIND NTHREADS          KIND: single | twoloss | inplace | threads
    in VID RG SHAPE INTS           float64 input, value INTS/256 (SHAPE "2x3", "-" for rank 0)
    tin VID SHAPE INTS;INTS;...    (threads) a per-thread constant input, one value per thread
    idx VID SHAPE INTS             int64 input
    op VID NAME ARG...             ARG: vN (a value), or a number / dim list (1,2) / shape (2x3)
    loss VID                       the loss (twoloss: two lines, backwarded in this order)
    inplace OP VID ARG...          (inplace) after the forward, under no_grad: add_ SRC ALPHA | mul_ F | fill_ F | copy_ SRC
    expect ok | raise              (inplace) whether torch raised "modified by an inplace operation"
    lossval B64                    loss value(s), little-endian float64 in base64 (threads: one per thread)
    grad VID none|B64              gradient of input VID after all backwards (twoloss: also grad1 after the first)
    end
"""
import argparse
import base64
import math
import random
import struct
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

SEED = 20240612
DEBUG = False  # --debug: print the in-place programs where the tapegrad model and torch disagree
SCALE = 256.0
MAX_ABS = 60.0  # every intermediate value stays below this
KINK = 1e-3     # relu/abs/clamp/maximum/where/max inputs stay this far from their kinks and ties


class Reject(Exception):
    pass


def b64(values):
    vals = [float(v) for v in values]
    return base64.b64encode(struct.pack("<%dd" % len(vals), *vals)).decode()


def shape_str(s):
    return "x".join(str(d) for d in s) if len(s) else "-"


def dims_str(d):
    return ",".join(str(x) for x in d)


# ---------------------------------------------------------------------------------------------
# The interpreter: one op of the IR in torch. `args` are strings as written to the file.

def parse_list(s):
    return [int(x) for x in s.split(",")] if s not in ("-", "") else []


def parse_shape(s):
    return [int(x) for x in s.split("x")] if s != "-" else []


RED = {"mean": "mean", "sum": "sum", "none": "none"}


def far(t, c=0.0):
    return bool(((t - c).abs() > KINK).all())


def check_max_dim(x, d):
    if x.shape[d] < 2:
        return
    top = torch.topk(x, 2, dim=d).values
    if not bool(((top.select(d, 0) - top.select(d, 1)) > KINK).all()):
        raise Reject("max tie")


def apply(name, a, env):
    V = lambda s: env[int(s[1:])]
    if name == "add": return V(a[0]) + V(a[1])
    if name == "sub": return V(a[0]) - V(a[1])
    if name == "mul": return V(a[0]) * V(a[1])
    if name == "div":
        if not far(V(a[1]), 0.0) or bool((V(a[1]).abs() < 0.1).any()): raise Reject("div")
        return V(a[0]) / V(a[1])
    if name == "neg": return -V(a[0])
    if name == "exp":
        if bool((V(a[0]) > 4).any()): raise Reject("exp")
        return torch.exp(V(a[0]))
    if name == "log":
        if bool((V(a[0]) < 0.05).any()): raise Reject("log")
        return torch.log(V(a[0]))
    if name == "sqrt":
        if bool((V(a[0]) < 0.05).any()): raise Reject("sqrt")
        return torch.sqrt(V(a[0]))
    if name == "tanh": return torch.tanh(V(a[0]))
    if name == "sigmoid": return torch.sigmoid(V(a[0]))
    if name == "relu":
        if not far(V(a[0])): raise Reject("relu kink")
        return torch.relu(V(a[0]))
    if name == "abs":
        if not far(V(a[0])): raise Reject("abs kink")
        return torch.abs(V(a[0]))
    if name == "pow":
        x, e = V(a[0]), float(a[1])
        if e != int(e) and bool((x < 0.05).any()): raise Reject("pow base")
        if e < 0 and bool((x.abs() < 0.2).any()): raise Reject("pow small")
        return x ** e
    if name == "powt":
        if bool((V(a[0]) < 0.05).any()): raise Reject("powt base")
        return torch.pow(V(a[0]), V(a[1]))
    if name == "clamp":
        x, lo, hi = V(a[0]), float(a[1]), float(a[2])
        if not (far(x, lo) and far(x, hi)): raise Reject("clamp kink")
        return torch.clamp(x, lo, hi)
    if name == "maximum":
        x, y = V(a[0]), V(a[1])
        if not far(x - y): raise Reject("maximum tie")
        return torch.maximum(x, y)
    if name == "where":
        p, q = V(a[0]), V(a[1])
        if not far(p - q): raise Reject("where tie")
        return torch.where(p > q, V(a[2]), V(a[3]))
    if name == "adds": return V(a[0]) + float(a[1])
    if name == "muls": return V(a[0]) * float(a[1])
    if name == "rsubs": return float(a[0]) - V(a[1])
    if name == "rdivs":
        if bool((V(a[1]).abs() < 0.2).any()): raise Reject("rdivs")
        return float(a[0]) / V(a[1])
    if name == "sum": return V(a[0]).sum(parse_list(a[1]), keepdim=a[2] == "1")
    if name == "sumall": return V(a[0]).sum()
    if name == "mean": return V(a[0]).mean(parse_list(a[1]), keepdim=a[2] == "1")
    if name == "meanall": return V(a[0]).mean()
    if name == "max":
        x, d = V(a[0]), int(a[1])
        check_max_dim(x, d)
        return x.max(d, keepdim=a[2] == "1").values
    if name == "maxall":
        x = V(a[0])
        check_max_dim(x.reshape(-1), 0)
        return x.max()
    if name == "lse": return torch.logsumexp(V(a[0]), parse_list(a[1]), keepdim=a[2] == "1")
    if name == "matmul": return torch.matmul(V(a[0]), V(a[1]))
    if name == "linear": return F.linear(V(a[0]), V(a[1]), None if a[2] == "-" else V(a[2]))
    if name == "reshape": return V(a[0]).reshape(parse_shape(a[1]) if a[1] != "-" else [])
    if name == "transpose": return V(a[0]).transpose(int(a[1]), int(a[2]))
    if name == "permute": return V(a[0]).permute(parse_list(a[1]))
    if name == "narrow": return V(a[0]).narrow(int(a[1]), int(a[2]), int(a[3]))
    if name == "select": return V(a[0]).select(int(a[1]), int(a[2]))
    if name == "squeeze": return V(a[0]).squeeze(int(a[1]))
    if name == "unsqueeze": return V(a[0]).unsqueeze(int(a[1]))
    if name == "expand": return V(a[0]).expand(parse_shape(a[1]))
    if name == "cat": return torch.cat([V(s) for s in a[1:]], int(a[0]))
    if name == "stack": return torch.stack([V(s) for s in a[1:]], int(a[0]))
    if name == "isel": return torch.index_select(V(a[0]), int(a[1]), V(a[2]))
    if name == "contig": return V(a[0]).contiguous()
    if name == "split": return torch.split(V(a[0]), int(a[1]), int(a[2]))[int(a[3])]
    if name == "softmax": return torch.softmax(V(a[0]), int(a[1]))
    if name == "logsoftmax": return torch.log_softmax(V(a[0]), int(a[1]))
    if name == "ce": return F.cross_entropy(V(a[0]), V(a[1]), ignore_index=int(a[2]), reduction=RED[a[3]])
    if name == "nll": return F.nll_loss(V(a[0]), V(a[1]), ignore_index=int(a[2]), reduction=RED[a[3]])
    if name == "bce": return F.binary_cross_entropy_with_logits(V(a[0]), V(a[1]), reduction=RED[a[2]])
    if name == "mse": return F.mse_loss(V(a[0]), V(a[1]), reduction=RED[a[2]])
    if name == "addtanh": return torch.tanh(V(a[0]) + V(a[1]))
    if name == "emb":
        pad = int(a[2])
        return F.embedding(V(a[1]), V(a[0]), padding_idx=None if pad < 0 else pad)
    raise ValueError(name)


def check_value(t):
    if t.dtype != torch.float64:
        raise Reject("dtype")
    if not bool(torch.isfinite(t).all()) or bool((t.abs() > MAX_ABS).any()):
        raise Reject("range")


# ---------------------------------------------------------------------------------------------
# Programs

class Program:
    def __init__(self, pid, kind, nthreads=1):
        self.pid, self.kind, self.nthreads = pid, kind, nthreads
        self.inputs = []   # (vid, kind 'f'|'t'|'i', rg, shape, [ints per thread])
        self.ops = []      # (vid, name, [args])
        self.losses = []
        self.inplace = None  # (op, target vid, [args])
        self.nv = 0

    def new_vid(self):
        self.nv += 1
        return self.nv - 1


def input_tensor(ints, shape, kind):
    if kind == "i":
        return torch.tensor(ints, dtype=torch.int64).reshape(shape)
    return (torch.tensor(ints, dtype=torch.float64) / SCALE).reshape(shape)


def build_env(prog, thread=0, with_grad=True):
    env, leaves = {}, {}
    for vid, kind, rg, shape, vals in prog.inputs:
        t = input_tensor(vals[thread if kind == "t" else 0], shape, kind)
        if rg and with_grad:
            t.requires_grad_()
            leaves[vid] = t
        env[vid] = t
    return env, leaves


def forward(prog, env):
    for vid, name, args in prog.ops:
        out = apply(name, args, env)
        check_value(out)
        env[vid] = out


class Gen:
    def __init__(self, rng, prog):
        self.r, self.p = rng, prog
        self.env = {}
        self.pool = []  # float vids usable as operands

    def rand_ints(self, n, lo=-512, hi=512):
        return [self.r.randint(lo, hi) for _ in range(n)]

    def new_input(self, shape, rg=None, lo=-512, hi=512, per_thread=False):
        vid = self.p.new_vid()
        if rg is None:
            rg = self.r.random() < 0.6
        if per_thread:
            rg = False
        n = math.prod(shape)
        if per_thread:
            vals = [self.rand_ints(n, lo, hi) for _ in range(self.p.nthreads)]
            self.p.inputs.append((vid, "t", False, list(shape), vals))
        else:
            self.p.inputs.append((vid, "f", bool(rg), list(shape), [self.rand_ints(n, lo, hi)]))
        self.env[vid] = input_tensor(self.p.inputs[-1][4][0], list(shape), "f")
        if rg:
            self.env[vid].requires_grad_()
        self.pool.append(vid)
        return vid

    def new_index(self, shape, lo, hi, ignore=None):
        vid = self.p.new_vid()
        n = math.prod(shape)
        vals = [self.r.randrange(lo, hi) for _ in range(n)]
        if ignore is not None:
            for i in range(n):
                if self.r.random() < 0.25:
                    vals[i] = ignore
            if all(v == ignore for v in vals):
                vals[0] = lo
        self.p.inputs.append((vid, "i", False, list(shape), [vals]))
        self.env[vid] = input_tensor(vals, list(shape), "i")
        return vid

    def rand_shape(self, rmin=1, rmax=3, maxn=24):
        while True:
            r = self.r.randint(rmin, rmax)
            s = [self.r.choice([1, 2, 2, 3, 3, 4, 5]) for _ in range(r)]
            if math.prod(s) <= maxn:
                return s

    def pick(self, cond=lambda t: True):
        cands = [v for v in self.pool if cond(self.env[v])]
        if not cands:
            return None
        # prefer recent values, so programs are chains more than forests
        w = [1.0 + 3.0 * (i >= len(cands) - 3) for i in range(len(cands))]
        return self.r.choices(cands, weights=w)[0]

    def broadcast_partner(self, shape):
        """A new input or a pool value whose shape broadcasts with `shape`."""
        r = self.r.random()
        if r < 0.3:
            same = self.pick(lambda t: list(t.shape) == list(shape))
            if same is not None:
                return same
        s = list(shape)
        if r < 0.75:  # smaller: some dims to 1, maybe drop leading dims
            s = [1 if self.r.random() < 0.4 else d for d in s]
            while s and self.r.random() < 0.3:
                s = s[1:]
        elif len(s) < 4 and math.prod(s) * 3 <= 36:  # larger: a new leading dim or size-1 dims grown
            s = [d if d != 1 else self.r.randint(1, 3) for d in s]
            if self.r.random() < 0.5:
                s = [self.r.randint(2, 3)] + s
        return self.new_input(s)

    def emit(self, name, args):
        env = dict(self.env)
        try:
            out = apply(name, args, env)
        except (RuntimeError, IndexError) as e:
            raise Reject("torch refused " + name)
        check_value(out)
        vid = self.p.new_vid()
        self.env[vid] = out
        self.p.ops.append((vid, name, args))
        self.pool.append(vid)
        return vid

    def positive(self):
        return self.pick(lambda t: t.dim() >= 0 and bool((t > 0.05).all()))

    def step(self):
        """One random op (may raise Reject)."""
        r = self.r
        kinds = ["binary"] * 8 + ["unary"] * 8 + ["scalar"] * 2 + ["reduce"] * 4 + ["view"] * 7 + \
                ["catstack"] * 2 + ["isel"] + ["matmul"] * 2 + ["linear"] + ["softmax"] * 2 + \
                ["loss"] * 2 + ["emb"] * 1 + ["where"] + ["clamp"]
        k = r.choice(kinds)
        a = self.pick()
        ta = self.env[a]
        v = lambda x: "v%d" % x
        if k == "binary":
            op = r.choice(["add", "sub", "mul", "mul", "div", "maximum", "powt", "addtanh"])
            if op == "powt":
                a = self.positive()
                if a is None:
                    raise Reject("no positive")
                ta = self.env[a]
            b = self.broadcast_partner(list(ta.shape))
            if op in ("div", "powt") or r.random() < 0.5:
                return self.emit(op, [v(a), v(b)])
            return self.emit(op, [v(b), v(a)])
        if k == "unary":
            op = r.choice(["neg", "exp", "log", "tanh", "sigmoid", "relu", "sqrt", "abs", "pow"])
            if op in ("log", "sqrt"):
                a = self.positive()
                if a is None:
                    raise Reject("no positive")
            if op == "pow":
                e = r.choice([2.0, 3.0, 0.5, 1.5, -1.0, 2.5])
                if e != int(e):
                    p = self.positive()
                    a = p if p is not None else a
                return self.emit("pow", [v(a), repr(e)])
            return self.emit(op, [v(a)])
        if k == "scalar":
            op = r.choice(["adds", "muls", "rsubs", "rdivs"])
            f = repr(r.choice([0.5, -1.5, 2.0, 3.25, -0.75]))
            return self.emit(op, [v(a), f] if op in ("adds", "muls") else [f, v(a)])
        if k == "clamp":
            vals = sorted(ta.detach().reshape(-1).tolist())
            lo = round(r.uniform(vals[0] - 0.5, vals[-1]), 3)
            hi = round(lo + r.uniform(0.1, 2.0), 3)
            return self.emit("clamp", [v(a), repr(lo), repr(hi)])
        if k == "where":
            q = self.broadcast_partner(list(ta.shape))
            b = self.broadcast_partner(list(ta.shape))
            c = self.pick()
            return self.emit("where", [v(a), v(q), v(b), v(c)])
        if k == "reduce":
            if ta.dim() == 0:
                raise Reject("rank 0")
            op = r.choice(["sum", "mean", "max", "lse", "sumall", "meanall", "maxall"])
            keep = r.choice(["0", "1"])
            if op in ("sumall", "meanall", "maxall"):
                return self.emit(op, [v(a)])
            if op == "max":
                return self.emit("max", [v(a), str(r.randrange(-ta.dim(), ta.dim())), keep])
            nd = r.randint(1, ta.dim())
            dims = r.sample(range(ta.dim()), nd)
            dims = [d - ta.dim() if r.random() < 0.3 else d for d in dims]
            return self.emit(op, [v(a), dims_str(dims), keep])
        if k == "view":
            if ta.dim() == 0:
                return self.emit("unsqueeze", [v(a), "0"])
            op = r.choice(["reshape", "transpose", "permute", "narrow", "select", "squeeze", "unsqueeze",
                           "expand", "contig", "split"])
            nd = ta.dim()
            if op == "reshape":
                n = ta.numel()
                s, rem = [], n
                for _ in range(r.randint(0, 2)):
                    divs = [d for d in range(1, rem + 1) if rem % d == 0]
                    d = r.choice(divs)
                    s.append(d)
                    rem //= d
                s.append(rem)
                r.shuffle(s)
                if r.random() < 0.3:
                    s[r.randrange(len(s))] = -1
                return self.emit("reshape", [v(a), "x".join(str(d) for d in s)])
            if op == "transpose":
                return self.emit("transpose", [v(a), str(r.randrange(-nd, nd)), str(r.randrange(-nd, nd))])
            if op == "permute":
                order = list(range(nd))
                r.shuffle(order)
                return self.emit("permute", [v(a), dims_str(order)])
            if op in ("narrow", "split"):
                d = r.randrange(nd)
                size = ta.shape[d]
                if op == "split":
                    sz = r.randint(1, size)
                    pieces = (size + sz - 1) // sz
                    return self.emit("split", [v(a), str(sz), str(d - nd if r.random() < 0.3 else d),
                                               str(r.randrange(pieces))])
                start = r.randrange(size)
                return self.emit("narrow", [v(a), str(d), str(start), str(r.randint(1, size - start))])
            if op == "select":
                d = r.randrange(nd)
                return self.emit("select", [v(a), str(d), str(r.randrange(-ta.shape[d], ta.shape[d]))])
            if op == "squeeze":
                ones = [d for d in range(nd) if ta.shape[d] == 1]
                d = r.choice(ones) if ones and r.random() < 0.9 else r.randrange(nd)
                return self.emit("squeeze", [v(a), str(d - nd if r.random() < 0.3 else d)])
            if op == "unsqueeze":
                return self.emit("unsqueeze", [v(a), str(r.randrange(-nd - 1, nd + 1))])
            if op == "expand":
                s = [d if d != 1 else r.randint(1, 4) for d in ta.shape]
                if r.random() < 0.3 and math.prod(s) <= 16:
                    s = [r.randint(2, 3)] + s
                if math.prod(s) > 48:
                    raise Reject("big")
                return self.emit("expand", [v(a), shape_str(s)])
            return self.emit("contig", [v(a)])
        if k == "catstack":
            if ta.dim() == 0:
                raise Reject("rank 0")
            nd = ta.dim()
            if r.random() < 0.5:
                d = r.randrange(nd)
                parts = [a]
                for _ in range(r.randint(1, 2)):
                    s = list(ta.shape)
                    s[d] = r.randint(1, 3)
                    same = self.pick(lambda t: list(t.shape) == s)
                    parts.append(same if same is not None and r.random() < 0.5 else self.new_input(s))
                r.shuffle(parts)
                return self.emit("cat", [str(d - nd if r.random() < 0.3 else d)] + [v(x) for x in parts])
            parts = [a] + [self.broadcast_partner(list(ta.shape)) for _ in range(r.randint(1, 2))]
            parts = [x if list(self.env[x].shape) == list(ta.shape) else self.new_input(list(ta.shape)) for x in parts]
            r.shuffle(parts)
            return self.emit("stack", [str(r.randrange(-nd - 1, nd + 1))] + [v(x) for x in parts])
        if k == "isel":
            if ta.dim() == 0:
                raise Reject("rank 0")
            d = r.randrange(ta.dim())
            idx = self.new_index([r.randint(1, 4)], 0, ta.shape[d])
            return self.emit("isel", [v(a), str(d), v(idx)])
        if k == "matmul":
            if ta.dim() < 2:
                if ta.dim() == 1:
                    a = self.emit("unsqueeze", [v(a), "0"])
                    ta = self.env[a]
                else:
                    raise Reject("rank 0")
            K, N = ta.shape[-1], r.randint(1, 4)
            if ta.dim() == 3 and r.random() < 0.5:
                B = ta.shape[0]
                bb = r.choice([B, 1]) if B != 1 else r.randint(1, 3)
                b = self.new_input([bb, K, N])
            elif ta.dim() > 3 or r.random() < 0.8:
                same = self.pick(lambda t: t.dim() == 2 and t.shape[0] == K)
                b = same if same is not None and r.random() < 0.4 else self.new_input([K, N])
            else:
                b = self.new_input([K, N])
            if ta.dim() == 2 and r.random() < 0.3:  # a on the right: new [M, rows]
                c = self.new_input([r.randint(1, 4), ta.shape[0]])
                return self.emit("matmul", [v(c), v(a)])
            return self.emit("matmul", [v(a), v(b)])
        if k == "linear":
            if ta.dim() == 0:
                raise Reject("rank 0")
            IN, OUT = ta.shape[-1], r.randint(1, 4)
            w = self.new_input([OUT, IN])
            bias = self.new_input([OUT]) if r.random() < 0.6 else None
            return self.emit("linear", [v(a), v(w), v(bias) if bias is not None else "-"])
        if k == "softmax":
            if ta.dim() == 0:
                raise Reject("rank 0")
            return self.emit(r.choice(["softmax", "logsoftmax"]), [v(a), str(r.randrange(-ta.dim(), ta.dim()))])
        if k == "loss":
            op = r.choice(["ce", "ce", "nll", "bce", "mse"])
            red = r.choice(["mean", "sum", "none"])
            if op in ("ce", "nll"):
                if ta.dim() != 2 or ta.shape[1] < 2:
                    if ta.numel() < 2:
                        raise Reject("small")
                    C = ta.shape[-1] if ta.dim() >= 1 and ta.shape[-1] >= 2 else ta.numel()
                    a = self.emit("reshape", [v(a), "-1x%d" % C])
                    ta = self.env[a]
                t = self.new_index([ta.shape[0]], 0, ta.shape[1], ignore=-100 if r.random() < 0.3 else None)
                return self.emit(op, [v(a), v(t), "-100", red])
            if op == "bce":
                t = self.new_input(list(ta.shape), lo=0, hi=256, rg=r.random() < 0.3)
                return self.emit("bce", [v(a), v(t), red])
            b = self.broadcast_partner(list(ta.shape))
            if list(self.env[b].shape) != list(ta.shape):
                b = self.new_input(list(ta.shape))
            return self.emit("mse", [v(a), v(b), red])
        if k == "emb":
            if r.random() < 0.5:
                w = self.pick(lambda t: t.dim() == 2)
            else:
                w = None
            if w is None:
                w = self.new_input([r.randint(2, 5), r.randint(1, 4)], rg=r.random() < 0.8)
            V_ = self.env[w].shape[0]
            idx = self.new_index(self.rand_shape(1, 2, 6), 0, V_)
            pad = r.randrange(V_) if r.random() < 0.4 else -1
            return self.emit("emb", [v(w), v(idx), str(pad)])
        raise AssertionError(k)

    def finish(self, src=None):
        """A scalar loss from the last value (or `src`): a weighted sum, so no gradient is all ones."""
        a = src if src is not None else self.pool[-1]
        ta = self.env[a]
        if ta.dim() > 0 or self.r.random() < 0.5:
            w = self.new_input(list(ta.shape), rg=False)
            a = self.emit("mul", ["v%d" % a, "v%d" % w])
        if self.env[a].dim() > 0:
            a = self.emit(self.r.choice(["sumall", "sumall", "meanall"]), ["v%d" % a])
        if not self.env[a].requires_grad:
            raise Reject("loss needs no grad")
        return a


def gen_body(g, nops):
    done = 0
    tries = 0
    while done < nops and tries < nops * 30:
        tries += 1
        snap = (len(g.p.inputs), len(g.p.ops), g.p.nv, list(g.pool), dict(g.env))
        try:
            g.step()
            done += 1
        except Reject:
            g.p.inputs, g.p.ops = g.p.inputs[:snap[0]], g.p.ops[:snap[1]]
            g.p.nv, g.pool, g.env = snap[2], snap[3], snap[4]
    if done < nops:
        raise Reject("could not build")


def start(rng, prog, per_thread=False):
    g = Gen(rng, prog)
    for _ in range(rng.randint(1, 3)):
        g.new_input(g.rand_shape(), rg=True if not g.pool else None,
                    lo=rng.choice([-512, 16]), hi=512)
    if per_thread:
        g.new_input(g.rand_shape(), per_thread=True)
    return g


def grads_of(prog, leaves):
    out = []
    for vid, kind, rg, shape, vals in prog.inputs:
        if kind in ("i", "t"):
            continue
        t = leaves.get(vid)
        out.append((vid, None if t is None or t.grad is None else t.grad.detach().reshape(-1).tolist()))
    return out


def run_single(prog):
    env, leaves = build_env(prog)
    forward(prog, env)
    loss = env[prog.losses[0]]
    loss.backward()
    return {"lossval": [loss.item()], "grad": grads_of(prog, leaves)}


def run_twoloss(prog):
    env, leaves = build_env(prog)
    forward(prog, env)
    l1, l2 = env[prog.losses[0]], env[prog.losses[1]]
    l1.backward(retain_graph=True)
    g1 = grads_of(prog, leaves)
    l2.backward()
    return {"lossval": [l1.item(), l2.item()], "grad1": g1, "grad": grads_of(prog, leaves)}


def inplace_apply(prog, env):
    op, tgt, args = prog.inplace
    dst = env[tgt]
    with torch.no_grad():
        if op == "add_": dst.add_(env[int(args[0][1:])], alpha=float(args[1]))
        elif op == "mul_": dst.mul_(float(args[0]))
        elif op == "fill_": dst.fill_(float(args[0]))
        elif op == "copy_": dst.copy_(env[int(args[0][1:])])


def run_inplace(prog):
    env, leaves = build_env(prog)
    forward(prog, env)
    loss = env[prog.losses[0]]
    lossval = loss.item()
    inplace_apply(prog, env)
    try:
        loss.backward()
    except RuntimeError as e:
        if "modified by an inplace operation" not in str(e):
            raise Reject("other error: %s" % str(e).split(".")[0])
        return {"expect": "raise", "lossval": [lossval], "grad": None, "error": str(e)}
    return {"expect": "ok", "lossval": [lossval], "grad": grads_of(prog, leaves)}


def run_threads(prog):
    losses, total = [], {}
    env0, leaves = build_env(prog)
    for th in range(prog.nthreads):
        env, _ = build_env(prog, th, with_grad=False)
        env.update({k: t for k, t in env0.items() if k in leaves})  # shared leaves
        forward(prog, env)
        loss = env[prog.losses[0]]
        loss.backward()  # sequentially: torch sums the threads' contributions into the shared leaves
        losses.append(loss.item())
    return {"lossval": losses, "grad": grads_of(prog, leaves)}


# ---- in-place (c): which tensors does tapegrad's backward read? ---------------------------------
# A model of autograd/ops_*.cpp: for an executed node, the inputs whose values its backward reads
# (given which inputs require grad). Programs where this model disagrees with what torch did are
# not written (counted in the summary by the op responsible), so the expected behaviour of the
# reference file is well defined for tapegrad once every capture is a tg::Saved.

VIEW_OPS = {"transpose", "permute", "narrow", "select", "squeeze", "unsqueeze", "expand", "split"}


def tg_reads(name, args, needs, env):
    """Indices into the tensor arguments (the vN of args) whose storage tapegrad's backward reads."""
    if name == "mul":
        return ([1] if needs[0] else []) + ([0] if needs[1] else [])
    if name == "div":
        return [1] if (needs[0] or needs[1]) else []
    if name == "rdivs":
        return [0]
    if name in ("log", "abs", "pow", "clamp"):
        return [0]
    if name == "maximum":
        return [0, 1]
    if name == "powt":
        return ([0, 1] if needs[0] else []) + ([0] if needs[1] else [])
    if name == "matmul":
        return ([1] if needs[0] else []) + ([0] if needs[1] else [])
    if name == "linear":
        return ([1] if needs[0] else []) + ([0] if needs[1] else [])
    if name == "bce":
        return [0, 1]
    return []


def aliases(prog, env):
    """vid -> set of input vids whose storage the value shares in tapegrad."""
    al = {vid: {vid} for vid, kind, *_ in prog.inputs}
    for vid, name, args in prog.ops:
        a0 = int(args[0][1:]) if args and args[0].startswith("v") else None
        if name in VIEW_OPS:
            al[vid] = set(al[a0])
        elif name in ("reshape", "contig"):
            t = env[a0]
            same = name == "reshape" and list(env[vid].shape) == list(t.shape)
            al[vid] = set(al[a0]) if (t.is_contiguous() or same) else set()
        else:
            al[vid] = set()
    return al


def operand_alias(name, i, t, al_arg, prog_env):
    """The storage tapegrad actually saves for operand i (copies for some layouts)."""
    if name == "matmul" and i == 0 and t.dim() > 2:
        return al_arg if t.is_contiguous() else set()
    if name == "linear":
        if i == 1:
            return al_arg if t.is_contiguous() else set()
        if t.dim() == 2:
            ok = (t.shape[1] <= 1 or t.stride(1) == 1) and (t.shape[0] <= 1 or t.stride(0) >= max(t.shape[1], 1))
            return al_arg if ok else set()
        return al_arg if t.is_contiguous() else set()
    if name == "bce":
        return al_arg if t.is_contiguous() else set()
    return al_arg


def tg_model_throws(prog):
    """(throws, the ops whose reads decide it) under the model."""
    env, leaves = build_env(prog)
    forward(prog, env)
    al = aliases(prog, env)
    tgt = prog.inplace[1]
    # nodes walked by backward: recorded ops the loss depends on
    producer = {vid: (name, args) for vid, name, args in prog.ops}
    live, stack = set(), [prog.losses[0]]
    while stack:
        x = stack.pop()
        if x in live or x not in producer or not env[x].requires_grad:
            continue
        live.add(x)
        name, args = producer[x]
        for s in (args[2:] if name == "where" else args):  # where's mask operands get no gradient
            if s.startswith("v"):
                stack.append(int(s[1:]))
    hits = []
    for vid, name, args in prog.ops:
        if vid not in live:
            continue
        targs = [s for s in args if s.startswith("v")]
        needs = [env[int(s[1:])].requires_grad for s in targs]
        for i in tg_reads(name, args, needs, env):
            t = env[int(targs[i][1:])]
            if tgt in operand_alias(name, i, t, al[int(targs[i][1:])], env):
                hits.append(name)
    # every op consuming (a view of) the target: where model and torch may disagree
    users = sorted({name for vid, name, args in prog.ops if vid in live and
                    any(s.startswith("v") and tgt in al[int(s[1:])] for s in args)})
    return bool(hits), users


# ---------------------------------------------------------------------------------------------

def ancestors(prog, vid):
    """The op outputs `vid` depends on (itself included)."""
    deps = {v: [int(x[1:]) for x in args if x.startswith("v")] for v, name, args in prog.ops}
    seen, stack = set(), [vid]
    while stack:
        x = stack.pop()
        if x in seen or x not in deps:
            continue
        seen.add(x)
        stack += deps[x]
    return seen


def make_program(pid, kind, rng):
    nthreads = rng.randint(2, 4) if kind == "threads" else 1
    prog = Program(pid, kind, nthreads)
    g = start(rng, prog, per_thread=kind == "threads")
    nops = rng.randint(2, 10)
    if kind == "twoloss":
        gen_body(g, nops)
        trunk = list(g.pool)
        l1 = g.finish()
        # The second loss: more ops on l1's interior nodes (recent in the pool, so preferred), maybe
        # on l1 itself, never below l1 (tapegrad frees a walked node that nothing outside the walk
        # consumes: a loss inside l1's graph could not be backwarded after l1).
        a1 = ancestors(prog, l1)
        g.pool = [x for x in trunk if x not in a1] + sorted(x for x in trunk if x in a1) + \
                 ([l1] if rng.random() < 0.3 else [])
        gen_body(g, rng.randint(1, 4))
        l2 = g.finish()
        prog.losses = [l1, l2]
        if not (a1 & ancestors(prog, l2)) and rng.random() < 0.9:
            raise Reject("no shared interior node")
        return prog, run_twoloss(prog)
    if kind == "threads":
        # thread-local values come first in the pool so that they are used
        gen_body(g, nops)
        prog.losses = [g.finish()]
        # per-thread values must pass the same checks on every thread
        for th in range(nthreads):
            env, _ = build_env(prog, th, with_grad=False)
            forward(prog, env)
        return prog, run_threads(prog)
    gen_body(g, nops)
    prog.losses = [g.finish()]
    if kind == "single":
        return prog, run_single(prog)
    # inplace: target an input (leaf or constant)
    floats = [x for x in prog.inputs if x[1] == "f"]
    vid, _, rg, shape, _ = rng.choice(floats)
    op = rng.choice(["add_", "mul_", "fill_", "copy_"])
    if op in ("add_", "copy_"):
        s = [1 if rng.random() < 0.3 else d for d in shape]
        while s and rng.random() < 0.2:
            s = s[1:]
        src = g.new_input(s, rg=False)
        args = ["v%d" % src] + (["%r" % rng.choice([1.0, 0.5, -2.0])] if op == "add_" else [])
    else:
        args = ["%r" % rng.choice([0.5, -1.25, 3.0, 0.0])]
    prog.inplace = (op, vid, args)
    env, _ = build_env(prog)
    forward(prog, env)
    if vid in aliases(prog, env)[prog.losses[0]]:
        # the root is a view of the modified tensor: torch regenerates a view's grad_fn after its
        # base changed in place, tapegrad keeps it; not comparable
        raise Reject("loss is a view of the target")
    res = run_inplace(prog)
    throws, users = tg_model_throws(prog)
    if throws != (res["expect"] == "raise"):
        if DEBUG:
            print("MODEL MISMATCH torch=%s model=%s users=%s\n%s\n%s" % (
                res["expect"], throws, users, "\n".join("%s %s %s" % o for o in prog.ops),
                res.get("error", "")[:300]), file=sys.stderr)
        raise Reject("model:" + "+".join(users))
    res["users"] = users
    return prog, res


def write(prog, res, f):
    w = f.write
    w("prog %d %s %d\n" % (prog.pid, prog.kind, prog.nthreads))
    for vid, kind, rg, shape, vals in prog.inputs:
        if kind == "f":
            w("in %d %d %s %s\n" % (vid, int(rg), shape_str(shape), dims_str(vals[0])))
        elif kind == "t":
            w("tin %d %s %s\n" % (vid, shape_str(shape), ";".join(dims_str(v) for v in vals)))
        else:
            w("idx %d %s %s\n" % (vid, shape_str(shape), dims_str(vals[0])))
    for vid, name, args in prog.ops:
        w("op %d %s %s\n" % (vid, name, " ".join(args)))
    for l in prog.losses:
        w("loss %d\n" % l)
    if prog.inplace:
        op, tgt, args = prog.inplace
        w("inplace %s %d %s\n" % (op, tgt, " ".join(args)))
        w("expect %s\n" % res["expect"])
    w("lossval %s\n" % b64(res["lossval"]))
    for key in ("grad1", "grad"):
        for vid, g in (res.get(key) or []):
            w("%s %d %s\n" % (key, vid, "none" if g is None else b64(g)))
    w("end\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/differential/reference.txt")
    ap.add_argument("--single", type=int, default=1800)
    ap.add_argument("--twoloss", type=int, default=700)
    ap.add_argument("--inplace", type=int, default=800)
    ap.add_argument("--threads", type=int, default=300)
    ap.add_argument("--debug", action="store_true")
    opt = ap.parse_args()
    global DEBUG
    DEBUG = opt.debug
    rng = random.Random(SEED)
    plan = [("single", opt.single), ("twoloss", opt.twoloss), ("inplace", opt.inplace), ("threads", opt.threads)]
    rejects, stats = {}, {}
    pid = 0
    with open(opt.out, "w") as f:
        f.write("# generated by tests/differential/generate.py with torch %s; do not edit\n" % torch.__version__)
        for kind, count in plan:
            made = 0
            while made < count:
                prng = random.Random(rng.getrandbits(64))
                try:
                    prog, res = make_program(pid, kind, prng)
                except Reject as e:
                    key = kind + ": " + str(e)
                    rejects[key] = rejects.get(key, 0) + 1
                    continue
                write(prog, res, f)
                if kind == "inplace":
                    stats[res["expect"]] = stats.get(res["expect"], 0) + 1
                pid += 1
                made += 1
    print("programs:", dict(plan), "in-place outcomes:", stats, file=sys.stderr)
    for k, n in sorted(rejects.items(), key=lambda kv: -kv[1]):
        if n >= 1:
            print("rejected %5d  %s" % (n, k), file=sys.stderr)


if __name__ == "__main__":
    main()
