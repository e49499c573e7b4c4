"""Command line: ``reslab train | compare | connections`` (and, as they land, reproduce | bench | analyze).

Configuration, lowest to highest priority: TrainConfig defaults < ``--preset`` < ``--config FILE``
(TOML or YAML) < flags < ``key=value`` overrides (``steps=200``, ``model.n_layer=4``,
``task.max_chars=100000``).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

from .runtime import tune_malloc
from .checkpoint import CheckpointError, RunLocked
from .train import TrainConfig, TrainingDiverged

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(field: str, raw: str):
    """Turn a string into the type of TrainConfig.<field>'s default."""
    default = TrainConfig().__getattribute__(field)
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{field} expects true/false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{field} expects an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{field} expects a number, got {raw!r}") from None
    if isinstance(default, dict):
        try:
            val = json.loads(raw)
        except ValueError:
            val = None
        if not isinstance(val, dict):
            raise ValueError(f"{field} expects a JSON object, got {raw!r}")
        return val
    return raw


def _literal(raw: str):
    """Model/task argument values: Python literals when they parse (4, 0.1, True, 'x'), else the string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(raw.lower(), raw)


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if not p.is_file():
        raise ValueError(f"config file {path} is not a file")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: malformed TOML: {e}") from None
    elif p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML configs need PyYAML (pip install pyyaml), or use TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: malformed YAML: {' '.join(str(e).split())}") from None
        except RecursionError:
            raise ValueError(f"{path}: malformed YAML: nested too deeply") from None
        data = {} if data is None else data
    else:
        raise ValueError(f"{path}: unknown config format {p.suffix!r}; use .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected key: value settings at the top level, got a {type(data).__name__}")
    unknown = [k for k in data if k not in _FIELDS]
    if unknown:
        raise ValueError(f"{path}: unknown config keys {sorted(map(str, unknown))}; valid: {', '.join(_FIELDS)}")
    try:
        return {k: _file_value(k, v) for k, v in data.items()}
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _file_value(key: str, value):
    """A config file's value checked against TrainConfig.<key>'s type; strings are read as on the command line."""
    default = getattr(TrainConfig(), key)
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{key} must be a table of name = value (e.g. [{key}] n_layer = 4), got {value!r}")
        return value
    if isinstance(value, str) and not isinstance(default, str):
        return _coerce(key, value)
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        word = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[kind]
        raise ValueError(f"{key} expects {word}, got {value!r}")
    return value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. steps=200 or model.n_layer=4)")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"override {item!r} has no setting name before '=' (e.g. steps=200)")
        if key in ("model.", "task."):
            raise ValueError(f"override {item!r} names no argument; write e.g. model.n_layer=4")
        if key.startswith(("model.", "task.")):
            group = "model_args" if key.startswith("model.") else "task_args"
            values.setdefault(group, {})
            values[group] = dict(values[group]) | {key.split(".", 1)[1]: _literal(raw)}
        elif key in _FIELDS:
            values[key] = _coerce(key, raw)
        else:
            import difflib

            close = difflib.get_close_matches(key, list(_FIELDS), n=3)
            raise ValueError(f"unknown setting {key!r}{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; "
                             f"valid: {', '.join(_FIELDS)}, model.<arg>, task.<arg>")
    return values


def build_config(args: argparse.Namespace) -> TrainConfig:
    from .presets import get_preset

    values: dict = {}
    task = args.task or "shakespeare"
    model = args.model or "gpt"
    values |= get_preset(task, model, args.preset)
    if args.config:
        file_values = load_config_file(args.config)
        for group in ("model_args", "task_args"):
            if group in file_values and group in values:
                file_values[group] = values[group] | file_values[group]
        values |= file_values
    for name in _FIELDS:
        flag = getattr(args, name, None)
        if flag is not None and name not in ("model_args", "task_args"):
            values[name] = flag
    values = apply_overrides(values, args.overrides)
    return TrainConfig(**values)


_HELP = {
    "task": "what to train on (see the list below)",
    "model": "model family (see the list below)",
    "connection": "connection spec, e.g. residual, 'ancre(tau=0.01)', 'laurel(rw,lr)'; `reslab connections` lists all",
    "out_dir": "output folder: logs, checkpoint.pt, summary.json (compare: one subfolder per arm and seed)",
    "resume": "continue from OUT_DIR/checkpoint.pt when it exists and belongs to the same run (same task, model, "
              "connection, seed, batch size); --no-resume starts afresh. Asking for fewer steps than the checkpoint "
              "holds is an error",
    "checkpoint_every": "save OUT_DIR/checkpoint.pt every N steps so a killed run resumes from there (0: only at "
                        "the end; Ctrl-C always saves one at the step it stops)",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "threads": "torch CPU threads; 0 keeps torch's default",
    "fused_adamw": "always (torch's fused AdamW on CPU and CUDA), cuda (fused on CUDA only, the per-tensor loop on "
                   "CPU: what runs before December 2026 used, bit for bit) or never",
}


def _catalogue() -> str:
    """The epilog of train/compare: valid tasks, models and presets."""
    from .data import list_tasks
    from .presets import PRESET_NAMES, PRESETS

    try:
        from .models import model_names
        models = ", ".join(model_names())
    except ImportError:  # pragma: no cover - the models package names its registry differently
        models = "see reslab.models"
    tasks = "\n".join(f"  {name:<14} {desc}" for name, desc in list_tasks().items())
    pairs = ", ".join(f"{t}/{m}" for t, m in PRESETS)
    return (f"tasks (--task):\n{tasks}\nmodels (--model): {models}\n"
            f"presets (--preset {'|'.join(PRESET_NAMES)}) exist for task/model: {pairs} (text:PATH uses shakespeare/gpt's)\n"
            "settings: --flags or key=value anywhere on the line (steps=200 model.n_layer=4 task.max_chars=100000);\n"
            "priority: defaults < --preset < --config FILE < flags < key=value")


def _add_train_flags(p: argparse.ArgumentParser, with_connection: bool = True) -> None:
    p.add_argument("--config", help="TOML or YAML file with TrainConfig keys")
    p.add_argument("--preset", choices=("quick", "cpu", "gpu"), help="budget preset for the task/model pair")
    for name, f in _FIELDS.items():
        if name in ("model_args", "task_args") or (name == "connection" and not with_connection):
            continue
        default = TrainConfig().__getattribute__(name)
        kind = type(default)
        flag = "--" + name.replace("_", "-")
        text = f"{_HELP[name]} " if name in _HELP else ""
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{text}(default {default!r})")
        else:
            p.add_argument(flag, dest=name, type=kind, default=None, help=f"{text}(default {default!r})")
    p.add_argument("overrides", nargs="*", help="key=value settings: steps=200 model.n_layer=4 task.max_chars=1e5")


def cmd_connections(args) -> int:
    from .connections import list_connections

    infos = list_connections()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2, default=str))
        return 0
    for info in infos:
        print(f"{info.name}  —  {info.summary}")
        print(f"    paper: {info.paper}")
        if info.example != info.name:
            print(f"    example: {info.example}")
        print(f"    extra parameters: {info.params}")
        defaults = {k: o.default for k, o in info.options.items()}
        at_init = ("yes" if info.is_residual_at_init(defaults) else
                   "with other options" if info.starts_as_residual else "no")
        print(f"    equals residual at init: {at_init}"
              + (f"; coefficients: {', '.join(info.coefficients)}" if info.coefficients else ""))
        for o in info.options.values():
            print(textwrap.fill(o.describe(), width=100, initial_indent="    option ", subsequent_indent="        "))
        print()
    print("Not connections (they need more than the stream, so they are model options or families):\n"
          "    value residual (ResFormer, arXiv:2410.17897): mixes the attention's values, which a connection never\n"
          "        sees -- GPT option value_residual=true (reslab train --model gpt model.value_residual=true)\n"
          "    PNNH (plain nets with an internal path): changes the stream's width -- model families pnnh_mlp,\n"
          "        pnnh_cnn, pnnh_gpt, pnnh_vit")
    return 0


def cmd_train(args) -> int:
    from .train import train

    cfg = build_config(args)
    if args.dry_run:
        from .data import get_task
        from .train import pick_device

        pick_device(cfg.device)
        from .models import build_model

        task = get_task(cfg.task, **cfg.task_args)
        model = build_model(cfg.model, task.info, cfg.connection, **cfg.model_args)
        print(f"config ok: {cfg.model} on {cfg.task} with {cfg.connection!r}, "
              f"{sum(p.numel() for p in model.parameters())} params, {cfg.steps} steps into {cfg.out_dir}")
        return 0
    summary = train(cfg)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(f"{summary['status']}: val loss {summary['final_val_loss']:.4f}, {summary['metric']} "
          f"{summary['final_val_metric']:.4f}, {summary['params']} params "
          f"({summary['connection_params']} in the connection); logs in {cfg.out_dir}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, parse_arms, parse_tune

    arms = parse_arms(args.connections)
    cfg = build_config(args)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    out = (cfg.out_dir if cfg.out_dir != TrainConfig.out_dir
           else f"runs/compare-{cfg.task.replace(':', '_').replace('/', '_')}-{cfg.model}")
    tune = parse_tune(args.tune)
    if args.tune_extend < 0:
        raise ValueError(f"--tune-extend must be >= 0 (points tried beyond a grid edge), got {args.tune_extend}")
    if args.tune_extend:
        if not tune:
            raise ValueError("--tune-extend needs a --tune grid to extend (e.g. --tune lr=1e-3,3e-3,1e-2 --tune-extend 2)")
        tune["extend"] = args.tune_extend
    compare(cfg, arms, args.seeds, out, baseline=args.baseline, command=_command_line(args), tune=tune,
            jobs=args.jobs)
    return 0


def cmd_reproduce(args) -> int:
    from .experiments import experiments, reproduce

    if args.name == "list":
        for name, exp in experiments().items():
            print(f"{name}: {exp.claim} [{exp.paper}] presets: {', '.join(exp.presets)}")
        return 0
    if args.resummarize:
        from pathlib import Path

        from .experiments import default_out, resummarize

        resummarize(Path(args.out or default_out(args.name, args.preset)) / "summary.json")
        return 0
    reproduce(args.name, args.preset, args.out, command=_command_line(args), part=args.part)
    return 0


def _plugins(package: str):
    """Modules of ``package`` that add their own sub-commands through ``cli_register(subparsers)``: every
    analysis and benchmark lives in its own file and plugs itself in, so adding one edits no shared file."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{package}.{m.name}")
        if hasattr(mod, "cli_register"):
            yield mod


def _command_line(args) -> str:
    """The command as the user typed it (recorded in results so they can be re-run)."""
    return "reslab " + " ".join(shlex.quote(a) for a in args.argv)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reslab", description="Residual connections: train, compare, diagnose.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("connections", help="list every connection scheme with options, paper and parameter formula")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_connections)

    p = sub.add_parser("train", help="train one model", epilog=_catalogue(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_flags(p)
    p.add_argument("--dry-run", action="store_true",
                   help="check the settings: build the task and the model, print the parameter count, train nothing")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several connections x seeds on the same budget and tabulate them",
                       epilog=_catalogue(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_flags(p, with_connection=False)
    p.add_argument("--connections", required=True, help="comma-separated specs, or 'all' (every registered scheme)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once in separate processes (with threads=1 each: one per core)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--baseline", default=None, help="arm the others are tested against (default: residual)")
    p.add_argument("--out", dest="out_dir", default=None,
                   help="same as --out-dir: the output folder (default runs/compare-<task>-<model>)")
    p.add_argument("--tune", action="append", default=[], metavar="KEY=v1,v2,...",
                   help="tune KEY (a train flag such as lr, or model_args.NAME) per arm on a tuning seed by validation "
                        "loss, then run each arm's seeds at its own best value; repeat for several keys")
    p.add_argument("--tune-extend", dest="tune_extend", type=int, default=0, metavar="N",
                   help="with one --tune key: an arm whose best value is at an edge of the grid tries up to N more "
                        "values beyond it (the grid's own ratio), so no arm is left at an edge")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("reproduce", help="run one paper-claim experiment and write its summary with a verdict")
    p.add_argument("name", help="experiment name, or 'list'")
    p.add_argument("--preset", default="cpu", choices=("quick", "cpu", "gpu"))
    p.add_argument("--out-dir", "--out", dest="out", default=None, help="output folder (default results/<name> for cpu, runs/ for quick); "
                                               "raw runs go to runs/reproduce/<name>-<preset> (OUT/runs with --out)")
    p.add_argument("--part", type=int, default=None, metavar="K",
                   help="a preset split into parts (each fits an hour): train part K's seeds (and the tuning runs), "
                        "reuse what other parts finished; the part that completes the set writes the summary")
    p.add_argument("--resummarize", action="store_true",
                   help="train nothing: re-apply the current verdict rule to the summary.json already in the output "
                        "folder (its per-seed values) and rewrite its verdict")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("analyze", help="diagnostics: " + ", ".join(m.__name__.rsplit(".", 1)[1]
                                                                    for m in _plugins("reslab.analysis")))
    analyses = p.add_subparsers(dest="analysis", required=True)
    for mod in _plugins("reslab.analysis"):
        mod.cli_register(analyses)

    p = sub.add_parser("bench", help="benchmarks (time, throughput, memory per connection)")
    benches = p.add_subparsers(dest="bench", required=True)
    for mod in _plugins("reslab.bench"):
        mod.cli_register(benches)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parser.parse_known_args(argv)
    # key=value overrides anywhere on the line: argparse takes only the first run of them as the positional
    stray = [a for a in extras if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        args.overrides = list(args.overrides) + extras
    args.argv = argv
    tune_malloc()  # speed only: freed activation blocks stay in the heap instead of being faulted in every step
    try:
        return args.func(args)
    except TrainingDiverged as e:
        print(f"reslab {args.command}: training diverged: {e}", file=sys.stderr)
        return 3
    except (ValueError, OSError, CheckpointError, RunLocked) as e:
        print(f"reslab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # TrainingInterrupted says what was kept; a bare one, at least where
        where = getattr(args, "out_dir", None) or getattr(args, "out", None)
        print(f"reslab {args.command}: {e}" if str(e) else
              f"reslab {args.command}: interrupted; finished runs and checkpoints are kept"
              f"{' in ' + where if where else ''}: run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
