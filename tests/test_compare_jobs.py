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
