"""A slow, independent MWP reference: one peak at a time, plain autograd ("gradient trick").

It re-runs the forward pass itself and, per layer, gets f⁺ᵀ(R) as the gradient of
<R, f⁺(A)> with respect to A, instead of the engine's transposed convolutions and shared
tape. The tests hold the batched engine to it; the benchmark uses it as the released code's
structure (one backward per peak).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .excitation import EPS, Rules
from .graph import Graph, conv_forward


def _nonneg(x: torch.Tensor, known: bool) -> torch.Tensor:
    if known:
        return x
    return x - x.flatten(1).amin(1).view(-1, *([1] * (x.dim() - 1)))


def _fplus(op, a: torch.Tensor) -> torch.Tensor:
    if op.kind == "conv":
        return conv_forward(op, a, op.weight.clamp(min=0).to(a.dtype), None)
    k = op.kernel
    w = torch.ones(a.shape[1], 1, *k, dtype=a.dtype, device=a.device)
    if op.kind == "avgpool":
        w = w / (k[0] * k[1])
    return F.conv2d(a, w, None, op.stride, op.padding, op.dilation, groups=a.shape[1])


def _vjp(op, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(_fplus(op, a), a, grad_outputs=r)
    return g


def reference_maps(graph: Graph, x: torch.Tensor, seeds: torch.Tensor, rules: Rules,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """x (1, 3, H, W); seeds (K, C, h, w) -> maps (K, H, W), each peak back-propagated alone
    (float64 for the tests; the benchmark runs it in the engine's precision)."""
    assert rules.stop == "input", "the reference goes to the input"
    values = [v.to(dtype) for v in graph.forward(x)]
    ops = graph.ops
    out = []
    for k in range(seeds.shape[0]):
        prob = {graph.peak: seeds[k : k + 1].to(dtype)}
        ratio = {}
        for i in range(graph.peak, 0, -1):
            op = ops[i]
            p, r = prob.pop(i, None), ratio.pop(i, None)
            if p is None and r is None:
                continue
            if op.kind == "act":
                targets = [(op.inputs[0], p)]
            elif op.kind in ("conv", "avgpool") or (op.kind == "maxpool" and rules.maxpool == "sum"):
                a = _nonneg(values[op.inputs[0]], ops[op.inputs[0]].nonneg)
                if r is None:
                    z = _fplus(op, a)
                    r = torch.where(z > EPS, p / z.clamp(min=EPS), torch.zeros_like(z))
                targets = [(op.inputs[0], a * _vjp(op, a, r))]
            elif op.kind == "maxpool":
                a = values[op.inputs[0]].detach().requires_grad_(True)
                with torch.enable_grad():
                    y = F.max_pool2d(a, op.kernel, op.stride, op.padding, op.dilation, op.ceil_mode)
                    (g,) = torch.autograd.grad(y, a, grad_outputs=p)
                targets = [(op.inputs[0], g)]
            elif rules.residual == "copy":
                targets = [(j, p) for j in op.inputs]
            elif rules.residual == "split":
                parts = [values[j].clamp(min=0) for j in op.inputs]
                total = sum(parts)
                targets = [(j, torch.where(total > EPS, p * c / total.clamp(min=EPS), p / len(parts)))
                           for j, c in zip(op.inputs, parts)]
            else:  # merged
                contrib = {}
                for j in op.inputs:
                    if ops[j].kind == "conv" and ops[j].users == [i]:
                        contrib[j] = _fplus(ops[j], _nonneg(values[ops[j].inputs[0]],
                                                             ops[ops[j].inputs[0]].nonneg))
                    else:
                        contrib[j] = _nonneg(values[j], ops[j].nonneg)
                z = sum(contrib.values())
                rr = torch.where(z > EPS, p / z.clamp(min=EPS), torch.zeros_like(z))
                targets = []
                for j in op.inputs:
                    if ops[j].kind == "conv" and ops[j].users == [i]:
                        ratio[j] = rr
                    else:
                        targets.append((j, contrib[j] * rr))
            for j, q in targets:
                prob[j] = prob[j] + q if j in prob else q
        out.append(prob[0].sum(1)[0])
    return torch.stack(out).float()
