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

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..connections import Connection, connection
from .adapters import (SUPPORTED, Adapter, adapter_for, argument_defaults, generic_branches, infer_dim,
                       positional_names, refusal)
from .value_residual import ValueResidual

ATTR = "reslab_patch"


class PatchHolder(nn.Module):
    """Holds the connection of a patched model, and records in the state dict which scheme it was, so
    that loading into a model patched differently (or not at all) is a clear error."""

    def __init__(self, conn: Connection, layers: str):
        super().__init__()
        self.connection = conn
        self.layers = layers

    def get_extra_state(self):
        # a tensor (JSON bytes), not a dict: safetensors -- what save_pretrained writes -- holds tensors only
        return encode_extra_state({"spec": self.connection.spec, "layers": self.layers})

    def set_extra_state(self, state):
        state = decode_extra_state(state)
        if state.get("spec") != self.connection.spec:
            raise ValueError(f"reslab.patch: the checkpoint was saved from a model patched with {state.get('spec')!r} "
                             f"but this model is patched with {self.connection.spec!r}; patch it with the same spec")


def encode_extra_state(info: dict) -> Tensor:
    return torch.tensor(list(json.dumps(info, sort_keys=True).encode()), dtype=torch.uint8)


def decode_extra_state(state) -> dict:
    """The holder's record, from a tensor or (checkpoints saved before it was a tensor) a dict."""
    if isinstance(state, Tensor):
        return json.loads(bytes(state.cpu().tolist()).decode())
    return dict(state)


@dataclass
class _LayerContext:
    conn: Connection
    index: int
    last: int
    adapter: Adapter | None
    arg_names: tuple[str, ...]
    arg_defaults: dict
    original_class: type
    original_forward: object
    post: object = None  # what the block applies after its add (a ReLU), for tensor states only
    branch_posts: object = None  # post-norm layers: the norm after each branch's add; each branch is a block
    value_residual: object = None  # its first-layer values are dropped when the last layer is done


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
        kw = dict(ctx.arg_defaults)  # what the layer passes on for an argument the loop leaves out
        kw.update(zip(ctx.arg_names, args))
        kw.update(kwargs)
        branches = ctx.adapter.branches(self, kw)
    if k == 0:
        state = conn.enter(hidden_states)
    elif isinstance(hidden_states, tuple):
        _check_checkpointing(self)
        state = hidden_states[1]
    else:
        state = hidden_states
    if ctx.branch_posts is not None:  # post-norm: block k*B + b is branch b, its norm after the add
        for b, (f, norm) in enumerate(zip(branches, ctx.branch_posts)):
            j = k * len(branches) + b
            state = conn.map_stream(conn.close_block(conn.step(state, j, 0, f), j), norm)
    else:
        for b, f in enumerate(branches):
            state = conn.step(state, k, b, f)
        state = conn.close_block(state, k)
    if ctx.post is not None:
        state = conn.map_stream(state, ctx.post)
    if k == ctx.last:
        if ctx.value_residual is not None:
            ctx.value_residual.clear()
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


def _check_transformers_version(model: nn.Module) -> None:
    """transformers >= 5 checkpoints a layer's ``forward`` (what the patched subclass overrides) and passes the
    layer loop's hidden states positionally; 4.x layers differ in both, so they are refused, not guessed at."""
    if not type(model).__module__.startswith("transformers."):
        return
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise ValueError(f"reslab.patch: transformers {transformers.__version__} is too old for the Hugging Face "
                         "adapters; pip install 'transformers>=5' (or reslab[hf])")


def _containers(model: nn.Module) -> dict[str, nn.Module]:
    """Every non-empty ModuleList or Sequential: the containers a model's layer loop can run over."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m)}


def _find_stacks(model: nn.Module, layers: str | None) -> list[tuple[str, nn.Module]]:
    found = _containers(model)
    if layers is not None:
        if layers not in found:
            candidates = ", ".join(repr(n) for n in found if isinstance(found[n], nn.ModuleList)) or \
                "(none: the model has no ModuleList)"
            raise ValueError(f"reslab.patch: {type(model).__name__} has no ModuleList at {layers!r}; "
                             f"ModuleLists in this model: {candidates}")
        _refuse(model, layers, found[layers])
        return [(layers, found[layers])]
    known = [(n, m) for n, m in found.items() if all(adapter_for(c) is not None for c in m)]
    if not known:
        for path, stack in found.items():
            _refuse(model, path, stack)
        names = sorted({type(m[0]).__name__ for m in found.values()})
        raise ValueError(f"reslab.patch: unsupported architecture {type(model).__name__} (layer classes: "
                         f"{', '.join(names) or 'none'}); supported: {SUPPORTED} -- or pass layers='path.to.blocks' "
                         "for a ModuleList of pre-norm blocks x -> x + f(x)")
    if len(known) > 1 and not all(adapter_for(m[0]).multi_stack for _, m in known):
        raise ValueError(f"reslab.patch: several layer stacks found ({', '.join(n for n, _ in known)}); pick one "
                         "with layers='...'")
    return known


def _refuse(model: nn.Module, path: str, stack: nn.Module) -> None:
    layer = next((layer for layer in stack if refusal(layer)), None)
    if layer is not None:
        raise ValueError(f"reslab.patch: {type(model).__name__} is not supported ({type(layer).__name__} at "
                         f"{path!r}): {refusal(layer)}")


def is_patched(model: nn.Module) -> bool:
    return any(isinstance(m, PatchHolder) for m in model.modules())


def patch(model: nn.Module, spec: str, layers: str | None = None, dim: int | None = None,
          value_residual: bool = False, value_residual_init: float = 0.5, **options) -> nn.Module:
    """Rewire ``model`` in place with the connection ``spec``; returns the same model.

    ``layers``: dotted path of the ModuleList of blocks (found automatically for supported Hugging Face and
    timm architectures; a timm ResNet gets one connection per stage, sharing REX's network-wide n).
    ``dim``: the stream's width (found from the blocks or the config). ``options``: connection options as
    keywords (they win over the spec string)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"reslab.patch: expected a torch.nn.Module, got {type(model).__name__}")
    if is_patched(model):
        raise ValueError("reslab.patch: this model is already patched; call reslab.unpatch(model) first to "
                         "change its connection")
    _check_transformers_version(model)
    plans = []
    for path, stack in _find_stacks(model, layers):
        adapters = {adapter_for(layer) for layer in stack}
        if len(adapters) > 1:
            raise ValueError(f"reslab.patch: the blocks at {path!r} are of different kinds "
                             f"({', '.join(sorted({type(m).__name__ for m in stack}))}); patch a uniform stack")
        adapter = adapters.pop()
        blocks = [b for b in stack if not (adapter and adapter.skip(b))]
        if adapter and any(adapter.skip(b) for b in list(stack)[len(stack) - len(blocks):]):
            raise ValueError(f"reslab.patch: a shape-changing block sits inside the stack at {path!r}; only the "
                             "first block of a stage may change the shape")
        for layer in blocks:
            if adapter is not None:
                adapter.check(layer)
        if blocks:
            plans.append((path, adapter, blocks))
    n_total = sum(len(b) * (a.n_branches if a else 1) for _, a, b in plans)
    built = []
    for path, adapter, blocks in plans:
        width = dim or (adapter.dim(blocks[0]) if adapter else None) or \
            getattr(getattr(model, "config", None), "hidden_size", None) or infer_dim(blocks[0])
        if not width:
            raise ValueError(f"reslab.patch: cannot tell the stream's width of {type(blocks[0]).__name__}; "
                             "pass dim=...")
        channel_dim = adapter.channel_dim if adapter else -1
        per_layer = adapter.blocks_per_layer() if adapter else 1
        branches = (adapter.n_branches if adapter else 1) // per_layer
        conn = connection(spec, n_blocks=len(blocks) * per_layer, dim=int(width), channel_dim=channel_dim,
                          branches_per_block=branches, network_branches=n_total, **options)
        if conn.branches_per_block != branches:  # a spec's branches=... the blocks do not have: dead parameters
            raise ValueError(f"reslab.patch: {conn.spec!r} sets branches={conn.branches_per_block} but each block of "
                             f"{type(blocks[0]).__name__} has {branches}; drop branches=... from the spec")
        name = type(blocks[0]).__name__
        if adapter is not None and adapter.branch_posts is not None:
            _need_single_stream(conn, int(width), channel_dim,
                                f"{name} normalises the stream after every add (a post-norm layer) and the scheme "
                                "defines no single stream to normalise; use a single-stream scheme")
        if adapter is not None and adapter.post is not None:
            _need_single_stream(conn, int(width), channel_dim,
                                f"{name} applies {type(adapter.post(blocks[0])).__name__} after every add (a "
                                "post-activation ResNet) and the scheme defines no single stream to apply it to; "
                                "use a single-stream scheme", also=" or a pre-activation network")
        built.append((path, adapter, blocks, conn))
    for path, adapter, blocks, conn in built:
        ref = next(iter(blocks[0].parameters()), None)
        if ref is not None:
            conn.to(device=ref.device)
        parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
        attr = ATTR if len(built) == 1 else f"{ATTR}_{path.replace('.', '_')}"
        holder = PatchHolder(conn, path)
        if value_residual:
            holder.value_residual = ValueResidual(blocks, value_residual_init)
        parent.add_module(attr, holder)
        # (the spec is canonical: keyword options are in it, as plain values)
        _record_in_config(model, {"spec": conn.spec, "layers": layers, "dim": None if dim is None else int(dim),
                                  "value_residual": bool(value_residual),
                                  "value_residual_init": float(value_residual_init)})
        for i, layer in enumerate(blocks):
            cls = type(layer)
            post = adapter.post(layer) if adapter and adapter.post else None
            layer.__dict__["_reslab_ctx"] = _LayerContext(
                conn, i, len(blocks) - 1, adapter, positional_names(cls.forward), argument_defaults(cls.forward), cls,
                cls.forward, post=post,
                branch_posts=adapter.branch_posts(layer) if adapter and adapter.branch_posts else None,
                value_residual=getattr(holder, "value_residual", None))
            layer.__class__ = _patched_class(cls)
    return model


def _need_single_stream(conn: Connection, width: int, channel_dim: int, why: str, also: str = "") -> None:
    """Refuse a scheme whose state between blocks is not one stream, where the layer maps the stream after its
    adds (a ReLU, a LayerNorm): ``map_stream`` says whether the scheme defines that stream."""
    probe = torch.zeros([1, width, 1, 1] if channel_dim == 1 else [1, width])
    try:
        conn.map_stream(conn.start(probe), lambda t: t)
    except ValueError:
        raise ValueError(f"reslab.patch: {conn.spec!r} carries several streams between blocks, but {why} (residual, "
                         f"scaled, rezero, skipinit, layerscale, laurel, ancre, denseformer){also}") from None


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the layers get their own classes back and the connection is removed."""
    holders = [(name, m) for name, m in model.named_modules() if isinstance(m, PatchHolder)]
    if not holders:
        raise ValueError("reslab.unpatch: this model is not patched")
    for name, holder in holders:
        stack = model.get_submodule(holder.layers)
        if hasattr(holder, "value_residual"):
            holder.value_residual.remove()
        for layer in stack:
            ctx = layer.__dict__.pop("_reslab_ctx", None)
            if ctx is not None:
                layer.__class__ = ctx.original_class
        parent_name, _, attr = name.rpartition(".")
        delattr(model.get_submodule(parent_name) if parent_name else model, attr)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    return model


CONFIG_KEY = "reslab_patch"


def _record_in_config(model: nn.Module, how: dict) -> None:
    """A Hugging Face model's config carries how it was patched, so ``save_pretrained`` writes it to
    config.json and :func:`from_pretrained` can patch the model the same way before loading its weights."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        setattr(config, CONFIG_KEY, how)


def from_pretrained(model_class, path, **kwargs) -> nn.Module:
    """Load a model saved by ``save_pretrained`` after :func:`patch`: ``model_class.from_pretrained(path, **kwargs)``
    (which does not know the connection and leaves its weights out), patched as recorded in the saved config,
    then the connection's weights from the saved files, in the dtype they were saved in (or ``dtype=``, if given).
    ``path``: a local folder (with ``subfolder=``, one inside it); ``model_class``: the class it was saved from
    (e.g. ``AutoModelForCausalLM``). Returns the model."""
    folder = Path(path) / kwargs.get("subfolder", "")
    if not folder.is_dir():
        raise ValueError(f"reslab.patch.from_pretrained: {folder} is not a local folder; download the model first "
                         "(huggingface_hub.snapshot_download) and pass its folder")
    kwargs.pop("output_loading_info", None)
    from transformers.utils import logging as hf_logging

    # transformers would list the connection's weights as unexpected (it does not know them yet): quiet it,
    # and report what it found that is not the connection's
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    odd = {k: [n for n in v if ATTR not in str(n)] for k, v in info.items() if isinstance(v, (list, set))}
    if any(odd.values()):
        warnings.warn(f"reslab.patch.from_pretrained: loading {path}: " +
                      "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in odd.items() if v), stacklevel=2)
    how = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not how:
        name = getattr(model_class, "__name__", model_class)
        raise ValueError(f"reslab.patch.from_pretrained: {path} holds no patched model (its config has no "
                         f"{CONFIG_KEY!r}); load it with {name}.from_pretrained")
    delattr(model.config, CONFIG_KEY)  # patch() records it again
    patch(model, how["spec"], layers=how.get("layers"), dim=how.get("dim"),
          value_residual=how.get("value_residual", False), value_residual_init=how.get("value_residual_init", 0.5))
    saved = _saved_connection_tensors(folder)
    expected = {k for k in model.state_dict() if ATTR in k}
    if not saved:
        raise ValueError(f"reslab.patch.from_pretrained: the config in {path} records a patch ({how['spec']!r}) but "
                         "its weights hold no connection: was it saved again by an unpatched model? Load it with "
                         "transformers alone, or from the folder the patched model saved")
    if set(saved) != expected:
        raise ValueError(f"reslab.patch.from_pretrained: the connection weights in {path} "
                         f"({sorted(set(saved) - expected)[:2]}) are not where the model patched with {how['spec']!r} "
                         f"keeps them ({sorted(expected - set(saved))[:2]}); load it with the class it was saved "
                         "from")
    holders = [m for m in model.modules() if isinstance(m, PatchHolder)]
    saved_dtypes = {v.dtype for v in saved.values() if v.is_floating_point()}
    if len(saved_dtypes) == 1:  # the connection in the dtype it was saved in (a bfloat16 model's is bfloat16)
        saved_dtype = next(iter(saved_dtypes))
        for holder in holders:
            holder.to(dtype=saved_dtype)
    device = next(iter(model.parameters())).device
    model.load_state_dict({k: v.to(device) for k, v in saved.items()}, strict=False)
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(dtype, torch.dtype):  # asked for: the whole model in it, the connection too
        for holder in holders:
            holder.to(dtype=dtype)
    return model


def _saved_connection_tensors(folder: Path) -> dict:
    """The connection's tensors in a save_pretrained folder, read alone (a shard's other tensors are not loaded):
    safetensors files, sharded or not; else (older transformers) pytorch_model*.bin."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        out = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                out.update({k: handle.get_tensor(k) for k in handle.keys() if ATTR in k})
        return out
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ValueError(f"reslab.patch.from_pretrained: no model weights (*.safetensors, pytorch_model*.bin) in "
                         f"{folder}")
    return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()
            if ATTR in k}


def patched_connections(model: nn.Module) -> list[Connection]:
    """Every connection a patch added (one per stack: a timm ResNet has one per stage)."""
    return [m.connection for m in model.modules() if isinstance(m, PatchHolder)]


def patched_connection(model: nn.Module) -> Connection:
    for m in model.modules():
        if isinstance(m, PatchHolder):
            return m.connection
    raise ValueError("reslab: this model is not patched; call reslab.patch(model, spec) first")


def load_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """``model.load_state_dict`` that says what to do when a checkpoint and a model disagree about reslab:
    a patched checkpoint into an unpatched model (call ``reslab.patch`` first, with the saved spec), or
    the other way round."""
    saved = next((v for k, v in state_dict.items() if ATTR in k and k.endswith("._extra_state")), None)
    saved = decode_extra_state(saved) if saved is not None else None
    if saved is not None and not is_patched(model):
        raise ValueError(f"reslab: the checkpoint holds a model patched with {saved.get('spec')!r}; call "
                         f"reslab.patch(model, {saved.get('spec')!r}) before loading it")
    if saved is None and is_patched(model):
        raise ValueError("reslab: the checkpoint is of an unpatched model but this model is patched; call "
                         "reslab.unpatch(model) before loading it")
    return model.load_state_dict(state_dict, strict=strict)
