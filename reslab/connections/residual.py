"""The baseline: every branch adds to an identity stream, h <- h + f(h) (He et al., 2016)."""
from __future__ import annotations

from .base import Connection
from .registry import register


@register("residual", paper="He et al. 2016, Deep Residual Learning (arXiv:1512.03385)", params="0")
class Residual(Connection):
    """Standard residual stream: h <- h + f(h) for every branch of every block."""

    def forward(self, x, blocks):
        self.check_blocks(blocks)
        blocks = self.effective_blocks(blocks)
        self._record_state(0, x)
        for j, block in enumerate(blocks):
            for b, f in enumerate(block):
                out = f(x)
                self._record_branch(j, b, x, out)
                x = x + out
            self._record_state(j + 1, x)
        return x
