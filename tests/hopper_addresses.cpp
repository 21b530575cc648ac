// hopper_addresses: the CPU device's sm_90a address math (mst/cpu_device/hopper.cpp) for the descriptors and
// TMA boxes dev/cuda/hopper_blocks.cu (64-key blocks) and mst/attention_sm90.cuh (128-key blocks) use, one line
// per element: "kind start lbo sbo r k address". Read by dev/cuda/hopper_addresses_check.py, which computes the
// same from dev/cuda/hopper_emulator.py.
#include <cstdio>

#include "mst/cpu_device/engine.h"

int main() {
    const int BM_WG = 64, BM = 128, STAGES = 2;
    for (int BN : {64, 128})  // hopper_blocks' key blocks and attention_sm90.cuh's forward's
        for (int hd : {64, 128}) {
            const unsigned q_bytes = BM * hd * 2, kv_bytes = BN * hd * 2;
            for (int s = 0; s < STAGES; s++) {
                unsigned q = 0, k = q_bytes + s * 2 * kv_bytes, v = k + kv_bytes;
                for (int kk = 0; kk < hd / 16; kk++) {  // S = Q K^T: K-major Q (64 rows) and K (BN rows), LBO 16, SBO 1024
                    unsigned qs = q + (kk / 4) * BM_WG * 128 + (kk % 4) * 32, ks = k + (kk / 4) * BN * 128 + (kk % 4) * 32;
                    for (int r = 0; r < BN; r++)
                        for (int e = 0; e < 16; e++) {
                            if (r < BM_WG)
                                printf("K %u 16 1024 %d %d %u\n", qs, r, e, mst_cpu::wgmma_operand_address(qs, 16, 1024, 128, false, r, e));
                            printf("K %u 16 1024 %d %d %u\n", ks, r, e, mst_cpu::wgmma_operand_address(ks, 16, 1024, 128, false, r, e));
                        }
                }
                for (int kk = 0; kk < BN / 16; kk++) {  // O += P V: MN-major V (N = hd), LBO BN x 128, SBO 1024
                    unsigned vs = v + kk * 16 * 128;
                    for (int n = 0; n < hd; n++)
                        for (int e = 0; e < 16; e++)
                            printf("M %u %d 1024 %d %d %u\n", vs, BN * 128, n, e, mst_cpu::wgmma_operand_address(vs, BN * 128, 1024, 128, true, n, e));
                }
                // TMA boxes of 64 columns (128 bytes) x rows into k's slabs: 16-byte chunks, element offset inside
                for (int slab = 0; slab < hd / 64; slab++)
                    for (int r = 0; r < BN; r++)
                        for (int c = 0; c < 64; c++) {
                            unsigned dst = k + slab * BN * 128;
                            printf("T %u 0 0 %d %d %u\n", dst, r, c, mst_cpu::tma_swizzled_address(dst + 128 * r + 16 * (c / 8), 128) + 2 * (c % 8));
                        }
            }
        }
    return 0;
}
