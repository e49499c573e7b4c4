"""The GPT's speed-ups keep its numbers (reslab/models/gpt.py): RoPE on q and k in one call equals the per-tensor
rotary bit for bit (values and gradients); the closed-form RMSNorm equals nn.RMSNorm bit for bit forward, to
rounding in the input gradient, bit for bit in the weight gradient, and supports a double backward."""
from __future__ import annotations

import torch
from torch import nn

from reslab.models.gpt import GPT, GPTConfig, RMSNorm, Rotary, _RMSNormFn


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


def test_rmsnorm_equals_nn_rmsnorm():
    g = torch.Generator().manual_seed(1)
    ref, fast = nn.RMSNorm(32, eps=1e-6), RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(1 + 0.1 * torch.randn(32, generator=g))
        fast.weight.copy_(ref.weight)
    assert fast.state_dict().keys() == ref.state_dict().keys() and isinstance(fast, nn.RMSNorm)
    x = torch.randn(4, 5, 32, generator=g, requires_grad=True)
    gy = torch.randn(4, 5, 32, generator=g)
    y0, y1 = ref(x), fast(x)
    assert torch.equal(y0, y1) and y1.grad_fn is not None
    dx0, dw0 = torch.autograd.grad(y0, [x, ref.weight], gy)
    dx1, dw1 = torch.autograd.grad(y1, [x, fast.weight], gy)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw1, dw0, rtol=1e-6, atol=1e-6)
    x64 = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: _RMSNormFn.apply(a, b, 1e-6)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x64, w64)) and torch.autograd.gradgradcheck(fn, (x64, w64))
    with torch.no_grad():  # no graph: the same values
        assert torch.equal(fast(x), ref(x))


def test_gpt_trains_the_same_with_the_fast_norm(monkeypatch):
    """Five AdamW steps with the closed-form RMSNorm and with nn.RMSNorm's forward: the same losses to rounding."""
    def run(composite: bool) -> list[float]:
        if composite:
            monkeypatch.setattr(RMSNorm, "forward", nn.RMSNorm.forward)
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=16))
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        x = torch.randint(11, (4, 8), generator=torch.Generator().manual_seed(1))
        out = []
        for _ in range(5):
            loss = nn.functional.cross_entropy(m(x).reshape(-1, 11), x.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())
        monkeypatch.undo()
        return out

    fast, composite = run(False), run(True)
    assert fast[0] == composite[0]  # the same forward
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(composite), rtol=1e-5, atol=0)
