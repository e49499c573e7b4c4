"""Value residual (ResFormer, Zhou et al. 2024, arXiv:2410.17897) for Hugging Face decoders.

Attention layer n >= 2 uses V'_n = (1 - λ_n) V_n + λ_n V_1, with V_1 the first layer's values and λ_n learned
(init 0.5, ResFormer's equal mix; 0 leaves the model as it was). It needs the attention's values, which a
Connection never sees, so it is not a scheme: it is an option of ``reslab.patch`` (``value_residual=True``)
and of reslab's GPT (``GPTConfig.value_residual``).

How. A forward hook on every layer's ``self_attn.v_proj`` (the values before the head split, in Llama-style
attention: Llama, Mistral, Qwen, Gemma, OLMo, Granite, ...; not in fused-qkv or latent attention) records
layer 0's output and mixes it into the later layers' outputs. The KV cache then stores the mixed values, and
a cached step's V_1 comes from the same step's first layer, so generation with the cache matches full
forwards. The λ's live in the patch holder (``value_lambda``), so the model's own parameter names are unchanged.

Gradient checkpointing would recompute layer 0 while later layers read its recorded values; that
combination is refused with a clear error rather than trusted.
"""
from __future__ import annotations

import torch
from torch import nn


class ValueResidual(nn.Module):
    """The λ's and the hooks of one patched stack."""

    def __init__(self, layers, init: float = 0.5):
        super().__init__()
        projections = []
        for i, layer in enumerate(layers):
            proj = getattr(getattr(layer, "self_attn", None), "v_proj", None)
            if not isinstance(proj, nn.Linear):
                raise ValueError(f"reslab.patch: value_residual needs attention layers with a v_proj (Llama, Mistral, "
                                 f"Qwen, Gemma, OLMo, ...); {type(layer).__name__} has none (fused or latent "
                                 "projections) -- drop value_residual=True")
            projections.append(proj)
        if len(projections) < 2:
            raise ValueError("reslab.patch: value_residual needs at least 2 attention layers")
        self.value_lambda = nn.Parameter(torch.full((len(projections) - 1,), float(init)))
        self._layers = list(layers)  # plain list: the layers are registered where the model keeps them
        self._first = None
        self._handles = [p.register_forward_hook(self._hook(i)) for i, p in enumerate(projections)]

    def _hook(self, i: int):
        def hook(module, inputs, out):
            if i == 0:
                self._first = out
                return out
            if any(getattr(layer, "gradient_checkpointing", False) and layer.training for layer in self._layers[:1]):
                raise ValueError("reslab.patch: value_residual with gradient checkpointing would recompute the first "
                                 "layer's values while later layers read them; disable one of the two")
            first = self._first
            if first is None or first.shape != out.shape:
                raise ValueError("reslab.patch: value_residual found no first-layer values for this pass; the layers "
                                 "must run in order, first layer first")
            lam = self.value_lambda[i - 1].to(out.dtype)
            return (1 - lam) * out + lam * first

        return hook

    def clear(self) -> None:
        self._first = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
