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
// are mst/ptx.h's named functions (no asm here); the blocks themselves live in mst/attention_sm90.cuh, whose
// product forward (128-key blocks, ping-pong) dev/cuda/attention_sm90.cu validates. On the CPU device (make dev/cuda/bin/hopper_blocks_cpu), which
// stands in for an sm_90a card, they run by the PTX ISA's semantics (mst/cpu_device/hopper.cpp): TMA tiles land
// only at their mbarrier phase, wgmma results only at wgmma.wait_group, shared memory race-checked; no benchmarks.
#include "common.h"

// the building blocks are mst/attention_sm90.cuh's (the product's forward is made of them); here with 64-key
// blocks, as issue 9 wrote them
using namespace mst::sm90;
using mst::make_tensor_map;
constexpr int BN = 64;  // keys per block (wgmma's N for S, K for O += P V)
template <int HD> using Ring = RingLayout<HD, BN>;

template <typename K>
static void set_smem(K kernel, int bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// ----------------------------------------------------------------------------
// (a) the ring alone: K/V blocks 0..nblocks-1 of one head, copied back out (unswizzled) to k_out, v_out
// (nblocks x BN rows x HD; rows past T must come back zero: TMA fills out-of-bounds rows with zeros).

template <int HD>
__global__ void __launch_bounds__(THREADS, 1) tma_ring_kernel(bf16* k_out, bf16* v_out, const __grid_constant__ CUtensorMap k_map,
                                                              const __grid_constant__ CUtensorMap v_map, int head, int nblocks) {
#ifdef MST_SM90_CODE
    uint8_t* smem_raw = mst::dynamic_shared_memory();
    uint8_t* smem = align1024(smem_raw);
    uint64_t* bars = ring_setup<HD, BN>(smem);
    uint64_t *full = bars + 1, *empty = bars + 1 + STAGES;
    int wg = threadIdx.x / 128;
    if (wg == 0) {
        produce<HD, BN>(smem, bars, full, empty, nullptr, &k_map, &v_map, 0, 0, 0, head, 0, nblocks);
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
                k_out[at] = *(const bf16*)(smem + Ring<HD>::k_at(s) + byte);
                v_out[at] = *(const bf16*)(smem + Ring<HD>::v_at(s) + byte);
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
#ifdef MST_SM90_CODE
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
    wgmma_qk<HD, BN>(s, q, BM_WG, k);
    int t = threadIdx.x;
    for (int i = 0; i < BN / 2; i++) s_out[acc_row(t, i) * BN + acc_col(t, i)] = s[i];
#endif
}

// (c) O = P V: p_in 64 x BN fp32 (row-major) read in the accumulator layout, V rows [0, BN) of head 0;
// o_out 64 x HD fp32
template <int HD>
__global__ void __launch_bounds__(128, 1) pv_kernel(float* o_out, const float* p_in, const __grid_constant__ CUtensorMap v_map) {
#ifdef MST_SM90_CODE
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
    wgmma_pv<HD, BN>(o, a, v);
    for (int i = 0; i < HD / 2; i++) o_out[acc_row(t, i) * HD + acc_col(t, i)] = o[i];
#endif
}


// (d) causal GQA attention forward, the product's layout: q, out (B, T, H, HD), k, v (B, T, KV, HD) bf16 (through
// maps over B T rows: a tile's rows past T belong to the next sequence or are zeros past the end, and are
// masked as keys and never written as queries); lse (B, H, T) natural log. grid (ceil(T / BM), H, B), longest
// query tiles first; THREADS threads.
template <int HD, bool OVERLAP>
__global__ void __launch_bounds__(THREADS, 1) attention_sm90_kernel(bf16* out, float* lse, const __grid_constant__ CUtensorMap q_map,
                                                                    const __grid_constant__ CUtensorMap k_map,
                                                                    const __grid_constant__ CUtensorMap v_map, int T, int H, int KV) {
#ifdef MST_SM90_CODE
    uint8_t* smem_raw = mst::dynamic_shared_memory();
    using L = Ring<HD>;
    uint8_t* smem = align1024(smem_raw);
    uint64_t* bars = ring_setup<HD, BN>(smem);
    uint64_t *q_full = bars, *full = bars + 1, *empty = bars + 1 + STAGES;
    int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, kvh = h / (H / KV), b = blockIdx.z;
    int q0 = tile * BM;
    int nblocks = (min(T, q0 + BM) + BN - 1) / BN;  // causal: keys < q0 + BM
    int wg = threadIdx.x / 128;
    if (wg == 0) {
        produce<HD, BN>(smem, q_full, full, empty, &q_map, &k_map, &v_map, b * T, h, q0, kvh, 0, nblocks);
        return;
    }
    mst::setmaxnreg_inc<232>();
    int c = wg - 1, t = threadIdx.x % 128;
    int rows[2] = {q0 + c * BM_WG + acc_row(t, 0), q0 + c * BM_WG + acc_row(t, 2)}, first[2] = {0, 0};  // no document masking
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);  // softmax in exp2: scores x scale x log2(e)
    float o[HD / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int i = 0; i < HD / 2; i++) o[i] = 0.f;
    mbar_wait(q_full, 0);
    if (!OVERLAP) {
        for (int j = 0; j < nblocks; j++) {
            int s_ = j % STAGES;
            mbar_wait(&full[s_], (j / STAGES) & 1);
            float s[BN / 2] = {};  // overwritten (scale-d 0 on the first k-step)
            wgmma_qk<HD, BN>(s, smem + c * BM_WG * 128, BM, smem + L::k_at(s_));
            float corr[2];
            online_softmax<BN>(s, m, l, corr, j * BN, rows, first, T, scale_log2, t, block_needs_mask(j * BN, BN, rows[0], T, 0));
            for (int i = 0; i < HD / 2; i++) o[i] *= corr[(i / 2) % 2];
            uint32_t a[BN / 16][4];
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
            wgmma_pv<HD, BN>(o, a, smem + L::v_at(s_));
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
            wgmma_qk<HD, BN>(s, smem + c * BM_WG * 128, BM, smem + L::k_at(0));
            float corr[2];  // O is zero: nothing to rescale
            online_softmax<BN>(s, m, l, corr, 0, rows, first, T, scale_log2, t, block_needs_mask(0, BN, rows[0], T, 0));
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
        }
        for (int j = 1; j < nblocks; j++) {
            int s_ = j % STAGES, prev = (j - 1) % STAGES;
            mbar_wait(&full[s_], (j / STAGES) & 1);
            float s[BN / 2] = {};
            wgmma_qk_issue<HD, BN>(s, smem + c * BM_WG * 128, BM, smem + L::k_at(s_));
            wgmma_pv_issue<HD, BN>(o, a, smem + L::v_at(prev));
            wgmma_wait<1>();  // S(j) has landed; PV(j-1) may still run
            fence_regs<BN / 2>(s);
            float corr[2];
            online_softmax<BN>(s, m, l, corr, j * BN, rows, first, T, scale_log2, t, block_needs_mask(j * BN, BN, rows[0], T, 0));
            wgmma_wait<0>();
            fence_regs<HD / 2>(o);
            mbar_arrive(&empty[prev]);
            for (int i = 0; i < HD / 2; i++) o[i] *= corr[(i / 2) % 2];
            for (int kk = 0; kk < BN / 16; kk++) acc_to_a(a[kk], s, kk);
        }
        wgmma_pv<HD, BN>(o, a, smem + L::v_at((nblocks - 1) % STAGES));
        mbar_arrive(&empty[(nblocks - 1) % STAGES]);
    }
    store_rows<HD>(out, lse, o, l, m, rows, T, b, T, H, h, t);
#endif
}

// ----------------------------------------------------------------------------
// host

// attention_sm90_kernel's launch: q, out (T, H, hd), k, v (T, KV, hd) bf16, lse (H, T); B = 1. The tensor maps
// are made per call here (the product would make them once per shape at start-up).
template <int HD, bool OVERLAP>
static void launch_attention_sm90(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV) {
    dim3 grid((T + BM - 1) / BM, H, B);
    CUtensorMap qm = make_tensor_map(q, B * T, H, HD, BM), km = make_tensor_map(k, B * T, KV, HD, BN), vm = make_tensor_map(v, B * T, KV, HD, BN);
    set_smem(attention_sm90_kernel<HD, OVERLAP>, Ring<HD>::bytes);
    mst::launch<attention_sm90_kernel<HD, OVERLAP>>(grid, THREADS, Ring<HD>::bytes, 0, out, lse, qm, km, vm, T, H, KV);
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
    set_smem(tma_ring_kernel<HD>, Ring<HD>::bytes);
    mst::launch<tma_ring_kernel<HD>>(1, THREADS, Ring<HD>::bytes, 0, k_out, v_out, make_tensor_map(dk, T, heads, HD, BN),
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
    attention_forward_bf16_reference(ref16.data(), nullptr, q.data(), k.data(), v.data(), B, T, H, KV, HD, nullptr);
    std::vector<float> got = download_bf16(out, nq), got_lse = download(lse, nl);
    char name[128];
    const char* variant = overlap ? "overlap" : "plain";
    snprintf(name, sizeof name, "(d) attention %s out hd=%d B=%d T=%d H=%d KV=%d", variant, HD, B, T, H, KV);
    check_fa3_rule(name, got, ref32, ref16);
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
    std::string why = why_not_sm90();
    if (!why.empty()) {
        for (const char* c : CHECKS) printf("SKIP %s: %s\n", c, why.c_str());
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
