"""Sinkhorn's two forms in mhc, forward + backward at one size: time and peak memory, eager or compiled.

    python scripts/sinkhorn_forms.py matrix|scalings eager|compiled [POSITIONS]          # time: median of 15
    MALLOC_MMAP_THRESHOLD_=65536 python scripts/sinkhorn_forms.py ...                  # peak: freed memory leaves RSS
    python scripts/sinkhorn_forms.py stability                                         # where the forms differ

One process per (form, path), 1 thread, n = 4, 20 iterations, float32; POSITIONS defaults to 32,768 (ResNet-20's
first stage: batch 32 at 32 x 32). The peak is VmHWM after clear_refs minus RSS before one forward + backward (Linux).
Also prints the largest difference from the matrix form in float64 (values, gradients relative).

``stability``: both forms in float32 on 100,000 random 4 x 4 logit maps per scale (logits ~ N(0, std^2)), against
the matrix form in float64: how many maps come out non-finite, and the largest difference where both are finite.
At large spreads exp() leaves float32's range and the forms fail differently.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time

import torch

from reslab.connections.mhc import sinkhorn, sinkhorn_scalings


def rss_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))


def main(form: str, path: str, positions: int = 32768) -> None:
    torch.set_num_threads(1)
    fn = {"matrix": sinkhorn, "scalings": sinkhorn_scalings}[form]
    if path == "compiled":
        fn = torch.compile(fn)
    gen = torch.Generator().manual_seed(0)
    logits, grad = torch.randn(positions, 4, 4, generator=gen), torch.randn(positions, 4, 4, generator=gen)
    x = logits.clone().requires_grad_()

    def step():
        y = fn(x, 20)
        return y, torch.autograd.grad(y, x, grad)[0]

    y, g = step()
    xd = logits.double().requires_grad_()
    yd = sinkhorn(xd, 20)
    (gd,) = torch.autograd.grad(yd, xd, grad.double())
    err_y = (y.double() - yd).abs().max().item()
    err_g = ((g.double() - gd).abs().max() / gd.abs().max()).item()
    for _ in range(3):
        step()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_mb("VmRSS")
    step()
    peak = rss_mb("VmHWM") - before
    times = []
    for _ in range(15):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"{form} {path} positions={positions}: forward+backward {statistics.median(times) * 1e3:.2f} ms, "
          f"peak +{peak:.1f} MB; vs float64 matrix form: values {err_y:.1e}, gradients {err_g:.1e} (relative)")


def stability(stds=(1, 10, 20, 30, 40, 60), maps: int = 100_000) -> None:
    gen = torch.Generator().manual_seed(0)
    for std in stds:
        logits = torch.randn(maps, 4, 4, generator=gen) * std
        exact = sinkhorn(logits.double(), 20)
        line = [f"logit std {std:>3}:"]
        for form, fn in (("matrix", sinkhorn), ("scalings", sinkhorn_scalings)):
            y = fn(logits, 20).double()
            finite = y.isfinite().flatten(1).all(1) & exact.isfinite().flatten(1).all(1)
            err = (y - exact)[finite].abs().max().item() if finite.any() else float("nan")
            line.append(f"{form} {int((~y.isfinite().flatten(1).all(1)).sum())} non-finite of {maps}, "
                        f"max |diff| {err:.1e} where finite;")
        print(" ".join(line))


if __name__ == "__main__":
    if sys.argv[1:] == ["stability"]:
        torch.set_num_threads(1)
        stability()
        sys.exit(0)
    if (len(sys.argv) not in (3, 4) or sys.argv[1] not in ("matrix", "scalings")
            or sys.argv[2] not in ("eager", "compiled")):
        sys.exit("usage: python scripts/sinkhorn_forms.py matrix|scalings eager|compiled [POSITIONS] | stability")
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
