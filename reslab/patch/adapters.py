"""Adapters: for one kind of layer, where its residual adds are and what its branches are.

An adapter knows one family of layer classes and nothing about schemes. Given a layer and the
arguments the model's own loop called it with, it returns the layer's *branches* -- the callables
between its residual adds -- so the Connection can carry the stream from one to the next:

    Llama / Mistral / Qwen2 / Qwen3 / Gemma   h + attn(norm1(h)), then h + mlp(norm2(h))
    Gemma 2 / Gemma 3 (sandwich norms)         h + norm2(attn(norm1(h))), then h + norm4(mlp(norm3(h)))
    GPT-2                                       h + attn(ln_1(h)), then h + mlp(ln_2(h))
    timm ResNet BasicBlock / Bottleneck          relu(h + body(h)): the add sits before the final ReLU
    timm ViT Block                              h + ls1(attn(norm1(h))), then h + ls2(mlp(norm2(h)))
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
    ``check(layer)``: raise ValueError if this layer cannot be patched (e.g. GPT-2 with cross-attention).
    For CNN stages: ``channel_dim`` of the stream; ``skip(layer)``: blocks that stay as they are (a
    shape-changing downsampling block opens a stage, outside the connection, as in reslab's ResNet);
    ``post(layer)``: what the block applies after its add (a post-activation ResNet's ReLU), which needs
    a scheme whose state is the stream itself; ``multi_stack``: a model has several stacks (stages)."""

    name: str
    classes: tuple[str, ...]
    n_branches: int
    branches: Callable[[nn.Module, dict], list[BranchFn]]
    dim: Callable[[nn.Module], int | None]
    check: Callable[[nn.Module], None] = lambda layer: None
    channel_dim: int = -1
    skip: Callable[[nn.Module], bool] = lambda layer: False
    post: Callable[[nn.Module], Callable[[Tensor], Tensor]] | None = None
    multi_stack: bool = False


ADAPTERS: list[Adapter] = []


def register_adapter(adapter: Adapter) -> Adapter:
    ADAPTERS.append(adapter)
    return adapter


def adapter_for(layer: nn.Module) -> Adapter | None:
    """The adapter whose class list holds the layer's class (or, for a patched layer, its original class)."""
    names = {n for c in type(layer).__mro__ for n in (c.__name__, f"{c.__module__}.{c.__name__}")}
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


# -- timm (pytorch-image-models 1.x): ResNet basic/bottleneck blocks and the ViT block ---------------------------
def _timm_basic_branch(layer, kw):
    def body(x):  # timm.models.resnet.BasicBlock.forward up to its residual add
        x = layer.aa(layer.act1(layer.drop_block(layer.bn1(layer.conv1(x)))))
        x = layer.bn2(layer.conv2(x))
        x = layer.se(x) if layer.se is not None else x
        return layer.drop_path(x) if layer.drop_path is not None else x

    return [body]


def _timm_bottleneck_branch(layer, kw):
    def body(x):  # timm.models.resnet.Bottleneck.forward up to its residual add
        x = layer.act1(layer.bn1(layer.conv1(x)))
        x = layer.aa(layer.act2(layer.drop_block(layer.bn2(layer.conv2(x)))))
        x = layer.bn3(layer.conv3(x))
        x = layer.se(x) if layer.se is not None else x
        return layer.drop_path(x) if layer.drop_path is not None else x

    return [body]


register_adapter(Adapter("timm-resnet-basic", ("timm.models.resnet.BasicBlock",), 1, _timm_basic_branch,
                         lambda layer: layer.bn2.num_features, channel_dim=1,
                         skip=lambda layer: layer.downsample is not None, post=lambda layer: layer.act2,
                         multi_stack=True))
register_adapter(Adapter("timm-resnet-bottleneck", ("timm.models.resnet.Bottleneck",), 1, _timm_bottleneck_branch,
                         lambda layer: layer.bn3.num_features, channel_dim=1,
                         skip=lambda layer: layer.downsample is not None, post=lambda layer: layer.act3,
                         multi_stack=True))


def _timm_vit_branches(layer, kw):
    mask, causal = kw.get("attn_mask"), kw.get("is_causal", False)

    def attention(h):
        return layer.drop_path1(layer.ls1(layer.attn(layer.norm1(h), attn_mask=mask, is_causal=causal)))

    def mlp(h):
        return layer.drop_path2(layer.ls2(layer.mlp(layer.norm2(h))))

    return [attention, mlp]


def _timm_vit_check(layer):
    if not hasattr(layer, "ls1"):
        raise ValueError(f"reslab.patch: {type(layer).__name__} is not timm's pre-norm ViT Block; supported: "
                         "timm.models.vision_transformer.Block")


register_adapter(Adapter("timm-vit", ("timm.models.vision_transformer.Block",), 2, _timm_vit_branches, lambda layer: layer.norm1.normalized_shape[0],
                         _timm_vit_check))


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
