"""LAuReL (Menghani et al., ICML 2025): baseline at init, hand-written formulas, parameter counts,
gradient flow, recording and the errors for bad specs."""
import itertools

import pytest
import torch

import reslab
from reslab.connections.laurel import Laurel, laurel_extra_params

D, R, K = 6, 2, 3
VARIANTS = ["rw", "lr", "pa", "rw+lr", "rw+pa", "lr+pa", "rw+lr+pa"]
RW_PARAMS = ["softmax2", "sigmoid", "single", "free"]


def spec(variant, **opts):
    words = variant.split("+") + [f"{k}={v}" if v is not True else k for k, v in opts.items()]
    return f"laurel({', '.join(words)})"


def token_blocks(n, branches=2, d=D, dtype=torch.float32):
    """n blocks of `branches` fixed random nonlinear branches on (B, T, D) tensors."""
    g = torch.Generator().manual_seed(1)
    Ws = [[(torch.randn(d, d, generator=g) / d ** 0.5).to(dtype) for _ in range(branches)] for _ in range(n)]
    return [[(lambda h, W=W: torch.tanh(h @ W)) for W in ws] for ws in Ws]


def conv_blocks(n, c=D, dtype=torch.float32):
    """n one-branch blocks mixing the channels of NCHW tensors (a 1x1 conv + tanh)."""
    g = torch.Generator().manual_seed(2)
    Ws = [(torch.randn(c, c, generator=g) / c ** 0.5).to(dtype) for _ in range(n)]
    return [[lambda h, W=W: torch.tanh(torch.einsum("bchw,cd->bdhw", h, W))] for W in Ws]


def randomise(conn, scale=0.5):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in conn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------- hand-written reference
def lowrank(h, A, B, cd):
    """(h A) B over the channel axis, written out with einsum."""
    if cd == -1:
        return torch.einsum("btd,dr,re->bte", h, A, B)
    return torch.einsum("bchw,cr,re->behw", h, A, B)


def rw_alpha_beta(w, rw_param):
    if rw_param == "softmax2":
        e = torch.exp(w)
        return 2 * e[0] / (e[0] + e[1]), 2 * e[1] / (e[0] + e[1])
    if rw_param == "sigmoid":
        return 2 / (1 + torch.exp(-w[0])), 2 / (1 + torch.exp(-w[1]))
    if rw_param == "single":
        a = 2 / (1 + torch.exp(-w))
        return a, 2 - a
    return w[0], w[1]  # free


def reference(variant, conn, x, blocks, *, k=K, unit="block", rw_param="softmax2", cd=-1):
    P = dict(conn.named_parameters())
    inputs = []  # x_0, x_1, ...: every LAuReL unit's input, in order

    def unit_out(t, fx, x):
        inputs.append(x)
        hist = [inputs[t - j] for j in range(min(k, t + 1))]  # x_t, x_{t-1}, ... (only those that exist)
        if "rw" in variant:
            a, b = rw_alpha_beta(P["rw_w"][t], rw_param)
            if a.ndim == 1 and cd == 1:
                a, b = a.view(-1, 1, 1), b.view(-1, 1, 1)
        if variant == "rw":
            return a * fx + b * x
        if variant == "lr":
            return fx + x + lowrank(x, P["lr_A"][t], P["lr_B"][t], cd)
        if variant == "rw+lr":
            return a * fx + b * (x + lowrank(x, P["lr_A"][t], P["lr_B"][t], cd))
        G = P["pa_gamma"][t]
        if variant == "pa":
            return fx + x + sum(G[j] * hist[j] for j in range(len(hist)))
        if variant == "rw+pa":
            return a * fx + b * (x + sum(G[j] * hist[j] for j in range(len(hist))))
        lr_sum = sum(G[j] * lowrank(hist[j], P["pa_A"][t, j], P["pa_B"][t, j], cd) for j in range(len(hist)))
        if variant in ("lr+pa", "pa-lowrank"):
            return fx + x + lr_sum
        assert variant == "rw+lr+pa"
        return a * fx + b * (x + lr_sum)

    t = 0
    for block in blocks:
        if unit == "branch":
            for f in block:
                x, t = unit_out(t, f(x), x), t + 1
        else:
            h = x
            for f in block:
                h = h + f(h)
            x, t = unit_out(t, h - x, x), t + 1  # f(x) = composite residual computation minus x
    return x


# ---------------------------------------------------------------- baseline at init
INIT_SPECS = ([spec(v) for v in VARIANTS] + [spec("rw", rw_param=p) for p in RW_PARAMS]
              + [spec("rw", rw_per_channel=True, rw_param=p) for p in RW_PARAMS]
              + [spec("pa", pa_map="lowrank"), spec("rw+lr+pa", lr_init="xavier"), spec("rw+lr", lr_init="xavier")])


@pytest.mark.parametrize("s", INIT_SPECS)
@pytest.mark.parametrize("unit", ["block", "branch"])
def test_equals_residual_at_init_tokens(s, unit):
    n = 4
    extra = {} if unit == "block" else {"unit": "branch", "branches": 2}
    conn = reslab.connection(s, n, D, rank=R, **extra)
    x, blocks = torch.randn(2, 5, D), token_blocks(n)
    torch.testing.assert_close(conn(x, blocks), reslab.connection("residual", n, D)(x, blocks))


@pytest.mark.parametrize("s", INIT_SPECS)
def test_equals_residual_at_init_nchw(s):
    n = 3
    conn = reslab.connection(s, n, D, channel_dim=1, rank=R)
    x, blocks = torch.randn(2, D, 3, 3), conv_blocks(n)
    torch.testing.assert_close(conn(x, blocks), reslab.connection("residual", n, D, channel_dim=1)(x, blocks))


@pytest.mark.parametrize("s", [spec("lr"), spec("rw+lr"), spec("rw+lr", rw_per_channel=True), spec("rw+lr+pa")])
@pytest.mark.parametrize("cd", [-1, 1])
def test_equals_residual_at_init_with_a_dense_map(s, cd):
    # rank 4 >= D/2: the map is applied as W = A B (and, for LR, as x (I + W) beta), which at init (B = 0,
    # beta = 1) must add exactly nothing in float32 on CPU: bit for bit laurel(rw)'s alpha f + beta x, which sums f the
    # same way
    n = 3
    conn = reslab.connection(s, n, D, channel_dim=cd, rank=4)
    x, blocks = (torch.randn(2, 5, D), token_blocks(n)) if cd == -1 else (torch.randn(2, D, 3, 3), conv_blocks(n))
    rw = reslab.connection(spec("rw", rw_per_channel=True) if "per_channel" in s else "laurel(rw)", n, D, channel_dim=cd)
    torch.testing.assert_close(conn(x, blocks), rw(x, blocks), rtol=0, atol=0)
    torch.testing.assert_close(conn(x, blocks), reslab.connection("residual", n, D, channel_dim=cd)(x, blocks))


# ---------------------------------------------------------------- hand-written formulas
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("unit", ["block", "branch"])
def test_matches_formula_tokens(variant, unit):
    # in float64: the formula and the module sum in different orders, and float32's rounding of that (~1e-5 here)
    # crossed assert_close's float32 tolerance on one CPU's kernels; float64 compares the maths at 1e-7
    n = 4  # k = 3, so blocks 0 and 1 see fewer previous activations
    extra = {} if unit == "block" else {"unit": "branch", "branches": 2}
    conn = reslab.connection(spec(variant), n, D, rank=R, k=K, **extra).double()
    randomise(conn)
    x, blocks = torch.randn(2, 5, D, dtype=torch.float64), token_blocks(n, dtype=torch.float64)
    torch.testing.assert_close(conn(x, blocks), reference(variant, conn, x, blocks, unit=unit))


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_formula_nchw(variant):
    n = 4
    conn = reslab.connection(spec(variant), n, D, channel_dim=1, rank=R, k=2).double()  # float64: see above
    randomise(conn)
    x, blocks = torch.randn(2, D, 3, 3, dtype=torch.float64), conv_blocks(n, dtype=torch.float64)
    torch.testing.assert_close(conn(x, blocks), reference(variant, conn, x, blocks, k=2, cd=1))


LOWRANK_CASES = [("lr", {}), ("rw+lr", {}), ("rw+lr", {"rw_per_channel": True}), ("rw+lr", {"rw_param": "free"}),
                 ("rw+lr", {"rw_param": "sigmoid"}), ("rw+lr", {"rw_param": "single", "rw_per_channel": True}),
                 ("rw+lr", {"unit": "branch"}), ("lr+pa", {}), ("rw+lr+pa", {})]


@pytest.mark.parametrize("variant,opts", LOWRANK_CASES)
@pytest.mark.parametrize("rank", [2, 3, 4, 6])  # D = 6: rank 2 applies A then B; 3 (D = 2r), 4 and 6 form W = A B
@pytest.mark.parametrize("cd", [-1, 1])
def test_lowrank_map_either_way_matches_formula_and_gradients(variant, opts, rank, cd):
    # the module forms W = A B when D <= 2r (cheaper than two thin maps) and, for LR without PA, folds the skip and
    # beta into it: x (I + W) diag(beta). Values and every parameter's and the input's gradient must equal the
    # two-map formula's, either way
    n = 3
    blocks = token_blocks(n, dtype=torch.float64) if cd == -1 else conv_blocks(n, dtype=torch.float64)
    extra = {"branches": len(blocks[0])} if opts.get("unit") == "branch" else {}
    conn = reslab.connection(spec(variant, **opts, **extra), n, D, channel_dim=cd, rank=rank, k=2).double()
    randomise(conn)
    shape = (2, 5, D) if cd == -1 else (2, D, 3, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = conn(x, blocks)
    y_ref = reference(variant, conn, x, blocks, k=2, cd=cd, rw_param=opts.get("rw_param", "softmax2"),
                      unit=opts.get("unit", "block"))
    torch.testing.assert_close(y, y_ref)
    params = [x] + list(conn.parameters())
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, g, allow_unused=True)
    grads_ref = torch.autograd.grad(y_ref, params, g, allow_unused=True)
    for a, b in zip(grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rank,precision,want", [
    (2, "highest", "two maps"), (4, "highest", "folded"), (4, "high", "dense"), (4, "medium", "dense")])
def test_which_evaluation_of_the_lowrank_map_runs(rank, precision, want, monkeypatch):
    # D = 6: rank 2 keeps the two thin maps; rank 4 (D <= 2r) forms W = A B, and folds the skip and beta into it
    # only where float32 products keep float32 precision (a TF32/bf16 product would round the stream itself)
    calls = {"lowrank": 0, "map": 0}
    real_lowrank, real_map = Laurel._lowrank, Laurel._channel_map

    def count(key, real):
        def wrapped(self, *args):
            calls[key] += 1
            return real(self, *args)
        return wrapped

    monkeypatch.setattr(Laurel, "_lowrank", count("lowrank", real_lowrank))
    monkeypatch.setattr(Laurel, "_channel_map", count("map", real_map))
    n, before = 3, torch.get_float32_matmul_precision()
    conn = reslab.connection("laurel(rw, lr)", n, D, rank=rank)
    randomise(conn)
    x, blocks = torch.randn(2, 5, D), token_blocks(n)
    try:
        torch.set_float32_matmul_precision(precision)
        y = conn(x, blocks)
    finally:
        torch.set_float32_matmul_precision(before)
    per_instance = {"two maps": (1, 2), "dense": (1, 1), "folded": (0, 1)}[want]
    assert (calls["lowrank"], calls["map"]) == (n * per_instance[0], n * per_instance[1])
    torch.testing.assert_close(y, reference("rw+lr", conn, x, blocks))


@pytest.mark.parametrize("rw_param", RW_PARAMS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("cd", [-1, 1])
def test_rw_parametrisations_match_formula(rw_param, per_channel, cd):
    n = 3
    conn = reslab.connection(spec("rw", rw_param=rw_param, rw_per_channel=per_channel), n, D, channel_dim=cd)
    randomise(conn)
    x, blocks = (torch.randn(2, 5, D), token_blocks(n)) if cd == -1 else (torch.randn(2, D, 3, 3), conv_blocks(n))
    torch.testing.assert_close(conn(x, blocks), reference("rw", conn, x, blocks, rw_param=rw_param, cd=cd))


def test_pa_lowrank_without_lr_is_eq6_without_rw():
    conn = reslab.connection("laurel(pa, pa_map=lowrank)", 4, D, rank=R)
    randomise(conn)
    x, blocks = torch.randn(2, 5, D), token_blocks(4)
    torch.testing.assert_close(conn(x, blocks), reference("pa-lowrank", conn, x, blocks))


def test_init_values():
    conn = reslab.connection("laurel(rw, lr, rank=2)", 2, 4)
    A = conn.lr_A[0]
    want = torch.tensor([[1.0 if i % 2 == j else 0.0 for j in range(2)] for i in range(4)]) / (2 * 4) ** 0.5
    torch.testing.assert_close(A, want)
    assert conn.lr_B.abs().sum() == 0
    c = conn.coefficients()
    assert set(c) == {"alpha", "beta", "lr_norm"} and torch.all(c["alpha"] == 1) and torch.all(c["beta"] == 1)
    assert torch.all(c["lr_norm"] == 0)  # B = 0: the low-rank map starts switched off
    assert torch.all(reslab.connection("laurel(pa)", 2, 4).pa_gamma == 0)
    assert torch.all(reslab.connection("laurel(lr, pa)", 2, 4, rank=2).pa_gamma == 1)


# ---------------------------------------------------------------- parameter counts
COMBOS = [(rw, lr, pa) for rw, lr, pa in itertools.product([False, True], repeat=3) if rw or lr or pa]


@pytest.mark.parametrize("rw,lr,pa", COMBOS)
def test_param_counts_match_formula(rw, lr, pa):
    n, d, r, k = 3, 5, 2, 2
    for rw_param, per_ch, pa_map, unit in itertools.product(RW_PARAMS, [False, True],
                                                            ["auto", "identity", "lowrank"], ["block", "branch"]):
        if (pa_map != "auto" and not pa) or (pa_map == "identity" and lr):
            continue
        conn = Laurel(n, d, rw=rw, lr=lr, pa=pa, rank=r, k=k, rw_param=rw_param, rw_per_channel=per_ch,
                      pa_map=pa_map, unit=unit, branches=2)
        n_inst = n * (2 if unit == "branch" else 1)
        assert conn.extra_parameters() == laurel_extra_params(rw, lr, pa, r, k, d, n_inst, rw_param, per_ch, pa_map)


@pytest.mark.parametrize("s,want", [
    ("laurel(rw)", 4 * 2),
    ("laurel(rw, rw_param=single)", 4 * 1),
    ("laurel(rw, rw_per_channel)", 4 * 2 * 8),
    ("laurel(lr)", 4 * 2 * 2 * 8),
    ("laurel(pa)", 4 * 3),
    ("laurel(rw, lr)", 4 * (2 + 2 * 2 * 8)),
    ("laurel(lr, pa)", 4 * (2 * 2 * 3 * 8 + 3)),
    ("laurel(rw, lr, pa)", 4 * (2 + 2 * 2 * 3 * 8 + 3)),
    ("laurel(rw, lr, unit=branch, branches=2)", 8 * (2 + 2 * 2 * 8)),
])
def test_param_counts_by_hand(s, want):  # n_blocks=4, D=8, r=2, k=3
    assert reslab.connection(s, 4, 8, rank=2).extra_parameters() == want


def test_paper_worked_example():  # sec 3.2.1: RW+LR, r=4, N=20 layers, D=1000 -> 2N(4D+1) = 160,040
    assert laurel_extra_params(True, True, False, 4, 3, 1000, 20) == 160_040


# ---------------------------------------------------------------- gradients
def used_mask(name, p, n_inst, k):
    """gamma[t, j] and pa_A/pa_B[t, j] with j > t are never used: the first units see fewer activations."""
    m = torch.ones_like(p, dtype=torch.bool)
    if name.startswith("pa_"):
        for t in range(min(n_inst, k)):
            m[t, t + 1:] = False
    return m


def check_grads(conn, n_inst, k=K):
    for name, p in conn.named_parameters():
        assert p.grad is not None, name
        m = used_mask(name, p, n_inst, k)
        assert torch.all(p.grad[m] != 0), f"{name} has entries without gradient"
        assert torch.all(p.grad[~m] == 0), name


@pytest.mark.parametrize("s", [spec(v) for v in VARIANTS] + [spec("rw", rw_param=p, rw_per_channel=True)
                                                            for p in RW_PARAMS] + ["laurel(pa, pa_map=lowrank)"])
@pytest.mark.parametrize("cd", [-1, 1])
def test_every_parameter_gets_gradient(s, cd):
    n = 4
    conn = reslab.connection(s, n, D, channel_dim=cd, rank=R)
    randomise(conn)  # B and gamma away from 0
    x, blocks = (torch.randn(2, 5, D), token_blocks(n)) if cd == -1 else (torch.randn(2, D, 3, 3), conv_blocks(n))
    (conn(x, blocks) * torch.randn_like(x)).sum().backward()
    check_grads(conn, n)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_reaches_everything_after_one_step_from_init(variant):
    n = 4
    conn = reslab.connection(spec(variant), n, D, rank=R, unit="branch", branches=2)
    opt = torch.optim.SGD(conn.parameters(), lr=0.1)
    x, blocks, w = torch.randn(2, 5, D), token_blocks(n), torch.randn(2, 5, D)
    (conn(x, blocks) * w).sum().backward()
    opt.step()  # moves B off zero (LoRA-style); from now on A and the low-rank gamma see gradient too
    opt.zero_grad()
    (conn(x, blocks) * w).sum().backward()
    check_grads(conn, 2 * n)


# ---------------------------------------------------------------- coefficients, recording
def test_coefficients_shapes_and_bounds():
    conn = reslab.connection("laurel(rw, pa, rw_per_channel)", 3, D)
    randomise(conn, scale=3.0)
    c = conn.coefficients()
    assert set(c) == {"alpha", "beta", "gamma"}
    assert c["alpha"].shape == (3, D) and c["beta"].shape == (3, D) and c["gamma"].shape == (3, K)
    torch.testing.assert_close(c["alpha"] + c["beta"], torch.full((3, D), 2.0))  # 2*softmax sums to 2
    assert torch.all((c["alpha"] > 0) & (c["alpha"] < 2)) and not c["alpha"].requires_grad
    sig = reslab.connection("laurel(rw, rw_param=sigmoid)", 3, D)
    randomise(sig, scale=3.0)
    a = sig.coefficients()["alpha"]
    assert a.shape == (3,) and torch.all((a > 0) & (a < 2))
    lr = reslab.connection("laurel(lr)", 3, D)
    assert set(lr.coefficients()) == {"lr_norm"} and lr.coefficients()["lr_norm"].shape == (3,)


def test_recording():
    conn = reslab.connection("laurel(rw, lr)", 3, D, rank=R)
    x, blocks = torch.randn(2, 5, D), token_blocks(3)
    with reslab.record(conn) as rec:
        y = conn(x, blocks)
    assert len(rec.branch_stats()) == 3 * 2
    states = rec.states["connection"]
    assert len(states) == 4 and abs(states[-1] - float(y.detach().pow(2).mean().sqrt())) < 1e-5


def test_lesioned_block_keeps_only_g():
    conn = reslab.connection("laurel(rw, lr)", 3, D, rank=R)
    randomise(conn)
    x, blocks = torch.randn(2, 5, D), token_blocks(3)
    conn._lesioned = frozenset({1})
    zero = lambda h: torch.zeros_like(h)  # noqa: E731
    want = reference("rw+lr", conn, x, [blocks[0], [zero, zero], blocks[2]])
    torch.testing.assert_close(conn(x, blocks), want)


# ---------------------------------------------------------------- bad specs
def test_bare_laurel_is_rw_lr():
    bare, full = reslab.connection("laurel", 2, D), reslab.connection("laurel(rw, lr)", 2, D)
    assert (bare.rw, bare.lr, bare.pa) == (True, True, False) and (Laurel(2, D).rw, Laurel(2, D).lr) == (True, True)
    assert bare.extra_parameters() == full.extra_parameters() == 2 * (2 + 2 * 16 * D)


def test_bad_rank_and_k():
    with pytest.raises(ValueError, match="rank"):
        reslab.connection("laurel(lr, rank=0)", 2, D)
    # constructing the class directly is validated by the registry too, with the same message
    with pytest.raises(ValueError, match="option 'rank': 0 is out of range"):
        Laurel(2, D, lr=True, rank=0)
    with pytest.raises(ValueError, match="option 'k': 0 is out of range"):
        Laurel(2, D, pa=True, k=0)
    # a rank above the width is refused before anything is allocated
    with pytest.raises(ValueError, match=r"rank=1000000 exceeds the stream's width D=32"):
        reslab.connection("laurel(lr, rank=1000000)", 2, 32)


def test_identity_pa_with_lr_rejected():
    with pytest.raises(ValueError, match="pa_map=identity cannot be combined with lr"):
        reslab.connection("laurel(lr, pa, pa_map=identity)", 2, D)
    with pytest.raises(ValueError, match="add the pa flag"):
        reslab.connection("laurel(rw, pa_map=lowrank)", 2, D)


def test_branch_unit_needs_branch_count():
    conn = reslab.connection("laurel(rw, unit=branch)", 2, D)
    with pytest.raises(ValueError, match=r"set laurel\(unit=branch, branches=2\)"):
        conn(torch.randn(1, 3, D), token_blocks(2))


def test_registry_entry():
    info = reslab.connections.REGISTRY["laurel"]
    assert "arXiv:2411.07501" in info.paper and "RW+LR+PA 2+2rkD+k" in info.params
    with pytest.raises(ValueError, match="unknown option"):
        reslab.connection("laurel(rw, ranks=4)", 2, D)
