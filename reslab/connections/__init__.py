"""Connection schemes: one file per scheme, each registering itself with ``@register``.

Every module in this package (except the protocol and registry) is imported on first use, so adding
a scheme is adding a file -- nothing else to edit.
"""
from __future__ import annotations

import importlib
import pkgutil

from ._fused import fused
from .base import Block, Branch, Connection, as_blocks
from . import registry as _registry
from .registry import REGISTRY, Option, SchemeInfo, Shape, canonical, parse_spec, register

_INFRA = {"base", "registry"}  # modules starting with "_" (e.g. _fused) are helpers, not schemes
_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod not in _INFRA and not mod.startswith("_"):
            importlib.import_module(f"{__name__}.{mod}")
    _loaded = True


def resolve(spec: str, **overrides):
    """:func:`reslab.connections.registry.resolve` with every scheme loaded (the registry fills as the scheme
    modules are imported, so a bare lookup in a fresh interpreter would find none)."""
    _load_all()
    return _registry.resolve(spec, **overrides)


def connection(spec: str | Connection, n_blocks: int, dim: int, channel_dim: int = -1, branches_per_block: int = 1,
               network_branches: int | None = None, **overrides) -> Connection:
    """Build a connection from a spec string, e.g. ``connection("laurel(rw,lr,rank=16)", 8, 256)``.

    ``branches_per_block`` (2 for a transformer's [attention, mlp]) and ``network_branches`` (residual
    branches in the whole network, REX's n; default ``n_blocks * branches_per_block``) describe the
    model, not the scheme: a model passes its shape once and stays ignorant of the scheme. Schemes with
    a ``branches`` option take it from ``branches_per_block`` unless the spec sets one. ``overrides``
    are options given as keywords; they win over the string.
    """
    _load_all()
    if isinstance(spec, Connection):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"connection spec must be a string such as 'residual' or 'ancre(tau=0.01)', got "
                         f"{type(spec).__name__} {spec!r}; valid schemes: {', '.join(sorted(REGISTRY))}")
    if isinstance(branches_per_block, bool) or not isinstance(branches_per_block, int) or branches_per_block < 1:
        raise ValueError(f"connection {spec!r}: branches_per_block must be an integer >= 1, got {branches_per_block!r}")
    name, given = parse_spec(spec)
    filled = name in REGISTRY and "branches" in REGISTRY[name].options and "branches" not in given | overrides
    if filled:
        overrides["branches"] = branches_per_block
    info, opts = resolve(spec, **overrides)
    branches = int(opts.get("branches", branches_per_block))
    conn = info.cls(n_blocks=n_blocks, dim=dim, channel_dim=channel_dim, **opts)
    conn.set_network(branches, int(network_branches) if network_branches is not None else n_blocks * branches)
    # the spec names the scheme, not the model: a branch count taken from the model is left out of it
    conn.spec = canonical(info.name, {**opts, "branches": info.options["branches"].default} if filled else opts)
    return conn


def scheme_info(conn: Connection) -> SchemeInfo:
    """The registry entry of a built connection."""
    _load_all()
    return REGISTRY[conn.name]


def list_connections() -> list[SchemeInfo]:
    """Every registered scheme with its options, defaults, paper reference and extra-parameter formula."""
    _load_all()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def connection_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


__all__ = ["fused", "Block", "Branch", "Connection", "Option", "SchemeInfo", "as_blocks", "canonical", "connection",
           "connection_names", "list_connections", "parse_spec", "register", "resolve", "scheme_info", "Shape"]
