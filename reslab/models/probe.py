"""The networks of PNNH's dissipating-input claims (arXiv:2402.08645, §3), as a model family ("probe").

Four fully connected stacks at He init and without normalisation, so that what each layer does to its
input can be read off (:mod:`reslab.analysis.dissipation`): plain ``ReLU(W h)``, Theorem 3.2's
post-activation residual ``ReLU(h + W h)``, a scaled pre-activation residual ``h + lam W2 ReLU(W1 h)``
(REX's lam = 1/sqrt(depth)) and the PNNH MLP. The wiring is the network's ``kind``, not a reslab
Connection: Theorem 3.2 is about these exact layers, so the model ignores the connection registry.

    build_model("probe", task.info, kind="residual", depth=20, width=256)
"""
from __future__ import annotations

import math

from torch import Tensor, nn

KINDS = ("plain", "residual", "scaled", "pnnh")


class _PlainLayer(nn.Module):
    """h -> ReLU(W h), W ~ He normal."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d, bias=False)
        self.act = nn.ReLU()
        nn.init.kaiming_normal_(self.lin.weight, nonlinearity="relu")

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.lin(h))


class _ResidualLayer(_PlainLayer):
    """h -> ReLU(h + W h): the post-activation residual layer of Theorem 3.2 (He et al. 2016 v1, one-layer branch)."""

    def forward(self, h: Tensor) -> Tensor:
        return self.act(h + self.lin(h))


class _ScaledLayer(nn.Module):
    """h -> h + lam W2 ReLU(W1 h): a pre-activation residual block scaled by lam (REX rule lam = 1/sqrt(L))."""

    def __init__(self, d: int, lam: float):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.act, self.lam = nn.ReLU(), lam
        for w in (self.w1, self.w2):
            nn.init.kaiming_normal_(w.weight, nonlinearity="relu")

    def forward(self, h: Tensor) -> Tensor:
        return h + self.lam * self.w2(self.act(self.w1(h)))


class ProbeNet(nn.Module):
    """The networks of the dissipation claims, at He init, without normalisation:

        embed:    h_0 = E x                       (E ~ N(0, 1/in_dim): unit-scale features)
        plain:    h_l = ReLU(W_l h_{l-1})
        residual: h_l = ReLU(h_{l-1} + W_l h_{l-1})             (Theorem 3.2's post-activation form)
        scaled:   h_l = h_{l-1} + lam W2_l ReLU(W1_l h_{l-1})   (lam = 1/sqrt(depth) unless given)
        pnnh:     the PNNH MLP (reslab.models.pnnh.PNNHMLP, learner width ``width``, code width
                  ``code_width * width``, norm none): its stem replaces E, layers 1..depth follow
        head:     logits = U h_depth (for training)

    ``diagnostic_layers()`` are layers 1..depth; each holds one ReLU."""

    def __init__(self, kind: str, depth: int, width: int, in_dim: int, out_dim: int = 10, lam: float | None = None,
                 coder: str = "fixed", code_width: float = 0.5):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"ProbeNet: kind={kind!r} is not one of {', '.join(KINDS)}")
        for k, v in (("depth", depth), ("width", width), ("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ProbeNet: {k} must be a positive int, got {v!r}")
        self.kind, self.depth = kind, depth
        self.lam = (1 / math.sqrt(depth)) if lam is None else float(lam)
        if kind == "pnnh":
            from .pnnh import PNNHMLP

            self.net = PNNHMLP(in_dim, out_dim, width=width, n_layers=depth, coder=coder, code_width=code_width,
                               norm="none")
            return
        self.embed = nn.Linear(in_dim, width, bias=False)
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(in_dim))
        make = {"plain": lambda: _PlainLayer(width), "residual": lambda: _ResidualLayer(width),
                "scaled": lambda: _ScaledLayer(width, self.lam)}[kind]
        self.layers = nn.ModuleList(make() for _ in range(depth))
        self.head = nn.Linear(width, out_dim)

    def diagnostic_layers(self) -> list[nn.Module]:
        return list(self.net.layers) if self.kind == "pnnh" else list(self.layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if self.kind == "pnnh":
            return self.net(x)
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def build_probe(task_info: dict, connection: str, kwargs: dict) -> ProbeNet:
    """``build_model("probe", info, kind=..., depth=..., width=...)`` on any classification task (inputs flattened)."""
    from .task_info import check_options, vector_io

    if connection != "residual":
        raise ValueError(f"model 'probe' is wired by its kind= option ({', '.join(KINDS)}), not by a connection; "
                         f"leave connection at its default (got {connection!r})")
    check_options("probe", kwargs, ["kind", "depth", "width", "lam", "coder", "code_width"])
    in_dim, out_dim = vector_io(task_info, "probe", kwargs)
    kwargs.pop("flatten_input", None)  # ProbeNet always flattens
    kwargs.setdefault("kind", "residual")
    kwargs.setdefault("depth", 20)
    kwargs.setdefault("width", 256)
    return ProbeNet(in_dim=in_dim, out_dim=out_dim, **kwargs)
