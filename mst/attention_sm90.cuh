// mst/attention_sm90.cuh: the FA3-class attention forward and backward for sm_90a (H100/H200): TMA, mbarriers,
// wgmma, warp specialization. Included by mst_kernels.cuh (after its attention section); dev/cuda/hopper_blocks.cu
// builds its checks of each building block from the same pieces, dev/cuda/attention_sm90.cu validates both.
//
//   void attention_forward_sm90(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T,
//                               int H, int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t)
//        matches attention_forward_cpu (mst/llama_reference.h) and is a drop-in for attention_forward: q, out
//        (B, T, H, hd), k, v (B, T, KV, hd) bf16, lse (B, H, T) fp32 natural log; doc_start (B, T) per-row
//        document start (null: none); query rows [q0, q0 + n) of every sequence (0 < n <= T - q0), the rest of out and
//        lse untouched. hd 64 or 128. Refuses (one line, exit 1) a card that is not sm_90.
//   template <GradKV = bf16 or float>
//   void attention_backward_sm90(bf16* dq, GradKV* dk, GradKV* dv, void* scratch, const bf16* dout, const bf16* q,
//                                const bf16* k, const bf16* v, const bf16* out, const float* lse, int B, int T,
//                                int H, int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t)
//        matches attention_backward_cpu and is a drop-in for attention_backward (mst_kernels.cuh: the same
//        arguments, scratch and query-block semantics: dq rows [q0, q0 + n) written; dk, dv written when q0 == 0,
//        added to (fp32 only) after). Deterministic: dQ by a Q-stationary kernel, no atomics.
//
// Real code only in nvcc's sm_90a pass (__CUDA_ARCH_FEAT_SM90_ALL) and on the CPU device, which stands in for an
// sm_90a card and runs the PTX by its semantics (mst/cpu_device/hopper.cpp); the sm_80 pass compiles empty bodies.
// UNVERIFIED on a GPU: validated on the CPU device only (dev/cuda/attention_sm90.cu).
#pragma once
#include <climits>
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes from the driver at run time (no -lcuda)
#include <cudaTypedefs.h>

#if (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)) || defined(MST_CPU_DEVICE)
#define MST_SM90_CODE 1  // the sm_90a pass: wgmma, setmaxnreg (the CPU device stands in for an sm_90a card)
#endif

namespace mst {
namespace sm90 {

constexpr int BM_WG = 64;     // query rows per consumer warpgroup (wgmma's M)
constexpr int CONSUMERS = 2;  // consumer warpgroups
constexpr int BM = BM_WG * CONSUMERS;
constexpr int STAGES = 2;     // K/V ring depth
constexpr int THREADS = 128 * (1 + CONSUMERS);
constexpr int SLAB = 64;      // bf16 columns per 128-byte swizzled row: a tile of hd columns is hd/64 slabs

// shared memory: Q (BM x HD), then STAGES x (K, V) (BN x HD each), each tile hd/64 slabs of rows x 128 bytes;
// then the mbarriers and 4 ints of scratch. Every tile starts at a multiple of 1024 (the 128-byte swizzle
// repeats every 8 rows).
template <int HD, int BN> struct RingLayout {
    static constexpr int q_bytes = BM * HD * 2;                 // Q: BM x HD x 2 bytes
    static constexpr int kv_bytes = BN * HD * 2;                // one K or V block: BN x HD x 2 bytes
    static constexpr int k_at(int s) { return q_bytes + s * 2 * kv_bytes; }
    static constexpr int v_at(int s) { return k_at(s) + kv_bytes; }
    static constexpr int bars_at = q_bytes + STAGES * 2 * kv_bytes;  // q_full, full[STAGES], empty[STAGES]
    static constexpr int scratch_at = bars_at + 8 * (1 + 2 * STAGES);
    static constexpr int bytes = scratch_at + 16 + 1024;            // + alignment slack
};

// ----------------------------------------------------------------------------
// sm_90a primitives (PTX ISA: mbarrier, cp.async.bulk.tensor, wgmma, setmaxnreg)

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 128-byte swizzle as TMA writes it and wgmma reads it: address bits 4-6 ^= bits 7-9 (tile bases 1024-aligned)
__host__ __device__ __forceinline__ uint32_t swizzle128(uint32_t byte) { return byte ^ (((byte >> 7) & 7) << 4); }

// wgmma shared-memory matrix descriptor: start >> 4 (bits 0-13), leading byte offset >> 4 (16-29), stride byte
// offset >> 4 (32-45), base offset 0 (tiles 1024-aligned), swizzle mode 1 = 128 B (62-63).
__host__ __device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

#ifdef MST_SM90_CODE
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) { mst::mbarrier_init(bar, (uint32_t)count); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) { mst::mbarrier_arrive_expect_tx(bar, bytes); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) { mst::mbarrier_arrive(bar); }
// waits until the phase of parity `parity` has completed (phase k has parity k & 1). After 5 s it traps (the
// launch fails with an error, CUDA_CHECK names the line) instead of hanging the card: no wait here takes a
// millisecond when the pipeline is right. No printf: a function call inside the wgmma pipeline makes ptxas
// serialize the wgmmas (C7510). (The CPU device blocks in the try_wait and reports a wait that never completes.)
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
    uint64_t start = 0, now;
    for (int n = 0; !mst::mbarrier_try_wait_parity(bar, parity); n++) {
        now = mst::globaltimer();
        if (n == 0) start = now;
        else if (now - start > 5000000000ull) __trap();
    }
}
// one box of 64 columns x rows of a 3-D map {hd, heads, rows} at (col, head, row); completes on bar
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, uint64_t* bar, int col, int head, int row) {
    mst::cp_async_bulk_tensor_3d(dst, map, bar, col, head, row);
}
__device__ __forceinline__ void wgmma_fence() { mst::wgmma_fence(); }
__device__ __forceinline__ void wgmma_commit() { mst::wgmma_commit_group(); }
// waits until at most N committed groups are still running
template <int N>
__device__ __forceinline__ void wgmma_wait() { mst::wgmma_wait_group<N>(); }
// pins accumulator registers in place around the asynchronous wgmma (mst::wgmma_fence_operand)
template <int N>
__device__ __forceinline__ void fence_regs(float* d) { mst::wgmma_fence_operand<N>(d); }

// d[N/2] (= or +=, scale_d) A (64x16, smem K-major) * B (Nx16, smem K-major)^T; scale_d 0 overwrites d
template <int N>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t desc_a, uint64_t desc_b, int scale_d) {
    static_assert(N == 64 || N == 128, "wgmma_ss: N is 64 or 128");
    if constexpr (N == 64) mst::wgmma_m64n64k16_ss(d, desc_a, desc_b, scale_d);
    else mst::wgmma_m64n128k16_ss(d, desc_a, desc_b, scale_d);
}
// d[N/2] += A (64x16 bf16, registers) * B (16xN, smem MN-major: the transpose bit)
template <int N>
__device__ __forceinline__ void wgmma_rs(float* d, const uint32_t* a, uint64_t desc_b) {
    static_assert(N == 64 || N == 128, "wgmma_rs: N is 64 or 128");
    if constexpr (N == 64) mst::wgmma_m64n64k16_rs_transb(d, a, desc_b);
    else mst::wgmma_m64n128k16_rs_transb(d, a, desc_b);
}
#endif  // MST_SM90_CODE

// ----------------------------------------------------------------------------
// the index math the kernels share (dev/cuda/hopper_emulator.py transcribes each)

// accumulator of wgmma m64nN (fp32): thread t of the warpgroup holds, in register i, row 16 (t/32) + (t%32)/4
// + 8 ((i/2)%2), column 8 (i/4) + 2 (t%4) + i%2.
__device__ __forceinline__ int acc_row(int t, int i) { return 16 * (t / 32) + (t % 32) / 4 + 8 * ((i / 2) % 2); }
__device__ __forceinline__ int acc_col(int t, int i) { return 8 * (i / 4) + 2 * (t % 4) + i % 2; }

// register-A fragment of k-step kk (columns 16 kk .. 16 kk + 15) from an accumulator d: the A layout (rows as
// above; bf16 pairs a0a1 (r, c), a2a3 (r + 8, c), a4a5 (r, c + 8), a6a7 (r + 8, c + 8)) is exactly d[8 kk .. 8 kk + 7]
__device__ __forceinline__ void acc_to_a(uint32_t* a, const float* d, int kk) {
    for (int j = 0; j < 4; j++) {
        __nv_bfloat162 p = __floats2bfloat162_rn(d[8 * kk + 2 * j], d[8 * kk + 2 * j + 1]);  // .x = lower column
        a[j] = *reinterpret_cast<uint32_t*>(&p);
    }
}

#ifdef MST_SM90_CODE
// the hd/64 boxes of a tile (rows x hd) at (row, head) into consecutive slabs of rows x 128 bytes
template <int HD>
__device__ __forceinline__ void tma_load_tile(uint8_t* dst, const CUtensorMap* map, uint64_t* bar, int head, int row, int rows) {
    for (int s = 0; s < HD / SLAB; s++) tma_load(dst + s * rows * 128, map, bar, s * SLAB, head, row);
}

// S (64 x BN) = Q (64 x HD) K^T: both K-major, 128-byte swizzle, SBO = 1024 (8 rows of 128 bytes), LBO unused
// (16); k-step kk lies in slab kk/4 at byte 32 (kk%4) of each row: the start address advances, the swizzle
// is applied by the hardware to the summed address.
// wgmma_qk_issue commits one group; wgmma_qk also waits for it.
template <int HD, int BN>
__device__ __forceinline__ void wgmma_qk_issue(float* s, const uint8_t* q, int q_rows, const uint8_t* k) {
    fence_regs<BN / 2>(s);
    wgmma_fence();
    for (int kk = 0; kk < HD / 16; kk++) {
        uint64_t da = smem_desc(smem_u32(q + (kk / 4) * q_rows * 128 + (kk % 4) * 32), 16, 1024);
        uint64_t db = smem_desc(smem_u32(k + (kk / 4) * BN * 128 + (kk % 4) * 32), 16, 1024);
        wgmma_ss<BN>(s, da, db, kk > 0);
    }
    wgmma_commit();
}
template <int HD, int BN>
__device__ __forceinline__ void wgmma_qk(float* s, const uint8_t* q, int q_rows, const uint8_t* k) {
    wgmma_qk_issue<HD, BN>(s, q, q_rows, k);
    wgmma_wait<0>();
    fence_regs<BN / 2>(s);
}

// O (64 x HD) += P (64 x BN, registers) V (BN x HD): V MN-major, 128-byte swizzle; along K (keys) 8 rows of
// 128 bytes then SBO = 1024 to the next 8; along N (hd) LBO = BN x 128 bytes to the next slab of 64 columns;
// k-step kk starts 16 keys further: + 16 x 128 bytes.
// wgmma_pv_issue commits one group; wgmma_pv also waits for it.
template <int HD, int BN>
__device__ __forceinline__ void wgmma_pv_issue(float* o, const uint32_t (*a)[4], const uint8_t* v) {
    fence_regs<HD / 2>(o);
    wgmma_fence();
    for (int kk = 0; kk < BN / 16; kk++) wgmma_rs<HD>(o, a[kk], smem_desc(smem_u32(v + kk * 16 * 128), BN * 128, 1024));
    wgmma_commit();
}
template <int HD, int BN>
__device__ __forceinline__ void wgmma_pv(float* o, const uint32_t (*a)[4], const uint8_t* v) {
    wgmma_pv_issue<HD, BN>(o, a, v);
    wgmma_wait<0>();
    fence_regs<HD / 2>(o);
}

__device__ __forceinline__ uint8_t* align1024(uint8_t* p) {
    return (uint8_t*)(((uintptr_t)p + 1023) & ~(uintptr_t)1023);
}

// the producer's i-th load into the ring: stage i % STAGES, once the consumers released the (i - STAGES)-th there
// (empty completes once per release: release r of stage s is phase r, so the i-th waits for parity
// (i / STAGES - 1) & 1); full[stage] then expects `bytes` (full of the i-th is phase i / STAGES). Returns the stage.
__device__ __forceinline__ int ring_acquire(uint64_t* full, uint64_t* empty, int i, uint32_t bytes) {
    int s = i % STAGES;
    if (i >= STAGES) mbar_wait(&empty[s], (i / STAGES - 1) & 1);
    mbar_expect_tx(&full[s], bytes);
    return s;
}

// The producer warpgroup's loop: one thread loads Q once (q_full) and K/V blocks j0 .. nblocks - 1, the i-th
// (i = j - j0) into stage ring_acquire(i). Rows are counted from row0 (b T: the maps see the batch as B T rows).
template <int HD, int BN>
__device__ void produce(uint8_t* smem, uint64_t* q_full, uint64_t* full, uint64_t* empty, const CUtensorMap* q_map,
                        const CUtensorMap* k_map, const CUtensorMap* v_map, int row0, int q_head, int q_row, int kv_head,
                        int j0, int nblocks) {
    using L = RingLayout<HD, BN>;
    mst::setmaxnreg_dec<40>();  // 40 x 128 + 232 x 256 = the 168 x 384 held at launch
    if (threadIdx.x != 0) return;
    if (q_map) {
        mbar_expect_tx(q_full, L::q_bytes);
        tma_load_tile<HD>(smem, q_map, q_full, q_head, row0 + q_row, BM);
    }
    for (int j = j0; j < nblocks; j++) {
        int s = ring_acquire(full, empty, j - j0, 2 * L::kv_bytes);
        tma_load_tile<HD>(smem + L::k_at(s), k_map, &full[s], kv_head, row0 + j * BN, BN);
        tma_load_tile<HD>(smem + L::v_at(s), v_map, &full[s], kv_head, row0 + j * BN, BN);
    }
}

// thread 0 initializes n barriers expecting 1 arrival, then n_many expecting `many`; visible to all (and to
// the async proxy) after the CTA barrier
__device__ __forceinline__ void init_barriers(uint64_t* bars, int n, int n_many, int many = 0) {
    if (threadIdx.x == 0) {
        for (int i = 0; i < n + n_many; i++) mbar_init(&bars[i], i < n ? 1 : many);
        mst::fence_mbarrier_init();
    }
    __syncthreads();
}

template <int HD, int BN>
__device__ uint64_t* ring_setup(uint8_t* smem) {
    // q_full and full[]: one arrival (the producer's expect_tx); empty[]: every consumer thread
    uint64_t* bars = (uint64_t*)(smem + RingLayout<HD, BN>::bars_at);
    init_barriers(bars, 1 + STAGES, STAGES, 128 * CONSUMERS);
    return bars;
}

// whether the keys [key0, key0 + BN) hold one that is invalid for some row in [row_lo, row_lo + 15] (a thread's
// rows): after the row (causal), at or past T, or before the latest of the rows' document starts
__device__ __forceinline__ bool block_needs_mask(int key0, int BN, int row_lo, int T, int first_max) {
    return key0 + BN - 1 > row_lo || key0 + BN > T || key0 < first_max;
}

// The block of keys [key0, key0 + BN): this thread's scores s (accumulator registers) -> exp2 probabilities in
// place, with the online softmax state: m (running max, log2 units), l (this thread's partial row sums), corr
// (the factor for O). rows[r] / first[r]: the position and first key (document start) of the thread's row r
// (accumulator rows acc_row(t, 0) and + 8). Only `masked` blocks test each key. A row with no valid key so far
// (document masking) keeps m = -inf and probabilities 0.
template <int BN>
__device__ __forceinline__ void online_softmax(float* s, float* m, float* l, float* corr, int key0, const int* rows, const int* first,
                                               int T, float scale_log2, int t, bool masked) {
    float block_max[2] = {-INFINITY, -INFINITY};
    for (int i = 0; i < BN / 2; i++) {
        int key = key0 + acc_col(t, i), r = (i / 2) % 2;
        s[i] = (masked && (key > rows[r] || key >= T || key < first[r])) ? -INFINITY : s[i] * scale_log2;
        block_max[r] = fmaxf(block_max[r], s[i]);
    }
    float sum[2] = {0.f, 0.f}, m_use[2];
    for (int r = 0; r < 2; r++) {  // a row's BN columns lie in the 4 threads of a quad
        block_max[r] = fmaxf(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 1));
        block_max[r] = fmaxf(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 2));
        float m_new = fmaxf(m[r], block_max[r]);
        m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // no valid key yet: exp2(-inf - 0) = 0, not NaN
        corr[r] = exp2f(m[r] - m_use[r]);
        m[r] = m_new;
    }
    for (int i = 0; i < BN / 2; i++) {
        s[i] = exp2f(s[i] - m_use[(i / 2) % 2]);
        sum[(i / 2) % 2] += s[i];
    }
    for (int r = 0; r < 2; r++) l[r] = l[r] * corr[r] + sum[r];  // per-thread partial row sums
}

// O (this thread's registers, rows rows[0], rows[1]) / l and lse into out (B, T, H, HD) and lse (B, H, T) for
// the rows below `end`; l is summed over the quad first
template <int HD>
__device__ __forceinline__ void store_rows(bf16* out, float* lse, const float* o, float* l, const float* m, const int* rows, int end,
                                           int b, int T, int H, int h, int t) {
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    for (int i = 0; i < HD / 2; i += 2) {
        int r = (i / 2) % 2;
        float inv = 1.f / l[r];
        if (rows[r] < end)
            *(__nv_bfloat162*)(out + (((size_t)b * T + rows[r]) * H + h) * HD + acc_col(t, i)) = __floats2bfloat162_rn(o[i] * inv, o[i + 1] * inv);
    }
    for (int r = 0; r < 2; r++)
        if (t % 4 == 0 && rows[r] < end) lse[((size_t)b * H + h) * T + rows[r]] = (m[r] + log2f(l[r])) * 0.6931471805599453f;
}
#endif  // MST_SM90_CODE

// ----------------------------------------------------------------------------
// the product's forward: 128-key blocks. Shared memory at hd 128: Q 128 x 128 x 2 = 32 KiB, K and V 2 stages x
// 2 x 32 KiB = 128 KiB, barriers and scratch 56 bytes, 1 KiB alignment slack: 161 KiB of the 227 KiB a block may
// have (a third stage, 225 KiB + slack, would not fit); hd 64: 81 KiB.
constexpr int FWD_BN = 128;
template <int HD> using ForwardLayout = RingLayout<HD, FWD_BN>;

#ifdef MST_SM90_CODE
// Ping-pong (FA3): warpgroup c issues its GEMMs only after the other has issued its own, so one warpgroup's
// softmax runs while the other's GEMMs hold the tensor cores. Named barrier 1 + c (256 threads: c waits at it,
// the other arrives) is c's turn; both take the same number of turns, warpgroup 0 first.
__device__ __forceinline__ void gemm_turn_wait(int c) { mst::named_barrier_sync(1 + c, 2 * 128); }
__device__ __forceinline__ void gemm_turn_pass(int c) { mst::named_barrier_arrive(2 - c, 2 * 128); }
#endif

// matches attention_forward_cpu (causal GQA, doc_start, query rows [q0, q1)). grid (H, B, query tiles of BM):
// tiles are the slowest index and run last tile first, so the tiles with the most key blocks start first across
// all heads (grid-ordered, not persistent); a GQA group's heads are neighbours in launch order (K/V in L2).
// One producer warpgroup (TMA) and two consumer warpgroups of 64 rows; the tile's key blocks start at the block
// of its earliest document start and end at its last row; only blocks that cross a diagonal, T or a document
// start are masked. Within a warpgroup S(j) = Q K(j)^T and O += P(j-1) V(j-1) are in flight together and
// softmax(j) runs while PV(j-1) finishes (FA3's intra-warpgroup overlap); across the two, the ping-pong above.
template <int HD>
__global__ void __launch_bounds__(THREADS, 1) attention_forward_sm90_kernel(bf16* out, float* lse, const __grid_constant__ CUtensorMap q_map,
                                                                            const __grid_constant__ CUtensorMap k_map,
                                                                            const __grid_constant__ CUtensorMap v_map, const int* doc_start,
                                                                            int T, int H, int KV, int q0, int q1) {
#ifdef MST_SM90_CODE
    constexpr int BN = FWD_BN;
    using L = ForwardLayout<HD>;
    uint8_t* smem = align1024(mst::dynamic_shared_memory());
    int h = blockIdx.x, b = blockIdx.y, kvh = h / (H / KV);
    int tile_row = q0 + (gridDim.z - 1 - blockIdx.z) * BM;
    int kend = min(q1, tile_row + BM);  // causal: keys < the tile's last row + 1
    int* warp_first = (int*)(smem + L::scratch_at);
    if (doc_start && threadIdx.x < BM) {  // warps 0-3, one row each: the earliest document start of the tile
        int row = tile_row + threadIdx.x;
        int first = row < q1 ? doc_start[(size_t)b * T + row] : INT_MAX;
        for (int lane_mask = 1; lane_mask < 32; lane_mask *= 2) first = min(first, __shfl_xor_sync(0xffffffffu, first, lane_mask));
        if (threadIdx.x % 32 == 0) warp_first[threadIdx.x / 32] = first;
    }
    uint64_t* bars = ring_setup<HD, BN>(smem);  // (its __syncthreads publishes warp_first)
    uint64_t *q_full = bars, *full = bars + 1, *empty = bars + 1 + STAGES;
    int j0 = doc_start ? min(min(warp_first[0], warp_first[1]), min(warp_first[2], warp_first[3])) / BN : 0;
    int nblocks = (kend + BN - 1) / BN;
    int wg = threadIdx.x / 128;
    if (wg == 0) {
        produce<HD, BN>(smem, q_full, full, empty, &q_map, &k_map, &v_map, b * T, h, tile_row, kvh, j0, nblocks);
        return;
    }
    mst::setmaxnreg_inc<232>();
    int c = wg - 1, t = threadIdx.x % 128;
    int rows[2] = {tile_row + c * BM_WG + acc_row(t, 0), tile_row + c * BM_WG + acc_row(t, 2)};
    int first[2] = {0, 0};
    if (doc_start)
        for (int r = 0; r < 2; r++) first[r] = doc_start[(size_t)b * T + min(rows[r], T - 1)];
    const int first_max = max(first[0], first[1]);
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);  // softmax in exp2: scores x scale x log2(e)
    const uint8_t* q_wg = smem + c * BM_WG * 128;  // this warpgroup's 64 rows of each Q slab
    float o[HD / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, corr[2];
    for (int i = 0; i < HD / 2; i++) o[i] = 0.f;
    uint32_t a[BN / 16][4];  // P of the previous block, bf16 A fragments
    if (c == 1) gemm_turn_pass(c);  // warpgroup 0 takes the first turn
    mbar_wait(q_full, 0);
    {  // block j0: S only
        mbar_wait(&full[0], 0);
        float s[BN / 2] = {};
        gemm_turn_wait(c);
        wgmma_qk_issue<HD, BN>(s, q_wg, BM, smem + L::k_at(0));
        gemm_turn_pass(c);
        wgmma_wait<0>();
        fence_regs<BN / 2>(s);
        online_softmax<BN>(s, m, l, corr, j0 * BN, rows, first, T, scale_log2, t, block_needs_mask(j0 * BN, BN, rows[0], T, first_max));
        for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
    }
    for (int j = j0 + 1; j < nblocks; j++) {
        int i = j - j0, stage = i % STAGES, prev = (i - 1) % STAGES;
        mbar_wait(&full[stage], (i / STAGES) & 1);
        float s[BN / 2] = {};
        gemm_turn_wait(c);
        wgmma_qk_issue<HD, BN>(s, q_wg, BM, smem + L::k_at(stage));
        wgmma_pv_issue<HD, BN>(o, a, smem + L::v_at(prev));
        gemm_turn_pass(c);
        wgmma_wait<1>();  // S(j) has landed; PV(j-1) may still run
        fence_regs<BN / 2>(s);
        online_softmax<BN>(s, m, l, corr, j * BN, rows, first, T, scale_log2, t, block_needs_mask(j * BN, BN, rows[0], T, first_max));
        wgmma_wait<0>();
        fence_regs<HD / 2>(o);
        mbar_arrive(&empty[prev]);
        for (int r = 0; r < HD / 2; r++) o[r] *= corr[(r / 2) % 2];
        for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
    }
    int last = (nblocks - 1 - j0) % STAGES;
    gemm_turn_wait(c);
    wgmma_pv_issue<HD, BN>(o, a, smem + L::v_at(last));
    if (c == 0) gemm_turn_pass(c);  // warpgroup 1's last turn passes to nobody
    wgmma_wait<0>();
    fence_regs<HD / 2>(o);
    mbar_arrive(&empty[last]);
    store_rows<HD>(out, lse, o, l, m, rows, q1, b, T, H, h, t);
#endif
}


// ----------------------------------------------------------------------------
// the product's backward (matches attention_backward_cpu, as attention_backward does): the preprocess
// D = rowsum(dout * out) is attention_backward's (attention_backward_prologue); then two kernels, each one
// producer warpgroup (TMA) and two consumer warpgroups of 64 rows, over tiles that stay in shared memory (two
// of BM = 128 rows: K and V, or Q and dO) and a ring of STAGES x two tiles of RROWS rows streamed past them:
//   - dK/dV, K/V-stationary: a CTA owns 128 keys of one kv head (64 per warpgroup) and streams the Q/dO tiles
//     of 64 rows of every query head of the GQA group (heads outer), so dK and dV of the group are summed in
//     registers in a fixed order. Per tile S^T = K Q^T and dP^T = V dO^T (wgmma, both from shared memory),
//     P^T and dS^T = P^T (dP^T - D) computed in the accumulator registers, then dV += P^T dO and dK += dS^T Q
//     with P^T and dS^T as register A fragments (the accumulator layout is the A layout: acc_to_a).
//   - dQ, Q-stationary (deterministic, no atomics: each dQ row is summed by one CTA over the key blocks in
//     order, like the forward): a CTA owns 128 query rows of one head and streams K/V blocks of 64 keys from
//     the block of its earliest document start; S = Q K^T, dP = dO V^T, dS, dQ += dS K (dS from registers).
// Skipping: dK/dV streams only query rows [max(key0, q0), first row whose document starts after the CTA's last
// key); a warpgroup skips the GEMMs of a tile wholly before its keys or wholly in a later document. dQ's key
// blocks end at the tile's last row; a warpgroup skips blocks wholly after its rows or before its documents.
// The maps are 4-D {hd, heads, q1, B}: rows at or past q1 arrive as zeros (nothing at or after q0 + n is read,
// and a tile's rows past it add exact zeros). No ping-pong or intra-warpgroup overlap yet: each warpgroup waits
// for its GEMMs (a first version: correct before fast).
constexpr int BWD_BQ = 64;  // query rows per streamed tile of the dK/dV kernel (the N of S^T = K Q^T)
constexpr int BWD_BN = 64;  // keys per streamed block of the dQ kernel

// shared memory: two stationary tiles (BM x HD each), then STAGES x two ring tiles (RROWS x HD each), then the
// mbarriers (stationary_full, full[STAGES], empty[STAGES]). hd 128: 64 + 64 KiB + 1 KiB slack.
template <int HD, int RROWS> struct BackwardLayout {
    static constexpr int stationary_bytes = BM * HD * 2;
    static constexpr int ring_bytes = RROWS * HD * 2;
    static constexpr int stationary_at(int i) { return i * stationary_bytes; }
    static constexpr int ring_at(int s, int i) { return 2 * stationary_bytes + (2 * s + i) * ring_bytes; }
    static constexpr int bars_at = 2 * stationary_bytes + STAGES * 2 * ring_bytes;
    static constexpr int bytes = bars_at + 8 * (1 + 2 * STAGES) + 1024;  // + alignment slack
};

#ifdef MST_SM90_CODE
// the hd/64 boxes of a tile (rows x hd) at (head, row, sequence b) of a 4-D map into consecutive slabs of
// rows x 128 bytes
template <int HD>
__device__ __forceinline__ void tma_load_tile_4d(uint8_t* dst, const CUtensorMap* map, uint64_t* bar, int head, int row, int b, int rows) {
    for (int s = 0; s < HD / SLAB; s++) mst::cp_async_bulk_tensor_4d(dst + s * rows * 128, map, bar, s * SLAB, head, row, b);
}

// The backward's producer: one thread loads the two stationary tiles (maps stat[0], stat[1] at (stat_head,
// stat_row) of sequence b) on stationary_full, then the n ring loads, the i-th the tiles of ring[0], ring[1] at
// at(i) = (head, row) into stage ring_acquire(i).
template <int HD, int RROWS, typename At>
__device__ void produce_backward(uint8_t* smem, uint64_t* stationary_full, uint64_t* full, uint64_t* empty, const CUtensorMap* stat0,
                                 const CUtensorMap* stat1, int stat_head, int stat_row, const CUtensorMap* ring0, const CUtensorMap* ring1,
                                 int b, int n, At at) {
    using L = BackwardLayout<HD, RROWS>;
    mst::setmaxnreg_dec<40>();  // as the forward's producer
    if (threadIdx.x != 0) return;
    mbar_expect_tx(stationary_full, 2 * L::stationary_bytes);
    tma_load_tile_4d<HD>(smem + L::stationary_at(0), stat0, stationary_full, stat_head, stat_row, b, BM);
    tma_load_tile_4d<HD>(smem + L::stationary_at(1), stat1, stationary_full, stat_head, stat_row, b, BM);
    for (int i = 0; i < n; i++) {
        int s = ring_acquire(full, empty, i, 2 * L::ring_bytes);
        int2 hr = at(i);
        tma_load_tile_4d<HD>(smem + L::ring_at(s, 0), ring0, &full[s], hr.x, hr.y, b, RROWS);
        tma_load_tile_4d<HD>(smem + L::ring_at(s, 1), ring1, &full[s], hr.x, hr.y, b, RROWS);
    }
}

// the two GEMMs of a backward tile from shared memory, both in flight together: x = A0 B0^T, y = A1 B1^T
// (A: this warpgroup's 64 rows of a stationary tile of BM rows, B: a ring tile of N rows)
template <int HD, int N>
__device__ __forceinline__ void wgmma_two_nt(float* x, float* y, const uint8_t* a0, const uint8_t* b0, const uint8_t* a1, const uint8_t* b1) {
    wgmma_qk_issue<HD, N>(x, a0, BM, b0);
    wgmma_qk_issue<HD, N>(y, a1, BM, b1);
    wgmma_wait<0>();
    fence_regs<N / 2>(x);
    fence_regs<N / 2>(y);
}
#endif  // MST_SM90_CODE

// dK, dV (GradKV = bf16 or float; written, or added to with accumulate) for 128 keys of kv head blockIdx.y of
// sequence blockIdx.z; grid (key blocks, KV, B). Keys with no query in [q0, q1) get 0 written / nothing added.
template <int HD, typename GradKV>
__global__ void __launch_bounds__(THREADS, 1) attention_backward_dkdv_sm90_kernel(GradKV* dk, GradKV* dv, const __grid_constant__ CUtensorMap k_map,
                                                                                  const __grid_constant__ CUtensorMap v_map,
                                                                                  const __grid_constant__ CUtensorMap q_map,
                                                                                  const __grid_constant__ CUtensorMap do_map, const float* lse,
                                                                                  const float* Dbuf, const int* doc_start, int T, int H, int KV,
                                                                                  int q0, int q1, bool accumulate) {
#ifdef MST_SM90_CODE
    constexpr int BQ = BWD_BQ;
    using L = BackwardLayout<HD, BQ>;
    uint8_t* smem = align1024(mst::dynamic_shared_memory());
    int kvh = blockIdx.y, b = blockIdx.z, group = H / KV, k0 = blockIdx.x * BM;
    // the query rows that see a key of this block: from max(k0, q0) (causal) to the first row whose document
    // starts after the block's last key (as attention_backward_dkdv_kernel)
    int qs = max(k0, q0);
    int qe = qs < q1 ? mst::first_row_after(doc_start, b, T, qs, q1, min(k0 + BM, q1) - 1) : qs;
    int n_qt = (qe - qs + BQ - 1) / BQ, iters = group * n_qt;  // (query head of the group, query tile), heads outer
    uint64_t* bars = (uint64_t*)(smem + L::bars_at);
    init_barriers(bars, 1 + STAGES, STAGES, 128 * CONSUMERS);
    uint64_t *kv_full = bars, *full = bars + 1, *empty = bars + 1 + STAGES;
    if (threadIdx.x / 128 == 0) {
        produce_backward<HD, BQ>(smem, kv_full, full, empty, &k_map, &v_map, kvh, k0, &q_map, &do_map, b, iters,
                                 [=](int i) { return make_int2(kvh * group + i / n_qt, qs + (i % n_qt) * BQ); });
        return;
    }
    mst::setmaxnreg_inc<232>();
    int c = threadIdx.x / 128 - 1, t = threadIdx.x % 128;
    int key_wg = k0 + c * BM_WG;  // this warpgroup's 64 keys
    int keys[2] = {key_wg + acc_row(t, 0), key_wg + acc_row(t, 2)};
    const uint8_t* k_wg = smem + L::stationary_at(0) + c * BM_WG * 128;
    const uint8_t* v_wg = smem + L::stationary_at(1) + c * BM_WG * 128;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    float dk_acc[HD / 2], dv_acc[HD / 2];
    for (int i = 0; i < HD / 2; i++) dk_acc[i] = dv_acc[i] = 0.f;
    mbar_wait(kv_full, 0);
    for (int it = 0; it < iters; it++) {
        int s = it % STAGES, h = kvh * group + it / n_qt, qt = qs + (it % n_qt) * BQ;
        const uint8_t *q_tile = smem + L::ring_at(s, 0), *do_tile = smem + L::ring_at(s, 1);
        mbar_wait(&full[s], (it / STAGES) & 1);
        // else every query of the tile is before this warpgroup's keys, or in a later document
        if (qt + BQ - 1 >= key_wg && mst::first_key(doc_start, b, T, qt) < key_wg + BM_WG) {
            float st[BQ / 2] = {}, dpt[BQ / 2] = {};
            wgmma_two_nt<HD, BQ>(st, dpt, k_wg, q_tile, v_wg, do_tile);  // S^T = K Q^T, dP^T = V dO^T
            const float *lse_h = lse + ((size_t)b * H + h) * T, *D_h = Dbuf + ((size_t)b * H + h) * T;
            for (int i = 0; i < BQ / 2; i++) {  // P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - D); 0 where masked
                int query = qt + acc_col(t, i), key = keys[(i / 2) % 2];
                bool seen = query < q1 && query >= key && mst::first_key(doc_start, b, T, query) <= key;
                float p = seen ? exp2f(st[i] * scale_log2 - lse_h[query] * MST_LOG2E) : 0.f;
                dpt[i] = seen ? p * (dpt[i] - D_h[query]) : 0.f;
                st[i] = p;
            }
            uint32_t a_p[BQ / 16][4], a_ds[BQ / 16][4];
            for (int kk = 0; kk < BQ / 16; kk++) {
                acc_to_a(a_p[kk], st, kk);
                acc_to_a(a_ds[kk], dpt, kk);
            }
            wgmma_pv_issue<HD, BQ>(dv_acc, a_p, do_tile);  // dV += P^T dO
            wgmma_pv_issue<HD, BQ>(dk_acc, a_ds, q_tile);  // dK += dS^T Q   (scaled at the end)
            wgmma_wait<0>();
            fence_regs<HD / 2>(dv_acc);
            fence_regs<HD / 2>(dk_acc);
        }
        mbar_arrive(&empty[s]);
    }
    const float scale = 1.f / sqrtf((float)HD);
    int key_end = accumulate ? q1 : T;  // accumulating, keys from q1 on have nothing to add
    for (int i = 0; i < HD / 2; i += 2) {
        int key = keys[(i / 2) % 2];
        if (key >= key_end) continue;
        size_t off = (((size_t)b * T + key) * KV + kvh) * HD + acc_col(t, i);
        mst::store_grad_pair(dk + off, dk_acc[i] * scale, dk_acc[i + 1] * scale, accumulate);
        mst::store_grad_pair(dv + off, dv_acc[i], dv_acc[i + 1], accumulate);
    }
#endif
}

// dQ (written) for 128 query rows of [q0, q1) of head blockIdx.x of sequence blockIdx.y; grid (H, B, query
// tiles), tiles slowest and last first, as the forward.
template <int HD>
__global__ void __launch_bounds__(THREADS, 1) attention_backward_dq_sm90_kernel(bf16* dq, const __grid_constant__ CUtensorMap q_map,
                                                                                const __grid_constant__ CUtensorMap do_map,
                                                                                const __grid_constant__ CUtensorMap k_map,
                                                                                const __grid_constant__ CUtensorMap v_map, const float* lse,
                                                                                const float* Dbuf, const int* doc_start, int T, int H, int KV,
                                                                                int q0, int q1) {
#ifdef MST_SM90_CODE
    constexpr int BN = BWD_BN;
    using L = BackwardLayout<HD, BN>;
    uint8_t* smem = align1024(mst::dynamic_shared_memory());
    int h = blockIdx.x, b = blockIdx.y, kvh = h / (H / KV);
    int tile_row = q0 + (gridDim.z - 1 - blockIdx.z) * BM;
    int j0 = mst::first_key(doc_start, b, T, tile_row) / BN;  // starts never decrease: the tile's first row has the smallest
    int nblocks = (min(q1, tile_row + BM) + BN - 1) / BN;     // causal: keys up to the tile's last row
    uint64_t* bars = (uint64_t*)(smem + L::bars_at);
    init_barriers(bars, 1 + STAGES, STAGES, 128 * CONSUMERS);
    uint64_t *q_full = bars, *full = bars + 1, *empty = bars + 1 + STAGES;
    if (threadIdx.x / 128 == 0) {
        produce_backward<HD, BN>(smem, q_full, full, empty, &q_map, &do_map, h, tile_row, &k_map, &v_map, b, nblocks - j0,
                                 [=](int i) { return make_int2(kvh, (j0 + i) * BN); });
        return;
    }
    mst::setmaxnreg_inc<232>();
    int c = threadIdx.x / 128 - 1, t = threadIdx.x % 128;
    int row_wg = tile_row + c * BM_WG;  // this warpgroup's 64 rows
    int rows[2] = {row_wg + acc_row(t, 0), row_wg + acc_row(t, 2)};
    float lse2[2], D[2];
    int first[2];
    for (int r = 0; r < 2; r++) {  // rows past q1: no key (first = T)
        bool in = rows[r] < q1;
        size_t at = ((size_t)b * H + h) * T + (in ? rows[r] : 0);
        lse2[r] = in ? lse[at] * MST_LOG2E : 0.f;
        D[r] = in ? Dbuf[at] : 0.f;
        first[r] = in ? mst::first_key(doc_start, b, T, rows[r]) : T;
    }
    int first_wg = row_wg < q1 ? mst::first_key(doc_start, b, T, row_wg) : T;
    const uint8_t* q_wg = smem + L::stationary_at(0) + c * BM_WG * 128;
    const uint8_t* do_wg = smem + L::stationary_at(1) + c * BM_WG * 128;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    float dq_acc[HD / 2];
    for (int i = 0; i < HD / 2; i++) dq_acc[i] = 0.f;
    mbar_wait(q_full, 0);
    for (int j = j0; j < nblocks; j++) {
        int i = j - j0, s = i % STAGES, key0 = j * BN;
        const uint8_t *k_tile = smem + L::ring_at(s, 0), *v_tile = smem + L::ring_at(s, 1);
        mbar_wait(&full[s], (i / STAGES) & 1);
        // else every key of the block is after this warpgroup's rows, or before all their documents
        if (key0 <= row_wg + BM_WG - 1 && key0 + BN > first_wg) {
            float sc[BN / 2] = {}, dp[BN / 2] = {};
            wgmma_two_nt<HD, BN>(sc, dp, q_wg, k_tile, do_wg, v_tile);  // S = Q K^T, dP = dO V^T
            for (int e = 0; e < BN / 2; e++) {  // dS = P (dP - D), P = exp(S scale - lse); 0 where masked
                int key = key0 + acc_col(t, e), r = (e / 2) % 2;
                bool seen = key <= rows[r] && key >= first[r];
                sc[e] = seen ? exp2f(sc[e] * scale_log2 - lse2[r]) * (dp[e] - D[r]) : 0.f;
            }
            uint32_t a_ds[BN / 16][4];
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a_ds[kk], sc, kk);
            wgmma_pv_issue<HD, BN>(dq_acc, a_ds, k_tile);  // dQ += dS K   (scaled at the end)
            wgmma_wait<0>();
            fence_regs<HD / 2>(dq_acc);
        }
        mbar_arrive(&empty[s]);
    }
    const float scale = 1.f / sqrtf((float)HD);
    for (int i = 0; i < HD / 2; i += 2) {
        int row = rows[(i / 2) % 2];
        if (row < q1)
            *(__nv_bfloat162*)(dq + (((size_t)b * T + row) * H + h) * HD + acc_col(t, i)) = __floats2bfloat162_rn(dq_acc[i] * scale, dq_acc[i + 1] * scale);
    }
#endif
}

}  // namespace sm90

// ----------------------------------------------------------------------------
// host: tensor maps through the driver's entry point (no -lcuda)

static inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    if (fn) return fn;
    cudaDriverEntryPointQueryResult found;
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !fn) { fprintf(stderr, "error: cuTensorMapEncodeTiled not found in the driver\n"); exit(1); }
    return fn;
}

// a bf16 tensor of `rank` dimensions {hd, heads, rows(, sequences)} (strides in bytes of dimensions 1 ..) read in
// boxes of 64 columns x 1 head x box_rows rows (x 1 sequence), 128-byte swizzle, zeros outside the tensor
static inline CUtensorMap encode_tensor_map(const bf16* base, int rank, const cuuint64_t* dims, const cuuint64_t* strides, int box_rows) {
    CUtensorMap map;
    cuuint32_t box[4] = {sm90::SLAB, 1, (cuuint32_t)box_rows, 1};
    cuuint32_t element_strides[4] = {1, 1, 1, 1};
    CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, (void*)base, dims, strides, box, element_strides,
                                      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { fprintf(stderr, "error: cuTensorMapEncodeTiled failed (%d)\n", (int)r); exit(1); }
    return map;
}
// (rows, heads, hd): the forward's, which sees the batch as B T rows
static inline CUtensorMap make_tensor_map(const bf16* base, int rows, int heads, int hd, int box_rows) {
    cuuint64_t dims[3] = {(cuuint64_t)hd, (cuuint64_t)heads, (cuuint64_t)rows};
    cuuint64_t strides[2] = {(cuuint64_t)hd * 2, (cuuint64_t)heads * hd * 2};
    return encode_tensor_map(base, 3, dims, strides, box_rows);
}
// (B, T, heads, hd) cut to the rows [0, q1) of each sequence: the backward's, whose tiles' rows at or past q1
// arrive as zeros
static inline CUtensorMap make_block_tensor_map(const bf16* base, int B, int T, int q1, int heads, int hd, int box_rows) {
    cuuint64_t dims[4] = {(cuuint64_t)hd, (cuuint64_t)heads, (cuuint64_t)q1, (cuuint64_t)B};
    cuuint64_t strides[3] = {(cuuint64_t)hd * 2, (cuuint64_t)heads * hd * 2, (cuuint64_t)T * heads * hd * 2};
    return encode_tensor_map(base, 4, dims, strides, box_rows);
}

// the current card's compute capability major (once per process: the trainer uses one kind of card)
static inline int device_major() {
    static int major = -1;
    if (major < 0) {
        int device = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    }
    return major;
}

}  // namespace mst

template <int HD>
static inline void attention_forward_sm90_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                                             int KV, cudaStream_t stream, const int* doc_start, int q0, int q1) {
    using namespace mst::sm90;
    constexpr int smem = ForwardLayout<HD>::bytes;
    static bool attribute_set = false;
    if (!attribute_set) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_forward_sm90_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        attribute_set = true;
    }
    // the maps see the batch as B T rows: a tile's rows past T belong to the next sequence (or are zeros past the
    // end) and are masked as keys and never written as queries
    CUtensorMap qm = mst::make_tensor_map(q, B * T, H, HD, BM), km = mst::make_tensor_map(k, B * T, KV, HD, FWD_BN),
                vm = mst::make_tensor_map(v, B * T, KV, HD, FWD_BN);
    dim3 grid(H, B, mst_ceil_div(q1 - q0, BM));
    mst::launch<attention_forward_sm90_kernel<HD>>(grid, THREADS, smem, stream, out, lse, qm, km, vm, doc_start, T, H, KV, q0, q1);
    CUDA_CHECK(cudaGetLastError());
}

// what both sm_90a entry points refuse (one line, exit 1): more query tiles than a grid dimension holds, a card
// that is not sm_90
static inline void attention_sm90_check(const char* who, int n) {
    if (mst_ceil_div(n, mst::sm90::BM) > 65535) {
        fprintf(stderr, "%s: %d query rows are more than 65535 tiles of %d\n", who, n, mst::sm90::BM);
        exit(1);
    }
    if (mst::device_major() != 9) {
        fprintf(stderr, "%s: needs an sm_90 card (H100/H200); this one is compute capability %d.x\n", who, mst::device_major());
        exit(1);
    }
}

static inline void attention_forward_sm90(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                                          int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t stream) {
    profile_phase(PHASE_ATTENTION_FORWARD, stream);
    const void* ptrs[] = {out, q, k, v};
    attention_check_args("attention_forward_sm90", B, T, H, KV, hd, q0, n, ptrs, 4);
    attention_sm90_check("attention_forward_sm90", n);
    int q1 = q0 + n;
    if (hd == 64) attention_forward_sm90_hd<64>(out, lse, q, k, v, B, T, H, KV, stream, doc_start, q0, q1);
    else attention_forward_sm90_hd<128>(out, lse, q, k, v, B, T, H, KV, stream, doc_start, q0, q1);
}

template <int HD, typename GradKV>
static inline void attention_backward_sm90_hd(bf16* dq, GradKV* dk, GradKV* dv, const float* D, const bf16* dout, const bf16* q,
                                              const bf16* k, const bf16* v, const float* lse, const int* doc_start, int q0, int q1,
                                              int B, int T, int H, int KV, cudaStream_t stream) {
    using namespace mst::sm90;
    constexpr int smem_kv = BackwardLayout<HD, BWD_BQ>::bytes, smem_q = BackwardLayout<HD, BWD_BN>::bytes;
    static bool attribute_set = false;
    if (!attribute_set) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_sm90_kernel<HD, GradKV>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_kv));
        CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dq_sm90_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_q));
        attribute_set = true;
    }
    auto map = [&](const bf16* x, int heads, int box_rows) { return mst::make_block_tensor_map(x, B, T, q1, heads, HD, box_rows); };
    // the first block (q0 == 0) writes every key's dk, dv (0 where no query sees it), later ones add to keys before q1
    bool accumulate = q0 > 0;
    dim3 grid_kv(mst_ceil_div(accumulate ? q1 : T, BM), KV, B);
    mst::launch<attention_backward_dkdv_sm90_kernel<HD, GradKV>>(grid_kv, THREADS, smem_kv, stream, dk, dv, map(k, KV, BM), map(v, KV, BM),
                                                                 map(q, H, BWD_BQ), map(dout, H, BWD_BQ), lse, D, doc_start, T, H, KV,
                                                                 q0, q1, accumulate);
    CUDA_CHECK(cudaGetLastError());
    dim3 grid_q(H, B, mst_ceil_div(q1 - q0, BM));
    mst::launch<attention_backward_dq_sm90_kernel<HD>>(grid_q, THREADS, smem_q, stream, dq, map(q, H, BM), map(dout, H, BM),
                                                       map(k, KV, BWD_BN), map(v, KV, BWD_BN), lse, D, doc_start, T, H, KV, q0, q1);
    CUDA_CHECK(cudaGetLastError());
}

// a drop-in for attention_backward (same arguments, layouts and query-block semantics; scratch of
// attention_backward_scratch_bytes): the preprocess, then the dK/dV and the dQ kernels above. Deterministic.
template <typename GradKV>  // bf16 or float
static inline void attention_backward_sm90(bf16* dq, GradKV* dk, GradKV* dv, void* scratch, const bf16* dout, const bf16* q,
                                           const bf16* k, const bf16* v, const bf16* out, const float* lse, int B, int T, int H,
                                           int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t stream) {
    float* D = attention_backward_prologue("attention_backward_sm90", dq, dk, dv, scratch, dout, q, k, v, out, B, T, H, KV, hd, q0, n,
                                           stream);
    attention_sm90_check("attention_backward_sm90", n);
    if (hd == 64) attention_backward_sm90_hd<64>(dq, dk, dv, D, dout, q, k, v, lse, doc_start, q0, q0 + n, B, T, H, KV, stream);
    else attention_backward_sm90_hd<128>(dq, dk, dv, D, dout, q, k, v, lse, doc_start, q0, q0 + n, B, T, H, KV, stream);
}
