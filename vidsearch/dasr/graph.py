"""Turn a CNN into a flat table of operations the MWP engine knows.

The backbone is traced with torch.fx; each traced node becomes one `Op` through a small table
of rules (conv / depthwise conv with BatchNorm folded in, ReLU / ReLU6, add, max-pool,
avg-pool). Nothing here is written per network: ResNet, VGG and EfficientNet-Lite all go
through the same rules. Each op remembers the module scope it was traced in, so layers are
named by module prefixes ("layer4", "layer4.0", "_blocks.15").
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..backbones import Conv2dSame
from ..errors import VidsearchError

_CONV, _ACT, _ADD, _MAXPOOL, _AVGPOOL, _INPUT = "conv", "act", "add", "maxpool", "avgpool", "input"


@dataclass
class Op:
    kind: str
    inputs: list[int]
    scope: str
    # conv (BatchNorm folded in)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)  # or "same" (TF padding computed per input)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    # act
    clamp_max: float | None = None
    # pools
    kernel: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True
    # derived
    nonneg: bool = False  # output is known to be >= 0
    users: list[int] = field(default_factory=list)


class _ScopeTracer(fx.Tracer):
    """An fx tracer that records each node's module scope and keeps SAME convs whole."""

    def __init__(self) -> None:
        super().__init__()
        self._scope: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Conv2dSame) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self._scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["vs_scope"] = self._scope[-1]
        return node


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _fold_bn(conv: Op, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    conv.weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.bias = bias * scale + shift


class Graph:
    """The op table of a backbone up to its peak layer, plus where the feature layer is."""

    def __init__(self, ops: list[Op], peak: int, feature: int) -> None:
        self.ops = ops
        self.peak = peak
        self.feature = feature
        self.last = max(peak, feature)
        for i, op in enumerate(ops):
            for j in op.inputs:
                ops[j].users.append(i)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "Graph":
        for op in self.ops:
            if op.weight is not None:
                op.weight = op.weight.to(device=device, dtype=dtype)
                op.bias = op.bias.to(device=device, dtype=dtype)
        return self

    # -- plain forward (used by the engine's tape and by the tests) --------------------
    def apply(self, i: int, args: list[torch.Tensor]) -> torch.Tensor:
        op = self.ops[i]
        if op.kind == _CONV:
            return conv_forward(op, args[0], op.weight, op.bias)
        if op.kind == _ACT:
            return args[0].clamp(0, op.clamp_max) if op.clamp_max is not None else F.relu(args[0])
        if op.kind == _ADD:
            out = args[0]
            for a in args[1:]:
                out = out + a
            return out
        if op.kind == _MAXPOOL:
            return F.max_pool2d(args[0], op.kernel, op.stride, op.padding, op.dilation, op.ceil_mode)
        if op.kind == _AVGPOOL:
            return F.avg_pool2d(args[0], op.kernel, op.stride, op.padding, op.ceil_mode,
                                op.count_include_pad)
        raise AssertionError(op.kind)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Every op's output, up to op `upto` (default: the later of the peak and feature layers).
        On a CPU in channels_last: 1.2-1.5x faster there (bench/RESULTS.md)."""
        values: list[torch.Tensor] = [x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x]
        for i in range(1, (self.last if upto is None else upto) + 1):
            values.append(self.apply(i, [values[j] for j in self.ops[i].inputs]))
        return values

    def output(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Op `layer`'s output alone: each value is let go once its last user up to `layer` has
        run, so a large input (a 1080p frame enlarged for a 30 px object) holds a few maps at
        a time rather than every op's."""
        last_use = {j: i for i in range(1, layer + 1) for j in self.ops[i].inputs}
        values: dict[int, torch.Tensor] = {0: x.contiguous(memory_format=torch.channels_last)
                                           if x.device.type == "cpu" else x}
        for i in range(1, layer + 1):
            values[i] = self.apply(i, [values[j] for j in self.ops[i].inputs])
            for j in self.ops[i].inputs:
                if last_use[j] == i:
                    values.pop(j, None)
        return values[layer]


def same_pads(op: Op, height: int, width: int) -> tuple[int, int, int, int]:
    import math

    pads = []
    k = op.weight.shape[-2:] if op.weight is not None else op.kernel
    for size, kk, s, d in zip((height, width), k, op.stride, op.dilation):
        total = max((math.ceil(size / s) - 1) * s + (kk - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def symmetric_pad(pads: tuple[int, int, int, int]) -> tuple[int, int] | None:
    """same_pads' (left, right, top, bottom) as a convolution's own (top, left) padding where
    both sides get the same (stride 1, odd kernel): no padded copy, no crop. Else None."""
    left, right, top, bottom = pads
    return (top, left) if (top, left) == (bottom, right) else None


def conv_forward(op: Op, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if op.padding == "same":
        pads = same_pads(op, x.shape[-2], x.shape[-1])
        if (own := symmetric_pad(pads)) is not None:
            return F.conv2d(x, weight, bias, op.stride, own, op.dilation, op.groups)
        return F.conv2d(F.pad(x, pads), weight, bias, op.stride, 0, op.dilation, op.groups)
    return F.conv2d(x, weight, bias, op.stride, op.padding, op.dilation, op.groups)


def _last_in_scope(ops: list[Op], prefix: str) -> int:
    hits = [i for i, op in enumerate(ops) if op.scope == prefix or op.scope.startswith(prefix + ".")]
    if not hits:
        scopes = sorted({op.scope.split(".")[0] for op in ops if op.scope})
        raise VidsearchError(
            f"layer {prefix!r} is not in this backbone: use a module prefix such as {', '.join(scopes[:8])}"
        )
    return hits[-1]


def build_graph(model: nn.Module, peak_layer: str, feature_layer: str) -> Graph:
    """Trace `model` and convert it to ops, up to the later of the two named layers."""
    tracer = _ScopeTracer()
    fx_graph = tracer.trace(model)
    modules = dict(model.named_modules())
    ops: list[Op] = []
    where: dict[fx.Node, int] = {}  # fx node -> index of the op whose output it is
    skipped: list[tuple[int, str]] = []  # (ops so far, what) for nodes no rule covers

    def add(op: Op, node: fx.Node) -> None:
        where[node] = len(ops)
        ops.append(op)

    for node in fx_graph.nodes:
        scope = node.meta.get("vs_scope", "")
        if node.op == "placeholder":
            add(Op(_INPUT, [], ""), node)
            continue
        if node.op == "output":
            break
        args = [a for a in node.args if isinstance(a, fx.Node)]
        ins = [where[a] for a in args if a in where]
        if len(ins) != len(args):
            continue  # depends on something past the supported part (e.g. the classifier)
        if node.op == "call_module":
            m = modules[node.target]
            scope = node.target
            if isinstance(m, nn.Conv2d):
                op = Op(_CONV, ins, scope, weight=m.weight.detach().clone(),
                        bias=None if m.bias is None else m.bias.detach().clone(),
                        stride=_pair(m.stride), dilation=_pair(m.dilation), groups=m.groups,
                        padding="same" if isinstance(m, Conv2dSame) else _pair(m.padding))
                if op.padding != "same" and m.padding_mode != "zeros":
                    raise VidsearchError(f"{scope}: padding mode {m.padding_mode} is not supported")
                add(op, node)
            elif isinstance(m, nn.BatchNorm2d):
                src = ops[ins[0]]
                if src.kind == _CONV and len(list(args[0].users)) == 1:
                    _fold_bn(src, m)
                    src.scope = scope
                    where[node] = ins[0]
                else:  # a BN on its own is a depthwise 1x1 conv
                    c = m.num_features
                    op = Op(_CONV, ins, scope, weight=torch.ones(c, 1, 1, 1), bias=torch.zeros(c), groups=c)
                    _fold_bn(op, m)
                    add(op, node)
            elif isinstance(m, (nn.ReLU, nn.ReLU6)):
                add(Op(_ACT, ins, scope, clamp_max=6.0 if isinstance(m, nn.ReLU6) else None), node)
            elif isinstance(m, nn.MaxPool2d):
                add(Op(_MAXPOOL, ins, scope, kernel=_pair(m.kernel_size), stride=_pair(m.stride or m.kernel_size),
                       padding=_pair(m.padding), dilation=_pair(m.dilation), ceil_mode=m.ceil_mode), node)
            elif isinstance(m, nn.AvgPool2d):
                add(Op(_AVGPOOL, ins, scope, kernel=_pair(m.kernel_size), stride=_pair(m.stride or m.kernel_size),
                       padding=_pair(m.padding), ceil_mode=m.ceil_mode,
                       count_include_pad=m.count_include_pad), node)
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                where[node] = ins[0]
            else:
                skipped.append((len(ops), f"{scope} ({type(m).__name__})"))
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(ins) == 2:
            add(Op(_ADD, ins, scope), node)
        elif node.op == "call_method" and node.target in ("add", "__add__") and len(ins) == 2:
            add(Op(_ADD, ins, scope), node)
        elif node.op == "call_function" and node.target in (F.relu, torch.relu):
            add(Op(_ACT, ins, scope), node)
        else:
            skipped.append((len(ops), f"{scope or 'top'}: {node.target}"))

    def no_rule(what: str) -> VidsearchError:
        return VidsearchError(
            f"the engine has no rule for {what}, which comes before the chosen layers: "
            "supported are conv, depthwise conv, BatchNorm, ReLU/ReLU6, add, max/avg pool"
        )

    try:
        peak = _last_in_scope(ops, peak_layer)
        feature = _last_in_scope(ops, feature_layer)
    except VidsearchError:
        if skipped:  # the layer exists but lies behind something no rule covers
            raise no_rule(skipped[0][1]) from None
        raise
    last = max(peak, feature)
    for position, what in skipped:
        if position <= last:
            raise no_rule(what)
    ops = ops[: last + 1]
    for op in ops:
        if op.kind == _INPUT:
            op.nonneg = False
        elif op.kind == _ACT:
            op.nonneg = True
        elif op.kind in (_ADD, _MAXPOOL, _AVGPOOL):
            op.nonneg = all(ops[j].nonneg for j in op.inputs)
        else:
            op.nonneg = False
    return Graph(ops, peak, feature)
