#!/usr/bin/env bash
# train_llama on several ranks (issue 20), on the CPU device under mpirun (its NCCL runs over MPI): --dp D with
# ZeRO-1 against one rank with the same global batch (D x B rows: the same windows or random rows), a tiny model
# (vocabulary 512, d_model 64, 2 layers, 1 head of 64, 1 KV head, FFN 160), T = 32, 3 steps, lr 1e-3, fp32 AdamW
# state and master weights (-a fp32 -w 1: the gathered state compares without bf16's stochastic rounding).
# Checks, against the one-rank run:
#   - each step's loss within 1e-5 and global gradient norm within 1e-4 relative (the loss is a sum over the
#     ranks' tokens and the gradient a sum over ranks: only the order of fp32 additions differs);
#   - the final checkpoint (rank 0 writes the whole gathered state): master weights and AdamW m and v (m is the
#     gradients' running mean, so it compares the gradients element by element) within test_parallel's
#     tolerances: weights 1e-4 absolute (a tenth of one lr-sized update), m and v 1e-4 relative to each array's
#     largest element; the bf16 parameters within one bf16 step of the master weights' rounding;
#   - a checkpoint written at world size 4 resumes at world size 1 and 2 with the same next loss (within 1e-5);
#   - a perturbed array (10 x the tolerance) fails the comparison (the comparison can fail);
#   - one error line, naming the rank, and a nonzero exit for: --sp (not in the trainer yet), --dp with -f 1,
#     a world size that is not --dp x --sp; no hang (each run has a 120 s timeout).
# Needs ./train_llama_cpu built with MPI (make train_llama_cpu where mpicxx and nccl.h are) and mpirun.
# About 40 s on 2 cores. One line per check, then "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 MST_CPU_THREADS=1
passed=0; failed=0
check() {  # check NAME CONDITION-EXIT-STATUS [DETAIL]
    if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "PASS $1${3:+ ($3)}"
    else failed=$((failed + 1)); echo "FAIL $1${3:+ ($3)}"; fi
}
if ! command -v mpirun > /dev/null || ! grep -q MPI_Init ./train_llama_cpu 2> /dev/null; then
    echo "SKIP: train_llama_cpu without MPI, or no mpirun (apt-get install libopenmpi-dev openmpi-bin; make train_llama_cpu)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
DIR=$(mktemp -d /tmp/mst-parallel-train.XXXXXX)
trap 'rm -rf "$DIR"' EXIT

# a shard of 6000 tokens of a 512-token vocabulary (dataloader.h's format), seeded
python3 - "$DIR/shard_000000.bin" <<'PY'
import random, struct, sys
random.seed(20)
tokens = [random.randrange(512) for _ in range(6000)]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240801, 7, len(tokens), *([0] * 253)))
    f.write(struct.pack("<%dI" % len(tokens), *tokens))
PY

MODEL=(--config 512,64,2,1,1,160 -f 0 -T 32 -u 1 -l 1e-3 --seed 5 -a fp32 -w 1 --attention mma)
SHARDS=(-i "$DIR/shard_*.bin" --doc-mask 0)
run() {  # run NAME RANKS ARGS...: a run with its -L log and its checkpoints in $DIR/NAME
    local name=$1 np=$2; shift 2
    mkdir -p "$DIR/$name"
    if [ "$np" -eq 1 ]; then timeout 120 ./train_llama_cpu "${MODEL[@]}" -o "$DIR/$name" -L "$DIR/$name.jsonl" "$@"
    else timeout 120 mpirun --oversubscribe -np "$np" ./train_llama_cpu "${MODEL[@]}" -o "$DIR/$name" -L "$DIR/$name.jsonl" "$@"
    fi > "$DIR/$name.log" 2>&1
}
# compare.py logs A B [FIRST_STEP] | checkpoints A.safetensors B.safetensors [PERTURB]: exit 0 when within tolerance
cat > "$DIR/compare.py" <<'PY'
import json, struct, sys
def records(path, first):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "loss" in r and "grad_norm" in r and r["step"] >= first: out[r["step"]] = r
    return out
def arrays(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__": continue
        a, b = t["data_offsets"]
        raw = data[8 + n + a:8 + n + b]
        if t["dtype"] == "F32": out[name] = list(struct.unpack("<%df" % (len(raw) // 4), raw))
        elif t["dtype"] == "BF16":
            out[name] = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in struct.unpack("<%dH" % (len(raw) // 2), raw)]
    return out
if sys.argv[1] == "logs":
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    a, b = records(sys.argv[2], first), records(sys.argv[3], first)
    ok = len(a) > 0 and sorted(a) == sorted(b)
    worst_loss = max((abs(a[s]["loss"] - b[s]["loss"]) for s in a if s in b), default=1)
    worst_norm = max((abs(a[s]["grad_norm"] - b[s]["grad_norm"]) / max(abs(a[s]["grad_norm"]), 1e-30) for s in a if s in b), default=1)
    print("steps %s, loss differs by at most %.2g, norm by %.2g relative" % (sorted(a), worst_loss, worst_norm))
    sys.exit(0 if ok and worst_loss <= 1e-5 and worst_norm <= 1e-4 else 1)
a, b = arrays(sys.argv[2]), arrays(sys.argv[3])
if len(sys.argv) > 4:  # a planted error: one element of m off by 10 x the tolerance
    m = b["adam_m"]; i = len(m) // 3; m[i] += 10 * 1e-4 * max(abs(x) for x in m)
report, ok = [], sorted(a) == sorted(b)
for name, tolerance, relative in [("master", 1e-4, False), ("adam_m", 1e-4, True), ("adam_v", 1e-4, True)]:
    x, y = a[name], b[name]
    scale = max(abs(v) for v in x) if relative else 1.0
    worst = max(abs(p - q) for p, q in zip(x, y)) / scale
    ok = ok and len(x) == len(y) and worst <= tolerance
    report.append("%s %.2g" % (name, worst))
# the bf16 parameters: each within one bf16 step (2^-8 relative) of the other run's
worst = max(abs(p - q) / max(abs(p), 1e-30) for p, q in zip(a["params"], b["params"]) if p != q) if a["params"] != b["params"] else 0
ok = ok and worst <= 2 ** -7
report.append("params %.2g relative" % worst)
print(", ".join(report))
sys.exit(0 if ok else 1)
PY
compare() { python3 "$DIR/compare.py" "$@"; }
last_checkpoint() { ls "$DIR/$1"/step_*.safetensors 2> /dev/null | tail -n 1; }

# --dp 2 and --dp 4 on random tokens against one rank with the same 4 rows per step
run one_random 1 --random-tokens -B 4 -n 3; check "one rank, random tokens, B 4" $? "$(tail -n 1 "$DIR/one_random.log" | cut -c1-120)"
run dp2_random 2 --random-tokens --dp 2 -B 2 -n 3; check "mpirun -np 2 --dp 2 -B 2" $? "$(tail -n 1 "$DIR/dp2_random.log" | cut -c1-120)"
run dp4_random 4 --random-tokens --dp 4 -B 1 -n 3; check "mpirun -np 4 --dp 4 -B 1" $? "$(tail -n 1 "$DIR/dp4_random.log" | cut -c1-120)"
for name in dp2_random dp4_random; do
    detail=$(compare logs "$DIR/one_random.jsonl" "$DIR/$name.jsonl"); check "$name: losses and norms equal one rank's" $? "$detail"
    detail=$(compare checkpoints "$(last_checkpoint one_random)" "$(last_checkpoint $name)")
    check "$name: gathered checkpoint (weights, AdamW m, v) equals one rank's" $? "$detail"
done
compare checkpoints "$(last_checkpoint one_random)" "$(last_checkpoint dp4_random)" perturb > /dev/null
[ $? -ne 0 ]; check "a perturbed AdamW m element (10 x the tolerance) fails the comparison" $?
[ "$(grep -c '^step ' "$DIR/dp2_random.log")" -eq 3 ] && [ "$(wc -l < "$DIR/dp2_random.jsonl")" -eq 3 ]
check "rank 0 alone prints the step lines and writes -L" $? "$(grep -c '^step ' "$DIR/dp2_random.log") step lines"

# shards: each data-parallel rank reads its own windows (rank-strided); 4 steps, a checkpoint after step 2
run one_shard 1 "${SHARDS[@]}" -B 4 -n 4 -k 2; check "one rank, shards, B 4" $?
run dp4_shard 4 "${SHARDS[@]}" --dp 4 -B 1 -n 4 -k 2; check "mpirun -np 4 --dp 4 -B 1 on shards" $? "$(tail -n 1 "$DIR/dp4_shard.log" | cut -c1-120)"
detail=$(compare logs "$DIR/one_shard.jsonl" "$DIR/dp4_shard.jsonl"); check "dp4 on shards: losses and norms equal one rank's" $? "$detail"
# the world-size-4 checkpoint of step 2 resumed on 1 and on 2 ranks: steps 3 and 4 as the world-size-4 run's
for np in 1 2; do
    name=resume_$np
    mkdir -p "$DIR/$name" && cp "$DIR/dp4_shard/step_00000002.safetensors" "$DIR/$name/"
    if [ "$np" -eq 1 ]; then run $name 1 "${SHARDS[@]}" -B 4 -n 4 -k 2 -y 1
    else run $name 2 "${SHARDS[@]}" --dp 2 -B 2 -n 4 -k 2 -y 1; fi
    check "the world-size-4 checkpoint resumes on $np rank(s)" $? "$(grep -m1 '^resumed' "$DIR/$name.log")"
    detail=$(compare logs "$DIR/dp4_shard.jsonl" "$DIR/$name.jsonl" 3); check "resumed on $np: steps 3, 4 as at world size 4" $? "$detail"
done

# refused with one error line naming the rank, and a nonzero exit
refused() {  # refused NAME PATTERN RANKS ARGS...
    local name=$1 pattern=$2 np=$3; shift 3
    timeout 120 mpirun --oversubscribe -np "$np" ./train_llama_cpu "${MODEL[@]}" -B 1 -n 1 "$@" > "$DIR/refused.log" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "$pattern" "$DIR/refused.log"
    check "$name" $? "$(grep -m1 '^error' "$DIR/refused.log")"
}
refused "--sp 2: not in the trainer yet" '^error: .*--sp 2: Ulysses' 2 --random-tokens --sp 2
refused "--dp 2 -f 1: not supported yet" '^error: .*--dp 2 with -f 1: not supported yet' 2 --random-tokens --dp 2 -f 1
refused "2 ranks for --dp 4: the world size is checked" '^error: rank [01]: 2 ranks were started, but --dp 4' 2 --random-tokens --dp 4
refused "an error on the ranks names them and stops the job" '^error: rank [01]: .*none_\*.bin: no shard matches' 2 --dp 2 -i "$DIR/none_*.bin"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
