#!/usr/bin/env bash
# Command-line tests of ./train_llama that need no GPU: bad flags and impossible configs give exactly
# one line, "error: ..." naming the flag, and a nonzero exit; --dry-run and --max-T work without a GPU.
set -u
cd "$(dirname "$0")/.."
passed=0; failed=0

# expect_error NAME WORD ARGS...: one output line, starting "error:", containing WORD, nonzero exit
expect_error() {
    local name=$1 word=$2; shift 2
    local output rc lines
    output=$(./train_llama "$@" 2>&1); rc=$?
    lines=$(printf '%s' "$output" | grep -c '')
    if [ "$rc" -ne 0 ] && [ "$lines" -eq 1 ] && [[ "$output" == error:* ]] && [[ "$output" == *"$word"* ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $name: exit $rc, $lines lines: $output"
    fi
}

# expect_output NAME PATTERN ARGS...: exit 0 and a line matching the extended regex PATTERN
expect_output() {
    local name=$1 pattern=$2; shift 2
    local output rc
    output=$(./train_llama "$@" 2>&1); rc=$?
    if [ "$rc" -eq 0 ] && printf '%s\n' "$output" | grep -Eq "$pattern"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $name: exit $rc, no line matching /$pattern/ in:"; printf '%s\n' "$output" | head -n 40
    fi
}

expect_error "T=0" "-T" --dry-run -T 0
expect_error "non-numeric T" "-T" --dry-run -T abc
expect_error "T with trailing junk" "-T" --dry-run -T 60k
expect_error "negative MLP mini-sequences" "-m" --dry-run -m -1
expect_error "negative LM-head mini-sequences" "-M" --dry-run -M -3
expect_error "non-numeric B" "-B" --dry-run -B x
expect_error "unknown model" "nosuchmodel" --dry-run -e nosuchmodel
expect_error "heads not dividing d_model" "divide" --dry-run --config 1000,100,2,3,1,200
expect_error "unknown flag" "--bogus" --dry-run --bogus 1
expect_error "missing value" "-T" --dry-run -T
expect_error "non-numeric gpu memory" "--gpu-mem" --dry-run --gpu-mem lots
expect_error "plan larger than the card" "GiB" -e llama3-8b -T 60000 -m 1 -M 1 -r 0 --gpu-mem 80

expect_output "dry run: 8b at 60000 fits 80 GB" "^MST plan: fits a card of 80.0 GiB" --dry-run -e llama3-8b -T 60000 --gpu-mem 80
expect_output "dry run: the standard plan of 8b at 60000 does not" "^standard plan .*: does not fit a card of 80.0 GiB" --dry-run -e llama3-8b -T 60000 --gpu-mem 80
expect_output "dry run prints the plan table" "LM-head logits .*4000 x 128256 x 2" --dry-run -e llama3-8b -T 60000
expect_output "dry run of llama3-70b (plan only)" "layer inputs" --dry-run -e llama3-70b -T 8192
expect_output "--max-T for an 80 GB card" "^longest T on a card of 80.0 GiB and 120.0 GiB of pinned host memory \(B=1\): [0-9]{6,} with these options \(--offload turned on" --dry-run -e llama3-8b --gpu-mem 80 --max-T
expect_output "--max-T with --offload 0 stays on the card" "^longest T on a card of 80.0 GiB .*: [0-9]{5} with these options, " --dry-run -e llama3-8b --gpu-mem 80 --offload 0 --max-T
expect_error "non-numeric host memory" "--host-mem" --dry-run --host-mem lots
expect_error "negative host memory" "--host-mem" --dry-run --host-mem -3
expect_error "zero host memory" "--host-mem" --dry-run --host-mem 0
expect_error "offload not 0 or 1" "--offload" --dry-run --offload 2
expect_output "dry run prints device and host columns" "^\| region .*\| device GiB \| +host GiB \|" --dry-run -e llama3-8b -T 60000
expect_output "dry run: offloaded checkpoints in the host column" "^\| layer inputs, host +\| 32 x 200000 x 4096 x 2 +\| +0.000 \| +48.828 \|" --dry-run -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 120 --offload 1
expect_output "dry run: PCIe bytes and times" "^PCIe per step: 78.7 GiB to the host, 77.2 GiB back; copies ~1.69 s each way at an assumed 50 GB/s" --dry-run -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 120 --offload 1
expect_output "dry run: automatic offload says so" "^MST plan: fits a card of 80.0 GiB and 120.0 GiB of pinned host memory .*--offload turned on for layers 0-23: the plan needs it" --dry-run -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 120
expect_output "dry run: too little host memory for the checkpoints" "^MST plan: does not fit .*short by 0.0 GiB on the card, 68.7 GiB on the host" --dry-run -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 10

# checkpoints, Hugging Face directories, samples (issue 6)
expect_error "negative checkpoint interval" "-k" --dry-run -k -1
expect_error "resume not 0 or 1" "-y" --dry-run -y 2
expect_error "resume without -o" "-o DIR" --dry-run -y 1
expect_error "-e directory without config.json" "config.json" --dry-run -e golden/tiny_hf
expect_error "-e directory, head_dim 8 on the GPU" "head_dim" -e golden/tiny_hf/bf16
expect_error "negative sample length" "-g" --dry-run -g -5
expect_error "non-numeric sample interval" "-s" --dry-run -s often
expect_error "negative temperature" "--temperature" --dry-run --temperature -1
expect_error "top-p above 1" "--top-p" --dry-run --top-p 1.5
expect_output "dry run of a Hugging Face directory (reads config.json)" "^MST plan: fits a card" --dry-run -e golden/tiny_hf/bf16 -T 64
expect_output "--help lists --export" " --export DIR" --help

# training over many steps (issue 11)
expect_error "-d not a multiple of B x T" "multiple of B x T" --dry-run -e test-tiny -B 2 -T 64 -d 200
expect_error "non-numeric -d" "-d" --dry-run -d lots
expect_error "non-finite limit 0" "--nonfinite-limit" --dry-run --nonfinite-limit 0
expect_error "-L into a missing directory (before any GPU use)" "-L" -e test-tiny -T 64 -L /nonexistent/dir/log.jsonl
expect_output "dry run shows the held gradients' pinned host memory" "^\| held gradients, host +\| 8030261248 x 4 +\| +0.000 \| +29.915 \|" --dry-run -e llama3-8b -T 60000

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
