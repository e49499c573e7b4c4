"""PNNH's CNN form, shaped like the CIFAR ResNet: three stages of plain layers (our reconstruction)."""
from __future__ import annotations

from torch import Tensor, nn

from .layers import (DOWNSAMPLES, STAGE_WIDTHS, PNNHLayer, _check_common, _choice, _make_coder, _PNNHBase,
                     _positive_int, _Stem, code_channels)


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
        return self._run_layers(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))
