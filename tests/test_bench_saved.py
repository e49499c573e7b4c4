"""`reslab bench saved`: the saved-for-backward profile counts each storage once and leaves parameters out, the
differences name the shapes an arm keeps more of, and the profiler's peak breakdown adds up to the peak."""
from __future__ import annotations

import json

import pytest
import torch

from reslab.bench import saved as sv
from reslab.cli import main


def test_saved_counts_each_storage_once_and_leaves_parameters_out():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(5, 4), torch.randint(3, (5,))
    prof = sv.saved_for_backward(net, x, y, parameters=list(net.parameters()))
    shapes = prof["by_shape"]
    by_dims = {}  # "5x8 <- AddmmBackward0.mat1, ReluBackward0.result" -> 5x8: [(savers, count)]
    for key, v in shapes.items():
        dims, savers = key.split(" <- ")
        by_dims.setdefault(dims, []).append((savers, v["count"]))
    # ReLU saves its output and the second Linear saves the same tensor as its input: one storage, counted once,
    # named with both savers
    assert len(by_dims["5x8"]) == 1 and by_dims["5x8"][0][1] == 1
    assert "ReluBackward0.result" in by_dims["5x8"][0][0] and "Addmm" in by_dims["5x8"][0][0]
    assert sum(c for _, c in by_dims["5x4"]) == 1  # the first Linear's input
    assert not {"8x4", "4x8", "3x8", "8x3", "8", "3"} & by_dims.keys()  # weights and biases (or their transposes)
    assert prof["freed"] == 0
    # counted with the parameters, the weights appear
    with_params = sv.saved_for_backward(net, x, y)
    assert with_params["total_bytes"] > prof["total_bytes"]


def test_a_buffer_saved_through_views_counts_once_and_whole():
    """Two different views of one input buffer (a slice at an offset, and the whole) are one storage: counted once,
    with the whole buffer's bytes, and labelled a view when the view is smaller; a save dropped before the loss is
    not kept."""
    p = torch.nn.Parameter(torch.ones(6))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = p

        def forward(self, x):
            _ = (x * self.p[0]).exp()  # saved by Exp, then dropped with its graph: not kept for the backward
            return torch.stack([(x[:, 2:] * self.p[2:]).sum(1), (x * self.p).sum(1)], 1)

    x = torch.randn(4, 8, requires_grad=True)[:, :6]  # a view: the buffer is 4 x 8
    prof = sv.saved_for_backward(Net(), x, torch.zeros(4, dtype=torch.long), parameters=[p])
    views = {k: v for k, v in prof["by_shape"].items() if "(view)" in k}
    assert sum(v["count"] for v in views.values()) == 1 and sum(v["bytes"] for v in views.values()) == 4 * 8 * 4
    assert prof["freed"] >= 1 and not any(k.split(" <- ")[1].startswith("Exp") for k in prof["by_shape"])


def test_differences_name_the_extra_shapes():
    a = {"total_bytes": 300, "by_shape": {"2x3 <- MulBackward0.other": {"count": 1, "bytes": 100},
                                          "2x3 <- ReluBackward0.result": {"count": 1, "bytes": 100},
                                          "4 <- AddBackward0.x": {"count": 1, "bytes": 100}},
         "peak": {"step_peak_bytes": 1000, "by_category": {"activation": 600, "gradient": 400}}}
    b = {"total_bytes": 200, "by_shape": {"2x3 <- ReluBackward0.result": {"count": 1, "bytes": 100},
                                          "4 <- MulBackward0.self": {"count": 1, "bytes": 100}},
         "peak": {"step_peak_bytes": 800, "by_category": {"activation": 500, "gradient": 300}}}
    d = sv.differences({"residual": b, "x": a})
    assert d["residual"]["by_shape"] == [] and d["residual"]["saved_ratio"] == 1.0
    # "4" is kept by another node in x but not more: no row; "2x3" has one more, kept by Mul
    assert d["x"]["by_shape"] == [{"shape": "2x3", "count": 2, "baseline_count": 1, "extra_bytes": 100,
                                   "new_savers": ["MulBackward0.other"]}]
    assert d["x"]["saved_ratio"] == 1.5 and d["x"]["peak_ratio"] == 1.25
    assert d["x"]["peak_extra_by_category"] == {"activation": 100, "gradient": 100}


def test_peak_by_category_adds_up():
    net = torch.nn.Linear(64, 64)
    x = torch.randn(128, 64)

    def step():
        net(x).square().sum().backward()

    peak = sv.peak_by_category(step)
    assert peak["by_category"].get("parameter", 0) >= 64 * 64 * 4  # the weight is there at the peak
    # the step allocates at least the output (128 x 64) above what existed before it (weight, bias, input)
    assert 128 * 64 * 4 <= peak["step_peak_bytes"] < peak["peak_bytes"]


@pytest.mark.slow
def test_cli_profiles_denseformer_extra_activations(tmp_path):
    """Eager, tiny ResNet: DenseFormer keeps more block-sized maps than residual; aot_eager compiled runs too."""
    assert main(["bench", "saved", "--size", "tiny", "--model", "resnet", "--connections", "denseformer",
                 "--out", str(tmp_path / "e")]) == 0
    res = json.loads((tmp_path / "e" / "saved.json").read_text())["models"]["resnet"]
    assert list(res["profiles"]) == ["residual", "denseformer"]
    d = res["differences"]["denseformer"]
    assert d["saved_ratio"] > 1 and d["by_shape"] and all(r["count"] > r["baseline_count"] for r in d["by_shape"])
    assert all("MulBackward0.other" in r["new_savers"] for r in d["by_shape"])  # the DWA's weighted states
    assert main(["bench", "saved", "--size", "tiny", "--model", "resnet", "--connections", "ancre", "--compile",
                 "--compile-backend", "aot_eager", "--out", str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "saved.json").read_text())
    assert res["path"] == "compiled (aot_eager)" and res["models"]["resnet"]["profiles"]["ancre"]["tensors"] > 0
