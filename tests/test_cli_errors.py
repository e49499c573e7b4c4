"""The CLI's one-line errors (exit 2, no traceback) for what a new user mistypes, --help's catalogue, the
output-folder name shared by the sub-commands, and Ctrl-C during a comparison keeping partial results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.cli import main

TINY = ["--task", "teacher", "--model", "mlp", "task.n_train=64", "task.n_val=32", "task.in_dim=4",
        "model.width=8", "model.n_blocks=2", "batch_size=8", "eval_batches=1", "progress=false", "tensorboard=false"]


def run(capsys, argv) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def one_line_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err
    return lines[-1]


@pytest.mark.parametrize("name, text, expected", [
    ("bad.yaml", "steps: 5\nlr: [0.1\n", "malformed YAML"),
    ("bad.toml", "steps = 5\nlr = \n", "malformed TOML"),
    ("five.toml", 'steps = "five"\n', "steps expects an integer, got 'five'"),
    ("list.yaml", "model_args: [1, 2]\n", "model_args must be a table"),
    ("top.yaml", "- steps\n- 5\n", "expected key: value settings"),
    ("bool.toml", "lr = true\n", "lr expects a number, got True"),
    ("unknown.toml", "stepz = 5\n", "unknown config keys ['stepz']"),
])
def test_config_file_errors_name_the_file_and_the_key(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    rc, err = run(capsys, ["train", "--config", str(path), *TINY, f"out_dir={tmp_path / 'o'}"])
    assert rc == 2
    line = one_line_error(err)
    assert str(path) in line and expected in line


def test_config_file_strings_are_read_like_the_command_line(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("steps: '3'\nlr: 1e-3\nmodel_args:\n  width: 8\n")  # YAML reads 1e-3 as a string
    rc = main(["train", "--config", str(path), *TINY, f"out_dir={tmp_path / 'o'}", "--dry-run"])
    assert rc == 0
    assert "3 steps" in capsys.readouterr().out


def test_out_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, err = run(capsys, ["train", *TINY, "steps=1", "--out-dir", str(f)])
    assert rc == 2 and "is an existing file" in one_line_error(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    rc, err = run(capsys, ["train", *TINY, "steps=1", "--out-dir", str(tmp_path / "o"), "--device", "cuda"])
    assert rc == 2 and "device='cuda'" in one_line_error(err) and "--device cpu" in err


def test_overrides_before_flags_are_accepted_and_named(tmp_path, capsys):
    rc, err = run(capsys, ["train", "stepz=5", "--out-dir", str(tmp_path / "o"), "model.n_layer=2"])
    assert rc == 2 and "unknown setting 'stepz'" in one_line_error(err)
    rc = main(["train", "steps=3", "--out-dir", str(tmp_path / "o"), "model.width=12", *TINY[:-6],
               "batch_size=8", "--dry-run", "lr=0.5"])
    out = capsys.readouterr().out
    assert rc == 0 and "3 steps" in out and str(tmp_path / "o") in out
    rc, err = run(capsys, ["train", "steps=3", "--bogus-flag", "x"])
    assert rc == 2 and "unrecognized arguments: --bogus-flag x" in err
    rc, err = run(capsys, ["connections", "steps=3"])  # no overrides here
    assert rc == 2 and "unrecognized arguments: steps=3" in err


def test_overrides_placed_anywhere_set_the_same_config(tmp_path):
    from reslab.cli import build_config, make_parser

    def cfg(argv):
        args, extras = make_parser().parse_known_args(argv)
        args.overrides = list(args.overrides) + extras
        return build_config(args)

    a = cfg(["train", "--task", "teacher", "--model", "mlp", "steps=7", "model.width=12", "--lr", "0.5"])
    b = cfg(["train", "steps=7", "--task", "teacher", "model.width=12", "--model", "mlp", "--lr", "0.5"])
    assert a == b and a.steps == 7 and a.model_args == {"width": 12}


def test_model_options_out_of_range_are_one_line_errors(tmp_path, capsys):
    rc, err = run(capsys, ["train", *TINY, "model.n_blocks=0", "--dry-run"])
    assert rc == 2 and "n_blocks" in one_line_error(err)


def test_laurel_rank_above_the_width_is_refused(tmp_path, capsys):
    rc, err = run(capsys, ["train", *TINY, "--connection", "laurel(lr,rank=1000000)", "--dry-run"])
    assert rc == 2 and "rank" in one_line_error(err)


def test_help_lists_tasks_models_presets_and_explains_resume(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for word in ("text:PATH", "shakespeare", "fashion_mnist", "gpt", "resnet", "mlp", "quick", "cpu",
                 "shakespeare/gpt"):
        assert word in out, word
    assert "--resume" in out and "checkpoint.pt" in out and "--checkpoint-every" in out and "Ctrl-C" in out
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "text:PATH" in capsys.readouterr().out


def test_compare_out_dir_is_the_output_folder(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", *TINY, "--connections", "residual,plain", "--out-dir", str(out), "steps=2",
               "eval_every=2", "log_every=1"])
    assert rc == 0
    assert (out / "results.md").exists() and (out / "residual" / "seed0" / "summary.json").exists()
    text = (out / "results.md").read_text()
    assert "n/a: 1 seed" in text and "Key:" in text and "lower is better" in text and "± 0.0000" not in text
    out2 = tmp_path / "cmp2"
    assert main(["compare", *TINY, "--connections", "residual", "--out", str(out2), "steps=2"]) == 0
    assert (out2 / "results.json").exists()  # --out stays an alias


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_during_compare_keeps_finished_arms_and_the_running_arm_continues(tmp_path):
    out = tmp_path / "cmp"
    # 2000 steps: at ~1 ms a step on a fast CPU, 400 steps were over before the signal came (a flaky pass of
    # the whole arm); the signal now goes as soon as the arm's loop has logged its first row
    cmd = [sys.executable, "-m", "reslab.cli", "compare", *TINY, "--connections", "residual,plain",
           "--out-dir", str(out), "steps=2000", "eval_every=500", "log_every=10", "model.width=32"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "results.md", proc)  # written once the first arm (residual) finished
    log = out / "plain" / "seed0" / "metrics.jsonl"
    _wait_for(log, proc)
    t0 = time.time()
    while not log.read_text().strip():  # created before the loop; its first row is written at step 10
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and "1 finished arm" in last and "run the same command again" in last
    assert "Partial: 1 of 2 arms" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 1000
    step = torch.load(out / "plain" / "seed0" / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 2000 and f"step {step}" in last
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "reusing finished run" in proc.stdout
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["completed"] for r in rows] == [1, 1]
    assert "Partial" not in (out / "results.md").read_text()
