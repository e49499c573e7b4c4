"""The Connection protocol: a module that owns the depth loop of one stack.

A *branch* is a callable ``f(x) -> tensor of x's shape`` (pre-normed attention, an MLP, a conv
stack). A *block* is a list of branches (a transformer layer is ``[attention, mlp]``, a ResNet basic
block is ``[conv stack]``). Every scheme in reslab answers one question -- how is the stream carried
from one branch to the next? -- so models never write ``x + f(x)`` themselves: they hand their
blocks to a Connection.

A Connection knows only shapes (``n_blocks``, ``dim``, ``channel_dim``), never the model. It reports
what it computes to an optional recorder (see :mod:`reslab.analysis.record`) through ``_record_*``
calls that are free when nothing records, and exposes its learned coefficients as named tensors
through :meth:`Connection.coefficients`, so diagnostics are written once for every scheme.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

Branch = Callable[[Tensor], Tensor]
Block = Sequence[Branch]


class Connection(nn.Module):
    """Base class. Subclasses implement :meth:`forward` and, when they learn something,
    :meth:`coefficients`. Registration (name, options, paper, parameter formula) is done with
    :func:`reslab.connections.register`.

    Args:
        n_blocks: number of blocks K the connection wires (fixed at construction, because learned
            schemes own per-block parameters).
        dim: channel width D of the stream.
        channel_dim: axis of the stream tensor that holds the D channels (-1 for tokens ``(B, T, D)``,
            1 for NCHW feature maps). Schemes with per-channel parameters broadcast along it.
    """

    #: registry name, set by ``register``
    name: ClassVar[str] = "connection"
    #: whether the stream keeps an identity shortcut. Models use it for the one place a connection
    #: cannot reach: a shape-changing (downsampling) block between two CNN stages, where a projection
    #: shortcut exists only if the scheme has shortcuts at all (``plain`` has none).
    carries_identity: ClassVar[bool] = True

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1):
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.n_blocks = int(n_blocks)
        self.dim = int(dim)
        self.channel_dim = int(channel_dim)
        self.spec: str = self.name  # canonical spec string, filled in by reslab.connection()
        self._recorder = None  # set by reslab.record(); None means "record nothing"
        self._record_name = ""
        # Blocks (0-based) whose branches are deleted for a lesion study (Veit et al. 2016); set by
        # reslab.analysis.topology.layer_drop_sensitivity, empty in training. See effective_blocks().
        self._lesioned: frozenset[int] = frozenset()

    # -- the protocol --------------------------------------------------------------------------
    def forward(self, x: Tensor, blocks: Sequence[Block]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def coefficients(self) -> dict[str, Tensor]:
        """Learned (or fixed) mixing coefficients as named tensors, detached, e.g. ``{"routing": K x (K+1)}``
        for ANCRe or ``{"alpha": (K,), "beta": (K,)}`` for LAuReL-RW. Empty for parameter-free schemes."""
        return {}

    def extra_parameters(self) -> int:
        """Trainable parameters the connection adds to the model."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, n_blocks={self.n_blocks}, dim={self.dim}, channel_dim={self.channel_dim}"

    # -- helpers for subclasses ----------------------------------------------------------------
    def check_blocks(self, blocks: Sequence[Block]) -> None:
        if len(blocks) != self.n_blocks:
            raise ValueError(
                f"{self.name}: built for n_blocks={self.n_blocks} but forward() got {len(blocks)} blocks; "
                f"build the connection with n_blocks={len(blocks)}")

    def effective_blocks(self, blocks: Sequence[Block]) -> Sequence[Block]:
        """``blocks`` with every branch of a lesioned block (indices in ``self._lesioned``, 0-based)
        replaced by ``zeros_like``: the "delete the residual branch" lesion of Veit et al. 2016
        (arXiv:1605.06431). Every scheme calls it at the top of ``forward`` so lesion studies work
        without knowing the scheme; the stream then flows on through whatever shortcuts the scheme
        has (``residual``: the block becomes the identity; ``plain``: the stream becomes zero)."""
        if not self._lesioned:
            return blocks
        return [[_zero_branch] * len(b) if j in self._lesioned else b for j, b in enumerate(blocks)]

    def channel_view(self, p: Tensor, ndim: int) -> Tensor:
        """Reshape a per-channel vector (D,) so it broadcasts along ``channel_dim`` of an ndim tensor."""
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return p.reshape(shape)

    # -- recording (no-ops unless reslab.record() is active on this module) --------------------
    def _record_branch(self, block: int, branch: int, stream: Tensor, out: Tensor) -> None:
        if self._recorder is not None:
            self._recorder.on_branch(self, block, branch, stream, out)

    def _record_state(self, block: int, h: Tensor) -> None:
        """Stream after block ``block`` (0 = the stack's input)."""
        if self._recorder is not None:
            self._recorder.on_state(self, block, h)


def _zero_branch(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def as_blocks(blocks: Sequence) -> list[list[Branch]]:
    """Normalise user input: a bare callable counts as a one-branch block."""
    out = []
    for b in blocks:
        out.append([b] if callable(b) and not isinstance(b, (list, tuple, nn.ModuleList)) else list(b))
    return out

