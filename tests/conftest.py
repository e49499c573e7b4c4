import os

import pytest
import torch

# Two cores are shared by everything on CI's machine; tiny tensors gain nothing from more threads.
torch.set_num_threads(int(os.environ.get("RESLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturb(module, scale=0.3, seed=0):
    """Move every parameter of ``module`` off its init, so a check does not pass only at a special point."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module
