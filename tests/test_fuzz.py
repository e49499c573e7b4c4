"""Fuzzing the ways a user configures a run: connection specs, TrainConfig values, key=value lines and config
files, thrown at the spec parser, TrainConfig and the CLI entry point (in-process, ``train --dry-run``).
Every failure must be a ValueError / a clean exit 2 whose message names the offending token; nothing valid may
be rejected. Derandomized, so a failure reproduces; about 650 examples in all."""
from __future__ import annotations

import dataclasses
import json
import re
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reslab.cli import main
from reslab.connections import connection, list_connections
from reslab.train import TrainConfig



def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BASE = ["--task", "teacher", "--model", "mlp", "task.n_train=16", "task.n_val=16", "task.in_dim=3", "task.width=4",
        "model.width=4", "model.n_blocks=2", "batch_size=4", "--dry-run"]
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
INFOS = list_connections()
NAMES = [i.name for i in INFOS]
OPTION_NAMES = sorted({o for i in INFOS for o in i.options})

junk = st.text(alphabet=string.ascii_letters + string.digits + "()=,._-:/ '\"[]{}+*", max_size=20)
values = st.one_of(junk, st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
                   st.sampled_from(["true", "false", "none", "nan", "inf", "-1", "0", "1e400", "", "[1,2]", "{}"]))


@st.composite
def specs(draw) -> str:
    """Spec-shaped strings: a known or mistyped name, flags and key=value options, some malformed."""
    name = draw(st.one_of(st.sampled_from(NAMES), junk))
    parts = draw(st.lists(st.one_of(st.sampled_from(OPTION_NAMES + ["rw", "lr"]),
                                    st.tuples(st.sampled_from(OPTION_NAMES), values).map("=".join), junk),
                          max_size=3))
    return name if not parts and draw(st.booleans()) else f"{name}({','.join(parts)})"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_every_registered_example_and_name_is_accepted():
    for info in INFOS:
        for spec in {info.name, info.example}:
            if spec == "laurel":  # LAuReL needs at least one of rw / lr / pa; its example names them
                continue
            connection(spec, n_blocks=3, dim=8)


@fuzz(200)
@given(spec=specs())
def test_spec_strings_fail_only_with_value_error(spec):
    try:
        connection(spec, n_blocks=2, dim=4)
    except ValueError as e:
        assert str(e).strip()


@fuzz(150)
@given(data=st.dictionaries(st.sampled_from(FIELDS), st.one_of(values, st.integers(-5, 5), st.booleans(),
                                                             st.floats(), st.lists(st.integers(), max_size=2),
                                                             st.dictionaries(junk, st.integers(), max_size=2)),
                            max_size=4))
def test_train_config_values_fail_only_with_value_error_naming_the_field(data):
    try:
        TrainConfig(**data)
    except ValueError as e:
        assert any(k in str(e) for k in data), (data, str(e))


@st.composite
def override_lines(draw) -> list[str]:
    key = st.one_of(st.sampled_from(FIELDS), st.sampled_from(["model.width", "model.n_blocks", "model.bogus",
                                                               "task.noise", "task.nope", "model.", "task."]), junk)
    small = st.integers(-3, 40).map(str)
    line = st.one_of(st.tuples(key, st.one_of(values, small)).map("=".join), junk,
                     st.tuples(st.just("connection"), specs()).map("=".join))
    return draw(st.lists(line, min_size=1, max_size=3))


@fuzz(150)
@given(lines=override_lines(), first=st.booleans())
def test_override_lines_anywhere_fail_cleanly_naming_a_token(lines, first, capsys):
    argv = ["train", *lines, *BASE] if first else ["train", *BASE, *lines]
    rc, err = run_cli(argv, capsys)
    assert rc in (0, 2), err
    if rc == 2:
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err
        pieces = [p for line in lines for p in re.split(r"[=(),.]", line)]  # a key, a value, a scheme's name
        tokens = [t for t in pieces + lines if t.strip()]
        named = any(t.strip() in last for t in tokens) or any(repr(line) in last for line in lines)
        assert named or "unrecognized arguments" in last, (lines, last)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


config_values = st.one_of(values, st.integers(-3, 50), st.booleans(), st.floats(-1e3, 1e3),
                          st.lists(st.integers(0, 3), max_size=2),
                          st.dictionaries(st.sampled_from(["width", "n_blocks", "bogus"]), st.integers(0, 8),
                                          max_size=2))


@fuzz(150)
@given(fmt=st.sampled_from(["toml", "yaml", "raw-toml", "raw-yaml"]),
       data=st.dictionaries(st.one_of(st.sampled_from(FIELDS), junk.filter(lambda s: s.strip() and "\"" not in s)),
                            config_values, max_size=4),
       raw=st.text(max_size=60))
def test_config_files_fail_cleanly_naming_the_file(fmt, data, raw, capsys):
    import yaml

    data = {k: v for k, v in data.items() if k not in ("out_dir", "device", "threads", "resume")}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("c.toml" if "toml" in fmt else "c.yaml")
        if fmt == "toml":
            path.write_text("".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in data.items()))
        elif fmt == "yaml":
            path.write_text(yaml.safe_dump(data))
        else:
            path.write_text(raw)
        rc, err = run_cli(["train", "--config", str(path), *BASE, f"out_dir={d}/o"], capsys)
    assert rc in (0, 2), err
    if rc == 2:
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err
        assert str(path) in last or any(str(k) in last for k in data), (fmt, data, raw, last)
