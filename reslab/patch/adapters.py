"""Adapters: for one kind of layer, where its residual adds are and what its branches are.

An adapter knows one family of layer classes and nothing about schemes. Given a layer and the
arguments the model's own loop called it with, it returns the layer's *branches* -- the callables
between its residual adds -- so the Connection can carry the stream from one to the next:

    Llama / Mistral / Qwen2 / Qwen3 / Gemma   h + attn(norm1(h)), then h + mlp(norm2(h))
    Gemma 2 / Gemma 3 (sandwich norms)         h + norm2(attn(norm1(h))), then h + norm4(mlp(norm3(h)))
    GPT-2                                       h + attn(ln_1(h)), then h + mlp(ln_2(h))
    any block (the generic adapter)             one branch f(h) = block(h) - h

Each branch is written from the layer's own forward in transformers 5.x (``modeling_<name>.py``,
``<Name>DecoderLayer.forward``); the attention modules receive the same keyword arguments the layer
would have passed (mask, rotary embeddings, positions, KV cache), so caching and masking stay the
model's business. Adding an architecture is one ``Adapter`` and one ``register_adapter`` call.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

BranchFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Adapter:
    """``classes``: layer class names it handles; ``branches(layer, kw) -> [f, ...]`` with ``kw`` the call's
    arguments by name; ``n_branches``: how many it returns; ``dim(layer)``: the stream's width;
    ``check(layer)``: raise ValueError if this layer cannot be patched (e.g. GPT-2 with cross-attention)."""

    name: str
    classes: tuple[str, ...]
    n_branches: int
    branches: Callable[[nn.Module, dict], list[BranchFn]]
    dim: Callable[[nn.Module], int | None]
    check: Callable[[nn.Module], None] = lambda layer: None


ADAPTERS: list[Adapter] = []


def register_adapter(adapter: Adapter) -> Adapter:
    ADAPTERS.append(adapter)
    return adapter


def adapter_for(layer: nn.Module) -> Adapter | None:
    """The adapter whose class list holds the layer's class (or, for a patched layer, its original class)."""
    names = {c.__name__ for c in type(layer).__mro__}
    for a in ADAPTERS:
        if names & set(a.classes):
            return a
    return None


def call_arguments(original_forward, args: tuple, kwargs: dict, names: tuple[str, ...]) -> dict:
    """The layer call's arguments by name. ``names``: the original forward's parameter names after
    ``hidden_states`` (computed once at patch time, so this stays traceable by torch.compile)."""
    kw = dict(zip(names, args))
    kw.update(kwargs)
    return kw


def positional_names(forward) -> tuple[str, ...]:
    params = list(inspect.signature(forward).parameters.values())[2:]  # self, hidden_states
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


# -- Llama-style pre-norm decoder layers ---------------------------------------------------------------
def _llama_branches(layer, kw):
    def attention(h):
        return layer.self_attn(hidden_states=layer.input_layernorm(h), **kw)[0]

    def mlp(h):
        return layer.mlp(layer.post_attention_layernorm(h))

    return [attention, mlp]


def _hidden_size(layer) -> int | None:
    return getattr(layer, "hidden_size", None) or getattr(getattr(layer, "config", None), "hidden_size", None)


register_adapter(Adapter(
    "llama", ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer",
              "GemmaDecoderLayer"),
    2, _llama_branches, _hidden_size))


# -- Gemma 2 / 3: a norm before and after each sublayer ---------------------------------------------------
def _gemma_sandwich_branches(layer, kw):
    def attention(h):
        return layer.post_attention_layernorm(layer.self_attn(hidden_states=layer.input_layernorm(h), **kw)[0])

    def mlp(h):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))

    return [attention, mlp]


register_adapter(Adapter("gemma-sandwich", ("Gemma2DecoderLayer", "Gemma3DecoderLayer"), 2,
                         _gemma_sandwich_branches, _hidden_size))


# -- GPT-2 --------------------------------------------------------------------------------------------------
def _gpt2_branches(layer, kw):
    kw = dict(kw)
    if kw.pop("encoder_hidden_states", None) is not None:
        raise ValueError("reslab.patch: GPT-2 with encoder_hidden_states (cross-attention) is not supported; "
                         "patch a decoder-only GPT-2")
    kw.pop("encoder_attention_mask", None)

    def attention(h):
        return layer.attn(layer.ln_1(h), **kw)[0]

    def mlp(h):
        return layer.mlp(layer.ln_2(h))

    return [attention, mlp]


def _gpt2_check(layer):
    if hasattr(layer, "crossattention"):
        raise ValueError("reslab.patch: this GPT-2 has cross-attention layers (add_cross_attention=True), a third "
                         "residual branch reslab does not wire; build it with add_cross_attention=False")


register_adapter(Adapter("gpt2", ("GPT2Block",), 2, _gpt2_branches,
                         lambda layer: layer.ln_1.normalized_shape[0], _gpt2_check))


# -- any block: its residual add is inside, so the branch is what it adds ----------------------------------------
def generic_branches(layer, args: tuple, kw: dict):
    forward = layer.__dict__["_reslab_ctx"].original_forward

    def block_delta(h):
        # block(h) = h + f(h) for a pre-norm block, so f(h) = block(h) - h (exact up to one rounding)
        out = forward(layer, h, *args, **kw)
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, Tensor) or out.shape != h.shape:
            raise ValueError(f"reslab.patch: block {type(layer).__name__} returned "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__} for a stream of "
                             f"shape {tuple(h.shape)}; the generic adapter needs blocks that keep the stream's shape "
                             "(pre-norm blocks x -> x + f(x))")
        return out - h

    return [block_delta]


def infer_dim(layer: nn.Module) -> int | None:
    """The stream width of a generic block: the normalized size of its first LayerNorm/RMSNorm."""
    for m in layer.modules():
        shape = getattr(m, "normalized_shape", None)
        if shape:
            return int(shape[-1])
    return None


def describe(obj: Any) -> str:
    return type(obj).__name__
