"""hyper, frac, mhc and the value residual against independent implementations, with the reference's
(perturbed) weights copied into ours: lucidrains' hyper-connections 0.4.11 for HC and Frac-Connections,
transformers' DeepSeek-V4 ``DeepseekV4HyperConnection`` for mHC, x-transformers' ``Attention`` (its
ResFormer value residual) for the GPT's ``value_residual`` and ``reslab.patch(value_residual=True)``.
Each test skips when its reference is not installed."""
from __future__ import annotations

import math

import pytest
import torch

import reslab

torch.set_num_threads(1)
try:
    import hyper_connections as hc_mod
except ImportError:
    hc_mod = None
needs_hc = pytest.mark.skipif(hc_mod is None, reason="hyper-connections (the HC/Frac reference) is not installed")
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
@needs_hc
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


@needs_hc
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


@pytest.mark.parametrize("spec", ["mhc", "mhc(sinkhorn_form=matrix)"])  # the default scalings form and the paper's loop
def test_mhc_matches_deepseek_v4_hyper_connection(spec):
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
    conn = reslab.connection(spec, n_blocks=K, dim=D, branches_per_block=BR)
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


# -- the value residual (ResFormer, arXiv:2410.17897) against x-transformers 2.31.10 -----------------------------
# Compared at the level of one attention layer, the level where both implement it: two layers, the first
# records its values V_1, the second mixes them in; same weights, same inputs (after our pre-norm), same RoPE.
# Conventions (x_transformers/x_transformers.py, 2.31.10): their mix is `value_residual.lerp(v, mix)` =
# (1 - mix) V_1 + mix V_n (l. 2416-2418), so their mix weighs the layer's OWN values and ours (lam) weighs
# V_1: lam = 1 - mix, the same at ResFormer's 0.5. Their Attention default (learned_value_residual_mix=False,
# l. 1933) is that fixed 0.5; their learned mix (l. 2195-2199; on by default in AttentionLayers, l. 2840) is
# data-dependent, sigmoid(Linear(x)) per token and head, where ours is one learned scalar per layer, not
# squashed. It is matched here only as a constant (its Linear's weight zero, its bias logit(1 - lam)). Both
# mix after the projection (theirs after the head split, ours after it in the GPT and before it in the patch:
# the same for a scalar), before the attention and the KV cache, and both take V_1 as layer 1's own,
# unmixed values (l. 2634, 3690-3692).
def _rope_rows(heads, dh):
    """x-transformers rotates interleaved channel pairs (2i, 2i+1), reslab and Llama the two halves
    (i, i + dh/2), at the same frequencies: their channel 2i is our i, 2i+1 our i + dh/2. q.k sums over the
    channels, so q and k rows reordered this way give the same attention."""
    perm = torch.tensor([c // 2 + (c % 2) * (dh // 2) for c in range(dh)])
    return (torch.arange(heads)[:, None] * dh + perm).reshape(-1)


def _xt_attention(xt, wq, wk, wv, wo, heads, lam=None):
    """x-transformers' Attention holding our weights (nn.Linear layout). lam None: their fixed 0.5 mix;
    else their learned mixer pinned at mix = 1 - lam (our lam is the weight of V_1)."""
    dim, dh = wq.shape[1], wq.shape[0] // heads
    attn = xt.Attention(dim=dim, dim_head=dh, heads=heads, causal=True,
                        learned_value_residual_mix=lam is not None).to(wq.dtype)
    rows = _rope_rows(heads, dh)
    with torch.no_grad():
        attn.to_q.weight.copy_(wq[rows])
        attn.to_k.weight.copy_(wk[rows])
        attn.to_v.weight.copy_(wv)
        attn.to_out.weight.copy_(wo)
        if lam is not None:
            mixer = attn.to_value_residual_mix[0]
            mixer.weight.zero_()
            mixer.bias.fill_(math.log((1 - lam) / lam))  # sigmoid of it: 1 - lam
    return attn


def _xt_two_layers(xt, layers, inputs, freqs, tol):
    """Run x-transformers' layer 0 (recording V_1) and layer 1 (mixing it in); also layer 1 without the value
    residual, to show the mix is not lost in the tolerance."""
    out0, inter = layers[0](inputs[0], rotary_pos_emb=(freqs, 1.0), return_intermediates=True)
    out1 = layers[1](inputs[1], rotary_pos_emb=(freqs, 1.0), value_residual=inter.values)
    plain1 = layers[1](inputs[1], rotary_pos_emb=(freqs, 1.0))
    assert (out1 - plain1).abs().max() > 1000 * tol
    return out0, out1


@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_value_residual_gpt_attention_matches_x_transformers(lam):
    """GPT(value_residual) attention layers 1 and 2 == x-transformers' Attention with the same weights, fed
    V_1 of its first layer (lam 0.5: their fixed mix; 0.2: their learned mixer pinned at 0.8, which also
    fixes which side lam weighs). float64; our RoPE tables are float32-rounded, hence 1e-6."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    from reslab.models.gpt import GPT, GPTConfig
    dim, heads, seq = 16, 2, 7
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=seq, n_layer=2, n_head=heads, d_model=dim,
                          value_residual=True, value_residual_init=lam)).double()
    ours = [blocks[0] for blocks in model.blocks]
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # O(1) weights (the 0.02 init makes the outputs tiny), norm gains off 1
        for a in ours:
            for p in (a.qkv.weight, a.proj.weight):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / dim ** 0.5)
            a.norm.weight.copy_(1 + 0.3 * torch.randn(dim, generator=g, dtype=torch.float64))
        ours[1].v_mix.fill_(lam)  # exactly lam in float64 (the float32 init, cast, is 0.2 + 3e-9)
    xs = [torch.randn(2, seq, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    model._first.v = None
    with torch.no_grad():
        got0 = ours[0](xs[0])  # records V_1 in model._first
        got1 = ours[1](xs[1])
    model._first.v = None
    theirs = [_xt_attention(xt, *a.qkv.weight.detach().split(dim), a.proj.weight.detach(), heads,
                            None if i == 0 or lam == 0.5 else lam) for i, a in enumerate(ours)]
    freqs, _ = xt.RotaryEmbedding(dim // heads, base=model.config.rope_base).double().forward_from_seq_len(seq)
    tol = 1e-6
    with torch.no_grad():
        want0, want1 = _xt_two_layers(xt, theirs, [a.norm(x) for a, x in zip(ours, xs)], freqs, tol)
    torch.testing.assert_close(got0, want0, atol=tol, rtol=tol)  # the plain layer: weights and RoPE match
    torch.testing.assert_close(got1, want1, atol=tol, rtol=tol)


@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_value_residual_patch_matches_x_transformers_on_llama(lam):
    """reslab.patch(value_residual=True) on a tiny Llama: each layer's self-attention output, seen in a full
    forward, == x-transformers' Attention with that layer's weights on the same (normed) input, layer 1 fed
    their layer 0's values. float32, 1e-5."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    transformers = pytest.importorskip("transformers")
    from reslab.models.hf import hf_config
    dim, heads, seq = 16, 2, 7
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config("llama", 11, seq, n_layer=2, d_model=dim, n_head=heads,
                                                    d_ff=24)).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for layer in model.model.layers:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                w = getattr(layer.self_attn, name).weight
                w.copy_(torch.randn(w.shape, generator=g) / dim ** 0.5)
    reslab.patch(model, "residual", value_residual=True, value_residual_init=lam)
    seen = {}
    hooks = [layer.self_attn.register_forward_hook(
        lambda m, args, kw, out, k=k: seen.__setitem__(k, (kw["hidden_states"], out[0])), with_kwargs=True)
        for k, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(torch.randint(0, 11, (2, seq), generator=g), use_cache=False)
    for h in hooks:
        h.remove()
    reslab.unpatch(model)
    cfg = model.config
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    theirs = [_xt_attention(xt, *(getattr(layer.self_attn, n).weight.detach() for n in ("q_proj", "k_proj",
                                                                                       "v_proj", "o_proj")),
                            heads, None if i == 0 or lam == 0.5 else lam)
              for i, layer in enumerate(model.model.layers)]
    freqs, _ = xt.RotaryEmbedding(dim // heads, base=theta).forward_from_seq_len(seq)
    tol = 1e-5
    with torch.no_grad():
        want = _xt_two_layers(xt, theirs, [seen[0][0], seen[1][0]], freqs, tol)
    for k in range(2):
        torch.testing.assert_close(seen[k][1], want[k], atol=tol, rtol=tol)
