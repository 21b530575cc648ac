#!/usr/bin/env python3
"""The fragments dev/cuda/fragments.cu wrote (on the CPU device or a GPU) against dev/cuda/attention_emulator.py's
numpy emulation of the same instructions, made from the PTX ISA's fragment layouts (ldmatrix, 9.7.14.5.15;
mma.m16n8k16, 9.7.14.5.14), so the CPU device is checked against code that is not its own:
  - load_a, load_b_nk (ldmatrix x4) and load_b_kn (ldmatrix x4 .trans): every lane's registers, bitwise;
  - d = a b + c (mma.sync m16n8k16, bf16 in, fp32 accumulators): the PTX ISA leaves the order and rounding of
    the sum open; the emulator rounds A B to fp32 and then adds c (two roundings), the CPU device adds exactly
    and rounds once, a GPU truncates in its own way: within 2^-21 of the magnitudes summed.
A perturbed reference (one register's lane moved) must fail, so the comparison can fail.

    python3 dev/cuda/fragments_check.py PROGRAM [RUNS]     (PROGRAM: dev/cuda/bin/fragments_cpu or fragments)
Prints one line per check and "N passed, N failed".
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_emulator import ldsm, load_a, load_b_kn, load_b_nk, mma  # noqa: E402

ROWS, COLS = 16, 32
LDS = COLS + 8


def bf16_pair(words):  # (32, 4) uint32 -> (32, 4, 2) floats (low half first, as .x of a bf16x2)
    lo = (words & 0xFFFF).astype(np.uint32) << 16
    hi = words & 0xFFFF0000
    return np.stack([lo.view(np.float32), hi.astype(np.uint32).view(np.float32)], axis=-1)


def main():
    program = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    passed = failed = 0

    def check(ok, name):
        nonlocal passed, failed
        print("%s %s" % ("PASS" if ok else "FAIL", name))
        passed += ok
        failed += not ok

    for seed in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fragments.bin")
            out = subprocess.run([program, path, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if out.returncode != 0:
                check(False, "seed %d: %s exited %d: %s" % (seed, program, out.returncode, out.stdout[-300:]))
                continue
            raw = np.fromfile(path, dtype=np.uint32)
        n_tile, n_c, n_words = ROWS * LDS, 32 * 4, 32 * 12
        tile = raw[:n_tile].view(np.float32).reshape(ROWS, LDS)
        c = raw[n_tile:n_tile + n_c].view(np.float32).reshape(32, 4).copy()
        words = raw[n_tile + n_c:n_tile + n_c + n_words].reshape(32, 12)
        d = raw[n_tile + n_c + n_words:].view(np.float32).reshape(32, 4)
        got = {"load_a (ldmatrix x4)": bf16_pair(words[:, 0:4]), "load_b_nk (ldmatrix x4)": bf16_pair(words[:, 4:8]),
               "load_b_kn (ldmatrix x4 .trans)": bf16_pair(words[:, 8:12])}
        want = {"load_a (ldmatrix x4)": load_a(tile, 0, 16), "load_b_nk (ldmatrix x4)": load_b_nk(tile, 0, 16),
                "load_b_kn (ldmatrix x4 .trans)": load_b_kn(tile, 0, 8)}
        for name in got:
            check(np.array_equal(got[name], want[name]), "seed %d: %s, every lane's registers bitwise" % (seed, name))
        ref = c.copy()
        a = want["load_a (ldmatrix x4)"]
        mma(ref, a, want["load_b_nk (ldmatrix x4)"][:, 0:2])
        # the bound: 2^-21 of what is summed (|c| + sum |a b| per element), generous for two fp32 roundings
        A = np.zeros((16, 16)); B = np.zeros((16, 8))
        for l in range(32):
            g, t = l >> 2, l & 3
            A[g, 2*t:2*t+2] = a[l, 0]; A[g+8, 2*t:2*t+2] = a[l, 1]; A[g, 2*t+8:2*t+10] = a[l, 2]; A[g+8, 2*t+8:2*t+10] = a[l, 3]
            b = want["load_b_nk (ldmatrix x4)"][l, 0:2]
            B[2*t:2*t+2, g] = b[0]; B[2*t+8:2*t+10, g] = b[1]
        summed = np.abs(A) @ np.abs(B)
        bound = np.zeros((32, 4))
        for l in range(32):
            g, t = l >> 2, l & 3
            bound[l] = np.abs(c[l]) + np.array([summed[g, 2*t], summed[g, 2*t+1], summed[g+8, 2*t], summed[g+8, 2*t+1]])
        bound *= 2.0 ** -21
        err = np.abs(d.astype(np.float64) - ref.astype(np.float64))
        check(bool(np.all(np.isfinite(d)) and np.all(err <= bound)),
              "seed %d: mma.m16n8k16 d = a b + c within 2^-21 of the magnitudes summed (largest err/bound %.3f)"
              % (seed, float((err / bound).max())))
        if seed == 1:  # the comparison can fail: one register of one lane taken from the next lane
            moved = want["load_b_kn (ldmatrix x4 .trans)"].copy()
            moved[5, 2] = moved[6, 2]
            check(not np.array_equal(got["load_b_kn (ldmatrix x4 .trans)"], moved),
                  "a reference with one lane's register moved is told apart")
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
