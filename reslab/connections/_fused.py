"""Fused stream arithmetic for the connections' hot paths: same values, fewer full-size tensors.

Why this exists. A connection adds only elementwise work to a model, but with plain autograd every
``scalar * tensor`` term costs more than its arithmetic: the forward allocates the product and then
the sum, and the backward allocates ``g * a`` (the tensor's gradient) *and* ``g * f`` only to reduce
it to the scalar's gradient; ANCRe's and DenseFormer's K(K+1)/2 shortcuts multiply that, and autograd
holds one gradient tensor per source from the first backward call on. The two Functions here do the
same sums with fewer full-size temporaries and passes and, for ``weighted_sum``, without gradient
buffers at the step's memory peak (``reslab bench overhead``, see results/bench-overhead/NOTES.md:
ANCRe's peak step memory on the default GPT went from 1.04x to 1.00x of ``residual``, and the mixing
alone takes half the time). They differ from the unfused code only in rounding: the backward's
reductions (dot products instead of sum(g * x)), and ``addcmul`` where the unfused code multiplied and
added (the CPU kernel may round ``x + a f`` once); ``weighted_sum``'s forward, which replaces an addcmul
chain, is bit for bit the old one.

* :func:`scaled_add` -- ``y = b x + a f`` for 0-dim ``a``, ``b`` (``b = None`` means 1): one allocation
  forward; backward ``dL/da = <g, f>``, ``dL/db = <g, x>`` as dot products, no temporaries for them.
* :func:`weighted_sum` -- ``y = bases + sum_i w_i x_i`` (ANCRe's shortcuts, DenseFormer's depth-weighted
  average): the forward accumulates in place into one output; the backward computes ``dL/dw`` as dot
  products and, instead of handing autograd one ``g w_i`` tensor per source to add up, notes
  ``(g_j, w_ij)`` for each source in ``pending`` (shared by the calls of one forward) and sums
  ``sum_j w_ij g_j`` into one new tensor in the call that runs *last* in backward among those that read
  the source -- the first reader in forward order (``plan``). That is correct because the calls of one
  stack form a chain (every call's output feeds, through the blocks, all later calls), so backward
  visits them in reverse forward order. Per shortcut: 1 pass forward, 2 passes backward (dot and
  in-place accumulate) instead of 1 + 4 passes and 3 allocations. Summing late, rather than keeping a
  running buffer per source from the first backward call on, matters for memory: the first call is
  the peak of the step (every activation still alive), and K running buffers there would add K stream
  tensors to it; the noted g_j are references, which grow by one per block while each block's
  backward frees its activations.

Both are once-differentiable (no double backward); callers use them only when their shapes fit
(0-dim coefficients), per-channel coefficients keep the plain expressions. Under ``torch.compile``
``weighted_sum`` is the plain expression (the compiler fuses it; its shared buffer would not survive
tracing).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


_ENABLED = False


def fused_enabled() -> bool:
    """Whether schemes take the fused fast path: only when switched on, never under torch.compile or
    when a double backward / torch.func transform could need the plain expression's derivatives."""
    return _ENABLED and not torch.compiler.is_compiling()


@contextmanager
def fused(enabled: bool = True) -> Iterator[None]:
    """Switch the fused fast path on (or off) inside the ``with`` block. Off by default: the custom
    autograd functions are once-differentiable and opaque to ``torch.func``, so the plain expressions
    are what every scheme computes unless a user opts in for speed (``reslab bench overhead --fused``)."""
    global _ENABLED
    before, _ENABLED = _ENABLED, bool(enabled)
    try:
        yield
    finally:
        _ENABLED = before


def _dot(g: Tensor, x: Tensor) -> Tensor:
    """<g, x> over all elements, without a g * x temporary when the layouts allow."""
    if g.dtype == x.dtype and g.is_contiguous() and x.is_contiguous():
        return torch.dot(g.reshape(-1), x.reshape(-1))
    return (g * x).sum()


def _scalar(grad: Tensor, like: Tensor) -> Tensor:
    return grad.to(like.dtype).reshape(like.shape)


class _ScaledAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, a, b):
        if b is None or torch.promote_types(x.dtype, f.dtype) != x.dtype:
            y = torch.addcmul(x if b is None else x * b, f, a)
        else:
            y = torch.mul(x, b)
            y.addcmul_(f, a)  # in place into the fresh b*x: one allocation
        # x only when dL/db needs it: a branch need not keep its input alive (a ResNet branch does not)
        ctx.save_for_backward(x if b is not None else None, f, a, b)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, f, a, b = ctx.saved_tensors
        need_x, need_f, need_a, need_b = ctx.needs_input_grad
        gx = (g if b is None else g * b) if need_x else None
        gf = g * a if need_f else None
        ga = _scalar(_dot(g, f), a) if need_a else None
        gb = _scalar(_dot(g, x), b) if (need_b and b is not None) else None
        return gx, gf, ga, gb


def scaled_add(x: Tensor, f: Tensor, a: Tensor, b: Tensor | None = None) -> Tensor:
    """``b * x + a * f`` (``x + a * f`` when ``b`` is None) for 0-dim tensors ``a``, ``b``."""
    return _ScaledAdd.apply(x, f, a, b)


def _plain_sum(bases: Sequence[Tensor], w: Tensor, xs: Sequence[Tensor]) -> Tensor:
    """The unfused expression, in the same order: ((b_0 + b_1 + ...) + w_0 x_0) + w_1 x_1 + ..."""
    out = None
    for b in bases:
        out = b if out is None else out + b
    for i, x in enumerate(xs):
        out = x * w[i] if out is None else torch.addcmul(out, x, w[i])
    return out


class _WeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, pending, plan, reset, n_bases, *tensors):
        bases, xs = tensors[:n_bases], tensors[n_bases:]
        dtype = xs[0].dtype
        for t in tensors:
            dtype = torch.promote_types(dtype, t.dtype)
        if len(bases) >= 2:
            out = bases[0] + bases[1]
            for b in bases[2:]:
                out.add_(b)
            start = 0
        else:
            out = torch.mul(xs[0], w[0]) if not bases else torch.addcmul(bases[0], xs[0], w[0])
            start = 1
        out = out.to(dtype)
        for i in range(start, len(xs)):
            out.addcmul_(xs[i], w[i])  # the running sum, in place: one allocation per call
        ctx.save_for_backward(w, *xs)
        ctx.pending, ctx.plan, ctx.reset, ctx.n_bases = pending, plan, reset, n_bases
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        w, *xs = ctx.saved_tensors
        need = ctx.needs_input_grad
        if ctx.reset:  # the stack's last call starts every backward pass: drop sums a cut-short pass left
            ctx.pending.clear()
        gw = torch.stack([_dot(g, x) for x in xs]).to(w.dtype) if need[0] else None
        grads = []
        wl = w.to(g.dtype).unbind(0)
        nb = ctx.n_bases
        for i, (x, (key, last)) in enumerate(zip(xs, ctx.plan)):
            if not need[5 + nb + i]:
                grads.append(None)
                continue
            terms = ctx.pending.setdefault(key, [])
            terms.append((g, wl[i]))  # a reference, not a copy: g is kept until its last source is served
            if last:  # no call that runs later in backward reads this source: hand it the sum
                del ctx.pending[key]
                (g0, w0), rest = terms[0], terms[1:]
                acc = g0 * w0
                for gj, wj in rest:
                    acc.addcmul_(gj, wj)
                grads.append(acc if acc.dtype == x.dtype else acc.to(x.dtype))
            else:
                grads.append(None)
        gbases = [g if need[5 + k] else None for k in range(nb)]  # d(sum)/d(base) = 1
        return (gw, None, None, None, None, *gbases, *grads)


def weighted_sum(bases: Sequence[Tensor], w: Tensor, xs: Sequence[Tensor], pending: dict,
                 plan: Sequence[tuple[object, bool]], last_call: bool = False) -> Tensor:
    """``(bases[0] + bases[1] + ...) + sum_i w[i] * xs[i]``, ``w`` a 1-D tensor of len(xs), summed left to
    right into one new tensor (so a block's last ``h + f(h)`` can be handed over as two bases and costs
    no tensor of its own).

    ``pending``: one dict per forward of a stack, shared by all its calls (gradient terms per source).
    ``plan[i] = (key, last)``: the source's key in ``pending`` and whether this call is the first, in
    forward order, to read it (then it is the last in backward and hands the source its gradient).
    The calls of one ``pending`` must form a chain, each call's output feeding all later ones; the last
    one sets ``last_call`` (its backward runs first and clears what a pass cut short, e.g. by
    ``torch.autograd.grad(..., inputs=<an inner state>)``, left behind)."""
    if not xs or len(xs) != w.shape[0] or len(plan) != len(xs):
        raise ValueError(f"weighted_sum: {len(xs)} sources, {w.shape[0]} weights and {len(plan)} plan entries "
                         "must agree")
    if torch.compiler.is_compiling():
        # A compiler traces backward once, so a buffer shared between calls would be baked in wrong;
        # the plain expression is what it fuses well anyway.
        return _plain_sum(bases, w, xs)
    return _WeightedSum.apply(w, pending, list(plan), bool(last_call), len(bases), *bases, *xs)
