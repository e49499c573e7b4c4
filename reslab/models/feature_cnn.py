"""The feature network of ``fd_cls`` (:mod:`reslab.analysis.frechet`) as a model family ("feature_cnn"), so that
the classifier is trained by reslab's Trainer like every other network (same optimiser, schedule, checkpoints,
run records and reuse) instead of a loop of its own.

    build_model("feature_cnn", task.info)          # on any image-classification task

It is not a residual network and takes no connection: its layers are fixed so that its features, and the
Fréchet distances read in them, stay comparable across every model they score.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureNet(nn.Module):
    """conv3x3(w) -> ReLU -> conv3x3/2(2w) -> ReLU -> conv3x3/2(2w) -> ReLU -> avgpool 2x2 -> Linear(8w, F)
    -> ReLU [features] -> Linear(F, n_classes).

    The buffers ``mean`` and ``std`` standardise the input inside the net (0 and 1 by default: the Trainer feeds
    the task's standardised images). After training, :func:`reslab.analysis.frechet.fashion_classifier` sets
    them to the task's pixel statistics, so that the net then reads pixels in [0, 1] from any model's samples."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, feature_dim: int = 64, width: int = 32):
        super().__init__()
        if min(in_channels, n_classes, feature_dim, width) < 1:
            raise ValueError("FeatureNet: in_channels, n_classes, feature_dim and width must be >= 1")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def features(self, x: Tensor) -> Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_feature_cnn(task_info: dict, connection: str, kwargs: dict) -> FeatureNet:
    """``build_model("feature_cnn", info, feature_dim=64, width=32)`` on an image-classification task."""
    from .task_info import check_options, need

    if connection != "residual":
        raise ValueError(f"model 'feature_cnn' has no residual stream to wire: leave connection at its default "
                         f"(got {connection!r})")
    check_options("feature_cnn", kwargs, ["feature_dim", "width"])
    shape = tuple(need(task_info, "input_shape", "feature_cnn", "an image-classification task"))
    if len(shape) not in (2, 3):
        raise ValueError(f"model 'feature_cnn' needs images, input_shape (C, H, W) or (H, W); got {shape}")
    n_classes = need(task_info, "n_classes", "feature_cnn", "a classification task")
    return FeatureNet(shape[0] if len(shape) == 3 else 1, int(n_classes), **kwargs)
