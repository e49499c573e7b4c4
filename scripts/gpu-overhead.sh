#!/usr/bin/env bash
# Connection overhead on a CUDA GPU, the compiled path first (issue #16: "the compiled path is the one users on GPUs
# get, so it must meet all"): torch.compile (inductor) in every family at the wide size, with 10 consecutive steps
# per timed sample (a single 15 ms step on an H200 is launch-bound and its paired IQR was wider than the targets'
# margins, results/gpu-smoke/), then mHC's and HC's eager step memory in the ResNet (re-measured after mHC's
# Sinkhorn maps were made to recompute in the backward pass).
# Usage, on a machine with a CUDA GPU:  PYTHONPATH=. bash scripts/gpu-overhead.sh OUT_DIR
# ONLY="gpt resnet" runs some steps (gpt, gpt-streams, resnet, vit, streams-memory; default all). All of them take
# ~15 min on an H200, most of it compiling (mHC's unrolled Sinkhorn iterations alone take minutes): on a machine
# lent for 10-minute calls, run them in two calls, e.g. ONLY="gpt resnet vit" then ONLY="gpt-streams streams-memory".
# DEVICE / SIZE / BENCH_EXTRA override the device, the size and add bench options (a CPU dry run of the script:
# DEVICE=cpu SIZE=tiny BENCH_EXTRA="--compile-backend aot_eager --max-load -1" bash scripts/gpu-overhead.sh /tmp/o).
# Each step has a time limit; the script goes on when one fails or runs out; OUT_DIR/gpu-overhead.log has it all.
set -u
OUT=${1:?usage: bash scripts/gpu-overhead.sh OUT_DIR}
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-wide} BENCH_EXTRA=${BENCH_EXTRA:-} ONLY=${ONLY:-"gpt gpt-streams resnet vit streams-memory"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
L=$OUT/gpu-overhead.log
step() { name=$1 t=$2; shift 2; case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
         echo "### $(date +%T) [$name, timeout ${t}s] reslab $*" | tee -a "$L"
         ( timeout "$t" python3 -m reslab.cli "$@" $BENCH_EXTRA ) >> "$L" 2>&1; echo "### rc=$? $(date +%T)" | tee -a "$L"; }
{ nvidia-smi -L; python3 -c "import torch,sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  git log -1 --format='commit %H'; } >> "$L" 2>&1
B="bench overhead --device $DEVICE --size $SIZE --compile --steps-per-round 10 --repeats 8 --warmup 2 --max-load 4"
# the GPT: residual and every scheme with a time or memory target; the multi-stream ones in a step of their own
step gpt 300 $B --model gpt --connections "ancre,denseformer,laurel(rw),laurel(rw, lr, rank=16),scaled,rezero,skipinit" --out "$OUT/compiled-gpt"
step gpt-streams 420 $B --model gpt --connections "hyper,mhc" --out "$OUT/compiled-gpt-streams"
# the ResNet and the ViT: the schemes whose eager memory or time missed a target (ancre, denseformer, laurel)
step resnet 100 $B --model resnet --connections "ancre,denseformer,laurel(rw)" --out "$OUT/compiled-resnet"
step vit 90 $B --model vit --connections "ancre,denseformer,laurel(rw)" --out "$OUT/compiled-vit"
# mHC / HC step memory in the ResNet, eager (mHC's 7.1x at this size was measured before its maps recomputed)
step streams-memory 50 bench overhead --device "$DEVICE" --size "$SIZE" --model resnet --connections "hyper,mhc" --repeats 3 --warmup 1 --max-load 4 --out "$OUT/eager-resnet-streams"
echo "### done $(date +%T)" >> "$L"
