# Sourced from the repository root by dev/gpu_check.sh and dev/gpu_check_trainer.sh. A GPU machine may reach
# no package registry, so the data are carried to it, never made there: say what to carry, and stop with one
# line when some is missing (make would otherwise reach for npm and apt-get to make it).
echo "a machine without network needs carried (gitignored; \`make data tokenizer\` makes them where there is network): dev/data/shards/ and tokenizer.model; optional: train_llama test_llama mst_hf dev/cuda/bin/ built beforehand for sm_90a with the same CUDA toolkit"
not_carried=$(for f in dev/data/shards/train_000000.bin dev/data/shards/val_000000.bin tokenizer.model; do [ -f "$f" ] || printf ' %s' "$f"; done)
[ -z "$not_carried" ] || { echo "error: missing:$not_carried (carry dev/data/shards/ and tokenizer.model here; nothing is downloaded)"; exit 1; }
