"""The one recording hook every diagnostic goes through.

    with reslab.record(model) as rec:
        model(x)
    rec.branch_stats()      # per (connection, block, branch): stream and branch RMS, their ratio
    rec.states              # per connection: RMS of the stream after each block (0 = input)
    rec.coefficients()      # per connection: learned coefficients as named tensors

Connections call ``_record_branch`` / ``_record_state``; those are no-ops unless a recorder is
attached, so recording costs nothing in normal training. Schemes never special-case analysis.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

from torch import Tensor, nn


def _rms(t: Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


class Recorder:
    def __init__(self, keep_tensors: bool = False):
        self.keep_tensors = keep_tensors
        self.branches: list[dict] = []
        self.states: dict[str, list[float]] = defaultdict(list)
        self.state_tensors: dict[str, list[Tensor]] = defaultdict(list)
        self.branch_tensors: dict[tuple[str, int, int], Tensor] = {}
        self._connections: dict[str, nn.Module] = {}

    # called by connections
    def on_branch(self, conn, block: int, branch: int, stream: Tensor, out: Tensor) -> None:
        s, o = _rms(stream), _rms(out)
        self.branches.append({"connection": conn._record_name, "block": block, "branch": branch,
                              "stream_rms": s, "branch_rms": o, "ratio": o / max(s, 1e-12)})
        if self.keep_tensors:
            self.branch_tensors[(conn._record_name, block, branch)] = out.detach()

    def on_state(self, conn, block: int, h: Tensor) -> None:
        if block == 0:  # a new forward pass through this connection starts
            self.states[conn._record_name] = []
            self.state_tensors[conn._record_name] = []
        self.states[conn._record_name].append(_rms(h))
        if self.keep_tensors:
            self.state_tensors[conn._record_name].append(h.detach())

    # read by analysis
    def branch_stats(self) -> list[dict]:
        return list(self.branches)

    def coefficients(self) -> dict[str, dict[str, Tensor]]:
        return {name: c.coefficients() for name, c in self._connections.items()}


def connections_of(model: nn.Module) -> dict[str, nn.Module]:
    from ..connections import Connection

    return {(name or "connection"): m for name, m in model.named_modules() if isinstance(m, Connection)}


@contextmanager
def record(model: nn.Module, keep_tensors: bool = False):
    """Attach a :class:`Recorder` to every connection inside ``model`` for the ``with`` block."""
    rec = Recorder(keep_tensors=keep_tensors)
    conns = connections_of(model)
    rec._connections = conns
    for name, c in conns.items():
        c._recorder, c._record_name = rec, name
    try:
        yield rec
    finally:
        for c in conns.values():
            c._recorder = None

