import os

import pytest
import torch

# Two cores are shared by everything on CI's machine; tiny tensors gain nothing from more threads.
torch.set_num_threads(int(os.environ.get("RESLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
