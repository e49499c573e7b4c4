"""Adapters: for one kind of layer, where its residual adds are and what its branches are.

An adapter knows one family of layer classes and nothing about schemes. Given a layer and the
arguments the model's own loop called it with, it returns the layer's *branches* -- the callables
between its residual adds -- so the Connection can carry the stream from one to the next:

    Llama, Mistral, Qwen2/3, Gemma, OLMo, ...  h + attn(norm1(h)), then h + mlp(norm2(h))  (MoE MLPs too)
    Phi-3                                       the same, each branch ending in its dropout
    Granite                                     the same, each branch scaled by residual_multiplier
    OLMo 2 / 3, EXAONE 4 (norm after)           h + norm1(attn(h)), then h + norm2(mlp(h))
    Gemma 2 / 3, GLM-4 (sandwich norms)         h + norm2(attn(norm1(h))), then h + norm4(mlp(norm3(h)))
    Cohere, Phi, GPT-NeoX / StableLM parallel   h + attn(norm(h)) + mlp(norm'(h)): ONE branch, both read h
    GPT-NeoX / StableLM sequential, GPT-2       h + attn(ln_1(h)), then h + mlp(ln_2(h))
    ViT, DeiT, CLIP, SigLIP, ModernBERT         h + attn(norm1(h)), then h + mlp(norm2(h))  (encoders)
    DINOv2 / v3                                 the same, each branch ending in layer scale and drop path
    BERT, RoBERTa, XLM-R, ELECTRA, ... (post-norm) LN1(h + attn(h)), then LN2(h + mlp(h)): each branch a block
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
    a scheme whose state is the stream itself; ``multi_stack``: a model has several stacks (stages).
    ``applies(layer)``: for a class whose layers wire their adds one of two ways by config (GPT-NeoX's
    ``use_parallel_residual``), whether this adapter is the one for this layer.
    ``branch_posts(layer)``: for post-norm layers, what the layer applies to the stream after each branch's add
    (one LayerNorm per branch); each branch is then a block of its own to the connection, so the scheme places
    the norm after its add as it places a post-activation ResNet's ReLU. What a scheme keeps per block (rezero's
    α, laurel's unit=block instance) and its depth rules (layerscale's eps=cait, scaled's count=blocks) then
    count sublayers, 2 per layer: with a norm between them, a layer's two adds cannot share a block."""

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
    applies: Callable[[nn.Module], bool] = lambda layer: True
    branch_posts: Callable[[nn.Module], list] | None = None

    def blocks_per_layer(self) -> int:
        return self.n_branches if self.branch_posts else 1


ADAPTERS: list[Adapter] = []
# what the error for an unknown architecture lists; keep it in step with the registrations below
SUPPORTED = ("Llama, Mistral, Ministral, Qwen2/3 (+MoE), Gemma 1-3, OLMo 1-3, Mixtral, DeepSeek-V3, Phi, Phi-3, "
             "Granite (+MoE), GLM-4, Cohere 1-2, EXAONE 4, SmolLM3, StarCoder2, StableLM, GPT-NeoX, GPT-2; "
             "encoders ViT, DeiT, DINOv2/v3, CLIP, SigLIP, ModernBERT; post-norm BERT, RoBERTa, XLM-R, CamemBERT, "
             "ELECTRA, ERNIE, Data2Vec-text; timm ResNet and ViT")


def register_adapter(adapter: Adapter) -> Adapter:
    ADAPTERS.append(adapter)
    return adapter


# Layers whose adds reslab cannot take over, with the reason: the generic adapter (block(h) - h as the branch)
# would run but compute something else, so these are refused even with layers=... . Module-qualified names, so
# that a user's own class of the same name is not caught.
_POST_NORM = ("post-norm layers (LayerNorm(h + f(h)) after every add) that reslab has no adapter for: the generic "
              "one would treat the normalised output as h + f(h); post-norm layers reslab wires: BERT, RoBERTa, "
              "XLM-R, CamemBERT, ELECTRA, ERNIE, Data2Vec-text")
_POST_NORM_LAYERS = {  # transformers.models.<module>: layer classes
    "mpnet.modeling_mpnet": ["MPNetLayer"], "albert.modeling_albert": ["AlbertLayer", "AlbertLayerGroup"],
    "distilbert.modeling_distilbert": ["TransformerBlock"], "deberta.modeling_deberta": ["DebertaLayer"],
    "deberta_v2.modeling_deberta_v2": ["DebertaV2Layer"],
    "bart.modeling_bart": ["BartEncoderLayer", "BartDecoderLayer"],
    "marian.modeling_marian": ["MarianEncoderLayer", "MarianDecoderLayer"],
}
REFUSED = {f"transformers.models.{module}.{c}": _POST_NORM for module, classes in _POST_NORM_LAYERS.items()
           for c in classes}
REFUSED["transformers.models.deepseek_v4.modeling_deepseek_v4.DeepseekV4DecoderLayer"] = (
    "DeepSeek-V4's layers carry their own manifold-constrained hyper-connections (mHC: several streams per token); "
    "reslab would wire a second scheme over them. Compare schemes with reslab's 'mhc' in another architecture instead")


def refusal(layer: nn.Module) -> str | None:
    """Why this layer's adds cannot be wired by reslab, or None."""
    return next((REFUSED[f"{c.__module__}.{c.__name__}"] for c in type(layer).__mro__
                 if f"{c.__module__}.{c.__name__}" in REFUSED), None)


def adapter_for(layer: nn.Module) -> Adapter | None:
    """The adapter whose class list holds the layer's class (or, for a patched layer, its original class)."""
    names = {n for c in type(layer).__mro__ for n in (c.__name__, f"{c.__module__}.{c.__name__}")}
    for a in ADAPTERS:
        if names & set(a.classes) and a.applies(layer):
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


def argument_defaults(forward) -> dict:
    """The defaults of the layer's named arguments after ``hidden_states``: what the layer hands its sublayers
    for an argument the model's loop leaves out (OLMo 3's loop passes no use_cache; its layer passes False)."""
    params = list(inspect.signature(forward).parameters.values())[2:]
    return {p.name: p.default for p in params
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# -- decoder layers whose two sublayers sit between norms ------------------------------------------------------
def _normed_sublayers(attn_in: str | None, attn_out: str | None, mlp_in: str | None, mlp_out: str | None):
    """The branches of a layer h + attn_out(attn(attn_in(h))), then h + mlp_out(mlp(mlp_in(h))), its norms named
    by attribute (None: no norm there). Llama-style layers have the two before, OLMo 2 the two after, Gemma 2
    and GLM-4 all four; the attention gets the keywords the layer would give it."""
    def norm(layer, name):
        return getattr(layer, name) if name else (lambda x: x)

    def branches(layer, kw):
        def attention(h):
            return norm(layer, attn_out)(layer.self_attn(hidden_states=norm(layer, attn_in)(h), **kw)[0])

        def mlp(h):
            return norm(layer, mlp_out)(layer.mlp(norm(layer, mlp_in)(h)))

        return [attention, mlp]

    return branches


_llama_branches = _normed_sublayers("input_layernorm", None, "post_attention_layernorm", None)


def _hidden_size(layer) -> int | None:
    return getattr(layer, "hidden_size", None) or getattr(getattr(layer, "config", None), "hidden_size", None)


register_adapter(Adapter(
    "llama", ("LlamaDecoderLayer", "MistralDecoderLayer", "MinistralDecoderLayer", "Qwen2DecoderLayer",
              "Qwen3DecoderLayer", "GemmaDecoderLayer", "OlmoDecoderLayer", "Starcoder2DecoderLayer",
              "SmolLM3DecoderLayer",
              # mixture-of-experts MLPs: the router's logits are recorded by transformers' hooks on the gate
              "MixtralDecoderLayer", "Qwen2MoeDecoderLayer", "Qwen3MoeDecoderLayer", "DeepseekV3DecoderLayer"),
    2, _llama_branches, _hidden_size))


def _phi3_branches(layer, kw):
    def attention(h):
        return layer.resid_attn_dropout(layer.self_attn(hidden_states=layer.input_layernorm(h), **kw)[0])

    def mlp(h):
        return layer.resid_mlp_dropout(layer.mlp(layer.post_attention_layernorm(h)))

    return [attention, mlp]


register_adapter(Adapter("phi3", ("Phi3DecoderLayer",), 2, _phi3_branches, _hidden_size))


def _granite_branches(layer, kw):
    # Granite scales what each sublayer adds (h + m * f(h)); the scale belongs to the branch, so a scheme
    # that weighs branches weighs m * f, and residual gives Granite's own sums
    mlp_module = layer.mlp if hasattr(layer, "mlp") else layer.block_sparse_moe

    def attention(h):
        return layer.self_attn(hidden_states=layer.input_layernorm(h), **kw)[0] * layer.residual_multiplier

    def mlp(h):
        return mlp_module(layer.post_attention_layernorm(h)) * layer.residual_multiplier

    return [attention, mlp]


register_adapter(Adapter("granite", ("GraniteDecoderLayer", "GraniteMoeDecoderLayer"), 2, _granite_branches,
                         _hidden_size))


# -- OLMo 2 / 3, EXAONE 4: no norm before a sublayer, one after it ---------------------------------------------
register_adapter(Adapter("norm-after", ("Olmo2DecoderLayer", "Olmo3DecoderLayer", "Exaone4DecoderLayer"), 2,
                         _normed_sublayers(None, "post_attention_layernorm", None, "post_feedforward_layernorm"),
                         _hidden_size))


# -- Gemma 2 / 3, GLM-4: a norm before and after each sublayer (GLM-4 names its four differently) ----------------
register_adapter(Adapter("gemma-sandwich", ("Gemma2DecoderLayer", "Gemma3DecoderLayer"), 2,
                         _normed_sublayers("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                           "post_feedforward_layernorm"), _hidden_size))
register_adapter(Adapter("glm4", ("Glm4DecoderLayer",), 2,
                         _normed_sublayers("input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm",
                                           "post_mlp_layernorm"), _hidden_size))


# -- parallel blocks: attention and MLP both read the layer's input and are added together -----------------
# (h + attn(n(h)) + mlp(n'(h))). Both read the same stream, so to a connection the layer is ONE branch
# f(h) = attn + mlp: splitting it into two steps would feed the MLP a stream that already holds the attention.
def _layer_norm_width(layer) -> int:
    return layer.input_layernorm.normalized_shape[0]


def _cohere_branch(layer, kw):
    def parallel(h):
        x = layer.input_layernorm(h)
        return layer.self_attn(hidden_states=x, **kw)[0] + layer.mlp(x)

    return [parallel]


def _phi_branch(layer, kw):
    def parallel(h):
        x = layer.input_layernorm(h)
        return layer.resid_dropout(layer.self_attn(hidden_states=x, **kw)[0]) + layer.resid_dropout(layer.mlp(x))

    return [parallel]


register_adapter(Adapter("cohere", ("CohereDecoderLayer", "Cohere2DecoderLayer"), 1, _cohere_branch, _hidden_size))
register_adapter(Adapter("phi", ("PhiDecoderLayer",), 1, _phi_branch, _layer_norm_width))


# GPT-NeoX (Pythia) and StableLM: parallel or sequential by the config's use_parallel_residual
def _neox_attention(layer, kw):
    return lambda x: layer.post_attention_dropout(layer.attention(x, **kw)[0])


def _neox_parallel_branch(layer, kw):
    attention = _neox_attention(layer, kw)

    def parallel(h):  # attention first, as the layer does, so dropout draws its masks in the same order
        a = attention(layer.input_layernorm(h))
        return a + layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(h)))

    return [parallel]


def _neox_sequential_branches(layer, kw):
    attention = _neox_attention(layer, kw)
    return [lambda h: attention(layer.input_layernorm(h)),
            lambda h: layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(h)))]


def _stablelm_attention(layer, kw):
    # StableLM's layer passes its attention these arguments only (not the loop's extra keywords)
    kw = {k: kw[k] for k in ("attention_mask", "position_ids", "cache", "past_key_values", "use_cache",
                             "position_embeddings") if k in kw}
    return lambda x: layer.self_attn(hidden_states=x, **kw)[0]


def _stablelm_parallel_branch(layer, kw):
    attention = _stablelm_attention(layer, kw)

    def parallel(h):
        x = layer.input_layernorm(h)
        return attention(x) + layer.dropout(layer.mlp(x))

    return [parallel]


def _stablelm_sequential_branches(layer, kw):
    attention = _stablelm_attention(layer, kw)
    return [lambda h: attention(layer.input_layernorm(h)),
            lambda h: layer.dropout(layer.mlp(layer.post_attention_layernorm(h)))]


def _parallel(layer) -> bool:
    return bool(layer.use_parallel_residual)


register_adapter(Adapter("gpt-neox-parallel", ("GPTNeoXLayer",), 1, _neox_parallel_branch, _layer_norm_width,
                         applies=_parallel))
register_adapter(Adapter("gpt-neox", ("GPTNeoXLayer",), 2, _neox_sequential_branches, _layer_norm_width,
                         applies=lambda layer: not _parallel(layer)))
register_adapter(Adapter("stablelm-parallel", ("StableLmDecoderLayer",), 1, _stablelm_parallel_branch,
                         _layer_norm_width, applies=_parallel))
register_adapter(Adapter("stablelm", ("StableLmDecoderLayer",), 2, _stablelm_sequential_branches, _layer_norm_width,
                         applies=lambda layer: not _parallel(layer)))


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


# -- encoders: pre-norm like the decoders, without a cache; vision models read patches, not tokens ---------------
def _width_of(norm_name: str):
    return lambda layer: getattr(layer, norm_name).normalized_shape[0]


def _vit_branches(layer, kw):  # ViT, DeiT: one dropout module, after each sublayer
    def attention(h):
        return layer.dropout(layer.attention(layer.layernorm_before(h), **kw)[0])

    def mlp(h):
        return layer.dropout(layer.mlp(layer.layernorm_after(h)))

    return [attention, mlp]


def _dinov2_branches(layer, kw):  # DINOv2/v3: layer scale, then stochastic depth, on each sublayer
    def attention(h):
        return layer.drop_path(layer.layer_scale1(layer.attention(layer.norm1(h), **kw)[0]))

    def mlp(h):
        return layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(h))))

    return [attention, mlp]


def _clip_branches(layer, kw):  # CLIP (text and vision towers), SigLIP
    def attention(h):
        return layer.self_attn(hidden_states=layer.layer_norm1(h), **kw)[0]

    def mlp(h):
        return layer.mlp(layer.layer_norm2(h))

    return [attention, mlp]


def _modernbert_branches(layer, kw):
    def attention(h):
        return layer.attn(layer.attn_norm(h), **kw)[0]

    def mlp(h):
        return layer.mlp(layer.mlp_norm(h))

    return [attention, mlp]


register_adapter(Adapter("vit", ("ViTLayer", "DeiTLayer"), 2, _vit_branches, _width_of("layernorm_before")))
register_adapter(Adapter("dinov2", ("Dinov2Layer", "DINOv3ViTLayer"), 2, _dinov2_branches, _width_of("norm1")))
register_adapter(Adapter("clip", ("CLIPEncoderLayer", "SiglipEncoderLayer"), 2, _clip_branches,
                         _width_of("layer_norm1")))
# (the first layer's attn_norm is an Identity: the embeddings end in a norm)
register_adapter(Adapter("modernbert", ("ModernBertEncoderLayer",), 2, _modernbert_branches, _width_of("mlp_norm")))


# -- BERT-style post-norm encoders: LayerNorm(h + dropout(dense(attn(h)))), then LayerNorm(h + dropout(dense(mlp(h))))
def _bert_branches(layer, kw):
    if kw.get("encoder_hidden_states") is not None:  # as the layer itself: no cross-attention layers here
        name = type(layer).__name__.removeprefix("Reslab")  # (the patched subclass's name)
        raise ValueError(f"reslab.patch: encoder_hidden_states passed to a {name} without cross-attention layers "
                         "(add_cross_attention=False)")
    kw = {k: v for k, v in kw.items() if k not in ("encoder_hidden_states", "encoder_attention_mask")}
    attention = layer.attention
    from transformers.pytorch_utils import apply_chunking_to_forward

    def attn(h):  # BertAttention.forward up to its output's add
        out = attention.self(h, encoder_hidden_states=None, **kw)[0]
        return attention.output.dropout(attention.output.dense(out))

    def feed_forward(x):  # BertLayer.feed_forward_chunk up to its output's add
        return layer.output.dropout(layer.output.dense(layer.intermediate(x)))

    def mlp(h):  # chunked over the sequence as the layer does (chunk_size_feed_forward > 0 saves memory)
        return apply_chunking_to_forward(feed_forward, layer.chunk_size_feed_forward, layer.seq_len_dim, h)

    return [attn, mlp]


def _bert_check(layer):
    if hasattr(layer, "crossattention"):
        raise ValueError(f"reslab.patch: this {type(layer).__name__} has cross-attention (add_cross_attention=True), a "
                         "third residual branch reslab does not wire; build it without")


# module-qualified: a user's own class named BertLayer is not taken for transformers'
_BERT_LAYERS = tuple(f"transformers.models.{module}.{c}" for module, c in (
    ("bert.modeling_bert", "BertLayer"), ("roberta.modeling_roberta", "RobertaLayer"),
    ("xlm_roberta.modeling_xlm_roberta", "XLMRobertaLayer"), ("camembert.modeling_camembert", "CamembertLayer"),
    ("electra.modeling_electra", "ElectraLayer"), ("ernie.modeling_ernie", "ErnieLayer"),
    ("data2vec.modeling_data2vec_text", "Data2VecTextLayer")))
register_adapter(Adapter(
    "bert", _BERT_LAYERS,
    2, _bert_branches, lambda layer: layer.output.LayerNorm.normalized_shape[0], _bert_check,
    branch_posts=lambda layer: [layer.attention.output.LayerNorm, layer.output.LayerNorm]))


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


register_adapter(Adapter("timm-vit", ("timm.models.vision_transformer.Block",), 2, _timm_vit_branches,
                         lambda layer: layer.norm1.normalized_shape[0], _timm_vit_check))


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
