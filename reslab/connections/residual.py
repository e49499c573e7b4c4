"""The baseline: every branch adds to an identity stream, h <- h + f(h) (He et al., 2016)."""
from __future__ import annotations

import torch

from .base import Connection
from .registry import register


@register("residual", paper="He et al. 2016, Deep Residual Learning (arXiv:1512.03385)", params="0",
          param_count=lambda opts, shape: 0, starts_as_residual=True)
class Residual(Connection):
    """Standard residual stream: h <- h + f(h) for every branch of every block."""

    def branch_output(self, state, k, b, x, out):
        return state + out

    def branch_scale(self, k, b):
        return torch.tensor(1.0)

    def routing(self):
        # the cascaded one-hot R[j-1, j-1] = 1, read with plain blocks: h_j = f_j(h_{j-1}) + h_{j-1}
        return torch.eye(self.n_blocks, self.n_blocks + 1), "shortcut", 0.0
