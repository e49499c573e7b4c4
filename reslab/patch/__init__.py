"""Connections in the models people already train: ``reslab.patch(model, spec)``.

See :mod:`reslab.patch.core` for how a model's own loop is driven and :mod:`reslab.patch.adapters` for
where each architecture's residual adds are. No scheme knowledge lives here.
"""
from __future__ import annotations

from torch import nn

from ..connections import Connection
from .adapters import ADAPTERS, Adapter, register_adapter
from .core import (PatchHolder, from_pretrained, is_patched, load_state_dict, patch, patched_connection,
                   patched_connections, unpatch)


def param_groups(model: nn.Module, weight_decay: float = 0.1, connection_lr_mult: float = 1.0,
                 lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups for any model, patched or built by reslab: matrices decayed, vectors and
    scalars not, connection parameters not decayed and with their own LR multiplier (ANCRe's logits under a
    small tau, LAuReL's alpha/beta). Pass the result to ``torch.optim.AdamW``."""
    conn_ids = {id(p) for m in model.modules() if isinstance(m, Connection) for p in m.parameters()}
    groups = {"decay": [], "no_decay": [], "connection": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = "connection" if id(p) in conn_ids else ("decay" if p.dim() >= 2 else "no_decay")
        groups[key].append(p)
    out = [{"name": "decay", "params": groups["decay"], "weight_decay": weight_decay},
           {"name": "no_decay", "params": groups["no_decay"], "weight_decay": 0.0},
           {"name": "connection", "params": groups["connection"], "weight_decay": 0.0}]
    if lr is not None:
        for g in out:
            g["lr"] = lr * (connection_lr_mult if g["name"] == "connection" else 1.0)
    return [g for g in out if g["params"]]


__all__ = ["ADAPTERS", "Adapter", "PatchHolder", "from_pretrained", "is_patched", "load_state_dict", "param_groups",
           "patch", "patched_connection", "patched_connections", "register_adapter", "unpatch"]
