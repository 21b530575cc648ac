#!/usr/bin/env bash
# The trainer's sm_90a attention kernels really are Hopper code: train_llama.cu's compute_90a PTX (nvcc -ptx, a few
# seconds; no GPU needed) has, in every sm_90a attention entry (the forward, the backward's dK/dV and dQ kernels, at
# each head dim the trainer instantiates), wgmma.mma_async (the tensor-core GEMMs) and cp.async.bulk.tensor (TMA
# loads). A kernel that fell back to other instructions, or an entry that disappeared, fails here.
#   bash dev/ptx_check.sh          (in make test)
# One line per check, then "N passed, N failed[, N skipped]".
set -u
cd "$(dirname "$0")/.."
NVCC=${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}
if ! [ -x "$NVCC" ]; then
    echo "SKIP: no nvcc at $NVCC"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
dir=$(mktemp -d /tmp/ptx_check.XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0; failed=0
check() {  # check NAME CONDITION-STATUS
    if [ "$2" -eq 0 ]; then echo "PASS $1"; passed=$((passed + 1)); else echo "FAIL $1"; failed=$((failed + 1)); fi
}
"$NVCC" -std=c++17 -arch=compute_90a -ptx --expt-relaxed-constexpr -I. -o "$dir/train_llama.ptx" train_llama.cu > "$dir/nvcc.log" 2>&1
check "nvcc -arch=compute_90a -ptx train_llama.cu" $?
[ -s "$dir/train_llama.ptx" ] || { cat "$dir/nvcc.log"; echo "$passed passed, $((failed + 1)) failed"; exit 1; }
# one file per entry: the lines from its ".entry" to the next
awk -v dir="$dir" '/^\.visible \.entry / { name = $3; sub(/\(.*/, "", name); file = dir "/" name ".entry" }
                   file { print > file }' "$dir/train_llama.ptx"
for kernel in attention_forward_sm90_kernel attention_backward_dkdv_sm90_kernel attention_backward_dq_sm90_kernel; do
    entries=$(ls "$dir" | grep -E "^_ZN3mst4sm90[0-9]+${kernel}.*\.entry$")
    check "$kernel: instantiated in train_llama ($(echo $entries | wc -w) head dims)" $([ -n "$entries" ]; echo $?)
    for entry in $entries; do
        hd=$(echo "$entry" | sed -nE 's/.*ILi([0-9]+)E.*/\1/p')
        for instruction in wgmma.mma_async cp.async.bulk.tensor; do
            count=$(grep -c "$instruction" "$dir/$entry")
            check "$kernel<$hd>: $count x $instruction" $([ "$count" -gt 0 ]; echo $?)
        done
    done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
