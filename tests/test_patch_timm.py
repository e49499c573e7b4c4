"""reslab.patch on timm's own block classes (ResNet BasicBlock/Bottleneck, ViT Block), random init.

timm imports torchvision, which does not import beside the CPU torch this project pins, so these tests run
in a second virtualenv (torch 2.14.1 + torchvision 0.29.1 + timm) that `make test-timm` builds; in the main
one they are skipped.
"""
from __future__ import annotations

import pytest
import torch

import reslab
from reslab.connections import REGISTRY, connection_names, resolve
from reslab.patch import is_patched, patched_connections

timm = pytest.importorskip("timm")
from timm.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

torch.set_num_threads(1)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def resnet(block, seed=0):
    torch.manual_seed(seed)
    return ResNet(block=block, layers=[2, 2, 1, 1], num_classes=5).eval()


def vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5).eval()


def schemes():
    connection_names()
    return sorted(info.example for info in REGISTRY.values())


def perturb(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conn in patched_connections(model):
            for p in conn.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_resnet_stages_get_one_connection_each_and_start_as_residual(block):
    model = resnet(block)
    with torch.no_grad():
        ref = model(X)
    reslab.patch(model, "scaled(lam=1/n)")
    conns = patched_connections(model)
    # stage 1 keeps both blocks (no downsampling: for BasicBlock; a Bottleneck's first block widens, so it stays
    # outside), stage 2 its second block, stages 3-4 only a downsampling block each
    expected = [2, 1] if block is BasicBlock else [1, 1]
    assert [c.n_blocks for c in conns] == expected
    assert all(c.network_branches == sum(expected) for c in conns)  # REX's n is the network's
    reslab.unpatch(model)
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref)
    for spec in ("residual", "laurel(rw, lr, rank=4)", "rezero(init=1)", "scaled(lam=1)"):
        reslab.patch(model, spec)
        with torch.no_grad():
            torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-5)
        reslab.unpatch(model)


@pytest.mark.parametrize("spec", ["laurel(rw, lr, rank=4)", "ancre(tau=0.1)", "denseformer"])
def test_resnet_learned_schemes_train(spec):
    model = resnet(BasicBlock).train()
    reslab.patch(model, spec)
    perturb(model)
    model(X).logsumexp(-1).sum().backward()
    for conn in patched_connections(model):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn.parameters())


def test_resnet_refuses_multi_stream_schemes():
    multi = [info.example for info in REGISTRY.values() if info.name in ("hyper", "mhc", "frac")]
    for spec in multi:
        with pytest.raises(ValueError, match="applies ReLU after every add"):
            reslab.patch(resnet(BasicBlock), spec)


@pytest.mark.parametrize("spec", schemes())
def test_vit_blocks_every_scheme(spec):
    model = vit()
    with torch.no_grad():
        ref = model(X)
    reslab.patch(model, spec)
    assert is_patched(model) and "Reslab" in type(model.blocks[0]).__name__
    info, opts = resolve(spec)
    if info.is_residual_at_init(opts):
        with torch.no_grad():
            torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-5)
    perturb(model)
    model.train()
    model(X).sum().backward()
    for conn in patched_connections(model):
        for name, p in conn.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    reslab.unpatch(model)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(X), ref)
