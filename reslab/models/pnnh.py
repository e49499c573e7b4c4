"""PNNH: deep *plain* networks (no residual connections) with an internal path -- OUR RECONSTRUCTION.

Paper: Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning" (arXiv:2402.08645).
The Plain Neural Net Hypothesis: what makes residual learning work is an *internal path* that carries
the input across the non-linear layers, not the skip-add itself; a plain net with such a path trains
deep. The paper builds it from a **learner** and a **coder whose weights are shared across layers**.
The paper's exact block is not public (see docs/pnnh.md and /work/shared/papers/pnnh.md §2): what
follows is our reconstruction, consistent with everything the paper states, with the open choices
exposed as options.

**Why this is a model family and not a Connection.** A Connection carries a stream of fixed width
D through branches f(x) -> x-shaped. A PNNH state is a *different* object: ``s = [h | p | q]``, the
learner's features h next to a sign-split code, and every layer maps the whole state to the next
state through one ReLU. Its width (c_L + 2 c_C) is not the width of any stream a branch sees, and
no add happens anywhere, so it cannot be phrased as "how is the stream carried past f".

The construction. A vector survives a ReLU exactly when it is stored as two non-negative halves:
``x = ReLU(x) - ReLU(-x)``. Keep the carried signal as ``[p; q]`` with ``x = p - q``. Every layer
is one linear (MLP) or conv (CNN) map of the whole state followed by one ReLU::

    [h']        ( [ A_l   B_l   -B_l ] [h] )      learner: A_l, B_l (reads its features and the
    [p'] = ReLU ( [ D_l   C     -C   ] [p] )               decoded code p - q), per layer
    [q']        ( [-D_l  -C      C   ] [q] )      coder:   C, ONE weight shared by a stage's layers
                                                  write-back: D_l (learner -> code), per layer

so ``p' - q' = C (p - q) + D_l h`` exactly. With C = I and D_l = 0 (our init) the code is carried
through every ReLU unchanged: the internal path is the identity at initialisation, and with D_l
learned the code accumulates learner outputs the way a residual stream does -- yet no tensor is
ever the sum of a layer's input and its output, and every path from the input crosses every ReLU
(``skip_add_report`` checks both on the traced graph). This is the precise sense in which "a
ResNet is a plain net whose weights contain a layer-shared coder" (digest §2.3).

How we compute it. The map above applied literally convolves the 2 c_C code channels twice; we
compute the same map as ``u = [h; p - q]`` (the [I 0 0; 0 I -I] part, linear), then ONE conv (MLP:
one matmul) of u with the stacked weight [[A | B], [D | C]] (the 1x1 D and C sit on the centre tap of
the learner's k x k kernel), giving [z_h; z_c], then ``ReLU([N(z_h); z_c; -z_c])``: no add on
activations anywhere. ``PNNHLayer.dense_matrix`` returns the full matrix of the MLP form for checking.
(One conv per layer keeps the op count low; the zero taps cost the code rows 9x their 1x1 FLOPs.
On one CPU thread this and a two-conv version timed the same within noise.)

Forms: :class:`PNNHMLP`, :class:`PNNHCNN` (CIFAR-ResNet-shaped), and :class:`PNNHGPT`, an attempt at a
Transformer form (attention is not a linear map, so there only the code rows and the MLP rows are;
see its docstring and docs/pnnh.md for how it trained).

Options (the open choices of the paper, digest §2.2):

- ``coder``: ``fixed`` (C = I, a buffer: sign-split identity, no parameters), ``shared`` (one
  learned C per stage, init identity or orthogonal), ``unshared`` (a learned C_l per layer: the
  ablation of sharing), ``none`` (no code: a plain VGG-style net whose layers have the PNNH state's
  width c_L + 2 c_C).
- ``code_width``: c_C as a fraction of the learner width c_L (default 0.5).
- ``norm``: ``learner`` (BatchNorm / LayerNorm on the learner rows only: the default), ``all``
  (also on the code rows, before the sign split; allowed because with C = I, D = 0 the code
  reaching it is already normalised, so it is the identity at init up to eps), ``none``.
- ``write_back``: ``1x1`` (D is a 1x1 conv; in the MLP the only choice besides none), ``full`` (D
  has the learner's kernel), ``none`` (the code only carries the stage input: an "input
  injection" ablation).
- ``downsample`` (CNN): ``avgpool`` (2x2 average pooling of [h; p - q], linear, then the stride-1
  maps) or ``stride`` (stride-2 learner conv and stride-2 1x1 coder/write-back).
- ``coder_init``: ``identity`` or ``orthogonal`` for learned coders. ``zero_init_write``: D_l = 0
  at init (identity internal path) or He-initialised.

At a stage change the code widens from c_C to 2 c_C through a transition coder T of shape
(c_C_out, c_C_in): fixed T = [I; 0] (new channels start empty and are filled by write-back),
learned T initialised the same way; one T per stage change in every mode.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .task_info import need, vector_io

CODERS = ("fixed", "shared", "unshared", "none")
NORMS = ("learner", "all", "none")
WRITE_BACKS = ("1x1", "full", "none")
DOWNSAMPLES = ("avgpool", "stride")
CODER_INITS = ("identity", "orthogonal")
STAGE_WIDTHS = (16, 32, 64)


def _choice(model: str, name: str, value, valid: tuple) -> None:
    if value not in valid:
        raise ValueError(f"{model}: {name}={value!r} is not one of {', '.join(valid)}")


def _positive_int(model: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{model}: {name} must be a positive int, got {value!r}")


def code_channels(learner: int, code_width: float) -> int:
    """c_C = round(code_width * c_L), at least 1 when code_width > 0."""
    return max(1, round(code_width * learner)) if code_width > 0 else 0


class Coder(nn.Module):
    """The coder C (c_out x c_in), shared by every layer that holds this same module.

    ``learned=False``: a buffer [I; 0] (identity on the first min(c_in, c_out) channels) -- the
    fixed sign-split identity. ``learned=True``: a parameter initialised to the same [I; 0]
    (``init="identity"``) or to a (semi-)orthogonal matrix (``init="orthogonal"``); both keep the
    carried signal's norm at init."""

    def __init__(self, c_in: int, c_out: int, learned: bool, init: str = "identity"):
        super().__init__()
        _choice("Coder", "init", init, CODER_INITS)
        w = torch.eye(c_out, c_in)
        if learned and init == "orthogonal":
            nn.init.orthogonal_(w)
        self.learned = learned
        if learned:
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", w)

    def extra_repr(self) -> str:
        return f"c_in={self.weight.shape[1]}, c_out={self.weight.shape[0]}, learned={self.learned}"


class PNNHLayer(nn.Module):
    """One plain layer ``s -> ReLU(W s)`` on the state ``s = [h | p | q]`` (channel axis 1).

    Args:
        l_in, c_in: learner and code channels of the input state (c_in = 0: no code).
        l_out, c_out: the same for the output state.
        spatial: conv form (NCHW) if True, MLP form (N, D) otherwise.
        kernel: learner kernel size (conv form).
        coder: the (possibly shared) :class:`Coder` mapping c_in -> c_out code channels; None iff c_out == 0.
        write_back, norm: see the module docstring. ``downsample``: None, ``avgpool`` or ``stride``.
        zero_init_write: start D_l at 0.
    """

    def __init__(self, l_in: int, c_in: int, l_out: int, c_out: int, *, spatial: bool, kernel: int = 3,
                 coder: Coder | None = None, write_back: str = "1x1", norm: str = "learner",
                 downsample: str | None = None, zero_init_write: bool = True):
        super().__init__()
        _choice("PNNHLayer", "write_back", write_back, WRITE_BACKS)
        _choice("PNNHLayer", "norm", norm, NORMS)
        if (coder is None) != (c_out == 0):
            raise ValueError("PNNHLayer: a coder is needed exactly when the output has code channels (c_out > 0)")
        if coder is not None and tuple(coder.weight.shape) != (c_out, c_in):
            raise ValueError(f"PNNHLayer: coder has shape {tuple(coder.weight.shape)}, this layer needs "
                             f"({c_out}, {c_in})")
        if downsample is not None and not spatial:
            raise ValueError("PNNHLayer: downsampling exists only in the conv form")
        self.l_in, self.c_in, self.l_out, self.c_out = l_in, c_in, l_out, c_out
        self.spatial, self.kernel, self.norm_mode = spatial, kernel, norm
        self.downsample = downsample
        self.stride = 2 if downsample == "stride" else 1
        self.write_back = write_back if c_out else "none"
        self.coder = coder
        u = l_in + c_in
        k = kernel if spatial else 1
        bias = norm == "none"  # a norm's shift replaces the learner bias; the code never has a bias
        self.learner = (nn.Conv2d(u, l_out, k, stride=self.stride, padding=k // 2, bias=bias) if spatial
                        else nn.Linear(u, l_out, bias=bias))
        self.write = None
        if self.write_back != "none":
            kw = kernel if (spatial and write_back == "full") else 1
            self.write = nn.Parameter(torch.empty(c_out, l_in, kw, kw) if spatial else torch.empty(c_out, l_in))
        self.norm_h = _norm(norm != "none", l_out, spatial)
        self.norm_c = _norm(norm == "all" and c_out > 0, c_out, spatial)
        self.act = nn.ReLU()  # a module, so diagnostics can hook the pre-activation
        self.reset_parameters(zero_init_write)

    def reset_parameters(self, zero_init_write: bool = True) -> None:
        if self.spatial:  # as reslab's ResNet: He normal, fan_out
            nn.init.kaiming_normal_(self.learner.weight, mode="fan_out", nonlinearity="relu")
        else:  # He normal, fan_in: the setting of the paper's Theorem 3.2
            nn.init.kaiming_normal_(self.learner.weight, mode="fan_in", nonlinearity="relu")
        if self.learner.bias is not None:
            nn.init.zeros_(self.learner.bias)
        if self.write is not None:
            if zero_init_write:
                nn.init.zeros_(self.write)
            else:
                nn.init.kaiming_normal_(self.write, mode="fan_in", nonlinearity="relu")

    # -- pieces ----------------------------------------------------------------------------------
    def decode(self, s: Tensor) -> Tensor:
        """u = [h; p - q]: the learner features and the carried signal (the [I 0 0; 0 I -I] part of W)."""
        if s.shape[1] != self.l_in + 2 * self.c_in:
            raise ValueError(f"PNNHLayer expects a state with {self.l_in} + 2x{self.c_in} channels on axis 1, "
                             f"got shape {tuple(s.shape)}")
        if not self.c_in:
            return s
        h, p, q = s.split([self.l_in, self.c_in, self.c_in], dim=1)
        return torch.cat([h, p - q], dim=1)

    def code_weight(self) -> Tensor:
        """The weight [D_l | C] of the code rows, applied to u = [h; p - q] ([0 | C] without write-back);
        in the conv form at the learner's kernel size (the 1x1 maps sit on the centre tap)."""
        c = self.coder.weight
        d = self.write
        if d is None:
            d = c.new_zeros((self.c_out, self.l_in) + ((1, 1) if self.spatial else ()))
        if self.spatial:
            c = c[:, :, None, None]
            if d.shape[-1] < self.kernel:  # a 1x1 map is the centre tap of a k x k kernel
                d = F.pad(d, [self.kernel // 2] * 4)
            if self.kernel > 1:
                c = F.pad(c, [self.kernel // 2] * 4)
        return torch.cat([d, c], dim=1)

    def forward(self, s: Tensor) -> Tensor:
        u = self.decode(s)
        if self.downsample == "avgpool":
            u = F.avg_pool2d(u, 2, ceil_mode=True)  # linear, so p - q is pooled exactly
        # learner rows and code rows in ONE conv / matmul: the layer is literally one map, then one ReLU
        w, b = self.learner.weight, self.learner.bias
        if self.c_out:
            w = torch.cat([w, self.code_weight()], dim=0)
            b = torch.cat([b, b.new_zeros(self.c_out)]) if b is not None else None
        if self.spatial:
            z = F.conv2d(u, w, b, stride=self.stride, padding=self.kernel // 2)
        else:
            z = F.linear(u, w, b)
        if not self.c_out:
            return self.act(self.norm_h(z))
        z_h, z_c = z.split([self.l_out, self.c_out], dim=1)
        z_h, z_c = self.norm_h(z_h), self.norm_c(z_c)
        return self.act(torch.cat([z_h, z_c, -z_c], dim=1))

    def dense_matrix(self) -> tuple[Tensor, Tensor]:
        """MLP form without norms: ``(W, b)`` with ``layer(s) == ReLU(s @ W.T + b)``, W assembled
        block by block as in the module docstring -- the proof that the layer is one linear map."""
        if self.spatial or self.norm_mode != "none":
            raise ValueError("dense_matrix: only for the MLP form with norm='none'")
        A_B = self.learner.weight
        A, B = A_B[:, :self.l_in], A_B[:, self.l_in:]
        rows = [torch.cat([A, B, -B], dim=1)]
        if self.c_out:
            D = self.write if self.write is not None else A.new_zeros(self.c_out, self.l_in)
            C = self.coder.weight
            rows += [torch.cat([D, C, -C], dim=1), torch.cat([-D, -C, C], dim=1)]
        b = self.learner.bias if self.learner.bias is not None else A.new_zeros(self.l_out)
        return torch.cat(rows, dim=0), torch.cat([b, b.new_zeros(2 * self.c_out)])

    def extra_repr(self) -> str:
        return (f"state {self.l_in}+2x{self.c_in} -> {self.l_out}+2x{self.c_out}, write_back={self.write_back!r}, "
                f"downsample={self.downsample!r}")


def _norm(on: bool, ch: int, spatial: bool) -> nn.Module:
    if not on or ch == 0:
        return nn.Identity()
    return nn.BatchNorm2d(ch) if spatial else nn.LayerNorm(ch)


class _Stem(nn.Module):
    """x -> ReLU([N(E_h x); N(E_c x); -N(E_c x)]): the first state. The stem's norm (when ``norm`` is
    not ``none``) normalises the code once before the internal path begins; the ReLU keeps E_c x
    exactly (as p - q)."""

    def __init__(self, d_in: int, l_out: int, c_out: int, spatial: bool, norm: str):
        super().__init__()
        self.l_out, self.c_out = l_out, c_out
        on = norm != "none"
        self.map = (nn.Conv2d(d_in, l_out + c_out, 3, padding=1, bias=not on) if spatial
                    else nn.Linear(d_in, l_out + c_out, bias=not on))
        self.norm = _norm(on, l_out + c_out, spatial) if spatial else _norm(on, l_out, spatial)
        self.norm_c = nn.Identity() if (spatial or not on or not c_out) else nn.LayerNorm(c_out)
        self.act = nn.ReLU()
        mode = "fan_out" if spatial else "fan_in"
        nn.init.kaiming_normal_(self.map.weight, mode=mode, nonlinearity="relu")
        if self.map.bias is not None:
            nn.init.zeros_(self.map.bias)

    def forward(self, x: Tensor) -> Tensor:
        z = self.map(x)
        if isinstance(self.norm, nn.BatchNorm2d):  # channels are independent in BN: one call for both parts
            z = self.norm(z)
            z_h, z_c = z.split([self.l_out, self.c_out], dim=1)
        else:
            z_h, z_c = z.split([self.l_out, self.c_out], dim=1)
            z_h, z_c = self.norm(z_h), self.norm_c(z_c)
        if not self.c_out:
            return self.act(z_h)
        return self.act(torch.cat([z_h, z_c, -z_c], dim=1))


def _check_common(model: str, coder, code_width, norm, write_back, coder_init) -> None:
    _choice(model, "coder", coder, CODERS)
    _choice(model, "norm", norm, NORMS)
    _choice(model, "write_back", write_back, WRITE_BACKS)
    _choice(model, "coder_init", coder_init, CODER_INITS)
    if isinstance(code_width, bool) or not isinstance(code_width, (int, float)) or not 0 < code_width <= 4:
        raise ValueError(f"{model}: code_width must be a number in (0, 4] (code channels per learner channel), "
                         f"got {code_width!r}; use coder='none' for no code")


class _PNNHBase(nn.Module):
    """What every PNNH form offers the diagnostics: its per-layer modules, its coders, the code of a state."""

    def diagnostic_layers(self) -> list[nn.Module]:
        """Modules whose outputs are the states after the stem and after each layer (depth order); each
        holds exactly one ``nn.ReLU`` whose input is that layer's pre-activation."""
        return [self.stem, *self.layers]

    def coders(self) -> list[Coder]:
        """Distinct coder modules (a shared coder appears once)."""
        seen, out = set(), []
        for layer in self.layers:
            if layer.coder is not None and id(layer.coder) not in seen:
                seen.add(id(layer.coder))
                out.append(layer.coder)
        return out

    def num_parameters(self) -> int:
        """Trainable parameters; a shared coder counts once (``parameters()`` deduplicates)."""
        return sum(p.numel() for p in self.parameters())

    def code(self, s: Tensor, layer: int = -1) -> Tensor:
        """The carried signal p - q of a state produced by ``diagnostic_layers()[layer]`` (MLP/CNN states:
        channels on axis 1)."""
        mods = self.diagnostic_layers()
        c = mods[layer].c_out
        l = s.shape[1] - 2 * c
        return s[:, l:l + c] - s[:, l + c:]


def _make_coder(mode: str, c_in: int, c_out: int, init: str) -> Coder | None:
    if mode == "none" or c_out == 0:
        return None
    return Coder(c_in, c_out, learned=mode != "fixed", init=init)


class PNNHMLP(_PNNHBase):
    """MLP form. ``forward(x: (B, in_dim) or (B, ...) with flatten_input) -> (B, out_dim)``.

    stem (x -> state) -> ``n_layers`` PNNH layers (one shared coder with ``coder='shared'``) ->
    linear head on the whole state. Learner width ``width``, code width ``round(code_width*width)``;
    ``coder='none'`` gives a plain ReLU MLP whose layers have the state width width + 2 c_C.
    LayerNorm is the norm of the MLP form (``norm``)."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 128, n_layers: int = 8, coder: str = "shared",
                 code_width: float = 0.5, norm: str = "learner", write_back: str = "1x1",
                 coder_init: str = "identity", zero_init_write: bool = True, flatten_input: bool = False):
        super().__init__()
        for k, v in (("in_dim", in_dim), ("out_dim", out_dim), ("width", width), ("n_layers", n_layers)):
            _positive_int("PNNHMLP", k, v)
        _check_common("PNNHMLP", coder, code_width, norm, write_back, coder_init)
        if write_back == "full":
            raise ValueError("PNNHMLP: write_back='full' is the conv form's kernel-sized write-back; "
                             "use '1x1' (a linear D) or 'none'")
        self.in_dim, self.flatten_input, self.coder_mode = in_dim, flatten_input, coder
        c = code_channels(width, code_width)
        l = width
        if coder == "none":
            l, c = width + 2 * c, 0
        self.learner_width, self.code_width_ch = l, c
        self.stem = _Stem(in_dim, l, c, spatial=False, norm=norm)
        shared = _make_coder(coder, c, c, coder_init) if coder in ("fixed", "shared") else None
        layers = []
        for _ in range(n_layers):
            cod = shared if coder in ("fixed", "shared") else _make_coder(coder, c, c, coder_init)
            layers.append(PNNHLayer(l, c, l, c, spatial=False, coder=cod, write_back=write_back, norm=norm,
                                    zero_init_write=zero_init_write))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(l + 2 * c, out_dim)

    def features(self, x: Tensor) -> Tensor:
        if self.flatten_input:
            x = x.flatten(1)
        if x.ndim != 2 or x.shape[-1] != self.in_dim:
            hint = "" if self.flatten_input else "; use flatten_input=True for images"
            raise ValueError(f"PNNHMLP expects (B, {self.in_dim}) inputs, got shape {tuple(x.shape)}{hint}")
        s = self.stem(x)
        for layer in self.layers:
            s = layer(s)
        return s

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def pnnh_layers_per_stage(depth: int) -> int:
    """Layers per stage n for a PNNH CNN of ``depth`` weighted layers = 1 (stem) + 3n + 1 (head)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 5 or (depth - 2) % 3:
        lo = 3 * max(1, (int(depth) - 2) // 3) + 2 if isinstance(depth, (int, float)) and depth >= 5 else 5
        raise ValueError(f"PNNHCNN depth must be 3n+2 with n >= 1 (1 stem + 3 stages of n layers + 1 head; "
                         f"e.g. 8, 20, 32, 56 -- the ResNet depths 6n+2 all qualify), got {depth!r}; nearest: "
                         f"{lo} or {lo + 3}")
    return (depth - 2) // 3


class PNNHCNN(_PNNHBase):
    """CNN form, CIFAR-ResNet-shaped: ``forward(x: (B, C, H, W)) -> logits``.

    3x3 stem -> three stages of n = (depth - 2)/3 PNNH layers at learner widths 16/32/64 (times
    ``width``) and code widths ``code_width`` times those -> global average pool of the whole state
    -> linear head. ``depth`` counts weighted layers exactly as ResNet-``depth`` does (one conv per
    layer), so PNNH-20 has as many layers as ResNet-20. The first layer of stages 2 and 3
    downsamples both paths (``downsample``) and widens the code through its transition coder.
    With ``coder='shared'`` the other n-1 (stage 1: n) layers of a stage hold one Coder."""

    def __init__(self, depth: int = 20, width: float = 1, in_channels: int = 3, n_classes: int = 10,
                 coder: str = "shared", code_width: float = 0.5, norm: str = "learner", write_back: str = "1x1",
                 downsample: str = "avgpool", coder_init: str = "identity", zero_init_write: bool = True,
                 kernel: int = 3):
        super().__init__()
        n = pnnh_layers_per_stage(depth)
        _check_common("PNNHCNN", coder, code_width, norm, write_back, coder_init)
        _choice("PNNHCNN", "downsample", downsample, DOWNSAMPLES)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"PNNHCNN: width must be a positive number (multiplier of 16/32/64), got {width!r}")
        _positive_int("PNNHCNN", "in_channels", in_channels)
        _positive_int("PNNHCNN", "n_classes", n_classes)
        if kernel not in (1, 3, 5, 7):
            raise ValueError(f"PNNHCNN: kernel must be 1, 3, 5 or 7, got {kernel!r}")
        self.depth, self.coder_mode = depth, coder
        learners = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        codes = [code_channels(l, code_width) for l in learners]
        if coder == "none":
            learners, codes = [l + 2 * c for l, c in zip(learners, codes)], [0, 0, 0]
        self.widths = list(zip(learners, codes))
        self.stem = _Stem(in_channels, learners[0], codes[0], spatial=True, norm=norm)
        layers = []
        l_prev, c_prev = learners[0], codes[0]
        for s, (l, c) in enumerate(zip(learners, codes)):
            shared = _make_coder(coder, c, c, coder_init) if coder in ("fixed", "shared") else None
            for i in range(n):
                first = s > 0 and i == 0
                if first:  # the transition coder c_prev -> c, one per stage change in every mode
                    cod = _make_coder(coder, c_prev, c, coder_init)
                else:
                    cod = shared if coder in ("fixed", "shared") else _make_coder(coder, c, c, coder_init)
                layers.append(PNNHLayer(l_prev, c_prev, l, c, spatial=True, kernel=kernel, coder=cod,
                                        write_back=write_back, norm=norm, downsample=downsample if first else None,
                                        zero_init_write=zero_init_write))
                l_prev, c_prev = l, c
        self.layers = nn.ModuleList(layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(l_prev + 2 * c_prev, n_classes)

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"PNNHCNN expects images (B, C, H, W), got shape {tuple(x.shape)}")
        s = self.stem(x)
        for layer in self.layers:
            s = layer(s)
        return s

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))


# ------------------------------------------------------------------------------------ Transformer form

class _PNNHAttentionLayer(nn.Module):
    """Transformer attention layer, plain: ``s -> ReLU([W_o MHA(LN(u)); C(p - q); -C(p - q)])``.

    The learner rows are attention (not a linear map: our Transformer form cannot be "one linear map
    + ReLU" everywhere); the code rows carry the code only. The attention output is written into the
    code by the *next* layer's linear write-back, so no tensor is ever code + f(code) with f
    non-linear (that would be ReLU(x + f(x)), the post-activation residual)."""

    def __init__(self, l_in: int, c: int, l_out: int, n_head: int, coder: Coder, rotary: nn.Module | None,
                 causal: bool = True):
        super().__init__()
        self.rotary = rotary  # shared RoPE tables (buffers only), as in reslab's GPT; None: positions come in
        self.causal = causal  # with the embedding (the ViT form) and attention is bidirectional
        self.l_in, self.c, self.l_out, self.n_head = l_in, c, l_out, n_head
        self.c_out = c
        self.coder = coder
        self.norm = nn.LayerNorm(l_in + c)
        self.qkv = nn.Linear(l_in + c, 3 * l_out, bias=False)
        self.proj = nn.Linear(l_out, l_out, bias=False)
        self.act = nn.ReLU()

    def forward(self, s: Tensor) -> Tensor:
        B, T, _ = s.shape
        h, p, q = s.split([self.l_in, self.c, self.c], dim=-1)
        dec = p - q
        qkv = self.qkv(self.norm(torch.cat([h, dec], dim=-1)))
        qh, kh, vh = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in qkv.split(self.l_out, dim=-1))
        if self.rotary is not None:
            qh, kh = self.rotary(qh), self.rotary(kh)
        a = F.scaled_dot_product_attention(qh, kh, vh, is_causal=self.causal).transpose(1, 2).reshape(B, T, self.l_out)
        z_c = F.linear(dec, self.coder.weight)
        return self.act(torch.cat([self.proj(a), z_c, -z_c], dim=-1))


class _PNNHTokenLayer(nn.Module):
    """Position-wise plain layer: ``ReLU([A LN(u); D h + C(p - q); -(D h + C(p - q))])`` -- the MLP
    sublayers; D writes the previous learner output (attention or MLP hidden) into the code."""

    def __init__(self, l_in: int, c: int, l_out: int, coder: Coder, zero_init_write: bool):
        super().__init__()
        self.l_in, self.c, self.c_out, self.coder = l_in, c, c, coder
        self.norm = nn.LayerNorm(l_in + c)
        self.learner = nn.Linear(l_in + c, l_out)
        self.write = nn.Parameter(torch.zeros(c, l_in))
        if not zero_init_write:
            nn.init.normal_(self.write, std=0.02)
        self.act = nn.ReLU()

    def forward(self, s: Tensor) -> Tensor:
        h, p, q = s.split([self.l_in, self.c, self.c], dim=-1)
        u = torch.cat([h, p - q], dim=-1)
        z_c = F.linear(u, torch.cat([self.write, self.coder.weight], dim=1))
        return self.act(torch.cat([self.learner(self.norm(u)), z_c, -z_c], dim=-1))


def _transformer_layers(n_layer: int, n_head: int, d_model: int, c: int, mlp_ratio: int, coder: str,
                        coder_init: str, zero_init_write: bool, rotary: nn.Module | None, causal: bool) -> nn.ModuleList:
    """The plain layer stack of the Transformer forms: per block [attention, MLP up, MLP down], then one
    position-wise layer that writes the last block's output into the code (see :class:`PNNHGPT`)."""
    hid = mlp_ratio * d_model
    shared = Coder(c, c, learned=coder != "fixed", init=coder_init) if coder != "unshared" else None

    def cod() -> Coder:
        return shared if shared is not None else Coder(c, c, learned=True, init=coder_init)

    layers: list[nn.Module] = []
    for _ in range(n_layer):
        layers += [_PNNHAttentionLayer(d_model, c, d_model, n_head, cod(), rotary, causal=causal),
                   _PNNHTokenLayer(d_model, c, hid, cod(), zero_init_write),
                   _PNNHTokenLayer(hid, c, d_model, cod(), zero_init_write)]
    layers.append(_PNNHTokenLayer(d_model, c, d_model, cod(), zero_init_write))
    return nn.ModuleList(layers)


def _normal_init(model: nn.Module) -> None:
    """GPT-2 style: every linear / embedding weight ~ N(0, 0.02), biases 0 (the coders keep their identity
    init: they are Coder parameters, not nn.Linear)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class _PNNHTransformer(_PNNHBase):
    """What the Transformer forms share: option checks, the sign-split embedding and the read-out."""

    @staticmethod
    def _checked_code_width(model: str, ints: dict, n_head: int, d_model: int, d_code: int | None, coder: str,
                            coder_init: str) -> int:
        """Validate the common options (``ints``: name -> value that must be a positive int); return the
        code width (``d_code``, default ``d_model``)."""
        for k, v in ints.items():
            _positive_int(model, k, v)
        _choice(model, "coder", coder, ("fixed", "shared", "unshared"))
        _choice(model, "coder_init", coder_init, CODER_INITS)
        if d_model % n_head:
            raise ValueError(f"{model}: d_model={d_model} is not divisible by n_head={n_head}")
        c = d_code if d_code is not None else d_model
        _positive_int(model, "d_code", c)
        return c

    def diagnostic_layers(self) -> list[nn.Module]:
        return list(self.layers)

    def _run(self, e: Tensor) -> Tensor:
        """Embedded tokens e = [h | code] (pre-activation) -> LN([h; p - q]) after the plain layer stack."""
        h, code = e.split([self.d_model, self.d_code], dim=-1)
        s = torch.cat([self.embed_act(h), self.embed_act(code), self.embed_act(-code)], dim=-1)
        for layer in self.layers:
            s = layer(s)
        h, p, q = s.split([self.d_model, self.d_code, self.d_code], dim=-1)
        return self.norm(torch.cat([h, p - q], dim=-1))


class PNNHGPT(_PNNHTransformer):
    """Transformer form (an attempt; see docs/pnnh.md for how it trained). Char-LM:
    ``forward(idx: (B, T)) -> logits (B, T, vocab)``.

    Token state [h | p | q] with code width ``d_code`` (the analogue of the residual stream) and
    learner width ``d_model``. Each block is three plain ReLU layers; every layer's learner reads
    u = [h; p - q] through a LayerNorm, every write-back D is linear and writes the *previous*
    layer's learner output, and the coder rows are never normalised (code = p - q)::

        attention:  h1 = ReLU(W_o MHA(LN(u)))            code <- C code
        mlp up:     h2 = ReLU(W_1 LN([h1; code]))         code <- C code + D_1 h1     (hidden mlp_ratio*d)
        mlp down:   h3 = ReLU(W_2 LN([h2; code]))         code <- C code + D_2 h2     (D_2 plays W_down)

    A final position-wise layer writes the last h3 (code <- C code + D h3); the head reads
    LN([h; p - q]). Positions: rotary embeddings in attention (as reslab's GPT). ``coder``: fixed |
    shared (one C for the whole stack) | unshared. Compared with a pre-LN residual Transformer, the
    attention and MLP outputs reach the code through one extra ReLU and an extra linear map (D), one
    layer later."""

    def __init__(self, vocab_size: int, block_size: int = 128, n_layer: int = 4, n_head: int = 4,
                 d_model: int = 128, d_code: int | None = None, mlp_ratio: int = 4, coder: str = "shared",
                 coder_init: str = "identity", zero_init_write: bool = True):
        super().__init__()
        c = self._checked_code_width("PNNHGPT", {"vocab_size": vocab_size, "block_size": block_size,
                                                 "n_layer": n_layer, "n_head": n_head, "d_model": d_model,
                                                 "mlp_ratio": mlp_ratio}, n_head, d_model, d_code, coder, coder_init)
        self.block_size, self.d_model, self.d_code = block_size, d_model, c
        if (d_model // n_head) % 2:
            raise ValueError(f"PNNHGPT: head size d_model/n_head={d_model // n_head} must be even for rotary "
                             "embeddings; change d_model or n_head")
        from .gpt import Rotary

        self.rotary = Rotary(d_model // n_head, block_size)
        self.wte = nn.Embedding(vocab_size, d_model + c)
        self.embed_act = nn.ReLU()
        self.layers = _transformer_layers(n_layer, n_head, d_model, c, mlp_ratio, coder, coder_init, zero_init_write,
                                          self.rotary, causal=True)
        self.norm = nn.LayerNorm(d_model + c)
        self.lm_head = nn.Linear(d_model + c, vocab_size, bias=False)
        _normal_init(self)

    def forward(self, idx: Tensor) -> Tensor:
        if idx.ndim != 2:
            raise ValueError(f"PNNHGPT expects token ids (B, T), got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.block_size}")
        return self.lm_head(self._run(self.wte(idx)))


class PNNHViT(_PNNHTransformer):
    """Vision-Transformer form: the layer stack of :class:`PNNHGPT` with bidirectional attention, on
    patch tokens. ``forward(x: (B, C, H, W)) -> logits (B, n_classes)``.

    Embedding: a P x P patch projection to ``d_model + d_code`` channels plus a learned position table
    (ViT's choice; positions are added to the projection *before* the first ReLU, so no state is ever
    added to a function of itself), then ``[ReLU(h); ReLU(code); ReLU(-code)]``. The head reads
    LN([h; p - q]) averaged over the tokens (mean pooling, no class token). ``d_code`` defaults to
    ``d_model``. Against a residual ViT of width ``d_code`` (the code plays the residual stream), a
    learner of half that width has ~16 % fewer parameters (6 x 64: 255,978 vs 305,034) and one of 36 about
    as many (297,046): vit-compare picks the width by counting (``matched_learner_width``). Our reconstruction, like every PNNH model here."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, n_classes: int = 10, patch_size: int = 7,
                 n_layer: int = 6, n_head: int = 4, d_model: int = 64, d_code: int | None = None,
                 mlp_ratio: int = 4, coder: str = "shared", coder_init: str = "identity",
                 zero_init_write: bool = True):
        super().__init__()
        from .vit import patch_grid

        c = self._checked_code_width("PNNHViT", {"in_channels": in_channels, "n_classes": n_classes,
                                                 "n_layer": n_layer, "n_head": n_head, "d_model": d_model,
                                                 "mlp_ratio": mlp_ratio}, n_head, d_model, d_code, coder, coder_init)
        grid = patch_grid(image_size, patch_size, "PNNHViT")
        self.image_size, self.d_model, self.d_code = image_size, d_model, c
        self.patch_embed = nn.Conv2d(in_channels, d_model + c, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, d_model + c))
        self.embed_act = nn.ReLU()
        self.layers = _transformer_layers(n_layer, n_head, d_model, c, mlp_ratio, coder, coder_init, zero_init_write,
                                          None, causal=False)
        self.norm = nn.LayerNorm(d_model + c)
        self.head = nn.Linear(d_model + c, n_classes)
        _normal_init(self)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"PNNHViT expects images (B, C, {self.image_size}, {self.image_size}), got "
                             f"{tuple(x.shape)}; build it with image_size matching the task (task option resize)")
        return self.head(self._run(self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed).mean(dim=1))


# ------------------------------------------------------------------------------- build_model entry points

#: connection specs a PNNH model accepts from the trainer: it has no connection (every layer is plain by
#: construction); "residual" is TrainConfig's default and is accepted so that ``reslab train --model pnnh_cnn``
#: works without flags -- it does NOT add anything. Variants are chosen with ``model.coder=...``.
ACCEPTED_CONNECTIONS = ("plain", "residual")


def _builder_checks(model: str, cls: type, connection, kwargs: dict, exclude: set[str]) -> None:
    import difflib
    import inspect

    spec = connection if isinstance(connection, str) else getattr(connection, "spec", repr(connection))
    if spec.strip() not in ACCEPTED_CONNECTIONS:
        raise ValueError(f"model {model!r} is a PNNH net: plain by construction, with no Connection (its state "
                         f"[h | p | q] changes width), so connection={spec!r} cannot apply. Use connection 'plain' "
                         f"(or leave the default) and pick the variant with model.coder=fixed|shared|unshared|none")
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in exclude | {"self"}]
    for k in kwargs:
        if k not in valid:
            ranked = ", ".join(difflib.get_close_matches(k, valid, n=len(valid), cutoff=0.0))
            raise ValueError(f"model {model!r}: unknown option {k!r}; valid: {ranked}")


def build_pnnh_mlp(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_mlp", ...)``: vector tasks (in_dim/out_dim) or images (flattened)."""
    _builder_checks("pnnh_mlp", PNNHMLP, connection, kwargs, {"in_dim", "out_dim"})
    in_dim, out_dim = vector_io(task_info, "pnnh_mlp", kwargs)
    return PNNHMLP(in_dim=in_dim, out_dim=out_dim, **kwargs)


def build_pnnh_cnn(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_cnn", ...)``: image classification, input_shape (C, H, W) or (H, W)."""
    _builder_checks("pnnh_cnn", PNNHCNN, connection, kwargs, {"in_channels", "n_classes"})
    shape = tuple(need(task_info, "input_shape", "pnnh_cnn", "an image-classification task"))
    if len(shape) not in (2, 3):
        raise ValueError(f"model 'pnnh_cnn' needs images, input_shape (C, H, W) or (H, W); got {shape}; "
                         "use model 'pnnh_mlp' for vector inputs")
    n_classes = need(task_info, "n_classes", "pnnh_cnn", "a classification task")
    return PNNHCNN(in_channels=shape[0] if len(shape) == 3 else 1, n_classes=int(n_classes), **kwargs)


def build_pnnh_gpt(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_gpt", ...)``: language modelling (vocab_size, block_size)."""
    _builder_checks("pnnh_gpt", PNNHGPT, connection, kwargs, {"vocab_size"})
    vocab = need(task_info, "vocab_size", "pnnh_gpt", "a language-modelling task")
    if "block_size" not in kwargs:
        kwargs["block_size"] = need(task_info, "block_size", "pnnh_gpt", "or pass block_size=...")
    return PNNHGPT(vocab_size=int(vocab), **kwargs)


def build_pnnh_vit(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_vit", ...)``: image classification with square images, input_shape (C, H, H)."""
    _builder_checks("pnnh_vit", PNNHViT, connection, kwargs, {"image_size", "in_channels", "n_classes"})
    shape = tuple(need(task_info, "input_shape", "pnnh_vit", "an image-classification task"))
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"model 'pnnh_vit' needs square images, input_shape (C, H, H); got {shape}")
    n_classes = need(task_info, "n_classes", "pnnh_vit", "a classification task")
    return PNNHViT(image_size=shape[-1], in_channels=shape[0], n_classes=int(n_classes), **kwargs)


#: what reslab.models.build_model registers
BUILDERS = {"pnnh_mlp": build_pnnh_mlp, "pnnh_cnn": build_pnnh_cnn, "pnnh_gpt": build_pnnh_gpt,
            "pnnh_vit": build_pnnh_vit}


# ------------------------------------------------------------------------ the structural (graph) check

#: element-wise activations: the non-linearities that define a "layer" of a plain net
ACTIVATIONS = frozenset({"relu", "relu_", "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_", "sigmoid", "sigmoid_",
                         "leaky_relu", "leaky_relu_", "elu", "elu_", "hardtanh", "hardtanh_", "softplus",
                         "threshold", "threshold_", "mish", "hardswish"})
#: ops that only select or re-shape data: a value that is a view of t is "t itself" for the skip test
VIEWS = frozenset({"view", "_unsafe_view", "reshape", "slice", "select", "split", "split_with_sizes", "transpose",
                   "permute", "expand", "unsqueeze", "squeeze", "t", "alias", "clone", "contiguous", "detach",
                   "unbind", "chunk", "narrow", "flatten", "getitem"})
#: ops that add (or subtract) tensors; addmm/baddbmm add their first operand
ADDS = frozenset({"add", "add_", "sub", "sub_", "rsub", "addmm", "baddbmm", "addcmul", "addcdiv"})


def _op_name(node) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    if t in (operator.add, operator.iadd):
        return "add"
    if t in (operator.sub, operator.isub):
        return "sub"
    name = getattr(t, "__name__", str(t))
    packet = getattr(t, "overloadpacket", None)
    if packet is not None:
        name = packet.__name__
    return name.split(".")[0]


def skip_add_report(model: nn.Module, example: Tensor) -> dict:
    """Trace ``model(example)`` to an aten graph (``torch.fx`` via ``make_fx``, real values, eval mode)
    and check the defining property of a plain net on it:

    - ``skip_adds``: add/sub nodes one of whose operands is (a view of) a tensor t while the other is
      computed *from* t through at least one non-view op -- i.e. ``t + f(t)``, a skip connection
      (ResNet's ``x + F(x)``, and also ``ReLU(x + W x)`` with a linear branch). PNNH's decode
      ``p - q`` subtracts two views of one state and is not one.
    - ``mixed_depth``: nodes reached from the input along paths that cross *different numbers of
      activations* (:data:`ACTIVATIONS`). In a plain net every path crosses every layer's ReLU, so
      each tensor has one depth; any shortcut around a non-linearity shows up here.

    Returns ``{"plain": bool, "skip_adds": [...], "mixed_depth": [...], "n_nodes", "n_activations",
    "depth": max activations on a path}``; ``plain`` is True iff both lists are empty. The model's
    training mode is restored afterwards."""
    from torch.fx.experimental.proxy_tensor import make_fx

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            gm = make_fx(lambda x: model(x))(example)
    finally:
        model.train(was_training)

    depth: dict = {}  # node -> set of activation counts along paths from the input (absent: not reached)
    root: dict = {}  # node -> the node it is a view of (itself if not a view)
    ancestors: dict = {}  # node -> set of reached nodes it is computed from through >= 1 non-view op
    skip_adds, mixed = [], []
    n_act = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            depth[node], root[node], ancestors[node] = {0}, node, set()
            continue
        if node.op != "call_function":
            continue
        ins = [a for a in node.all_input_nodes if a in depth]
        if not ins:
            continue
        name = _op_name(node)
        d = set().union(*(depth[a] for a in ins))
        if name in ACTIVATIONS:
            d = {k + 1 for k in d}
            n_act += 1
        depth[node] = d
        if len(d) > 1:
            mixed.append(f"{node.name} ({name}): paths cross {sorted(d)} activations")
        if name in VIEWS and len(ins) == 1:
            root[node] = root[ins[0]]
            ancestors[node] = ancestors[ins[0]]
        else:
            root[node] = node
            anc = set()
            for a in ins:
                anc |= ancestors[a] | {a, root[a]}
            ancestors[node] = anc
        if name in ADDS and len(ins) >= 2:
            for a in ins:
                for b in ins:
                    if a is not b and root[a] is not root[b] and root[a] in ancestors[b]:
                        skip_adds.append(f"{node.name} ({name}): {a.name} + f({a.name}) via {b.name}")
    return {"plain": not skip_adds and not mixed, "skip_adds": skip_adds, "mixed_depth": mixed,
            "n_nodes": len(gm.graph.nodes), "n_activations": n_act,
            "depth": max((max(v) for v in depth.values()), default=0)}


__all__ = ["BUILDERS", "CODERS", "Coder", "PNNHCNN", "PNNHGPT", "PNNHLayer", "PNNHMLP", "code_channels",
           "pnnh_layers_per_stage", "skip_add_report"]
