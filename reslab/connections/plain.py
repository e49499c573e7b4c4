"""No shortcut at all: h <- f(h). The "plain net" of He et al. (2016) and of the PNNH paper."""
from __future__ import annotations

from .base import Connection
from .registry import register


@register("plain", paper="He et al. 2016 (plain baseline); Zhang et al., PNNH", params="0")
class Plain(Connection):
    """Plain stack: h <- f(h) for every branch; no identity path anywhere."""

    carries_identity = False

    def forward(self, x, blocks):
        self.check_blocks(blocks)
        blocks = self.effective_blocks(blocks)
        self._record_state(0, x)
        for j, block in enumerate(blocks):
            for b, f in enumerate(block):
                out = f(x)
                self._record_branch(j, b, x, out)
                x = out
            self._record_state(j + 1, x)
        return x
