"""`reslab compare --jobs N`: runs trained in parallel processes give exactly the runs of one process."""
from __future__ import annotations

import json

from reslab.compare import compare
from reslab.train import TrainConfig

TINY = dict(task="teacher", task_args={"in_dim": 4, "out_dim": 1, "n_train": 64, "n_val": 32, "width": 8},
            model="mlp", model_args={"width": 8, "n_blocks": 2}, batch_size=8, steps=12, warmup_steps=1,
            eval_every=6, eval_batches=1, log_every=6, progress=False, tensorboard=False, threads=1)


def test_parallel_jobs_give_the_same_runs_as_one_process(tmp_path):
    base = TrainConfig(**TINY)
    arms = ["residual", "laurel(rw)"]
    one = compare(base, arms, 2, tmp_path / "one", log=lambda *a: None)
    two = compare(base, arms, 2, tmp_path / "two", log=lambda *a: None, jobs=2)
    for arm in arms:
        a = [r["final_val_loss"] for r in one["runs"][arm]]
        b = [r["final_val_loss"] for r in two["runs"][arm]]
        assert a == b and len(set(a)) == 2, arm  # same numbers, and the two seeds differ
    assert json.loads((tmp_path / "two" / "results.json").read_text())["arms"] == arms
    assert (tmp_path / "two" / "curves.png").exists()


def test_the_code_revision_covers_every_module_the_trainer_imports():
    """A reused run must have been trained by the same code: every reslab module that importing the trainer loads
    lies under ``CODE_PARTS`` (a module moved out of train.py once left the hash). Checked in a fresh interpreter,
    so what other tests imported does not count."""
    import subprocess
    import sys

    from reslab.compare import CODE_PARTS

    listing = ("import sys, pathlib, reslab.train as t; root = pathlib.Path(t.__file__).parent; "
               "print('\\n'.join(str(pathlib.Path(m.__file__).relative_to(root)) for n, m in list(sys.modules.items()) "
               "if n.split('.')[0] == 'reslab' and getattr(m, '__file__', None)))")
    loaded = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, check=True).stdout.split()
    # package markers, and the recording hook, which only observes (it is off in every training run)
    outside = {"__init__.py", "analysis/__init__.py", "analysis/record.py"}
    uncovered = [f for f in loaded if f not in outside
                 and not any(f == part or f.startswith(part + "/") for part in CODE_PARTS)]
    assert loaded and not uncovered, f"add to reslab.compare.CODE_PARTS: {uncovered}"
