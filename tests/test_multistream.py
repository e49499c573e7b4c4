"""hyper, mhc, frac, attnres and muddformer against hand-written formulas and the claims of their papers
(init behaviour, doubly stochastic mixing); the GPT's value-residual option."""
from __future__ import annotations

import pytest
import torch
from conftest import perturb
import torch.nn.functional as F

import reslab
from reslab.connections.mhc import sinkhorn
from reslab.models.gpt import GPT, GPTConfig

torch.set_num_threads(1)
K, BR, D, B, T = 3, 2, 8, 2, 3


def branches(n_layers, dim=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5 for _ in range(n_layers)]
    return [(lambda h, w=w: torch.tanh(h @ w.to(h.dtype))) for w in ws]


def as_blocks(fs, br=BR):
    return [fs[k * br:(k + 1) * br] for k in range(len(fs) // br)]


def build(spec, **kw):
    return reslab.connection(spec, n_blocks=K, dim=D, branches_per_block=BR, **kw).double()


def residual_out(fs, x):
    h = x
    for f in fs:
        h = h + f(h)
    return h


def test_hyper_sum_is_n_times_residual_at_init_and_equal_after_a_final_norm():
    fs, x = branches(K * BR), torch.randn(B, T, D, dtype=torch.float64)
    ref = residual_out(fs, x)
    for spec, n in (("hyper", 4), ("hyper(dynamic, n=3)", 3)):
        y = build(spec)(x, as_blocks(fs))
        torch.testing.assert_close(y, n * ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(F.rms_norm(y, (D,)), F.rms_norm(ref, (D,)), atol=1e-6, rtol=0)


def test_static_hyper_equals_the_hand_written_streams():
    """n = 2 with perturbed weights: x = sum_s A_m[s] h_s, h_u <- sum_s A_r[s,u] h_s + beta_u f(x)."""
    conn = perturb(build("hyper(n=2)"))
    fs, x = branches(K * BR), torch.randn(B, T, D, dtype=torch.float64)
    A, beta = conn.alpha.detach()[:, :, 0, 0, :], conn.beta.detach()[:, :, 0]  # (L, n, 1+n), (L, n)
    h = [x, x]
    for t, f in enumerate(fs):
        inp = A[t, 0, 0] * h[0] + A[t, 1, 0] * h[1]
        out = f(inp)
        h = [A[t, 0, 1 + u] * h[0] + A[t, 1, 1 + u] * h[1] + beta[t, u] * out for u in range(2)]
    torch.testing.assert_close(conn(x, as_blocks(fs)), h[0] + h[1])


def test_frac_fraction_g_is_read_and_written_per_fraction():
    """m = 2, static: input fraction g = sum_f G[f,g] h_f; h_g <- sum_f A[f,g] h_f + beta_g f(x)_g."""
    conn = perturb(build("frac(m=2)"))
    fs, x = branches(K * BR), torch.randn(B, T, D, dtype=torch.float64)
    A, beta = conn.alpha.detach()[:, 0], conn.beta.detach()[:, 0]  # (L, m, m, 2), (L, m)
    h = list(x.split(D // 2, -1))
    for t, f in enumerate(fs):
        inp = torch.cat([sum(A[t, fr, g, 0] * h[fr] for fr in range(2)) for g in range(2)], -1)
        out = f(inp).split(D // 2, -1)
        h = [sum(A[t, fr, g, 1] * h[fr] for fr in range(2)) + beta[t, g] * out[g] for g in range(2)]
    torch.testing.assert_close(conn(x, as_blocks(fs)), torch.cat(h, -1))


def test_mhc_equals_residual_at_init_up_to_rounding_and_hand_formula_after_perturbation():
    fs, x = branches(K * BR), torch.randn(B, T, D, dtype=torch.float64)
    torch.testing.assert_close(build("mhc(reduce=mean)")(x, as_blocks(fs)), residual_out(fs, x), atol=1e-6, rtol=0)
    conn = perturb(build("mhc(n=2)"))
    n = 2
    H = torch.stack([x, x])
    for t, f in enumerate(fs):
        v = torch.cat([H[0], H[1]], -1)
        v = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
        z = v @ conn.phi[t].detach()
        a, b = conn.a[t].detach(), conn.b[t].detach()
        pre = torch.sigmoid(a[0] * z[..., :n] + b[:n])
        post = 2 * torch.sigmoid(a[1] * z[..., n:2 * n] + b[n:2 * n])
        M = torch.exp((a[2] * z[..., 2 * n:] + b[2 * n:]).unflatten(-1, (n, n)))
        for _ in range(20):
            M = M / M.sum(-2, keepdim=True)
            M = M / M.sum(-1, keepdim=True)
        out = f(pre[..., 0:1] * H[0] + pre[..., 1:2] * H[1])
        H = torch.stack([M[..., i, 0:1] * H[0] + M[..., i, 1:2] * H[1] + post[..., i:i + 1] * out for i in range(n)])
    torch.testing.assert_close(conn(x, as_blocks(fs)), H.sum(0))


def test_mhc_mixing_stays_doubly_stochastic_through_training_and_in_float32_under_autocast():
    torch.manual_seed(0)
    conn = reslab.connection("mhc", n_blocks=K, dim=D, branches_per_block=BR)
    fs = [(lambda h, f=f: f(h.double()).float()) for f in branches(K * BR)]
    opt = torch.optim.Adam(conn.parameters(), lr=0.01)
    x, target = torch.randn(4, T, D), torch.randn(4, T, D)
    for step in range(20):
        loss = (conn(x, as_blocks(fs)) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # the H_res every branch computes on the streams it actually sees
            state = conn.start(x)
            for t, f in enumerate(fs):
                res = conn.maps(state[0], t)[2]
                assert (res.sum(-1) - 1).abs().max() <= 1e-3 and (res.sum(-2) - 1).abs().max() <= 1e-3, step
                assert (res >= 0).all()
                state = conn.branch_output(state, t // BR, t % BR, state[1], f(state[1]))
    assert conn.a.detach().sub(0.01).abs().max() > 0.05  # the maps did move away from their init
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pre, post, res = conn.maps(torch.randn(conn.n, 2, T, D).bfloat16(), 0)
    assert res.dtype == torch.float32 and (res.sum(-2) - 1).abs().max() <= 1e-3
    S = sinkhorn(torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0)), 20)
    assert torch.allclose(S.sum(-1), torch.ones(5, 4)) and (S.sum(-2) - 1).abs().max() <= 1e-3


def attnres_by_hand(conn, fs, x, S):
    def read(src, t):
        V = torch.stack(src)
        logits = (V / torch.sqrt(V.pow(2).mean(-1, keepdim=True) + 1e-6)) @ conn.queries[t].detach()
        return (torch.softmax(logits, 0).unsqueeze(-1) * V).sum(0)

    src = [x]
    for t, f in enumerate(fs):
        out = f(read(src, t))
        src = src + [out] if t % S == 0 else src[:-1] + [src[-1] + out]
    return read(src, len(fs))


def test_attnres_full_and_block_equal_the_hand_formula():
    fs, x = branches(K * BR), torch.randn(B, T, D, dtype=torch.float64)
    for S in (1, 2, 4):
        conn = perturb(build(f"attnres(block={S})"), scale=1.0)
        torch.testing.assert_close(conn(x, as_blocks(fs)), attnres_by_hand(conn, fs, x, S))
    # zero queries: the first branch reads h_0, the output is the uniform average of the sources
    conn = build("attnres")
    y = conn(x, as_blocks(fs))
    src, h = [x], None
    for f in fs:
        h = f(sum(src) / len(src))
        src.append(h)
    torch.testing.assert_close(y, sum(src) / len(src))


def test_muddformer_equals_the_hand_formula():
    fs, x = branches(K * BR), torch.randn(B, T, D, dtype=torch.float64)
    for spec in ("muddformer", "muddformer(dynamic=false)"):
        conn = perturb(build(spec))
        Xs, xbar = [x], x
        for k in range(K):
            h = xbar
            for f in fs[k * BR:(k + 1) * BR]:
                h = h + f(h)
            Xs.append(h)
            A = conn.a[k].detach()
            if conn.dynamic:
                nrm = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
                A = F.gelu(nrm @ conn.w1[k].detach()) @ conn.w2[k].detach() + A
                xbar = sum(A[..., i:i + 1] * Xs[i] for i in range(k + 2))
            else:
                xbar = sum(A[i] * Xs[i] for i in range(k + 2))
        torch.testing.assert_close(conn(x, as_blocks(fs)), xbar)


def gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=3, n_head=2, d_model=16, **kw))


def test_value_residual_is_the_plain_gpt_at_mix_zero_or_off_and_differs_otherwise():
    idx = torch.randint(0, 17, (2, 8))
    plain = gpt()(idx)
    torch.testing.assert_close(gpt(value_residual=True, value_residual_init=0.0)(idx), plain, atol=0, rtol=0)
    torch.testing.assert_close(gpt(value_residual=False, value_residual_init=0.7)(idx), plain, atol=0, rtol=0)
    model = gpt(value_residual=True)
    assert not torch.allclose(model(idx), plain)
    assert sum(p.numel() for n, p in model.named_parameters() if "v_mix" in n) == 2  # layers 2..n
    assert model._first.v is None  # no graph kept between passes


def test_value_residual_mixes_the_first_layers_values_by_hand():
    """lam = 1 in layer 2: its attention uses V_1 (the first layer's values of its own input)."""
    model = gpt(value_residual=True)
    attn0, attn1 = model.blocks[0][0], model.blocks[1][0]
    with torch.no_grad():
        attn1.v_mix.fill_(1.0)
    x0, x1 = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    model._first.v = None
    attn0(x0)
    v1 = model._first.v
    got = attn1(x1)
    D, H = 16, 2
    q, k, _ = attn1.qkv(attn1.norm(x1)).split(D, dim=-1)
    q, k = (t.view(2, 8, H, D // H).transpose(1, 2) for t in (q, k))
    y = F.scaled_dot_product_attention(attn1.rotary(q), attn1.rotary(k), v1, is_causal=True)
    torch.testing.assert_close(got, attn1.proj(y.transpose(1, 2).reshape(2, 8, D)))


def test_value_residual_gpt_trains_with_a_multistream_connection():
    model = gpt(value_residual=True, connection="hyper(dynamic)")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 17, (8, 8))
    losses = []
    for _ in range(30):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 17), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for n, p in model.named_parameters() if "v_mix" in n)


def counting_saved(fn, distinct=False):
    """(fn(), how many numbers autograd saved for the backward pass while fn ran; distinct: a tensor saved by several
    ops counted once, as it is stored once)."""
    stored = {}

    def pack(t):
        stored[(t.data_ptr(), t.numel()) if distinct else len(stored)] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(stored.values())


def test_mhc_recompute_gives_the_same_values_and_gradients_and_stores_less():
    """recompute (the default) checkpoints the maps: the same outputs and gradients as storing them (float64,
    tight tolerance), far fewer numbers kept for the backward pass, and torch.func.grad (which disables the
    saved-tensor hooks the checkpoint needs) falls back to the plain path instead of raising."""
    fs = branches(K * BR)
    off = perturb(build("mhc(recompute=false)"))
    on = build("mhc")
    on.load_state_dict(off.state_dict())
    assert on.recompute and not off.recompute
    x = torch.randn(B, 6, 5, D, dtype=torch.float64)

    def run(conn):
        inp = x.clone().requires_grad_()
        y, kept = counting_saved(lambda: conn(inp, as_blocks(fs)))
        grads = torch.autograd.grad(y.pow(2).sum(), (inp, *conn.parameters()))
        return y, grads, kept

    y_on, g_on, kept_on = run(on)
    y_off, g_off, kept_off = run(off)
    torch.testing.assert_close(y_on, y_off, atol=1e-12, rtol=1e-12)
    for a, b in zip(g_on, g_off):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert kept_on < kept_off / 3, (kept_on, kept_off)
    g_func = torch.func.grad(lambda h: on(h, as_blocks(fs)).pow(2).sum())(x)
    torch.testing.assert_close(g_func, g_on[0], atol=1e-12, rtol=1e-12)


def test_sinkhorn_in_checkpointed_chunks_gives_the_same_values_and_gradients_and_stores_less():
    """sinkhorn(chunk=k) runs the iterations in checkpointed chunks: the same matrices and gradients bit for bit,
    and autograd keeps each chunk's input instead of every iterate (20 iterations, chunks of 4: 5 inputs)."""
    logits = torch.randn(7, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.randn(7, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run(chunk):
        z = logits.clone().requires_grad_()
        S, kept = counting_saved(lambda: sinkhorn(z, 20, chunk))
        (g,) = torch.autograd.grad((S * w).sum(), z)
        return S, g, kept

    S_all, g_all, kept_all = run(0)
    S_chunk, g_chunk, kept_chunk = run(4)
    assert torch.equal(S_chunk, S_all) and torch.equal(g_chunk, g_all)
    # every iterate: 40 divisions keep their 7x4x4 input and 7x4 divisor; chunked: the exp's input/output and 5 inputs
    assert kept_all >= 40 * 7 * (16 + 4), kept_all
    assert kept_chunk <= 8 * 7 * 16, kept_chunk
    with torch.no_grad():  # nothing to store: the plain loop, same values
        assert torch.equal(sinkhorn(logits, 20, 4), S_all)


def test_mhc_sinkhorn_chunks_change_nothing_but_memory():
    """mhc(sinkhorn_form=matrix, sinkhorn_chunk=4) against chunk 0 (every iterate kept), through a whole stack with
    recompute on and off: identical outputs and gradients."""
    fs = branches(K * BR)
    x = torch.randn(B, 6, 5, D, dtype=torch.float64)
    for recompute in ("true", "false"):
        ref = perturb(build(f"mhc(recompute={recompute}, sinkhorn_form=matrix)"))
        chunked = build(f"mhc(recompute={recompute}, sinkhorn_form=matrix, sinkhorn_chunk=4)")
        chunked.load_state_dict(ref.state_dict())
        assert chunked.sinkhorn_chunk == 4 and ref.sinkhorn_chunk == 0
        outs = []
        for conn in (ref, chunked):
            inp = x.clone().requires_grad_()
            y = conn(inp, as_blocks(fs))
            outs.append((y, torch.autograd.grad(y.pow(2).sum(), (inp, *conn.parameters()))))
        (y0, g0), (y1, g1) = outs
        assert torch.equal(y0, y1)
        assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_sinkhorn_scalings_equal_the_matrix_form_and_keep_vectors():
    """sinkhorn_scalings carries the iterations as diag(r) K diag(c): the matrix form's values and gradients up to
    rounding (float64) for 1, 2 and 20 iterations, and autograd keeps n-vectors per iteration, not n x n matrices."""
    from reslab.connections.mhc import sinkhorn_scalings

    gen = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(7, 4, 4, dtype=torch.float64, generator=gen)
    w = torch.randn(7, 4, 4, dtype=torch.float64, generator=gen)
    for iters in (1, 2, 20):
        outs = []
        for fn in (sinkhorn, sinkhorn_scalings):
            z = logits.clone().requires_grad_()
            S, kept = counting_saved(lambda: fn(z, iters), distinct=True)
            outs.append((S, torch.autograd.grad((S * w).sum(), z)[0], kept))
        (S_m, g_m, kept_m), (S_s, g_s, kept_s) = outs
        torch.testing.assert_close(S_s, S_m, atol=1e-13, rtol=1e-13)
        torch.testing.assert_close(g_s, g_m, atol=1e-12, rtol=1e-12)
    # 20 iterations: the matrix form keeps every iterate (40 x (7x4x4 + 7x4)); the scalings form K (and exp's input)
    # once, and per iteration two 7x4 scalings and their reciprocals' inputs/outputs
    assert kept_m >= 40 * 7 * (16 + 4), kept_m
    assert kept_s <= 3 * 7 * 16 + 40 * 2 * 7 * 4, kept_s
    assert kept_s < kept_m / 3, (kept_s, kept_m)


def test_sinkhorn_scalings_matvec_products_equal_the_broadcast_sums():
    """The scalings' updates are batched matrix-vector products (matmul): against the same loop written as a
    broadcast product summed, the values and gradients agree to float32 rounding (on this project's CPUs: bit for
    bit; the tolerance leaves other BLAS builds their own summation order)."""
    from reslab.connections.mhc import _sinkhorn_start, sinkhorn_scalings

    def broadcast_form(logits, iters):
        K = _sinkhorn_start(logits)
        c = K.sum(-2).reciprocal()
        r = (K * c.unsqueeze(-2)).sum(-1).reciprocal()
        for _ in range(iters - 1):
            c = (K * r.unsqueeze(-1)).sum(-2).reciprocal()
            r = (K * c.unsqueeze(-2)).sum(-1).reciprocal()
        return r.unsqueeze(-1) * K * c.unsqueeze(-2)

    gen = torch.Generator().manual_seed(5)
    logits, w = 3 * torch.randn(2, 9, 4, 4, generator=gen), torch.randn(2, 9, 4, 4, generator=gen)
    outs = []
    for fn in (broadcast_form, sinkhorn_scalings):
        z = logits.clone().requires_grad_()
        S = fn(z, 20)
        outs.append((S, torch.autograd.grad((S * w).sum(), z)[0]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)


def test_mhc_sinkhorn_form_changes_only_rounding_and_rejects_chunks():
    """mhc (the scalings form, the default) against mhc(sinkhorn_form=matrix) through a whole stack, recompute on and
    off: the same outputs and gradients up to float64 rounding; sinkhorn_chunk with the scalings form is a clear
    error that says how to ask for the matrix form."""
    fs = branches(K * BR)
    x = torch.randn(B, 6, 5, D, dtype=torch.float64)
    for recompute in ("true", "false"):
        ref = perturb(build(f"mhc(recompute={recompute}, sinkhorn_form=matrix)"))
        scal = build(f"mhc(recompute={recompute})")
        scal.load_state_dict(ref.state_dict())
        assert ref.sinkhorn_form == "matrix" and scal.sinkhorn_form == "scalings"
        outs = []
        for conn in (ref, scal):
            inp = x.clone().requires_grad_()
            y = conn(inp, as_blocks(fs))
            outs.append((y, torch.autograd.grad(y.pow(2).sum(), (inp, *conn.parameters()))))
        (y0, g0), (y1, g1) = outs
        torch.testing.assert_close(y1, y0, atol=1e-12, rtol=1e-12)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(scal.coefficients()["res"], ref.coefficients()["res"], atol=1e-13, rtol=1e-13)
    for spec in ("mhc(sinkhorn_chunk=4)", "mhc(sinkhorn_form=scalings, sinkhorn_chunk=4)"):
        with pytest.raises(ValueError, match=r"sinkhorn_chunk=4 applies to sinkhorn_form=matrix only .* write "
                                             r"mhc\(sinkhorn_form=matrix, sinkhorn_chunk=4\)"):
            build(spec)
    from reslab.connections.mhc import MHC

    # constructed directly, not from a spec string, a misspelt form is still refused (the registered options check
    # the constructor's arguments), not run as the matrix form
    with pytest.raises(ValueError, match="option 'sinkhorn_form': 'scaling' is not one of scalings, matrix"):
        MHC(2, 8, sinkhorn_form="scaling")


def test_compiled_sinkhorn_op_matches_autograd_and_passes_opcheck():
    """The op that carries Sinkhorn through torch.compile: its forward is sinkhorn(), its hand-written backward
    (re-running the iterations whole or in chunks) equals autograd's gradient of the plain loop, and
    torch.library.opcheck finds its fake and autograd registrations consistent."""
    from reslab.connections.mhc import _sinkhorn_backward_op, _sinkhorn_op

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, 4, dtype=torch.float64, generator=gen)
    grad = torch.randn(6, 4, 4, dtype=torch.float64, generator=gen)
    z = logits.clone().requires_grad_()
    S = sinkhorn(z, 20)
    (g_ref,) = torch.autograd.grad(S, z, grad)
    assert torch.equal(_sinkhorn_op(logits, 20, 0), S.detach())
    for chunk in (0, 3, 4, 20, 50):
        torch.testing.assert_close(_sinkhorn_backward_op(logits, grad, 20, chunk), g_ref, atol=1e-12, rtol=1e-12)
    torch.library.opcheck(_sinkhorn_op, (logits.clone().requires_grad_(), 5, 2))


def test_compiled_mhc_gradients_match_eager_for_every_parameter():
    """Through torch.compile (aot_eager: the same graph capture and AOT autograd as inductor, no code generation)
    mhc's Sinkhorn is traced (the default scalings form, and the matrix form) or, with sinkhorn_chunk, the op above: the
    outputs and every parameter's gradient match eager."""
    fs = branches(K * BR)
    x = torch.randn(B, 6, 5, D, dtype=torch.float64)
    for spec in ("mhc", "mhc(sinkhorn_form=matrix)", "mhc(sinkhorn_form=matrix, sinkhorn_chunk=4)"):
        torch._dynamo.reset()
        conn = perturb(build(spec))
        run = torch.compile(lambda h: conn(h, as_blocks(fs)), fullgraph=True, backend="aot_eager")
        y_c = run(x)
        g_c = torch.autograd.grad(y_c.pow(2).sum(), list(conn.parameters()))
        y_e = conn(x, as_blocks(fs))
        g_e = torch.autograd.grad(y_e.pow(2).sum(), list(conn.parameters()))
        torch.testing.assert_close(y_c, y_e, atol=1e-12, rtol=1e-12)
        for a, b in zip(g_c, g_e):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
