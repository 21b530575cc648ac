#!/usr/bin/env python3
"""Planted bugs for the CPU device (issue 17 item 8): each a one-line change applied to a temporary copy of
the sources; the program that exercises it is rebuilt for the CPU device and run. Caught = it exits nonzero
(a failing check, or a "[CPU device]" report line naming the kernel, block, thread and construct).
First every program runs on the unchanged copy and must pass, so a catch is the bug's, not the build's.

    python3 dev/cpu_device_bugs.py [NAME ...]     (all bugs, or those whose names contain a NAME)

Prints one line per bug and ends with "N passed, N failed": passed = caught.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, the line as it is (a regular expression matching exactly one place), the planted line, program)
BUGS = [
    ("--zero 2: the rank's part of a group's all-reduced gradient not added into its shard", "train_llama.cu",
     r"    if \(begin < end\) float_accumulate\(", "    if (false) float_accumulate(",
     ["bash", "dev/test_parallel_train.sh"]),
    ("missing __syncthreads (cross-entropy's block reduction)", "mst_kernels.cuh",
     r"(    if \(lane == 0\) \{ sm_m\[warp\] = m; sm_s\[warp\] = s; \}\n)    __syncthreads\(\);\n", r"\1",
     ["dev/cuda/bin/crossentropy_cpu", "--small"]),
    ("missing cp.async wait (attention forward v2)", "mst_kernels.cuh",
     r"(mst::load_tile_async<BC, HD, LDS, 128>\(\(j & 1\) \? Vs0 : Vs1[^\n]*\n\s*mst::cp_async_commit\(\);\n)\s*mst::cp_async_wait<1>\(\);\n",
     r"\1", ["dev/cuda/bin/attention_cpu", "--small"]),
    ("ldmatrix without .trans (B fragments of P V)", "mst_kernels.cuh",
     r"ldmatrix_x4_trans\(b, tile", "ldmatrix_x4(b, tile", ["dev/cuda/bin/attention_cpu", "--small"]),
    ("a fragment index off by one (accumulator to A fragment)", "mst_kernels.cuh",
     r"a\[1\] = pack_bf16x2\(c0\[2\], c0\[3\]\);", "a[1] = pack_bf16x2(c0[1], c0[3]);",
     ["dev/cuda/bin/attention_cpu", "--small"]),
    ("a shared-memory write one element past a tile (attention backward's lse tile)", "mst_kernels.cuh",
     r"lse2_buf\[buf \* BQ \+ tid\] =", "lse2_buf[buf * BQ + tid + 1] =", ["dev/cuda/bin/attention_cpu", "--small"]),
    ("a document start off by one (attention forward's mask hides the document's first key)", "mst_kernels.cuh",
     r"if \(col > row \|\| col < \(e < 2 \? first_a : first_b\)\) s\[nb\]\[e\] = -INFINITY;",
     "if (col > row || col <= (e < 2 ? first_a : first_b)) s[nb][e] = -INFINITY;",
     ["dev/cuda/bin/attention_cpu", "--small"]),
    ("one shared buffer for the row sums (RMSNorm backward v2: a warp overwrites sums still being read)", "mst_kernels.cuh",
     r"for \(int n = n0; n < n1; n \+= ROWS, buffer \^= 1\) \{", "for (int n = n0; n < n1; n += ROWS) {",
     ["dev/cuda/bin/rmsnorm_cpu", "--small"]),
    ("missing __syncthreads (RMSNorm backward v2's row sums)", "mst_kernels.cuh",
     r"(            if \(lane == 0\) warp_dots\[buffer\]\[r\]\[warp\] = dot;\n        \}\n)        __syncthreads\(\);\n", r"\1",
     ["dev/cuda/bin/rmsnorm_cpu", "--small"]),
    ("a row sum without the last warp's part (RMSNorm backward v2)", "mst_kernels.cuh",
     r"for \(int i = 0; i < warps; i\+\+\) dot \+= warp_dots", "for (int i = 0; i < warps - 1; i++) dot += warp_dots",
     ["dev/cuda/bin/rmsnorm_cpu", "--small"]),
    ("an offloaded checkpoint read before its event", "train_llama.cu",
     r"        CUDA_CHECK\(cudaStreamWaitEvent\(m->stream, m->fetched\[i % 2\], 0\)\);\n", "",
     ["./test_llama_cpu", "offload"]),
    ("a segment recomputed from its checkpoint before the checkpoint's fetch has landed (--segment, --offload)", "train_llama.cu",
     r"    if \(m->checkpoints.offload.backward_waits\(i\)\) \{", "    if (m->checkpoints.offload.backward_waits(i) && !g.recomputes(l)) {",
     ["./test_llama_cpu", "keep attention"]),
    ("a segment's checkpoint fetched into a recomputed input's buffer (--segment, --offload)", "train_llama.cu",
     r"layer_input\(m, g.first\(l\) - g.k\)", "layer_input(m, g.first(l) - 1)",
     ["./test_llama_cpu", "keep attention"]),
    ("a kept attention output overwritten before its copy to the host has left", "train_llama.cu",
     r"    CUDA_CHECK\(cudaStreamWaitEvent\(m->stream, m->attention_stored\[l % 2\], 0\)\);\n", "",
     ["./test_llama_cpu", "keep attention"]),
    ("a kept attention output read before its fetch has landed", "train_llama.cu",
     r"        CUDA_CHECK\(cudaStreamWaitEvent\(m->stream, m->attention_fetched\[l % 2\], 0\)\);\n", "",
     ["./test_llama_cpu", "keep attention"]),
    ("a segment's inputs not recomputed before its backward (--segment)", "train_llama.cu",
     r"    for \(int j = m->checkpoints.segment.first\(l\); j < l; j\+\+\) layer_forward\(m, j, true, false\);\n", "",
     ["./test_llama_cpu", "keep attention"]),
    ("a held gradient's slot zeroed before its copy to the host has left", "train_llama.cu",
     r"    CUDA_CHECK\(cudaStreamWaitEvent\(m->stream, m->gradient_out\[slot\], 0\)\);\n", "",
     ["./test_llama_cpu", "fused optimizer"]),
    ("a pending update applied before its gradient's fetch has landed", "train_llama.cu",
     r"        CUDA_CHECK\(cudaStreamWaitEvent\(m->stream, m->gradient_in\[group_slot\(m, g.offset\)\], 0\)\);\n", "",
     ["./test_llama_cpu", "fused optimizer"]),
    ("an AdamW update before its state's fetch from the host has landed (--state-offload)", "train_llama.cu",
     r"    CUDA_CHECK\(cudaStreamWaitEvent\(m->stream, m->state_in\[j % 2\], 0\)\);\n", "",
     ["./test_llama_cpu", "state offload"]),
    ("AdamW state never written back to the host (--state-offload)", "train_llama.cu",
     r"    state_copy\(m, j, true, nullptr\);[^\n]*\n", "",
     ["./test_llama_cpu", "state offload"]),
    ("a query block's RoPE positions off by one (--attention-blocks: q rotated as if at q0 + 1)", "train_llama.cu",
     r"rope_rows\(m, a\.q, k\.q0, k\.n,", "rope_rows(m, a.q, k.q0 + 1, k.n,", ["./test_llama_cpu", "attention blocks"]),
    ("dK, dV of every sequence summed into the first's (--attention-blocks: sequence 1's first block overwrites them)",
     "train_llama.cu", r"m->dk_sum \+ sequence \* KV, m->dv_sum \+ sequence \* KV,", "m->dk_sum, m->dv_sum,",
     ["./test_llama_cpu", "attention blocks"]),
    ("an arena region overrun by one element (per-token losses)", "train_llama.cu",
     r"crossentropy_forward_backward\(m->logits, m->losses \+ start,", "crossentropy_forward_backward(m->logits, m->losses + start + 1,",
     ["./test_llama_cpu", "golden gradients"]),
    ("a TMA tile read before its mbarrier wait (the ring's consumers)", "dev/cuda/hopper_blocks.cu",
     r"\n(\s*)mbar_wait\(&full\[s\], \(j / STAGES\) & 1\);", r"\n\1// (planted) no wait",
     ["dev/cuda/bin/hopper_blocks_cpu", "--small"]),
    ("a wrong mbarrier parity (attention's consumers, the overlap loop)", "dev/cuda/hopper_blocks.cu",
     r"(\n\s*)mbar_wait\(&full\[s_\], \(j / STAGES\) & 1\);(\n\s*float s\[BN / 2\] = \{\};\n\s*wgmma_qk_issue)",
     r"\1mbar_wait(&full[s_], ((j / STAGES) & 1) ^ 1);\2", ["dev/cuda/bin/hopper_blocks_cpu", "--small"]),
    ("a wgmma accumulator read before wait_group (the overlap loop's S)", "dev/cuda/hopper_blocks.cu",
     r"\n\s*wgmma_wait<1>\(\);  // S\(j\) has landed; PV\(j-1\) may still run", "",
     ["dev/cuda/bin/hopper_blocks_cpu", "--small"]),
    ("a wrong mbarrier parity (the sm_90a forward's consumers)", "mst/attention_sm90.cuh",
     r"mbar_wait\(&full\[stage\], \(i / STAGES\) & 1\);", "mbar_wait(&full[stage], ((i / STAGES) & 1) ^ 1);",
     ["dev/cuda/bin/attention_sm90_cpu", "--small"]),
    ("a missing named-barrier sync between the two warpgroups (the sm_90a forward's ping-pong)", "mst/attention_sm90.cuh",
     r"\n\s*gemm_turn_wait\(c\);(\n\s*wgmma_qk_issue<HD, BN>\(s, q_wg, BM, smem \+ L::k_at\(stage\)\);)", r"\1",
     ["dev/cuda/bin/attention_sm90_cpu", "--small"]),
    ("a wrong mbarrier parity (the sm_90a backward's dK/dV consumers)", "mst/attention_sm90.cuh",
     r"mbar_wait\(&full\[s\], \(it / STAGES\) & 1\);", "mbar_wait(&full[s], ((it / STAGES) & 1) ^ 1);",
     ["dev/cuda/bin/attention_sm90_cpu", "--small"]),
    ("a document start off by one (the sm_90a backward's dQ mask hides the document's first key)", "mst/attention_sm90.cuh",
     r"bool seen = key <= rows\[r\] && key >= first\[r\];", "bool seen = key <= rows[r] && key > first[r];",
     ["dev/cuda/bin/attention_sm90_cpu", "--small"]),
]

def run(cmd, cwd, timeout=900):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return p.returncode, p.stdout


def build(copy, program):
    # a program, or a script of train_llama_cpu runs
    target = "train_llama_cpu" if program[-1].endswith(".sh") else program[0][2:] if program[0].startswith("./") else program[0]
    rc, out = run(["make", "-s", target], copy)
    if rc != 0:
        sys.exit("cannot build %s in %s:\n%s" % (target, copy, out[-3000:]))


def main():
    chosen = [b for b in BUGS if len(sys.argv) < 2 or any(a in b[0] for a in sys.argv[1:])]
    copy = tempfile.mkdtemp(prefix="mst-bugs-")
    try:
        # the tracked sources, with the built CPU device objects (only the changed program recompiles)
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        for f in files + [f for f in ["build/cpu/engine.o", "build/cpu/runtime.o", "build/cpu/cublaslt.o", "build/cpu/hopper.o"]
                          if os.path.exists(os.path.join(ROOT, f))]:
            os.makedirs(os.path.dirname(os.path.join(copy, f)) or copy, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), os.path.join(copy, f))
        baselines = {}
        for _, _, _, _, program in chosen:
            key = tuple(program)
            if key in baselines:
                continue
            build(copy, program)
            rc, out = run(program, copy)
            if rc != 0:
                sys.exit("the unchanged %s fails; fix that first:\n%s" % (" ".join(program), out[-2000:]))
            baselines[key] = True
        caught = missed = 0
        for name, path, pattern, replacement, program in chosen:
            full = os.path.join(copy, path)
            original = open(full).read()
            planted, count = re.subn(pattern, replacement, original)
            if count != 1:
                sys.exit("bug %r: its pattern matches %d places in %s (must be 1)" % (name, count, path))
            open(full, "w").write(planted)
            try:
                build(copy, program)
                rc, out = run(program, copy)
            finally:
                open(full, "w").write(original)
                os.utime(full, None)
            report = next((l for l in out.splitlines() if l.startswith("[CPU device]")), None)
            failed = next((l for l in out.splitlines() if l.startswith("FAIL")), None)
            if rc != 0:
                caught += 1
                how = report or failed or "exit status %d" % rc
                print("CAUGHT  %-72s %s" % (name, how[:220]))
            else:
                missed += 1
                print("MISSED  %-72s (%s passed)" % (name, " ".join(program)))
        print("%d passed, %d failed" % (caught, missed))
        return 0 if missed == 0 else 1
    finally:
        shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
