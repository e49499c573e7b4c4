"""Fixed residual scaling: h <- h + λ·f(h), one λ for every branch (Dherin & Munn 2025, REX).

"On residual network depth" (arXiv:2510.03470) expands a tower of n modules x <- x + λ g_k(x)
(the Residual Expansion Theorem) into an ensemble of C(n, k) k-module paths weighted by λ^k, so the
output grows like (1 + λc)^n: exponentially in depth at λ = 1. Scaling every module by a depth-dependent
λ tames that growth and lets deep nets train without normalization:

    λ = 1/n        each expansion level becomes an average (the tower tends to an ODE flow); bounded
                   even when branches are aligned.
    λ = 1/sqrt(n)  bounded for zero-mean, independent branches (the usual init); less suppression of
                   the higher levels, and the paper reports better accuracy than 1/n.
    λ = constant   the untuned baseline (λ = 1 is ``residual``).

``lam`` also takes ``c/n`` and ``c/sqrt(n)`` (e.g. ``2/sqrt(n)``) because the paper reports that a
tuned multiple of the rule does better still; λ is fixed, never learned (the paper's λ is one shared
constant), so this scheme adds no parameters.

Which n. The theorem's n is the number of *modules*, i.e. of residual additions x <- x + λ g(x) in
the whole network: every addition is one factor of the product that the expansion unrolls. In reslab a
module is a *branch*, so the default ``count=branches`` uses n = the network's residual branches, which
the model passes in (``network_branches``): 2K for a transformer ``[attention, mlp]``, the sum over all
three stages for a ResNet (whose downsampling branches change the shape, stay unscaled and are not
counted). ``count=blocks`` uses n = this stack's K instead, for recipes that scale by layers.
"""
from __future__ import annotations

import math

import torch

from .base import Connection
from .registry import Option, register

ACCEPTED = ("a number >= 0 (e.g. lam=0.5; 0 switches every branch off), lam=1/n, lam=1/sqrt(n), "
            "or a multiple c/n, c/sqrt(n) with c > 0 (e.g. lam=2/sqrt(n))")

# rule -> exponent p in λ = c * n^-p
_RULES = {"/n": 1.0, "/sqrt(n)": 0.5}


def _fmt(c: float) -> str:
    short = f"{c:g}"
    return short if float(short) == c else repr(c)


def _number(text: str, raw) -> float:
    try:
        val = float(text)
    except ValueError:
        raise ValueError(f"lam={raw!r} is not understood; accepted: {ACCEPTED}") from None
    if not math.isfinite(val):
        raise ValueError(f"lam={raw!r} is not finite; accepted: {ACCEPTED}")
    return val


def parse_lam(raw) -> float | str:
    """Validate a λ spec; return a float (constant) or the canonical rule string ``"c/n"``/``"c/sqrt(n)"``.

    Negative λ is refused: it only flips the sign of a branch, which the branch's last layer can
    absorb, so in practice it is a typo (``-1`` written for n^-1, i.e. ``1/n``)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"lam={raw!r} is not understood; accepted: {ACCEPTED}")
    text = str(raw).replace(" ", "").lower()
    for suffix in _RULES:
        if text.endswith(suffix):
            c_text = text[: -len(suffix)]
            c = _number(c_text, raw) if c_text else None
            if c is None or c <= 0:
                raise ValueError(f"lam={raw!r}: the multiple before {suffix!r} must be a number > 0; "
                                 f"accepted: {ACCEPTED}")
            return f"{_fmt(c)}{suffix}"
    val = _number(text, raw)
    if val < 0:
        raise ValueError(f"lam={raw!r} is negative; a negative λ only flips the branch sign (its last layer "
                         f"can do that), so it is refused -- did you mean lam=1/n (n^-1)? accepted: {ACCEPTED}")
    return val


@register(
    "scaled",
    paper="Dherin & Munn 2025, On residual network depth (REX, arXiv:2510.03470)",
    params="0",
    param_count=lambda opts, shape: 0,
    variants=("scaled(lam=1)", "scaled(lam=1/n, count=blocks)"),
    coefficients={"lambda": "the scalar λ multiplying every branch"},
    starts_as_residual=True,
    residual_at_init=lambda opts: opts["lam"] == 1.0,
    options=[
        Option("lam", "str", "1/sqrt(n)", f"λ on every branch: {ACCEPTED}", parse=parse_lam),
        Option("count", "choice", "branches",
               "what n counts: branches = every residual addition in the network (the theorem's modules), "
               "blocks = this stack's K",
               choices=("branches", "blocks")),
    ],
)
class Scaled(Connection):
    """Scaled residual stream: h <- h + λ f(h) for every branch, λ constant or 1/n, 1/sqrt(n) of depth."""

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1, lam: float | str = "1/sqrt(n)",
                 count: str = "branches"):
        super().__init__(n_blocks, dim, channel_dim)
        rule = parse_lam(lam)
        self.lam = rule  # canonical: a float or "c/n" / "c/sqrt(n)"
        self.count = count
        if isinstance(rule, float):
            self._c, self._p = rule, 0.0
        else:
            suffix = next(s for s in _RULES if rule.endswith(s))
            self._c, self._p = float(rule[: -len(suffix)]), _RULES[suffix]

    def lam_for(self, n: int) -> float:
        """λ of this rule for a tower of n modules."""
        if self._p == 0.0:
            return self._c
        if n < 1:
            raise ValueError(f"scaled: λ={self.lam} needs n >= 1 modules, got n={n}")
        return self._c * n ** -self._p

    @property
    def n(self) -> int:
        """REX's n: residual branches in the whole network (``network_branches``, passed in by the model:
        a ResNet's three stages share it), or this stack's K with count=blocks. Fixed at construction, so
        a lesion study leaves the remaining blocks with the λ they were trained with."""
        return self.n_blocks if self.count == "blocks" else self.network_branches

    @property
    def lam_value(self) -> float:
        return self.lam_for(max(self.n, 1))

    def branch_output(self, state, k, b, x, out):
        return torch.add(state, out, alpha=self.lam_value)  # x + λ f(x) in one pass, no λ f(x) temporary

    def branch_scale(self, k, b):
        return torch.tensor(self.lam_value)

    def coefficients(self):
        return {"lambda": torch.tensor(self.lam_value)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lam={self.lam!r}, count={self.count!r}"
