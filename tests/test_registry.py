"""Spec strings, the registry and the public connection API."""
from __future__ import annotations

import json

import pytest
import torch

import reslab
from reslab.cli import main
from reslab.connections import canonical, parse_spec, resolve


def test_parse_spec_flags_values_and_nested_parentheses():
    assert parse_spec("residual") == ("residual", {})
    assert parse_spec(" laurel( rw , lr, rank=16 ) ") == ("laurel", {"rw": True, "lr": True, "rank": "16"})
    assert parse_spec("scaled(lam=1/sqrt(n), count=blocks)") == ("scaled", {"lam": "1/sqrt(n)", "count": "blocks"})


@pytest.mark.parametrize("spec, match", [
    ("residul", r"unknown connection 'residul'; valid: residual"),  # closest first
    ("ancre(tua=0.1)", r"unknown option 'tua'; valid: tau"),
    ("ancre(tau=abc)", r"option 'tau': expected float, got 'abc'"),
    ("ancre(form=foo)", r"'foo' is not one of"),
    ("ancre(tau=0.1", r"missing closing"),
    ("ancre(tau=0.1, tau=0.2)", r"given twice"),
    ("ancre(tau)", r"needs a value"),
    ("laurel(rw, rank=0)", r"rank"),
    ("residual(x=1)", r"unknown option 'x'; valid: \(this scheme has no options\)"),
    ("", r"empty connection spec"),
])
def test_bad_specs_name_the_offender_and_what_is_valid(spec, match):
    with pytest.raises(ValueError, match=match):
        reslab.connection(spec, n_blocks=2, dim=4)


def test_out_of_range_value_lists_the_range():
    with pytest.raises(ValueError, match=r"out of range.*k=3 \(int in \[1, 64\]\)"):
        resolve("laurel(pa, k=0)")


def test_canonical_spec_drops_defaults_and_keyword_overrides_win():
    conn = reslab.connection("ancre(tau=0.01, form=theory)", n_blocks=3, dim=4, tau=0.1)
    assert conn.spec == "ancre(tau=0.1, form=theory)"
    _, opts = resolve("laurel(rw)")
    assert canonical("laurel", opts) == "laurel(rw)"


def test_list_connections_has_every_scheme_with_metadata():
    infos = {i.name: i for i in reslab.list_connections()}
    for name in ("residual", "plain", "ancre", "denseformer", "laurel", "scaled", "rezero", "skipinit", "layerscale"):
        assert name in infos
        assert infos[name].paper and infos[name].params
    assert infos["ancre"].options["tau"].default == 0.01
    # every example spec builds and runs in a tiny stack
    x = torch.randn(2, 5, 8)
    blocks = [[torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)] for _ in range(3)]
    for info in infos.values():
        conn = reslab.connection(info.example, n_blocks=3, dim=8, branches_per_block=2)
        assert conn(x, blocks).shape == x.shape


def test_branches_per_block_fills_per_branch_schemes_unless_spec_sets_it():
    assert reslab.connection("skipinit", 3, 8, branches_per_block=2).extra_parameters() == 6
    assert reslab.connection("skipinit(branches=1)", 3, 8, branches_per_block=2).extra_parameters() == 3


def test_cli_connections_lists_json(capsys):
    assert main(["connections", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in data}
    assert by_name["ancre"]["extra_params"].startswith("K(K+1)/2 - 1")
    assert "tau" in by_name["ancre"]["options"]
    assert by_name["laurel"]["example"] == "laurel(rw, lr)"


def test_connection_entry_point_refuses_bad_arguments_with_one_line_errors():
    with pytest.raises(ValueError, match="spec must be a string.*got NoneType None"):
        reslab.connection(None, 2, 8)
    with pytest.raises(ValueError, match="n_blocks must be an integer >= 0, got -1"):
        reslab.connection("residual", -1, 8)
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got 0"):
        reslab.connection("ancre", 2, 0)
    with pytest.raises(ValueError, match="branches_per_block must be an integer >= 1"):
        reslab.connection("skipinit", 2, 8, branches_per_block=0)
    with pytest.raises(ValueError, match="option 'tau': 0.0 is out of range"):
        reslab.connection("ancre(tau=0)", 2, 8)
    with pytest.raises(ValueError, match="not a finite number"):
        reslab.connection("ancre(tau=inf)", 2, 8)
