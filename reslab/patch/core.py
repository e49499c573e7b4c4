"""``reslab.patch``: rewire a model you already have with any connection scheme, in place.

    reslab.patch(model, "laurel(rw, lr, rank=16)")            # a Hugging Face decoder LM (Llama, Qwen, GPT-2, ...)
    reslab.patch(model, "ancre(tau=0.01)", layers="encoder.layers")   # any ModuleList of pre-norm blocks
    reslab.unpatch(model)                                      # the original model again

How. The model keeps its own loop (``for layer in self.layers: h = layer(h, mask=..., cache=...)``), so
masks, rotary embeddings, per-layer arguments and the KV cache stay its business. Each layer's class is
swapped for a subclass whose ``forward`` runs the Connection's steps over the layer's branches (which
an adapter finds, see :mod:`reslab.patch.adapters`): the first layer starts the connection's state,
the last one finishes it. Between layers the state travels through the loop as the layer's output:
a tensor for schemes whose state is the stream, else ``(stream, state)`` (the stream first, so a
model that records hidden states records the stream). Everything flows through arguments, never a
side channel, so gradient checkpointing's recompute and ``torch.compile`` see a pure function.

The connection is a registered submodule (``<parent of the layers>.reslab_patch.connection``), so
``state_dict``, DDP, FSDP and ZeRO see its parameters; :func:`param_groups` keeps them out of weight decay.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..connections import Connection, connection
from .adapters import Adapter, adapter_for, generic_branches, infer_dim, positional_names

ATTR = "reslab_patch"


class PatchHolder(nn.Module):
    """Holds the connection of a patched model, and records in the state dict which scheme it was, so
    that loading into a model patched differently (or not at all) is a clear error."""

    def __init__(self, conn: Connection, layers: str):
        super().__init__()
        self.connection = conn
        self.layers = layers

    def get_extra_state(self):
        return {"spec": self.connection.spec, "layers": self.layers}

    def set_extra_state(self, state):
        if state.get("spec") != self.connection.spec:
            raise ValueError(f"reslab.patch: the checkpoint was saved from a model patched with {state.get('spec')!r} "
                             f"but this model is patched with {self.connection.spec!r}; patch it with the same spec")


@dataclass
class _LayerContext:
    conn: Connection
    index: int
    last: int
    adapter: Adapter | None
    arg_names: tuple[str, ...]
    original_class: type
    original_forward: object


_CLASSES: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward runs the connection's steps. Created once per class and
    published in this module, so pickling a patched model finds it by name. Subclassing (rather than
    setting an instance ``forward``) keeps transformers' gradient-checkpointing wrapper, which wraps a
    subclass's ``forward`` when the class is created."""
    if cls not in _CLASSES:
        name = f"Reslab{cls.__name__}"
        new = type(name, (cls,), {"forward": _patched_forward, "__module__": __name__})
        new.__qualname__ = name
        setattr(sys.modules[__name__], name, new)
        _CLASSES[cls] = new
    return _CLASSES[cls]


def _patched_forward(self, hidden_states, *args, **kwargs):
    ctx: _LayerContext = self.__dict__["_reslab_ctx"]
    conn, k = ctx.conn, ctx.index
    if ctx.adapter is None:
        branches = generic_branches(self, args, kwargs)
    else:
        kw = dict(zip(ctx.arg_names, args))
        kw.update(kwargs)
        branches = ctx.adapter.branches(self, kw)
    if k == 0:
        state = conn.enter(hidden_states)
    elif isinstance(hidden_states, tuple):
        _check_checkpointing(self)
        state = hidden_states[1]
    else:
        state = hidden_states
    for b, f in enumerate(branches):
        state = conn.step(state, k, b, f)
    state = conn.close_block(state, k)
    if k == ctx.last:
        return conn.exit(state)
    return state if isinstance(state, Tensor) else (conn.stream(state), state)


def _check_checkpointing(layer) -> None:
    """Reentrant checkpointing only tracks tensors passed directly, so a (stream, state) tuple would get no
    gradient: refuse it rather than train silently wrong."""
    # (no is_grad_enabled() test: reentrant checkpointing runs the forward under no_grad)
    if getattr(layer, "gradient_checkpointing", False) and layer.training:
        fn = getattr(layer, "_gradient_checkpointing_func", None)
        if getattr(fn, "keywords", {}).get("use_reentrant", False):
            raise ValueError("reslab.patch: this scheme carries a state of several tensors between layers, which "
                             "reentrant gradient checkpointing cannot differentiate; enable it with "
                             "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})")


def _module_lists(model: nn.Module) -> dict[str, nn.ModuleList]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)}


def _find_layers(model: nn.Module, layers: str | None) -> tuple[str, nn.ModuleList]:
    lists = _module_lists(model)
    if layers is not None:
        if layers not in lists:
            candidates = ", ".join(repr(n) for n in lists) or "(none: the model has no ModuleList)"
            raise ValueError(f"reslab.patch: {type(model).__name__} has no ModuleList at {layers!r}; "
                             f"ModuleLists in this model: {candidates}")
        return layers, lists[layers]
    known = [(n, m) for n, m in lists.items() if adapter_for(m[0]) is not None]
    if len(known) == 1:
        return known[0]
    if not known:
        names = sorted({type(m[0]).__name__ for m in lists.values()})
        raise ValueError(f"reslab.patch: unsupported architecture {type(model).__name__} (layer classes: "
                         f"{', '.join(names) or 'none'}); supported: Llama, Mistral, Qwen2, Qwen3, Gemma 1-3, GPT-2 "
                         "-- or pass layers='path.to.blocks' for a ModuleList of pre-norm blocks x -> x + f(x)")
    raise ValueError(f"reslab.patch: several layer stacks found ({', '.join(n for n, _ in known)}); pick one with "
                     "layers='...'")


def is_patched(model: nn.Module) -> bool:
    return any(isinstance(m, PatchHolder) for m in model.modules())


def patch(model: nn.Module, spec: str, layers: str | None = None, dim: int | None = None, **options) -> nn.Module:
    """Rewire ``model`` in place with the connection ``spec``; returns the same model.

    ``layers``: dotted path of the ModuleList of blocks (found automatically for supported Hugging Face
    architectures). ``dim``: the stream's width (found from the config or the blocks' first norm).
    ``options``: connection options as keywords (they win over the spec string)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"reslab.patch: expected a torch.nn.Module, got {type(model).__name__}")
    if is_patched(model):
        raise ValueError("reslab.patch: this model is already patched; call reslab.unpatch(model) first to "
                         "change its connection")
    path, stack = _find_layers(model, layers)
    adapters = {adapter_for(layer) for layer in stack}
    if len(adapters) > 1:
        raise ValueError(f"reslab.patch: the blocks at {path!r} are of different kinds "
                         f"({', '.join(sorted({type(m).__name__ for m in stack}))}); patch a uniform stack")
    adapter = adapters.pop()
    for layer in stack:
        if adapter is not None:
            adapter.check(layer)
    width = dim or (adapter.dim(stack[0]) if adapter else None) or getattr(getattr(model, "config", None),
                                                                          "hidden_size", None) or infer_dim(stack[0])
    if not width:
        raise ValueError(f"reslab.patch: cannot tell the stream's width of {type(stack[0]).__name__}; pass dim=...")
    n_branches = adapter.n_branches if adapter else 1
    conn = connection(spec, n_blocks=len(stack), dim=int(width), channel_dim=-1, branches_per_block=n_branches,
                      **options)
    try:
        ref = next(p for p in stack.parameters())
        conn.to(device=ref.device)
    except StopIteration:
        pass
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    parent.add_module(ATTR, PatchHolder(conn, path))
    for i, layer in enumerate(stack):
        cls = type(layer)
        names = positional_names(cls.forward)
        layer.__dict__["_reslab_ctx"] = _LayerContext(conn, i, len(stack) - 1, adapter, names, cls, cls.forward)
        layer.__class__ = _patched_class(cls)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the layers get their own classes back and the connection is removed."""
    holders = [(name, m) for name, m in model.named_modules() if isinstance(m, PatchHolder)]
    if not holders:
        raise ValueError("reslab.unpatch: this model is not patched")
    for name, holder in holders:
        stack = model.get_submodule(holder.layers)
        for layer in stack:
            ctx = layer.__dict__.pop("_reslab_ctx", None)
            if ctx is not None:
                layer.__class__ = ctx.original_class
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        delattr(parent, ATTR)
    return model


def patched_connection(model: nn.Module) -> Connection:
    for m in model.modules():
        if isinstance(m, PatchHolder):
            return m.connection
    raise ValueError("reslab: this model is not patched; call reslab.patch(model, spec) first")


def load_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """``model.load_state_dict`` that says what to do when a checkpoint and a model disagree about reslab:
    a patched checkpoint into an unpatched model (call ``reslab.patch`` first, with the saved spec), or
    the other way round."""
    saved = next((v for k, v in state_dict.items() if k.endswith(f"{ATTR}._extra_state")), None)
    if saved is not None and not is_patched(model):
        raise ValueError(f"reslab: the checkpoint holds a model patched with {saved.get('spec')!r}; call "
                         f"reslab.patch(model, {saved.get('spec')!r}) before loading it")
    if saved is None and is_patched(model) and any(k.endswith(f"{ATTR}._extra_state") for k in model.state_dict()):
        raise ValueError("reslab: the checkpoint is of an unpatched model but this model is patched; call "
                         "reslab.unpatch(model) before loading it")
    return model.load_state_dict(state_dict, strict=strict)
