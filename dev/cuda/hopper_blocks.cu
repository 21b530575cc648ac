// dev/cuda/hopper_blocks.cu: the building blocks of an FA3-class attention for sm_90a (issue 9), each a small
// kernel checked against a CPU reference on fresh random inputs, so the first run on an H100/H200 confirms the
// layouts that dev/cuda/hopper_emulator.py checks on the CPU (same index math, transcribed there):
//   (a) tma_ring:  TMA (cp.async.bulk.tensor, 128-byte swizzle) into a 2-stage full/empty mbarrier ring, driven by
//                  a producer warpgroup (setmaxnreg.dec) for two consumer warpgroups (setmaxnreg.inc) that copy
//                  each stage back out through the swizzle formula. Reference: the input itself (zeros past T).
//   (b) qk:        S = Q K^T, wgmma m64n64k16 with both operands K-major in shared memory (descriptors), hd 64/128.
//                  Reference: double-precision dot products of the bf16 inputs.
//   (c) pv:        O = P V, register-A wgmma: P read in the fp32 accumulator layout, converted to bf16 A
//                  fragments; V read MN-major through the descriptor's transpose bit. Reference: bf16(P) V, double.
//   (d) attention: causal GQA forward (B, T, heads, hd), one CTA per 128-row query tile (two consumer
//                  warpgroups of 64 rows) against its key blocks of 64 through the ring, online exp2 softmax,
//                  only blocks that cross the diagonal or T masked; a plain loop and FA3's intra-warpgroup
//                  overlap (S(j) with PV(j-1) in flight). Then a benchmark at the training shape. Reference: attention_forward_cpu (fp32) with FlashAttention-3's rule
//                  |ours - ref32| <= 2 |ref_bf16 - ref32| + atol, where ref_bf16 rounds S, P and O to bf16.
// UNVERIFIED on a GPU until dev/gpu_check.sh has run it (GPU_CHECK_ONLY=hopper_blocks). Other cards: SKIP lines.
// Build: make dev (sm_80 compiles empty kernel bodies; the sm_90a pass holds the real code). The PTX instructions
// are mst/ptx.h's named functions (no asm here). On the CPU device (make dev/cuda/bin/hopper_blocks_cpu), which
// stands in for an sm_90a card, they run by the PTX ISA's semantics (mst/cpu_device/hopper.cpp): TMA tiles land
// only at their mbarrier phase, wgmma results only at wgmma.wait_group, shared memory race-checked; no benchmarks.
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes from the driver at run time (no -lcuda)
#include <cudaTypedefs.h>

#include "common.h"

#if (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)) || defined(MST_CPU_DEVICE)
#define HOPPER_CODE 1  // the sm_90a pass: wgmma, setmaxnreg (the CPU device stands in for an sm_90a card)
#endif

constexpr int BM_WG = 64;        // query rows per consumer warpgroup (wgmma's M)
constexpr int CONSUMERS = 2;     // consumer warpgroups
constexpr int BM = BM_WG * CONSUMERS;
constexpr int BN = 64;           // keys per block (wgmma's N for S, K for O += P V)
constexpr int STAGES = 2;        // K/V ring depth
constexpr int THREADS = 128 * (1 + CONSUMERS);
constexpr int SLAB = 64;         // bf16 columns per 128-byte swizzled row: a tile of hd columns is hd/64 slabs

// shared memory: Q (BM x HD), then STAGES x (K, V) (BN x HD each), each tile hd/64 slabs of rows x 128 bytes;
// then the mbarriers. Every tile starts at a multiple of 1024 (the 128-byte swizzle repeats every 8 rows).
template <int HD> struct RingLayout {
    static constexpr int q_bytes = BM * HD * 2;                 // Q: BM x HD x 2 bytes
    static constexpr int kv_bytes = BN * HD * 2;                // one K or V block: BN x HD x 2 bytes
    static constexpr int k_at(int s) { return q_bytes + s * 2 * kv_bytes; }
    static constexpr int v_at(int s) { return k_at(s) + kv_bytes; }
    static constexpr int bars_at = q_bytes + STAGES * 2 * kv_bytes;  // q_full, full[STAGES], empty[STAGES]
    static constexpr int bytes = bars_at + 8 * (1 + 2 * STAGES) + 1024;  // + alignment slack
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

#ifdef HOPPER_CODE
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) { mst::mbarrier_init(bar, (uint32_t)count); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) { mst::mbarrier_arrive_expect_tx(bar, bytes); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) { mst::mbarrier_arrive(bar); }
// waits until the phase of parity `parity` has completed (phase k has parity k & 1). A dev program: after 5 s
// it traps (the launch fails with an error, CUDA_CHECK names the line) instead of hanging the device run. No
// printf here: a function call inside the wgmma pipeline makes ptxas serialize the wgmmas (C7510). (The CPU
// device blocks in the try_wait instead and reports a wait that can never complete.)
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
    uint64_t start = 0, now;
    for (int n = 0; !mst::mbarrier_try_wait_parity(bar, parity); n++) {
        now = mst::globaltimer();
        if (n == 0) start = now;
        else if (now - start > 5000000000ull) __trap();
    }
}
// one box of 64 columns x rows of a 3-D map {hd, heads, T} at (col, head, row); completes on bar
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

// d[32] += A (64x16, smem K-major) * B (64x16, smem K-major)^T; scale_d 0 overwrites d
__device__ __forceinline__ void wgmma_ss_n64(float* d, uint64_t desc_a, uint64_t desc_b, int scale_d) {
    mst::wgmma_m64n64k16_ss(d, desc_a, desc_b, scale_d);
}
// d[N/2] += A (64x16 bf16, registers) * B (16xN, smem MN-major: the transpose bit)
__device__ __forceinline__ void wgmma_rs_n64(float* d, const uint32_t* a, uint64_t desc_b) { mst::wgmma_m64n64k16_rs_transb(d, a, desc_b); }
__device__ __forceinline__ void wgmma_rs_n128(float* d, const uint32_t* a, uint64_t desc_b) { mst::wgmma_m64n128k16_rs_transb(d, a, desc_b); }
#endif  // HOPPER_CODE

// ----------------------------------------------------------------------------
// the index math the kernels share (hopper_emulator.py transcribes each)

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

#ifdef HOPPER_CODE
// the hd/64 boxes of a tile (rows x hd) at (row, head) into consecutive slabs of rows x 128 bytes
template <int HD>
__device__ __forceinline__ void tma_load_tile(uint8_t* dst, const CUtensorMap* map, uint64_t* bar, int head, int row, int rows) {
    for (int s = 0; s < HD / SLAB; s++) tma_load(dst + s * rows * 128, map, bar, s * SLAB, head, row);
}

// S (64 x BN) = Q (64 x HD) K^T: both K-major, 128-byte swizzle, SBO = 1024 (8 rows of 128 bytes), LBO unused
// (16); k-step kk lies in slab kk/4 at byte 32 (kk%4) of each row: the start address advances, the swizzle
// is applied by the hardware to the summed address.
// wgmma_qk_issue commits one group; wgmma_qk also waits for it.
template <int HD>
__device__ __forceinline__ void wgmma_qk_issue(float* s, const uint8_t* q, int q_rows, const uint8_t* k) {
    fence_regs<BN / 2>(s);
    wgmma_fence();
    for (int kk = 0; kk < HD / 16; kk++) {
        uint64_t da = smem_desc(smem_u32(q + (kk / 4) * q_rows * 128 + (kk % 4) * 32), 16, 1024);
        uint64_t db = smem_desc(smem_u32(k + (kk / 4) * BN * 128 + (kk % 4) * 32), 16, 1024);
        wgmma_ss_n64(s, da, db, kk > 0);
    }
    wgmma_commit();
}
template <int HD>
__device__ __forceinline__ void wgmma_qk(float* s, const uint8_t* q, int q_rows, const uint8_t* k) {
    wgmma_qk_issue<HD>(s, q, q_rows, k);
    wgmma_wait<0>();
    fence_regs<BN / 2>(s);
}

// O (64 x HD) += P (64 x BN, registers) V (BN x HD): V MN-major, 128-byte swizzle; along K (keys) 8 rows of
// 128 bytes then SBO = 1024 to the next 8; along N (hd) LBO = BN x 128 bytes to the next slab of 64 columns;
// k-step kk starts 16 keys further: + 16 x 128 bytes.
// wgmma_pv_issue commits one group; wgmma_pv also waits for it.
template <int HD>
__device__ __forceinline__ void wgmma_pv_issue(float* o, const uint32_t (*a)[4], const uint8_t* v) {
    fence_regs<HD / 2>(o);
    wgmma_fence();
    for (int kk = 0; kk < BN / 16; kk++) {
        uint64_t db = smem_desc(smem_u32(v + kk * 16 * 128), BN * 128, 1024);
        if constexpr (HD == 64) wgmma_rs_n64(o, a[kk], db);
        else wgmma_rs_n128(o, a[kk], db);
    }
    wgmma_commit();
}
template <int HD>
__device__ __forceinline__ void wgmma_pv(float* o, const uint32_t (*a)[4], const uint8_t* v) {
    wgmma_pv_issue<HD>(o, a, v);
    wgmma_wait<0>();
    fence_regs<HD / 2>(o);
}

__device__ __forceinline__ uint8_t* align1024(uint8_t* p) {
    return (uint8_t*)(((uintptr_t)p + 1023) & ~(uintptr_t)1023);
}

// The producer warpgroup's loop: one thread loads Q once (q_full) and K/V block j into stage j % STAGES after
// the consumers released the block j - STAGES there (empty completes once per release: release r of stage s
// is phase r, so block j waits for parity (j / STAGES - 1) & 1; full of block j is phase j / STAGES).
// Rows are counted from row0 (b T: the maps see the batch as B T rows).
template <int HD>
__device__ void produce(uint8_t* smem, uint64_t* q_full, uint64_t* full, uint64_t* empty, const CUtensorMap* q_map,
                        const CUtensorMap* k_map, const CUtensorMap* v_map, int row0, int q_head, int q0, int kv_head, int nblocks) {
    using L = RingLayout<HD>;
    mst::setmaxnreg_dec<40>();  // 40 x 128 + 232 x 256 = the 168 x 384 held at launch
    if (threadIdx.x != 0) return;
    if (q_map) {
        mbar_expect_tx(q_full, L::q_bytes);
        tma_load_tile<HD>(smem, q_map, q_full, q_head, row0 + q0, BM);
    }
    for (int j = 0; j < nblocks; j++) {
        int s = j % STAGES;
        if (j >= STAGES) mbar_wait(&empty[s], (j / STAGES - 1) & 1);
        mbar_expect_tx(&full[s], 2 * L::kv_bytes);
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

template <int HD>
__device__ uint64_t* ring_setup(uint8_t* smem) {
    // q_full and full[]: one arrival (the producer's expect_tx); empty[]: every consumer thread
    uint64_t* bars = (uint64_t*)(smem + RingLayout<HD>::bars_at);
    init_barriers(bars, 1 + STAGES, STAGES, 128 * CONSUMERS);
    return bars;
}
#endif  // HOPPER_CODE

// ----------------------------------------------------------------------------
// (a) the ring alone: K/V blocks 0..nblocks-1 of one head, copied back out (unswizzled) to k_out, v_out
// (nblocks x BN rows x HD; rows past T must come back zero: TMA fills out-of-bounds rows with zeros).

template <int HD>
__global__ void __launch_bounds__(THREADS, 1) tma_ring_kernel(bf16* k_out, bf16* v_out, const __grid_constant__ CUtensorMap k_map,
                                                              const __grid_constant__ CUtensorMap v_map, int head, int nblocks) {
#ifdef HOPPER_CODE
    uint8_t* smem_raw = mst::dynamic_shared_memory();
    uint8_t* smem = align1024(smem_raw);
    uint64_t* bars = ring_setup<HD>(smem);
    uint64_t *full = bars + 1, *empty = bars + 1 + STAGES;
    int wg = threadIdx.x / 128;
    if (wg == 0) {
        produce<HD>(smem, bars, full, empty, nullptr, &k_map, &v_map, 0, 0, 0, head, nblocks);
    } else {
        mst::setmaxnreg_inc<232>();
        int t = threadIdx.x - 128;  // 0 .. 255 over both consumers
        for (int j = 0; j < nblocks; j++) {
            int s = j % STAGES;
            mbar_wait(&full[s], (j / STAGES) & 1);
            for (int e = t; e < BN * HD; e += 128 * CONSUMERS) {
                int r = e / HD, c = e % HD;
                uint32_t byte = (c / SLAB) * BN * 128 + swizzle128(r * 128 + (c % SLAB) * 2);
                size_t at = ((size_t)j * BN + r) * HD + c;
                k_out[at] = *(const bf16*)(smem + RingLayout<HD>::k_at(s) + byte);
                v_out[at] = *(const bf16*)(smem + RingLayout<HD>::v_at(s) + byte);
            }
            mbar_arrive(&empty[s]);
        }
    }
#endif
}

// (b) S = Q K^T for one tile: Q rows [0, 64), keys [0, 64) of head 0; s_out 64 x 64 fp32 (row-major)
template <int HD>
__global__ void __launch_bounds__(128, 1) qk_kernel(float* s_out, const __grid_constant__ CUtensorMap q_map,
                                                    const __grid_constant__ CUtensorMap k_map) {
#ifdef HOPPER_CODE
    uint8_t* smem_raw = mst::dynamic_shared_memory();
    uint8_t* q = align1024(smem_raw);
    uint8_t* k = q + BM_WG * HD * 2;
    __shared__ __align__(8) uint64_t bar;
    init_barriers(&bar, 1, 0);
    if (threadIdx.x == 0) {
        mbar_expect_tx(&bar, (BM_WG + BN) * HD * 2);
        tma_load_tile<HD>(q, &q_map, &bar, 0, 0, BM_WG);
        tma_load_tile<HD>(k, &k_map, &bar, 0, 0, BN);
    }
    mbar_wait(&bar, 0);
    float s[BN / 2];
    for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
    wgmma_qk<HD>(s, q, BM_WG, k);
    int t = threadIdx.x;
    for (int i = 0; i < BN / 2; i++) s_out[acc_row(t, i) * BN + acc_col(t, i)] = s[i];
#endif
}

// (c) O = P V: p_in 64 x BN fp32 (row-major) read in the accumulator layout, V rows [0, BN) of head 0;
// o_out 64 x HD fp32
template <int HD>
__global__ void __launch_bounds__(128, 1) pv_kernel(float* o_out, const float* p_in, const __grid_constant__ CUtensorMap v_map) {
#ifdef HOPPER_CODE
    uint8_t* smem_raw = mst::dynamic_shared_memory();
    uint8_t* v = align1024(smem_raw);
    __shared__ __align__(8) uint64_t bar;
    init_barriers(&bar, 1, 0);
    if (threadIdx.x == 0) {
        mbar_expect_tx(&bar, BN * HD * 2);
        tma_load_tile<HD>(v, &v_map, &bar, 0, 0, BN);
    }
    int t = threadIdx.x;
    float p[BN / 2], o[HD / 2];
    for (int i = 0; i < BN / 2; i++) p[i] = p_in[acc_row(t, i) * BN + acc_col(t, i)];
    for (int i = 0; i < HD / 2; i++) o[i] = 0.f;
    uint32_t a[BN / 16][4];
    for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], p, kk);
    mbar_wait(&bar, 0);
    wgmma_pv<HD>(o, a, v);
    for (int i = 0; i < HD / 2; i++) o_out[acc_row(t, i) * HD + acc_col(t, i)] = o[i];
#endif
}

#ifdef HOPPER_CODE
// block j's scores s (this thread's accumulator registers) -> exp2 probabilities in place, with the online
// softmax state: m (running max, log2 units), l (this thread's partial row sums), corr (the factor for O).
// Only blocks that cross the warpgroup's diagonal or T are masked.
__device__ __forceinline__ void online_softmax(float* s, float* m, float* l, float* corr, int j, int wg_row0, int T,
                                               float scale_log2, int t) {
    bool masked = (j + 1) * BN > wg_row0 + 1 || (j + 1) * BN > T;  // some key > some row, or past T
    float block_max[2] = {-INFINITY, -INFINITY};
    for (int i = 0; i < BN / 2; i++) {
        int key = j * BN + acc_col(t, i), row = wg_row0 + acc_row(t, i);
        s[i] = (masked && (key > row || key >= T)) ? -INFINITY : s[i] * scale_log2;
        block_max[(i / 2) % 2] = fmaxf(block_max[(i / 2) % 2], s[i]);
    }
    float sum[2] = {0.f, 0.f};
    for (int r = 0; r < 2; r++) {  // a row's 64 columns lie in the 4 threads of a quad
        block_max[r] = fmaxf(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 1));
        block_max[r] = fmaxf(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 2));
        float m_new = fmaxf(m[r], block_max[r]);  // finite: key 0 is valid for every row
        corr[r] = exp2f(m[r] - m_new);
        m[r] = m_new;
    }
    for (int i = 0; i < BN / 2; i++) {
        s[i] = exp2f(s[i] - m[(i / 2) % 2]);
        sum[(i / 2) % 2] += s[i];
    }
    for (int r = 0; r < 2; r++) l[r] = l[r] * corr[r] + sum[r];  // per-thread partial row sums
}
#endif

// (d) causal GQA attention forward, the product's layout: q, out (B, T, H, HD), k, v (B, T, KV, HD) bf16 (through
// maps over B T rows: a tile's rows past T belong to the next sequence or are zeros past the end, and are
// masked as keys and never written as queries); lse (B, H, T) natural log. grid (ceil(T / BM), H, B), longest
// query tiles first; THREADS threads.
template <int HD, bool OVERLAP>
__global__ void __launch_bounds__(THREADS, 1) attention_sm90_kernel(bf16* out, float* lse, const __grid_constant__ CUtensorMap q_map,
                                                                    const __grid_constant__ CUtensorMap k_map,
                                                                    const __grid_constant__ CUtensorMap v_map, int T, int H, int KV) {
#ifdef HOPPER_CODE
    uint8_t* smem_raw = mst::dynamic_shared_memory();
    using L = RingLayout<HD>;
    uint8_t* smem = align1024(smem_raw);
    uint64_t* bars = ring_setup<HD>(smem);
    uint64_t *q_full = bars, *full = bars + 1, *empty = bars + 1 + STAGES;
    int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, kvh = h / (H / KV), b = blockIdx.z;
    int q0 = tile * BM;
    int nblocks = (min(T, q0 + BM) + BN - 1) / BN;  // causal: keys < q0 + BM
    int wg = threadIdx.x / 128;
    if (wg == 0) {
        produce<HD>(smem, q_full, full, empty, &q_map, &k_map, &v_map, b * T, h, q0, kvh, nblocks);
        return;
    }
    mst::setmaxnreg_inc<232>();
    int c = wg - 1, t = threadIdx.x % 128;
    int wg_row0 = q0 + c * BM_WG;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);  // softmax in exp2: scores x scale x log2(e)
    float o[HD / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows acc_row(t, 0) and + 8
    for (int i = 0; i < HD / 2; i++) o[i] = 0.f;
    mbar_wait(q_full, 0);
    if (!OVERLAP) {
        for (int j = 0; j < nblocks; j++) {
            int s_ = j % STAGES;
            mbar_wait(&full[s_], (j / STAGES) & 1);
            float s[BN / 2] = {};  // overwritten (scale-d 0 on the first k-step)
            wgmma_qk<HD>(s, smem + c * BM_WG * 128, BM, smem + L::k_at(s_));
            float corr[2];
            online_softmax(s, m, l, corr, j, wg_row0, T, scale_log2, t);
            for (int i = 0; i < HD / 2; i++) o[i] *= corr[(i / 2) % 2];
            uint32_t a[BN / 16][4];
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
            wgmma_pv<HD>(o, a, smem + L::v_at(s_));
            mbar_arrive(&empty[s_]);
        }
    } else {
        // FA3's intra-warpgroup overlap: S(j) = Q K(j)^T and O += P(j-1) V(j-1) in flight together; softmax(j)
        // runs while PV(j-1) finishes; O is rescaled by corr(j) only after PV(j-1) has landed, and stage j-1
        // (K and V) is released then.
        uint32_t a[BN / 16][4];
        {
            mbar_wait(&full[0], 0);
            float s[BN / 2] = {};
            wgmma_qk<HD>(s, smem + c * BM_WG * 128, BM, smem + L::k_at(0));
            float corr[2];  // O is zero: nothing to rescale
            online_softmax(s, m, l, corr, 0, wg_row0, T, scale_log2, t);
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
        }
        for (int j = 1; j < nblocks; j++) {
            int s_ = j % STAGES, prev = (j - 1) % STAGES;
            mbar_wait(&full[s_], (j / STAGES) & 1);
            float s[BN / 2] = {};
            wgmma_qk_issue<HD>(s, smem + c * BM_WG * 128, BM, smem + L::k_at(s_));
            wgmma_pv_issue<HD>(o, a, smem + L::v_at(prev));
            wgmma_wait<1>();  // S(j) has landed; PV(j-1) may still run
            fence_regs<BN / 2>(s);
            float corr[2];
            online_softmax(s, m, l, corr, j, wg_row0, T, scale_log2, t);
            wgmma_wait<0>();
            fence_regs<HD / 2>(o);
            mbar_arrive(&empty[prev]);
            for (int i = 0; i < HD / 2; i++) o[i] *= corr[(i / 2) % 2];
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
        }
        wgmma_pv<HD>(o, a, smem + L::v_at((nblocks - 1) % STAGES));
        mbar_arrive(&empty[(nblocks - 1) % STAGES]);
    }
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    for (int i = 0; i < HD / 2; i += 2) {
        int row = wg_row0 + acc_row(t, i), col = acc_col(t, i);
        float inv = 1.f / l[(i / 2) % 2];
        if (row < T) *(__nv_bfloat162*)(out + (((size_t)b * T + row) * H + h) * HD + col) = __floats2bfloat162_rn(o[i] * inv, o[i + 1] * inv);
    }
    for (int r = 0; r < 2; r++) {
        int row = wg_row0 + acc_row(t, 2 * r);
        if (t % 4 == 0 && row < T) lse[((size_t)b * H + h) * T + row] = (m[r] + log2f(l[r])) * 0.6931471805599453f;
    }
#endif
}

// ----------------------------------------------------------------------------
// host: tensor maps through the driver's entry point (no -lcuda)

static PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    if (fn) return fn;
    cudaDriverEntryPointQueryResult found;
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !fn) { fprintf(stderr, "error: cuTensorMapEncodeTiled not found in the driver\n"); exit(1); }
    return fn;
}

// a bf16 tensor (T, heads, hd) read in boxes of 64 columns x 1 head x box_rows rows, 128-byte swizzle, zeros
// outside the tensor
static CUtensorMap make_tensor_map(const bf16* base, int T, int heads, int hd, int box_rows) {
    CUtensorMap map;
    cuuint64_t dims[3] = {(cuuint64_t)hd, (cuuint64_t)heads, (cuuint64_t)T};
    cuuint64_t strides[2] = {(cuuint64_t)hd * 2, (cuuint64_t)heads * hd * 2};  // bytes, dims 1 and 2
    cuuint32_t box[3] = {SLAB, 1, (cuuint32_t)box_rows};
    cuuint32_t element_strides[3] = {1, 1, 1};
    CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, (void*)base, dims, strides, box, element_strides,
                                      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { fprintf(stderr, "error: cuTensorMapEncodeTiled failed (%d)\n", (int)r); exit(1); }
    return map;
}

template <typename K>
static void set_smem(K kernel, int bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// attention_sm90_kernel's launch: q, out (T, H, hd), k, v (T, KV, hd) bf16, lse (H, T); B = 1. The tensor maps
// are made per call here (the product would make them once per shape at start-up).
template <int HD, bool OVERLAP>
static void launch_attention_sm90(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV) {
    dim3 grid((T + BM - 1) / BM, H, B);
    CUtensorMap qm = make_tensor_map(q, B * T, H, HD, BM), km = make_tensor_map(k, B * T, KV, HD, BN), vm = make_tensor_map(v, B * T, KV, HD, BN);
    set_smem(attention_sm90_kernel<HD, OVERLAP>, RingLayout<HD>::bytes);
    mst::launch<attention_sm90_kernel<HD, OVERLAP>>(grid, THREADS, RingLayout<HD>::bytes, 0, out, lse, qm, km, vm, T, H, KV);
    CUDA_CHECK(cudaGetLastError());
}
// overlap: the intra-warpgroup overlap of softmax and the GEMMs (FA3), else one block at a time
static void attention_sm90(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int hd,
                           bool overlap) {
    if (hd == 64) (overlap ? launch_attention_sm90<64, true> : launch_attention_sm90<64, false>)(out, lse, q, k, v, B, T, H, KV);
    else (overlap ? launch_attention_sm90<128, true> : launch_attention_sm90<128, false>)(out, lse, q, k, v, B, T, H, KV);
}

// ----------------------------------------------------------------------------
// checks

template <int HD>
static void check_tma_ring(int T) {
    int heads = 3, head = 1, nblocks = (T + BN - 1) / BN;
    std::vector<float> k = rand_uniform((size_t)T * heads * HD, -1.f, 1.f), v = rand_uniform((size_t)T * heads * HD, -1.f, 1.f);
    bf16 *dk = upload_bf16(k), *dv = upload_bf16(v);
    size_t n = (size_t)nblocks * BN * HD;
    bf16 *k_out = dmalloc<bf16>(n), *v_out = dmalloc<bf16>(n);
    poison(k_out, n * 2);
    poison(v_out, n * 2);
    set_smem(tma_ring_kernel<HD>, RingLayout<HD>::bytes);
    mst::launch<tma_ring_kernel<HD>>(1, THREADS, RingLayout<HD>::bytes, 0, k_out, v_out, make_tensor_map(dk, T, heads, HD, BN),
                                                              make_tensor_map(dv, T, heads, HD, BN), head, nblocks);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> k_ref(n, 0.f), v_ref(n, 0.f);  // rows >= T: zeros
    for (int r = 0; r < T; r++)
        for (int c = 0; c < HD; c++) {
            k_ref[(size_t)r * HD + c] = k[((size_t)r * heads + head) * HD + c];
            v_ref[(size_t)r * HD + c] = v[((size_t)r * heads + head) * HD + c];
        }
    char name[96];
    snprintf(name, sizeof name, "(a) tma_ring K hd=%d T=%d (%d blocks)", HD, T, nblocks);
    compare(name, download_bf16(k_out, n), k_ref, 0.f, 0.f);
    snprintf(name, sizeof name, "(a) tma_ring V hd=%d T=%d (%d blocks)", HD, T, nblocks);
    compare(name, download_bf16(v_out, n), v_ref, 0.f, 0.f);
    for (void* p : {(void*)dk, (void*)dv, (void*)k_out, (void*)v_out}) CUDA_CHECK(cudaFree(p));
}

template <int HD>
static void check_qk() {
    std::vector<float> q = rand_uniform((size_t)BM_WG * HD, -1.f, 1.f), k = rand_uniform((size_t)BN * HD, -1.f, 1.f);
    bf16 *dq = upload_bf16(q), *dk = upload_bf16(k);
    float* s = dmalloc<float>(BM_WG * BN);
    poison(s, BM_WG * BN * 4);
    int smem = (BM_WG + BN) * HD * 2 + 1024;
    set_smem(qk_kernel<HD>, smem);
    mst::launch<qk_kernel<HD>>(1, 128, smem, 0, s, make_tensor_map(dq, BM_WG, 1, HD, BM_WG), make_tensor_map(dk, BN, 1, HD, BN));
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> ref(BM_WG * BN);
    for (int r = 0; r < BM_WG; r++)
        for (int c = 0; c < BN; c++) {
            double acc = 0;
            for (int d = 0; d < HD; d++) acc += (double)q[r * HD + d] * k[c * HD + d];
            ref[r * BN + c] = (float)acc;
        }
    char name[96];
    snprintf(name, sizeof name, "(b) qk wgmma m64n64k16 smem x smem hd=%d", HD);
    compare(name, download(s, BM_WG * BN), ref, 1e-4f * HD, 1e-5f);  // fp32 accumulation of HD exact products
    for (void* p : {(void*)dq, (void*)dk, (void*)s}) CUDA_CHECK(cudaFree(p));
}

template <int HD>
static void check_pv() {
    std::vector<float> p = rand_uniform((size_t)BM_WG * BN, 0.f, 1.f), v = rand_uniform((size_t)BN * HD, -1.f, 1.f);
    bf16* dv = upload_bf16(v);
    float* dp = upload(p);
    float* o = dmalloc<float>(BM_WG * HD);
    poison(o, BM_WG * HD * 4);
    int smem = BN * HD * 2 + 1024;
    set_smem(pv_kernel<HD>, smem);
    mst::launch<pv_kernel<HD>>(1, 128, smem, 0, o, dp, make_tensor_map(dv, BN, 1, HD, BN));
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> ref(BM_WG * HD);
    for (int r = 0; r < BM_WG; r++)
        for (int c = 0; c < HD; c++) {
            double acc = 0;
            for (int j = 0; j < BN; j++) acc += (double)round_bf16(p[r * BN + j]) * v[j * HD + c];
            ref[r * HD + c] = (float)acc;
        }
    char name[96];
    snprintf(name, sizeof name, "(c) pv wgmma m64n%dk16 registers x smem^T", HD);
    compare(name, download(o, BM_WG * HD), ref, 1e-4f * BN, 1e-5f);
    for (void* p_ : {(void*)dv, (void*)dp, (void*)o}) CUDA_CHECK(cudaFree(p_));
}

// the bf16 reference that sizes the error (FlashAttention-3's rule): S, P and O rounded to bf16, fp32 sums;
// one sequence
static void attention_forward_bf16_cpu(float* out, const float* q, const float* k, const float* v, int T, int H, int KV, int hd) {
    float scale = 1.f / sqrtf((float)hd);
    std::vector<float> p(T);
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) {
            const float* qt = q + ((size_t)t * H + h) * hd;
            float mx = -INFINITY, sum = 0.f;
            for (int s = 0; s <= t; s++) {
                const float* ks = k + ((size_t)s * KV + h / (H / KV)) * hd;
                float dot = 0.f;
                for (int i = 0; i < hd; i++) dot += qt[i] * ks[i];
                p[s] = round_bf16(dot * scale);
                mx = std::max(mx, p[s]);
            }
            for (int s = 0; s <= t; s++) { p[s] = round_bf16(expf(p[s] - mx)); sum += p[s]; }
            float* o = out + ((size_t)t * H + h) * hd;
            for (int i = 0; i < hd; i++) {
                float acc = 0.f;
                for (int s = 0; s <= t; s++) acc += p[s] * v[((size_t)s * KV + h / (H / KV)) * hd + i];
                o[i] = round_bf16(acc / sum);
            }
        }
}

template <int HD>
static void check_attention(int B, int T, int H, int KV, bool overlap) {
    size_t nq = (size_t)B * T * H * HD, nkv = (size_t)B * T * KV * HD, nl = (size_t)B * H * T;
    std::vector<float> q = rand_uniform(nq, -2.f, 2.f), k = rand_uniform(nkv, -2.f, 2.f), v = rand_uniform(nkv, -1.f, 1.f);
    bf16 *dq = upload_bf16(q), *dk = upload_bf16(k), *dv = upload_bf16(v);
    bf16* out = dmalloc<bf16>(nq);
    float* lse = dmalloc<float>(nl);
    poison(out, nq * 2);
    poison(lse, nl * 4);
    attention_sm90(out, lse, dq, dk, dv, B, T, H, KV, HD, overlap);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> ref32(nq), lse32(nl), ref16(nq);
    attention_forward_cpu(ref32.data(), lse32.data(), q.data(), k.data(), v.data(), B, T, H, KV, HD);
    for (int b = 0; b < B; b++)
        attention_forward_bf16_cpu(ref16.data() + b * nq / B, q.data() + b * nq / B, k.data() + b * nkv / B, v.data() + b * nkv / B, T, H, KV, HD);
    std::vector<float> got = download_bf16(out, nq), got_lse = download(lse, nl);
    double bf16_err = 0, our_err = 0;
    for (size_t i = 0; i < nq; i++) bf16_err = std::max(bf16_err, (double)fabsf(ref16[i] - ref32[i]));
    size_t nan = 0;
    for (size_t i = 0; i < nq; i++) {
        double e = fabs((double)got[i] - ref32[i]);
        if (e != e) nan++;
        else our_err = std::max(our_err, e);
    }
    const double atol = 1e-3;
    char name[128];
    const char* variant = overlap ? "overlap" : "plain";
    snprintf(name, sizeof name, "(d) attention %s out hd=%d B=%d T=%d H=%d KV=%d: max err %.3g <= 2 x bf16 ref's %.3g + %.0e", variant,
             HD, B, T, H, KV, our_err, bf16_err, atol);
    check_true(name, nan == 0 && our_err <= 2 * bf16_err + atol);
    snprintf(name, sizeof name, "(d) attention %s lse hd=%d B=%d T=%d H=%d KV=%d", variant, HD, B, T, H, KV);
    compare(name, got_lse, lse32, 1e-3f, 1e-4f);
    for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)out, (void*)lse}) CUDA_CHECK(cudaFree(p));
}

// the training shape: B = 1, 32 query heads, 8 KV heads; FLOPs 4 H T^2 hd / 2 (causal, FlashAttention's convention)
static void bench_attention(int T, int H, int KV, int hd, bool overlap) {
    size_t nq = (size_t)T * H * hd, nkv = (size_t)T * KV * hd;
    bf16 *q = device_random_bf16(nq, -2.f, 2.f), *k = device_random_bf16(nkv, -2.f, 2.f), *v = device_random_bf16(nkv);
    bf16* out = dmalloc<bf16>(nq);
    float* lse = dmalloc<float>((size_t)H * T);
    poison(out, nq * 2);
    float ms = bench_ms([&] { attention_sm90(out, lse, q, k, v, 1, T, H, KV, hd, overlap); }, 2, T >= 32768 ? 5 : 10);
    std::vector<float> got = download_bf16(out, nq);
    size_t nan = 0;
    for (float x : got) nan += x != x;
    char name[128];
    snprintf(name, sizeof name, "attention_sm90 %s T=%d H=%d KV=%d hd=%d: every output written, no NaN", overlap ? "overlap" : "plain",
             T, H, KV, hd);
    check_true(name, nan == 0);
    snprintf(name, sizeof name, "attention_fwd T=%d hd=%d", T, hd);
    report_flops(name, overlap ? "wgmma tma ws overlap (hopper_blocks)" : "wgmma tma ws (hopper_blocks)", ms, 4.0 * H * (double)T * T * hd / 2.0);
    for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)lse}) CUDA_CHECK(cudaFree(p));
}

static const char* CHECKS[] = {"(a) tma_ring", "(b) qk wgmma", "(c) pv wgmma", "(d) attention"};

int main(int argc, char** argv) {
    int devices = 0;
    bool have_device = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
    cudaDeviceProp prop{};
    if (have_device) CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    if (!have_device || prop.major != 9) {
        char why[64];
        if (have_device) snprintf(why, sizeof why, "the card is sm_%d%d, not sm_90", prop.major, prop.minor);
        else snprintf(why, sizeof why, "no CUDA device");
        for (const char* c : CHECKS) printf("SKIP %s: %s\n", c, why);
        printf("0 passed, 0 failed, %d skipped\n", (int)(sizeof CHECKS / sizeof CHECKS[0]));
        return 0;
    }
    parse_args(argc, argv);
#ifdef MST_CPU_DEVICE
    g_bench = false;  // the CPU device would time the CPU: benchmarks are a GPU's to run
#endif
    check_tma_ring<64>(5 * BN - 13);   // 5 blocks through 2 stages; the last one partly past T
    check_tma_ring<128>(3 * BN + 1);
    check_qk<64>();
    check_qk<128>();
    check_pv<64>();
    check_pv<128>();
    for (bool overlap : {false, true}) {
        for (int T : {1, 64, 129, 300}) check_attention<64>(1, T, 2, 1, overlap);
        for (int T : {37, 200, 511}) check_attention<128>(1, T, 4, 2, overlap);
        check_attention<64>(3, 77, 2, 2, overlap);  // batch: a tile's rows past T are the next sequence's
        check_attention<128>(2, 130, 4, 1, overlap);
        if (!g_small) check_attention<128>(1, 1000, 8, 2, overlap);
    }
    if (g_bench)
        for (bool overlap : {false, true}) {
            for (int T : {8192, 32768}) bench_attention(T, 32, 8, 128, overlap);
            bench_attention(8192, 32, 8, 64, overlap);
        }
    return finish("hopper_blocks");
}
