#!/usr/bin/env bash
# train_llama on several ranks (issue 20), on the CPU device under mpirun (its NCCL runs over MPI): --dp D (ZeRO-1)
# and --sp S (Ulysses) against one rank with the same rows per step (D x B: the same windows, or random rows).
# Tiny models of a 512-token vocabulary, d_model 128 or 256, 2 layers, heads of 64, FFN 160, T = 30 or 31, 3 or
# 4 steps, lr 1e-3, fp32 AdamW state and master weights (-a fp32 -w 1: the gathered state compares without bf16's
# stochastic rounding), on a seeded shard whose documents (token 0 starts one in a small vocabulary) cross the
# ranks' token blocks, so document masking needs the sequences' document starts.
# Checks, against the one-rank run:
#   - where the ranks' arithmetic is one rank's but for the order of fp32 sums over ranks (--dp; --sp with at
#     least as many KV heads as ranks), test_parallel's tolerances after the first step: its loss within 1e-5,
#     the gradient norm within 1e-4 relative, and in the step-1 checkpoint (rank 0 writes the whole gathered
#     state) master weights within 1e-4 absolute (a tenth of one lr-sized update), AdamW m and v within 1e-4 of
#     each array's largest element (m after one step is 0.1 x the clipped gradient: the gradients element by
#     element), bf16 parameters within one bf16 step. Later steps start from weights of which a few differ by one
#     bf16 step (the order of the fp32 sums decides the rounding at a boundary), which moves the next gradients
#     by ~1e-3 of their largest element (measured, the same for --dp 2 and --sp 2): their losses within 1e-3,
#     norms within 1e-2 relative;
#   - with fewer KV heads than ranks (replicated: 1 KV head against --sp 2), each rank's share of a KV head's
#     gradient is rounded to bf16 before the shares are summed (one rounding of the sum on one rank): the first
#     loss within 1e-5 (forward is one rank's), m after one step within 5% of its largest element (test_llama's
#     tolerance for the bf16 trainer against fp32; measured here 0.6%);
#   - --sp with T not a multiple of S (the last block padded), --sp 4, --sp 2 --dp 2;
#   - a checkpoint written at world size 4 (--sp 2 --dp 2) resumes at world size 1 and 2 with the same next
#     losses and norms (within 1e-5: they come out equal);
#   - a perturbed array (10 x the tolerance) fails the comparison (the comparison can fail);
#   - rank 0 alone prints step lines and writes -L;
#   - one error line (naming the rank under mpirun) and a nonzero exit for: --sp with -f 1, a world size that is
#     not --dp x --sp, --sp without a launcher, --sp not dividing the heads, --sp with -r 0, a missing shard;
#     no hang (120 s timeouts);
#   - a rank stopped mid-training (SIGSTOP): the other's next collective times out (--comm-timeout 3), one line
#     from rank 0, every rank stopped, well within a minute.
# Needs ./train_llama_cpu built with MPI (make train_llama_cpu where mpicxx and nccl.h are) and mpirun.
# About 46 CPU-seconds (65 s of wall time measured on 2 shared cores). One line per check, then "N passed, N failed".
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

# a shard of 6000 tokens of a 512-token vocabulary (dataloader.h's format), seeded: documents of 2 to 24
# tokens, each begun by token 0
python3 - "$DIR/shard_000000.bin" <<'PY'
import random, struct, sys
random.seed(20)
tokens = []
while len(tokens) < 6000:
    tokens += [0] + [random.randrange(1, 512) for _ in range(random.randrange(1, 24))]
tokens = tokens[:6000]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240801, 7, len(tokens), *([0] * 253)))
    f.write(struct.pack("<%dI" % len(tokens), *tokens))
PY

COMMON=(-f 0 -u 1 -l 1e-3 --seed 5 -a fp32 -w 1 --attention mma -i "$DIR/shard_*.bin")
A=(--config 512,128,2,2,2,160 -T 30)   # 2 heads, 2 KV heads
B=(--config 512,128,2,2,1,160 -T 31)   # 2 heads, 1 KV head: replicated on 2 ranks; T odd
C=(--config 512,256,2,4,4,160 -T 30)   # 4 heads, 4 KV heads: --sp 4 with T not a multiple of 4
run() {  # run NAME RANKS ARGS...: a run with its -L log and its checkpoints in $DIR/NAME
    local name=$1 np=$2; shift 2
    mkdir -p "$DIR/$name"
    if [ "$np" -eq 1 ]; then timeout 120 ./train_llama_cpu "${COMMON[@]}" -o "$DIR/$name" -L "$DIR/$name.jsonl" "$@"
    else timeout 120 mpirun --oversubscribe -np "$np" ./train_llama_cpu "${COMMON[@]}" -o "$DIR/$name" -L "$DIR/$name.jsonl" "$@"
    fi > "$DIR/$name.log" 2>&1
    check "$name: runs (mpirun -np $np $*)" $? "$(tail -n 1 "$DIR/$name.log" | cut -c1-100)"
}
# compare.py logs A B [FIRST_STEP] [replicated] | checkpoints A B [replicated|perturb]: exit 0 when within tolerance
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
mode, replicated, resumed = sys.argv[1], "replicated" in sys.argv, "resumed" in sys.argv
if mode == "logs":
    first = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4].isdigit() else 1
    a, b = records(sys.argv[2], first), records(sys.argv[3], first)
    ok = len(b) > 0 and set(b) <= set(a)  # the run's steps, all in the reference's
    report = []
    for s in sorted(a):
        if s not in b: continue
        loss, norm = abs(a[s]["loss"] - b[s]["loss"]), abs(a[s]["grad_norm"] - b[s]["grad_norm"]) / max(abs(a[s]["grad_norm"]), 1e-30)
        later = s > 1 and not resumed  # after the first update: weights a bf16 step apart here and there
        ok = ok and loss <= (1e-3 if later else 1e-5) and norm <= (1e-2 if later else 1e-4 if not replicated else 1e-3)
        report.append("step %d: loss %.2g norm %.2g" % (s, loss, norm))
    print(", ".join(report))
    sys.exit(0 if ok else 1)
a, b = arrays(sys.argv[2]), arrays(sys.argv[3])
if "perturb" in sys.argv:  # a planted error: one element of m off by 10 x the tolerance
    m = b["adam_m"]; i = len(m) // 3; m[i] += 10 * 1e-4 * max(abs(x) for x in m)
report, ok = [], sorted(a) == sorted(b)
checks = [("adam_m", 0.05, True)] if replicated else [("master", 1e-4, False), ("adam_m", 1e-4, True), ("adam_v", 1e-4, True)]
for name, tolerance, relative in checks:
    x, y = a[name], b[name]
    scale = max(abs(v) for v in x) if relative else 1.0
    worst = max(abs(p - q) for p, q in zip(x, y)) / scale
    ok = ok and len(x) == len(y) and worst <= tolerance
    report.append("%s %.2g" % (name, worst))
if not replicated:  # the bf16 parameters: each within one bf16 step (2^-8 to 2^-7 relative) of the other run's
    worst = max((abs(p - q) / max(abs(p), 1e-30) for p, q in zip(a["params"], b["params"]) if p != q), default=0)
    ok = ok and worst <= 2 ** -7
    report.append("params %.2g relative" % worst)
print(", ".join(report))
sys.exit(0 if ok else 1)
PY
compare() { python3 "$DIR/compare.py" "$@"; }
step1() { echo "$DIR/$1/step_00000001.safetensors"; }
same() {  # same NAME REFERENCE [replicated]: the run's losses and norms, and its step-1 checkpoint, against the reference's
    local detail
    detail=$(compare logs "$DIR/$2.jsonl" "$DIR/$1.jsonl" ${3:-}); check "$1: losses and norms equal $2's" $? "$detail"
    detail=$(compare checkpoints "$(step1 $2)" "$(step1 $1)" ${3:-})
    check "$1: the gathered step-1 checkpoint equals $2's" $? "$detail"
}

# model A on the shard: a checkpoint after every step
run one_A 1 "${A[@]}" -B 4 -n 4 -k 1
run dp2_A 2 "${A[@]}" --dp 2 -B 2 -n 2 -k 1; same dp2_A one_A
run sp2_A 2 "${A[@]}" --sp 2 -B 4 -n 2 -k 1; same sp2_A one_A
run sp2dp2_A 4 "${A[@]}" --sp 2 --dp 2 -B 2 -n 4 -k 1; same sp2dp2_A one_A
compare checkpoints "$(step1 one_A)" "$(step1 sp2dp2_A)" perturb > /dev/null
[ $? -ne 0 ]; check "a perturbed AdamW m element (10 x the tolerance) fails the comparison" $?
[ "$(grep -c '^step ' "$DIR/sp2dp2_A.log")" -eq 4 ] && [ "$(wc -l < "$DIR/sp2dp2_A.jsonl")" -eq 4 ]
check "rank 0 alone prints the step lines and writes -L" $? "$(grep -c '^step ' "$DIR/sp2dp2_A.log") step lines of 4 ranks"
# ZeRO-2: each group's gradient all-reduced as backward completes it, only the rank's shard kept. With one micro-batch
# the same sums in the same order as ZeRO-1's reduce-scatter (rank order, on the CPU device): losses and norms
# bitwise equal; with two micro-batches per rank (-d) the ranks are summed before the micro-batches (ZeRO-1: after),
# one fp32 rounding apart: within the tolerances above against the ZeRO-1 run
run sp2dp2_zero2_A 4 "${A[@]}" --sp 2 --dp 2 -B 2 -n 4 -k 1 --zero 2; same sp2dp2_zero2_A one_A
python3 - "$DIR/sp2dp2_A.jsonl" "$DIR/sp2dp2_zero2_A.jsonl" <<'PY'
import json, sys
a, b = ([(r["loss"], r["grad_norm"]) for r in map(json.loads, open(p)) if "grad_norm" in r] for p in sys.argv[1:])
sys.exit(0 if a == b and len(a) == 4 else 1)
PY
check "--zero 2: losses and norms bitwise equal to --zero 1's (one micro-batch)" $?
run dp2_accumulate_A 2 "${A[@]}" --dp 2 -B 1 -d 60 -n 2 -k 1 --zero 1
run dp2_accumulate_zero2_A 2 "${A[@]}" --dp 2 -B 1 -d 60 -n 2 -k 1 --zero 2; same dp2_accumulate_zero2_A dp2_accumulate_A
grep -q 'ZeRO-2' "$DIR/dp2_accumulate_zero2_A.log" && ! grep -q 'ZeRO-2' "$DIR/dp2_accumulate_A.log"
check "--zero 2 is what ran (the start-up plan line says ZeRO-2), --zero 1 not" $?
# the world-size-4 checkpoint of step 2 resumed on 1 rank and on 2: steps 3 and 4 as the world-size-4 run's
for np in 1 2; do
    name=resume_$np
    mkdir -p "$DIR/$name" && cp "$DIR/sp2dp2_A/step_00000002.safetensors" "$DIR/$name/"
    if [ "$np" -eq 1 ]; then run $name 1 "${A[@]}" -B 4 -n 4 -k 1 -y 1
    else run $name 2 "${A[@]}" --dp 2 -B 2 -n 4 -k 1 -y 1; fi
    detail=$(compare logs "$DIR/sp2dp2_A.jsonl" "$DIR/$name.jsonl" 3 resumed)
    check "$name: the world-size-4 checkpoint's steps 3, 4 as at world size 4" $? "$(grep -m1 -o 'resumed from [^:]*' "$DIR/$name.log" | sed 's|.*/||'): $detail"
done
# random tokens: data-parallel rank r gets the rows r B .. of one rank's B x D
run one_random 1 "${A[@]}" --random-tokens -B 4 -n 1 -k 1
run dp2_random 2 "${A[@]}" --random-tokens --dp 2 -B 2 -n 1 -k 1; same dp2_random one_random
# model C: --sp 4, T = 30 (blocks of 8, the last padded by 2)
run one_C 1 "${C[@]}" -B 1 -n 2 -k 1
run sp4_C 4 "${C[@]}" --sp 4 -B 1 -n 2 -k 1; same sp4_C one_C
# model B: 1 KV head against --sp 2 (replicated), T = 31
run one_B 1 "${B[@]}" -B 2 -n 2 -k 1
run sp2_B 2 "${B[@]}" --sp 2 -B 2 -n 2 -k 1; same sp2_B one_B replicated

# refused with one error line naming the rank, and a nonzero exit
refused() {  # refused NAME PATTERN RANKS ARGS...
    local name=$1 pattern=$2 np=$3; shift 3
    timeout 120 mpirun --oversubscribe -np "$np" ./train_llama_cpu -f 0 --attention mma -B 1 -n 1 "$@" > "$DIR/refused.log" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "$pattern" "$DIR/refused.log"
    check "$name" $? "$(grep -m1 '^error' "$DIR/refused.log")"
}
refused "--sp 2 -f 1: not supported yet" '^error: .*--sp 2 --dp 1 with -f 1: not supported yet' 2 "${A[@]}" --random-tokens --sp 2 -f 1
refused "2 ranks for --dp 4: the world size is checked" '^error: rank [01]: 2 ranks were started, but --dp 4' 2 "${A[@]}" --random-tokens --dp 4
refused "--sp 4 with 2 heads: refused" '^error: .*--sp 4: query heads (2) are not a multiple of --sp' 4 "${A[@]}" --random-tokens --sp 4
refused "--zero 3: refused" '^error: .*--zero' 2 "${A[@]}" --random-tokens --dp 2 --zero 3
refused "--sp 2 -r 0: refused" '^error: .*--sp with -r 0: not supported' 2 "${A[@]}" --random-tokens --sp 2 -r 0
./train_llama_cpu "${A[@]}" -f 0 --random-tokens --sp 2 -n 1 > "$DIR/refused.log" 2>&1
[ $? -eq 1 ] && [ "$(grep -c '^error: --sp 2 x --dp 1 = 2 ranks, but no launcher started ranks' "$DIR/refused.log")" -eq 1 ]
check "--sp 2 without mpirun: one error line" $? "$(grep -m1 '^error' "$DIR/refused.log")"
refused "an error on the ranks names them and stops the job" '^error: rank [01]: .*none_\*.bin: no shard matches' 2 "${A[@]}" --sp 2 -i "$DIR/none_*.bin"

# a rank that stops (SIGSTOP: alive, never reaching the next collective) stops the job within --comm-timeout:
# rank 0 waits in the next collective, its watchdog prints one line and aborts every rank (no hang)
timeout 120 mpirun --oversubscribe -np 2 ./train_llama_cpu "${COMMON[@]}" "${A[@]}" --random-tokens --dp 2 -B 1 -n 100000 \
    --comm-timeout 3 > "$DIR/hang.log" 2>&1 &
job=$!
stopped=""
for _ in $(seq 600); do  # rank 1, once rank 0 has printed a step (training under way)
    if grep -q '^step ' "$DIR/hang.log"; then
        for pid in $(pgrep -f 'train_llama_cpu .*--comm-timeout 3'); do
            if tr '\0' '\n' < /proc/$pid/environ 2> /dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then kill -STOP "$pid"; stopped=$pid; fi
        done
        break
    fi
    sleep 0.1
done
start=$(date +%s)
wait $job
rc=$?
took=$(( $(date +%s) - start ))
[ -n "$stopped" ] && kill -KILL "$stopped" 2> /dev/null
[ -n "$stopped" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -lt 60 ] &&
    [ "$(grep -c '^error: rank 0: comm: .*no progress for 3 s (--comm-timeout)' "$DIR/hang.log")" -eq 1 ]
check "a stopped rank: the other's collective times out, one line, every rank stopped" $? \
    "rank 1 pid ${stopped:-not found}, exit $rc after ${took} s: $(grep -m1 '^error' "$DIR/hang.log")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
