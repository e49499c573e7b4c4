"""The three model families: wiring equals hand-written loops, shapes, and their guards."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import reslab
from reslab.connections import Connection
from reslab.models import GPT, GPTConfig, ResidualMLP, ResNet, build_model, model_names
from reslab.models.gpt import Rotary, apply_rotary
from reslab.models.resnet import BasicBranch, Downsample


def tiny_gpt(connection="residual", **kw) -> GPT:
    cfg = dict(vocab_size=13, block_size=8, n_layer=3, n_head=2, d_model=16, connection=connection)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def tiny_resnet(connection="residual", **kw) -> ResNet:
    return ResNet(**{"depth": 14, "width": 0.25, "in_channels": 2, "n_classes": 5, "connection": connection, **kw})


def tiny_mlp(connection="residual", **kw) -> ResidualMLP:
    return ResidualMLP(**{"in_dim": 6, "out_dim": 3, "width": 8, "n_blocks": 3, "connection": connection, **kw})


def combine(kind: str):
    """The stream update a hand-written model would write: x + f(x) for residual, f(x) for plain."""
    return (lambda x, f: x + f(x)) if kind == "residual" else (lambda x, f: f(x))


class ParamConnection(Connection):
    """A residual stream with a learned per-block gain, initialised to 3 (to see that models keep it)."""

    def __init__(self, n_blocks, dim, channel_dim=-1):
        super().__init__(n_blocks, dim, channel_dim)
        self.gain = nn.Parameter(torch.full((n_blocks,), 3.0))

    def forward(self, x, blocks):
        self.check_blocks(blocks)
        for j, block in enumerate(blocks):
            for f in block:
                x = x + self.gain[j] * f(x)
        return x


class NoIdentity(ParamConnection):
    carries_identity = False


# -- exact equality with hand-written wiring ---------------------------------------------------

@pytest.mark.parametrize("kind", ["residual", "plain"])
def test_gpt_equals_handwritten(kind):
    model = tiny_gpt(kind).eval()
    idx = torch.randint(13, (2, 8))
    step = combine(kind)
    x = model.wte(idx)
    for attn, mlp in model.blocks:
        # write the pre-norm branches out by hand too, not just the adds
        B, T, D = x.shape
        q, k, v = attn.qkv(attn.norm(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, 2, D // 2).transpose(1, 2) for t in (q, k, v))
        q, k = attn.rotary(q), attn.rotary(k)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = attn.proj(a.transpose(1, 2).reshape(B, T, D))
        x = x + a if kind == "residual" else a
        x = step(x, lambda y: mlp.down(torch.nn.functional.silu(mlp.gate(mlp.norm(y))) * mlp.up(mlp.norm(y))))
    expected = model.lm_head(model.norm(x))
    assert torch.equal(model(idx), expected)


@pytest.mark.parametrize("kind", ["residual", "plain"])
def test_resnet_equals_handwritten(kind):
    model = tiny_resnet(kind)
    x = torch.randn(3, 2, 8, 8)
    step = combine(kind)
    h = model.stem(x)
    for s, stage in enumerate(model.stages):
        if s > 0:
            ds = model.downsamples[s - 1]
            h = ds.branch(h) + ds.proj(h) if kind == "residual" else ds.branch(h)
        for (f,) in stage:
            h = step(h, f)
    expected = model.head(h)
    assert torch.equal(model(x), expected)


def test_resnet_branch_is_relu_conv_bn_relu_conv_bn():
    br = BasicBranch(3, 3, 1, batchnorm=True).eval()
    x = torch.randn(2, 3, 5, 5)
    c1, b1, c2, b2 = br.body[1], br.body[2], br.body[4], br.body[5]
    assert torch.equal(br(x), b2(c2(torch.relu(b1(c1(torch.relu(x)))))))
    x0 = x.clone()
    br(x)
    assert torch.equal(x, x0), "the branch must not rectify the stream in place"


@pytest.mark.parametrize("kind", ["residual", "plain"])
@pytest.mark.parametrize("layernorm", [True, False])
def test_mlp_equals_handwritten(kind, layernorm):
    model = tiny_mlp(kind, layernorm=layernorm, activation="tanh")
    x = torch.randn(4, 6)
    step = combine(kind)

    def layers(seq):  # Linear [-> LN] -> tanh, by hand
        mods = list(seq)
        per = 3 if layernorm else 2
        def f(y):
            for i in range(0, len(mods), per):
                y = mods[i](y)
                if layernorm:
                    y = mods[i + 1](y)
                y = torch.tanh(y)
            return y
        return f

    h = layers(model.stem)(x)
    for (branch,) in model.blocks:
        assert len(branch.net) == 2 * (3 if layernorm else 2)  # layers_per_branch=2
        h = step(h, layers(branch.net))
    assert torch.equal(model(x), model.head(h))


def test_residual_and_plain_differ():
    # guards the tests above against a model that ignores its connection
    torch.manual_seed(1)
    a = tiny_mlp("residual")
    torch.manual_seed(1)
    b = tiny_mlp("plain")
    x = torch.randn(2, 6)
    assert not torch.allclose(a(x), b(x))


# -- shapes --------------------------------------------------------------------------------------

def test_output_shapes():
    assert tiny_gpt()(torch.randint(13, (2, 5))).shape == (2, 5, 13)
    assert tiny_resnet()(torch.randn(2, 2, 8, 8)).shape == (2, 5)
    assert tiny_resnet(batchnorm=False, depth=8)(torch.randn(1, 2, 7, 7)).shape == (1, 5)
    img = ResidualMLP(in_dim=12, out_dim=4, width=8, n_blocks=2, flatten_input=True)
    assert img(torch.randn(3, 3, 2, 2)).shape == (3, 4)


def test_gpt_block_structure_and_sizes():
    m = tiny_gpt(d_model=24, n_head=2)
    assert len(m.blocks) == 3 and all(len(b) == 2 for b in m.blocks)
    assert m.blocks[0][1].gate.out_features == 8 * math.ceil(24 * 8 / 3 / 8) == 64
    assert tiny_gpt(mlp_hidden=20).blocks[0][1].up.out_features == 20
    assert all(p.ndim != 1 or "norm" in n for n, p in m.named_parameters()), "no biases anywhere"
    tied = tiny_gpt(tie_embeddings=True)
    assert tied.lm_head.weight is tied.wte.weight
    untied = tiny_gpt()
    assert untied.num_parameters() - tied.num_parameters() == 13 * 16
    assert untied.num_parameters(exclude_embeddings=True) == untied.num_parameters() - 13 * 16


def test_resnet_structure():
    m = tiny_resnet(depth=20)  # n = 3
    assert [len(s) for s in m.stages] == [3, 2, 2]
    assert [(c.n_blocks, c.dim, c.channel_dim) for c in m.connections] == [(3, 4, 1), (2, 8, 1), (2, 16, 1)]
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3)]
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert len(convs) + len(linears) == 20  # 6n+2 weighted layers; 1x1 projection shortcuts not counted
    nobn = tiny_resnet(batchnorm=False)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in nobn.modules())
    assert all(c.bias is not None for c in nobn.modules() if isinstance(c, nn.Conv2d))


@pytest.mark.parametrize("depth", [10, 7, 2, 21, 0])
def test_resnet_depth_validation(depth):
    with pytest.raises(ValueError, match=r"6n\+2.*8, 14, 20"):
        ResNet(depth=depth)


# -- downsampling shortcut follows carries_identity -------------------------------------------

def test_downsample_projection_only_with_identity():
    res, plain = tiny_resnet("residual"), tiny_resnet("plain")
    assert all(isinstance(d.proj, nn.Sequential) for d in res.downsamples)
    assert all(d.proj is None for d in plain.downsamples)
    assert not any(isinstance(x, nn.Conv2d) and x.kernel_size == (1, 1) for x in plain.modules())
    # generic: decided by the connection's flag, not by its name
    conns = [NoIdentity(2, 4, 1), NoIdentity(1, 8, 1), NoIdentity(1, 16, 1)]
    m = tiny_resnet(conns)
    assert all(d.proj is None for d in m.downsamples)
    ds = Downsample(4, 8, batchnorm=True, shortcut=True)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(ds(x), ds.branch(x) + ds.proj(x))
    assert ds(x).shape == (2, 8, 3, 3)


def test_resnet_zero_init_last():
    m = tiny_resnet(zero_init_last=True)
    branches = [b for b in m.modules() if isinstance(b, BasicBranch)]
    assert len(branches) == 6 and all(torch.all(b.last.weight == 0) for b in branches)
    assert all(isinstance(b.last, nn.BatchNorm2d) for b in branches)
    h = torch.randn(2, 4, 8, 8)
    assert torch.equal(m.stages[0][0][0](h), torch.zeros_like(h))  # each block starts as identity
    nobn = tiny_resnet(zero_init_last=True, batchnorm=False)
    last = [b.last for b in nobn.modules() if isinstance(b, BasicBranch)]
    assert all(isinstance(c, nn.Conv2d) and torch.all(c.weight == 0) and torch.all(c.bias == 0) for c in last)
    with pytest.raises(ValueError, match="zero_init_last"):
        tiny_resnet("plain", zero_init_last=True)


# -- GPT specifics -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["residual", "plain"])
def test_gpt_is_causal(kind):
    model = tiny_gpt(kind).eval()
    idx = torch.randint(13, (2, 8))
    idx2 = idx.clone()
    idx2[:, 5] = (idx2[:, 5] + 1) % 13
    a, b = model(idx), model(idx2)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_rope_relative_positions():
    rot = Rotary(head_dim=8, max_len=16)
    q, k = torch.randn(8), torch.randn(8)
    def score(m, n):
        return apply_rotary(q, rot.cos[m], rot.sin[m]) @ apply_rotary(k, rot.cos[n], rot.sin[n])
    # depends on m - n only
    torch.testing.assert_close(score(5, 2), score(12, 9))
    torch.testing.assert_close(score(3, 3), q @ k)
    assert not torch.allclose(score(5, 2), score(2, 5))
    # a rotation: norm-preserving, identity at position 0, hand formula for pair (0, 4) at position 1
    x = torch.randn(1, 1, 16, 8)
    y = rot(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(y[..., 0, :], x[..., 0, :])
    c, s = math.cos(1.0), math.sin(1.0)
    torch.testing.assert_close(y[0, 0, 1, 0], x[0, 0, 1, 0] * c - x[0, 0, 1, 4] * s)
    torch.testing.assert_close(y[0, 0, 1, 4], x[0, 0, 1, 0] * s + x[0, 0, 1, 4] * c)
    assert "rotary.cos" not in tiny_gpt().state_dict()


def test_gpt_init_and_connection_params_untouched():
    m = tiny_gpt(d_model=64, n_head=4, vocab_size=200)
    assert abs(m.wte.weight.std().item() - 0.02) < 0.002
    assert abs(m.blocks[0][0].qkv.weight.std().item() - 0.02) < 0.002
    scaled = tiny_gpt(d_model=64, n_head=4, scaled_init=True, n_layer=8)
    want = 0.02 / math.sqrt(16)
    assert abs(scaled.blocks[0][1].down.weight.std().item() - want) < 0.15 * want
    conn = ParamConnection(3, 16)
    g = tiny_gpt(conn)
    assert g.connection is conn and torch.equal(conn.gain, torch.full((3,), 3.0))
    assert torch.equal(tiny_mlp(ParamConnection(3, 8)).connection.gain, torch.full((3,), 3.0))
    r = tiny_resnet([ParamConnection(1, 4, 1), ParamConnection(0, 8, 1), ParamConnection(0, 16, 1)], depth=8)
    assert torch.equal(r.connections[0].gain, torch.full((1,), 3.0))


def test_gpt_guards():
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(torch.randint(13, (1, 9)))
    with pytest.raises(ValueError, match="divisible"):
        tiny_gpt(d_model=15, n_head=2)
    with pytest.raises(ValueError, match="even"):
        tiny_gpt(d_model=6, n_head=2)
    with pytest.raises(ValueError, match="n_blocks=3"):
        tiny_gpt(ParamConnection(2, 16))


# -- every parameter learns; recording sees the connections -----------------------------------

@pytest.mark.parametrize("make, inp, loss", [
    (lambda: tiny_gpt(dropout=0.1), lambda: torch.randint(13, (2, 8)), lambda y: y.logsumexp(-1).mean()),
    (lambda: tiny_gpt(tie_embeddings=True), lambda: torch.randint(13, (2, 8)), lambda y: y.logsumexp(-1).mean()),
    (lambda: tiny_resnet(), lambda: torch.randn(4, 2, 8, 8), lambda y: y.logsumexp(-1).mean()),
    (lambda: tiny_resnet("plain", batchnorm=False), lambda: torch.randn(4, 2, 8, 8), lambda y: y.pow(2).mean()),
    (lambda: tiny_mlp(), lambda: torch.randn(4, 6), lambda y: y.pow(2).mean()),
    (lambda: tiny_mlp(ParamConnection(3, 8)), lambda: torch.randn(4, 6), lambda y: y.pow(2).mean()),
])
def test_gradients_reach_every_parameter(make, inp, loss):
    model = make().train()
    loss(model(inp())).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_record_finds_every_connection():
    m = tiny_resnet()
    with reslab.record(m) as rec:
        m(torch.randn(2, 2, 8, 8))
    assert sorted(rec.states) == ["connections.0", "connections.1", "connections.2"]
    assert [len(rec.states[f"connections.{i}"]) for i in range(3)] == [3, 2, 2]
    g = tiny_gpt()
    with reslab.record(g) as rec:
        g(torch.randint(13, (1, 4)))
    assert len(rec.branch_stats()) == 3 * 2


# -- build_model ---------------------------------------------------------------------------------

def test_build_model():
    assert {"gpt", "mlp", "resnet"} <= set(model_names()) and model_names() == sorted(model_names())
    g = build_model("gpt", {"vocab_size": 11, "block_size": 8}, "plain", n_layer=2, n_head=2, d_model=8)
    assert isinstance(g, GPT) and g.config.block_size == 8 and g.connection.spec == "plain"
    assert build_model("gpt", {"vocab_size": 11}, n_layer=1, n_head=1, d_model=8, block_size=4).config.block_size == 4
    r = build_model("resnet", {"input_shape": (1, 8, 8), "n_classes": 7}, depth=8, width=0.25)
    assert r(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    m = build_model("mlp", {"input_shape": (1, 4, 4), "n_classes": 3}, width=8, n_blocks=1)
    assert m.flatten_input and m(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    m = build_model("mlp", {"in_dim": 5, "out_dim": 2}, "residual", width=8, n_blocks=2, layers_per_branch=4)
    assert m(torch.randn(3, 5)).shape == (3, 2) and len(m.blocks[0][0].net) == 12


def test_build_model_errors():
    with pytest.raises(ValueError, match=r"unknown model 'resnt'; valid: resnet"):
        build_model("resnt", {})
    with pytest.raises(ValueError, match=r"unknown option 'dept'; valid: depth"):
        build_model("resnet", {"input_shape": (3, 8, 8), "n_classes": 2}, dept=8)
    with pytest.raises(ValueError, match=r"unknown option 'n_layers'; valid: n_layer"):
        build_model("gpt", {"vocab_size": 5, "block_size": 4}, n_layers=2)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("gpt", {"n_classes": 3})
    with pytest.raises(ValueError, match="block_size"):
        build_model("gpt", {"vocab_size": 3})
    with pytest.raises(ValueError, match="out_dim"):
        build_model("mlp", {"in_dim": 3})
    with pytest.raises(ValueError, match="unknown connection"):
        build_model("mlp", {"in_dim": 3, "out_dim": 1}, "resdiual")
    with pytest.raises(ValueError, match="activation"):
        build_model("mlp", {"in_dim": 3, "out_dim": 1}, activation="sigmoid")


def test_resnet_extra_blocks_adds_blocks_to_the_named_stage():
    from reslab.models import ResNet

    base, plus = ResNet(depth=8, in_channels=1), ResNet(depth=8, in_channels=1, extra_blocks=(0, 0, 1))
    assert [len(s) for s in base.stages] == [1, 0, 0] and [len(s) for s in plus.stages] == [1, 0, 1]
    assert plus.connections[2].n_blocks == 1 and plus.n_layers == base.n_layers + 2
    extra = sum(p.numel() for p in plus.parameters()) - sum(p.numel() for p in base.parameters())
    w = base.widths[2]
    assert extra == 2 * (w * w * 9 + 2 * w)  # two 3x3 convs + two BatchNorms of the last stage
    assert plus(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="extra_blocks"):
        ResNet(depth=8, extra_blocks=(0, 1))


FAMILIES = {
    "gpt": lambda c: build_model("gpt", {"vocab_size": 11, "block_size": 8}, c, n_layer=3, n_head=2, d_model=16),
    "resnet": lambda c: build_model("resnet", {"input_shape": (1, 8, 8), "n_classes": 3}, c, depth=14),
    "mlp": lambda c: build_model("mlp", {"in_dim": 5, "out_dim": 2}, c, width=8, n_blocks=3),
}
INPUTS = {"gpt": lambda: torch.randint(0, 11, (2, 8)), "resnet": lambda: torch.randn(2, 1, 8, 8),
          "mlp": lambda: torch.randn(4, 5)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_registered_connection_trains_in_every_family(family):
    x = INPUTS[family]()
    for info in reslab.list_connections():
        model = FAMILIES[family](info.example)
        out = model(x)
        assert torch.isfinite(out).all(), info.example
        out.float().pow(2).mean().backward()
        conn_params = [p for m in model.modules() if isinstance(m, Connection) for p in m.parameters()
                       if p.requires_grad]
        assert all(p.grad is not None for p in conn_params), f"{info.example} in {family}: a parameter got no grad"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("spec", ["laurel(rw)", "laurel(lr)", "laurel(pa)", "laurel(rw, lr)", "laurel(rw, pa)",
                                  "laurel(lr, pa)", "laurel(rw, lr, pa)", "laurel(rw, unit=branch)",
                                  "denseformer", "rezero(init=1)", "skipinit(init=1)", "scaled(lam=1)"])
def test_schemes_that_start_as_the_baseline_equal_residual_models_at_init(family, spec):
    torch.manual_seed(0)
    base = FAMILIES[family]("residual").eval()
    torch.manual_seed(0)
    model = FAMILIES[family](spec).eval()
    x = INPUTS[family]()
    torch.testing.assert_close(model(x), base(x), rtol=1e-5, atol=1e-5)
