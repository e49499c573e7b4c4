"""The contract every registered scheme meets, driven by the registry: a scheme added to
``reslab/connections/`` is tested here with no edit (its ``example`` and declared ``variants``).

Each check compares against something the scheme does not compute itself: ``residual`` on the same
blocks, the registry's parameter formula, autograd's own derivatives, a hand-lesioned stack, a
channels-last run of the same weights.
"""
from __future__ import annotations

import pytest
import torch
from conftest import perturb
from torch import nn

import reslab
from reslab.connections import REGISTRY, Shape, connection_names, resolve

torch.set_num_threads(1)
K, BR, D, B, T = 3, 2, 8, 2, 3


def all_specs() -> list[str]:
    connection_names()  # loads every scheme file
    specs = []
    for info in REGISTRY.values():
        specs += [info.example, *info.variants]
    return specs


SPECS = all_specs()


class TanhBranch(nn.Module):
    """A branch with weights of its own: tanh((h + c) W), shape-preserving. The product comes last, so under
    bf16 autocast the branch returns bf16, as a real model's linear layers do."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim, dim, generator=g) / dim ** 0.5)
        self.c = nn.Parameter(torch.randn(dim, generator=g) * 0.1)

    def forward(self, h):
        return torch.tanh((h + self.c.to(h.dtype)) @ self.w.to(h.dtype))


def make_blocks(k=K, branches=BR, dim=D):
    return nn.ModuleList(nn.ModuleList(TanhBranch(dim, 10 * j + b) for b in range(branches)) for j in range(k))


def build(spec, k=K, dim=D, branches=BR, channel_dim=-1):
    return reslab.connection(spec, n_blocks=k, dim=dim, channel_dim=channel_dim, branches_per_block=branches)


@pytest.mark.parametrize("spec", SPECS)
def test_equals_residual_at_init_where_declared(spec):
    info, opts = resolve(spec)
    blocks, x = make_blocks(), torch.randn(B, T, D, dtype=torch.float64)
    blocks = blocks.double()
    y = build(spec).double()(x, blocks)
    ref = build("residual")(x, blocks)
    if info.is_residual_at_init(opts):
        torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
    else:
        assert y.shape == ref.shape


@pytest.mark.parametrize("spec", SPECS)
def test_extra_parameters_equal_the_declared_formula(spec):
    info, opts = resolve(spec)
    for k, dim, branches in ((K, D, BR), (5, 12, 1), (1, 4, 3)):
        if "rank" in opts and (opts["lr"] or opts["pa"]):
            dim = max(dim, opts["rank"])
        conn = build(spec, k, dim, branches)
        assert info.param_count is not None, f"{info.name} declares no param_count"
        want = info.param_count(opts, Shape(k, dim, branches))
        assert conn.extra_parameters() == want == sum(p.numel() for p in conn.parameters() if p.requires_grad)


@pytest.mark.parametrize("spec", SPECS)
def test_every_trainable_parameter_gets_a_gradient(spec):
    conn = perturb(build(spec).double())
    blocks, x = make_blocks().double(), torch.randn(B, T, D, dtype=torch.float64)
    conn(x, blocks).pow(2).sum().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{spec}: {name} got no gradient"


@pytest.mark.parametrize("spec", SPECS)
def test_dtype_float64_and_bf16_are_kept(spec):
    blocks, x = make_blocks(), torch.randn(B, T, D)
    conn = perturb(build(spec))
    y32 = conn(x, blocks)
    y64 = conn(x.double(), blocks)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, atol=1e-4, rtol=1e-4)
    y16 = conn(x.bfloat16(), blocks)
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    torch.testing.assert_close(y16.float(), y32, atol=0.15, rtol=0.1)


@pytest.mark.parametrize("spec", SPECS)
def test_bf16_autocast_keeps_a_float32_stream(spec):
    """Under bf16 autocast the branches' outputs are bf16 (their matmuls are); a scheme that keeps a residual
    stream must keep it in float32, as x + f(x) does: every branch reads float32 and the result is float32.
    (Stream mixing by einsum would otherwise run in bf16 and push the streams to bf16.)"""
    if resolve(spec)[0].name == "plain":
        pytest.skip("plain has no stream to keep: its state is the last branch's (bf16) output")
    blocks, x = make_blocks(), torch.randn(B, T, D)
    seen = []
    # ancre(form=theory) chains a block's branches plainly (h' = f(h')), so only a block's first branch reads
    # the stream there; the later ones read the previous branch's (bf16) output, as inside a plain net
    chained = resolve(spec)[0].name == "ancre" and resolve(spec)[1].get("form") == "theory"
    for block in blocks:
        for b, branch in enumerate(block):
            if b == 0 or not chained:
                branch.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    conn = perturb(build(spec))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert blocks[0][0](x).dtype == torch.bfloat16  # else a scheme that rounds its stream could pass
        y = conn(x, blocks)
    assert y.dtype == torch.float32 and set(seen) == {torch.float32}, (y.dtype, set(seen))
    torch.testing.assert_close(y, conn(x, blocks), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("spec", SPECS)
def test_double_backward_and_jvp(spec):
    conn = perturb(build(spec).double())
    blocks = make_blocks().double()
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(conn(x, blocks).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)  # a second derivative: fails on once_differentiable paths
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
    v = torch.randn_like(x)
    f = lambda inp: conn(inp, blocks)  # noqa: E731
    _, tangent = torch.func.jvp(f, (x.detach(),), (v,))
    eps = 1e-6
    fd = (f(x.detach() + eps * v) - f(x.detach() - eps * v)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("spec", SPECS)
def test_lesion_of_block_k_equals_zeroed_branches(spec):
    conn = perturb(build(spec).double())
    blocks, x = make_blocks().double(), torch.randn(B, T, D, dtype=torch.float64)
    zero = [lambda h: torch.zeros_like(h)] * BR
    expected = conn(x, [blocks[0], zero, blocks[2]])
    conn._lesioned = frozenset({1})
    torch.testing.assert_close(conn(x, blocks), expected)
    conn._lesioned = frozenset()
    assert not torch.allclose(conn(x, blocks), expected)


@pytest.mark.parametrize("spec", SPECS)
def test_recording_counts_and_coefficient_schema(spec):
    info, _ = resolve(spec)
    conn = perturb(build(spec))
    with reslab.record(conn) as rec:
        y = conn(torch.randn(B, T, D), make_blocks())
    assert len(rec.states["connection"]) == K + 1 and len(rec.branch_stats()) == K * BR
    assert rec.states["connection"][0] > 0 and torch.isfinite(y).all()
    coeffs = rec.coefficients()["connection"]
    assert set(coeffs) <= set(info.coefficients), f"undeclared coefficient keys {set(coeffs) - set(info.coefficients)}"
    if any(p.requires_grad for p in conn.parameters()):
        assert coeffs, f"{spec} learns parameters but reports no coefficients"


@pytest.mark.parametrize("spec", SPECS)
def test_channels_first_matches_channels_last(spec):
    """The same weights on an NCHW map and on its NHWC transpose give the same stream."""
    last = perturb(build(spec))
    first = build(spec, channel_dim=1)
    first.load_state_dict(last.state_dict())
    x = torch.randn(B, 4, 5, D)  # NHWC
    blocks = make_blocks()
    nchw_blocks = [[(lambda h, f=f: f(h.movedim(1, -1)).movedim(-1, 1)) for f in block] for block in blocks]
    torch.testing.assert_close(first(x.movedim(-1, 1), nchw_blocks).movedim(1, -1), last(x, blocks),
                               atol=1e-5, rtol=1e-5)


EXAMPLES = sorted({REGISTRY[n].example for n in connection_names()})


@pytest.mark.parametrize("spec", EXAMPLES)
def test_torch_compile_fullgraph(spec):
    """Dynamo traces the whole stack, forward and backward, without a graph break. Each scheme's example only,
    with the aot_eager backend (dynamo + AOT autograd, no code generation): tracing is what can fail here, and
    inductor's code generation takes minutes on 2 cores (`reslab bench overhead --compile` runs it)."""
    torch._dynamo.reset()
    conn, blocks = perturb(build(spec)), make_blocks()
    x = torch.randn(B, T, D, requires_grad=True)
    compiled = torch.compile(lambda h: conn(h, blocks), fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, conn(x, blocks))
    (g,) = torch.autograd.grad(y.square().sum(), x)
    (g_ref,) = torch.autograd.grad(conn(x, blocks).square().sum(), x)
    torch.testing.assert_close(g, g_ref)


def test_bad_branch_shape_is_a_clear_error():
    conn = build("residual")
    with pytest.raises(ValueError, match=r"branch 0 of block 0 returned shape \(2, 3, 4\)"):
        conn(torch.randn(B, T, D), [[lambda h: h[..., :4]]] * K)
    with pytest.raises(ValueError, match="built for dim=8"):
        conn(torch.randn(B, T, 5), make_blocks(dim=5))


@pytest.mark.parametrize("spec", EXAMPLES)
def test_trains_inside_a_resnet_with_empty_stages(spec):
    """Channels-first stages, one with a block and two with none, downsampling convolutions between them: the
    layout a scheme hands back must be one a convolution's backward takes (a strided view once corrupted the heap)."""
    from reslab.models import ResNet

    torch.manual_seed(0)
    net = ResNet(depth=8, width=0.25, in_channels=1, n_classes=3, connection=spec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
