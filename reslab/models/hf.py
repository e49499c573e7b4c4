"""Hugging Face models as reslab model families, wired by any connection through :func:`reslab.patch`.

- Decoder LMs: ``--model hf:llama`` (also ``hf:qwen3``, ``hf:gpt2``, ...; :data:`ARCHS`) on text tasks.
- Image classifiers: ``--model hf:vit`` (also ``hf:deit``, ``hf:dinov2``; :data:`VISION_ARCHS`) on image tasks.

A small model is built at random init from its transformers config class (nothing is downloaded) and
wired by the requested connection, so a comparison runs the very code a user's own Llama or ViT runs.
``model.*`` overrides set config fields by their transformers names (``model.num_hidden_layers=6``) or by
reslab's names (``n_layer``, ``d_model``, ``n_head``, ``d_ff``), so one preset serves every family;
``model.value_residual=true`` adds ResFormer's value residual to an LM (:mod:`reslab.patch.value_residual`).
"""
from __future__ import annotations

import difflib
import functools
import importlib
import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..patch import patch
from .task_info import need, ranked

# arch -> (config class, causal-LM class); each has an adapter in reslab.patch.adapters
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "ministral": ("MinistralConfig", "MinistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "olmo": ("OlmoConfig", "OlmoForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM"),
    "phi": ("PhiConfig", "PhiForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "granite": ("GraniteConfig", "GraniteForCausalLM"),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM"),
    "glm4": ("Glm4Config", "Glm4ForCausalLM"),
    "cohere": ("CohereConfig", "CohereForCausalLM"),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM"),
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM"),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}
ALIASES = {"n_layer": "num_hidden_layers", "d_model": "hidden_size", "n_head": "num_attention_heads",
           "d_ff": "intermediate_size", "n_kv_head": "num_key_value_heads"}
# small enough for a CPU test; head_dim 16 keeps rotary tables meaningful
DEFAULTS = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 172}
# Config fields some architectures have, set to CPU sizes unless given: the library defaults are for the
# released models (Qwen3-MoE: 128 experts; DeepSeek-V3: 256 experts in 8 groups, 512-wide latent attention).
# A callable reads the values decided so far. Experts get the MLP width (d_ff); the first layer of
# DeepSeek-V3 stays dense, as in the released model, so both kinds of MLP are exercised.
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")
SMALL_FIELDS = {
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": lambda v: min(2, next((v[k] for k in EXPERT_COUNTS if k in v), 2)),
    "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
    "moe_intermediate_size": lambda v: v["intermediate_size"],
    "shared_expert_intermediate_size": lambda v: v["intermediate_size"],
    "q_lora_rank": lambda v: v["hidden_size"] // 2, "kv_lora_rank": lambda v: v["hidden_size"] // 2,
    "qk_rope_head_dim": lambda v: v["head_dim"], "qk_nope_head_dim": lambda v: v["head_dim"],
    "v_head_dim": lambda v: v["head_dim"],
}


def transformers_module():
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ValueError("model 'hf:*' needs the transformers package: pip install 'reslab[hf]'") from None


def hf_config(arch: str, vocab_size: int, block_size: int, **overrides):
    """The transformers config of a small random-init ``arch`` model."""
    if arch not in ARCHS:
        raise ValueError(f"unknown Hugging Face architecture {arch!r}; valid: {ranked(arch, list(ARCHS))}")
    _refuse_task_fields(arch, overrides, LM_TASK_FIELDS)
    tf = transformers_module()
    cfg_cls = getattr(tf, ARCHS[arch][0])
    values = dict(DEFAULTS)
    for k, v in overrides.items():
        values[ALIASES.get(k, k)] = v
    values.update(vocab_size=int(vocab_size), max_position_embeddings=int(block_size))
    if arch == "gpt2":  # GPT-2 names its MLP width n_inner and has no grouped KV heads
        values["n_inner"] = values.pop("intermediate_size")
        values.pop("num_key_value_heads", None)
        values.setdefault("resid_pdrop", 0.0)
        values.setdefault("embd_pdrop", 0.0)
        values.setdefault("attn_pdrop", 0.0)
    else:
        values.setdefault("num_key_value_heads", values["num_attention_heads"])
        values.setdefault("head_dim", values["hidden_size"] // values["num_attention_heads"])
    if arch in ("gemma2", "gemma3"):
        values.setdefault("sliding_window", int(block_size))
        values.setdefault("query_pre_attn_scalar", values["head_dim"])
    # reslab's names are valid for every architecture (GPT-2's MLP width and missing KV heads are mapped above)
    fields = default_fields(cfg_cls)
    names = getattr(cfg_cls, "attribute_map", {})  # e.g. Qwen3-MoE: num_experts is num_local_experts
    valid = set(fields) | set(names) | set(ALIASES.values())
    given = set(values) | {names.get(k, k) for k in values}
    for field, small in SMALL_FIELDS.items():
        if field in fields and field not in given and names.get(field, field) not in given:
            values[field] = small(values) if callable(small) else small
    if "qk_rope_head_dim" in fields and "head_dim" not in overrides:  # DeepSeek: rotary tables are this wide
        values["head_dim"] = values["qk_rope_head_dim"]
    # token ids of the released tokenizer lie outside a small vocabulary (an embedding refuses such a
    # padding index); they mean nothing here, so they are dropped unless given (GLM-4's config puts its
    # defaults back: harmless, an id only stops generation)
    for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ids = fields.get(field)
        ids = [ids] if isinstance(ids, int) else ids
        if field not in given and isinstance(ids, list) and ids and all(i >= values["vocab_size"] for i in ids):
            values[field] = None
    _refuse_unknown(arch, cfg_cls, overrides, valid)
    return cfg_cls(**values)


@functools.lru_cache(maxsize=None)
def default_fields(cfg_cls: type) -> dict:
    """A config class's fields with their defaults (built once: some print warnings about their own defaults)."""
    return cfg_cls().to_dict()


# set by the task or the command line, never by a model option
LM_TASK_FIELDS = ("vocab_size", "max_position_embeddings", "n_positions", "arch", "connection")
VISION_TASK_FIELDS = ("image_size", "num_channels", "num_labels", "in_channels", "n_classes", "arch", "connection")


def _refuse_task_fields(arch: str, overrides: dict, names: tuple[str, ...]) -> None:
    """The task and the command line set these; a model option naming one would be overwritten or collide."""
    given = [k for k in overrides if k in names]
    if given:
        how = ("the task's vocabulary and block_size" if names is LM_TASK_FIELDS else
               "the task's images and classes (resize with task.resize)")
        raise ValueError(f"model 'hf:{arch}': option {given[0]!r} is set by {how} or --connection, not by a model "
                         "option; drop it")


def _refuse_unknown(arch: str, cfg_cls: type, overrides: dict, valid: set) -> None:
    unknown = [k for k in overrides if ALIASES.get(k, k) not in valid]
    if unknown:
        k = unknown[0]
        ours = ", ".join(a for a, field in ALIASES.items() if field in valid)
        raise ValueError(f"model 'hf:{arch}': unknown option {k!r}; valid: {ours} "
                         f"or a {cfg_cls.__name__} field, e.g. "
                         f"{', '.join(difflib.get_close_matches(k, sorted(valid), n=5, cutoff=0.0))}")


class HFCausalLM(nn.Module):
    """A transformers causal LM behind reslab's LM interface: ``forward(idx) -> logits``. ``self.hf`` is the
    transformers model itself (patched), for ``generate()``, ``save_pretrained()`` and friends."""

    def __init__(self, arch: str, vocab_size: int, block_size: int, connection: str = "residual",
                 value_residual: bool = False, value_residual_init: float = 0.5, **overrides):
        super().__init__()
        tf = transformers_module()
        self.arch, self.block_size = arch, int(block_size)
        self.hf = getattr(tf, ARCHS[arch][1])(hf_config(arch, vocab_size, block_size, **overrides))
        # residual is the model as written: its own loop stays untouched unless the value residual is asked for
        if connection != "residual" or value_residual:
            patch(self.hf, connection, value_residual=value_residual, value_residual_init=value_residual_init)
        self.router_loss_coef  # a config asking for a router loss transformers does not define is refused now

    def forward(self, idx: Tensor, with_router_loss: bool = False):
        """Logits; with ``with_router_loss``, (logits, the MoE router's load-balancing loss)."""
        if with_router_loss:
            out = self.hf(input_ids=idx, use_cache=False, output_router_logits=True)
            return out.logits, out.aux_loss
        return self.hf(input_ids=idx, use_cache=False).logits

    @property
    def router_loss_coef(self) -> float:
        """What the router's load-balancing loss weighs in training: transformers' ``router_aux_loss_coef`` when
        the config asks for it (``model.output_router_logits=true``), as the model's own loss would; else 0."""
        cfg = self.hf.config
        if not getattr(cfg, "output_router_logits", False):
            return 0.0
        if getattr(cfg, "router_aux_loss_coef", None) is None:  # DeepSeek-V3 balances its experts by a bias instead
            raise ValueError(f"model 'hf:{self.arch}' has no router load-balancing loss in transformers "
                             "(router_aux_loss_coef is None); drop output_router_logits=true")
        return float(cfg.router_aux_loss_coef)

    def training_loss(self, x: Tensor, y: Tensor, call=None) -> tuple[Tensor, Tensor]:
        """(loss, bits per token) for the Trainer: cross-entropy, plus the weighted router loss while training an
        MoE model that asks for it (evaluation scores cross-entropy alone, comparable across models)."""
        call = self if call is None else call  # (a compiled module has no truth value)
        aux = None
        if self.training and self.router_loss_coef:
            logits, aux = call(x, with_router_loss=True)
        else:
            logits = call(x)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        metric = ce.detach() / math.log(2)
        return (ce + self.router_loss_coef * aux if aux is not None else ce), metric

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_hf(arch: str):
    """The builder of family ``hf:<arch>`` (see reslab.models.register_model)."""

    def build(task_info: dict, connection: str, kwargs: dict) -> nn.Module:
        _refuse_task_fields(arch, kwargs, LM_TASK_FIELDS)
        vocab = need(task_info, "vocab_size", f"hf:{arch}", "a language-modelling task")
        block = kwargs.pop("block_size", None) or need(task_info, "block_size", f"hf:{arch}", "or pass block_size=...")
        return HFCausalLM(arch, int(vocab), int(block), connection, **kwargs)

    return build


# -- image classifiers ---------------------------------------------------------------------------------------------
# arch -> (config class, image-classification class); adapters in reslab.patch.adapters ("vit", "dinov2")
VISION_ARCHS = {
    "vit": ("ViTConfig", "ViTForImageClassification"),
    "deit": ("DeiTConfig", "DeiTForImageClassification"),
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification"),
}
VISION_DEFAULTS = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4, "patch_size": 7}


def hf_vision_config(arch: str, image_size: int, in_channels: int, n_classes: int, **overrides):
    """The transformers config of a small random-init ``arch`` image classifier."""
    if arch not in VISION_ARCHS:
        raise ValueError(f"unknown Hugging Face vision architecture {arch!r}; valid: "
                         f"{ranked(arch, list(VISION_ARCHS))}")
    _refuse_task_fields(arch, overrides, VISION_TASK_FIELDS)
    cfg_cls = getattr(transformers_module(), VISION_ARCHS[arch][0])
    fields = default_fields(cfg_cls)
    _refuse_unknown(arch, cfg_cls, overrides, set(fields) | set(getattr(cfg_cls, "attribute_map", {})))
    values = dict(VISION_DEFAULTS)
    for k, v in overrides.items():
        values[ALIASES.get(k, k)] = v
    if values["hidden_size"] % values["num_attention_heads"]:  # transformers would build narrower heads silently
        raise ValueError(f"model 'hf:{arch}': d_model (hidden_size) {values['hidden_size']} must be divisible by "
                         f"n_head (num_attention_heads) {values['num_attention_heads']}")
    if "intermediate_size" in fields:  # ViT/DeiT give a width (3072, for 768), not a ratio: keep ViT's 4x
        values.setdefault("intermediate_size", 4 * values["hidden_size"])
    values.update(image_size=int(image_size), num_channels=int(in_channels), num_labels=int(n_classes))
    return cfg_cls(**values)


class HFImageClassifier(nn.Module):
    """A transformers image classifier behind reslab's interface: ``forward(images) -> logits``; ``self.hf`` is
    the transformers model itself (patched)."""

    def __init__(self, arch: str, image_size: int, in_channels: int, n_classes: int, connection: str = "residual",
                 **overrides):
        super().__init__()
        self.arch = arch
        self.hf = getattr(transformers_module(), VISION_ARCHS[arch][1])(
            hf_vision_config(arch, image_size, in_channels, n_classes, **overrides))
        if connection != "residual":  # residual is the model as written
            patch(self.hf, connection)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() == 3:  # a task of (H, W) images: one channel
            images = images.unsqueeze(1)
        return self.hf(pixel_values=images).logits


def build_hf_vision(arch: str):
    """The builder of family ``hf:<arch>`` for an image-classification task."""

    def build(task_info: dict, connection: str, kwargs: dict) -> nn.Module:
        _refuse_task_fields(arch, kwargs, VISION_TASK_FIELDS)
        shape = tuple(need(task_info, "input_shape", f"hf:{arch}", "an image-classification task"))
        n_classes = need(task_info, "n_classes", f"hf:{arch}", "an image-classification task")
        if len(shape) not in (2, 3) or shape[-1] != shape[-2]:
            raise ValueError(f"model 'hf:{arch}' needs square images, input_shape (C, H, H) or (H, H); got {shape}")
        return HFImageClassifier(arch, shape[-1], shape[0] if len(shape) == 3 else 1, int(n_classes), connection,
                                 **kwargs)

    return build
