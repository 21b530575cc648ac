#!/usr/bin/env bash
# dev/bench_vs_pytorch.sh: our trainer against Hugging Face transformers' LlamaForCausalLM on this card,
# in one run under one 80 GiB budget (issue 14): llama3.2-1b and llama3-8b at T = 8192, 32768, 60000,
# B=1, random tokens; PyTorch plain, with gradient checkpointing, and with checkpointing plus chunked MLP
# and chunked LM-head loss (dev/bench_vs_pytorch.py says how each is measured and sized).
# Needs a GPU, python3 with torch and transformers (nothing is downloaded: the models are built from
# their configs). Builds train_llama for $GPU_ARCH (default sm_90a) if it is missing. Sized to about
# 5 minutes: the driver's --budget (default 330 s) bounds the whole run; extra arguments go to the driver
# (e.g. --T 8192 --models llama3.2-1b). The table lands in dev/bench_vs_pytorch.md and on stdout.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then exec "$PYTHON" dev/bench_vs_pytorch.py --help; fi
"$PYTHON" -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null ||
    { echo "error: $PYTHON needs torch (with a CUDA device) and transformers for the baselines" >&2; exit 1; }
[ -x train_llama ] ||
    make -j16 train_llama GPU_ARCH="${GPU_ARCH:--gencode arch=compute_90a,code=sm_90a}" >/dev/null ||
    { echo "error: building train_llama failed" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec "$PYTHON" dev/bench_vs_pytorch.py "$@"
