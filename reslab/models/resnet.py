"""CIFAR-style ResNet (He et al. 2016, arXiv:1512.03385, section 4.2) whose depth loop belongs to
Connections -- one per stage.

Layout: 3x3 stem conv [-> BN], three stages of basic blocks at widths 16/32/64 (times ``width``),
a final ReLU, global average pooling and a linear head. ``depth = 6n + 2`` weighted layers, n basic
blocks per stage.

Where the ReLU goes. The original block is ``h <- ReLU(h + f(h))``: its post-add ReLU lies outside
every branch, so no Connection could own it. We therefore use the *ReLU-only pre-activation* block of
He et al. 2016b (Identity Mappings in Deep Residual Networks, arXiv:1603.05027, Fig. 4d): each branch
starts with the ReLU that the previous block would have applied,

    f(h) = BN(conv3x3(ReLU(BN(conv3x3(ReLU(h))))))

so with the ``residual`` connection a stage is exactly ``h <- h + f(h)``, and with ``plain`` it is
the familiar plain net conv-BN-ReLU-conv-BN-ReLU-... The stream between blocks is the un-rectified
sum; the head applies the last ReLU before pooling.

Stage changes (stride 2, channels doubling) stay in the model: the first block of stages 2 and 3 is
a :class:`Downsample` whose output is ``f(h) + proj(h)`` (proj = 1x1 stride-2 conv [+ BN], option B)
when the stage's connection ``carries_identity``, and just ``f(h)`` otherwise, so a plain net has
no shortcut anywhere. The connection of stage 1 wires n blocks; those of stages 2 and 3 wire n - 1.

Fixup (Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without Normalization",
arXiv:1901.09321) is the option ``fixup=True``: no normalisation anywhere, and every residual branch
(the 3n basic branches, the two downsampling ones included) becomes a :class:`FixupBranch`

    f(h) = s * conv2(ReLU(conv1(ReLU(h) + a1) + a2) + a3) + a4

with scalar biases a1..a4 (init 0) before each conv and activation and a scalar multiplier s (init 1)
in place of the convs' own biases and the BN affine; conv2 (the branch's last layer) and the
classifier start at zero, and conv1 is He-initialised then scaled by L^(-1/(2m-2)) = L^(-1/2) (L = 3n
residual branches, m = 2 layers per branch), so that each branch changes the output by O(η/L) per
SGD step and the whole net by Θ(η), whatever the depth (the paper's design rule). With zero last
layers every block starts as the identity, and the whole trunk as the chain of its two projection
shortcuts.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..connections import Connection
from ..connections import connection as build_connection

STAGE_WIDTHS = (16, 32, 64)


def _conv(cin: int, cout: int, k: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class BasicBranch(nn.Module):
    """f(h) = BN(conv(ReLU(BN(conv(ReLU(h)))))); without batchnorm the BNs are dropped and the convs
    get biases. The first conv has ``stride`` and maps cin -> cout."""

    def __init__(self, cin: int, cout: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU(), _conv(cin, cout, 3, stride, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        layers += [nn.ReLU(), _conv(cout, cout, 3, 1, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        # not in-place: the first ReLU reads the stream, which the connection still needs
        self.body = nn.Sequential(*layers)

    @property
    def last(self) -> nn.Module:
        """The layer zero_init_last zeroes: the last BN, or the last conv without BN."""
        return self.body[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class FixupBranch(nn.Module):
    """Fixup's residual branch (Zhang et al. 2019, arXiv:1901.09321, Fig. 1), in the ReLU-only
    pre-activation order of :class:`BasicBranch`:

        f(h) = scale * conv2(ReLU(conv1(ReLU(h) + bias1a) + bias1b) + bias2a) + bias2b

    Convs have no bias of their own: the four scalar biases (init 0) and the scalar multiplier
    ``scale`` (init 1) are Fixup's replacement for what BatchNorm's affine parameters did. The
    weights are set by :meth:`fixup_init`, called by the model once it knows L."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, bias=False)
        self.conv2 = _conv(cout, cout, 3, 1, bias=False)
        self.relu = nn.ReLU()  # not in-place: the connection still needs the stream h
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = (nn.Parameter(torch.zeros(1)) for _ in range(4))
        self.scale = nn.Parameter(torch.ones(1))

    @property
    def last(self) -> nn.Module:
        """The branch's last weighted layer, which Fixup zeroes."""
        return self.conv2

    def fixup_init(self, n_branches: int, layers_per_branch: int = 2) -> None:
        """Fixup rules 1-3: conv1 He-normal (fan_out, ReLU gain) times L^(-1/(2m-2)); conv2 zero;
        biases 0, multiplier 1. L = residual branches in the network, m = weighted layers per branch."""
        if n_branches < 1 or layers_per_branch < 2:
            raise ValueError(f"fixup_init: need L >= 1 branches and m >= 2 layers per branch, got L={n_branches}, "
                             f"m={layers_per_branch}")
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        with torch.no_grad():
            self.conv1.weight.mul_(n_branches ** (-1.0 / (2 * layers_per_branch - 2)))
        nn.init.zeros_(self.conv2.weight)
        with torch.no_grad():
            for b in (self.bias1a, self.bias1b, self.bias2a, self.bias2b):
                b.zero_()
            self.scale.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(x) + self.bias1a)
        out = self.conv2(self.relu(out + self.bias1b) + self.bias2a)
        return out * self.scale + self.bias2b


class Downsample(nn.Module):
    """First block of a stage that halves the resolution and changes the width:
    ``f(h) + proj(h)`` if ``shortcut`` else ``f(h)``. With ``fixup`` the branch is a
    :class:`FixupBranch` (and ``batchnorm`` must be False)."""

    def __init__(self, cin: int, cout: int, batchnorm: bool, shortcut: bool, fixup: bool = False):
        super().__init__()
        if fixup and batchnorm:
            raise ValueError("Downsample: fixup=True replaces normalisation; pass batchnorm=False")
        self.branch = FixupBranch(cin, cout, stride=2) if fixup else BasicBranch(cin, cout, stride=2,
                                                                                   batchnorm=batchnorm)
        self.proj = None
        if shortcut:
            layers = [_conv(cin, cout, 1, 2, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        return out + self.proj(x) if self.proj is not None else out


def valid_depth(depth: int) -> int:
    """Blocks per stage n for ``depth = 6n + 2``; ValueError otherwise."""
    if isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0:
        return (depth - 2) // 6
    hint = ""
    if isinstance(depth, (int, float)) and depth > 8:
        lo = 6 * int((depth - 2) // 6) + 2
        hint = f"; nearest: {lo} or {lo + 6}"
    raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (valid depths: 8, 14, 20, 26, 32, 44, 56, 110, ...), "
                     f"got {depth!r}{hint}")


class ResNet(nn.Module):
    """CIFAR ResNet-``depth``. ``forward(x: (B, C, H, W)) -> logits (B, n_classes)``.

    Args:
        depth: 6n+2 (8, 14, 20, 32, 44, 56, 110, ...).
        width: multiplier of the stage widths 16/32/64.
        batchnorm: False removes every normalisation layer (convs then have biases). Default (None):
            True, or False with ``fixup``.
        zero_init_last: zero the last BN gamma (or the last conv without BN) of every branch, so each
            residual block starts as the identity (Goyal et al. 2017). Refused with a connection that
            has no identity path: every block would output zero.
        fixup: Fixup initialisation (Zhang et al. 2019) instead of normalisation: every branch is a
            :class:`FixupBranch` (scalar biases and multiplier, no conv biases), its last conv and the
            classifier start at zero and its first conv is scaled by L^(-1/2), L = 3n branches (see the
            module docstring). Implies batchnorm=False; refused with batchnorm=True or with a
            connection that has no identity path.
        connection: spec string used for all three stages, or a sequence of three built Connections
            (dims 16w/32w/64w with n, n-1, n-1 blocks, channel_dim=1).
        extra_blocks: blocks added to each stage beyond depth's n, e.g. ``(0, 0, 1)`` for the "+1 layer"
            naive-scaling baseline of LAuReL (one more block in the last stage); ``depth`` stays the
            base depth and ``self.n_layers`` counts the real number of weighted layers.
    """

    def __init__(self, depth: int = 20, width: float = 1, in_channels: int = 3, n_classes: int = 10,
                 batchnorm: bool | None = None, zero_init_last: bool = False,
                 connection: str | Sequence[Connection] = "residual", fixup: bool = False,
                 extra_blocks: Sequence[int] = (0, 0, 0)):
        super().__init__()
        n = valid_depth(depth)
        extra = list(extra_blocks)
        if len(extra) != 3 or any(not isinstance(e, int) or e < 0 for e in extra):
            raise ValueError(f"ResNet: extra_blocks must be 3 non-negative integers (one per stage), got {extra_blocks!r}")
        if fixup and batchnorm:
            raise ValueError("ResNet: fixup=True trains without normalisation (Fixup replaces it); "
                             "drop batchnorm=True or fixup=True")
        batchnorm = not fixup if batchnorm is None else bool(batchnorm)
        if width <= 0 or in_channels < 1 or n_classes < 1:
            raise ValueError(f"ResNet: width, in_channels and n_classes must be positive, got width={width}, "
                             f"in_channels={in_channels}, n_classes={n_classes}")
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        counts = [n + extra[0], n - 1 + extra[1], n - 1 + extra[2]]
        self.n_layers = 2 * (sum(counts) + 2) + 2  # convs in branches (+2 downsampling blocks), stem, head
        self.depth, self.widths, self.batchnorm, self.fixup = depth, widths, batchnorm, bool(fixup)
        conns = self._build_connections(connection, counts, widths)
        if zero_init_last and not all(c.carries_identity for c in conns):
            raise ValueError("ResNet: zero_init_last=True with a connection that has no identity path "
                             f"({conns[0].spec!r}) makes every block output 0; drop zero_init_last")
        if fixup and not all(c.carries_identity for c in conns):
            raise ValueError("ResNet: fixup=True with a connection that has no identity path "
                             f"({conns[0].spec!r}) zeroes every branch's last layer, so every block would "
                             "output a constant; use a residual-style connection or drop fixup")

        stem: list[nn.Module] = [_conv(in_channels, widths[0], 3, 1, bias=not batchnorm)]
        if batchnorm:
            stem.append(nn.BatchNorm2d(widths[0]))
        self.stem = nn.Sequential(*stem)
        self.downsamples = nn.ModuleList(
            Downsample(widths[s - 1], widths[s], batchnorm, shortcut=conns[s].carries_identity, fixup=fixup)
            for s in (1, 2))
        self.stages = nn.ModuleList(
            nn.ModuleList(nn.ModuleList([FixupBranch(w, w) if fixup else BasicBranch(w, w, 1, batchnorm)])
                          for _ in range(k))
            for w, k in zip(widths, counts))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[2], n_classes))
        self._init_weights(zero_init_last)
        if fixup:
            self._fixup_init(n_branches=sum(counts) + 2)  # + the two downsampling branches: L = 3n
        # registered after _init_weights: connections carry their own initialisation
        self.connections = nn.ModuleList(conns)

    @staticmethod
    def _build_connections(connection, counts, widths) -> list[Connection]:
        if isinstance(connection, str):
            # REX's n is the network's residual branches: every stage's blocks (the downsampling blocks
            # change the shape, stay outside the connections and are not scaled)
            return [build_connection(connection, k, w, channel_dim=1, network_branches=sum(counts))
                    for k, w in zip(counts, widths)]
        conns = list(connection)
        want = [(k, w, 1) for k, w in zip(counts, widths)]
        got = [(c.n_blocks, c.dim, c.channel_dim) for c in conns if isinstance(c, Connection)]
        if got != want:
            raise ValueError(f"ResNet: connection must be a spec string or 3 Connections with "
                             f"(n_blocks, dim, channel_dim) = {want}, got {got or connection!r}")
        return conns

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBranch):
                    nn.init.zeros_(m.last.weight)
                    if m.last.bias is not None:
                        nn.init.zeros_(m.last.bias)

    def _fixup_init(self, n_branches: int) -> None:
        """Fixup rules: every branch's first conv scaled by L^(-1/2) and its last conv zeroed (see
        :meth:`FixupBranch.fixup_init`), and the classifier zeroed, so the logits start at 0."""
        for m in self.modules():
            if isinstance(m, FixupBranch):
                m.fixup_init(n_branches, layers_per_branch=2)
        classifier = self.head[-1]
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images (B, C, H, W), got shape {tuple(x.shape)}")
        h = self.stem(x)
        for s, blocks in enumerate(self.stages):
            if s > 0:
                h = self.downsamples[s - 1](h)
            h = self.connections[s](h, blocks)
        return self.head(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["BasicBranch", "Downsample", "FixupBranch", "ResNet", "valid_depth"]
