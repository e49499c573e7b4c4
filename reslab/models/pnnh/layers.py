"""PNNH's building blocks: the coder, the plain layer on the state [h | p | q], the stem, the forms' base.

Paper: Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning" (arXiv:2402.08645). The block
is OUR RECONSTRUCTION (the paper's is not public; docs/pnnh.md lists what it states and what we chose).

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
(``reslab.analysis.graph.skip_add_report`` checks both on the traced graph). This is the precise sense
(our reading, not the paper's words) in which a ResNet is a plain net whose weights contain a layer-shared
coder.

How we compute it. The map above applied literally convolves the 2 c_C code channels twice; we
compute the same map as ``u = [h; p - q]`` (the [I 0 0; 0 I -I] part, linear), then ONE conv (MLP:
one matmul) of u with the stacked weight [[A | B], [D | C]] (the 1x1 D and C sit on the centre tap of
the learner's k x k kernel), giving [z_h; z_c], then ``ReLU([N(z_h); z_c; -z_c])``: no add on
activations anywhere. ``PNNHLayer.dense_matrix`` returns the full matrix of the MLP form for checking.
(One conv per layer keeps the op count low; the zero taps cost the code rows 9x their 1x1 FLOPs.
On one CPU thread this and a two-conv version timed the same within noise.)

Options (the choices the paper leaves open):

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    def _run_layers(self, x: Tensor) -> Tensor:
        """The state after the stem and every layer (MLP and CNN forms)."""
        s = self.stem(x)
        for layer in self.layers:
            s = layer(s)
        return s

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
