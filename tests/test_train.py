"""Trainer: schedule, parameter groups, logs, exact resume after SIGKILL, corrupt checkpoints, divergence,
DDP on 2 CPU processes, and the CLI's configuration layers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reslab.checkpoint import CheckpointError, load_checkpoint
from reslab.cli import build_config, main, make_parser
from reslab.models import build_model
from reslab.train import TrainConfig, TrainingDiverged, connection_parameters, lr_factor, param_groups, read_log, train

TINY = dict(task="teacher", task_args={"in_dim": 8, "out_dim": 2, "n_train": 256, "n_val": 64, "depth": 3,
                                       "width": 16},
            model="mlp", model_args={"width": 16, "n_blocks": 3}, batch_size=16, lr=3e-3, warmup_steps=3,
            eval_every=5, eval_batches=2, log_every=1, progress=False, tensorboard=False, threads=1)


def tiny(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**(TINY | {"out_dir": str(tmp_path / "run"), "steps": 12} | kw))


def losses(out_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(out_dir) if "loss" in r]


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    vals = [lr_factor(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_param_groups_put_connection_params_apart():
    cfg = TrainConfig(weight_decay=0.1, connection_lr_mult=5.0)
    model = build_model("mlp", {"in_dim": 4, "out_dim": 2}, "rezero", width=8, n_blocks=3)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    conn = connection_parameters(model)
    assert sum(p.numel() for p in conn) == 3
    assert {id(p) for p in groups["connection"]["params"]} == {id(p) for p in conn}
    assert groups["connection"]["weight_decay"] == 0 and groups["connection"]["lr_mult"] == 5.0
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert all(p.dim() < 2 for p in groups["no_decay"]["params"])
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_all


def test_train_writes_log_summary_checkpoint_and_learns(tmp_path):
    s = train(tiny(tmp_path, steps=40, eval_every=10))
    out = tmp_path / "run"
    assert s["status"] == "completed" and s["steps"] == 40
    assert json.loads((out / "summary.json").read_text())["final_val_loss"] == s["final_val_loss"]
    rows = read_log(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))
    assert [c["step"] for c in s["curve"]] == [10, 20, 30, 40]
    assert s["curve"][-1]["val_loss"] < s["curve"][0]["val_loss"]  # it learns
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 40


@pytest.mark.parametrize("opt", [{}, {"optimizer": "sgd", "lr": 0.05, "grad_clip": 0.0}], ids=["adamw", "sgd"])
def test_sigkill_then_resume_logs_same_losses_as_uninterrupted(tmp_path, opt):
    ref = tiny(tmp_path / "ref", steps=30, checkpoint_every=10, **opt)
    train(ref)
    crashed = tiny(tmp_path / "crash", steps=30, checkpoint_every=10, **opt)
    cmd = [sys.executable, "-m", "reslab.cli", "train", "--config", str(_write_toml(tmp_path, crashed))]
    env = os.environ | {"RESLAB_CRASH_AT_STEP": "25", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # really killed by SIGKILL, mid-run
    assert max(s for s, _ in losses(crashed.out_dir)) == 25 - 0  # logged steps 1..25 (crash before step 26)
    assert load_checkpoint(Path(crashed.out_dir) / "checkpoint.pt")["step"] == 20
    env.pop("RESLAB_CRASH_AT_STEP")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert losses(crashed.out_dir) == losses(ref.out_dir)  # bit-identical, steps 1..30, no duplicates
    assert [s for s, _ in losses(crashed.out_dir)] == list(range(1, 31))


def test_sgd_steps_equal_a_hand_written_momentum_update(tmp_path):
    """optimizer=sgd: v <- mu v + (g + wd p) with wd only on matrices (not on biases nor connection parameters),
    p <- p - lr_t v, lr_t the warmup/cosine schedule, no clipping: replayed by hand on the Trainer's own batches."""
    from reslab.data import get_task
    from reslab.train import load_trained, loss_and_metric

    cfg = tiny(tmp_path, steps=7, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01, grad_clip=0.0,
               connection="rezero", connection_lr_mult=3.0, eval_every=7)
    train(cfg)
    task = get_task(cfg.task, **cfg.task_args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, task.info, cfg.connection, **cfg.model_args)
    conn = {id(p) for p in connection_parameters(model)}
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    params = [p for p in model.parameters()]
    bufs = [None] * len(params)
    for step in range(cfg.steps):
        x, y = task.get_batch("train", cfg.batch_size, gen)
        model.zero_grad()
        loss_and_metric(task.kind, model(x), y)[0].backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                wd = cfg.weight_decay if (p.dim() >= 2 and id(p) not in conn) else 0.0
                lr = cfg.lr * lr_factor(step, cfg) * (cfg.connection_lr_mult if id(p) in conn else 1.0)
                d = p.grad + wd * p
                bufs[i] = d.clone() if bufs[i] is None else bufs[i] * cfg.momentum + d
                p -= lr * bufs[i]
    trained, _, _ = load_trained(cfg.out_dir)
    for (name, a), b in zip(trained.named_parameters(), params):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
    assert any(p.abs().sum() > 0 for p in connection_parameters(model))  # the connection's lambdas moved too


def test_optimizer_settings_are_validated():
    with pytest.raises(ValueError, match="optimizer must be one of adamw, sgd"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="nesterov needs optimizer=sgd"):
        TrainConfig(nesterov=True)
    with pytest.raises(ValueError, match="grad_clip must be >= 0"):
        TrainConfig(grad_clip=-1.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        TrainConfig(optimizer="sgd", momentum=1.0)
    with pytest.raises(ValueError, match="fused_adamw must be one of always, cuda, never"):
        TrainConfig(fused_adamw="yes")


def test_fused_adamw_runs_on_cpu_by_default_and_takes_the_same_steps_as_the_loop(tmp_path):
    """fused_adamw=always (the default) uses torch's fused kernel on CPU; cuda (what the experiments pin, so their
    committed runs reproduce bit for bit) keeps the per-tensor loop there. Both are the same AdamW: weight decay
    per group, the lr schedule and the connection's lr multiplier give the same losses to float rounding."""
    from reslab.experiments.common import train_config
    from reslab.train import make_optimizer

    model = torch.nn.Linear(3, 2)
    cpu = torch.device("cpu")
    assert make_optimizer(model, TrainConfig(), cpu).defaults["fused"] is True
    assert not make_optimizer(model, TrainConfig(fused_adamw="cuda"), cpu).defaults["fused"]
    assert not make_optimizer(model, TrainConfig(fused_adamw="never"), cpu).defaults["fused"]
    assert train_config("teacher", "mlp").fused_adamw == "cuda"
    kw = dict(steps=15, connection="rezero", connection_lr_mult=3.0, weight_decay=0.1)
    fused = train(tiny(tmp_path / "fused", **kw))
    loop = train(tiny(tmp_path / "loop", fused_adamw="cuda", **kw))
    a, b = losses(tmp_path / "fused" / "run"), losses(tmp_path / "loop" / "run")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 16))
    assert a[-1][1] < a[0][1]  # it learns
    assert all(math.isclose(x, y, rel_tol=1e-4) for (_, x), (_, y) in zip(a, b)), (a, b)
    assert math.isclose(fused["final_val_loss"], loop["final_val_loss"], rel_tol=1e-4)


def test_resume_refuses_a_checkpoint_of_another_optimizer(tmp_path):
    train(tiny(tmp_path, steps=4))
    with pytest.raises(CheckpointError, match="different run.*optimizer"):
        train(tiny(tmp_path, steps=8, optimizer="sgd"))


def _write_toml(tmp_path: Path, cfg: TrainConfig) -> Path:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines, tables = [], []
    for k, v in cfg.to_dict().items():
        if isinstance(v, dict):
            tables.append(f"[{k}]\n" + "".join(f"{a} = {val(b)}\n" for a, b in v.items()))
        else:
            lines.append(f"{k} = {val(v)}")
    path = tmp_path / "cfg.toml"
    path.write_text("\n".join(lines) + "\n\n" + "\n".join(tables))
    return path


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    cfg = tiny(tmp_path, steps=4)
    train(cfg)
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt.*start the run afresh"):
        train(tiny(tmp_path, steps=8))


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    train(tiny(tmp_path, steps=4))
    with pytest.raises(CheckpointError, match="different run.*connection"):
        train(tiny(tmp_path, steps=8, connection="plain"))


def test_divergence_stops_with_clear_message(tmp_path):
    cfg = tiny(tmp_path, steps=50, lr=1e6, grad_clip=0.0, divergence_factor=5.0)
    with pytest.raises(TrainingDiverged, match="lr"):
        train(cfg)
    s = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    assert s["status"] == "diverged" and "diverged" in s["error"] or "loss" in s["error"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    single = tiny(tmp_path / "single", steps=6, eval_every=6)
    train(single)
    ddp = tiny(tmp_path / "ddp", steps=6, eval_every=6)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "reslab.cli", "train", "--config", str(_write_toml(tmp_path, ddp))]
    proc = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("completed:") == 1, proc.stdout  # only rank 0 reports
    a, b = losses(single.out_dir), losses(ddp.out_dir)
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6)


def test_cli_layers_preset_file_flags_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 77\nlr: 0.01\nmodel_args:\n  n_layer: 3\n")
    args = make_parser().parse_args(["train", "--task", "shakespeare", "--model", "gpt", "--preset", "quick",
                                     "--config", str(cfg_file), "--lr", "0.02", "model.d_model=32",
                                     "task.max_chars=5000", "connection=ancre(tau=0.1)"])
    cfg = build_config(args)
    assert cfg.steps == 77 and cfg.lr == 0.02 and cfg.connection == "ancre(tau=0.1)"
    assert cfg.model_args == {"n_layer": 3, "n_head": 4, "d_model": 32}
    assert cfg.task_args["max_chars"] == 5000 and cfg.task_args["block_size"] == 64


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", "stepz=3"]) == 2
    assert "unknown setting 'stepz'" in capsys.readouterr().err
    assert main(["train", "--connection", "residul", "--task", "teacher", "--model", "mlp", "steps=1",
                 f"out_dir={tmp_path}", "progress=false"]) == 2
    assert "unknown connection 'residul'; valid: residual" in capsys.readouterr().err
    assert main(["compare", "--connections", "residual,ancre(tau=-1)"]) == 2
    assert "tau" in capsys.readouterr().err


def test_compare_end_to_end_table_plot_json(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "teacher", "--model", "mlp", "--connections", "residual,plain,scaled(lam=0.5)",
            "--seeds", "2", "--out", str(out), "steps=10", "eval_every=5", "log_every=5", "batch_size=16",
            "progress=false", "tensorboard=false", "model.width=16", "model.n_blocks=2", "task.n_train=128",
            "task.n_val=32", "task.in_dim=4", "task.out_dim=1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| `residual` |" in text and "| `plain` |" in text and "| `scaled(lam=0.5)` |" in text
    res = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in res["rows"]] == ["residual", "plain", "scaled(lam=0.5)"]  # baseline first
    assert all(r["completed"] == 2 for r in res["rows"])
    assert (out / "curves.png").stat().st_size > 1000
    base = next(r for r in res["rows"] if r["arm"] == "residual")
    assert base["steps_to_target"] is not None and base["welch_p_vs_baseline"] is None
    # a second call reuses the finished runs instead of training again
    assert main(argv) == 0
    assert "reusing finished run" in capsys.readouterr().out


def test_learned_coefficients_are_logged_and_plotted(tmp_path):
    from reslab.analysis.coefficients import coefficient_history, plot_coefficients

    cfg = tiny(tmp_path, steps=10, eval_every=5, connection="rezero")
    train(cfg)
    hist = coefficient_history(read_log(cfg.out_dir))
    steps, vals = hist["connection/lambda"]
    assert steps == [5, 10] and vals.shape == (2, 3)  # one lambda per block (3 blocks), at each eval
    assert vals[0].any()  # rezero's lambdas left 0 after training steps
    assert plot_coefficients(read_log(cfg.out_dir), tmp_path / "c.png") == ["connection/lambda"]
    assert (tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no learned coefficients"):
        plot_coefficients([{"step": 1, "loss": 1.0}], tmp_path / "d.png")


def test_status_line_without_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESLAB_STATUS_EVERY", "0")  # every step (default: every 30 s)
    train(tiny(tmp_path, steps=6, progress=True))  # pytest's stderr is not a TTY
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("mlp/residual step")]
    assert len(lines) == 6 and lines[-1].startswith("mlp/residual step 6/6 loss ")
    assert "samples/s ETA 0s" in lines[-1]
    train(tiny(tmp_path / "quiet", steps=3, progress=False))
    assert "step" not in capsys.readouterr().err


def test_ctrl_c_stops_at_a_step_checkpoints_and_resumes_bit_exact(tmp_path):
    import signal as sig
    import time as _time

    cmd = [sys.executable, "-m", "reslab.cli", "train", "--config",
           str(_write_toml(tmp_path, tiny(tmp_path / "int", steps=40, model_args={"width": 256, "n_blocks": 3})))]
    # the same run, slowed by a wider model so Ctrl-C lands mid-run, against its own uninterrupted reference
    wide = tiny(tmp_path / "wide", steps=40, model_args={"width": 256, "n_blocks": 3})
    train(wide)
    proc = subprocess.Popen(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "int" / "run" / "metrics.jsonl"
    while not (log.exists() and log.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()
        _time.sleep(0.02)
    proc.send_signal(sig.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted at step" in err.strip().splitlines()[-1] and "run the same command again" in err
    step = load_checkpoint(tmp_path / "int" / "run" / "checkpoint.pt")["step"]
    if step < 40:  # (a very fast machine may finish first)
        assert f"interrupted at step {step}/40" in err
    proc = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert losses(tmp_path / "int" / "run") == losses(wide.out_dir)


def test_validation_over_a_whole_split_weights_the_short_last_batch_by_its_size(tmp_path):
    """50 held-out examples in batches of 16: 16, 16, 16, 2. The reported loss and accuracy are those of the 50
    examples, not the mean of the four batch means (which would count the last 2 examples as much as 16)."""
    import torch.nn.functional as F

    from reslab.train import load_trained, train

    cfg = TrainConfig(task="gaussian_classes", task_args={"dim": 8, "n_train": 200, "n_val": 50}, model="probe",
                      model_args={"kind": "scaled", "depth": 2, "width": 16}, steps=20, batch_size=16, lr=1e-2,
                      eval_every=20, eval_batches=4, log_every=10, out_dir=str(tmp_path / "r"), progress=False,
                      tensorboard=False)
    s = train(cfg)
    model, task, _ = load_trained(tmp_path / "r")
    with torch.no_grad():
        logits = model(task.val_x)
    assert s["final_val_loss"] == pytest.approx(float(F.cross_entropy(logits, task.val_y)), rel=1e-5)
    assert s["final_val_metric"] == pytest.approx(float((logits.argmax(1) == task.val_y).float().mean()), abs=1e-6)
