"""The GPT's speed-up keeps its numbers (reslab/models/gpt.py): RoPE on q and k in one call equals the per-tensor
rotary bit for bit (values and gradients); the whole model's exactness is test_models.py's hand-written GPT."""
from __future__ import annotations

import torch
from reslab.models.gpt import Rotary


def test_rotary_qk_equals_per_tensor_rotary():
    g = torch.Generator().manual_seed(0)
    B, T, H, hd = 3, 7, 2, 8
    rot = Rotary(hd, 16)
    qkv = torch.randn(B, T, 3 * H * hd, generator=g, requires_grad=True)
    gq, gk = torch.randn(2, B, H, T, hd, generator=g)
    D = H * hd
    q0, k0, _ = qkv.split(D, -1)
    q0, k0 = (rot(t.view(B, T, H, hd).transpose(1, 2)) for t in (q0, k0))
    q1, k1 = (t.transpose(1, 2) for t in rot.qk(qkv[..., :2 * D].view(B, T, 2, H, hd)).unbind(2))
    assert torch.equal(q0, q1) and torch.equal(k0, k1)
    g0 = torch.autograd.grad([q0, k0], qkv, [gq, gk])[0]
    g1 = torch.autograd.grad([q1, k1], qkv, [gq, gk])[0]
    assert torch.equal(g0, g1)


def test_rotary_in_four_kernels_equals_the_textbook_formula_bit_for_bit():
    """Rotary's calls (x * [cos, cos] + roll(x) * [-sin, sin]) give apply_rotary's values and gradients exactly,
    in float32 and bfloat16, and in the q/k layout."""
    from reslab.models.gpt import apply_rotary

    g = torch.Generator().manual_seed(1)
    rot = Rotary(16, 32)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, 32, 16, generator=g).to(dtype).requires_grad_(True)
        gy = torch.randn(2, 3, 32, 16, generator=g).to(dtype)
        y0 = apply_rotary(x, rot.cos, rot.sin)
        y1 = rot(x)
        assert y1.dtype == dtype and torch.equal(y0, y1)
        assert torch.equal(*(torch.autograd.grad(y, x, gy)[0] for y in (y0, y1)))
    qk = torch.randn(2, 32, 2, 3, 16, generator=g, requires_grad=True)
    ref = apply_rotary(qk, rot.cos[:, None, None], rot.sin[:, None, None])
    assert torch.equal(rot.qk(qk), ref)
