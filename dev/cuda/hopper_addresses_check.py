#!/usr/bin/env python3
"""The CPU device's sm_90a address math against dev/cuda/hopper_emulator.py's (which transcribes the PTX ISA and
was cross-checked against CUTLASS and ThunderKittens): every element of every wgmma operand descriptor and
TMA box that dev/cuda/hopper_blocks.cu (64-key blocks) and mst/attention_sm90.cuh (128-key blocks) use, for hd
64 and 128 (tests/hopper_addresses.cpp prints the CPU
device's). A perturbed emulator (the swizzle shifted) must disagree, so the comparison can fail.
    python3 dev/cuda/hopper_addresses_check.py ./hopper_addresses
Prints one line per kind and "N passed, N failed"."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hopper_emulator as he  # noqa: E402


def emulated(kind, start, lbo, sbo, r, k, lay):
    desc = he.smem_desc(start, lbo, sbo)
    s, l, b = he.decode_desc(desc)
    phys = lambda x, reader: he.swizzle128(x, lay.read_swizzle_shift if reader else 7)
    if kind == "K":  # Smem.read_kmajor: (r // 8) SBO + (r % 8) 128 + 2 k
        return phys(s + (r // 8) * b + (r % 8) * 128 + 2 * k, True)
    if kind == "M":  # Smem.read_mnmajor: element (k, c = r): (c // 64) LBO + (k // 8) SBO + (k % 8) 128 + 2 (c % 64)
        return phys(s + (r // 64) * l + (k // 8) * b + (k % 8) * 128 + 2 * (r % 64), True)
    return phys(start + 128 * r + 2 * k, False)  # Smem.tma_box: dst + 128 r + 2 c


def main():
    lines = subprocess.run([sys.argv[1]], stdout=subprocess.PIPE, text=True, check=True).stdout.split("\n")
    rows = [l.split() for l in lines if l]
    passed = failed = 0
    names = {"K": "wgmma K-major operands (Q, K)", "M": "wgmma MN-major operand (V)", "T": "TMA boxes, 128-byte swizzle"}
    for kind in "KMT":
        mine = [r for r in rows if r[0] == kind]
        bad = [r for r in mine if int(r[6]) != emulated(kind, *map(int, r[1:6]), he.Layout())]
        ok = len(mine) > 0 and not bad
        print("%s %s: %d elements, %d differ%s" % ("PASS" if ok else "FAIL", names[kind], len(mine), len(bad),
                                                  "" if not bad else " (first: %s)" % " ".join(bad[0])))
        passed += ok
        failed += not ok
    wrong = he.Layout(read_swizzle_shift=8)
    differ = sum(int(r[6]) != emulated(r[0], *map(int, r[1:6]), wrong) for r in rows if r[0] == "K")
    ok = differ > 0
    print("%s a perturbed emulator (swizzle from address bit 8) disagrees on %d elements" % ("PASS" if ok else "FAIL", differ))
    passed += ok
    failed += not ok
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
