"""Denoising diffusion: noise schedule, epsilon-prediction loss, DDPM and DDIM samplers, EMA weights.

DDPM (Ho, Jain, Abbeel 2020, arXiv:2006.11239). With betas b_1..b_T, a_t = 1 - b_t and
abar_t = prod_{s<=t} a_s, the forward process is

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps

and a network eps_theta(x_t, t) is trained with the "simple" objective (eq. 14)

    L = E_{t ~ U{1..T}, x_0, eps ~ N(0, I)} || eps - eps_theta(x_t, t) ||^2.

Ancestral (DDPM) sampling, eq. 11, with the posterior variance sigma_t^2 = btilde_t
= b_t (1 - abar_{t-1}) / (1 - abar_t) ("fixed small"; DiT learns it instead, we keep it fixed):

    x_{t-1} = 1/sqrt(a_t) (x_t - b_t / sqrt(1 - abar_t) eps_theta) + sigma_t z,   z = 0 at the last step.

DDIM (Song, Meng, Ermon 2021, arXiv:2010.02502, eq. 12) on a sub-sequence tau_1 < ... < tau_S of
the timesteps, with x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_theta + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)

(eta = 0: deterministic; eta = 1 with every step: DDPM's sigma_t^2 = btilde_t).

Timesteps are 0-based here: index t = 0..T-1 holds b_{t+1}; abar_prev of index 0 is 1.

Schedules: ``linear`` (DDPM/DiT: b from 1e-4 to 0.02 over T = 1000) and ``cosine`` (Nichol & Dhariwal
2021, arXiv:2102.09672: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008, b <= 0.999).

EMA (Polyak averaging of the weights, as DiT samples with): theta_ema <- d_n theta_ema + (1 - d_n) theta
after the n-th optimizer step. DiT uses a constant d = 0.9999 over 400K steps, where the initial
weights are long forgotten; in a run of a few thousand steps they would still carry weight d^n
(0.999^2000 = 0.14, and an adaLN-Zero DiT starts by predicting eps = 0), so by default the decay
warms up as d_n = min(d, (1 + n) / (10 + n)) (the ``num_updates`` rule of TensorFlow's
ExponentialMovingAverage); ``warmup=False`` gives DiT's constant decay.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,) long) -> predicted noise, x_t-shaped
SCHEDULES = ("linear", "cosine")


def make_betas(schedule: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """(T,) float64 betas. ``linear`` scales beta_start/beta_end by 1000/T (as improved-DDPM does) so a
    shorter chain keeps the same end-to-end noise level; at T = 1000 they are exactly 1e-4..0.02."""
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"diffusion: the number of timesteps T must be an int >= 2, got {T!r}")
    if schedule == "linear":
        scale = 1000 / T
        if not (0 < beta_start < beta_end) or beta_end * scale >= 1:
            raise ValueError(f"diffusion: linear schedule needs 0 < beta_start < beta_end and beta_end*1000/T < 1, "
                             f"got beta_start={beta_start}, beta_end={beta_end}, T={T}")
        return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"diffusion: unknown noise schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


class NoiseSchedule(nn.Module):
    """The fixed quantities of a T-step Gaussian diffusion as (non-persistent) float32 buffers, so they
    follow the model to its device and are rebuilt from the config rather than stored in checkpoints.

    Buffers (index t = 0..T-1): ``betas``, ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev``
    (abar_{t-1}, 1 at t = 0), ``sqrt_ab`` = sqrt(abar_t), ``sqrt_1mab`` = sqrt(1 - abar_t),
    ``posterior_var`` = btilde_t. Computed in float64, stored in float32."""

    def __init__(self, schedule: str = "linear", T: int = 1000):
        super().__init__()
        betas = make_betas(schedule, T)
        ab = torch.cumprod(1 - betas, dim=0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self.schedule, self.T = schedule, T
        for name, v in (("betas", betas), ("alphas_cumprod", ab), ("alphas_cumprod_prev", ab_prev),
                        ("sqrt_ab", ab.sqrt()), ("sqrt_1mab", (1 - ab).sqrt()),
                        ("posterior_var", betas * (1 - ab_prev) / (1 - ab))):
            self.register_buffer(name, v.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, T={self.T}"

    @staticmethod
    def _at(v: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """v[t] shaped (B, 1, 1, ...) to broadcast against ``like`` (B, ...)."""
        return v[t].reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self._at(self.sqrt_ab, t, x0) * x0 + self._at(self.sqrt_1mab, t, x0) * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - self._at(self.sqrt_1mab, t, x_t) * eps) / self._at(self.sqrt_ab, t, x_t)


def eps_loss(eps_fn: EpsFn, x0: Tensor, schedule: NoiseSchedule, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
    """The DDPM simple loss: mean over every element of (eps - eps_fn(x_t, t))^2. ``t`` defaults to
    U{0..T-1} per sample and ``noise`` to N(0, I), both from torch's global generator (which the
    trainer checkpoints, so a resumed run draws the same ones)."""
    if t is None:
        t = torch.randint(schedule.T, (x0.shape[0],), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    pred = eps_fn(schedule.q_sample(x0, t, noise), t)
    return (pred.float() - noise.float()).pow(2).mean()


def eval_timesteps(T: int, n: int) -> list[int]:
    """n timesteps spread evenly over 0..T-1 (the midpoints of n equal bins), for a held-out denoising
    loss that weighs every noise level the way uniform t does in expectation."""
    if not isinstance(n, int) or not 1 <= n <= T:
        raise ValueError(f"diffusion: the number of evaluation timesteps must be in 1..T={T}, got {n!r}")
    return [min(T - 1, int((k + 0.5) * T / n)) for k in range(n)]


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"sampler: shape must be (batch, ...) with positive sizes, got {shape}")
    return shape


def _clip(x0: Tensor, clip_x0: tuple[float, float] | None) -> Tensor:
    return x0 if clip_x0 is None else x0.clamp(clip_x0[0], clip_x0[1])


@torch.no_grad()
def ddpm_sample(eps_fn: EpsFn, shape, schedule: NoiseSchedule, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", x_T: Tensor | None = None,
                clip_x0: tuple[float, float] | None = None) -> Tensor:
    """Ancestral sampling through all T steps with sigma_t^2 = btilde_t. Written with the posterior
    mean of q(x_{t-1} | x_t, x0_hat), mu = sqrt(abar_{t-1}) b_t / (1 - abar_t) x0_hat
    + sqrt(a_t) (1 - abar_{t-1}) / (1 - abar_t) x_t, which equals eq. 11's epsilon form when x0_hat is
    not clipped; ``clip_x0=(lo, hi)`` clamps x0_hat to the data range first (Ho et al. clip to [-1, 1])."""
    shape = _check_shape(shape)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator).to(device)
    for i in reversed(range(schedule.T)):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        eps = eps_fn(x, t).float()
        beta, ab, ab_prev = schedule.betas[i], schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
        x0 = _clip((x - (1 - ab).sqrt() * eps) / ab.sqrt(), clip_x0)
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x
        if i > 0:
            z = torch.randn(shape, generator=generator).to(device)
            x = mean + schedule.posterior_var[i].sqrt() * z
        else:
            x = mean
    return x


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps 0 = tau_1 < ... < tau_S <= T-1, evenly spaced ("uniform" skip of DDIM)."""
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"ddim: steps must be an int in 1..T={T}, got {steps!r}")
    return sorted({round(k * (T - 1) / max(steps - 1, 1)) for k in range(steps)}) if steps > 1 else [T - 1]


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, shape, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                x_T: Tensor | None = None, clip_x0: tuple[float, float] | None = None) -> Tensor:
    """DDIM (eq. 12 of Song et al.) over :func:`ddim_timesteps`; eta=0 is deterministic given x_T.
    ``clip_x0=(lo, hi)`` clamps x0_hat to the data range and re-derives eps from it, so the step stays
    consistent with the clipped prediction."""
    shape = _check_shape(shape)
    if not eta >= 0:
        raise ValueError(f"ddim: eta must be >= 0 (0 deterministic, 1 DDPM-like), got {eta}")
    taus = ddim_timesteps(schedule.T, steps)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator).to(device)
    ab_all = schedule.alphas_cumprod
    for k in reversed(range(len(taus))):
        i = taus[k]
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        eps = eps_fn(x, t).float()
        ab = ab_all[i]
        ab_prev = ab_all[taus[k - 1]] if k > 0 else torch.ones((), device=ab.device)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if clip_x0 is not None:
            x0 = _clip(x0, clip_x0)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and k > 0:
            x = x + sigma * torch.randn(shape, generator=generator).to(device)
    return x


class EMA(nn.Module):
    """Exponential moving average of a module's parameters, held as buffers (so it is saved in the
    owner's state_dict, moves with ``.to(device)``, and a resumed run continues the same average).

    ``EMA(model, decay)`` copies the current parameters; ``update(model)`` applies
    theta_ema <- d_n theta_ema + (1 - d_n) theta with d_n = min(decay, (1 + n) / (10 + n)) for the n-th
    update (n = 1, 2, ...; constant ``decay`` with ``warmup=False``); ``with ema.applied(model):`` swaps
    the averaged weights in and restores the live ones on exit. Build it *after* every parameter of
    ``model`` exists and assign it as an attribute of ``model`` (its buffers are not parameters, so the
    owner's optimizer never sees them, and it is not included in its own average)."""

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1) (e.g. 0.9999 as DiT, 0.999 for short runs), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self._names = [n for n, _ in module.named_parameters()]
        for n, p in module.named_parameters():
            self.register_buffer(n.replace(".", "__"), p.detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = int(self.num_updates) + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        params = dict(module.named_parameters())
        missing = [n for n in self._names if n not in params]
        if missing:
            raise ValueError(f"EMA: the module lacks parameters {missing[:3]}...; update it with the module "
                             "it was built from")
        return [(getattr(self, n.replace(".", "__")), params[n]) for n in self._names]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for shadow, p in self._pairs(module):
            shadow.lerp_(p.detach().to(shadow.dtype), weight)
        self.num_updates += 1

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        pairs = self._pairs(module)
        with torch.no_grad():
            backup = [p.detach().clone() for _, p in pairs]
            for shadow, p in pairs:
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), b in zip(pairs, backup):
                    p.copy_(b)


__all__ = ["EMA", "NoiseSchedule", "SCHEDULES", "ddim_sample", "ddim_timesteps", "ddpm_sample", "eps_loss",
           "eval_timesteps", "make_betas"]
