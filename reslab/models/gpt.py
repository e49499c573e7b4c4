"""A LLaMA-style decoder-only language model whose depth loop belongs to a Connection.

Token embedding -> K layers -> final RMSNorm -> LM head. Each layer is a block of two branches,
``[AttentionBranch, MLPBranch]``, and each branch owns its pre-norm, so with the ``residual``
connection a layer is exactly the usual pre-norm transformer layer:

    h <- h + Attn(RMSNorm(h))          (causal self-attention with RoPE)
    h <- h + SwiGLU(RMSNorm(h))

but the model never writes those adds itself: it calls ``self.connection(h, self.blocks)``, so the
same weights can be wired by any scheme (``plain``, ``rezero``, ``laurel(...)``, ``ancre(...)``).

Choices (those of the GaLore LLaMA used by the ANCRe paper): no biases, RMSNorm (eps 1e-6), rotary
position embeddings, SwiGLU with hidden ~ 8/3 d, untied LM head by default, weights ~ N(0, 0.02).

Speed without changing the numbers: RoPE is applied to queries and keys in one call, straight on the qkv
projection's layout (:meth:`Rotary.qk`; tables precomputed once for ``block_size``, sliced per call), in
four kernels (``x * [cos, cos] + roll(x) * [-sin, sin]``) instead of the textbook seven; the outputs and
gradients are bit-identical to rotating q and k one at a time with :func:`apply_rotary`. (A closed-form RMSNorm backward was tried and left out: as a custom
autograd.Function it is opaque to ``torch.func.jvp``, which the expansion analysis runs through branches,
and costs an ``inspect.signature`` per call; its gain did not show through the noise of a busy machine.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..connections import Connection
from ..connections import connection as build_connection


@dataclass
class GPTConfig:
    """Everything that shapes a :class:`GPT`. ``connection`` is a spec string (``"residual"``,
    ``"ancre(tau=0.01)"``, ...) or an already built :class:`~reslab.connections.Connection`
    with ``n_blocks == n_layer`` and ``dim == d_model``."""

    vocab_size: int = 65
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    mlp_hidden: int | None = None  # None: 8/3 * d_model rounded up to a multiple of 8
    tie_embeddings: bool = False
    dropout: float = 0.0  # embedding, attention-probability and branch-output dropout
    connection: str | Connection = "residual"
    init_std: float = 0.02
    # GPT-2 style: output projections of every branch get init_std / sqrt(2 * n_layer), so the
    # residual stream's variance at init does not grow with depth. Off by default (LLaMA/GaLore
    # and the ANCRe runs use a flat 0.02).
    scaled_init: bool = False
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    # Value residual (ResFormer, Zhou et al. 2024, arXiv:2410.17897): every attention layer n >= 2 uses
    # V_n' = (1 - lam_n) V_n + lam_n V_1, V_1 the first layer's values, lam_n a learned scalar starting at
    # value_residual_init (0.5: ResFormer's equal mix; 0: the plain GPT at init). It needs the attention's
    # values, which a Connection never sees (it carries the stream between branches), so it is a model
    # option, not a connection scheme; it combines with any connection.
    value_residual: bool = False
    value_residual_init: float = 0.5

    def validate(self) -> None:
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GPTConfig.{k} must be a positive int, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                             f"pick d_model as a multiple of n_head")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"GPTConfig: head size d_model/n_head={self.d_model // self.n_head} must be even "
                             "for rotary embeddings; change d_model or n_head")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 1):
            raise ValueError(f"GPTConfig.mlp_hidden must be a positive int or None, got {self.mlp_hidden!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ValueError(f"GPTConfig.init_std must be > 0, got {self.init_std}")

    @property
    def hidden(self) -> int:
        """SwiGLU width: ``mlp_hidden`` or 8/3 * d_model rounded up to a multiple of 8 (same parameter
        count as a 4d GELU MLP, since SwiGLU has three matrices instead of two)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 8 * -(-self.d_model // 3)  # 8 * ceil(d/3) = 8/3 d rounded up to a multiple of 8


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(x[i], x[i + d/2])`` of ``x`` (..., T, d) by the angles whose cos/sin
    are given as (T, d/2). Position m rotates by m * theta_i, so <rot(q, m), rot(k, n)> depends on
    m - n only: attention sees relative positions."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep bf16 under autocast
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _rotate_full(x: Tensor, cos_full: Tensor, sin_signed: Tensor) -> Tensor:
    """:func:`apply_rotary` in four kernels instead of seven: ``x * [cos, cos] + [x2, x1] * [-sin, sin]``
    (the swap is one ``roll``). Bit-identical values and gradients: ``x2 * -sin`` is exactly
    ``-(x2 * sin)``, ``a + -b`` is exactly ``a - b``, and a sum of two terms does not depend on their order."""
    cos_full, sin_signed = cos_full.to(x.dtype), sin_signed.to(x.dtype)  # keep bf16 under autocast
    return x * cos_full + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class Rotary(nn.Module):
    """Precomputed RoPE tables for positions 0..max_len-1 (Su et al. 2021, RoFormer, arXiv:2104.09864).
    theta_i = base^(-2i/d). Buffers are non-persistent: they are a function of the config; computed once,
    each call slices them (a view). ``cos``/``sin`` are the (T, d/2) tables of :func:`apply_rotary`;
    ``cos_full``/``sin_signed`` the same values laid out for :func:`_rotate_full`, which the calls use."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
        cos, sin = angles.cos().float(), angles.sin().float()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("cos_full", torch.cat((cos, cos), -1), persistent=False)
        self.register_buffer("sin_signed", torch.cat((-sin, sin), -1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, T, head_dim) for positions 0..T-1."""
        T = x.shape[-2]
        return _rotate_full(x, self.cos_full[:T], self.sin_signed[:T])

    def qk(self, qk: Tensor) -> Tensor:
        """Queries and keys in one call: ``qk`` (B, T, 2, H, head_dim), positions 0..T-1 on dim 1 -- the
        layout of the qkv projection's first 2D columns, so no transpose or split comes first. The same
        element-wise expression as :meth:`forward` on each, so the same values bit for bit."""
        T = qk.shape[1]
        return _rotate_full(qk, self.cos_full[:T, None, None], self.sin_signed[:T, None, None])


class FirstValues:
    """The first attention layer's values V_1 of the current forward, for the value residual (a plain
    holder shared by the layers; GPT.forward clears it before and after every pass)."""

    v: Tensor | None = None


class AttentionBranch(nn.Module):
    """x -> Attn(RMSNorm(x)): causal multi-head self-attention with RoPE on queries and keys. With a
    ``first`` holder (value residual): layer 0 stores its values, later layers mix them in."""

    def __init__(self, cfg: GPTConfig, rotary: Rotary, layer: int = 0, first: FirstValues | None = None):
        super().__init__()
        self.layer, self.first = layer, first
        if first is not None and layer > 0:
            self.v_mix = nn.Parameter(torch.tensor(float(cfg.value_residual_init)))
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = rotary  # shared by every layer; holds buffers only
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        H = self.n_head
        qk, v = self.qkv(self.norm(x)).split((2 * D, D), dim=-1)  # split: its backward is one cat
        q, k = self.rotary.qk(qk.view(B, T, 2, H, D // H)).unbind(2)  # RoPE on q and k at once
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, H, D // H).transpose(1, 2)
        if self.first is not None:
            if self.layer == 0:
                self.first.v = v
            elif self.first.v is not None:  # None when layer 0 did not run (a lesioned first block)
                v = v + self.v_mix.to(v.dtype) * (self.first.v - v)  # (1 - lam) V_n + lam V_1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class MLPBranch(nn.Module):
    """x -> SwiGLU(RMSNorm(x)) = W_down(silu(W_gate n) * W_up n), n = RMSNorm(x) (Shazeer 2020)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.gate = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(x)
        return self.drop(self.down(F.silu(self.gate(n)) * self.up(n)))


class GPT(nn.Module):
    """Decoder-only LM. ``forward(idx: (B, T) int64) -> logits (B, T, vocab_size)``.

    ``self.blocks`` is a ModuleList of ``[AttentionBranch, MLPBranch]`` ModuleLists; the stream
    between them is carried by ``self.connection`` (built from ``config.connection``)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.rotary = Rotary(cfg.d_model // cfg.n_head, cfg.block_size, cfg.rope_base)
        self._first = FirstValues() if cfg.value_residual else None
        self.blocks = nn.ModuleList(
            nn.ModuleList([AttentionBranch(cfg, self.rotary, i, self._first), MLPBranch(cfg)])
            for i in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()
        # Built after _init_weights on purpose: a connection carries its own initialisation
        # (e.g. ReZero's zero gate, ANCRe's uniform routing) which the model must not overwrite.
        self.connection = build_connection(cfg.connection, cfg.n_layer, cfg.d_model, channel_dim=-1,
                                           branches_per_block=2)
        if (self.connection.n_blocks, self.connection.dim) != (cfg.n_layer, cfg.d_model):
            raise ValueError(f"GPT: the given connection has n_blocks={self.connection.n_blocks}, "
                             f"dim={self.connection.dim}; this model needs n_blocks={cfg.n_layer} (n_layer), "
                             f"dim={cfg.d_model} (d_model)")

    def _init_weights(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        if self.config.scaled_init:
            for attn, mlp in self.blocks:
                for w in (attn.proj.weight, mlp.down.weight):
                    nn.init.normal_(w, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        # RMSNorm weights keep their ones; nothing else has parameters.

    def forward(self, idx: Tensor) -> Tensor:
        if idx.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size={self.config.block_size}; "
                             "crop the input or build the model with a larger block_size")
        h = self.drop(self.wte(idx))
        if self._first is not None:
            self._first.v = None
        h = self.connection(h, self.blocks)
        if self._first is not None:
            self._first.v = None  # do not keep the graph alive between passes
        return self.lm_head(self.norm(h))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Trainable parameters, shared (tied) tensors counted once. ``exclude_embeddings`` leaves out
        the token-embedding table (with tied embeddings that is also the LM head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if exclude_embeddings else n
