"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929)
whose depth loop belongs to a Connection.

    tokens = PatchEmbed(x) (+ [CLS]) + pos            x: (B, C, H, W), P x P patches, N = HW / P^2
    h_K    = connection(tokens, [[attn_j, mlp_j] for j in 1..K])
    logits = head(LN(h_K[:, 0]))                     pool="cls"
           = head(LN(mean_n h_K[:, n]))               pool="mean"

Each block is two pre-norm branches, ``attn(h) = Proj(MHSA(LN(h)))`` and ``mlp(h) = W2 GELU(W1 LN(h))``,
so with the ``residual`` connection a block is exactly the ViT encoder layer
``h <- h + attn(h); h <- h + mlp(h)`` -- but the model never writes the adds itself.

The attention and MLP cores (:class:`SelfAttention`, :class:`FeedForward`) and the fixed 2-D sin-cos
position table are shared with :mod:`reslab.models.dit`. Choices: learned position embeddings and a
learned class token (ViT's), qkv with biases, LayerNorm eps 1e-6, linear weights ~ trunc-normal(0.02)
(timm's ViT init), the patch projection xavier-uniform as a flattened linear (MAE/DiT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..connections import Connection
from ..connections import connection as build_connection
from .task_info import check_options, init_options


# ------------------------------------------------------------------------------ shared pieces

class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention, (B, N, D) -> (B, N, D): softmax(QK^T / sqrt(d_h)) V,
    heads concatenated and projected. No normalisation: the caller's branch owns that."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"d_model={dim} is not divisible by n_head={n_head}; pick d_model as a multiple of n_head")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class FeedForward(nn.Module):
    """x -> W2 act(W1 x + b1) + b2 with hidden width ``hidden`` (GELU; DiT uses its tanh approximation)."""

    def __init__(self, dim: int, hidden: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position table (grid^2, dim), as in MAE and DiT: half the channels encode
    the row, half the column, each with the 1-D table [sin(p w_k), cos(p w_k)], w_k = 10000^(-k/(d/4)),
    k = 0..d/4-1. Row-major over the grid, matching ``flatten(2)`` of a conv patch embedding."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position table needs d_model divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def table(p: Tensor) -> Tensor:
        ang = torch.outer(p.reshape(-1), omega)
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    return torch.cat([table(rows), table(cols)], dim=1).float()


def patch_grid(image_size: int, patch_size: int, model: str) -> int:
    """Patches per side; ValueError unless the patch tiles the image."""
    if image_size < 1 or patch_size < 1 or image_size % patch_size:
        raise ValueError(f"{model}: patch_size={patch_size} must divide image_size={image_size} "
                         f"(e.g. patch 2 or 7 for 14x14, 4 or 7 for 28x28)")
    return image_size // patch_size


# ---------------------------------------------------------------------------------- branches

class AttentionBranch(nn.Module):
    """h -> dropout(MHSA(LN(h)))."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, n_head, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.attn(self.norm(x)))


class MLPBranch(nn.Module):
    """h -> dropout(W2 GELU(W1 LN(h)))."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.mlp(self.norm(x)))


# ------------------------------------------------------------------------------------- model

class ViT(nn.Module):
    """Image classifier. ``forward(x: (B, C, H, W)) -> logits (B, n_classes)``.

    Args:
        image_size: side H = W of the (square) input.
        in_channels, n_classes: from the task.
        patch_size: P; must divide image_size. Tokens N = (image_size / P)^2 (+1 with pool="cls").
        d_model, n_layer, n_head: width, number of blocks K, attention heads.
        mlp_ratio: MLP hidden width / d_model.
        pool: "cls" (a learned class token read by the head) or "mean" (average of the patch tokens).
        dropout: on attention probabilities, branch outputs and the embedded tokens.
        connection: spec string, or a built Connection with n_blocks=n_layer, dim=d_model.
    """

    def __init__(self, image_size: int = 28, in_channels: int = 1, n_classes: int = 10, patch_size: int = 4,
                 d_model: int = 64, n_layer: int = 6, n_head: int = 4, mlp_ratio: float = 4.0, pool: str = "cls",
                 dropout: float = 0.0, connection: str | Connection = "residual"):
        super().__init__()
        grid = patch_grid(image_size, patch_size, "ViT")
        if pool not in ("cls", "mean"):
            raise ValueError(f"ViT: pool must be 'cls' or 'mean', got {pool!r}")
        for name, v in (("in_channels", in_channels), ("n_classes", n_classes), ("d_model", d_model),
                        ("n_layer", n_layer), ("n_head", n_head)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ViT: {name} must be a positive int, got {v!r}")
        if not mlp_ratio > 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"ViT: need mlp_ratio > 0 and dropout in [0, 1), got {mlp_ratio}, {dropout}")
        self.image_size, self.patch_size, self.pool = image_size, patch_size, pool
        self.n_layer, self.d_model = n_layer, d_model
        hidden = max(1, round(mlp_ratio * d_model))
        self.patch_embed = nn.Conv2d(in_channels, d_model, patch_size, stride=patch_size)
        n_tok = grid * grid + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tok, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.ModuleList([AttentionBranch(d_model, n_head, dropout), MLPBranch(d_model, hidden, dropout)])
            for _ in range(n_layer))
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.head = nn.Linear(d_model, n_classes)
        self._init_weights()
        # after _init_weights: a connection carries its own initialisation (ANCRe's uniform routing, ...)
        self.connection = build_connection(connection, n_layer, d_model, channel_dim=-1, branches_per_block=2)
        if (self.connection.n_blocks, self.connection.dim) != (n_layer, d_model):
            raise ValueError(f"ViT: the given connection has n_blocks={self.connection.n_blocks}, "
                             f"dim={self.connection.dim}; this model needs n_blocks={n_layer}, dim={d_model}")

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # a patch embedding is a linear map of the flat patch
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"ViT expects images (B, C, {self.image_size}, {self.image_size}), got "
                             f"{tuple(x.shape)}; build it with image_size matching the task (task option resize)")
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major patches
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.drop(h + self.pos_embed)
        h = self.connection(h, self.blocks)
        h = self.norm(h)
        return self.head(h[:, 0] if self.pool == "cls" else h.mean(dim=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def image_model_from_task(cls: type, name: str, task_info: dict, connection, kwargs: dict) -> nn.Module:
    """Build ``cls`` (ViT or DiT) for an image task: image_size/in_channels/n_classes come from
    ``task_info`` (``input_shape`` (C, H, W) or (H, W), ``n_classes``); every other option is a keyword,
    checked by name (a ValueError lists the valid ones, closest first)."""
    check_options(name, kwargs, init_options(cls, {"image_size", "in_channels", "n_classes", "connection"}))
    if "input_shape" not in task_info or "n_classes" not in task_info:
        raise ValueError(f"model {name!r} needs an image-classification task (task_info with input_shape and "
                         f"n_classes); the task gives {sorted(task_info) or 'nothing'}")
    shape = tuple(task_info["input_shape"])
    if len(shape) not in (2, 3) or shape[-1] != shape[-2]:
        raise ValueError(f"model {name!r} needs square images, input_shape (C, H, H) or (H, H); got {shape}")
    return cls(image_size=int(shape[-1]), in_channels=int(shape[0]) if len(shape) == 3 else 1,
               n_classes=int(task_info["n_classes"]), connection=connection, **kwargs)


def build_vit(task_info: dict, connection, kwargs: dict) -> ViT:
    """``build_model("vit", task.info, spec, patch_size=7, d_model=64, ...)``."""
    return image_model_from_task(ViT, "vit", task_info, connection, kwargs)


__all__ = ["AttentionBranch", "FeedForward", "MLPBranch", "SelfAttention", "ViT", "build_vit", "image_model_from_task",
           "patch_grid", "sincos_2d"]
