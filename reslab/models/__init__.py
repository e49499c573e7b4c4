"""Model families. Each takes a connection spec and nothing else about wiring.

    build_model("gpt", task.info, "ancre(tau=0.01)", n_layer=8, d_model=128)
    build_model("resnet", task.info, "plain", depth=20)
    build_model("mlp", task.info, "residual", n_blocks=4, layers_per_branch=4)

``task_info`` is a :class:`reslab.data.base.Task`'s ``info``: ``vocab_size`` (+ ``block_size``) for
language modelling, ``n_classes`` + ``input_shape`` for classification, ``in_dim`` + ``out_dim`` for
regression. Everything else about the model comes from keyword arguments, checked by name.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Callable

from torch import nn

from .gpt import GPT, GPTConfig
from .mlp import ResidualMLP
from .resnet import ResNet
from .task_info import check_options, init_options, need, ranked, vector_io


_BUILDERS: dict[str, Callable[[dict, str, dict], nn.Module]] = {}


def register_model(name: str, builder: Callable[[dict, str, dict], nn.Module] | None = None):
    """Register a model family: ``builder(task_info, connection_spec, kwargs) -> nn.Module``. Use as a
    decorator (``@register_model("gpt")``) or call it with the builder. Adding a family is this one call."""

    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco(builder) if builder is not None else deco


@register_model("gpt")
def _build_gpt(task_info: dict, connection: str, kwargs: dict) -> nn.Module:
    check_options("gpt", kwargs, [f.name for f in fields(GPTConfig) if f.name not in ("vocab_size", "connection")])
    vocab = need(task_info, "vocab_size", "gpt", "a language-modelling task")
    if "block_size" not in kwargs:
        kwargs["block_size"] = need(task_info, "block_size", "gpt", "or pass block_size=...")
    return GPT(GPTConfig(vocab_size=int(vocab), connection=connection, **kwargs))


@register_model("resnet")
def _build_resnet(task_info: dict, connection: str, kwargs: dict) -> nn.Module:
    check_options("resnet", kwargs, init_options(ResNet, {"in_channels", "n_classes", "connection"}))
    shape = tuple(need(task_info, "input_shape", "resnet", "an image-classification task"))
    if len(shape) not in (2, 3):
        raise ValueError(f"model 'resnet' needs images, input_shape (C, H, W) or (H, W); got {shape}; "
                         "use model 'mlp' for vector inputs")
    n_classes = need(task_info, "n_classes", "resnet", "a classification task")
    return ResNet(in_channels=shape[0] if len(shape) == 3 else 1, n_classes=int(n_classes),
                  connection=connection, **kwargs)


@register_model("mlp")
def _build_mlp(task_info: dict, connection: str, kwargs: dict) -> nn.Module:
    check_options("mlp", kwargs, init_options(ResidualMLP, {"in_dim", "out_dim", "connection"}))
    in_dim, out_dim = vector_io(task_info, "mlp", kwargs)
    return ResidualMLP(in_dim=in_dim, out_dim=out_dim, connection=connection, **kwargs)


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, task_info: dict, connection: str = "residual", **kwargs) -> nn.Module:
    """Build model ``name`` (see :func:`model_names`) for a task, wired by ``connection``.

    Unknown model names and unknown keyword options raise ValueError listing the valid ones."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid: {ranked(name, model_names())}")
    return _BUILDERS[name](dict(task_info), connection, dict(kwargs))


__all__ = ["GPT", "GPTConfig", "ResNet", "ResidualMLP", "build_model", "model_names"]

# Vision Transformer and Diffusion Transformer: each builds itself from an image task's info.
from .dit import DiT, build_dit  # noqa: E402
from .vit import ViT, build_vit  # noqa: E402

register_model("vit", build_vit)
register_model("dit", build_dit)
__all__ += ["DiT", "ViT"]

# PNNH (our reconstruction of Zhang et al. 2024): plain nets with an internal path; a model family, not a Connection.
from .pnnh import BUILDERS as _PNNH_BUILDERS  # noqa: E402
from .pnnh import PNNHCNN, PNNHGPT, PNNHMLP, PNNHViT  # noqa: E402

for _name, _builder in _PNNH_BUILDERS.items():
    register_model(_name, _builder)
__all__ += ["PNNHCNN", "PNNHGPT", "PNNHMLP", "PNNHViT"]

# The plain / residual / scaled / PNNH stacks of PNNH's dissipating-input claims (reslab.analysis.dissipation).
from .probe import ProbeNet, build_probe  # noqa: E402

register_model("probe", build_probe)
__all__ += ["ProbeNet"]

# The feature classifier of fd_cls (reslab.analysis.frechet): trained by the Trainer like any other model.
from .feature_cnn import FeatureNet, build_feature_cnn  # noqa: E402

register_model("feature_cnn", build_feature_cnn)
__all__ += ["FeatureNet"]

# Hugging Face decoder LMs and image classifiers (transformers imported only when one is built), wired
# through reslab.patch.
from .hf import ARCHS as _HF_ARCHS  # noqa: E402
from .hf import VISION_ARCHS as _HF_VISION_ARCHS  # noqa: E402
from .hf import HFCausalLM, HFImageClassifier, build_hf, build_hf_vision  # noqa: E402

for _arch in _HF_ARCHS:
    register_model(f"hf:{_arch}", build_hf(_arch))
for _arch in _HF_VISION_ARCHS:
    register_model(f"hf:{_arch}", build_hf_vision(_arch))
__all__ += ["HFCausalLM", "HFImageClassifier", "register_model"]
