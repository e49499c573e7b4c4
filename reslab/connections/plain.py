"""No shortcut at all: h <- f(h). The "plain net" of He et al. (2016) and of the PNNH paper."""
from __future__ import annotations

from .base import Connection
from .registry import register


@register("plain", paper="He et al. 2016 (plain baseline); Zhang et al., PNNH", params="0",
          param_count=lambda opts, shape: 0)
class Plain(Connection):
    """Plain stack: h <- f(h) for every branch; no identity path anywhere."""

    carries_identity = False

    def branch_output(self, state, k, b, x, out):
        return out
