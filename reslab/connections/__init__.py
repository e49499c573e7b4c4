"""Connection schemes: one file per scheme, each registering itself with ``@register``.

Every module in this package (except the protocol and registry) is imported on first use, so adding
a scheme is adding a file -- nothing else to edit.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Block, Branch, Connection, as_blocks
from .registry import REGISTRY, Option, SchemeInfo, canonical, parse_spec, register, resolve

_INFRA = {"base", "registry"}
_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod not in _INFRA and not mod.startswith("_"):
            importlib.import_module(f"{__name__}.{mod}")
    _loaded = True


def connection(spec: str | Connection, n_blocks: int, dim: int, channel_dim: int = -1, branches_per_block: int = 1,
               **overrides) -> Connection:
    """Build a connection from a spec string, e.g. ``connection("laurel(rw,lr,rank=16)", 8, 256)``.

    ``branches_per_block`` is the model's block structure (2 for a transformer's [attention, mlp]),
    not a choice of scheme: schemes that own a parameter per branch (``skipinit``, ``layerscale``,
    ``laurel(unit=branch)``) take it as their ``branches`` option unless the spec sets one, so a
    model can pass its shape once and stay ignorant of the scheme. ``overrides`` are options given
    as keywords; they win over the string.
    """
    _load_all()
    if isinstance(spec, Connection):
        return spec
    name, given = parse_spec(spec)
    if name in REGISTRY and "branches" in REGISTRY[name].options and "branches" not in given | overrides:
        overrides["branches"] = branches_per_block
    info, opts = resolve(spec, **overrides)
    conn = info.cls(n_blocks=n_blocks, dim=dim, channel_dim=channel_dim, **opts)
    conn.spec = canonical(info.name, opts)
    return conn


def list_connections() -> list[SchemeInfo]:
    """Every registered scheme with its options, defaults, paper reference and extra-parameter formula."""
    _load_all()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def connection_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


__all__ = ["Block", "Branch", "Connection", "Option", "SchemeInfo", "as_blocks", "canonical", "connection",
           "connection_names", "list_connections", "parse_spec", "register", "resolve"]
