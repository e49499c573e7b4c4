"""mHC: hyper-connections whose stream mixing is projected onto the doubly stochastic matrices.

Xie et al. (DeepSeek-AI) 2025, *mHC: Manifold-Constrained Hyper-Connections* (arXiv:2512.24880), eqs. 7-9.
n streams x_l = (x_1..x_n) of width D (all h_0 at the start); per branch f (one "layer"), with
v = RMSNorm(vec(x_l)) the n*D-wide flattened streams (unweighted; a gain would fold into phi):

    H_pre  = sigmoid(a_pre  * v phi_pre  + b_pre)              (n,)    read:  f's input = sum_j H_pre[j] x_j
    H_post = 2 sigmoid(a_post * v phi_post + b_post)           (n,)    write: stream i gets H_post[i] f(.)
    H_res  = SinkhornKnopp(a_res * mat(v phi_res) + b_res)     (n, n)  mix:   x_i <- sum_j H_res[i, j] x_j + ...

Sinkhorn-Knopp: M = exp(logits), then ``sinkhorn_iters`` times normalise columns, then rows
(M <- T_r(T_c(M))), so rows sum to 1 exactly and columns to within the iteration's residual. The maps
(norm, phi, sigmoid, Sinkhorn) run in float32 with autocast off, float64 when the stream is float64.
Per branch: n*D*(n^2 + 2n) (phi) + n^2 + 2n (b) + 3 (a) parameters. Memory: n times the residual stream.

recompute (default on): the maps are computed per position, and storing their intermediates for the backward pass (the
normalised n*D-wide v, and, in the matrix form, per Sinkhorn iteration the n x n matrices and their sums, ~2 n^2 + 2n
numbers: ~800 per position at n = 4 and 20 iterations) costs more than the n streams themselves where D is small, as
in a ResNet's 16-64 channels (issue #16: peak step memory 10.5x residual's on CPU for ResNet-20). As the mHC paper
does, the maps run under a non-reentrant torch.utils.checkpoint and are recomputed in the backward pass; autograd
keeps only H, which the mixing stores anyway, and the maps' outputs. Values and gradients are unchanged (tested),
double backward, forward-mode AD and torch.compile(fullgraph) work with it (the registry's contract tests run the
default), so it is on by default; the price is one more evaluation of the maps per backward (one (n*D) x (n^2+2n)
matmul and the Sinkhorn loop per position). It is skipped where it cannot help or cannot run: with grad mode off, and
under torch.func.grad/vjp/jacrev, which disable the saved-tensor hooks the checkpoint is built on. recompute=false
stores them, as before. Measured with ``reslab bench overhead --model resnet`` (ResNet-20, batch 32, CPU, peak step
memory / residual's 52.3 MB, one run at torch's 2 threads, matrix form): 3.72x (194.6 MB) with recompute, 10.47x
(547.6 MB) with recompute=false (at 1 thread both were ~3.7x: there the peak lay elsewhere). Its time cost was not
measured on a quiet machine.

sinkhorn_chunk (sinkhorn_form=matrix only; default 0, off; opt in with e.g. 4): with recompute alone and the matrix
form, the backward pass still re-runs one branch's maps storing every Sinkhorn iterate (two n x n matrices and their
sums per iteration and position: ~800 numbers per position at n = 4, 20 iterations, against the stream's n*D = 64 in
ResNet-20's first stage), and that transient sets the step's peak where D is small. With sinkhorn_chunk = k the
iterations run, in eager mode, in checkpointed chunks of k: the recomputation keeps each chunk's input (n*n numbers
per position) and backward re-runs one chunk at a time. Same values and gradients (the re-run repeats the same
operations; tested bit for bit); the price is a third evaluation of the Sinkhorn loop per backward. Measured (``reslab
bench overhead --model all --connections 'mhc,mhc(sinkhorn_chunk=4)'`` when the matrix form was the default,
results/bench-overhead/mhc-chunks/): ResNet-20 peak step memory 3.71x -> 2.52x residual's for 1.07x mhc's step time
(CPU, 2 threads); the GPT (D = 256) and ViT (D = 192) peaks lie elsewhere (memory unchanged) and their mhc steps take
1.09x longer -- hence off by default. Compiled, sinkhorn_chunk > 0 makes the Sinkhorn loop one opaque op whose
backward re-runs it in chunks (``_sinkhorn_op`` below; AOT autograd would inline checkpoints into its one backward
graph, where they did not lower the peak): compiled ResNet-20 4.5x -> 2.2x residual's peak step memory, for 2.0x the
mhc step's time (the loop leaves inductor's fused kernels). That op has no double backward or forward-mode AD: with
sinkhorn_chunk > 0, compile for first-order training only. Under torch.func transforms (no saved-tensor hooks) the
plain loop runs.

sinkhorn_form (default scalings; matrix is the papers' literal loop): every Sinkhorn iterate is diag(r) K diag(c) with
K = exp(logits), so the iterations can carry the scalings instead of the matrix (normalising columns sets c = 1 / (K^T
r), rows r = 1 / (K c)) and form the matrix once at the end (:func:`sinkhorn_scalings`). The same divisions grouped
otherwise: equal to the matrix form up to rounding (2e-16 measured in float64; tested to 1e-13). Autograd keeps two
n-vectors per iteration instead of two n x n matrices and their sums, so recompute's backward transient stays small
and sinkhorn_chunk is not needed; the loop itself is faster too. At ResNet-20's first stage
(``scripts/sinkhorn_forms.py``: 32,768 positions, n = 4, 20 iterations, forward + backward, 1 thread; with the
matrix-vector products of :func:`sinkhorn_scalings`): compiled 41 ms against the matrix form's 114 ms, eager 139
against 276 ms; peak (MALLOC_MMAP_THRESHOLD_=65536) compiled +47 against +162 MB, eager +31 against +110 MB. Whole
steps (results/bench-overhead/mhc-forms*/, both forms in one run, 2 threads): compiled ResNet-20 4.38x -> 2.26x
residual's peak step memory at 0.74x the matrix form's step time, 0.93x (GPT) and 0.91x (ViT) compiled; eager 3.72x ->
2.57x at 0.71x (GPT 1.00x, ViT 0.96x); hence the default since 2026-12-03 (runs before it measured the matrix form as
``mhc``: their ERRATA.json renames it, :func:`reslab.bench.overhead_runs.load_run`). Where the two differ (``python
scripts/sinkhorn_forms.py stability``: 100,000 random 4 x 4 logit maps per scale, float32 against the float64 matrix
form; results/bench-overhead/sinkhorn-stability.txt): at logit std <= 20 both are within 6.1e-7 (the init's logits are
0 and 1); at std 30-60, where exp() leaves float32's range, the matrix form is off by up to 0.8-1.0 or non-finite in
0-1.3 % of maps, the scalings form non-finite in 0.002-4.5 % (a scaling, 1 / a sum below float32's smallest normal,
overflows) and off by 1.6e-3 to 0.71 elsewhere: past std ~25 neither form is usable in float32.

Init (the paper leaves b open): phi = 0, a = 0.01 (its gating-factor init), b_post = 0 (H_post = 1),
b_res = I (logit 1 on the diagonal, diagonal-heavy like hyper_connections' eye), b_pre so that
H_pre = 1/2 on stream t mod n and 1/(2(n-1)) on the others: the read weights sum to 1, so every stream
stays h + f(h) and the stack equals ``residual`` with reduce=mean (sum: n times it, which a final norm
removes) -- up to the rounding of sigmoid(b_pre) (~1e-8, so not declared ``starts_as_residual``); the one-sided read breaks the symmetry between streams. transformers' DeepSeek-V4 initialises
b = 0, a = 1 and phi ~ N(0, 0.02) (modeling_deepseek_v4.py:1287-1290), reading (n/2) h.

Reference differences (transformers 5.24, models/deepseek_v4/modeling_deepseek_v4.py): it applies comb
transposed (line 1184-1191: x_k <- sum_j comb[j, k] x_j) and starts Sinkhorn from a row softmax with
rows/columns in the other order (lines 982-991); comb^T is our H_res of the transposed logits, so the
oracle test copies its weights with the res block transposed. It adds hc_eps = 1e-6 to pre, to comb
and to every Sinkhorn denominator (lines 980-991), which the paper does not: not implemented (up to
6e-4 relative on random weights; the oracle test sets hc_eps = 1e-12).
Its final reduction is a learned sigmoid head (DeepseekV4HyperHead, line 999); ours is sum or mean.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import Connection, stream_precision
from .registry import Option, register


def _sinkhorn_start(logits: Tensor) -> Tensor:
    """exp(logits) with a per-column shift, which the first column normalisation cancels (no overflow)."""
    return torch.exp(logits - logits.amax(-2, keepdim=True).detach())


def _sinkhorn_steps(M: Tensor, iters: int) -> Tensor:
    for _ in range(iters):
        M = M / M.sum(-2, keepdim=True)
        M = M / M.sum(-1, keepdim=True)
    return M


def sinkhorn(logits: Tensor, iters: int, chunk: int = 0) -> Tensor:
    """Sinkhorn-Knopp on exp(logits) over the last two axes: ``iters`` x (columns, then rows).

    chunk > 0 (with grad mode on): the iterations run in checkpointed chunks of ``chunk``, so autograd keeps each
    chunk's input matrix instead of every iteration's; backward recomputes one chunk at a time. Same values and
    gradients (the recomputation repeats the same operations)."""
    M = _sinkhorn_start(logits)
    if not (0 < chunk < iters and torch.is_grad_enabled()):
        return _sinkhorn_steps(M, iters)
    for start in range(0, iters, chunk):
        M = checkpoint(_sinkhorn_steps, M, min(chunk, iters - start), use_reentrant=False, preserve_rng_state=False)
    return M


def sinkhorn_scalings(logits: Tensor, iters: int) -> Tensor:
    """The iterations of :func:`sinkhorn`, carried as the scalings of K = exp(logits): every iterate is
    diag(r) K diag(c), so normalising columns sets c = 1 / (K^T r) and rows r = 1 / (K c); the matrix is formed
    once, at the end. Equal to sinkhorn() up to rounding (the same divisions, grouped otherwise; tested in float64).
    Autograd keeps two n-vectors per iteration instead of two n x n matrices and their sums (module docstring:
    sinkhorn_form).

    The products K^T r and K c are batched matrix-vector products (``matmul``), not a broadcast product summed: one
    op instead of two and no n x n temporary per half-iteration. On CPU that is bit for bit the broadcast form's
    values and gradients in float32 and float64, eager and compiled (the 4-term sums run in the same order), and
    0.66-0.81x its forward + backward time at ResNet-20's first stage (32,768 positions, 1-2 threads; NOTES,
    twenty-first session)."""
    K = _sinkhorn_start(logits)
    c = K.sum(-2).reciprocal()  # the first column normalisation (r = 1)
    r = torch.matmul(K, c.unsqueeze(-1)).squeeze(-1).reciprocal()
    for _ in range(iters - 1):
        c = torch.matmul(r.unsqueeze(-2), K).squeeze(-2).reciprocal()  # 1 / (K^T r)
        r = torch.matmul(K, c.unsqueeze(-1)).squeeze(-1).reciprocal()  # 1 / (K c)
    return r.unsqueeze(-1) * K * c.unsqueeze(-2)


# Compiled with sinkhorn_chunk > 0, Sinkhorn is one opaque op with a hand-written backward. Traced (the default), its
# backward needs every iterate, which AOT autograd recomputes inside the one compiled backward graph, where inductor
# plans their buffers: compiled ResNet-20 peaks at 4.5x residual's step memory (over mHC's n = 4 streams), with or
# without checkpointed chunks, which AOT inlines. As an op it keeps only its logits (n*n numbers per position) and its
# backward re-runs the iterations ``chunk`` at a time (2.2x; the whole loop as one op, at 61cdc8d: 3.6x) -- but in
# eager kernels, which inductor cannot fuse: the compiled ResNet-20 mhc step took 2.0x as long with chunks of 4
# (results/bench-overhead/mhc-compiled/), hence opt-in. Gradients: the formulas autograd differentiates, so equal to
# its up to rounding (tested).
@torch.library.custom_op("reslab::sinkhorn", mutates_args=())
def _sinkhorn_op(logits: Tensor, iters: int, chunk: int) -> Tensor:
    return _sinkhorn_steps(_sinkhorn_start(logits), iters)


@_sinkhorn_op.register_fake
def _sinkhorn_fake(logits, iters, chunk):
    return torch.empty_like(logits)


@torch.library.custom_op("reslab::sinkhorn_backward", mutates_args=())
def _sinkhorn_backward_op(logits: Tensor, grad: Tensor, iters: int, chunk: int) -> Tensor:
    M = _sinkhorn_start(logits)
    chunk = chunk if 0 < chunk < iters else iters
    starts = list(range(0, iters, chunk))
    inputs = []  # each chunk's input matrix, from one pass without the iterates
    for start in starts:
        inputs.append(M)
        M = _sinkhorn_steps(M, min(chunk, iters - start))
    g = grad
    for start, M in zip(reversed(starts), reversed(inputs)):
        steps = []  # this chunk's iterates: (output, divisor, axis) of every normalisation
        for _ in range(min(chunk, iters - start)):
            for axis in (-2, -1):
                s = M.sum(axis, keepdim=True)
                M = M / s
                steps.append((M, s, axis))
        for Y, s, axis in reversed(steps):  # Y = X / sum(X): dX = (dY - sum(dY * Y)) / sum(X)
            g = (g - (g * Y).sum(axis, keepdim=True)) / s
    return g * inputs[0]  # through exp (the shift is a constant: T_c cancels it)


@_sinkhorn_backward_op.register_fake
def _sinkhorn_backward_fake(logits, grad, iters, chunk):
    return torch.empty_like(logits)


def _sinkhorn_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.iters, ctx.chunk = inputs[1], inputs[2]


def _sinkhorn_grad(ctx, grad):
    (logits,) = ctx.saved_tensors
    return _sinkhorn_backward_op(logits, grad, ctx.iters, ctx.chunk), None, None


_sinkhorn_op.register_autograd(_sinkhorn_grad, setup_context=_sinkhorn_setup)


@register(
    "mhc",
    paper="Xie et al. (DeepSeek-AI) 2025, mHC: Manifold-Constrained Hyper-Connections (arXiv:2512.24880)",
    params="per branch: n*D*(n^2+2n) + n^2 + 2n + 3",
    param_count=lambda o, s: s.n_blocks * s.branches * (o["n"] * s.dim * (o["n"] ** 2 + 2 * o["n"]) + o["n"] ** 2 + 2 * o["n"] + 3),
    coefficients={"pre": "(L, n) static H_pre = sigmoid(b_pre) of every branch",
                  "post": "(L, n) static H_post = 2 sigmoid(b_post)",
                  "res": "(L, n, n) static H_res = SinkhornKnopp(b_res), rows = destination stream"},
    starts_as_residual=False,  # equal up to the rounding of the stored b_pre (~1e-8), tested in test_multistream.py
    per_branch=True, variants=("mhc(reduce=mean)", "mhc(n=2, sinkhorn_iters=5, recompute=false)",
                               "mhc(sinkhorn_form=matrix)", "mhc(sinkhorn_form=matrix, sinkhorn_chunk=4)"),
    options=[
        Option("n", "int", 4, "number of streams", min=2, max=64),
        Option("sinkhorn_iters", "int", 20, "Sinkhorn-Knopp iterations (t_max)", min=1, max=1000),
        Option("reduce", "choice", "sum", "how the n streams become the output", choices=("sum", "mean")),
        Option("branches", "int", 1, "branches per block; reslab.connection() fills it from the model", min=1, max=64),
        Option("recompute", "bool", True, "recompute the maps (norm, phi, Sinkhorn) in the backward pass instead of "
                                          "storing their intermediates (same values and gradients, less memory)"),
        Option("sinkhorn_form", "choice", "scalings", "how the Sinkhorn iterations are carried: as the row and column "
                                                      "scalings of exp(logits) (n numbers per iteration instead of "
                                                      "n*n: less memory and time), or as the scaled matrix (the "
                                                      "paper's and DeepSeek's literal loop); equal up to rounding",
               choices=("matrix", "scalings")),
        Option("sinkhorn_chunk", "int", 0, "sinkhorn_form=matrix only: run the Sinkhorn iterations in checkpointed "
                                           "chunks of this many (compiled: as one op), so backward keeps one chunk's "
                                           "iterates at a time (0: keep all; same values, less memory where D is "
                                           "small, more time)", min=0, max=1000),
    ],
)
class MHC(Connection):
    """mHC: n streams; sigmoid read/write maps and a Sinkhorn-projected doubly stochastic mixing matrix."""

    def __init__(self, n_blocks, dim, channel_dim=-1, n=4, sinkhorn_iters=20, reduce="sum", branches=1,
                 recompute=True, sinkhorn_form="scalings", sinkhorn_chunk=0):
        super().__init__(n_blocks, dim, channel_dim)
        self.n, self.iters, self.reduce, self.recompute = int(n), int(sinkhorn_iters), reduce, bool(recompute)
        self.sinkhorn_form, self.sinkhorn_chunk = sinkhorn_form, int(sinkhorn_chunk)
        if self.sinkhorn_chunk and sinkhorn_form != "matrix":
            raise ValueError(f"mhc: sinkhorn_chunk={self.sinkhorn_chunk} applies to sinkhorn_form=matrix only (the "
                             f"default scalings form keeps n numbers per iteration, not n*n: nothing to chunk); "
                             f"write mhc(sinkhorn_form=matrix, sinkhorn_chunk={self.sinkhorn_chunk}) or drop "
                             f"sinkhorn_chunk")
        self.branches = self.branches_per_block = int(branches)
        L, n = n_blocks * self.branches, self.n
        self.layers = L
        self.phi = nn.Parameter(torch.zeros(L, n * dim, n * n + 2 * n))
        self.a = nn.Parameter(torch.full((L, 3), 0.01))
        b = torch.zeros(L, n * n + 2 * n)
        for t in range(L):
            p = torch.full((n,), 0.5 / (n - 1), dtype=torch.float64)
            p[t % n] = 0.5
            b[t, :n] = torch.log(p / (1 - p)).float()  # sigmoid^-1
            b[t, 2 * n:] = torch.eye(n).flatten()
        self.b = nn.Parameter(b)

    def _branches_spec(self, n: int) -> str:
        return f"mhc(branches={n})"

    def coefficients(self) -> dict[str, Tensor]:
        n, b = self.n, self.b.detach()
        with torch.no_grad():  # a report: no checkpointed chunks
            res = self._sinkhorn(b[:, 2 * n:].unflatten(-1, (n, n)))
        return {"pre": torch.sigmoid(b[:, :n]), "post": 2 * torch.sigmoid(b[:, n:2 * n]), "res": res}

    def maps(self, H: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """H_pre (*P, n), H_post (*P, n), H_res (*P, n, n) of branch t for streams H (n, *P, D), in float32
        (float64 for a float64 stream) whatever the autocast dtype. Recomputed in the backward pass where
        :meth:`_recomputes` allows, so autograd keeps only H (stored anyway by the mixing) and the maps."""
        if self._recomputes():
            # preserve_rng_state=False: the maps draw no random numbers, so there is no RNG state to replay
            return checkpoint(self._maps, H, t, use_reentrant=False, preserve_rng_state=False)
        return self._maps(H, t)

    def _recomputes(self) -> bool:
        """Whether :meth:`maps` runs under a non-reentrant checkpoint: only when autograd will store something
        (grad mode on), and not where saved-tensor hooks, on which that checkpoint is built, are disabled
        (torch.func.grad / vjp / jacrev raise on them); the plain path computes the same values there."""
        return self.recompute and self._hooks_usable()

    @staticmethod
    def _hooks_usable() -> bool:
        """Whether a non-reentrant checkpoint can run here: grad mode on (else nothing is stored), and saved-tensor
        hooks enabled (torch.func.grad / vjp / jacrev disable them and would raise)."""
        if not torch.is_grad_enabled():
            return False
        if torch.compiler.is_compiling():
            return True  # dynamo traces the checkpoint as a higher-order op and AOT autograd recomputes it
        # a private torch query (no public one); where a torch lacks it, the checkpoint path is taken
        disabled = getattr(torch._C._autograd, "_saved_tensors_hooks_get_disabled_error_message", lambda: None)
        return disabled() is None

    def _maps(self, H: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        n, wdt = self.n, torch.promote_types(H.dtype, torch.float32)
        with stream_precision(H):
            v = H.movedim(0, -2).flatten(-2).to(wdt)  # (*P, n*D), stream-major like vec(x_l)
            v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
            z = v @ self.phi[t].to(wdt)
            a, b = self.a[t].to(wdt), self.b[t].to(wdt)
            pre = torch.sigmoid(a[0] * z[..., :n] + b[:n])
            post = 2 * torch.sigmoid(a[1] * z[..., n:2 * n] + b[n:2 * n])
            logits = (a[2] * z[..., 2 * n:] + b[2 * n:]).unflatten(-1, (n, n))
            res = self._sinkhorn(logits)
        return pre, post, res

    def _sinkhorn(self, logits: Tensor) -> Tensor:
        if self.sinkhorn_form == "scalings":
            return sinkhorn_scalings(logits, self.iters)
        chunk = self.sinkhorn_chunk if self._hooks_usable() else 0  # grad on, checkpoints possible
        if 0 < chunk < self.iters and torch.compiler.is_compiling():
            return _sinkhorn_op(logits.contiguous(), self.iters, chunk)  # see _sinkhorn_op
        return sinkhorn(logits, self.iters, chunk)  # eager chunks, or none (a chunk as long as the loop is none)

    def _prepare(self, H: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        pre, post, res = (m.to(H.dtype) for m in self.maps(H, t))
        with stream_precision(H):
            x = torch.einsum("s...d,...s->...d", H, pre)
        return x, post, res

    # -- the steps: streams (n, *P, D) channels-last; state = (H,) or (H, x, H_post, H_res) for the next branch
    def start(self, x0):
        h = x0.movedim(self.channel_dim, -1)
        H = h.unsqueeze(0).expand(self.n, *h.shape)
        return (H, *self._prepare(H, 0)) if self.layers else (H,)

    def _first(self, x):
        # contiguous for channels-first streams: see reslab/connections/_hc.py (a strided NCHW tensor in a
        # stride-2 convolution's CPU backward corrupted the heap)
        y = x.movedim(-1, self.channel_dim)
        return y if self.channel_dim in (-1, x.ndim - 1) else y.contiguous()

    def branch_input(self, state, k, b):
        return self._first(state[1])

    def branch_output(self, state, k, b, x, out):
        H, _, post, res = state
        o = out.movedim(self.channel_dim, -1).to(H.dtype)  # a bf16 branch output joins the float32 streams
        with stream_precision(H):
            H = torch.einsum("...ij,j...d->i...d", res, H) + post.movedim(-1, 0).unsqueeze(-1) * o
        t = k * self.branches + b + 1
        return (H, *self._prepare(H, t)) if t < self.layers else (H,)

    def finish(self, state):
        H = state[0]
        return self._first(H.sum(0) if self.reduce == "sum" else H.mean(0))
