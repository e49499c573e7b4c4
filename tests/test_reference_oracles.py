"""hyper, frac and mhc against independent implementations, with the reference's (perturbed) weights
copied into ours: lucidrains' hyper-connections 0.4.11 for HC and Frac-Connections, transformers'
DeepSeek-V4 ``DeepseekV4HyperConnection`` for mHC."""
from __future__ import annotations

import pytest
import torch

import reslab

torch.set_num_threads(1)
hc_mod = pytest.importorskip("hyper_connections")
K, BR, D, B, T = 3, 2, 8, 2, 3


def branches(n_layers, dim=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5 for _ in range(n_layers)]
    return [(lambda h, w=w: torch.tanh(h @ w.to(h.dtype))) for w in ws]


def perturb_(module, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def run_lucidrains(layers, fs, x, n):
    """hyper_connections' own loop: expand to (b s), width/depth connection per layer, sum the streams."""
    expand, reduce = hc_mod.get_expand_reduce_stream_functions(n)
    h = expand(x)
    for hc, f in zip(layers, fs):
        inp, add = hc(h)
        h = add(f(inp))
    return reduce(h)


def copy_from_lucidrains(conn, layers, n, m):
    with torch.no_grad():
        for t, hc in enumerate(layers):
            conn.alpha[t] = hc.static_alpha.view(m, n, m, 1 + n).permute(1, 0, 2, 3)  # rows (f s), cols (g, 1+n)
            conn.beta[t] = hc.static_beta.view(n, m)
            if conn.dynamic:
                conn.w_alpha[t] = hc.dynamic_alpha_fn.view(-1, m, 1 + n)
                conn.s_alpha[t] = hc.dynamic_alpha_scale
                conn.w_beta[t] = hc.dynamic_beta_fn
                conn.s_beta[t] = hc.dynamic_beta_scale
                conn.norm_w[t] = hc.norm.gamma + 1  # their RMSNorm gain is (gamma + 1)


@pytest.mark.parametrize("dynamic", [False, True])
def test_hyper_matches_hyper_connections(dynamic):
    n = 4
    L = K * BR
    layers = [hc_mod.HyperConnections(n, dim=D, layer_index=t).double() for t in range(L)]
    for t, hc in enumerate(layers):
        perturb_(hc, seed=t)
        if not dynamic:  # their module is always dynamic; zero projections make it the static HC
            with torch.no_grad():
                hc.dynamic_alpha_fn.zero_()
                hc.dynamic_beta_fn.zero_()
    spec = "hyper(dynamic, norm=rmsnorm)" if dynamic else "hyper"
    conn = reslab.connection(spec, n_blocks=K, dim=D, branches_per_block=BR).double()
    copy_from_lucidrains(conn, layers, n, 1)
    fs = branches(L)
    x = torch.randn(B, T, D, dtype=torch.float64)
    want = run_lucidrains(layers, fs, x, n)
    got = conn(x, [fs[k * BR:(k + 1) * BR] for k in range(K)])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_frac_matches_hyper_connections_with_write_sum():
    m = 4
    L = K * BR
    layers = [hc_mod.HyperConnections(1, dim=D, num_fracs=m, layer_index=t).double() for t in range(L)]
    for t, hc in enumerate(layers):
        perturb_(hc, seed=10 + t)
    conn = reslab.connection(f"frac(m={m}, dynamic, write=sum, norm=rmsnorm)", n_blocks=K, dim=D,
                             branches_per_block=BR).double()
    copy_from_lucidrains(conn, layers, 1, m)
    fs = branches(L)
    x = torch.randn(B, T, D, dtype=torch.float64)
    want = run_lucidrains(layers, fs, x, 1)
    got = conn(x, [fs[k * BR:(k + 1) * BR] for k in range(K)])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_frac_paper_write_differs_from_the_reference_reading():
    """The two readings of the write step must actually differ for m > 1 (else the option is moot)."""
    fs = branches(K * BR)
    x = torch.randn(B, T, D, dtype=torch.float64)
    ys = []
    for w in ("paper", "sum"):
        torch.manual_seed(0)
        conn = reslab.connection(f"frac(m=2, write={w})", n_blocks=K, dim=D, branches_per_block=BR).double()
        ys.append(conn(x, [fs[k * BR:(k + 1) * BR] for k in range(K)]))
    assert not torch.allclose(ys[0], ys[1])


def test_mhc_matches_deepseek_v4_hyper_connection():
    ds = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
    from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    n, L = 4, K * BR
    cfg = DeepseekV4Config(hidden_size=D, hc_mult=n, hc_sinkhorn_iters=20, hc_eps=1e-12, rms_norm_eps=1e-6)
    g = torch.Generator().manual_seed(3)
    refs = []
    for _ in range(L):
        hc = ds.DeepseekV4HyperConnection(cfg)
        with torch.no_grad():
            hc.fn.copy_(torch.randn(hc.fn.shape, generator=g) * 0.5)
            hc.base.copy_(torch.randn(hc.base.shape, generator=g))
            hc.scale.copy_(torch.rand(3, generator=g) + 0.5)
        refs.append(hc)
    conn = reslab.connection("mhc", n_blocks=K, dim=D, branches_per_block=BR)
    # their comb[j, k] (x_k <- sum_j comb[j, k] x_j) is our H_res[k, j]: transpose the res block
    perm = list(range(2 * n)) + [2 * n + j * n + i for i in range(n) for j in range(n)]
    with torch.no_grad():
        for t, hc in enumerate(refs):
            conn.phi[t] = hc.fn.t()[:, perm]
            conn.b[t] = hc.base[perm]
            conn.a[t] = hc.scale
    fs = branches(L)
    fs = [(lambda h, f=f: f(h.double()).float()) for f in fs]
    x = torch.randn(B, T, D)
    H = x.unsqueeze(2).expand(-1, -1, n, -1).contiguous()  # their layout (B, T, n, D)
    for hc, f in zip(refs, fs):
        post, comb, collapsed = hc(H)
        H = post.unsqueeze(-1) * f(collapsed).unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), H)
    got = conn(x, [fs[k * BR:(k + 1) * BR] for k in range(K)])
    # their hc_eps (added to pre, comb and every Sinkhorn denominator; not in the paper) is set to 1e-12
    # above: at its default 1e-6 these random weights differ by up to 6e-4 relative (tiny comb entries)
    torch.testing.assert_close(got, H.sum(2), atol=1e-4, rtol=1e-4)
