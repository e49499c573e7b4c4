"""ANCRe, DenseFormer, the lesion mechanism and the topology analysis, against hand-written formulas."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import reslab
from reslab.analysis.topology import (effective_depth, effective_depths, layer_drop_sensitivity, plot_routing,
                                      routing_matrix, sensitivity_summary)

D = 5


def make_blocks(K, n_branches=2, seed=0):
    """K blocks of n_branches small tanh(Linear) branches, in float64 so comparisons can be tight."""
    g = torch.Generator().manual_seed(seed)
    lins = nn.ModuleList()
    blocks = []
    for _ in range(K):
        blk = []
        for _ in range(n_branches):
            lin = nn.Linear(D, D).double()
            with torch.no_grad():
                lin.weight.copy_(torch.randn(D, D, generator=g, dtype=torch.float64) * 0.5)
                lin.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64) * 0.1)
            lins.append(lin)
            blk.append(lambda x, lin=lin: torch.tanh(lin(x)))
        blocks.append(blk)
    return blocks, lins


def x_input(seed=1):
    return torch.randn(3, 4, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- ANCRe: hand formula
def p_by_hand(C, i, j, K, tau, norm):
    """p_ij with an explicit softmax: over sources i' < j (incoming) or destinations j' > i (outgoing)."""
    if norm == "incoming":
        den = sum(math.exp(C[(k, j)] / tau) for k in range(j))
    else:
        den = sum(math.exp(C[(i, k)] / tau) for k in range(i + 1, K + 1))
    return math.exp(C[(i, j)] / tau) / den


def ancre_by_hand(x, blocks, p, form):
    hs = [x]
    for j in range(1, len(blocks) + 1):
        h = hs[j - 1]
        for f in blocks[j - 1]:
            h = h + f(h) if form == "repo" else f(h)
        for i in range(j):
            h = h + p(i, j) * hs[i]
        hs.append(h)
    return hs[-1]


def set_logits(conn, C, K, norm):
    """Fill the packed logits in the documented order: row-major over (destination j, source i),
    skipping the singleton edge (0->1 incoming, (K-1)->K outgoing)."""
    single = (0, 1) if norm == "incoming" else (K - 1, K)
    vals = [C[(i, j)] for j in range(1, K + 1) for i in range(j) if (i, j) != single]
    with torch.no_grad():
        conn.logits.copy_(torch.tensor(vals, dtype=conn.logits.dtype))


def random_logits(K, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {(i, j): float(torch.randn((), generator=g)) for j in range(1, K + 1) for i in range(j)}


@pytest.mark.parametrize("form", ["repo", "theory"])
@pytest.mark.parametrize("norm", ["incoming", "outgoing"])
def test_ancre_matches_hand_formula(form, norm):
    K, tau = 4, 0.25  # a power of two, so the float32 buffer holds it exactly
    blocks, _ = make_blocks(K)
    conn = reslab.connection(f"ancre(tau={tau}, form={form}, norm={norm})", K, D).double()
    C = random_logits(K)
    set_logits(conn, C, K, norm)
    p = lambda i, j: p_by_hand(C, i, j, K, tau, norm)  # noqa: E731
    x = x_input()
    torch.testing.assert_close(conn(x, blocks), ancre_by_hand(x, blocks, p, form), rtol=1e-12, atol=1e-12)
    R = conn.coefficients()["routing"]
    assert R.shape == (K, K + 1)
    want = torch.zeros(K, K + 1, dtype=torch.float64)
    for j in range(1, K + 1):
        for i in range(j):
            want[j - 1, i] = p(i, j)
    torch.testing.assert_close(R, want, rtol=1e-12, atol=1e-12)
    sums = R.sum(1) if norm == "incoming" else R[:, :K].sum(0)
    torch.testing.assert_close(sums, torch.ones(K, dtype=torch.float64))


@pytest.mark.parametrize("form", ["repo", "theory"])
def test_ancre_fixed_is_uniform_average(form):
    K = 3
    blocks, _ = make_blocks(K)
    conn = reslab.connection(f"ancre(learn=false, form={form})", K, D).double()
    assert conn.extra_parameters() == 0 and not any(p.requires_grad for p in conn.parameters())
    x = x_input()
    torch.testing.assert_close(conn(x, blocks), ancre_by_hand(x, blocks, lambda i, j: 1.0 / j, form))


def test_ancre_default_init_is_uniform():
    K = 4
    blocks, _ = make_blocks(K)
    conn = reslab.connection("ancre", K, D).double()
    x = x_input()
    torch.testing.assert_close(conn(x, blocks), ancre_by_hand(x, blocks, lambda i, j: 1.0 / j, "repo"))


def test_ancre_theory_one_hot_cascade_is_residual():
    K = 3
    blocks, _ = make_blocks(K, n_branches=1)  # theory blocks chain their branches: one branch = one layer
    conn = reslab.connection("ancre(form=theory, tau=1)", K, D).double()
    C = {(i, j): (0.0 if i == j - 1 else -math.inf) for j in range(1, K + 1) for i in range(j)}
    set_logits(conn, C, K, "incoming")
    x = x_input()
    torch.testing.assert_close(conn(x, blocks), reslab.connection("residual", K, D)(x, blocks))


@pytest.mark.parametrize("norm", ["incoming", "outgoing"])
def test_ancre_every_logit_gets_gradient(norm):
    K = 4
    blocks, _ = make_blocks(K)
    conn = reslab.connection(f"ancre(tau=0.5, norm={norm})", K, D).double()
    set_logits(conn, random_logits(K, seed=7), K, norm)
    out = conn(x_input(), blocks)
    (out * torch.randn_like(out)).sum().backward()
    assert conn.logits.grad is not None
    assert (conn.logits.grad.abs() > 0).all(), conn.logits.grad


@pytest.mark.parametrize("K", [1, 2, 3, 8])
def test_ancre_parameter_count(K):
    for norm in ("incoming", "outgoing"):
        conn = reslab.connection(f"ancre(norm={norm})", K, D)
        trainable = sum(p.numel() for p in conn.parameters() if p.requires_grad)
        assert conn.extra_parameters() == trainable == K * (K + 1) // 2 - 1
        assert reslab.connection(f"ancre(norm={norm}, learn=false)", K, D).extra_parameters() == 0


def test_ancre_zero_blocks_is_identity():
    x = x_input()
    assert torch.equal(reslab.connection("ancre", 0, D)(x, []), x)


@pytest.mark.parametrize("spec,option", [("ancre(tau=0)", "tau"), ("ancre(tau=-1)", "tau"),
                                         ("ancre(form=foo)", "form"), ("ancre(norm=sideways)", "norm"),
                                         ("denseformer(dilation=0)", "dilation"),
                                         ("denseformer(period=0)", "period")])
def test_spec_errors_name_the_option(spec, option):
    with pytest.raises(ValueError, match=option):
        reslab.connection(spec, 3, D)


# ---------------------------------------------------------------- DenseFormer
def denseformer_by_hand(x, blocks, alpha, dilation, period):
    """alpha: dict (j, i) -> weight; loops over every (j, i) and picks the allowed ones explicitly."""
    hs, cur = [x], x
    for j in range(1, len(blocks) + 1):
        h = cur
        for f in blocks[j - 1]:
            h = h + f(h)
        hs.append(h)
        if j % period == 0:
            cur = sum(alpha[(j, i)] * hs[i] for i in range(j + 1) if (j - i) % dilation == 0)
        else:
            cur = h
    return cur


@pytest.mark.parametrize("dilation,period", [(1, 1), (2, 1), (1, 2), (2, 3)])
def test_denseformer_is_residual_at_init(dilation, period):
    K = 6
    blocks, _ = make_blocks(K)
    conn = reslab.connection(f"denseformer(dilation={dilation}, period={period})", K, D).double()
    x = x_input()
    assert torch.equal(conn(x, blocks), reslab.connection("residual", K, D)(x, blocks))


@pytest.mark.parametrize("dilation,period", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_denseformer_matches_hand_formula(dilation, period):
    K = 6
    blocks, _ = make_blocks(K)
    conn = reslab.connection(f"denseformer(dilation={dilation}, period={period})", K, D).double()
    g = torch.Generator().manual_seed(5)
    alpha = {}
    for j in range(1, K + 1):  # packed order: step j ascending, source i ascending
        if j % period == 0:
            for i in range(j + 1):
                if (j - i) % dilation == 0:
                    alpha[(j, i)] = float(torch.randn((), generator=g))
    assert conn.alpha.numel() == len(alpha) == conn.extra_parameters()
    with torch.no_grad():
        conn.alpha.copy_(torch.tensor(list(alpha.values()), dtype=torch.float64))
    x = x_input()
    torch.testing.assert_close(conn(x, blocks), denseformer_by_hand(x, blocks, alpha, dilation, period))
    R = conn.coefficients()["routing"]
    for j in range(1, K + 1):
        for i in range(K + 1):
            want = alpha.get((j, i), 0.0) if j % period == 0 else float(i == j)
            assert R[j - 1, i].item() == pytest.approx(want)


def test_denseformer_parameter_count():
    for K in (1, 2, 5, 8):
        assert reslab.connection("denseformer", K, D).extra_parameters() == K * (K + 3) // 2
    # dilation 2, period 2, K=6: steps 2, 4, 6 over {0,2}, {0,2,4}, {0,2,4,6}
    assert reslab.connection("denseformer(dilation=2, period=2)", 6, D).extra_parameters() == 2 + 3 + 4


# ---------------------------------------------------------------- lesion mechanism
@pytest.mark.parametrize("spec", ["residual", "plain", "ancre(tau=0.3)", "denseformer"])
def test_lesion_equals_zero_branches(spec):
    K = 3
    blocks, _ = make_blocks(K)
    conn = reslab.connection(spec, K, D).double()
    x = x_input()
    zeroed = [b if j != 1 else [torch.zeros_like] * len(b) for j, b in enumerate(blocks)]
    want = conn(x, zeroed)
    conn._lesioned = frozenset({1})
    assert torch.equal(conn(x, blocks), want)


def test_lesioned_residual_block_is_skipped():
    K = 4
    blocks, _ = make_blocks(K)
    conn = reslab.connection("residual", K, D)
    conn._lesioned = frozenset({2})
    x = x_input()
    skipped = reslab.connection("residual", K - 1, D)(x, blocks[:2] + blocks[3:])
    torch.testing.assert_close(conn(x, blocks), skipped)


class TinyNet(nn.Module):
    def __init__(self, spec, K):
        super().__init__()
        self.blocks_, self.lins = make_blocks(K, n_branches=1)
        self.conn = reslab.connection(spec, K, D).double()

    def forward(self, x):
        return self.conn(x, self.blocks_)


def test_layer_drop_sensitivity():
    K = 3
    net = TinyNet("residual", K).train()
    batches = [(x_input(s), x_input(s + 10)) for s in range(2)]
    loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    sens = layer_drop_sensitivity(net, loss_fn, batches)["conn"]
    assert net.training and net.conn._lesioned == frozenset()

    def loss_without(j):
        conn = reslab.connection("residual", K - 1, D)
        blocks = net.blocks_[:j] + net.blocks_[j + 1:]
        with torch.no_grad():
            return np.mean([float(((conn(x, blocks) - y) ** 2).mean()) for x, y in batches])

    with torch.no_grad():
        base = np.mean([float(loss_fn(net, b)) for b in batches])
    np.testing.assert_allclose(sens, [loss_without(j) - base for j in range(K)], rtol=1e-10, atol=1e-12)
    summary = sensitivity_summary([1.0, 0.0, 3.0])
    assert summary["late_share"] == pytest.approx((0.5 * 0 + 3.0) / 4.0)
    assert summary["entropy"] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(3))


# ---------------------------------------------------------------- topology
def test_effective_depth_extremes():
    K = 5
    assert effective_depth(np.eye(K, K + 1)) == pytest.approx(K)  # cascaded one-hot
    skip = np.zeros((K, K + 1))
    skip[K - 1, 0] = 1.0  # only h_0 -> h_K
    assert effective_depth(skip) == pytest.approx(1.0)
    assert effective_depth(np.eye(K, K + 1), block_edge=1.0) == pytest.approx(K)


def test_effective_depth_hand_example():
    # K=2 uniform: d1 = 1, d2 = 1/2 (0+1) + 1/2 (1+1) = 1.5; with the repo block edge the row of
    # destination 2 becomes (0.5, 0.5+1)/2, so d2 = 0.25*1 + 0.75*2 = 1.75
    P = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert effective_depth(P) == pytest.approx(1.5)
    assert effective_depth(P, block_edge=1.0) == pytest.approx(1.75)
    # dwa: h1 = 1 hop, x1 = 0.5 h0 + 0.5 h1 -> 0.5; h2 = 1.5; x2 = |-1| h0 + 1 h2 over 2 -> 0.75
    A = np.array([[0.5, 0.5, 0.0], [-1.0, 0.0, 1.0]])
    assert effective_depth(A) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="convention"):
        effective_depth(P, convention="foo")


def test_routing_matrix_and_depths_of_models():
    K = 4
    assert np.array_equal(routing_matrix(TinyNet("residual", K))["conn"], np.eye(K, K + 1))
    assert routing_matrix(TinyNet("plain", K)) == {}
    depths = {s: effective_depths(TinyNet(s, K))["conn"] for s in ("residual", "denseformer", "ancre(learn=false)")}
    assert depths["residual"] == pytest.approx(K) and depths["denseformer"] == pytest.approx(K)
    assert 1.0 < depths["ancre(learn=false)"] < K  # uniform shortcuts shorten the expected path
    R = routing_matrix(TinyNet("ancre", K))["conn"]
    assert R.shape == (K, K + 1) and np.allclose(R.sum(1), 1.0) and np.all(np.triu(R, 1) == 0)


def test_plot_routing_writes_png(tmp_path):
    R = reslab.connection("ancre", 4, D).coefficients()["routing"]
    out = plot_routing(R.numpy(), tmp_path / "routing.png", "ancre")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="K x"):
        plot_routing(np.zeros((3, 3)), tmp_path / "bad.png")


def test_recording_sees_every_state():
    K = 3
    blocks, _ = make_blocks(K)
    conn = reslab.connection("ancre", K, D).double()
    with reslab.record(conn) as rec:
        conn(x_input(), blocks)
    assert len(rec.states["connection"]) == K + 1 and len(rec.branch_stats()) == 2 * K


@pytest.mark.parametrize("spec", ["ancre(tau=0.5)", "ancre(form=theory)", "ancre(norm=outgoing)", "denseformer"])
def test_fused_path_gives_the_plain_gradients_in_a_model_even_with_two_forwards(spec, monkeypatch):
    """The fused weighted sums keep per-forward state for their backward; two forward passes feeding one
    loss (and random, non-init coefficients) must still give exactly the plain expression's gradients."""
    from reslab.models import build_model

    def grads(plain: bool):
        torch.manual_seed(0)
        model = build_model("gpt", {"vocab_size": 13, "block_size": 8}, spec, n_layer=4, n_head=2, d_model=16)
        with torch.no_grad():
            for p in model.connection.parameters():
                p.copy_(torch.randn_like(p))
        if plain:
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        x1, x2 = torch.randint(0, 13, (2, 8)), torch.randint(0, 13, (3, 8))
        (model(x1).pow(2).mean() + model(x2).mean()).backward()
        monkeypatch.undo()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, plain = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
