#!/usr/bin/env bash
# Command-line tests of ./train_llama that need no GPU: bad flags and impossible configs give exactly
# one line, "error: ..." naming the flag, and a nonzero exit; --dry-run and --max-T work without a GPU.
# TRAIN_LLAMA, TOKENIZE and MST_HF name other builds of the programs (make test_sanitized: the sanitizer builds).
set -u
cd "$(dirname "$0")/.."
passed=0; failed=0; skipped=0
train_llama=${TRAIN_LLAMA:-./train_llama} tokenize=${TOKENIZE:-./tokenize} mst_hf=${MST_HF:-./mst_hf}

# expect_tool_error NAME WORD COMMAND...: one output line, starting "error:", containing WORD, exit status 1
expect_tool_error() {
    local name=$1 word=$2; shift 2
    local output rc lines
    output=$("$@" 2>&1 < /dev/null); rc=$?
    lines=$(printf '%s' "$output" | grep -c '')
    if [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ] && [[ "$output" == error:* ]] && [[ "$output" == *"$word"* ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $name: exit $rc, $lines lines: $output"
    fi
}
# expect_error NAME WORD ARGS...: the same for ./train_llama ARGS
expect_error() { local name=$1 word=$2; shift 2; expect_tool_error "$name" "$word" "$train_llama" "$@"; }

# expect_match SUCCEEDS NAME PATTERN ARGS...: a line matching the extended regex PATTERN, and exit 0 when
# SUCCEEDS is 1, nonzero when it is 0
expect_match() {
    local succeeds=$1 name=$2 pattern=$3; shift 3
    local output rc
    output=$("$train_llama" "$@" 2>&1); rc=$?
    if [ $((rc == 0)) -eq "$succeeds" ] && printf '%s\n' "$output" | grep -Eq "$pattern"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $name: exit $rc, no line matching /$pattern/ in:"; printf '%s\n' "$output" | head -n 40
    fi
}
# expect_output NAME PATTERN ARGS...: exit 0 and a matching line
expect_output() { expect_match 1 "$@"; }
# expect_refusal NAME PATTERN ARGS...: a nonzero exit (the run would not start) and a matching line
expect_refusal() { expect_match 0 "$@"; }


scratch=$(mktemp -d /tmp/test_cli.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

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
expect_error "unknown attention kernel" "--attention" --dry-run --attention flash
expect_error "attention self-test not 0 or 1" "--attention-selftest" --dry-run --attention-selftest 2
expect_error "non-numeric gpu memory" "--gpu-mem" --dry-run --gpu-mem lots
expect_error "plan larger than the card" "GiB" -e llama3-8b -T 60000 -m 1 -M 1 -r 0 --gpu-mem 80

expect_output "dry run: 8b at 60000 fits 80 GB" "^MST plan: fits a card of 80.0 GiB" --dry-run -e llama3-8b -T 60000 --gpu-mem 80
expect_output "dry run: the standard plan of 8b at 60000 does not" "^standard plan .*: does not fit a card of 80.0 GiB" --dry-run -e llama3-8b -T 60000 --gpu-mem 80
expect_output "dry run prints the plan table" "LM-head logits .*4000 x 128256 x 2" --dry-run -e llama3-8b -T 60000
expect_refusal "dry run of llama3-70b (plan only): the plan, and a nonzero exit" "^MST plan: does not fit" --dry-run -e llama3-70b -T 8192
expect_output "--max-T for an 80 GB card" "^longest T on a card of 80.0 GiB and 120.0 GiB of pinned host memory \(B=1\): [0-9]{6,} with these options \(-f 1: [^;]*; (--held-gradients fp32: [^;]*; )?--state-offload 1: [^;]*; (--attention-blocks [0-9]+: [^;]*; )?--offload turned on [^;]*; " --dry-run -e llama3-8b --gpu-mem 80 --max-T
expect_output "--max-T with --offload 0 stays on the card, in segments" "^longest T on a card of 80.0 GiB .*: [0-9]{6} with these options \(-f 1: [^;]*; --held-gradients fp32: [^;]*; --state-offload 1: [^;]*; (--attention-blocks [0-9]+: [^;]*; )?--segment [0-9]+: [^;]*; --keep-attention 0: [^;]*\), " --dry-run -e llama3-8b --gpu-mem 80 --offload 0 --max-T
expect_error "non-numeric host memory" "--host-mem" --dry-run --host-mem lots
expect_error "negative host memory" "--host-mem" --dry-run --host-mem -3
expect_error "zero host memory" "--host-mem" --dry-run --host-mem 0
expect_error "offload not 0 or 1" "--offload" --dry-run --offload 2
expect_error "keep-attention not 0 or 1" "--keep-attention" --dry-run --keep-attention 2
expect_error "keep-attention without recomputation" "--keep-attention 1: needs -r 1" --dry-run -r 0 --keep-attention 1
expect_error "negative segment" "--segment" --dry-run --segment -1
expect_error "state-offload not 0 or 1" "--state-offload" --dry-run --state-offload 2
expect_error "state-offload with --dp" "--state-offload 1 with --sp/--dp" --dry-run --dp 2 --state-offload 1
expect_output "dry run: automatic state offload on where only it fits, named, its PCIe bytes" "^PCIe per step: .*; of each, AdamW m and v 29.9 GiB" --dry-run --random-tokens -e llama3-8b -T 400000 --gpu-mem 80 --host-mem 120
expect_output "dry run: automatic state offload named" "^MST plan: fits .*--state-offload 1: the plan fits only with AdamW m and v in pinned host memory" --dry-run --random-tokens -e llama3-8b -T 400000 --gpu-mem 80 --host-mem 120
expect_refusal "dry run: --state-offload 0 that does not fit is refused, --state-offload 1 named" "^MST plan: does not fit .*--state-offload 1: fits" --dry-run --random-tokens -e llama3-8b -T 700000 --gpu-mem 80 --host-mem 120 --state-offload 0
expect_output "dry run: segments with offload, checkpoints 0, 4, .., 24 in the host column" "^\| layer inputs, host +\| 7 x 200000 x 4096 x 2 +\| +0.000 \| +10.681 \|" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --segment 4 --offload 1
expect_output "dry run: segments with offload, 2 staging and 3 shared buffers on the card" "^\| layer inputs \(checkpoints\) +\| 5 x 200000 x 4096 x 2 " --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --segment 4 --offload 1
expect_output "dry run: segments with offload named" "^ +checkpoints inputs 0, 4, \.\., 24 in pinned host memory in segments of 4 layers \(one input in 4 kept; 24 layers' forward again per step\)," --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --segment 4 --offload 1
expect_error "segment with keep-attention" "--segment 2 with --keep-attention 1" --dry-run --segment 2 --keep-attention 1
expect_error "segment without recomputation" "--segment 2: needs -r 1" --dry-run --segment 2 -r 0
expect_error "segment with sequence parallelism" "--segment 2 with --sp/--dp: not supported yet" --dry-run --segment 2 --offload 1 --sp 2
expect_output "dry run: segment checkpoints, their inputs and extra forwards" "^\| layer inputs \(checkpoints\) +\| 12 x 200000 x 4096 x 2 " --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --segment 4
expect_output "dry run: the extra forwards named" "in segments of 4 layers \(one input in 4 kept; 24 layers' forward again per step\)" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --segment 4
expect_output "--max-T: automatic segments on 139 GiB where the host binds, and why" "^longest T on a card of 139.0 GiB .*--offload turned on for the segment checkpoints: the plan needs it; --segment [0-9]+: the plan fits only with segment checkpoints" --dry-run -e llama3-8b --gpu-mem 139 --host-mem 60 --max-T
expect_output "--max-T on 139 GiB + 120 GiB: AdamW state, attention blocks and segments of 4 offloaded" "^longest T on a card of 139.0 GiB and 120.0 GiB .*: 1320693 with these options \(.*--state-offload 1: .*--attention-blocks 256: .*--offload turned on for the segment checkpoints: the plan needs it; --segment 4: " --dry-run -e llama3-8b --gpu-mem 139 --host-mem 120 --max-T
expect_output "dry run prints device and host columns" "^\| region .*\| device GiB \| +host GiB \|" --dry-run -e llama3-8b -T 60000
expect_output "dry run: offloaded checkpoints in the host column" "^\| layer inputs, host +\| 31 x 200000 x 4096 x 2 +\| +0.000 \| +47.302 \|" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 120 --offload 1
expect_output "dry run: PCIe bytes (L - 1 checkpoints and the held gradients, each way)" "^PCIe per step: 62.3 GiB to the host, 62.3 GiB back, on the copy stream beside the compute" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 120 --offload 1 --keep-attention 0
expect_output "dry run: automatic offload says so" "^MST plan: fits a card of 80.0 GiB and 120.0 GiB of pinned host memory .*--offload turned on for layers 0-26: the plan needs it" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 120
expect_output "dry run: kept attention outputs in the host column" "^\| attention outputs, host +\| 30 x 60000 x \(4096 x 2 \+ 32 x 4\) +\| +0.000 \| +13.947 \|" --dry-run --random-tokens -e llama3-8b -T 60000 --gpu-mem 80 --host-mem 120
expect_output "dry run: automatic keep-attention on, and why" "^MST plan: fits .*--keep-attention 1: the plan fits with the attention outputs kept" --dry-run --random-tokens -e llama3-8b -T 60000 --gpu-mem 80 --host-mem 120
expect_output "dry run: automatic keep-attention off where it would not fit, and why" "^MST plan: fits .*--keep-attention 0: the plan would not fit with the attention outputs kept" --dry-run --random-tokens -e llama3-8b -T 300000 --gpu-mem 80 --host-mem 120
expect_refusal "dry run: --keep-attention 1 that does not fit is refused, --keep-attention 0 named" "^MST plan: does not fit .*--keep-attention 0: fits" --dry-run --random-tokens -e llama3-8b -T 300000 --gpu-mem 80 --host-mem 120 --keep-attention 1
expect_error "negative attention blocks" "--attention-blocks" --dry-run --attention-blocks -1
expect_error "attention blocks not a number" "--attention-blocks" --dry-run --attention-blocks x
expect_error "attention blocks beyond T" "--attention-blocks 9: more blocks than the 8 tokens of -T" --dry-run -T 8 --attention-blocks 9
expect_error "attention blocks without recomputation" "--attention-blocks 4 with -r 0: not supported yet" --dry-run -r 0 --attention-blocks 4
expect_error "attention blocks with keep-attention" "--attention-blocks 4 with --keep-attention 1: not supported yet" --dry-run --attention-blocks 4 --keep-attention 1
expect_error "attention blocks with sp" "--attention-blocks 4 with --sp/--dp: not supported yet" --dry-run --sp 2 --attention-blocks 4
expect_output "dry run: attention blocks, their regions" "^\| q, k, v +\| 50128 x 4096 x 2 \+ 200000 x 2048 x 2 " --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --attention-blocks 4
expect_output "dry run: attention blocks named" "attention in 4 query blocks of 50000 tokens \(one more attention forward per layer\)" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 139 --attention-blocks 4
expect_output "--max-T: automatic attention blocks on 80 GiB, and why" "^longest T on a card of 80.0 GiB .*--attention-blocks [0-9]+: the plan fits only with attention in [0-9]+ query blocks" --dry-run -e llama3-8b --gpu-mem 80 --max-T
expect_refusal "dry run: too little host memory for the checkpoints" "^MST plan: does not fit .*short by 0.0 GiB on the card, 52.3 GiB on the host" --dry-run --random-tokens -e llama3-8b -T 200000 --gpu-mem 80 --host-mem 10

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
expect_error "dry run of a Hugging Face directory whose head_dim the GPU attention lacks" "head_dim" --dry-run -e golden/tiny_hf/bf16 -T 64
expect_output "--help lists --export" " --export DIR" --help

# document masking (issue 18): the plan holds the document starts only when attention uses them
expect_error "--doc-mask not 0 or 1" "--doc-mask" --dry-run --doc-mask 2
expect_output "--help lists --doc-mask" " --doc-mask 0\|1" --help
expect_output "dry run on shards plans the document starts" "^\| tokens +\| \(6 x 60000 \+ 1\) x 4 " --dry-run -e llama3-8b -T 60000
expect_output "dry run with --random-tokens plans none" "^\| tokens +\| \(5 x 60000 \+ 1\) x 4 " --dry-run --random-tokens -e llama3-8b -T 60000
expect_output "--doc-mask 0 on shards plans none" "^\| tokens +\| \(5 x 60000 \+ 1\) x 4 " --dry-run --doc-mask 0 -e llama3-8b -T 60000

# training over many steps (issue 11)
expect_error "-d not a multiple of B x T" "multiple of B x T" --dry-run -e test-tiny -B 2 -T 64 -d 200
expect_error "non-numeric -d" "-d" --dry-run -d lots
expect_error "non-finite limit 0" "--nonfinite-limit" --dry-run --nonfinite-limit 0
expect_error "negative --comm-timeout" "--comm-timeout" --dry-run --comm-timeout -1
expect_error "non-numeric --comm-timeout" "--comm-timeout" --dry-run --comm-timeout soon
expect_error "-L where no directory can be made (before any GPU use)" "/etc/hostname" -e test-tiny -T 64 -L /etc/hostname/dir/log.jsonl
expect_output "dry run shows the held gradients' pinned host memory (bf16 with -a bf16)" "^\| held gradients, host +\| 8030261248 x 2 +\| +0.000 \| +14.958 \|" --dry-run -e llama3-8b -T 60000
expect_output "dry run: --held-gradients fp32 holds P x 4" "^\| held gradients, host +\| 8030261248 x 4 +\| +0.000 \| +29.915 \|" --dry-run -e llama3-8b -T 60000 --held-gradients fp32
expect_error "--held-gradients not fp32 or bf16" "--held-gradients: must be fp32 or bf16" --dry-run --held-gradients fp16

# preflight (issue 13): everything checkable without a GPU is checked before it, and by --dry-run
hf="$scratch/hf"
"$mst_hf" convert golden/test-tiny.safetensors "$hf" BF16 test-tiny
expect_output "dry run of a Hugging Face directory (config.json and the weights' headers)" "^MST plan: fits a card" --dry-run -e "$hf" -T 64
# hf_variant NAME PYTHON: a copy of the directory with config.json edited by PYTHON (on the dict c)
hf_variant() {
    local dir="$scratch/$1"
    cp -r "$hf" "$dir"
    python3 -c "import json,sys; c=json.load(open(sys.argv[1])); $2; json.dump(c, open(sys.argv[1], 'w'))" "$dir/config.json"
    echo "$dir"
}
expect_error "config: rope_theta 0" "rope_theta" --dry-run -e "$(hf_variant theta0 "c['rope_theta']=0")" -T 64
expect_error "config: rms_norm_eps negative" "rms_norm_eps" --dry-run -e "$(hf_variant eps "c['rms_norm_eps']=-1")" -T 64
expect_error "config: rope_scaling not an object" "not an object" --dry-run -e "$(hf_variant scaling_text "c['rope_scaling']='llama3'")" -T 64
expect_error "config: rope_scaling factor 0" "factor" --dry-run -e "$(hf_variant factor0 "c['rope_scaling']={'rope_type':'llama3','factor':0,'low_freq_factor':1,'high_freq_factor':4,'original_max_position_embeddings':64}")" -T 64
expect_error "config: a layer count that is not whole" "num_hidden_layers" --dry-run -e "$(hf_variant layers "c['num_hidden_layers']=2.5")" -T 64
expect_error "config: head_dim the GPU attention lacks (32)" "head_dim" --dry-run -e "$(hf_variant heads "c['num_attention_heads']=4; c['num_key_value_heads']=2; c.pop('head_dim', None)")" -T 64
weights_cut=$(hf_variant weights_cut "pass"); head -c 100 "$hf/model.safetensors" > "$weights_cut/model.safetensors"
expect_error "weights: a safetensors header cut short" "model.safetensors" --dry-run -e "$weights_cut" -T 64
weights_shape=$(hf_variant weights_shape "c['intermediate_size']=240")
expect_error "weights: a tensor of the wrong shape" "shape" --dry-run -e "$weights_shape" -T 64
expect_error "shards: none match -i" "no shard matches" --dry-run -e test-tiny -T 64 -i "$scratch/none_*.bin"
printf 'not a shard' > "$scratch/bad_000000.bin"
expect_error "shards: a bad header in -j" "bad_000000.bin" --dry-run -e test-tiny -T 64 -v 10 -j "$scratch/bad_*.bin"
expect_error "-o where no directory can be made" "/etc/hostname" --dry-run -e test-tiny -T 64 -o /etc/hostname/checkpoints
expect_error "--export where no directory can be made" "/etc/hostname" --dry-run -e test-tiny -T 64 --export /etc/hostname/hf
expect_error "-k without -o" "-k 5: needs -o" --dry-run -e test-tiny -T 64 -k 5
expect_error "--overwrite without -o" "--overwrite" --dry-run -e test-tiny -T 64 --overwrite 1
expect_error "-s without -g" "-s: samples need -g" --dry-run -e test-tiny -T 64 -s 5
expect_error "an empty -L path" "-L: empty value" --dry-run -e test-tiny -T 64 -L ""
expect_error "an empty -o path" "-o: empty value" --dry-run -e test-tiny -T 64 -o ""
expect_error "--val-batches without -v" "--val-batches: validation needs -v" --dry-run -e test-tiny -T 64 --val-batches 3
mkdir -p "$scratch/taken" && printf 'x' > "$scratch/taken/step_00000004.safetensors"
expect_error "-o holding another run's checkpoints, without -y or --overwrite" "already holds checkpoints" --dry-run -e test-tiny -T 64 -o "$scratch/taken"
expect_error "-y 1 from a file that is not a checkpoint" "step_00000004.safetensors" --dry-run -e test-tiny -T 64 -o "$scratch/taken" -y 1
expect_error "-y 1 from an empty directory" "no checkpoint" --dry-run -e test-tiny -T 64 -o "$scratch/empty_dir" -y 1
expect_output "-o is created (with its parents) by the dry run" "^MST plan: fits" --dry-run -e test-tiny -T 64 -o "$scratch/new/checkpoints"
[ -d "$scratch/new/checkpoints" ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: -o directory not created"; }
expect_error "a model beyond what mst indexes (--config)" "beyond what mst supports" --dry-run --config 2000000000,4096,2,32,8,14336
expect_error "a layer count beyond what mst indexes" "beyond what mst supports" --dry-run --config 1000,128,100000,2,1,256
expect_refusal "a dry run that does not fit exits nonzero" "^MST plan: does not fit" --dry-run --random-tokens -e llama3-8b -T 10000000 --gpu-mem 80 --host-mem 120
expect_error "an error line never echoes control bytes" '\x1b' --dry-run -e "$(printf 'bad\033[31mname')"
long=$(head -c 100000 /dev/zero | tr '\0' 'a')
output=$("$train_llama" --dry-run -e "$long" 2>&1)
[ "${#output}" -lt 500 ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: a 100 kB argument echoed at length ${#output}"; }
# a fresh clone's `make train_llama` prepares the default shards when they are missing
if make -n train_llama DEFAULT_SHARDS="$scratch/missing_000000.bin" 2>&1 | grep -q "dev/data/make_shards.sh"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: make train_llama does not prepare missing shards"
fi
# building without network (issue 21): present data are never deleted nor remade, even by `make -B`.
# expect_plan_keeps_data NAME PATTERN MAKE_ARGS...: `make -n ARGS` (commands printed, none run) has a line
# matching PATTERN and plans no npm, no apt-get, no make_shards.sh and no rm of shards (FORCE_DATA emptied:
# a surrounding `make test FORCE_DATA=1` hands it down)
expect_plan_keeps_data() {
    local name=$1 pattern=$2; shift 2
    local plan rc
    plan=$(make -n "$@" FORCE_DATA= 2>&1); rc=$?
    if [ "$rc" -eq 0 ] && printf '%s\n' "$plan" | grep -Eq "$pattern" &&
       ! printf '%s\n' "$plan" | grep -Eq 'npm |apt-get|make_shards\.sh|rm .*shards'; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); echo "FAIL: $name: make -n $*: exit $rc:"; printf '%s\n' "$plan" | head -n 20
    fi
}
mkdir -p "$scratch/shards" && : > "$scratch/shards/train_000000.bin"
expect_plan_keeps_data "make -B train_llama with the shards present rebuilds only the trainer" "nvcc .* -o train_llama " \
    -B train_llama DEFAULT_SHARDS="$scratch/shards/train_000000.bin"
expect_plan_keeps_data "make data with the shards present keeps them and says how to remake them" "exists: kept .*make data FORCE_DATA=1" \
    data DEFAULT_SHARDS="$scratch/shards/train_000000.bin"
# make_shards.sh replaces the shards only once the new ones pass ./tokenize check: a stand-in tree whose
# ./tokenize writes a shard per "shard" and exits $CHECK_STATUS on "check", and a stand-in bible command
tree="$scratch/tree"
mkdir -p "$tree/dev/data/shards" "$scratch/bin"
cp dev/data/make_shards.sh "$tree/dev/data/"
: > "$tree/dev/data/prepare_corpus.js"
printf '#!/bin/sh\n' > "$scratch/bin/bible"
printf '#!/bin/sh\ncase $1 in\nshard) [ "$2" = -n ] && shift 2; echo new > "$2_000000.bin" ;;\ncheck) exit "${CHECK_STATUS:-0}" ;;\nesac\n' > "$tree/tokenize"
chmod +x "$scratch/bin/bible" "$tree/tokenize"
echo old > "$tree/dev/data/shards/train_000000.bin"
# shards_after NAME STATUS CONTENT: make_shards.sh with check exiting STATUS, then train_000000.bin holds CONTENT
shards_after() {
    local output rc
    output=$(CHECK_STATUS=$2 PATH="$scratch/bin:$PATH" bash "$tree/dev/data/make_shards.sh" 2>&1); rc=$?
    if [ $((rc == 0)) -eq $(($2 == 0)) ] && [ "$(cat "$tree/dev/data/shards/train_000000.bin")" = "$3" ] &&
       ! ls -A "$tree/dev/data" | grep -q '^\.shards'; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); echo "FAIL: $1: exit $rc, train_000000.bin: $(cat "$tree/dev/data/shards/train_000000.bin"), dev/data: $(ls -A "$tree/dev/data")"
        printf '%s\n' "$output" | head -n 10
    fi
}
shards_after "make_shards.sh: a failed check leaves the old shards, and no temporary directory" 1 old
shards_after "make_shards.sh: checked shards replace the old ones, and no temporary directory" 0 new
# the newcomer's command (make train_llama has made the shards): on a machine without a GPU it must get
# through every check to the GPU's absence; with a GPU it would train llama3-8b, which is not this test's job
if nvidia-smi -L > /dev/null 2>&1; then
    skipped=$((skipped + 1)); echo "SKIP: ./train_llama -T 60000 reaches the GPU (a GPU is present)"
elif [[ "$train_llama" == *_cpu* ]]; then
    skipped=$((skipped + 2)); echo "SKIP: $train_llama -T 60000 and the no-GPU line (the CPU device is a GPU to it)"
else
    expect_error "./train_llama -T 60000 passes preflight and stops at the missing GPU" "no usable GPU" -T 60000
    # the line names the cause (issue 21): the runtime's own words say "driver insufficient" for no driver
    if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
        expect_error "no GPU: the cause named (a driver is installed)" "NVIDIA driver" -e test-tiny -T 64
    else
        expect_error "no GPU: no driver installed is said so" "no NVIDIA driver: libcuda.so.1 is not installed" -e test-tiny -T 64
    fi
fi

# numbers parsed into the type that stores them, range checked there (issue 21): no wrap, no overflow to
# inf or underflow to 0 in a float, no '+', spaces or hex
expect_error "-l beyond a float" '-l: must be a non-negative number (got "1e39")' --dry-run -l 1e39
expect_error "--top-p that a float rounds to 0" "--top-p: must be a probability" --dry-run --top-p 1e-46
expect_error "-l nan" "-l:" --dry-run -l nan
expect_error "--temperature in hex" "--temperature:" --dry-run --temperature 0x1p3
expect_error "--config wrapping an int (4294967800 is not 504)" "--config: must be six positive integers" --dry-run --config 4294967800,128,2,2,1,232
expect_error "--config with a seventh value" "--config:" --dry-run --config 504,128,2,2,1,232,5
expect_error "-T with a leading +" '-T: must be a positive integer (got "+64")' --dry-run -T +64
expect_error "-T with a leading space" "-T:" --dry-run -T " 64"
expect_error "-m beyond an int" "-m:" --dry-run -m 2147483648
expect_error "-d: more micro-batches than an int counts" "more than 2147483647 micro-batches" --dry-run -e test-tiny -T 64 -d 9223372036854775744
expect_error "--gpu-mem beyond what bytes hold" "--gpu-mem:" --dry-run --gpu-mem 1e300
expect_error "--seed beyond 63 bits" "--seed:" --dry-run --seed 18446744073709551616
expect_error "config: a float field beyond a float" "high_freq_factor" --dry-run -e "$(hf_variant high_freq "c['rope_scaling']={'rope_type':'llama3','factor':8,'low_freq_factor':1,'high_freq_factor':1e39,'original_max_position_embeddings':64}")" -T 64
expect_error "config: rms_norm_eps that a float rounds to 0" "rms_norm_eps" --dry-run -e "$(hf_variant eps_tiny "c['rms_norm_eps']=1e-50")" -T 64
expect_tool_error "tokenize: -T with a leading +" "-T" "$tokenize" check -T +16 "$scratch/x"
expect_tool_error "tokenize decode: an id with a leading +" "'+5' is not a token id" sh -c "echo '1 +5' | $tokenize decode"
expect_tool_error "mst_hf generate: N with a leading +" "N '+3'" "$mst_hf" generate "$hf" +3 1
expect_tool_error "mst_hf logits: a token in hex" "token '0x10'" "$mst_hf" logits "$hf" "$scratch/logits.bin" 0x10

# --help lists every flag README's flag tables document (issue 21)
readme_flags=$(grep -E '^\| `-' README.md | sed 's/\\|/ /g' | cut -d'|' -f2 | grep -oE -- '(^|[ `(])--?[a-zA-Z][-a-zA-Z]*' | grep -oE -- '--?[a-zA-Z][-a-zA-Z]*' | sort -u)
help=$("$train_llama" --help)
missing=$(for flag in $readme_flags; do printf '%s\n' "$help" | grep -qE -- "(^|[ ,])$flag([ ,;)]|$)" || printf ' %s' "$flag"; done)
[ "$(printf '%s\n' "$readme_flags" | grep -c '')" -ge 35 ] && [ -z "$missing" ] && passed=$((passed + 1)) ||
    { failed=$((failed + 1)); echo "FAIL: --help lacks README's flags:$missing"; }

# sequences across shards (issue 21): shards shorter than T make one corpus; a corpus shorter than T + 1
# is named with its size and --random-tokens
# tiny_shards PREFIX N...: shards of N tokens each (ids below 504, test-tiny's vocabulary)
tiny_shards() {
    python3 -c "
import struct, sys
for i, n in enumerate(map(int, sys.argv[2:])):
    open('%s_%06d.bin' % (sys.argv[1], i), 'wb').write(struct.pack('<256i', 20240801, 7, n, *[0] * 253) + struct.pack('<%dI' % n, *[(7 * t) % 504 for t in range(n)]))
" "$@"
}
tiny_shards "$scratch/tiny" 30 0 41 25
expect_output "shards shorter than T: one window spans them all" "^MST plan: fits" --dry-run -e test-tiny -T 64 -i "$scratch/tiny_*.bin"
expect_output "shards shorter than T: -B 2 from 96 tokens" "^MST plan: fits" --dry-run -e test-tiny -T 40 -B 2 -i "$scratch/tiny_*.bin"
expect_error "a corpus shorter than T + 1: its size" "the corpus holds 96 tokens in 4 shard(s): 0 windows of T + 1 = 129 tokens" --dry-run -e test-tiny -T 128 -i "$scratch/tiny_*.bin"
expect_error "a corpus shorter than T + 1: --random-tokens suggested" "--random-tokens" --dry-run -e test-tiny -T 1000 -i "$scratch/tiny_*.bin"
expect_tool_error "tokenize check: too few windows for B x ranks" "fewer than B x ranks" "$tokenize" check -T 96 -v 504 "$scratch/tiny_*.bin"
if output=$("$tokenize" check -T 64 -v 504 "$scratch/tiny_*.bin" 2>&1) && [[ "$output" == *"1 windows of T + 1 = 65"* ]]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: tokenize check reads a window across 4 shards: $output"
fi

# the checkpoint a dry run with -y 1 would resume is read whole: checksums and field ranges (issue 21).
# A checkpoint from the CPU device's trainer (2 steps of test-tiny), then copies with one thing wrong.
maker=${TRAIN_LLAMA_CPU:-./train_llama_cpu}
resume=(--dry-run -e test-tiny -T 64 -n 2 --random-tokens -y 1)
if [ ! -x "$maker" ]; then
    skipped=$((skipped + 11)); echo "SKIP: -y 1 checkpoint checks ($maker not built: make train_llama_cpu)"
elif ! "$maker" -e test-tiny -T 64 -n 2 --random-tokens -o "$scratch/run" > "$scratch/run.log" 2>&1; then
    failed=$((failed + 1)); echo "FAIL: $maker wrote no checkpoint:"; tail -n 5 "$scratch/run.log"
else
    good="$scratch/run/step_00000002.safetensors"
    # checkpoint_variant NAME PYTHON: a directory holding the checkpoint with its bytes b (a bytearray) or
    # its metadata m (a dict; its checksum then recomputed, as checkpoint.h computes it) edited by PYTHON
    checkpoint_variant() {
        mkdir -p "$scratch/$1"
        python3 -c "
import json, struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
header = json.loads(b[8:8 + n])
m = header['__metadata__']
$2
text = ''.join('%s=%s\n' % kv for kv in sorted(m.items()) if kv[0] != 'checksum.metadata').encode()
h = 0xcbf29ce484222325
for c in text: h = ((h ^ c) * 0x100000001b3) % (1 << 64)
m['checksum.metadata'] = str(h)
new = json.dumps(header, separators=(',', ':')).encode()
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(new)) + new + b[8 + n:])
" "$good" "$scratch/$1/step_00000002.safetensors"
        echo "$scratch/$1"
    }
    expect_output "-y 1: the intact checkpoint passes the dry run" "^MST plan: fits" "${resume[@]}" -o "$(checkpoint_variant same "pass")"
    expect_error "-y 1: a flipped byte in an array's data, before any GPU use" "does not match its checksum" "${resume[@]}" -o "$(checkpoint_variant flipped "b[-100] ^= 1")"
    expect_error "-y 1: a cut checkpoint" "step_00000002.safetensors" "${resume[@]}" -o "$(checkpoint_variant cut "b[:] = b[:-4]")"
    expect_error "-y 1: a negative step under a valid checksum" "bad step '-1'" "${resume[@]}" -o "$(checkpoint_variant negative "m['step'] = '-1'")"
    expect_error "-y 1: a step beyond -n under a valid checksum" "its step 7 is beyond this run's -n 2" "${resume[@]}" -o "$(checkpoint_variant beyond "m['step'] = '7'")"
    expect_error "-y 1: a non-numeric AdamW count" "bad adamw_updates '2x'" "${resume[@]}" -o "$(checkpoint_variant updates "m['adamw_updates'] = '2x'")"
    expect_error "-y 1: more AdamW updates than steps" "bad adamw_updates '3'" "${resume[@]}" -o "$(checkpoint_variant more_updates "m['adamw_updates'] = '3'")"
    # the data loader's position, from shards: 96 tokens make 2 batches of T = 32 in an epoch
    shards=(-e test-tiny -T 32 -n 2 -i "$scratch/tiny_*.bin")
    if "$maker" "${shards[@]}" -o "$scratch/shard_run" > "$scratch/shard_run.log" 2>&1; then
        good="$scratch/shard_run/step_00000002.safetensors"
        loader_field() { echo "d = bytearray.fromhex(m['dataloader']); d[$1:$(($1 + 8))] = struct.pack('<q', $2); m['dataloader'] = d.hex()"; }
        expect_output "-y 1 from shards: the intact checkpoint passes the dry run" "^MST plan: fits" --dry-run "${shards[@]}" -y 1 -o "$(checkpoint_variant shard_same "pass")"
        expect_error "-y 1 from shards: a batch beyond the epoch's" "batch 99 (of 2 per epoch here)" --dry-run "${shards[@]}" -y 1 -o "$(checkpoint_variant batch "$(loader_field 8 99)")"
        expect_error "-y 1 from shards: a negative epoch" "impossible dataloader state" --dry-run "${shards[@]}" -y 1 -o "$(checkpoint_variant epoch "$(loader_field 0 -3)")"
    else
        failed=$((failed + 1)); echo "FAIL: $maker wrote no checkpoint from shards:"; tail -n 5 "$scratch/shard_run.log"
    fi
    expect_error "-y 1, a real run: a step beyond -n refused before any GPU use" "its step 7 is beyond this run's -n 2" "${resume[@]:1}" -o "$scratch/beyond"
fi

# the tools: one error line, exit status 1, no abort
expect_tool_error "mst_hf: no arguments" "usage" "$mst_hf"
expect_tool_error "mst_hf generate: negative N" "N '-5'" "$mst_hf" generate "$hf" -5 1
expect_tool_error "mst_hf generate: absurd N" "N '99999999999999'" "$mst_hf" generate "$hf" 99999999999999 1
expect_tool_error "mst_hf logits: an empty token" "token ''" "$mst_hf" logits "$hf" "$scratch/logits.bin" ""
expect_tool_error "mst_hf logits: a token id out of range" "not an id" "$mst_hf" logits "$hf" "$scratch/logits.bin" 1 -3
expect_tool_error "tokenize: no command" "no command" "$tokenize"
expect_tool_error "tokenize: negative -n" "-n" "$tokenize" shard -n -5 "$scratch/x" /etc/hostname
expect_tool_error "tokenize: absurd -n" "-n" "$tokenize" shard -n 99999999999999 "$scratch/x" /etc/hostname
expect_tool_error "tokenize: non-numeric -T" "-T" "$tokenize" check -T many "$scratch/x"
expect_tool_error "tokenize: a control byte in the command" '\x07' "$tokenize" "$(printf 'en\acode')"

# files (issue 21): no write through a link, no output lost, exports atomic and whole, special files
# refused without hanging (every command under `timeout`: a hang is a failure, not a stuck test), and
# the order of --overwrite's removals and the resumed log.
files="$scratch/files"
mkdir -p "$files"
echo "the victim" > "$files/victim"
mkdir -p "$files/victim_dir" && echo "the victim" > "$files/victim_dir/keep"
# unchanged NAME: the link's target still holds what it held
unchanged() {
    if [ "$(cat "$files/victim")" = "the victim" ] && [ "$(ls -A "$files/victim_dir")" = keep ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); echo "FAIL: $1: a link's target was written"
    fi
}
# holds NAME DIR ENTRIES: DIR's entries (dot files included), sorted and joined by spaces, are ENTRIES
holds() {
    local entries
    entries=$(ls -A "$2" 2>&1 | LC_ALL=C sort | tr '\n' ' ')
    if [ "$entries" = "$3 " ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $1: $2 holds: $entries"; fi
}
t="timeout 60"
# with_file_limit BYTES COMMAND...: COMMAND with writes to regular files beyond BYTES failing (EFBIG, as a
# full disk's ENOSPC; SIGXFSZ ignored so the write returns its error)
with_file_limit() {
    python3 -c 'import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
os.execvp(sys.argv[2], sys.argv[2:])' "$@"
}

# 1. links: the dry run's write probe in -o, -L, --export, the checkpoint's temporary name, the tools' outputs
mkdir -p "$files/ckpt" && ln -s "$files/victim" "$files/ckpt/.mst_write_check"
expect_output "dry run: a link planted at -o's write probe" "^MST plan: fits" --dry-run -e test-tiny -T 64 -o "$files/ckpt"
unchanged "dry run: a link planted at -o's write probe"
holds "the dry run's write probe leaves nothing in -o" "$files/ckpt" ".mst_write_check"
ln -s "$files/victim" "$files/log_link.jsonl"
expect_error "-L a symbolic link" "log_link.jsonl: is a symbolic link" --dry-run -e test-tiny -T 64 -L "$files/log_link.jsonl"
ln -s "$files/victim_dir" "$files/export_link"
expect_error "--export a symbolic link" "export_link: is a symbolic link" --dry-run -e test-tiny -T 64 --export "$files/export_link"
ln -s "$files/victim_dir" "$files/ckpt_link"
expect_error "-o a symbolic link" "ckpt_link: is a symbolic link" --dry-run -e test-tiny -T 64 -o "$files/ckpt_link"
ln -s "$files/victim" "$files/logits_link.bin"
expect_tool_error "mst_hf logits: OUT a symbolic link" "logits_link.bin: is a symbolic link" ./mst_hf logits "$hf" "$files/logits_link.bin" 1 2
echo "a document" > "$files/doc.txt"
ln -s "$files/victim" "$files/shard_000000.bin"
expect_tool_error "tokenize shard: a symbolic link at a shard's name" "shard_000000.bin: is a symbolic link" ./tokenize shard "$files/shard" "$files/doc.txt"
unchanged "links at -L, --export, -o and the tools' outputs"

# 2. output that cannot be written: stdout on /dev/full, and /dev/full (a device) given as a file
expect_tool_error "tokenize encode > /dev/full" "<stdout>: write failed" sh -c 'echo "Hello world!" | ./tokenize encode > /dev/full'
expect_tool_error "tokenize decode > /dev/full" "<stdout>: write failed" sh -c 'echo "9906 1917" | ./tokenize decode > /dev/full'
expect_tool_error "tokenize check > /dev/full" "<stdout>: write failed" sh -c "./tokenize check -T 8 'dev/data/shards/val_*.bin' > /dev/full"
expect_tool_error "mst_hf generate > /dev/full" "<stdout>: write failed" sh -c "./mst_hf generate '$hf' 3 1 2 > /dev/full"
expect_tool_error "train_llama --dry-run > /dev/full" "<stdout>: write failed" sh -c './train_llama --dry-run -e test-tiny -T 64 --random-tokens > /dev/full'
expect_tool_error "train_llama --help > /dev/full" "<stdout>: write failed" sh -c './train_llama --help > /dev/full'
expect_tool_error "mst_hf logits: OUT /dev/full" "/dev/full: is a device" ./mst_hf logits "$hf" /dev/full 1 2
expect_error "dry run: -L /dev/full" "/dev/full: is a device" --dry-run -e test-tiny -T 64 --random-tokens -L /dev/full

# 3. exports: into a directory holding a sharded model, refused; with --overwrite-export 1 replaced
# whole (no old shard or index beside the new weights); over its own input on a full disk (a file size
# limit), the input intact
cp -r golden/tiny_hf/sharded "$files/sharded"
expect_tool_error "mst_hf convert into a sharded model's directory" "already holds files" ./mst_hf convert "$hf" "$files/sharded" BF16
expect_error "dry run: --export into a sharded model's directory" "--overwrite-export 1 replaces it" --dry-run -e test-tiny -T 64 --random-tokens --export "$files/sharded"
expect_output "dry run: --export into it with --overwrite-export 1" "^MST plan: fits" --dry-run -e test-tiny -T 64 --random-tokens --export "$files/sharded" --overwrite-export 1
expect_error "--overwrite-export without --export" "--overwrite-export 1: needs --export" --dry-run -e test-tiny -T 64 --overwrite-export 1
$t ./mst_hf convert --overwrite-export 1 "$hf" "$files/sharded" BF16
holds "mst_hf convert --overwrite-export 1 replaces a sharded model whole" "$files/sharded" "config.json model.safetensors"
holds "an export leaves no temporary directory beside its target" "$files" "ckpt ckpt_link doc.txt export_link log_link.jsonl logits_link.bin shard_000000.bin sharded victim victim_dir"
cp "$hf/model.safetensors" "$files/input_weights"
with_file_limit 200000 $t ./mst_hf convert --overwrite-export 1 "$hf" "$hf" F32 > /dev/null 2>&1
if [ $? -eq 1 ] && cmp -s "$hf/model.safetensors" "$files/input_weights" && [ -z "$(ls -A "$scratch" | grep '^\.hf\.tmp')" ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: an export over its input that fails (file size limit) must leave the input intact"
fi
# succeeds NAME COMMAND...: exit status 0
succeeds() { local name=$1; shift; if "$@" > /dev/null 2>&1; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $name"; fi; }
succeeds "the replaced directory imports" $t ./mst_hf generate "$files/sharded" 2 1

# 5. special files where a regular file is expected: refused at once (under `timeout`: a program that
# blocks opening a FIFO fails the test instead of hanging it)
mkfifo "$files/fifo_000000.bin" "$files/fifo.jsonl"
mkdir -p "$files/fifo_ckpt" "$files/fifo_hf" "$files/fifo_config"
mkfifo "$files/fifo_ckpt/step_00000002.safetensors" "$files/fifo_hf/model.safetensors" "$files/fifo_config/config.json"
cp "$hf/config.json" "$files/fifo_hf/"
# expect_prompt_error NAME WORD ARGS...: expect_error for ./train_llama ARGS under a 20 s timeout
expect_prompt_error() { local name=$1 word=$2; shift 2; expect_tool_error "$name" "$word" timeout 20 ./train_llama "$@"; }
expect_prompt_error "a FIFO as a shard" "fifo_000000.bin: is a FIFO" --dry-run -e test-tiny -T 64 -i "$files/fifo_*.bin"
expect_prompt_error "a FIFO as the log" "fifo.jsonl: is a FIFO" --dry-run -e test-tiny -T 64 --random-tokens -L "$files/fifo.jsonl"
expect_prompt_error "a FIFO as the checkpoint to resume" "step_00000002.safetensors: is a FIFO" --dry-run -e test-tiny -T 64 --random-tokens -o "$files/fifo_ckpt" -y 1
expect_prompt_error "a FIFO as the Hugging Face weights" "model.safetensors: is a FIFO" --dry-run -e "$files/fifo_hf" -T 64 --random-tokens
expect_prompt_error "a FIFO as config.json" "config.json: is a FIFO" --dry-run -e "$files/fifo_config" -T 64 --random-tokens
expect_prompt_error "a directory as the log" "is a directory" --dry-run -e test-tiny -T 64 --random-tokens -L "$files/ckpt"
expect_tool_error "tokenize: a FIFO as tokenizer.model" "fifo.jsonl: is a FIFO" timeout 20 ./tokenize encode -m "$files/fifo.jsonl"
expect_tool_error "tokenize check: a FIFO as a shard" "fifo_000000.bin: is a FIFO" timeout 20 ./tokenize check "$files/fifo_*.bin"

# 6. real runs on the CPU device (test-tiny, T 16, random tokens: ~2 s a step on 2 cores)
run_cpu() { $t ./train_llama_cpu -e test-tiny --random-tokens -T 16 -v 1 --val-batches 1 "$@"; }
mkdir -p "$files/run" && ln -s "$files/victim" "$files/run/.step_00000001.safetensors.tmp"
cp -r golden/tiny_hf/sharded "$files/run_export"
if run_cpu -n 2 -k 1 -o "$files/run" -L "$files/run.jsonl" --export "$files/run_export" --overwrite-export 1 > "$files/run.out" 2>&1; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: a 2-step run with checkpoints, log and export:"; tail -n 5 "$files/run.out"
fi
unchanged "a link planted at a checkpoint's temporary name"
holds "checkpoints written, the planted link removed as a leftover" "$files/run" "step_00000001.safetensors step_00000002.safetensors"
holds "--export --overwrite-export 1 replaces a sharded model whole" "$files/run_export" "config.json model.safetensors"
# resumed: step 2's checkpoint lost, -y 1 continues from step 1 and its log keeps each record once
rm "$files/run/step_00000002.safetensors"
run_cpu -n 2 -k 1 -o "$files/run" -L "$files/run.jsonl" -y 1 > "$files/resume.out" 2>&1
# log_is NAME LOG RECORDS: every line of LOG is JSON, and its records are RECORDS ("step" or "val" and
# the step, in order)
log_is() {
    local records
    records=$(python3 -c 'import json, sys
print(" ".join(("val" if "val_loss" in r else "step") + str(r["step"]) for r in map(json.loads, open(sys.argv[1]))))' "$2" 2>&1)
    if [ "$records" = "$3" ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $1: $records"; fi
}
log_is "a resumed log has each step once" "$files/run.jsonl" "val0 step1 val1 step2 val2"
# --overwrite 1: a new run that stops before its first checkpoint (a file size limit) leaves the earlier
# run's checkpoints; one that writes it removes them
cp "$files/run/step_00000001.safetensors" "$files/earlier_step1"
# (output through a pipe: a file size limit applies to regular files only)
output=$(with_file_limit 200000 $t ./train_llama_cpu -e test-tiny --random-tokens -T 16 -n 1 --seed 7 -o "$files/run" --overwrite 1 2>&1); rc=$?
if [ $rc -eq 1 ] && printf '%s\n' "$output" | grep -q "^error: .*File too large" && cmp -s "$files/run/step_00000001.safetensors" "$files/earlier_step1"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: --overwrite 1: a run whose first checkpoint fails must leave the earlier checkpoints:"; printf '%s\n' "$output" | tail -n 3
fi
holds "--overwrite 1: the earlier run's checkpoints kept until the new run's first" "$files/run" "step_00000001.safetensors step_00000002.safetensors"
# a new run with --overwrite 1 and a learning rate that makes step 2 non-finite: null in its JSON log
run_cpu -n 2 -u 0 -l 1e30 --seed 7 -o "$files/run" --overwrite 1 -L "$files/nan.jsonl" > "$files/overwrite.out" 2>&1
holds "--overwrite 1: the earlier run's checkpoints gone after the new run's" "$files/run" "step_00000002.safetensors"
log_is "a fresh run's log starts anew" "$files/nan.jsonl" "val0 step1 val1 step2 val2"
if grep -q '"grad_norm": null' "$files/nan.jsonl" && ! grep -qi 'nan\|inf' "$files/nan.jsonl"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: a non-finite step logged as null:"; cat "$files/nan.jsonl"
fi
expect_tool_error "a run's stdout on /dev/full stops it at its first step" "<stdout>: write failed" sh -c \
    "timeout 60 ./train_llama_cpu -e test-tiny --random-tokens -T 16 -n 3 > /dev/full"
# the log's own writes checked: a file size limit of 100 bytes stops the run at its first step's record
output=$(with_file_limit 100 $t ./train_llama_cpu -e test-tiny --random-tokens -T 16 -n 1 -L "$files/full.jsonl" 2>&1); rc=$?
if [ $rc -eq 1 ] && [ "$(printf '%s\n' "$output" | grep -c '^error:')" -eq 1 ] &&
   printf '%s\n' "$output" | grep -q '^error: -L: .*full.jsonl: write failed: File too large'; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: a log write that fails must end the run with one error line:"; printf '%s\n' "$output" | tail -n 3
fi
# RoPE v2's and RMSNorm backward v2's start-up self-tests (train_llama.cu's rope_selftest and rmsnorm_selftest, each
# against its v1): a run without a planted disagreement has no warning; with one in each (MST_ROPE_SELFTEST_PERTURB,
# MST_RMSNORM_SELFTEST_PERTURB) one warning line each, then the run goes on with both v1s (one run for both: 4 s)
output=$(MST_ROPE_SELFTEST_PERTURB=0.5 MST_RMSNORM_SELFTEST_PERTURB=0.5 $t ./train_llama_cpu -e test-tiny --random-tokens -T 16 -n 1 2>&1); rc=$?
if [ $rc -eq 0 ] && [ "$(printf '%s\n' "$output" | grep -c '^warning: RoPE v2 failed its start-up self-test against v1')" -eq 1 ] &&
   [ "$(printf '%s\n' "$output" | grep -c '^warning: RMSNorm backward v2 failed its start-up self-test against v1')" -eq 1 ] &&
   [ "$(printf '%s\n' "$output" | grep -c '^warning:')" -eq 2 ] && printf '%s\n' "$output" | grep -q '^step    1/1' &&
   ! grep -q 'warning: RoPE\|warning: RMSNorm' "$files/run.out"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: RoPE v2's and RMSNorm backward v2's self-tests: a planted disagreement must fall back with one warning line each:"
    printf '%s\n' "$output" | tail -n 3
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
