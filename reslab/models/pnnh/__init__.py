"""PNNH: deep *plain* networks (no residual connections) with an internal path -- OUR RECONSTRUCTION.

Paper: Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning" (arXiv:2402.08645).
The Plain Neural Net Hypothesis: what makes residual learning work is an *internal path* that carries
the input across the non-linear layers, not the skip-add itself; a plain net with such a path trains
deep. The paper builds it from a **learner** and a **coder whose weights are shared across layers**;
its exact block is not public, so ours (``layers.py``) exposes the open choices as options.

**Why a model family and not a Connection.** A Connection carries a stream of fixed width D through
branches f(x) -> x-shaped. A PNNH state is a different object: ``s = [h | p | q]``, the learner's
features h next to a sign-split code, and every layer maps the whole state to the next state through
one ReLU. Its width (c_L + 2 c_C) is not the width of any stream a branch sees, and no add happens
anywhere, so it cannot be phrased as "how is the stream carried past f".

Files: ``layers.py`` (coder, plain layer, stem), ``mlp.py`` and ``cnn.py`` (the forms that are one
linear map + ReLU per layer), ``transformer.py`` (GPT and ViT forms), ``builders.py`` (``build_model``
entry points). The structural check that a model is plain lives in :mod:`reslab.analysis.graph`.
"""
from .builders import BUILDERS
from .cnn import PNNHCNN, pnnh_layers_per_stage
from .layers import CODERS, Coder, PNNHLayer, code_channels
from .mlp import PNNHMLP
from .transformer import PNNHGPT, PNNHViT

__all__ = ["BUILDERS", "CODERS", "Coder", "PNNHCNN", "PNNHGPT", "PNNHLayer", "PNNHMLP", "PNNHViT", "code_channels",
           "pnnh_layers_per_stage"]
