"""Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers",
arXiv:2212.09748) with adaLN-Zero blocks, whose depth loop belongs to a Connection.

    tokens = PatchEmbed(x_t) + pos                    fixed 2-D sin-cos table, N = (H / P)^2 tokens
    c      = SiLU(TimestepMLP(sinusoid(t)) + LabelEmbed(y))
    h_K    = connection(tokens, [[attn_j(., c), mlp_j(., c)] for j in 1..K])
    eps    = unpatchify(Linear(modulate(LN(h_K), shift_f(c), scale_f(c))))

adaLN-Zero. Every branch regresses its own (shift, scale, gate) from c and computes

    branch(h) = gate(c) * F(LN(h) * (1 + scale(c)) + shift(c))      LN without affine, eps 1e-6

with F = multi-head self-attention or the GELU(tanh) MLP. The regression layers start at zero, so
every gate is 0 at init and, with ``residual``, each block starts as the identity (the "-Zero").
DiT's block computes the six modulation vectors with one Linear(d, 6d); two Linear(d, 3d), one per
branch, are the same map split by rows. The gate is *inside* the branch, so the connection sees an
ordinary ``f(h) -> h-shaped`` branch and every scheme composes with it: ``residual`` gives DiT's
``h + gate * F(...)``, ``ancre`` (form=repo, the official ANCRe DiT) adds its learned shortcuts on
top of each unmodified block. The conditioning of one forward is bound to the branches with
``functools.partial`` (no per-forward module state). Labels use index ``n_classes`` as the "null"
class, dropped with probability ``class_dropout`` in training for classifier-free guidance.

Diffusion objective (:mod:`reslab.diffusion`): epsilon prediction with the DDPM simple loss and a
fixed variance (DiT also learns Sigma; at this scale we do not). The model brings its own objective
to the trainer: ``training_loss(x, y, call)`` draws t and noise at random in training mode and, in eval
mode, averages over a FIXED set of ``eval_timesteps`` timesteps and noise drawn from a generator seeded
with ``eval_seed`` (so validation loss is a deterministic held-out denoising loss), using the EMA
weights when ``eval_ema``; ``after_step()`` updates the EMA.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial

import torch
from torch import Tensor, nn

from ..connections import Connection
from ..connections import connection as build_connection
from .. import diffusion
from ..diffusion import EMA, NoiseSchedule, ddim_sample, ddpm_sample, eps_loss
from .vit import FeedForward, SelfAttention, image_model_from_task, patch_grid, sincos_2d


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C): row-major patches, each flattened as (p_row, p_col, C)."""
    B, C, H, W = x.shape
    h, w = H // p, W // p
    return x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p * p * C)


def unpatchify(tokens: Tensor, p: int, C: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    B = tokens.shape[0]
    h, w = H // p, W // p
    return tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [cos(t w_k), sin(t w_k)], w_k = max_period^(-k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class AdaLNBranch(nn.Module):
    """h, c -> gate(c) * core(LN(h) * (1 + scale(c)) + shift(c)); (shift, scale, gate) = Linear(c)."""

    def __init__(self, dim: int, core: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 3 * dim)
        self.core = core

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.ada(c).unsqueeze(1).chunk(3, dim=-1)
        return gate * self.core(self.norm(x) * (1 + scale) + shift)


class DiT(nn.Module):
    """Class-conditional epsilon-prediction DiT. ``forward(x_t (B, C, H, W), t (B,), y (B,)) -> eps (B, C, H, W)``.

    Args:
        image_size, in_channels, n_classes: from the task (images must be square).
        patch_size, d_model, n_layer, n_head, mlp_ratio: the transformer (DiT-S/2: 2, 384, 12, 6, 4).
        class_dropout: probability of replacing a label by the null class in training (CFG); 0 disables
            the null class.
        timesteps, schedule: the diffusion (T = 1000, linear, as DiT).
        ema_decay, ema_warmup: EMA of the weights, updated by ``after_step()`` (DiT: 0.9999, constant;
            here by default warmed up as min(decay, (1+n)/(10+n)), see :class:`reslab.diffusion.EMA`).
        eval_timesteps, eval_seed, eval_ema: the held-out denoising loss of eval mode (see module doc).
        adaln_zero: zero-initialise every modulation layer and the output layer (DiT); False keeps the
            xavier init (an ablation, and a way to test gradient flow through every branch).
        connection: spec string, or a built Connection with n_blocks=n_layer, dim=d_model.
    """

    metric_name = "denoise_mse"

    def __init__(self, image_size: int = 14, in_channels: int = 1, n_classes: int = 10, patch_size: int = 2,
                 d_model: int = 96, n_layer: int = 6, n_head: int = 4, mlp_ratio: float = 4.0,
                 class_dropout: float = 0.1, timesteps: int = 1000, schedule: str = "linear",
                 ema_decay: float = 0.9999, ema_warmup: bool = True, eval_timesteps: int = 10, eval_seed: int = 0,
                 eval_ema: bool = True, adaln_zero: bool = True, connection: str | Connection = "residual"):
        super().__init__()
        grid = patch_grid(image_size, patch_size, "DiT")
        for name, v in (("in_channels", in_channels), ("n_classes", n_classes), ("d_model", d_model),
                        ("n_layer", n_layer), ("n_head", n_head)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DiT: {name} must be a positive int, got {v!r}")
        if not 0.0 <= class_dropout < 1.0 or not mlp_ratio > 0:
            raise ValueError(f"DiT: need class_dropout in [0, 1) and mlp_ratio > 0, got {class_dropout}, {mlp_ratio}")
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.n_classes, self.n_layer, self.d_model = n_classes, n_layer, d_model
        self.class_dropout, self.eval_seed, self.eval_ema = class_dropout, int(eval_seed), bool(eval_ema)
        self.schedule = NoiseSchedule(schedule, timesteps)
        self._eval_t = diffusion.eval_timesteps(timesteps, eval_timesteps)

        self.patch_embed = nn.Conv2d(in_channels, d_model, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(d_model, grid)[None], persistent=False)
        self.freq_dim = 256
        self.t_embed = nn.Sequential(nn.Linear(self.freq_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.y_embed = nn.Embedding(n_classes + (class_dropout > 0), d_model)
        hidden = max(1, round(mlp_ratio * d_model))
        self.blocks = nn.ModuleList(
            nn.ModuleList([AdaLNBranch(d_model, SelfAttention(d_model, n_head)),
                           AdaLNBranch(d_model, FeedForward(d_model, hidden, approximate="tanh"))])
            for _ in range(n_layer))
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, patch_size * patch_size * in_channels)
        self._init_weights(adaln_zero)
        # after _init_weights: a connection carries its own initialisation (ANCRe's uniform routing, ...)
        self.connection = build_connection(connection, n_layer, d_model, channel_dim=-1, branches_per_block=2)
        if (self.connection.n_blocks, self.connection.dim) != (n_layer, d_model):
            raise ValueError(f"DiT: the given connection has n_blocks={self.connection.n_blocks}, "
                             f"dim={self.connection.dim}; this model needs n_blocks={n_layer}, dim={d_model}")
        self.ema = EMA(self, ema_decay, warmup=ema_warmup)  # last: averages every parameter, the connection's included

    def _init_weights(self, adaln_zero: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        if adaln_zero:
            for layer in [b.ada for blk in self.blocks for b in blk] + [self.final_ada, self.out]:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    # -- the network ---------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        B = x.shape[0]
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"DiT expects noisy images (B, {', '.join(map(str, want))}), got {tuple(x.shape)}; "
                             "build it with image_size matching the task (task option resize)")
        if t.shape != (B,) or y.shape != (B,):
            raise ValueError(f"DiT: t and y must have shape ({B},), got {tuple(t.shape)} and {tuple(y.shape)}")
        if self.training and self.class_dropout > 0:
            drop = torch.rand(B, device=y.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.n_classes), y)
        c = nn.functional.silu(self.t_embed(timestep_embedding(t, self.freq_dim)) + self.y_embed(y))
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        h = self.connection(h, [[partial(attn, c=c), partial(mlp, c=c)] for attn, mlp in self.blocks])
        shift, scale = self.final_ada(c).unsqueeze(1).chunk(2, dim=-1)
        h = self.out(self.final_norm(h) * (1 + scale) + shift)
        return unpatchify(h, self.patch_size, self.in_channels, self.image_size, self.image_size)

    # -- the trainer's hooks -------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Tensor, call=None) -> tuple[Tensor, Tensor]:
        """(loss, metric) for the trainer; ``call`` is the (possibly DDP/compiled) forward."""
        call = self if call is None else call  # (a compiled module has no truth value)
        if self.training:
            loss = eps_loss(lambda xt, t: call(xt, t, y), x, self.schedule)
            return loss, loss.detach()
        g = torch.Generator().manual_seed(self.eval_seed)
        total = x.new_zeros((), dtype=torch.float32)
        with self.ema.applied(self) if self.eval_ema else nullcontext():
            for i in self._eval_t:
                noise = torch.randn(x.shape, generator=g).to(device=x.device, dtype=x.dtype)
                t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
                total = total + eps_loss(lambda xt, tt: call(xt, tt, y), x, self.schedule, t, noise)
        loss = total / len(self._eval_t)
        return loss, loss.detach()

    def after_step(self) -> None:
        self.ema.update(self)

    # -- sampling ------------------------------------------------------------------------------
    def eps_fn(self, y: Tensor, cfg_scale: float = 1.0):
        """(x_t, t) -> eps for fixed labels ``y``; with cfg_scale != 1 classifier-free guidance
        eps = eps(null) + s (eps(y) - eps(null)) (Ho & Salimans 2022)."""
        if cfg_scale == 1.0:
            return lambda x, t: self(x, t, y)
        if self.class_dropout == 0:
            raise ValueError("DiT: classifier-free guidance needs the null class; build with class_dropout > 0 "
                             "or sample with cfg_scale=1")
        null = torch.full_like(y, self.n_classes)

        def fn(x, t):
            cond, unc = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            return unc + cfg_scale * (cond - unc)

        return fn

    @torch.no_grad()
    def sample(self, y: Tensor, sampler: str = "ddim", steps: int = 50, eta: float = 0.0, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None, use_ema: bool = True,
               clip_x0: tuple[float, float] | None = None) -> Tensor:
        """Images (len(y), C, H, W) in the data's space, for class labels ``y``. ``sampler``: "ddim"
        (``steps`` steps, ``eta``) or "ddpm" (all T steps). EMA weights unless ``use_ema=False``;
        ``clip_x0=(lo, hi)``: clamp each step's x0 prediction to the data range."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"DiT.sample: sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        dev = next(self.parameters()).device
        y = y.to(dev)
        shape = (y.shape[0], self.in_channels, self.image_size, self.image_size)
        was_training = self.training
        self.eval()
        try:
            with self.ema.applied(self) if use_ema else nullcontext():
                fn = self.eps_fn(y, cfg_scale)
                if sampler == "ddpm":
                    return ddpm_sample(fn, shape, self.schedule, generator=generator, device=dev, clip_x0=clip_x0)
                return ddim_sample(fn, shape, self.schedule, steps=steps, eta=eta, generator=generator, device=dev,
                                   clip_x0=clip_x0)
        finally:
            self.train(was_training)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_dit(task_info: dict, connection, kwargs: dict) -> DiT:
    """``build_model("dit", task.info, spec, patch_size=2, d_model=64, ...)``: a class-conditional DiT for
    an image-classification task (its labels become the conditioning)."""
    return image_model_from_task(DiT, "dit", task_info, connection, kwargs)


__all__ = ["AdaLNBranch", "DiT", "build_dit", "patchify", "timestep_embedding", "unpatchify"]
