"""λ-style connections: scaled (REX), rezero, skipinit, layerscale.

Each scheme is compared with its equation written out by hand on a tiny tower, at init and with
random non-zero coefficients; plus the λ depth rules, parameter counts, gradients and bad specs.
"""
import math

import pytest
import torch
from torch import nn

import reslab
from reslab.connections import connection, list_connections

B, T, D, K = 2, 3, 4, 3


class Tanh(nn.Module):
    """A bounded branch (|f| <= 1) with parameters: tanh(W h + b) on the last axis or on NCHW channels."""

    def __init__(self, d=D, conv=False):
        super().__init__()
        self.lin = nn.Conv2d(d, d, 1) if conv else nn.Linear(d, d)

    def forward(self, h):
        return torch.tanh(self.lin(h))


def make_blocks(k=K, branches=1, conv=False):
    return [[Tanh(conv=conv) for _ in range(branches)] for _ in range(k)]


def ones_blocks(k, branches):
    """Branches that return 1 everywhere: then the output is x + (sum of the scales) exactly."""
    return [[(lambda h: torch.ones_like(h)) for _ in range(branches)] for _ in range(k)]


def randomize(conn):
    with torch.no_grad():
        for p in conn.parameters():
            p.copy_(torch.randn_like(p))
    return conn


# --------------------------------------------------------------------------------------- scaled
@pytest.mark.parametrize("lam, count, k, branches, expected", [
    ("1/n", "branches", 3, 2, 1 / 6),
    ("1/n", "blocks", 3, 2, 1 / 3),
    ("1/sqrt(n)", "branches", 3, 2, 1 / math.sqrt(6)),
    ("1/sqrt(n)", "blocks", 3, 2, 1 / math.sqrt(3)),
    ("2/sqrt(n)", "branches", 4, 1, 1.0),
    ("0.5/n", "blocks", 5, 2, 0.1),
    ("0.5", "branches", 3, 2, 0.5),
    ("0.5", "blocks", 3, 2, 0.5),
])
def test_scaled_lambda_rules(lam, count, k, branches, expected):
    conn = connection(f"scaled(lam={lam}, count={count})", n_blocks=k, dim=D, branches_per_block=branches)
    x = torch.randn(B, T, D, dtype=torch.float64)
    y = conn(x, ones_blocks(k, branches))
    # every branch adds λ·1, and there are k*branches of them
    torch.testing.assert_close(y, x + k * branches * expected)
    assert conn.coefficients()["lambda"].item() == pytest.approx(expected)
    assert conn.extra_parameters() == 0 and len(list(conn.parameters())) == 0


def test_scaled_default_is_inv_sqrt_network_branches_known_at_construction():
    conn = connection("scaled", n_blocks=2, dim=D, branches_per_block=2)
    assert conn.coefficients()["lambda"].item() == pytest.approx(0.5)  # 1/sqrt(4)
    # n is the network's branch count when the model passes it (a ResNet's stages share one n)
    stage = connection("scaled(lam=1/n)", n_blocks=2, dim=D, network_branches=10)
    assert stage.coefficients()["lambda"].item() == pytest.approx(0.1)
    assert connection("scaled(count=blocks)", 4, D).coefficients()["lambda"].item() == pytest.approx(0.5)
    assert connection("scaled(lam=0.3)", 4, D).coefficients()["lambda"].item() == pytest.approx(0.3)


def test_scaled_equals_hand_written_tower():
    b = make_blocks(2, branches=2)
    x = torch.randn(B, T, D)
    lam = 1 / math.sqrt(4)
    h = x + lam * b[0][0](x)
    h = h + lam * b[0][1](h)
    h = h + lam * b[1][0](h)
    expected = h + lam * b[1][1](h)
    torch.testing.assert_close(connection("scaled", 2, D, branches_per_block=2)(x, b), expected)


def test_scaled_lam_zero_is_identity_and_lam_one_is_residual():
    b, x = make_blocks(), torch.randn(B, T, D)
    torch.testing.assert_close(connection("scaled(lam=0)", K, D)(x, b), x)
    torch.testing.assert_close(connection("scaled(lam=1)", K, D)(x, b), connection("residual", K, D)(x, b))


def test_scaled_spec_round_trip_and_keyword_override():
    assert connection("scaled", K, D).spec == "scaled"
    assert connection("scaled(lam=1/sqrt(n))", K, D).spec == "scaled"
    c = connection("scaled(lam = 1 / N, count=blocks)", K, D)
    assert c.spec == "scaled(lam=1/n, count=blocks)" and c.lam == "1/n"
    assert connection(c.spec, K, D).lam == "1/n"
    c = connection("scaled", K, D, lam=0.25)  # a float given as a keyword
    assert c.lam == 0.25 and connection(c.spec, K, D).lam == 0.25


@pytest.mark.parametrize("bad, needle", [
    ("foo", "1/sqrt(n)"), ("1/n^2", "accepted"), ("nan", "finite"), ("-1", "negative"),
    ("-0.5", "1/n"), ("0/n", "> 0"), ("-2/sqrt(n)", "> 0"), ("/n", "> 0"),
])
def test_scaled_bad_lam_is_a_helpful_error(bad, needle):
    with pytest.raises(ValueError) as e:
        connection(f"scaled(lam={bad})", K, D)
    assert needle in str(e.value) and "lam" in str(e.value)


def test_scaled_bad_count_and_bad_keyword():
    with pytest.raises(ValueError, match="branches"):
        connection("scaled(count=layers)", K, D)
    with pytest.raises(ValueError, match="negative"):
        connection("scaled", K, D, lam=-1.0)
    with pytest.raises(ValueError, match="needs a value"):
        connection("scaled", K, D, lam=True)  # bare flag: the registry asks for a value
    from reslab.connections.scaled import Scaled
    with pytest.raises(ValueError, match="accepted"):
        Scaled(K, D, lam=True)  # the class validates whatever it is given, not only specs


# --------------------------------------------------------------------------------------- rezero
def test_rezero_is_identity_at_init():
    conn = connection("rezero", K, D)
    x = torch.randn(B, T, D)
    assert torch.equal(conn(x, make_blocks(branches=2)), x)
    assert torch.equal(conn.coefficients()["lambda"], torch.zeros(K))


def test_rezero_equals_hand_written_formula():
    conn = randomize(connection("rezero", 2, D))
    a = conn.alpha.detach()
    b, x = make_blocks(2, branches=2), torch.randn(B, T, D)
    h = x + a[0] * b[0][0](x)
    h = h + a[0] * b[0][1](h)  # one α per block, shared by its branches
    h = h + a[1] * b[1][0](h)
    expected = h + a[1] * b[1][1](h)
    torch.testing.assert_close(conn(x, b), expected)
    coef = conn.coefficients()["lambda"]
    assert coef.shape == (2,) and not coef.requires_grad and torch.equal(coef, a)


def test_rezero_init_option_and_params():
    conn = connection("rezero(init=0.5)", 5, D)
    assert conn.extra_parameters() == 5 and torch.equal(conn.alpha.detach(), torch.full((5,), 0.5))
    assert conn.spec == "rezero(init=0.5)"
    with pytest.raises(ValueError, match="init"):
        connection("rezero(init=abc)", K, D)


# ------------------------------------------------------------------------------------- skipinit
def test_skipinit_is_identity_at_init():
    conn = connection("skipinit(branches=2)", K, D)
    x = torch.randn(B, T, D)
    assert torch.equal(conn(x, make_blocks(branches=2)), x)


def test_skipinit_equals_hand_written_formula():
    conn = randomize(connection("skipinit(branches=2)", 2, D))
    a = conn.alpha.detach()
    b, x = make_blocks(2, branches=2), torch.randn(B, T, D)
    h = x + a[0, 0] * b[0][0](x)
    h = h + a[0, 1] * b[0][1](h)
    h = h + a[1, 0] * b[1][0](h)
    expected = h + a[1, 1] * b[1][1](h)
    torch.testing.assert_close(conn(x, b), expected)
    assert conn.coefficients()["lambda"].shape == (2, 2)


def test_skipinit_params_and_branch_mismatch():
    assert connection("skipinit(branches=3)", 4, D).extra_parameters() == 12
    assert connection("skipinit", 4, D).extra_parameters() == 4
    x = torch.randn(B, T, D)
    with pytest.raises(ValueError, match=r"skipinit\(branches=2\)"):
        connection("skipinit", K, D)(x, make_blocks(branches=2))
    mixed = [[Tanh()], [Tanh(), Tanh()], [Tanh()]]
    with pytest.raises(ValueError, match="block 1 has 2"):
        connection("skipinit", K, D)(x, mixed)
    with pytest.raises(ValueError, match="branches"):
        connection("skipinit(branches=0)", K, D)


# ----------------------------------------------------------------------------------- layerscale
def test_layerscale_tokens_equals_hand_written_formula():
    conn = randomize(connection("layerscale(branches=2)", 2, D))
    g = conn.scale.detach()  # (K, branches, D), broadcasts on the last axis of (B, T, D)
    b, x = make_blocks(2, branches=2), torch.randn(B, T, D)
    h = x + g[0, 0] * b[0][0](x)
    h = h + g[0, 1] * b[0][1](h)
    h = h + g[1, 0] * b[1][0](h)
    expected = h + g[1, 1] * b[1][1](h)
    torch.testing.assert_close(conn(x, b), expected)
    assert conn.coefficients()["scale"].shape == (2, 2, D)


def test_layerscale_nchw_equals_hand_written_formula():
    conn = randomize(connection("layerscale", 2, D, channel_dim=1))
    g = conn.scale.detach()[:, 0, :, None, None]  # (K, D, 1, 1): per channel of NCHW
    b, x = make_blocks(2, conv=True), torch.randn(B, D, 3, 3)
    h = x + g[0] * b[0][0](x)
    expected = h + g[1] * b[1][0](h)
    torch.testing.assert_close(conn(x, b), expected)


@pytest.mark.parametrize("eps", [1e-4, 1e-2])
def test_layerscale_is_near_identity_at_init(eps):
    conn = connection(f"layerscale(eps={eps}, branches=2)", K, D)
    assert torch.equal(conn.scale.detach(), torch.full((K, 2, D), eps))
    x = torch.randn(B, T, D, dtype=torch.float64)
    y = conn.double()(x, [[f.double() for f in blk] for blk in make_blocks(branches=2)])
    # each of the K*2 branches adds eps*f with |f| <= 1 (tanh)
    assert 0 < (y - x).abs().max() <= eps * K * 2


def test_layerscale_eps_options_params_and_errors():
    assert connection("layerscale(branches=2)", 5, 7).extra_parameters() == 5 * 2 * 7
    for depth, eps in [(12, 0.1), (18, 0.1), (24, 1e-5), (36, 1e-6)]:
        assert connection("layerscale(eps=cait)", depth, D).eps == eps
    for bad in ("0", "-1e-4", "inf", "big"):
        with pytest.raises(ValueError, match="eps"):
            connection(f"layerscale(eps={bad})", K, D)
    with pytest.raises(ValueError, match="eps"):
        connection("layerscale", K, D, eps=0.0)
    x = torch.randn(B, T, D)
    with pytest.raises(ValueError, match=r"layerscale\(branches=2\)"):
        connection("layerscale", K, D)(x, make_blocks(branches=2))
    with pytest.raises(ValueError, match="channel_dim"):  # NCHW stream but built for tokens
        connection("layerscale", 2, D)(torch.randn(B, D, 3, 5), make_blocks(2, conv=True))


# ------------------------------------------------------------------------------------- all four
SPECS = ["scaled", "rezero", "skipinit(branches=2)", "layerscale(branches=2)"]


@pytest.mark.parametrize("spec", SPECS)
def test_every_parameter_gets_gradient(spec):
    blocks = make_blocks(branches=2)
    x = torch.randn(B, T, D)
    # at the default init the connection's own coefficients learn (even from exactly 0) ...
    conn = connection(spec, K, D)
    conn(x, blocks).pow(2).sum().backward()
    for p in conn.parameters():
        assert p.grad is not None and (p.grad != 0).all()
    # ... and with non-zero coefficients every branch parameter learns too
    conn = randomize(connection(spec, K, D))
    branch_params = [p for blk in blocks for f in blk for p in f.parameters()]
    for p in branch_params:
        p.grad = None
    conn(x, blocks).pow(2).sum().backward()
    for p in [*conn.parameters(), *branch_params]:
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("spec", SPECS)
def test_registered_and_recorded(spec):
    name = spec.split("(")[0]
    info = {i.name: i for i in list_connections()}[name]
    assert "arXiv:" in info.paper and info.params
    conn = randomize(connection(spec, K, D, branches_per_block=2))
    with reslab.record(conn) as rec:
        conn(torch.randn(B, T, D), make_blocks(branches=2))
    assert len(rec.states["connection"]) == K + 1 and len(rec.branch_stats()) == K * 2
    assert set(rec.coefficients()["connection"]) == ({"scale"} if name == "layerscale" else {"lambda"})


def test_blocks_count_is_checked():
    with pytest.raises(ValueError, match="n_blocks"):
        connection("rezero", K, D)(torch.randn(B, T, D), make_blocks(K + 1))


@pytest.mark.parametrize("spec", SPECS)
def test_lesion_deletes_a_block_and_keeps_lambda(spec):
    conn = randomize(connection(spec, K, D, branches_per_block=2))
    blocks, x = make_blocks(branches=2), torch.randn(B, T, D)
    zero = [lambda h: torch.zeros_like(h)] * 2
    expected = conn(x, [blocks[0], zero, blocks[2]])
    conn._lesioned = frozenset({1})
    torch.testing.assert_close(conn(x, blocks), expected)
    if spec == "scaled":  # n still counts the lesioned block: λ = 1/sqrt(3 blocks * 2 branches)
        assert conn.coefficients()["lambda"].item() == pytest.approx(1 / math.sqrt(6))
