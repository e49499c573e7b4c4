#!/usr/bin/env bash
# GPU smoke check (issues #13, #16): the CUDA path (bf16 autocast, fused AdamW, compile=true), the first steps of
# the gpu presets for every scheme, and the connection overhead on CUDA (eager and compiled).
# Usage, on a machine with a CUDA GPU and reslab installed:  bash scripts/gpu-smoke.sh OUT_DIR
# Each step has a time limit and the script goes on when one fails or runs out; OUT_DIR/gpu-smoke.log has it all.
# What it printed on an H200 is in results/gpu-smoke/ (NOTES.md there says which commit and what was learnt).
set -u
OUT=${1:?usage: bash scripts/gpu-smoke.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
R="python3 -m reslab.cli"
L=$OUT/gpu-smoke.log
step() { t=$1; shift; echo "### $(date +%T) [timeout ${t}s] reslab $*" | tee -a "$L"; ( timeout "$t" $R "$@" ) >> "$L" 2>&1; echo "### rc=$? $(date +%T)" | tee -a "$L"; }
{ nvidia-smi -L; python3 -c "import torch,sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"; git log -1 --format='commit %H'; } >> "$L" 2>&1
# the CUDA path of the trainer: bf16 autocast, fused AdamW, torch.compile, on the GPT's gpu preset
step 130 train --task shakespeare --model gpt --preset gpu steps=250 eval_every=125 compile=true --out-dir "$OUT/gpt-compiled"
# every scheme's first steps at the gpu presets (eager)
step 240 compare --task shakespeare --model gpt --preset gpu --connections all steps=100 eval_every=100 eval_batches=5 --out "$OUT/compare-gpt"
step 120 compare --task fashion_mnist --model resnet --preset gpu --connections residual,ancre,hyper,mhc steps=100 eval_every=100 eval_batches=5 --out "$OUT/compare-resnet"
# overhead on CUDA: the default and the wide sizes (eager), and the compiled path at the wide size
step 110 bench overhead --device cuda --repeats 10 --warmup 3 --max-load 2 --out "$OUT/overhead-cuda"
step 100 bench overhead --device cuda --size wide --repeats 15 --warmup 3 --max-load 2 --out "$OUT/overhead-cuda-wide"
step 200 bench overhead --device cuda --compile --model gpt --size wide --repeats 10 --warmup 3 --max-load 2 --connections "ancre,denseformer,laurel(rw)" --out "$OUT/overhead-cuda-compiled"
echo "### done $(date +%T)" >> "$L"
