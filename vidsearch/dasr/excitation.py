"""Marginal winning probability (Excitation Backprop) over a Graph, batched over peaks.

For a layer B = f(A) with non-negative input A, MWP distributes P(B) to A by
    P(A) = A ⊙ f⁺ᵀ( P(B) / Z ),   Z = f⁺(A)
where f⁺ is f with its weights clipped to >= 0 (BatchNorm already folded in) and no bias.
Given the forward pass this is linear in P, so the forward records a tape (A and Z per layer,
batch = frames) once, and all K peaks of a frame go back together as a batch of K
cotangents; the tape (batch 1 per frame) broadcasts against them without copies.

Rules (switchable, METHOD.md): residual junctions merged into one MWP layer (paper-consistent),
split by each branch's positive activation, or copied to both branches (released code);
max-pool as an all-ones sum-pool (paper) or argmax; back-propagation to the input or stopped
at stride 4 / 8 and upsampled. Signed inputs are shifted per sample to be non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .graph import Graph, Op, conv_forward, same_pads, symmetric_pad

EPS = 1e-20

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Rules:
    residual: str = "merged"  # merged | split | copy
    maxpool: str = "sum"  # sum | argmax
    stop: str = "input"  # input | stride4 | stride8
    dtype: str = "fp32"
    # Layout of the tape and of the K-peak batches. On a CPU channels_last is about twice as
    # fast end to end (oneDNN's depthwise transposed convolutions need it; mixed layouts cost
    # strided copies): bench/dasr_variants.py. NCHW stays where it was not measured (CUDA).
    channels_last: bool = False


def shift_nonneg(x: torch.Tensor) -> torch.Tensor:
    """Signed inputs are not valid MWP inputs: shift each sample so its minimum is 0."""
    low = x.flatten(1).amin(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return x - low


def _safe_inverse(z: torch.Tensor) -> torch.Tensor:
    """1/Z where Z > 0, else 0 (a neuron nobody excites passes nothing down).

    Computed in fp32; in fp16 a Z below 1/65504 would overflow, so it counts as zero."""
    eps = max(EPS, 4.0 / torch.finfo(z.dtype).max)
    zf = z.float()
    # 1/inf = 0: three passes over the tape value instead of four
    inv = torch.where(zf > eps, zf, torch.full((), torch.inf, device=z.device)).reciprocal_()
    return inv.to(z.dtype)


def _pool_weight(op: Op, channels: int, device, dtype) -> torch.Tensor:
    k = op.kernel
    w = torch.ones(channels, 1, *k, device=device, dtype=dtype)
    return w / (k[0] * k[1]) if op.kind == "avgpool" else w


def _linear_plus(op: Op, a: torch.Tensor, wplus: torch.Tensor) -> torch.Tensor:
    """Z = f⁺(A): the op's linear part with non-negative weights and no bias."""
    if op.kind == "conv":
        return conv_forward(op, a, wplus, None)
    return F.conv2d(a, wplus, None, op.stride, op.padding, op.dilation, groups=a.shape[1])


def _linear_plus_adjoint(op: Op, r: torch.Tensor, wplus: torch.Tensor, in_shape: torch.Size,
                         fmt: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """f⁺ᵀ(R) by a transposed convolution, cropped / padded to the input's size, dense in `fmt`."""
    groups = op.groups if op.kind == "conv" else in_shape[1]
    h, w = in_shape[-2:]
    if op.padding == "same":
        pads = same_pads(op, h, w)
        left, right, top, bottom = pads
        if (own := symmetric_pad(pads)) is not None:  # the transposed convolution's own padding
            pad, ph, pw, top, left = own, h, w, 0, 0
        else:
            ph, pw = h + top + bottom, w + left + right
            pad = (0, 0)
    else:
        top = left = 0
        ph, pw = h, w
        pad = op.padding
    kh, kw = wplus.shape[-2:]
    base_h = (r.shape[-2] - 1) * op.stride[0] - 2 * pad[0] + op.dilation[0] * (kh - 1) + 1
    base_w = (r.shape[-1] - 1) * op.stride[1] - 2 * pad[1] + op.dilation[1] * (kw - 1) + 1
    out = F.conv_transpose2d(r, wplus, None, op.stride, pad, (ph - base_h, pw - base_w), groups, op.dilation)
    if out.shape[-2:] != (h, w):
        # the crop is a strided view; made dense again in the batch's layout, since every later
        # op on a view of mixed layout takes a slow path
        out = out[..., top : top + h, left : left + w].contiguous(memory_format=fmt)
    return out


@dataclass
class Window:
    """One window per peak, in input pixels: top-left (oy, ox) (K,), size h × w, on a frame of
    height `full_h` (the stride of a tape value follows from its height)."""

    oy: torch.Tensor
    ox: torch.Tensor
    h: int
    w: int
    full_h: int
    _starts: dict = field(default_factory=dict, repr=False, compare=False)

    def crop(self, t: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, C, H', W') of the tape -> (K, C, h', w'): each peak's window at that stride in its
        frame `frames` (K,), in t's memory layout. One kernel (a loop of K slices was K launches
        per layer, which on a GPU cost far more than the arithmetic): every window of t is a row
        of one strided view of its storage, starting at the window's first element, and
        index_select copies the K rows whole (on a CPU 2-6x faster than the elementwise
        gather of advanced indexing: bench/RESULTS.md)."""
        s = self.full_h // t.shape[-2]
        h, w = self.h // s, self.w // s
        sb, sc, sh, sw = t.stride()
        # the K start offsets, kept per stride and layout (every op of a pass asks again)
        key = (id(frames), t.shape[-2], t.stride())
        if key not in self._starts:
            self._starts[key] = frames, frames * sb + (self.oy // s) * sh + (self.ox // s) * sw
        start = self._starts[key][1]
        # a window's dims in the order they lie in memory, so each row copies in long runs
        dims = sorted(((t.shape[1], sc, 1), (h, sh, 2), (w, sw, 3)), key=lambda d: -d[1])
        last = (t.shape[1] - 1) * sc + (h - 1) * sh + (w - 1) * sw  # a window's last element
        span = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1
        rows = t.as_strided((span - last, *(d[0] for d in dims)), (1, *(d[1] for d in dims)), t.storage_offset())
        out = rows.index_select(0, start)
        return out.permute(0, *(1 + [d[2] for d in dims].index(k) for k in (1, 2, 3)))

    def crop_each(self, t: torch.Tensor) -> torch.Tensor:
        """(K, C, H', W') -> (K, C, h', w'): peak k's own window of row k."""
        return self.crop(t, torch.arange(t.shape[0], device=t.device))

    def paste(self, maps: torch.Tensor, size) -> torch.Tensor:
        """(K, h, w) window maps -> (K, H, W) at input size, zero outside each window."""
        out = maps.new_zeros(maps.shape[0], *size)
        rows = (self.oy[:, None] + torch.arange(self.h, device=self.oy.device))[:, :, None]
        cols = (self.ox[:, None] + torch.arange(self.w, device=self.ox.device))[:, None, :]
        out[torch.arange(maps.shape[0], device=maps.device)[:, None, None], rows, cols] = maps
        return out


class Tape:
    """What the adjoint pass needs from one forward pass over a batch of frames."""

    def __init__(self, graph: Graph, x: torch.Tensor, rules: Rules) -> None:
        self.graph, self.rules = graph, rules
        dt = DTYPES[rules.dtype]
        self.dtype = dt
        self.fmt = torch.channels_last if rules.channels_last else torch.contiguous_format
        ops = graph.ops
        # the forward in the tape's layout too: on a CPU it then runs about twice as fast, and
        # what the tape keeps needs no conversion (bench/RESULTS.md)
        self.values: list[torch.Tensor] = [x.contiguous(memory_format=self.fmt)]
        self.wplus: dict[int, torch.Tensor] = {}
        self.a: dict[int, torch.Tensor] = {}  # non-negative input of linear ops / identity inputs
        self.z: dict[int, torch.Tensor] = {}  # Z of convs absorbed into a merged junction
        self.zinv: dict = {}  # 1/Z per linear op (and per merged junction), batch = frames
        self.argmax: dict[int, torch.Tensor] = {}
        self.absorbed: set[int] = set()  # convs folded into the following residual junction
        needed = self._ancestors(graph.peak)
        with torch.no_grad():
            for i in range(1, graph.last + 1):
                op = ops[i]
                args = [self.values[j] for j in op.inputs]
                out = graph.apply(i, args)
                self.values.append(out)
                if i not in needed:
                    continue
                if op.kind in ("conv", "avgpool") or (op.kind == "maxpool" and rules.maxpool == "sum"):
                    a = args[0] if ops[op.inputs[0]].nonneg else shift_nonneg(args[0])
                    a = a.to(dt)
                    if op.kind == "conv":
                        wp = op.weight.clamp(min=0).to(dt)
                    else:
                        wp = _pool_weight(op, a.shape[1], a.device, dt)
                    self.wplus[i] = wp
                    self.a[i] = a
                    z = _linear_plus(op, a, wp)
                    self.zinv[i] = _safe_inverse(z)
                    if rules.residual == "merged" and len(op.users) == 1 and ops[op.users[0]].kind == "add":
                        self.z[i] = z
                elif op.kind == "maxpool":
                    _, idx = F.max_pool2d(args[0], op.kernel, op.stride, op.padding, op.dilation,
                                          op.ceil_mode, return_indices=True)
                    self.argmax[i] = idx
                elif op.kind == "add" and rules.residual == "merged":
                    total = 0
                    for j in op.inputs:
                        if ops[j].kind == "conv" and ops[j].users == [i]:
                            self.absorbed.add(j)
                            total = total + self.z.pop(j)
                        else:
                            v = self.values[j]
                            self.a[(i, j)] = (v if ops[j].nonneg else shift_nonneg(v)).to(dt)
                            total = total + self.a[(i, j)]
                    self.zinv[("add", i)] = _safe_inverse(total)
            self._fuse_chains()
            for d in (self.a, self.zinv, self.coef):
                for k in d:
                    d[k] = d[k].contiguous(memory_format=self.fmt)

    def _fuse_chains(self) -> None:
        """Where linear op u reads (through an activation or directly) the output of linear op
        i and nothing else reads it, u's MWP step `P = a_u ⊙ f_u⁺ᵀ(r_u)` and i's `r_i = P / Z_i`
        become one: `r_i = (a_u / Z_i) ⊙ f_u⁺ᵀ(r_u)`, the coefficient computed here once per
        frame. Exact; it saves one pass over the K-peak batch per such pair (on a CPU those
        passes, not the convolutions, are much of the cost). Not in fp16, where a / Z alone
        can overflow although the product with P would not."""
        ops = self.graph.ops
        self.coef: dict[int, torch.Tensor] = {}
        self.fused: dict[int, int] = {}  # u -> i: u hands its result to i as i's ratio
        if self.dtype == torch.float16:
            return
        for u in self.wplus:
            j = ops[u].inputs[0]
            i = ops[j].inputs[0] if ops[j].kind == "act" and ops[j].users == [u] else j
            if (i in self.wplus and i not in self.absorbed and i in self.zinv
                    and ops[i].users == [j if i != j else u]):
                self.coef[u] = self.a[u] * self.zinv[i]
                self.fused[u] = i

    def _ancestors(self, start: int) -> set[int]:
        seen, todo = set(), [start]
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo.extend(self.graph.ops[i].inputs)
        return seen

    def stop_index(self, stop: str | None = None) -> int:
        """The value where back-propagation stops (0 = the input image): `stop` (default: the
        rules') is input or strideN, the first valid cut at least N times coarser than the input."""
        stop = stop or self.rules.stop
        if stop == "input":
            return 0
        want = int(stop.removeprefix("stride"))
        h = self.values[0].shape[-2]
        ops = self.graph.ops
        for i in range(1, self.graph.peak + 1):
            if h / self.values[i].shape[-2] >= want:
                # A valid cut: nothing after i reads a value from before i.
                if all(j >= i for k in range(i + 1, self.graph.peak + 1) for j in ops[k].inputs):
                    return i
        return 0

    def window(self, pos: torch.Tensor, radius: int) -> "Window | None":
        """Per-peak windows of (2·radius + 1)² peak-layer cells around `pos` (K, 2), shifted to
        stay inside the frame; None where a window would not save work or would not line up
        with every layer's grid (frame sides must be multiples of the peak layer's stride)."""
        h0, w0 = self.values[0].shape[-2:]
        hp, wp = self.values[self.graph.peak].shape[-2:]
        if radius <= 0:
            return None
        stride = h0 // hp
        for v in self.values[: self.graph.peak + 1]:  # every layer's grid (the peak's too) lines up
            s = h0 // v.shape[-2]
            if v.shape[-2] * s != h0 or v.shape[-1] * s != w0 or s & (s - 1) or stride % s:
                return None
        ch, cw = min(2 * radius + 1, hp), min(2 * radius + 1, wp)
        if ch * cw >= hp * wp:
            return None
        oy = (pos[:, 0] - radius).clamp(0, hp - ch)
        ox = (pos[:, 1] - radius).clamp(0, wp - cw)
        return Window(oy * stride, ox * stride, ch * stride, cw * stride, h0)

    def backprop(self, frame: int | torch.Tensor, seeds: torch.Tensor, stop: str | None = None,
                 window: "Window | None" = None) -> torch.Tensor:
        """Seeds (K, C, h, w) at the peak layer -> maps (K, H, W) at input size. `frame` is the
        frame of the tape the peaks are in, or (K,) one per peak: peaks of several frames go
        through in one pass, which on a GPU is what fills it. `stop` overrides the rules'
        stopping point (the coarse pass of the prefilter). With a `window`, each peak's
        probability is carried only inside its window at every layer (what leaves it is
        dropped) and the maps are zero outside it."""
        graph, ops = self.graph, self.graph.ops
        stop = self.stop_index(stop)
        if window is None:
            if isinstance(frame, int):
                f = slice(frame, frame + 1)
                local = lambda t: t[f]  # noqa: E731  (the frame's tape, broadcast over the K peaks)
            else:
                local = lambda t: t.index_select(0, frame)  # noqa: E731  (each peak's frame)
            p0 = seeds.contiguous(memory_format=self.fmt)
        else:
            if self.rules.maxpool == "argmax" or self.rules.residual == "split":
                raise ValueError("windowed back-propagation supports the sum max-pool and merged/copy residual rules")
            frames = frame if isinstance(frame, torch.Tensor) else \
                torch.full((seeds.shape[0],), frame, dtype=torch.int64, device=seeds.device)
            # each peak's frame of the tape, in its window
            local = lambda t: window.crop(t, frames).contiguous(memory_format=self.fmt)  # noqa: E731
            p0 = window.crop_each(seeds).contiguous(memory_format=self.fmt)
        prob: dict[int, torch.Tensor] = {graph.peak: p0.to(self.dtype)}
        ratio: dict[int, torch.Tensor] = {}  # P/Z handed straight to a conv (absorbed or fused)

        def give(j: int, p: torch.Tensor) -> None:
            prob[j] = prob[j] + p if j in prob else p

        for i in range(graph.peak, stop, -1):
            op = ops[i]
            p = prob.pop(i, None)
            r = ratio.pop(i, None)
            if p is None and r is None:
                continue
            if op.kind == "act":
                give(op.inputs[0], p)
            elif i in self.wplus:
                if r is None:
                    r = p * local(self.zinv[i])
                target = self.fused.get(i, -1)
                if target > stop:  # straight to op `target`'s ratio (_fuse_chains)
                    c = local(self.coef[i])
                    ratio[target] = _linear_plus_adjoint(op, r, self.wplus[i], c.shape, self.fmt).mul_(c)
                else:
                    a = local(self.a[i])
                    give(op.inputs[0], _linear_plus_adjoint(op, r, self.wplus[i], a.shape, self.fmt).mul_(a))
            elif op.kind == "maxpool":  # argmax rule
                src = self.values[op.inputs[0]]
                idx = local(self.argmax[i]).flatten(2).expand(p.shape[0], -1, -1)
                out = torch.zeros(p.shape[0], src.shape[1], src.shape[2] * src.shape[3], dtype=p.dtype, device=p.device)
                out.scatter_add_(2, idx, p.flatten(2))
                give(op.inputs[0], out.view(p.shape[0], *src.shape[1:]))
            elif op.kind == "add":
                self._add_rule(i, op, p, local, give, ratio)
            else:
                raise AssertionError(f"no MWP rule for {op.kind}")
        maps = prob[stop].float().sum(dim=1)
        size = self.values[0].shape[-2:] if window is None else (window.h, window.w)
        if maps.shape[-2:] != size:
            maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return maps if window is None else window.paste(maps, self.values[0].shape[-2:])

    def _add_rule(self, i, op, p, local, give, ratio) -> None:
        rule = self.rules.residual
        if rule == "copy":
            for j in op.inputs:
                give(j, p)
        elif rule == "split":
            parts = [local(self.values[j]).clamp(min=0).to(p.dtype) for j in op.inputs]
            total = sum(parts)
            for j, c in zip(op.inputs, parts):
                give(j, torch.where(total > EPS, p * c / total.clamp(min=EPS), p / len(parts)))
        else:  # merged: one MWP layer over both branches, Z = Σ f⁺(A)
            r = p * local(self.zinv[("add", i)])
            for j in op.inputs:
                if j in self.absorbed:
                    ratio[j] = r
                else:
                    give(j, local(self.a[(i, j)]) * r)
