"""Residual Expansion Theorem analysis (reslab.analysis.expansion), Fixup ResNets, and the verdict rules
of the rex-normfree / rex-capacity experiments.

Expansion terms are checked against brute force (central finite differences in λ of the exact
composition), against hand-derived closed forms (linear towers, a scalar quadratic tower, tied
modules), and the truncation errors against their predicted λ² / λ³ scaling."""
import math

import pytest
import torch
from torch import nn

import reslab
from reslab.analysis.expansion import (fit_slope, geometric_complexity, load_run, mlp_tower, norm_growth,
                                       order_contributions, order_terms, parse_rule, path_census, random_tower,
                                       scaled_branches, taylor_terms, tower, truncation_study)
from reslab.experiments import get_experiment
from reslab.experiments import rex_capacity, rex_normfree
from reslab.models import ResidualMLP, ResNet, build_model
from reslab.models.resnet import BasicBranch, FixupBranch

F64 = torch.float64


def fd_terms(x, branches, h=1e-3):
    """Brute force: E1 = f'(0), E2 = f''(0)/2 of λ -> tower(x; λ) by central differences (error O(h²))."""
    fp, fm = tower(x, branches, h), tower(x, branches, -h)
    return (fp - fm) / (2 * h), (fp + fm - 2 * x) / (2 * h * h)


# ------------------------------------------------------------------------------ expansion terms

def test_order_terms_match_finite_differences_of_the_exact_tower():
    branches = random_tower(5, dim=6, seed=3)
    x = torch.randn(4, 6, dtype=F64)
    e1, e2 = order_terms(x, branches)
    f1, f2 = fd_terms(x, branches)
    torch.testing.assert_close(e1, f1, rtol=0, atol=1e-6 * float(e1.abs().max()))
    torch.testing.assert_close(e2, f2, rtol=0, atol=1e-4 * float(e2.abs().max()))
    assert float(e2.abs().max()) > 1e-3  # not a vacuous comparison


def test_linear_tower_terms_equal_products_of_matrices():
    # g_k(h) = A_k h: f = (I + λA_3)(I + λA_2)(I + λA_1) x, a polynomial of degree 3 in λ
    g = torch.Generator().manual_seed(0)
    A = [torch.randn(4, 4, generator=g, dtype=F64) / 2 for _ in range(3)]
    branches = [(lambda h, a=a: h @ a.T) for a in A]
    x = torch.randn(2, 4, dtype=F64)
    e1, e2 = order_terms(x, branches)
    torch.testing.assert_close(e1, x @ (A[0] + A[1] + A[2]).T)
    torch.testing.assert_close(e2, x @ (A[1] @ A[0] + A[2] @ A[0] + A[2] @ A[1]).T)
    lam = 0.7
    c = taylor_terms(x, branches, lam, max_order=3)
    torch.testing.assert_close(c[2], lam ** 3 * x @ (A[2] @ A[1] @ A[0]).T)  # the one path through all three
    torch.testing.assert_close(x + sum(c), tower(x, branches, lam))  # the expansion is exact for degree 3


def test_taylor_terms_include_curvature_terms_scalar_hand_example():
    # g1 = a h², g2 = b h²:  f = x + λ(a+b)x² + 2λ²ab x³ + λ³a²b x⁴ exactly (c4 = 0);
    # λ³a²b x⁴ is ½ D²g2[g1, g1], a term that is not a chain of first derivatives
    a, b, lam = 0.5, -1.5, 0.3
    x = torch.tensor([0.7, -1.2, 2.0], dtype=F64)
    branches = [lambda h: a * h ** 2, lambda h: b * h ** 2]
    c = taylor_terms(x, branches, lam, max_order=4)
    expected = [lam * (a + b) * x ** 2, lam ** 2 * 2 * a * b * x ** 3, lam ** 3 * a * a * b * x ** 4, 0 * x]
    for got, want in zip(c, expected):
        torch.testing.assert_close(got, want)


def test_tied_modules_give_binomial_coefficients():
    g = random_tower(1, dim=5, seed=7)[0]
    n = 6
    x = torch.randn(3, 5, dtype=F64)
    e1, e2 = order_terms(x, [g] * n)
    gx, dg = torch.func.jvp(g, (x,), (g(x),))
    torch.testing.assert_close(e1, n * gx)
    torch.testing.assert_close(e2, math.comb(n, 2) * dg)


def test_taylor_terms_agree_with_order_terms_and_scale_with_lambda():
    branches = random_tower(4, dim=5, seed=1)
    x = torch.randn(3, 5, dtype=F64)
    e1, e2 = order_terms(x, branches)
    c = taylor_terms(x, branches, 0.25, max_order=3)
    torch.testing.assert_close(c[0], 0.25 * e1)
    torch.testing.assert_close(c[1], 0.25 ** 2 * e2)
    # per-module scales: the same as one λ when they are all equal
    c2 = taylor_terms(x, branches, [0.25] * 4, max_order=2)
    torch.testing.assert_close(c2[1], c[1])
    with pytest.raises(ValueError, match="exactly 4"):
        tower(x, branches, [0.1, 0.2])
    with pytest.raises(ValueError, match="max_order"):
        taylor_terms(x, branches, 0.1, max_order=0)


def test_truncation_errors_fall_as_lambda_squared_and_cubed():
    study = truncation_study(n=4, dim=6, batch=8, lams=[0.1, 0.05, 0.025, 0.0125], seed=2)
    assert study["slope_order1"] == pytest.approx(2.0, abs=0.15)
    assert study["slope_order2"] == pytest.approx(3.0, abs=0.15)
    assert study["ok"]
    errs = [(r["err_order1"], r["err_order2"]) for r in study["rows"]]
    assert all(e2 < e1 for e1, e2 in errs)  # the order-2 truncation is better at every small λ


def test_fit_slope_exact_power():
    xs = [0.1, 0.2, 0.4, 0.8]
    assert fit_slope(xs, [3 * v ** 2.5 for v in xs]) == pytest.approx(2.5)
    assert math.isnan(fit_slope([0.1], [1.0]))


def test_order_contributions_sum_to_total_for_a_linear_tower():
    g = torch.Generator().manual_seed(1)
    A = [torch.randn(3, 3, generator=g, dtype=F64) for _ in range(2)]
    branches = [(lambda h, a=a: h @ a.T) for a in A]
    res = order_contributions(torch.randn(5, 3, dtype=F64), branches, 0.5, max_order=2)
    assert res["orders"][-1]["remainder_after"] == pytest.approx(0.0, abs=1e-12)  # degree 2: nothing left
    assert res["orders"][0]["remainder_after"] > 0


# -------------------------------------------------------------------------------- path census

def test_path_census_counts():
    rows = path_census(6, 0.5)
    assert [r["paths"] for r in rows] == [1, 6, 15, 20, 15, 6, 1]
    assert sum(r["paths"] for r in rows) == 2 ** 6
    assert sum(r["weight"] for r in rows) == pytest.approx(1.5 ** 6)  # Σ C(n,k) λ^k = (1 + λ)^n
    assert [r["k"] for r in path_census(10, 0.1, max_order=3)] == [0, 1, 2, 3]


# --------------------------------------------------------------------------------- λ rules

@pytest.mark.parametrize("rule, n, lam", [("1", 16, 1.0), ("1/sqrt(n)", 16, 0.25), ("1/n", 16, 1 / 16), ("0.3", 9, 0.3)])
def test_parse_rule(rule, n, lam):
    assert parse_rule(rule, n) == pytest.approx(lam)


def test_parse_rule_rejects_unknown():
    with pytest.raises(ValueError, match="1/n, 1/sqrt"):
        parse_rule("1/log(n)", 4)


def test_experiment_lambdas_use_every_residual_branch():
    # ResNet-20: n_b = 3 blocks per stage, N = 9 residual branches (downsampling ones included)
    assert rex_normfree.arm_config("lam=1/n", 20) == ("scaled(lam=0.111111)", {"batchnorm": False})
    assert rex_normfree.arm_config("lam=1/sqrt(n)", 20)[0] == "scaled(lam=0.333333)"
    assert rex_normfree.arm_config("fixup", 56) == ("residual", {"fixup": True})
    assert rex_capacity.lam_grid(20, 3) == pytest.approx([1 / 9, 1 / 3, 1.0], rel=1e-5)
    with pytest.raises(ValueError, match="unknown arm"):
        rex_normfree.arm_config("lam=2", 20)


# ------------------------------------------------------------------------------ norm growth

def test_norm_growth_renormalisation_is_exact():
    # brute force without renormalisation, drawing the same weights in the same order
    d, n, batch, seed = 8, 5, 4, 3
    rows = norm_growth([n], rules=["1"], branch="zero_mean", dim=d, batch=batch, seed=seed)
    x0 = torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    g = torch.Generator().manual_seed(seed + 1)
    h = x0
    for _ in range(n):
        w1 = torch.randn(d, d, generator=g, dtype=F64) * math.sqrt(2 / d)
        w2 = torch.randn(d, d, generator=g, dtype=F64) * math.sqrt(1 / d)
        h = h + torch.relu(h @ w1) @ w2
    want = float((h.norm(dim=1) / x0.norm(dim=1)).log10().mean())
    assert rows[0]["log10_ratio"] == pytest.approx(want, rel=1e-10)


def test_norm_growth_regimes():
    rows = {(r["branch"], r["rule"], r["n"]): r["log10_ratio"]
            for kind in ("zero_mean", "coherent") for r in norm_growth([4, 64], branch=kind, dim=32, batch=16)}
    for kind in ("zero_mean", "coherent"):
        assert rows[(kind, "1", 64)] > rows[(kind, "1", 4)] + 5  # λ = 1 explodes with depth
        assert rows[(kind, "1/n", 64)] < math.log10(1.5)  # λ = 1/n stays bounded
    assert rows[("zero_mean", "1/sqrt(n)", 64)] < math.log10(2.5)  # bounded for zero-mean branches
    assert rows[("coherent", "1/sqrt(n)", 64)] > rows[("coherent", "1/sqrt(n)", 4)] + 0.5  # grows when coherent
    with pytest.raises(ValueError, match="zero_mean"):
        norm_growth([4], branch="aligned")


# --------------------------------------------------------------------- geometric complexity

def test_gc_of_a_linear_map_is_its_frobenius_norm():
    w = torch.randn(3, 5, dtype=F64)
    x = torch.randn(7, 5, dtype=F64)
    assert geometric_complexity(lambda v: v @ w.T, x) == pytest.approx(float(w.pow(2).sum()))
    est = geometric_complexity(lambda v: v @ w.T, x, probes=400, generator=torch.Generator().manual_seed(0))
    assert est == pytest.approx(float(w.pow(2).sum()), rel=0.1)


def test_gc_matches_brute_force_jacobian():
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=F64)
    want = sum(float(torch.autograd.functional.jacobian(net, x[i]).pow(2).sum()) for i in range(5)) / 5
    assert geometric_complexity(net, x, chunk=2) == pytest.approx(want)


# ----------------------------------------------------------------- towers of real models

@pytest.mark.parametrize("spec", ["residual", "scaled(lam=1/sqrt(n))", "scaled(lam=0.3, count=blocks)", "rezero",
                                  "skipinit", "layerscale"])
def test_mlp_tower_reproduces_the_model(spec):
    model = ResidualMLP(6, 3, width=8, n_blocks=3, layernorm=False, activation="tanh", connection=spec).double()
    with torch.no_grad():
        for p in model.connection.parameters():
            p.copy_(torch.rand_like(p))  # learned scales away from init
    embed, modules, readout = mlp_tower(model)
    x = torch.randn(4, 6, dtype=F64)
    torch.testing.assert_close(readout(tower(embed(x), modules)), model(x))


def test_scaled_branches_refuses_non_towers():
    conn = reslab.connection("plain", 2, 4)
    with pytest.raises(ValueError, match="not a tower"):
        scaled_branches(conn, [[nn.Identity()], [nn.Identity()]])


@pytest.mark.parametrize("spec", ["rezero", "skipinit"])
def test_learned_scales_start_as_the_identity_map(spec):
    model = ResidualMLP(6, 3, width=8, n_blocks=4, layernorm=False, activation="tanh", connection=spec).double()
    embed, modules, _ = mlp_tower(model)
    h = embed(torch.randn(3, 6, dtype=F64))
    torch.testing.assert_close(tower(h, modules), h)
    assert all(float(c.detach().abs().max()) == 0 for c in taylor_terms(h, modules, 1.0, max_order=2))
    scaled = ResidualMLP(6, 3, width=8, n_blocks=4, layernorm=False, connection="scaled(lam=1/n)").double()
    e, m, _ = mlp_tower(scaled)  # a fixed λ > 0 is not the identity
    h = e(torch.randn(3, 6, dtype=F64))
    assert not torch.allclose(tower(h, m), h)


def test_load_run_rebuilds_init_and_final(tmp_path):
    from reslab.train import TrainConfig, train

    cfg = TrainConfig(task="teacher", task_args={"in_dim": 4, "n_train": 64, "n_val": 32}, model="mlp",
                      model_args={"width": 8, "n_blocks": 2}, connection="rezero", steps=3, batch_size=8,
                      warmup_steps=0, eval_every=3, eval_batches=1, seed=5, out_dir=str(tmp_path),
                      progress=False, tensorboard=False)
    train(cfg)
    init, task, _ = load_run(tmp_path, "init")
    final, _, _ = load_run(tmp_path, "final")
    assert torch.all(init.connection.alpha == 0) and torch.any(final.connection.alpha != 0)
    torch.manual_seed(5)
    fresh = build_model("mlp", task.info, "rezero", width=8, n_blocks=2)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), init.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="summary.json"):
        load_run(tmp_path / "nothing")


# ----------------------------------------------------------------------------------- Fixup

def tiny_fixup(depth=14, width=0.5, **kw):
    return ResNet(depth=depth, width=width, in_channels=2, n_classes=5, fixup=True, **kw)


def test_fixup_structure():
    m = tiny_fixup(depth=20)  # n_b = 3: 3 + 2 + 2 connection branches + 2 downsampling ones = 9
    branches = [b for b in m.modules() if isinstance(b, FixupBranch)]
    assert len(branches) == 9 and not any(isinstance(b, BasicBranch) for b in m.modules())
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) and not m.batchnorm
    assert all(b.conv1.bias is None and b.conv2.bias is None for b in branches)
    for b in branches:  # four scalar biases and one scalar multiplier per branch
        scalars = {k: v for k, v in b.named_parameters() if v.numel() == 1}
        assert sorted(scalars) == ["bias1a", "bias1b", "bias2a", "bias2b", "scale"]
        assert all(float(v.detach()) == 0 for k, v in scalars.items() if k != "scale") and float(b.scale.detach()) == 1
    assert ResNet(depth=8).batchnorm  # the default is unchanged: BatchNorm unless fixup


def test_fixup_zero_inits_last_layers_and_classifier():
    m = tiny_fixup()
    for b in (x for x in m.modules() if isinstance(x, FixupBranch)):
        assert b.last is b.conv2 and torch.all(b.conv2.weight == 0)
        assert float(b.conv1.weight.abs().max()) > 0
    assert torch.all(m.head[-1].weight == 0) and torch.all(m.head[-1].bias == 0)


def test_fixup_rescales_first_convs_by_inverse_sqrt_of_branch_count():
    # conv1 ~ He-normal (fan_out, gain sqrt 2) x L^(-1/2), L = 3 n_b. The 64-channel convs have
    # >= 18k weights, so the sample std is within ~1% of its target; a wrong L (e.g. 3n_b - 2, or no
    # rescaling) is off by >= 12%.
    torch.manual_seed(0)
    for depth, L in ((8, 3), (20, 9)):
        m = ResNet(depth=depth, width=1, in_channels=1, fixup=True)
        conv1 = [b.conv1.weight for b in m.modules() if isinstance(b, FixupBranch) and b.conv1.out_channels == 64]
        assert conv1
        for w in conv1:
            he = math.sqrt(2.0 / (w.shape[0] * 9))
            assert float(w.std()) == pytest.approx(he / math.sqrt(L), rel=0.05)


def test_fixup_net_is_projection_shortcuts_plus_stem_and_head_at_init():
    m = tiny_fixup(depth=14)
    x = torch.randn(3, 2, 8, 8)
    feats = {}

    def keep(mod, inp, out):  # returns None, so the head's output is left alone
        feats["trunk"] = inp[0]

    m.head.register_forward_hook(keep)
    logits = m(x)
    # every basic block is the identity and every downsampling branch adds exactly 0, so the trunk is
    # the stem followed by the two 1x1 projection shortcuts
    h = m.downsamples[1].proj(m.downsamples[0].proj(m.stem(x)))
    torch.testing.assert_close(feats["trunk"], h, rtol=0, atol=0)
    assert torch.equal(logits, torch.zeros(3, 5))  # zero classifier
    for br in (b for b in m.modules() if isinstance(b, FixupBranch)):
        out = br(torch.randn(2, br.conv1.in_channels, 6, 6))
        assert out.shape[1] == br.conv2.out_channels and torch.equal(out, torch.zeros_like(out))


def test_fixup_branch_equals_hand_written_formula():
    br = FixupBranch(3, 3)
    with torch.no_grad():
        for p in br.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 3, 5, 5)
    out = nn.functional.conv2d(torch.relu(x) + br.bias1a, br.conv1.weight, padding=1)
    out = nn.functional.conv2d(torch.relu(out + br.bias1b) + br.bias2a, br.conv2.weight, padding=1)
    torch.testing.assert_close(br(x), br.scale * out + br.bias2b)


def test_fixup_learns_from_the_first_step():
    m = tiny_fixup()
    x, y = torch.randn(8, 2, 8, 8), torch.randint(0, 5, (8,))
    nn.functional.cross_entropy(m(x), y).backward()
    assert float(m.head[-1].weight.grad.abs().sum()) > 0  # the classifier gets a gradient at once
    with torch.no_grad():
        m.head[-1].weight.sub_(m.head[-1].weight.grad)  # one SGD step opens the path to the branches
    m.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    assert float(m.stages[0][0][0].conv2.weight.grad.abs().sum()) > 0


def test_fixup_refuses_batchnorm_and_shortcut_free_connections():
    with pytest.raises(ValueError, match="fixup"):
        tiny_fixup(batchnorm=True)
    with pytest.raises(ValueError, match="identity path"):
        tiny_fixup(connection="plain")
    r = build_model("resnet", {"input_shape": (1, 8, 8), "n_classes": 3}, depth=8, width=0.25, fixup=True)
    assert r.fixup and r(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("spec", ["rezero", "skipinit"])
def test_resnet_learned_scales_make_every_stage_the_identity_at_init(spec):
    m = ResNet(depth=14, width=0.25, in_channels=1, batchnorm=False, connection=spec)
    seen = []
    for c in m.connections:
        c.register_forward_hook(lambda mod, inp, out: seen.append(torch.equal(inp[0], out)))
    m(torch.randn(2, 1, 8, 8))
    assert seen == [True, True, True]


# ------------------------------------------------------------------------- experiment verdicts

# rex-normfree's rule (decided under SGD, one check per optimiser) is tested in tests/test_verdicts.py


def _cap_results(gc: list, acc: list, diverged_last=False) -> dict:
    lams = [1 / 9, 1 / 3, 1.0][: len(gc)] if len(gc) == 3 else [0.1 * 2 ** i for i in range(len(gc))]
    per = []
    for i, (lam, g, a) in enumerate(zip(lams, gc, acc)):
        div = diverged_last and i == len(gc) - 1
        # three seeds around each value: the rule asks for significance over seeds
        per.append({"lam": lam, "acc": [None] * 3 if div else [a - 0.002, a, a + 0.002],
                    "status": ["diverged" if div else "completed"] * 3,
                    "gc_final": [None] * 3 if div else [g * 0.99, g, g * 1.01], "gc_init": [1.0] * 3})
    mid = lams[(len(lams) - 1) // 2] if len(lams) % 2 else None
    return {"per_lam": per, "lam_1_over_sqrt_n": mid}


def test_capacity_verdict_rules():
    assert rex_capacity.verdict(_cap_results([1.0, 3.0, 1.5], [0.80, 0.85, 0.83]))[0] == "reproduced"
    assert rex_capacity.verdict(_cap_results([1.0, 2.0, 3.0], [0.80, 0.85, 0.83]))[0] == "partial"  # monotone GC
    assert rex_capacity.verdict(_cap_results([1.0, 1.05, 1.0], [0.85, 0.80, 0.83]))[0] == "not reproduced"
    # the diverged λ is left out: the rest (5 points) still peaks inside
    v, why = rex_capacity.verdict(_cap_results([1.0, 2.0, 3.0, 2.0, 9.0], [0.8, 0.81, 0.84, 0.83, 0.1],
                                               diverged_last=True))
    assert v == "reproduced" and "Diverged" in why
    # an interior peak above both ends is not enough: a significant fall before the peak is a second turn
    v, why = rex_capacity.verdict(_cap_results([5.0, 3.0, 4.0, 8.0, 5.4], [0.80, 0.81, 0.85, 0.84, 0.82]))
    assert v == "partial" and "A GC unimodal in λ: FAIL" in why and "not unimodal: it falls 5 -> 3" in why


def test_experiments_are_registered_with_three_presets():
    for name in ("rex-normfree", "rex-capacity"):
        exp = get_experiment(name)
        assert set(exp.presets) == {"quick", "cpu", "gpu"} and exp.notes


@pytest.mark.slow
def test_rex_capacity_quick_preset_runs_end_to_end(tmp_path, monkeypatch):
    """reproduce rex-capacity on idx files the test writes: GC per λ, each λ's steps to the baseline λ's loss,
    the table and the plot."""
    import json

    from conftest import write_fake_fashion_mnist

    from reslab.cli import main

    monkeypatch.setenv("RESLAB_DATA", str(write_fake_fashion_mnist(tmp_path / "data", 600, 300)))
    out = tmp_path / "out"
    assert main(["reproduce", "rex-capacity", "--preset", "quick", "--out", str(out)]) == 0
    res = json.loads((out / "summary.json").read_text())["results"]
    assert [e["lam"] for e in res["per_lam"]] == rex_capacity.lam_grid(8, 3)
    for e in res["per_lam"]:
        assert all(math.isfinite(g) for g in e["gc_init"]) and "steps_to_target_per_seed" in e
    assert "steps to 1/√n's final loss" in (out / "README.md").read_text()
    assert (out / "gc_accuracy_vs_lambda.png").exists()


# ---------------------------------------------------------------------------------- the CLI

def test_cli_writes_tables_and_plots(tmp_path):
    from reslab.cli import main

    assert main(["analyze", "expansion", "--parts", "truncation,growth", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "expansion.md").read_text()
    assert "Truncation error" in md and "Output-norm growth" in md
    assert (tmp_path / "truncation.png").exists() and (tmp_path / "norm_growth.png").exists()
    assert main(["analyze", "expansion", "--parts", "nonsense", "--out", str(tmp_path)]) == 2
