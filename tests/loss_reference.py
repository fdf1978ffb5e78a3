#!/usr/bin/python3
"""Reference values for tests/test_losses.cpp: PyTorch's cross_entropy, nll_loss and
binary_cross_entropy_with_logits on seeded random cases (shapes with extra dims, class weights,
label smoothing, ignore_index, pos_weight, every reduction), in float64. For each case: the inputs,
a cotangent v of the output's shape, the output, and the gradients of sum(output * v).

    /usr/bin/python3 tests/loss_reference.py > tests/loss_reference.json
"""
import json

import torch
import torch.nn.functional as F

torch.manual_seed(1616)
D = torch.float64


def flat(t):  # JSON has no NaN: null stands for it (a mean over targets that are all ignored)
    return [None if v != v else float(v) for v in t.detach().reshape(-1).tolist()]


def class_case(op, shape, class_dim, reduction, weighted, smoothing, ignore_index, n_ignored, scale=1.0):
    # shape is the input's shape in tapegrad's layout: classes at dim 1, or last when class_dim = -1.
    cd = len(shape) - 1 if class_dim == -1 else (0 if len(shape) == 1 else 1)
    C = shape[cd]
    x = (torch.randn(shape, dtype=D) * scale).requires_grad_()
    tshape = [s for i, s in enumerate(shape) if i != cd]
    target = torch.randint(0, C, tshape)
    flat_t = target.reshape(-1)
    for i in torch.randperm(flat_t.numel())[:n_ignored].tolist():
        flat_t[i] = ignore_index
    weight = torch.rand(C, dtype=D) + 0.25 if weighted else None
    xt = x.movedim(cd, 1) if (cd != 1 and x.dim() > 1) else x  # PyTorch wants classes at dim 1
    kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction)
    if op == "cross_entropy":
        out = F.cross_entropy(xt, target, label_smoothing=smoothing, **kwargs)
    else:
        out = F.nll_loss(xt, target, **kwargs)
    v = torch.randn(out.shape, dtype=D)
    (out * v).sum().backward()
    return dict(op=op, input_shape=list(shape), input=flat(x), target=[int(t) for t in target.reshape(-1)],
                target_shape=tshape, weight=flat(weight) if weighted else None, label_smoothing=smoothing,
                ignore_index=ignore_index, reduction=reduction, class_dim=class_dim, cotangent=flat(v),
                output=flat(out), output_shape=list(out.shape), grad_input=flat(x.grad))


def bce_case(shape, reduction, weight_shape, pos_weight_shape, scale=1.0):
    x = (torch.randn(shape, dtype=D) * scale).requires_grad_()
    y = torch.rand(shape, dtype=D)
    y.reshape(-1)[0] = 1.0
    if y.numel() > 1:
        y.reshape(-1)[1] = 0.0
    y.requires_grad_()
    w = torch.rand(weight_shape, dtype=D) + 0.5 if weight_shape is not None else None
    pw = torch.rand(pos_weight_shape, dtype=D) * 3 + 0.1 if pos_weight_shape is not None else None
    out = F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction)
    v = torch.randn(out.shape, dtype=D)
    (out * v).sum().backward()
    return dict(op="binary_cross_entropy_with_logits", input_shape=list(shape), input=flat(x), target=flat(y),
                weight_shape=weight_shape, weight=flat(w) if w is not None else None,
                pos_weight_shape=pos_weight_shape, pos_weight=flat(pw) if pw is not None else None,
                reduction=reduction, cotangent=flat(v), output=flat(out), output_shape=list(out.shape),
                grad_input=flat(x.grad), grad_target=flat(y.grad))


cases = []
for op in ["cross_entropy", "nll_loss"]:
    for shape, class_dim in [([4, 5], 1), ([5], 1), ([3, 4, 2], 1), ([2, 3, 2, 3], 1), ([3, 4, 5], -1),
                             ([2, 3], -1), ([6, 1], 1)]:
        for reduction in ["mean", "sum", "none"]:
            numel = 1
            for s in shape:
                numel *= s
            n_targets = numel // (shape[-1] if class_dim == -1 else (shape[0] if len(shape) == 1 else shape[1]))
            for weighted, smoothing, ignore_index, n_ignored in [(False, 0.0, -100, 0), (True, 0.0, -100, 1),
                                                                 (False, 0.2, 0, 1), (True, 0.15, -1, 2)]:
                if op == "nll_loss" and smoothing:
                    continue
                cases.append(class_case(op, shape, class_dim, reduction, weighted, smoothing, ignore_index,
                                        min(n_ignored, n_targets - 1) if n_targets > 1 else 0))
cases.append(class_case("cross_entropy", [3, 4], 1, "mean", True, 0.3, -100, 0, scale=60.0))  # large logits
cases.append(class_case("cross_entropy", [2, 3, 4], -1, "mean", True, 1.0, -100, 1))         # all smoothing
for shape, reduction, ws, pws, scale in [([4, 3], "mean", None, [3], 1.0), ([4, 3], "sum", [4, 3], [3], 1.0),
                                         ([2, 3, 4], "none", [3, 1], [4], 1.0), ([5], "mean", [5], None, 1.0),
                                         ([3, 2], "none", None, None, 1.0), ([3, 4], "mean", [4], [1, 4], 30.0),
                                         ([2, 5], "sum", [1], [5], 8.0)]:
    cases.append(bce_case(shape, reduction, ws, pws, scale))
print(json.dumps({"generator": "tests/loss_reference.py", "torch": torch.__version__, "cases": cases},
                 separators=(",", ":")))
