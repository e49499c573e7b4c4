"""Registry of connection schemes and the spec-string parser.

A spec names a scheme and its options in one string that works the same in Python, configs and the
command line: ``name`` or ``name(flag, key=value, ...)``. Bare words switch boolean options on.
Every problem (unknown scheme, unknown option, wrong type, out-of-range value) is a ``ValueError``
that names the offender and lists what is valid, closest match first.
"""
from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Option:
    """One option of a scheme.

    kind: ``bool`` (usable as a bare flag), ``int``, ``float``, ``choice`` (one of ``choices``) or
    ``str``. ``parse`` may replace the built-in conversion for special values (e.g. ``lam=1/sqrt(n)``)
    and must raise ``ValueError`` with a helpful message on bad input.
    """

    name: str
    kind: str
    default: Any
    help: str = ""
    choices: Sequence[str] = ()
    min: float | None = None
    max: float | None = None
    parse: Callable[[str], Any] | None = None
    positive: bool = False  # numbers: strictly > 0 (e.g. a temperature)

    def describe(self) -> str:
        if self.kind == "choice":
            kind = "|".join(self.choices)
        elif self.positive:
            kind = f"{self.kind} > 0"
        elif self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            kind = f"{self.kind} in [{lo}, {hi}]"
        else:
            kind = self.kind
        return f"{self.name}={self.default!r} ({kind}) {self.help}".rstrip()

    def convert(self, scheme: str, raw: Any) -> Any:
        where = f"connection {scheme!r}, option {self.name!r}"
        if self.parse is not None and isinstance(raw, str):
            try:
                return self.parse(raw)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in _TRUE:
                return True
            if str(raw).lower() in _FALSE:
                return False
            raise ValueError(f"{where}: expected true/false (or the bare flag), got {raw!r}")
        if self.kind == "choice":
            val = str(raw)
            if val not in self.choices:
                raise ValueError(f"{where}: {val!r} is not one of {ranked(val, self.choices)}")
            return val
        if self.kind in ("int", "float"):
            try:
                num = int(raw) if self.kind == "int" else float(raw)
                if self.kind == "int" and isinstance(raw, float) and raw != int(raw):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected {self.kind}, got {raw!r}") from None
            if not math.isfinite(num):
                raise ValueError(f"{where}: {raw!r} is not a finite number; valid: {self.describe()}")
            if ((self.min is not None and num < self.min) or (self.max is not None and num > self.max)
                    or (self.positive and num <= 0)):
                raise ValueError(f"{where}: {num} is out of range; valid: {self.describe()}")
            return num
        return str(raw)


@dataclass
class Shape:
    """What a connection is built for: K blocks of ``branches`` branches on a D-wide stream."""

    n_blocks: int
    dim: int
    branches: int = 1


@dataclass
class SchemeInfo:
    """What the registry knows of a scheme, and what the contract test and analysis rely on.

    ``param_count(opts, shape) -> int`` is the extra-parameter formula as code (``params`` is the same
    formula for people); ``coefficients`` maps each key of ``Connection.coefficients()`` to its meaning;
    ``starts_as_residual``: at init the scheme computes exactly what ``residual`` computes (for every
    option value that ``residual_at_init(opts)`` accepts, by default all); ``check(opts, shape)``
    validates options against the shape (e.g. a rank bounded by the width) and raises ValueError."""

    name: str
    cls: type
    options: dict[str, Option]
    paper: str
    params: str  # human-readable extra-parameter formula, e.g. "K(K+1)/2 - 1"
    summary: str = ""
    example: str = ""  # a spec that builds with defaults (what `compare --connections all` runs)
    param_count: Callable[[dict, Shape], int] | None = None
    coefficients: dict[str, str] = field(default_factory=dict)
    starts_as_residual: bool = False
    residual_at_init: Callable[[dict], bool] | None = None
    check: Callable[[dict, Shape], None] | None = None
    per_branch: bool = False  # owns parameters per branch, so needs the model's branches per block
    variants: tuple[str, ...] = ()  # further specs the contract test runs (forms the example does not cover)

    def is_residual_at_init(self, opts: dict) -> bool:
        return self.starts_as_residual and (self.residual_at_init is None or bool(self.residual_at_init(opts)))

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "example": self.example,
            "summary": self.summary,
            "paper": self.paper,
            "extra_params": self.params,
            "starts_as_residual": self.starts_as_residual,
            "coefficients": dict(self.coefficients),
            "options": {o.name: {"default": o.default, "kind": o.kind, "choices": list(o.choices),
                                 "min": o.min, "max": o.max, "help": o.help}
                        for o in self.options.values()},
        }


REGISTRY: dict[str, SchemeInfo] = {}


def register(name: str, *, paper: str, params: str, param_count: Callable[[dict, Shape], int],
             options: Sequence[Option] = (), summary: str = "", example: str = "",
             coefficients: dict[str, str] | None = None, starts_as_residual: bool = False,
             residual_at_init: Callable[[dict], bool] | None = None,
             check: Callable[[dict, Shape], None] | None = None, per_branch: bool = False,
             variants: Sequence[str] = ()):
    """Class decorator: register a Connection subclass under ``name`` (see :class:`SchemeInfo` for the
    fields). ``example`` is a spec that builds with no further input (defaults to ``name``)."""

    def deco(cls):
        if name in REGISTRY:
            raise ValueError(f"connection {name!r} registered twice ({REGISTRY[name].cls} and {cls})")
        cls.name = name
        cls.per_branch = per_branch
        _validate_on_construction(cls, name)
        doc = (cls.__doc__ or "").strip().splitlines()
        REGISTRY[name] = SchemeInfo(name, cls, {o.name: o for o in options}, paper, params,
                                    summary or (doc[0] if doc else ""), example or name, param_count,
                                    dict(coefficients or {}), starts_as_residual, residual_at_init, check,
                                    per_branch, tuple(variants))
        return cls

    return deco


def _validate_on_construction(cls, name: str) -> None:
    """Wrap ``cls.__init__`` so that every construction -- through ``reslab.connection()`` or by calling
    the class -- has its options converted and checked here, by the registry, and nowhere else."""
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, n_blocks, dim, channel_dim=-1, **opts):
        info = REGISTRY[name]
        for what, val, lo in (("n_blocks", n_blocks, 0), ("dim", dim, 1)):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise ValueError(f"connection {name!r}: {what} must be an integer >= {lo}, got {val!r}")
        full = {k: o.default for k, o in info.options.items()}
        for k, v in opts.items():
            if k not in info.options:
                valid = ranked(k, list(info.options)) if info.options else "(this scheme has no options)"
                raise ValueError(f"connection {name!r}: unknown option {k!r}; valid: {valid}")
            full[k] = info.options[k].convert(name, v)
        if info.check is not None:
            info.check(full, Shape(n_blocks, dim, int(full.get("branches", 1))))
        init(self, n_blocks, dim, channel_dim, **full)

    cls.__init__ = checked_init


def ranked(word: str, valid: Sequence[str]) -> str:
    """Valid names, the closest to ``word`` first: the "did you mean" list of every unknown-name error in reslab."""
    close = difflib.get_close_matches(word, list(valid), n=max(1, len(valid)), cutoff=0.0)
    return ", ".join(close)


def split_top(s: str) -> list[str]:
    """Split on commas that are not inside parentheses (so ``lam=1/sqrt(n)`` survives)."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_spec(spec: str) -> tuple[str, dict[str, str | bool]]:
    """``"laurel(rw, lr, rank=16)"`` -> ``("laurel", {"rw": True, "lr": True, "rank": "16"})``.
    Values stay strings; :func:`resolve` converts and validates them."""
    s = spec.strip()
    if not s:
        raise ValueError("empty connection spec; valid schemes: " + ", ".join(sorted(REGISTRY)))
    if "(" in s:
        if not s.endswith(")"):
            raise ValueError(f"connection spec {spec!r}: missing closing ')'; write e.g. 'ancre(tau=0.01)'")
        name, inner = s[: s.index("(")].strip(), s[s.index("(") + 1: -1]
    else:
        name, inner = s, ""
    if inner.count("(") != inner.count(")"):
        raise ValueError(f"connection spec {spec!r}: unbalanced parentheses")
    args: dict[str, str | bool] = {}
    for part in split_top(inner):
        if "=" in part:
            k, v = part.split("=", 1)
            k, v = k.strip(), v.strip()
            if not k or not v:
                raise ValueError(f"connection spec {spec!r}: malformed option {part!r}; write key=value")
        else:
            k, v = part, True
        if k in args:
            raise ValueError(f"connection spec {spec!r}: option {k!r} given twice")
        args[k] = v
    return name, args


def resolve(spec: str, **overrides) -> tuple[SchemeInfo, dict[str, Any]]:
    """Parse, validate and fill defaults. Keyword ``overrides`` win over the spec string."""
    name, raw = parse_spec(spec)
    if name not in REGISTRY:
        raise ValueError(f"unknown connection {name!r}; valid: {ranked(name, sorted(REGISTRY))} "
                         "(see `reslab connections`)")
    info = REGISTRY[name]
    raw.update(overrides)
    opts = {k: o.default for k, o in info.options.items()}
    for k, v in raw.items():
        if k not in info.options:
            valid = ranked(k, list(info.options)) if info.options else "(this scheme has no options)"
            raise ValueError(f"connection {name!r}: unknown option {k!r}; valid: {valid}")
        o = info.options[k]
        if v is True and o.kind != "bool":
            raise ValueError(f"connection {name!r}: option {k!r} needs a value ({o.describe()}); "
                             f"write {k}=...")
        opts[k] = o.convert(name, v)
    return info, opts


def canonical(name: str, opts: dict[str, Any]) -> str:
    """Spec string with every option that differs from its default, in declaration order."""
    info = REGISTRY[name]
    parts = []
    for k, o in info.options.items():
        v = opts[k]
        if v == o.default:
            continue
        parts.append(k if (o.kind == "bool" and v is True) else f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    return f"{name}({', '.join(parts)})" if parts else name
