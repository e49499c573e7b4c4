"""PNNH's MLP form: stem -> plain layers on the state [h | p | q] -> linear head (our reconstruction)."""
from __future__ import annotations

from torch import Tensor, nn

from .layers import PNNHLayer, _check_common, _make_coder, _PNNHBase, _positive_int, _Stem, code_channels


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
        return self._run_layers(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
