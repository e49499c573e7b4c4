"""``build_model`` entry points of the PNNH forms: task info and options in, a model out."""
from __future__ import annotations

from torch import nn

from ..task_info import check_options, init_options, need, vector_io
from .cnn import PNNHCNN
from .mlp import PNNHMLP
from .transformer import PNNHGPT, PNNHViT

#: connection specs a PNNH model accepts from the trainer: it has no connection (every layer is plain by
#: construction); "residual" is TrainConfig's default and is accepted so that ``reslab train --model pnnh_cnn``
#: works without flags -- it does NOT add anything. Variants are chosen with ``model.coder=...``.
ACCEPTED_CONNECTIONS = ("plain", "residual")


def _builder_checks(model: str, cls: type, connection, kwargs: dict, exclude: set[str]) -> None:
    spec = connection if isinstance(connection, str) else getattr(connection, "spec", repr(connection))
    if spec.strip() not in ACCEPTED_CONNECTIONS:
        raise ValueError(f"model {model!r} is a PNNH net: plain by construction, with no Connection (its state "
                         f"[h | p | q] changes width), so connection={spec!r} cannot apply. Use connection 'plain' "
                         f"(or leave the default) and pick the variant with model.coder=fixed|shared|unshared|none")
    check_options(model, kwargs, init_options(cls, exclude))


def build_pnnh_mlp(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_mlp", ...)``: vector tasks (in_dim/out_dim) or images (flattened)."""
    _builder_checks("pnnh_mlp", PNNHMLP, connection, kwargs, {"in_dim", "out_dim"})
    in_dim, out_dim = vector_io(task_info, "pnnh_mlp", kwargs)
    return PNNHMLP(in_dim=in_dim, out_dim=out_dim, **kwargs)


def build_pnnh_cnn(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_cnn", ...)``: image classification, input_shape (C, H, W) or (H, W)."""
    _builder_checks("pnnh_cnn", PNNHCNN, connection, kwargs, {"in_channels", "n_classes"})
    shape = tuple(need(task_info, "input_shape", "pnnh_cnn", "an image-classification task"))
    if len(shape) not in (2, 3):
        raise ValueError(f"model 'pnnh_cnn' needs images, input_shape (C, H, W) or (H, W); got {shape}; "
                         "use model 'pnnh_mlp' for vector inputs")
    n_classes = need(task_info, "n_classes", "pnnh_cnn", "a classification task")
    return PNNHCNN(in_channels=shape[0] if len(shape) == 3 else 1, n_classes=int(n_classes), **kwargs)


def build_pnnh_gpt(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_gpt", ...)``: language modelling (vocab_size, block_size)."""
    _builder_checks("pnnh_gpt", PNNHGPT, connection, kwargs, {"vocab_size"})
    vocab = need(task_info, "vocab_size", "pnnh_gpt", "a language-modelling task")
    if "block_size" not in kwargs:
        kwargs["block_size"] = need(task_info, "block_size", "pnnh_gpt", "or pass block_size=...")
    return PNNHGPT(vocab_size=int(vocab), **kwargs)


def build_pnnh_vit(task_info: dict, connection, kwargs: dict) -> nn.Module:
    """``build_model("pnnh_vit", ...)``: image classification with square images, input_shape (C, H, H)."""
    _builder_checks("pnnh_vit", PNNHViT, connection, kwargs, {"image_size", "in_channels", "n_classes"})
    shape = tuple(need(task_info, "input_shape", "pnnh_vit", "an image-classification task"))
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"model 'pnnh_vit' needs square images, input_shape (C, H, H); got {shape}")
    n_classes = need(task_info, "n_classes", "pnnh_vit", "a classification task")
    return PNNHViT(image_size=shape[-1], in_channels=shape[0], n_classes=int(n_classes), **kwargs)


#: what reslab.models.build_model registers
BUILDERS = {"pnnh_mlp": build_pnnh_mlp, "pnnh_cnn": build_pnnh_cnn, "pnnh_gpt": build_pnnh_gpt,
            "pnnh_vit": build_pnnh_vit}
