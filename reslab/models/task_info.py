"""What every model builder does: read a task's ``info`` dict and check its keyword options by name. Shared,
so the messages and the vector-task sizing rules are the same for every model family (``hf:*`` checks its
config options itself, against the transformers config)."""
from __future__ import annotations

import inspect
import math
from typing import Any

from ..connections.registry import ranked


def init_options(cls: type, exclude: set[str]) -> list[str]:
    """The keyword options of ``cls.__init__`` a user may pass: its parameters less ``exclude`` (what the
    builder fills in from the task)."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in exclude | {"self"}]


def check_options(model: str, kwargs: dict, valid: list[str]) -> None:
    """One-line error for an option ``model`` does not have, listing the valid ones closest first."""
    for k in kwargs:
        if k not in valid:
            raise ValueError(f"model {model!r}: unknown option {k!r}; valid: {ranked(k, valid)}")


def need(task_info: dict, key: str, model: str, what: str) -> Any:
    if key not in task_info:
        raise ValueError(f"model {model!r} needs task_info[{key!r}] ({what}); the task gives "
                         f"{sorted(task_info) or 'nothing'}")
    return task_info[key]


def vector_io(task_info: dict, model: str, kwargs: dict) -> tuple[int, int]:
    """(in_dim, out_dim) for an MLP-style model: ``in_dim`` or the flattened ``input_shape`` (then
    ``flatten_input`` defaults to on), and ``n_classes`` or ``out_dim``."""
    if "in_dim" in task_info:
        in_dim = int(task_info["in_dim"])
    else:
        shape = tuple(need(task_info, "input_shape", model, "or in_dim"))
        in_dim = math.prod(shape)
        kwargs.setdefault("flatten_input", len(shape) > 1)
    out_dim = task_info["n_classes"] if "n_classes" in task_info else need(task_info, "out_dim", model, "or n_classes")
    return in_dim, int(out_dim)
