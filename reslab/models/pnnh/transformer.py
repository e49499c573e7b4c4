"""PNNH's Transformer forms (an attempt; docs/pnnh.md says how they trained): a char-LM and a ViT.

Attention is not a linear map, so here only the code rows and the MLP rows are "one linear map + ReLU";
the attention output reaches the code through the next layer's linear write-back (see the layers' docstrings).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CODER_INITS, Coder, _choice, _PNNHBase, _positive_int


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
        from ..gpt import Rotary

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
        from ..vit import patch_grid

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
