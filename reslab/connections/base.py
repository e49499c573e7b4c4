"""The Connection protocol: a module that owns the depth loop of one stack, one step at a time.

A *branch* is a callable ``f(x) -> tensor of x's shape`` (pre-normed attention, an MLP, a conv
stack). A *block* is a list of branches (a transformer layer is ``[attention, mlp]``, a ResNet basic
block is ``[conv stack]``). Every scheme answers one question -- how is the stream carried from one
branch to the next? -- and answers it with five steps that this base class drives::

    state = conn.start(x0)                                  # tensor, history of states, or streams
    for k, block in enumerate(blocks):
        for b, f in enumerate(block):
            x = conn.branch_input(state, k, b)              # what the branch reads
            state = conn.branch_output(state, k, b, x, f(x))
        state = conn.end_block(state, k)                    # cross-block mixing (ANCRe, DenseFormer)
    y = conn.finish(state)                                  # back to x0's shape

``state`` is opaque to everyone but the scheme. The loop itself -- with the shape checks, lesions and
recording -- is written once, here, in :meth:`Connection.forward` and in the three driver methods
:meth:`enter`, :meth:`step` and :meth:`close_block` / :meth:`exit` that :mod:`reslab.patch` uses to
drive a loop it does not own (a Hugging Face decoder's ``for layer in self.layers``).

A Connection knows only shapes (``n_blocks``, ``dim``, ``channel_dim``, ``branches_per_block``,
``network_branches``), never the model. Analysis asks it questions (:meth:`branch_scales`,
:meth:`routing`, :meth:`coefficients`) instead of switching on its name.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

Branch = Callable[[Tensor], Tensor]
Block = Sequence[Branch]
State = Any


class Connection(nn.Module):
    """Base class. A scheme overrides the steps it needs (:meth:`start`, :meth:`branch_input`,
    :meth:`branch_output`, :meth:`end_block`, :meth:`finish`) and, when it learns something,
    :meth:`coefficients`. Registration (name, options, paper, parameter formula, coefficient schema,
    whether it starts as ``residual``) is done with :func:`reslab.connections.register`; options are
    validated there, once, before ``__init__`` sees them.

    Args:
        n_blocks: number of blocks K the connection wires (fixed: learned schemes own per-block parameters).
        dim: channel width D of the stream.
        channel_dim: axis of the stream that holds the D channels (-1 for tokens ``(B, T, D)``, 1 for NCHW).
    """

    #: registry name, set by ``register``
    name: ClassVar[str] = "connection"
    #: whether the stream keeps an identity shortcut. Models use it where a connection cannot reach: a
    #: shape-changing (downsampling) block between two CNN stages has a projection shortcut only if the
    #: scheme has shortcuts at all (``plain`` has none).
    carries_identity: ClassVar[bool] = True
    #: owns parameters per branch (set by ``register``): every block must have ``branches_per_block`` branches
    per_branch: ClassVar[bool] = False

    def __init__(self, n_blocks: int, dim: int, channel_dim: int = -1):
        super().__init__()
        self.n_blocks = int(n_blocks)
        self.dim = int(dim)
        self.channel_dim = int(channel_dim)
        self.spec: str = self.name  # canonical spec string, filled in by reslab.connection()
        # The model's shape, filled in by reslab.connection(): branches in each block (2 for a
        # transformer's [attention, mlp]) and residual branches in the whole network (REX's n; a
        # ResNet's three stages share one n).
        self.branches_per_block = 1
        self.network_branches = self.n_blocks
        self._recorder = None  # set by reslab.record(); None means "record nothing"
        self._record_name = ""
        # Blocks (0-based) whose branches are deleted for a lesion study (Veit et al. 2016,
        # arXiv:1605.06431): set by reslab.analysis.topology, empty in training.
        self._lesioned: frozenset[int] = frozenset()

    def set_network(self, branches_per_block: int, network_branches: int) -> None:
        """Told by reslab.connection() once the model's shape is known (after ``__init__``): branches per block
        and the residual branches of the whole network. Schemes whose init depends on network depth (REX's n,
        CaiT's depth rule) override it and call super()."""
        self.branches_per_block = int(branches_per_block)
        self.network_branches = int(network_branches)

    # -- the steps a scheme implements -----------------------------------------------------------
    def start(self, x0: Tensor) -> State:
        """State before the first block. Default: the stream itself."""
        return x0

    def branch_input(self, state: State, k: int, b: int) -> Tensor:
        """What branch ``b`` of block ``k`` reads. Default: the stream itself."""
        return state

    def branch_output(self, state: State, k: int, b: int, x: Tensor, out: Tensor) -> State:
        """Write branch ``b``'s output ``out`` (it read ``x``) back into the state."""
        raise NotImplementedError

    def end_block(self, state: State, k: int) -> State:
        """After every branch of block ``k``: cross-block mixing. Default: nothing."""
        return state

    def finish(self, state: State) -> Tensor:
        """The stack's output, shaped like its input. Default: the state is the stream."""
        return state

    def stream(self, state: State) -> Tensor:
        """The stream a recorder sees after a block (a tensor shaped like the input). Default: finish()."""
        return self.finish(state)

    def map_stream(self, state: State, fn: Callable[[Tensor], Tensor]) -> State:
        """The state after a block, with the stream the next block reads replaced by ``fn(stream)``: how a
        post-activation network's ReLU after each add (timm's ResNet blocks) is applied to the scheme's state.
        Default: the state is the stream. Schemes whose state has no single such stream leave it undefined."""
        if isinstance(state, Tensor):
            return fn(state)
        raise ValueError(f"{self.name}: its state between blocks is not a single stream, so an operation after each "
                         "block's add (a post-activation ReLU) has no defined place in it")

    # -- what analysis may ask -------------------------------------------------------------------
    def coefficients(self) -> dict[str, Tensor]:
        """Learned (or fixed) coefficients as named tensors, detached; the keys and their meaning are
        the scheme's registered coefficient schema. Empty for parameter-free schemes."""
        return {}

    def branch_scale(self, k: int, b: int) -> Tensor | None:
        """For towers h <- h + s_{k,b} * f_{k,b}(h): the multiplier of branch ``b`` of block ``k`` (a scalar
        or a (D,) vector), detached. ``None`` for schemes that are not such a tower (they mix earlier states)."""
        return None

    def branch_scales(self) -> Tensor | None:
        """Every :meth:`branch_scale`, stacked (K, branches_per_block[, D]); ``None`` for non-towers."""
        if self.n_blocks == 0 or self.branch_scale(0, 0) is None:
            return None
        return torch.stack([torch.stack([torch.as_tensor(self.branch_scale(k, b), dtype=torch.float32)
                                         for b in range(self.branches_per_block)]) for k in range(self.n_blocks)])

    def routing(self) -> tuple[Tensor, str, float] | None:
        """For schemes that route earlier states: (K x (K+1) matrix, convention, block_edge) as read by
        :mod:`reslab.analysis.topology`. ``None`` otherwise."""
        return None

    def extra_parameters(self) -> int:
        """Trainable parameters the connection adds to the model."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, n_blocks={self.n_blocks}, dim={self.dim}, channel_dim={self.channel_dim}"

    # -- the loop, written once ------------------------------------------------------------------
    def forward(self, x: Tensor, blocks: Sequence[Block]) -> Tensor:
        blocks = as_blocks(blocks)
        self.check_blocks(blocks)
        if self.per_branch:
            for k, block in enumerate(blocks):
                self.check_branches(k, len(block))
        state = self.enter(x)
        for k, block in enumerate(blocks):
            for b, f in enumerate(block):
                state = self.step(state, k, b, f)
            state = self.close_block(state, k)
        return self.exit(state)

    def enter(self, x: Tensor) -> State:
        """Start a pass: check the stream's shape, record it, return :meth:`start`'s state."""
        self.check_stream(x)
        if self._recorder is not None:
            self._recorder.on_state(self, 0, x)
        return self.start(x)

    def step(self, state: State, k: int, b: int, f: Branch) -> State:
        """Run branch ``f`` (branch ``b`` of block ``k``) on what the scheme gives it and write its output
        back: lesions (a lesioned block's branches output zeros), the shape check and recording live here."""
        x = self.branch_input(state, k, b)
        out = torch.zeros_like(x) if k in self._lesioned else f(x)
        if out.shape != x.shape:
            raise ValueError(f"{self.name}: branch {b} of block {k} returned shape {tuple(out.shape)} for an input of "
                             f"shape {tuple(x.shape)}; a branch must keep the stream's shape (move shape changes, "
                             "e.g. downsampling, out of the connection's blocks)")
        if self._recorder is not None:
            self._recorder.on_branch(self, k, b, x, self._added_term(k, b, out))
        return self.branch_output(state, k, b, x, out)

    def close_block(self, state: State, k: int) -> State:
        state = self.end_block(state, k)
        if self._recorder is not None:
            self._recorder.on_state(self, k + 1, self.stream(state))
        return state

    def exit(self, state: State) -> Tensor:
        return self.finish(state)

    # -- helpers -----------------------------------------------------------------------------------
    def _added_term(self, k: int, b: int, out: Tensor) -> Tensor:
        """The term the stream actually receives from a branch, for recording: s * f(x) for towers."""
        s = self.branch_scale(k, b)
        if s is None:
            return out
        return self.scale_channels(torch.as_tensor(s).to(out.dtype), out)

    def check_blocks(self, blocks: Sequence[Block]) -> None:
        if len(blocks) != self.n_blocks:
            raise ValueError(f"{self.name}: built for n_blocks={self.n_blocks} but forward() got {len(blocks)} blocks; "
                             f"build the connection with n_blocks={len(blocks)}")

    def check_stream(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"{self.name}: the stream must be a tensor, got {type(x).__name__}")
        if not -x.ndim <= self.channel_dim < x.ndim or x.shape[self.channel_dim] != self.dim:
            raise ValueError(f"{self.name}: built for dim={self.dim} channels on axis channel_dim={self.channel_dim}, "
                             f"but the stream has shape {tuple(x.shape)}; pass the right dim/channel_dim "
                             "(-1 for tokens (B, T, D), 1 for NCHW)")

    def check_branches(self, k: int, n_branches: int) -> None:
        """Schemes with parameters per branch call this: block ``k`` must have ``branches_per_block`` branches."""
        if n_branches != self.branches_per_block:
            raise ValueError(f"{self.name}: built for {self.branches_per_block} branches per block but block {k} has "
                             f"{n_branches}; build it with reslab.connection(..., branches_per_block={n_branches}) "
                             f"or set {self._branches_spec(n_branches)}")

    def _branches_spec(self, n: int) -> str:
        return f"{self.name}(branches={n})"

    def scale_channels(self, w: Tensor, h: Tensor) -> Tensor:
        """w h for a scalar weight or a per-channel (D,) one, the latter broadcast along ``channel_dim``."""
        return w * h if w.ndim == 0 else self.channel_view(w, h.ndim) * h

    def channel_view(self, p: Tensor, ndim: int) -> Tensor:
        """Reshape a per-channel vector (D,) so it broadcasts along ``channel_dim`` of an ndim tensor."""
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return p.reshape(shape)


def stream_precision(stream: Tensor):
    """A context for arithmetic that mixes the residual stream with itself (stream mixing, depth sums by
    einsum/matmul): autocast off, so that under bf16 autocast the stream keeps its own dtype (float32), as
    ``x + f(x)`` keeps it in ``residual``. Without it autocast runs those einsums in bf16 and the streams
    drift to bf16, losing precision over depth (seen on CUDA in the mhc arm: bf16 RMSNorm inputs)."""
    return torch.autocast(stream.device.type, enabled=False)


def as_blocks(blocks: Sequence) -> list[list[Branch]]:
    """Normalise user input: a bare callable counts as a one-branch block."""
    out = []
    for b in blocks:
        out.append([b] if callable(b) and not isinstance(b, (list, tuple, nn.ModuleList)) else list(b))
    return out
