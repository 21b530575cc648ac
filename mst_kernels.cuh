// mst_kernels.cuh: every GPU kernel of the mst trainer, each next to its launch helper.
// bf16 storage (__nv_bfloat16), fp32 arithmetic and accumulation. Layouts exactly as llama_reference.h:
// activations (N, width) row-major with N = B*T; linear weights (out, in); q and the attention output
// (B, T, H, hd), k and v (B, T, KV, hd), lse fp32 (B, H, T); RoPE tables fp32 (T, hd/2) from rope_tables().
// Parameter gradients are fp32, activation gradients bf16. No cudaMalloc in this file: scratch comes from
// the caller (the arena); the *_scratch_bytes() functions say how much. Every launch helper takes a stream.
// Everything is deterministic (no float atomics): the same inputs give the same bits on the same GPU.
//
// ---------------------------------------------------------------------------------------------------
// API (W = writes, A = accumulates +=)
//
// Errors: CUDA_CHECK(call), CUBLAS_CHECK(call): print file:line and the error, exit(1).
//
// Matmuls (cuBLASLt, bf16 in, fp32 accumulate). Call matmul_init once; descriptors and heuristics are
// cached per shape, so steady-state calls allocate nothing.
//   CUBLASLT_WORKSPACE_BYTES (memory_plan.h, 32 MiB): the workspace the memory plan reserves.
//   void matmul_init(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes);
//   void matmul_forward(bf16* out, const bf16* inp, const bf16* weight, int N, int IC, int OC,
//                       bool accumulate, cudaStream_t)                      out[N,OC] (W or A) = inp[N,IC] W[OC,IC]^T
//   void matmul_forward_add(bf16* out, const bf16* addend, const bf16* inp, const bf16* weight, int N, int IC,
//                       int OC, cudaStream_t)                               out (W) = addend + inp W^T (addend may be out)
//   void matmul_backward_input(bf16* dinp, const bf16* dout, const bf16* weight, int N, int IC, int OC,
//                       bool accumulate, cudaStream_t)                      dinp[N,IC] (W or A) = dout[N,OC] W[OC,IC]
//   void matmul_backward_weight(float* dweight, const bf16* dout, const bf16* inp, int N, int IC, int OC,
//                       cudaStream_t)                                       dweight[OC,IC] fp32 (A) += dout^T inp
//   (matmul_backward_cpu in llama_reference.h; N may be a mini-sequence: beta=1 accumulates across calls)
//
// Embedding (embedding_forward_cpu / embedding_backward_cpu):
//   void embedding_forward(bf16* out, const int* tokens, const bf16* wte, int N, int C, cudaStream_t)  out (W)
//   void embedding_backward(float* dwte, const bf16* dout, const int* buckets, int bucket_count, int N, int C,
//                           cudaStream_t)                               dwte[V,C] fp32 (A)
//        buckets: mst/token_buckets.h's table for these tokens, on the device. One block per distinct id sums
//        its rows in ascending position, the CPU's order: bitwise equal to the CPU, deterministic, no atomics.
//
// RMSNorm (rmsnorm_forward_cpu / rmsnorm_backward_cpu):
//   void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int N, int C,
//                        float eps, cudaStream_t)                            out (W), rstd[N] (W)
//   void rmsnorm_residual_forward(bf16* residual_out, bf16* out, float* rstd, const bf16* residual_in,
//                        const bf16* delta, const bf16* weight, int N, int C, float eps, cudaStream_t)
//        residual_out = residual_in + delta (W, bf16; may alias residual_in), then out = rmsnorm(residual_out)
//        computed from the rounded bf16 residual_out (what backward sees as inp). rstd (W).
//   size_t rmsnorm_backward_scratch_bytes(int N, int C);
//   void rmsnorm_backward(bf16* dinp, float* dweight, void* scratch, const bf16* dout, const bf16* inp,
//                        const bf16* weight, const float* rstd, int N, int C, cudaStream_t)
//        dinp[N,C] bf16 (A: the residual gradient stream), dweight[C] fp32 (A, fixed-order reduction).
//   int& rmsnorm_backward_version(): 2 (default: one pass over dout and inp) or 1 (two passes, confirmed on an
//        H200; the trainer's fallback if 2 fails its start-up self-test). The same dweight bits. Set once.
//
// RoPE (rope_cpu): void rope_forward(bf16* x, const float* cos_table, const float* sin_table, int B, int T,
//        int heads, int hd, bool inverse, cudaStream_t)   in place on (B,T,heads,hd); backward: inverse=true
//        on the gradient.
//
// Attention (attention_forward_cpu / attention_backward_cpu): causal GQA flash attention, mma.sync bf16
//   tensor cores, hd in {64, 128}, scale 1/sqrt(hd), never a T x T buffer. Document masking: doc_start
//   (B, T) int, nullable = none, key s is visible to query t iff doc_start[t] <= s <= t (starts never
//   decrease along a sequence: document_starts writes them). Query blocks: the rows [q0, q0 + n) of every
//   sequence against the keys [0, q0 + n) (nothing at or after q0 + n is read); the whole sequence is
//   q0 = 0, n = T. Layouts are the whole sequence's; only the block's rows are read and written.
//   void document_starts(int* doc_start, const int* tokens, int B, int T, int bos, cudaStream_t)   (W)
//        (document_starts_cpu): a document starts at every bos token (128000 in Llama 3) and at position 0
//   void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T,
//                          int H, int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t)
//        out, lse rows [q0, q0 + n) (W); a block's rows are the same bits as the whole-sequence call's
//   size_t attention_backward_scratch_bytes(int B, int T, int H, int hd);        (fp32 D = rowsum(dout*out))
//   template <GradKV = bf16 or float>
//   void attention_backward(bf16* dq, GradKV* dk, GradKV* dv, void* scratch, const bf16* dout, const bf16* q,
//                           const bf16* k, const bf16* v, const bf16* out, const float* lse, int B, int T,
//                           int H, int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t)
//        dq rows [q0, q0 + n) (W). dk, dv as attention_backward_cpu: q0 == 0 writes every key's (W, 0 where
//        no query of the block sees it), q0 > 0 adds the block's part (A), so blocks in order from q0 = 0 give
//        the whole gradient. Blocks after the first need fp32 dk, dv (bf16 ones are refused: they would
//        round once per block).
//   q/k/v/out/dout/dq/dk/dv must be 16-byte aligned (hd*2 bytes per row is).
//   attention_forward_sm90 / attention_backward_sm90 (mst/attention_sm90.cuh, included after this section): the
//   sm_90a kernels with the same arguments.
//   int& attention_forward_version(), int& attention_backward_version(): 2 (default: cp.async double
//   buffering; measured 1.1-1.5x faster on an H200) or 1 (synchronous tile loads, kept for dev/cuda's history;
//   the same arithmetic in the same order, so the same bits). Set once.
//
// SwiGLU (swiglu_forward_cpu / swiglu_backward_cpu). gate and up rows may be strided (ld_gu elements
//   between rows) so a fused [gate; up] matmul output (N, 2F) can be passed as gate = buf, up = buf + F,
//   ld_gu = 2F. out/dout have row stride F. dgate/dup use stride ld_gu and may alias gate/up.
//   void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, int N, int F, int ld_gu, cudaStream_t)  (W)
//   void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
//                        int N, int F, int ld_gu, cudaStream_t)             dgate, dup (W)
//
// LM-head loss (crossentropy_forward_backward_cpu), one mini-sequence of bf16 logits (N, V), in place:
//   void crossentropy_forward_backward(bf16* logits, float* losses, const int* targets, int N, int V,
//                        float grad_scale, cudaStream_t)
//        losses[N] fp32 (W): lse - logit[target], 0 for target -1 (a target >= V gives NaN: a bug upstream);
//        logits (W, in place) = (softmax - onehot) * grad_scale, zero rows for target -1.
//
// AdamW (adamw_cpu), PyTorch's decoupled weight decay, bias correction, step t from 1:
//   template <typename S, typename G> (S = float or bf16 optimizer state, G = float or bf16 gradients)
//   void adamw_update(bf16* params, float* master, const G* grads, S* m, S* v, size_t count, int t,
//                     float lr, float beta1, float beta2, float eps, float weight_decay,
//                     float grad_scale, const float* grad_scale_device, unsigned int seed, cudaStream_t,
//                     size_t index_base = 0)
//        g = grads * grad_scale * (grad_scale_device ? *grad_scale_device : 1).
//        master != null: master (fp32) is updated and params = round-to-nearest(master).
//        master == null: the fp32 value read from params is updated, params written with stochastic rounding.
//        bf16 m/v are written with stochastic rounding. Random bits = hash(seed, element index, which of
//        m/v/param): pass a different seed every step (and every tensor); deterministic given the seed.
//        The element index is i + index_base: a tensor updated in pieces (ZeRO-1's shards) with each
//        piece's offset in the tensor as index_base gets the bits of one update of the whole tensor.
//
// Global gradient norm (sum_of_squares_cpu), deterministic two-stage reduction, result on the device:
//   GLOBAL_NORM_BLOCKS partial sums (double) per slot.
//   size_t global_norm_scratch_bytes(int num_slots);
//   void global_norm_squared_partial(void* scratch, int slot, const float* grad, size_t count, cudaStream_t)
//        writes the slot's partials (call once per gradient buffer, slot = 0, 1, ...)
//   void global_norm_finish(float* norm_out, float* clip_scale_out, const void* scratch, int num_slots,
//                           float max_norm, cudaStream_t)
//        norm_out[0] = sqrt(sum of all slots' partials, fixed order); clip_scale_out (may be null)
//        = max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1. Feed clip_scale_out to adamw_update
//        as grad_scale_device to clip without a host sync.
//   void gradient_to_bf16(bf16* rounded, void* scratch, int slot, const float* grad, size_t count, cudaStream_t)
//        rounded (W) = round-to-nearest-even bf16 of grad; slot >= 0: writes that slot's partials from the
//        rounded values (the held bf16 gradient's norm, exactly what AdamW will apply), slot < 0: none.
//   void bf16_to_float(float* out, const bf16* in, size_t count, cudaStream_t)      out (W), exact
//   void float_accumulate(float* out, const float* in, size_t count, cudaStream_t)  out += in (RW), bitwise
// ---------------------------------------------------------------------------------------------------
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>

#include "mst/launch.h"
#include "mst/llama_config.h"
#include "mst/memory_plan.h"
#include "mst/ptx.h"

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// error checking

static inline void mst_cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(1);
    }
}
#define CUDA_CHECK(call) mst_cuda_check((call), __FILE__, __LINE__)

static inline void mst_cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "[cuBLAS ERROR] at %s:%d: %d (%s)\n", file, line, (int)status, cublasGetStatusString(status));
        exit(1);
    }
}
#define CUBLAS_CHECK(call) mst_cublas_check((call), __FILE__, __LINE__)

#include "mst/profiler.h"  // every launch helper below marks its phase (--profile, NVTX)

static inline int mst_ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }
// blocks of `threads` for `work` items, one each, grid-stride beyond 65535 x 32 blocks
static inline int mst_elementwise_blocks(size_t work, int threads) {
    long long blocks = ((long long)work + threads - 1) / threads;
    if (blocks > 65535LL * 32) blocks = 65535LL * 32;
    return (int)(blocks < 1 ? 1 : blocks);
}

namespace mst {

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ double warp_sum_double(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// ----------------------------------------------------------------------------
// Copy bandwidth. The memory-bound kernels (embedding, RMSNorm, RoPE, SwiGLU, cross-entropy, AdamW, the global
// norm) move 16 bytes per load and store (LDG.128 / STG.128: 8 bf16 or 4 fp32) through the helpers below, with a
// scalar path for the tail of a count that is not a multiple of 8 (or a row whose width is not).
// Bytes in flight (Little's law): an H200's HBM3e streams 4.8 TB/s (an H100 SXM's HBM3 3.35) at ~1 us of loaded
// latency, so 4.8 TB/s x 1 us = 4.8 MB must be in flight, over 132 SMs ~36 KB per SM. An SM runs at most 2048
// threads: 36 KB / 2048 = 18 bytes per thread, one 16-byte load outstanding per thread at full occupancy and two
// at half. So the elementwise kernels launch 256-thread blocks enough to fill every SM (grid-stride beyond) and a
// thread issues all of its 16-byte loads for an element group (AdamW: p, g, m, v; up to 6 x 16 bytes) before it
// uses any; the row kernels (RMSNorm, cross-entropy) keep 4-32 warps per block over long rows, each lane 16 bytes
// per load. (4-byte loads would need 4x the threads in flight, more than an SM holds: ~25% of bandwidth.)

// 8 bf16 in one 16-byte word
union Pack8 {
    uint4 u;
    __nv_bfloat162 h2[4];
    bf16 h[8];
    __host__ __device__ Pack8() {}  // copied as its 16 bytes (bf16's own copy operations make a union's non-trivial)
    __host__ __device__ Pack8(const Pack8& o) { u = o.u; }
    __host__ __device__ Pack8& operator=(const Pack8& o) { u = o.u; return *this; }
};
// 16-byte load / store of 8 bf16 (p 16-byte aligned)
__device__ __forceinline__ Pack8 load_bf16x8(const bf16* p) { Pack8 v; v.u = *reinterpret_cast<const uint4*>(p); return v; }
__device__ __forceinline__ void store_bf16x8(bf16* p, const Pack8& v) { *reinterpret_cast<uint4*>(p) = v.u; }
// 8 consecutive values as fp32 from bf16 (one 16-byte load) or fp32 (two); and back (bf16: round to nearest even)
__device__ __forceinline__ void load8(const bf16* p, float* x) {
    Pack8 v = load_bf16x8(p);
    for (int j = 0; j < 8; j++) x[j] = __bfloat162float(v.h[j]);
}
__device__ __forceinline__ void load8(const float* p, float* x) {
    float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w; x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
}
__device__ __forceinline__ void store8(bf16* p, const float* x) {
    Pack8 v;
    for (int j = 0; j < 8; j++) v.h[j] = __float2bfloat16(x[j]);
    store_bf16x8(p, v);
}
__device__ __forceinline__ void store8(float* p, const float* x) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(x[4], x[5], x[6], x[7]);
}

// VEC consecutive bf16 kept as bf16 in registers (8 values in 4), loaded and stored in one access (VEC 8: 16 bytes,
// 16-byte aligned; VEC 1: one element); f(j) is value j as fp32, set(j, v) rounds v to it
template <int VEC>
struct BF16Vec {
    Pack8 p;
    __device__ void load(const bf16* src) { p = load_bf16x8(src); }
    __device__ void store(bf16* dst) const { store_bf16x8(dst, p); }
    __device__ float f(int j) const { return __bfloat162float(p.h[j]); }
    __device__ void set(int j, float v) { p.h[j] = __float2bfloat16(v); }
};
template <>
struct BF16Vec<1> {
    bf16 h;
    __device__ void load(const bf16* src) { h = src[0]; }
    __device__ void store(bf16* dst) const { dst[0] = h; }
    __device__ float f(int) const { return __bfloat162float(h); }
    __device__ void set(int, float v) { h = __float2bfloat16(v); }
};

static inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace mst

// ----------------------------------------------------------------------------
// matmuls through cuBLASLt (the workspace size, CUBLASLT_WORKSPACE_BYTES, is the memory plan's)

struct MatmulPlan {
    bool used;
    int transa, transb, m, n, k, lda, ldb, ldd, dtype_d;
    int align_a, align_b, align_d;  // pointer alignment (bytes, up to 256) the algorithm was chosen for
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

struct MatmulState {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    static const int MAX_PLANS = 256;
    MatmulPlan plans[MAX_PLANS] = {};
};
static inline MatmulState& matmul_state() { static MatmulState s; return s; }

static inline void matmul_init(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes) {
    MatmulState& s = matmul_state();
    s.handle = handle;
    s.workspace = workspace;
    s.workspace_bytes = workspace_bytes;
}

// column-major D(m x n, ld ldd) = alpha op(A) op(B) + beta C; A, B bf16; C and D bf16 or fp32, the same layout
// (c null: C = D); fp32 compute
static inline void matmul_lt(void* d, const void* c, cudaDataType_t dtype_d, const bf16* a, const bf16* b, bool transa,
                             bool transb, int m, int n, int k, int lda, int ldb, int ldd, float beta, cudaStream_t stream) {
    MatmulState& s = matmul_state();
    if (!s.handle) { fprintf(stderr, "matmul_init was not called\n"); exit(1); }
    auto alignment = [](const void* ptr) {
        int al = 256;
        while (al > 1 && ((uintptr_t)ptr % al) != 0) al >>= 1;
        return al;
    };
    if (!c) c = d;
    int align_a = alignment(a), align_b = alignment(b), align_d = std::min(alignment(d), alignment(c));  // C's too
    MatmulPlan* plan = nullptr;
    for (int i = 0; i < MatmulState::MAX_PLANS; i++) {
        MatmulPlan& p = s.plans[i];
        if (!p.used) break;
        if (p.transa == transa && p.transb == transb && p.m == m && p.n == n && p.k == k && p.lda == lda &&
            p.ldb == ldb && p.ldd == ldd && p.dtype_d == (int)dtype_d && p.align_a == align_a &&
            p.align_b == align_b && p.align_d == align_d) { plan = &p; break; }
    }
    if (!plan) {
        int i = 0;
        while (i < MatmulState::MAX_PLANS && s.plans[i].used) i++;
        if (i == MatmulState::MAX_PLANS) {  // full: replace the last entry (never happens with a fixed set of shapes)
            i = MatmulState::MAX_PLANS - 1;
            MatmulPlan& old = s.plans[i];
            CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(old.a));
            CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(old.b));
            CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(old.c));
            CUBLAS_CHECK(cublasLtMatmulDescDestroy(old.desc));
            old.used = false;
        }
        MatmulPlan& p = s.plans[i];
        p.transa = transa; p.transb = transb; p.m = m; p.n = n; p.k = k; p.lda = lda; p.ldb = ldb; p.ldd = ldd;
        p.dtype_d = (int)dtype_d;
        p.align_a = align_a; p.align_b = align_b; p.align_d = align_d;
        CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t opa = transa ? CUBLAS_OP_T : CUBLAS_OP_N, opb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, transa ? k : m, transa ? m : k, lda));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, transb ? n : k, transb ? k : n, ldb));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, dtype_d, m, n, ldd));
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &s.workspace_bytes, sizeof(s.workspace_bytes)));
        uint32_t al_a = align_a, al_b = align_b, al_d = align_d;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
        cublasLtMatmulHeuristicResult_t result;
        int found = 0;
        CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(s.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found));
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
        if (found == 0) {
            fprintf(stderr, "no cuBLASLt algorithm for m=%d n=%d k=%d transa=%d transb=%d\n", m, n, k, transa, transb);
            exit(1);
        }
        p.algo = result.algo;
        p.used = true;
        plan = &p;
    }
    float alpha = 1.f;
    CUBLAS_CHECK(cublasLtMatmul(s.handle, plan->desc, &alpha, a, plan->a, b, plan->b, &beta, c, plan->c, d, plan->c,
                                &plan->algo, s.workspace, s.workspace_bytes, stream));
}

// out[N,OC] = inp[N,IC] W[OC,IC]^T   (column-major: out^T(OC x N) = W^T... op(A)=T on W (IC x OC))
static inline void matmul_forward(bf16* out, const bf16* inp, const bf16* weight, int N, int IC, int OC,
                                  bool accumulate, cudaStream_t stream) {
    profile_phase(PHASE_MATMULS, stream);
    matmul_lt(out, nullptr, CUDA_R_16BF, weight, inp, true, false, OC, N, IC, IC, IC, OC, accumulate ? 1.f : 0.f, stream);
}
// out[N,OC] = addend[N,OC] + inp[N,IC] W[OC,IC]^T: the residual adds, the addend read in cuBLASLt's epilogue
// instead of copied to out first (the same fp32 sum rounded once: the bits of a copy then matmul_forward's accumulate)
static inline void matmul_forward_add(bf16* out, const bf16* addend, const bf16* inp, const bf16* weight, int N, int IC,
                                      int OC, cudaStream_t stream) {
    profile_phase(PHASE_MATMULS, stream);
    matmul_lt(out, addend, CUDA_R_16BF, weight, inp, true, false, OC, N, IC, IC, IC, OC, 1.f, stream);
}
// dinp[N,IC] (+)= dout[N,OC] W[OC,IC]
static inline void matmul_backward_input(bf16* dinp, const bf16* dout, const bf16* weight, int N, int IC, int OC,
                                         bool accumulate, cudaStream_t stream) {
    profile_phase(PHASE_MATMULS, stream);
    matmul_lt(dinp, nullptr, CUDA_R_16BF, weight, dout, false, false, IC, N, OC, IC, OC, IC, accumulate ? 1.f : 0.f, stream);
}
// dweight[OC,IC] (fp32) += dout[N,OC]^T inp[N,IC]
static inline void matmul_backward_weight(float* dweight, const bf16* dout, const bf16* inp, int N, int IC, int OC,
                                          cudaStream_t stream) {
    profile_phase(PHASE_MATMULS, stream);
    matmul_lt(dweight, nullptr, CUDA_R_32F, inp, dout, false, true, IC, OC, N, IC, OC, IC, 1.f, stream);
}

// ----------------------------------------------------------------------------
// embedding

// matches embedding_forward_cpu
static __global__ void embedding_forward_kernel(bf16* out, const int* tokens, const bf16* wte, int N, int C) {
    int n = blockIdx.x;
    const bf16* src = wte + (size_t)tokens[n] * C;
    bf16* dst = out + (size_t)n * C;
    if ((C & 7) == 0) {
        for (int i = threadIdx.x * 8; i < C; i += blockDim.x * 8)
            mst::store_bf16x8(dst + i, mst::load_bf16x8(src + i));
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) dst[i] = src[i];
    }
}
static inline void embedding_forward(bf16* out, const int* tokens, const bf16* wte, int N, int C, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if (N <= 0) return;
    bool vec = (C % 8 == 0) && mst::aligned16(out) && mst::aligned16(wte);
    if (!vec && C % 8 == 0) { fprintf(stderr, "embedding_forward: pointers must be 16-byte aligned\n"); exit(1); }
    mst::launch<embedding_forward_kernel>(N, 128, 0, stream, out, tokens, wte, N, C);
    CUDA_CHECK(cudaGetLastError());
}

// matches embedding_backward_cpu: one block per distinct token id (mst/token_buckets.h's buckets), each
// thread owning 8 columns (1 when C % 8 != 0) and adding the id's rows in ascending position, the CPU's
// order, so every dwte element is bitwise the CPU's, without atomics. The row loads of EMBEDDING_UNROLL
// positions are issued before their adds (a frequent id's bucket is a long serial chain otherwise).
#define EMBEDDING_UNROLL 8
static __global__ void embedding_backward_kernel(float* dwte, const bf16* dout, const int* positions,
                                                 const int* bucket_start, const int* bucket_id, int C) {
    int begin = bucket_start[blockIdx.x], end = bucket_start[blockIdx.x + 1];
    float* dw = dwte + (size_t)bucket_id[blockIdx.x] * C;
    if ((C & 7) == 0) {
        for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
            float acc[8];
            mst::load8(dw + c, acc);
            for (int i = begin; i < end; i += EMBEDDING_UNROLL) {
                mst::Pack8 rows[EMBEDDING_UNROLL];
#pragma unroll
                for (int u = 0; u < EMBEDDING_UNROLL; u++)
                    if (i + u < end) rows[u] = mst::load_bf16x8(dout + (size_t)__ldg(positions + i + u) * C + c);
#pragma unroll
                for (int u = 0; u < EMBEDDING_UNROLL; u++) {
                    if (i + u >= end) break;
#pragma unroll
                    for (int k = 0; k < 8; k++) acc[k] += __bfloat162float(rows[u].h[k]);
                }
            }
            mst::store8(dw + c, acc);
        }
    } else {
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = dw[c];
            for (int i = begin; i < end; i++) acc += __bfloat162float(dout[(size_t)__ldg(positions + i) * C + c]);
            dw[c] = acc;
        }
    }
}
// buckets: the device copy of token_buckets.h's table for these N tokens, holding bucket_count buckets
static inline void embedding_backward(float* dwte, const bf16* dout, const int* buckets, int bucket_count, int N, int C,
                                      cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if (bucket_count <= 0) return;
    bool vec = (C % 8 == 0) && mst::aligned16(dwte) && mst::aligned16(dout);
    if (!vec && C % 8 == 0) { fprintf(stderr, "embedding_backward: pointers must be 16-byte aligned\n"); exit(1); }
    int columns_per_thread = vec ? 8 : 1;
    int threads = std::min(1024, mst_ceil_div(mst_ceil_div(C, columns_per_thread), 32) * 32);
    mst::launch<embedding_backward_kernel>(bucket_count, threads, 0, stream, dwte, dout, buckets, buckets + N, buckets + 2 * (size_t)N + 1, C);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// RMSNorm: one warp per row

// matches rmsnorm_forward_cpu (residual == null) or residual_out = residual_in + delta then rmsnorm_forward_cpu
template <bool VEC>
__global__ void rmsnorm_forward_kernel(bf16* out, float* rstd, bf16* residual_out, const bf16* inp, const bf16* delta,
                                       const bf16* weight, int N, int C, float eps) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int n = blockIdx.x * (blockDim.x / 32) + warp;
    if (n >= N) return;
    const bf16* x = inp + (size_t)n * C;
    const bf16* dx = delta ? delta + (size_t)n * C : nullptr;
    bf16* rx = residual_out ? residual_out + (size_t)n * C : nullptr;
    bf16* y = out + (size_t)n * C;
    float ss = 0.f;
    if (VEC) {
        for (int i = lane * 8; i < C; i += 32 * 8) {
            mst::Pack8 a;
            a = mst::load_bf16x8(x + i);
            if (dx) {
                mst::Pack8 d;
                d = mst::load_bf16x8(dx + i);
                for (int j = 0; j < 8; j++) a.h[j] = __float2bfloat16(__bfloat162float(a.h[j]) + __bfloat162float(d.h[j]));
                mst::store_bf16x8(rx + i, a);
            }
            for (int j = 0; j < 8; j++) { float v = __bfloat162float(a.h[j]); ss += v * v; }
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            bf16 a = x[i];
            if (dx) { a = __float2bfloat16(__bfloat162float(a) + __bfloat162float(dx[i])); rx[i] = a; }
            float v = __bfloat162float(a);
            ss += v * v;
        }
    }
    ss = mst::warp_sum(ss);
    float r = rsqrtf(ss / C + eps);
    // the residual output was written by this same lane for the same indices: read it back (no barrier needed)
    const bf16* src = dx ? rx : x;
    if (VEC) {
        for (int i = lane * 8; i < C; i += 32 * 8) {
            mst::Pack8 a, w, o;
            a = mst::load_bf16x8(src + i);
            w = mst::load_bf16x8(weight + i);
            for (int j = 0; j < 8; j++) o.h[j] = __float2bfloat16(__bfloat162float(w.h[j]) * (__bfloat162float(a.h[j]) * r));
            mst::store_bf16x8(y + i, o);
        }
    } else {
        for (int i = lane; i < C; i += 32)
            y[i] = __float2bfloat16(__bfloat162float(weight[i]) * (__bfloat162float(src[i]) * r));
    }
    if (lane == 0) rstd[n] = r;
}

static inline void rmsnorm_launch(bf16* out, float* rstd, bf16* residual_out, const bf16* inp, const bf16* delta,
                                  const bf16* weight, int N, int C, float eps, cudaStream_t stream) {
    if (N <= 0) return;
    bool vec = C % 8 == 0 && mst::aligned16(out) && mst::aligned16(inp) && mst::aligned16(weight) &&
               (!delta || (mst::aligned16(delta) && mst::aligned16(residual_out)));
    int rows_per_block = 4;
    int blocks = mst_ceil_div(N, rows_per_block);
    if (vec) mst::launch<rmsnorm_forward_kernel<true>>(blocks, rows_per_block * 32, 0, stream, out, rstd, residual_out, inp, delta, weight, N, C, eps);
    else mst::launch<rmsnorm_forward_kernel<false>>(blocks, rows_per_block * 32, 0, stream, out, rstd, residual_out, inp, delta, weight, N, C, eps);
    CUDA_CHECK(cudaGetLastError());
}
static inline void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int N, int C, float eps,
                                   cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    rmsnorm_launch(out, rstd, nullptr, inp, nullptr, weight, N, C, eps, stream);
}
static inline void rmsnorm_residual_forward(bf16* residual_out, bf16* out, float* rstd, const bf16* residual_in,
                                            const bf16* delta, const bf16* weight, int N, int C, float eps,
                                            cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    rmsnorm_launch(out, rstd, residual_out, residual_in, delta, weight, N, C, eps, stream);
}

// backward, two versions with the same scratch (RMSNORM_GRADIENT_CHUNKS x C fp32 partials, memory_plan.h) and the
// same weight gradient bit for bit (each chunk's rows added in ascending order, dy x r per element, then the
// chunks in order); dinp may differ in the last bf16 bit (the row's dot product is summed in another order):
//   v1 (two passes, confirmed on an H200): (1) dinp, one warp per row; (2) the dweight partials; each pass reads
//      dout and inp (0.43 of copy bandwidth measured at N = 16384, C = 4096: dev/cuda/README.md).
//   v2 (one pass, UNVERIFIED on a GPU: the trainer runs it behind a start-up self-test against v1): one block per
//      row chunk reads each row of dout, inp and dinp once, writes dinp, keeps the dweight sums in registers.
//   (3) dweight += the partials summed in chunk order (both).
// rmsnorm_backward_version() picks; v1 also where v2 has no launch shape (C > 8192, or > 4096 when C % 8 != 0).

static inline size_t rmsnorm_backward_scratch_bytes(int N, int C) {
    (void)N;
    return (size_t)RMSNORM_GRADIENT_CHUNKS * C * sizeof(float);
}

// the rows [n0, n1) of a chunk (of gridDim chunks; both versions split the rows this way)
__device__ __forceinline__ void rmsnorm_chunk_rows(int N, int chunk, int chunks, int* n0, int* n1) {
    int rows = (N + chunks - 1) / chunks;
    *n0 = min(N, chunk * rows);
    *n1 = min(N, *n0 + rows);
}

// v1 (1): matches rmsnorm_backward_cpu's dinp: dx_i += r w_i dy_i - r^3 x_i / C * sum_j w_j dy_j x_j
template <bool VEC>
__global__ void rmsnorm_backward_dinp_kernel(bf16* dinp, const bf16* dout, const bf16* inp, const bf16* weight,
                                             const float* rstd, int N, int C) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int n = blockIdx.x * (blockDim.x / 32) + warp;
    if (n >= N) return;
    const bf16* x = inp + (size_t)n * C;
    const bf16* dy = dout + (size_t)n * C;
    bf16* dx = dinp + (size_t)n * C;
    float r = rstd[n];
    float dot = 0.f;
    if (VEC) {
        for (int i = lane * 8; i < C; i += 256) {
            mst::Pack8 a, d, w;
            a = mst::load_bf16x8(x + i);
            d = mst::load_bf16x8(dy + i);
            w = mst::load_bf16x8(weight + i);
            for (int j = 0; j < 8; j++) dot += __bfloat162float(w.h[j]) * __bfloat162float(d.h[j]) * __bfloat162float(a.h[j]);
        }
    } else {
        for (int i = lane; i < C; i += 32)
            dot += __bfloat162float(weight[i]) * __bfloat162float(dy[i]) * __bfloat162float(x[i]);
    }
    dot = mst::warp_sum(dot);
    float coefficient = dot / C * r * r * r;
    if (VEC) {
        for (int i = lane * 8; i < C; i += 256) {
            mst::Pack8 a, d, w, o;
            a = mst::load_bf16x8(x + i);
            d = mst::load_bf16x8(dy + i);
            w = mst::load_bf16x8(weight + i);
            o = mst::load_bf16x8(dx + i);
            for (int j = 0; j < 8; j++)
                o.h[j] = __float2bfloat16(__bfloat162float(o.h[j]) + r * __bfloat162float(w.h[j]) * __bfloat162float(d.h[j]) -
                                          coefficient * __bfloat162float(a.h[j]));
            mst::store_bf16x8(dx + i, o);
        }
    } else {
        for (int i = lane; i < C; i += 32)
            dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + r * __bfloat162float(weight[i]) * __bfloat162float(dy[i]) -
                                     coefficient * __bfloat162float(x[i]));
    }
}

// v1 (2): partial[chunk, c] = sum over the chunk's rows of dy[n,c] x[n,c] r[n], rows in ascending order; each
// thread owns VEC columns (8: 16-byte loads of dy and x per row; 1 when C % 8 != 0 or a pointer is not 16-byte
// aligned); grid (ceil(C / (256 VEC)), RMSNORM_GRADIENT_CHUNKS)
template <int VEC>
__global__ void rmsnorm_backward_dweight_partial_kernel(float* partial, const bf16* dout, const bf16* inp,
                                                        const float* rstd, int N, int C) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    int chunk = blockIdx.y, n0, n1;
    rmsnorm_chunk_rows(N, chunk, gridDim.y, &n0, &n1);
    if (c >= C) return;
    float sum[VEC], dy[VEC], x[VEC];
    for (int j = 0; j < VEC; j++) sum[j] = 0.f;
    for (int n = n0; n < n1; n++) {
        const bf16* dy_row = dout + (size_t)n * C + c;
        const bf16* x_row = inp + (size_t)n * C + c;
        if (VEC == 8) {
            mst::load8(dy_row, dy);
            mst::load8(x_row, x);
        } else {
            dy[0] = __bfloat162float(dy_row[0]);
            x[0] = __bfloat162float(x_row[0]);
        }
        float r = rstd[n];
        for (int j = 0; j < VEC; j++) sum[j] += dy[j] * x[j] * r;
    }
    if (VEC == 8) mst::store8(partial + (size_t)chunk * C + c, sum);
    else partial[(size_t)chunk * C + c] = sum[0];
}
// v2's largest block: 512 threads of up to 128 registers fill an SM's 64K (ptxas, sm_90a: 63-98 registers, no
// spills; four column groups a thread would need 160, so C > 8192 takes v1)
static const int RMSNORM_V2_MAX_THREADS = 512;

// v2: matches rmsnorm_backward_cpu (dinp as v1 (1); dweight partials as v1 (2), bit for bit). One block per row
// chunk (grid RMSNORM_GRADIENT_CHUNKS), all C columns: thread t owns the column groups t + k blockDim (k < GROUPS)
// of VEC consecutive columns, holds their weights and fp32 dweight sums in registers, and takes ROWS rows per
// iteration: it loads dy, x and dinp of its groups for all ROWS rows first, then the block sums w dy x per row
// (a warp shuffle sum, each warp's in shared memory, the warps' added in order after ONE barrier: the shared
// buffer alternates between iterations, so a warp writing the next iteration's sums cannot overwrite ones another
// warp still reads), then dinp is written and dy x r added to the sums row by row in ascending order.
// Bytes in flight per SM (H100 SXM / H200: 132 SMs, so the 128 chunks are one block per SM): a block issues
// ROWS x C x 6 bytes (dy, x, dinp; 2 bytes each) before its barrier: C 2048 (llama3.2-1b) ROWS 4 and C 4096
// (llama3-8b) ROWS 2: 48 KB; C 3072 ROWS 2: 36 KB; C 8192 ROWS 1: 48 KB. An H200 needs
// ~36 KB per SM (4.8 TB/s x ~1 us / 132), an H100 SXM ~25 KB (3.35 TB/s). The barrier drains the loads once an
// iteration (the next rows are loaded after the reduction), and 4 of 132 SMs have no chunk: a GPU's numbers are
// pending (dev/cuda/rmsnorm.cu times v2 against v1 and a device-to-device copy of the same bytes).
template <int VEC, int ROWS, int GROUPS>
__global__ void __launch_bounds__(RMSNORM_V2_MAX_THREADS)
rmsnorm_backward_v2_kernel(bf16* dinp, float* partial, const bf16* dout, const bf16* inp, const bf16* weight,
                           const float* rstd, int N, int C) {
    __shared__ float warp_dots[2][ROWS][32];
    int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int chunk = blockIdx.x, n0, n1;
    rmsnorm_chunk_rows(N, chunk, gridDim.x, &n0, &n1);
    int column[GROUPS];  // first column of each group; C or more: no group (the row's end)
    mst::BF16Vec<VEC> w[GROUPS];
    float sum[GROUPS][VEC];
    for (int k = 0; k < GROUPS; k++) {
        column[k] = (threadIdx.x + k * blockDim.x) * VEC;
        if (column[k] < C) w[k].load(weight + column[k]);
        for (int j = 0; j < VEC; j++) sum[k][j] = 0.f;
    }
    int buffer = 0;
    for (int n = n0; n < n1; n += ROWS, buffer ^= 1) {
        mst::BF16Vec<VEC> dy[ROWS][GROUPS], x[ROWS][GROUPS], dx[ROWS][GROUPS];
        for (int r = 0; r < ROWS; r++) {
            if (n + r >= n1) break;
            size_t row = (size_t)(n + r) * C;
            for (int k = 0; k < GROUPS; k++) {
                if (column[k] >= C) continue;
                dy[r][k].load(dout + row + column[k]);
                x[r][k].load(inp + row + column[k]);
                dx[r][k].load(dinp + row + column[k]);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            float dot = 0.f;
            for (int k = 0; k < GROUPS; k++)
                if (n + r < n1 && column[k] < C)
                    for (int j = 0; j < VEC; j++) dot += w[k].f(j) * dy[r][k].f(j) * x[r][k].f(j);
            dot = mst::warp_sum(dot);
            if (lane == 0) warp_dots[buffer][r][warp] = dot;
        }
        __syncthreads();
        for (int r = 0; r < ROWS; r++) {
            if (n + r >= n1) break;
            float dot = 0.f;
            for (int i = 0; i < warps; i++) dot += warp_dots[buffer][r][i];
            float rs = rstd[n + r];
            float coefficient = dot / C * rs * rs * rs;
            size_t row = (size_t)(n + r) * C;
            for (int k = 0; k < GROUPS; k++) {
                if (column[k] >= C) continue;
                for (int j = 0; j < VEC; j++) {
                    float d = dy[r][k].f(j), a = x[r][k].f(j);
                    dx[r][k].set(j, dx[r][k].f(j) + rs * w[k].f(j) * d - coefficient * a);
                    sum[k][j] += d * a * rs;
                }
                dx[r][k].store(dinp + row + column[k]);
            }
        }
    }
    for (int k = 0; k < GROUPS; k++) {
        if (column[k] >= C) continue;
        float* out = partial + (size_t)chunk * C + column[k];
        if (VEC == 8) mst::store8(out, sum[k]);
        else out[0] = sum[k][0];
    }
}

// v2's launch shape for a row width (false: none, v1 then). 16-byte path: one column group of 8 a thread up to 512
// groups (ROWS 4 up to C = 2048, else 2), two a thread up to 1024 (C = 8192; ROWS 1); element path: 8 columns a
// thread up to C = 4096. At most RMSNORM_V2_MAX_THREADS threads.
struct RmsnormV2Shape {
    int rows, groups, threads;  // the kernel's ROWS and GROUPS, the block's threads
};
static inline bool rmsnorm_backward_v2_shape(int C, bool vec, RmsnormV2Shape* s) {
    int columns = vec ? C / 8 : C;  // column groups of VEC
    if (vec && columns <= 256) *s = {4, 1, 0};
    else if (vec && columns <= 512) *s = {2, 1, 0};
    else if (vec && columns <= 1024) *s = {1, 2, 0};
    else if (!vec && columns <= 4096) *s = {1, 8, 0};
    else return false;
    s->threads = mst_ceil_div(mst_ceil_div(columns, s->groups), 32) * 32;
    return true;
}

template <int VEC, int ROWS, int GROUPS>
static inline void rmsnorm_backward_v2(int threads, bf16* dinp, float* partial, const bf16* dout, const bf16* inp,
                                       const bf16* weight, const float* rstd, int N, int C, cudaStream_t stream) {
    mst::launch<rmsnorm_backward_v2_kernel<VEC, ROWS, GROUPS>>(RMSNORM_GRADIENT_CHUNKS, threads, 0, stream, dinp, partial,
                                                               dout, inp, weight, rstd, N, C);
}

static __global__ void rmsnorm_backward_dweight_reduce_kernel(float* dweight, const float* partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.f;
    for (int i = 0; i < chunks; i++) sum += partial[(size_t)i * C + c];
    dweight[c] += sum;
}

// 2: v2 where it has a launch shape (default); 1: v1 only (the trainer's fallback when v2 fails its start-up
// self-test; dev/cuda/rmsnorm.cu's history). Set once.
static inline int& rmsnorm_backward_version() { static int version = 2; return version; }

static inline void rmsnorm_backward(bf16* dinp, float* dweight, void* scratch, const bf16* dout, const bf16* inp,
                                    const bf16* weight, const float* rstd, int N, int C, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if (N <= 0) return;
    float* partial = (float*)scratch;
    bool vec = C % 8 == 0 && mst::aligned16(dinp) && mst::aligned16(dout) && mst::aligned16(inp) && mst::aligned16(weight);
    bool vec_partial = vec && mst::aligned16(partial);
    RmsnormV2Shape v2;
    if (rmsnorm_backward_version() == 2 && rmsnorm_backward_v2_shape(C, vec_partial, &v2)) {
        auto launch = !vec_partial ? rmsnorm_backward_v2<1, 1, 8>
                      : v2.rows == 4 ? rmsnorm_backward_v2<8, 4, 1>
                      : v2.rows == 2 ? rmsnorm_backward_v2<8, 2, 1> : rmsnorm_backward_v2<8, 1, 2>;
        launch(v2.threads, dinp, partial, dout, inp, weight, rstd, N, C, stream);
    } else {
        int rows_per_block = 4;
        int blocks = mst_ceil_div(N, rows_per_block);
        if (vec) mst::launch<rmsnorm_backward_dinp_kernel<true>>(blocks, rows_per_block * 32, 0, stream, dinp, dout, inp, weight, rstd, N, C);
        else mst::launch<rmsnorm_backward_dinp_kernel<false>>(blocks, rows_per_block * 32, 0, stream, dinp, dout, inp, weight, rstd, N, C);
        CUDA_CHECK(cudaGetLastError());
        if (vec_partial) {
            dim3 grid(mst_ceil_div(C, 256 * 8), RMSNORM_GRADIENT_CHUNKS);
            mst::launch<rmsnorm_backward_dweight_partial_kernel<8>>(grid, 256, 0, stream, partial, dout, inp, rstd, N, C);
        } else {
            dim3 grid(mst_ceil_div(C, 256), RMSNORM_GRADIENT_CHUNKS);
            mst::launch<rmsnorm_backward_dweight_partial_kernel<1>>(grid, 256, 0, stream, partial, dout, inp, rstd, N, C);
        }
    }
    CUDA_CHECK(cudaGetLastError());
    mst::launch<rmsnorm_backward_dweight_reduce_kernel>(mst_ceil_div(C, 256), 256, 0, stream, dweight, partial, RMSNORM_GRADIENT_CHUNKS, C);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// RoPE: matches rope_cpu. v1: one thread per rotated pair, 2-byte loads, one tensor per launch (confirmed on an
// H200); v2: q and k in one launch, 16-byte loads (below)

static __global__ void rope_kernel(bf16* x, const float* cos_table, const float* sin_table, int B, int T, int heads, int hd,
                            bool inverse) {
    int half = hd / 2;
    size_t total = (size_t)B * T * heads * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t row = idx / half;  // (b, t, h) flattened
        int t = (int)((row / heads) % T);
        float c = cos_table[(size_t)t * half + i];
        float s = sin_table[(size_t)t * half + i];
        if (inverse) s = -s;
        bf16* v = x + row * hd;
        float x1 = __bfloat162float(v[i]), x2 = __bfloat162float(v[i + half]);
        v[i] = __float2bfloat16(x1 * c - x2 * s);
        v[i + half] = __float2bfloat16(x2 * c + x1 * s);
    }
}
static inline void rope_forward(bf16* x, const float* cos_table, const float* sin_table, int B, int T, int heads, int hd,
                                bool inverse, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    size_t total = (size_t)B * T * heads * (hd / 2);
    if (total == 0) return;
    int threads = 256;
    long long blocks = ((long long)total + threads - 1) / threads;
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;
    mst::launch<rope_kernel>((int)blocks, threads, 0, stream, x, cos_table, sin_table, B, T, heads, hd, inverse);
    CUDA_CHECK(cudaGetLastError());
}

// v2 (UNVERIFIED on a GPU until one has run it: the trainer uses it after its start-up self-test against v1,
// rope_selftest in train_llama.cu): q (H heads) and k (KV heads) in one launch, one thread per 8 consecutive
// pairs: 16-byte loads of x1 = v[i..i+7] and x2 = v[i+half..], 32 bytes each of cos and sin (48 bytes of
// activations and 64 of (L2-resident) tables in flight per thread); the arithmetic of rope_cpu per pair, as v1's.
// Needs half % 8 == 0 (hd 16, 64, 128) and 16-byte aligned q, k: rope_qk falls back to v1 otherwise.
static __global__ void rope_qk_kernel(bf16* q, bf16* k, const float* cos_table, const float* sin_table, int B, int T,
                                      int H, int KV, int hd, bool inverse) {
    int half = hd / 2, groups = half / 8;
    size_t total = (size_t)B * T * (H + KV) * groups;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % groups) * 8;
        size_t row = idx / groups;  // ((b, t), head of q then k) flattened
        int head = (int)(row % (H + KV));
        size_t bt = row / (H + KV);
        int t = (int)(bt % T);
        bf16* v = head < H ? q + (bt * H + head) * hd : k + (bt * KV + head - H) * hd;
        float x1[8], x2[8], c[8], sn[8];
        mst::load8(v + i, x1);
        mst::load8(v + i + half, x2);
        mst::load8(cos_table + (size_t)t * half + i, c);
        mst::load8(sin_table + (size_t)t * half + i, sn);
        float y1[8], y2[8];
        for (int j = 0; j < 8; j++) {
            float s = inverse ? -sn[j] : sn[j];
            y1[j] = x1[j] * c[j] - x2[j] * s;
            y2[j] = x2[j] * c[j] + x1[j] * s;
        }
        mst::store8(v + i, y1);
        mst::store8(v + i + half, y2);
    }
}
static inline void rope_qk_v2(bf16* q, bf16* k, const float* cos_table, const float* sin_table, int B, int T, int H, int KV,
                              int hd, bool inverse, cudaStream_t stream) {
    size_t total = (size_t)B * T * (H + KV) * (hd / 16);
    if (total == 0) return;
    int threads = 256;
    mst::launch<rope_qk_kernel>(mst_elementwise_blocks(total, threads), threads, 0, stream, q, k, cos_table, sin_table,
                                B, T, H, KV, hd, inverse);
    CUDA_CHECK(cudaGetLastError());
}
// 2: v2 where it applies (default); 1: v1 only (the trainer's fallback when v2 fails its start-up self-test). Set once.
static inline int& rope_version() { static int version = 2; return version; }
// RoPE on q (B, T, H, hd) and k (B, T, KV, hd), in place; backward: inverse = true on their gradients
static inline void rope_qk(bf16* q, bf16* k, const float* cos_table, const float* sin_table, int B, int T, int H, int KV,
                           int hd, bool inverse, cudaStream_t stream) {
    if (rope_version() == 2 && (hd / 2) % 8 == 0 && mst::aligned16(q) && mst::aligned16(k) && mst::aligned16(cos_table) &&
        mst::aligned16(sin_table)) {
        profile_phase(PHASE_MEMORY_BOUND, stream);
        rope_qk_v2(q, k, cos_table, sin_table, B, T, H, KV, hd, inverse, stream);
        return;
    }
    rope_forward(q, cos_table, sin_table, B, T, H, hd, inverse, stream);
    rope_forward(k, cos_table, sin_table, B, T, KV, hd, inverse, stream);
}

// ----------------------------------------------------------------------------
// SwiGLU

__device__ __forceinline__ float mst_silu(float g) { return g / (1.f + __expf(-g)); }

// matches swiglu_forward_cpu
template <int VEC>
__global__ void swiglu_forward_kernel(bf16* out, const bf16* gate, const bf16* up, int N, int F, int ld) {
    size_t total = (size_t)N * F / VEC;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t e = idx * VEC;
        size_t n = e / F, f = e % F;
        const bf16* g = gate + n * ld + f;
        const bf16* u = up + n * ld + f;
        bf16* o = out + e;
        if (VEC == 8) {
            mst::Pack8 gp, upk, op;
            gp = mst::load_bf16x8(g);
            upk = mst::load_bf16x8(u);
            for (int j = 0; j < 8; j++) op.h[j] = __float2bfloat16(mst_silu(__bfloat162float(gp.h[j])) * __bfloat162float(upk.h[j]));
            mst::store_bf16x8(o, op);
        } else {
            o[0] = __float2bfloat16(mst_silu(__bfloat162float(g[0])) * __bfloat162float(u[0]));
        }
    }
}
// matches swiglu_backward_cpu; dgate/dup may alias gate/up (each element is read before it is written)
template <int VEC>
__global__ void swiglu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                                       int N, int F, int ld) {
    size_t total = (size_t)N * F / VEC;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t e = idx * VEC;
        size_t n = e / F, f = e % F;
        size_t gi = n * ld + f;
        float gv[VEC], uv[VEC], dv[VEC];
        if (VEC == 8) {
            mst::Pack8 gp, upk, dp;
            gp = mst::load_bf16x8(gate + gi);
            upk = mst::load_bf16x8(up + gi);
            dp = mst::load_bf16x8(dout + e);
            for (int j = 0; j < VEC; j++) { gv[j] = __bfloat162float(gp.h[j]); uv[j] = __bfloat162float(upk.h[j]); dv[j] = __bfloat162float(dp.h[j]); }
        } else {
            gv[0] = __bfloat162float(gate[gi]); uv[0] = __bfloat162float(up[gi]); dv[0] = __bfloat162float(dout[e]);
        }
        float dg[VEC], du[VEC];
        for (int j = 0; j < VEC; j++) {
            float sig = 1.f / (1.f + __expf(-gv[j]));
            dg[j] = dv[j] * uv[j] * sig * (1.f + gv[j] * (1.f - sig));
            du[j] = dv[j] * gv[j] * sig;
        }
        if (VEC == 8) {
            mst::Pack8 a, b;
            for (int j = 0; j < VEC; j++) { a.h[j] = __float2bfloat16(dg[j]); b.h[j] = __float2bfloat16(du[j]); }
            mst::store_bf16x8(dgate + gi, a);
            mst::store_bf16x8(dup + gi, b);
        } else {
            dgate[gi] = __float2bfloat16(dg[0]);
            dup[gi] = __float2bfloat16(du[0]);
        }
    }
}
static inline void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, int N, int F, int ld_gu, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if ((size_t)N * F == 0) return;
    bool vec = F % 8 == 0 && ld_gu % 8 == 0 && mst::aligned16(out) && mst::aligned16(gate) && mst::aligned16(up);
    int threads = 256;
    if (vec) mst::launch<swiglu_forward_kernel<8>>(mst_elementwise_blocks((size_t)N * F / 8, threads), threads, 0, stream, out, gate, up, N, F, ld_gu);
    else mst::launch<swiglu_forward_kernel<1>>(mst_elementwise_blocks((size_t)N * F, threads), threads, 0, stream, out, gate, up, N, F, ld_gu);
    CUDA_CHECK(cudaGetLastError());
}
static inline void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int N, int F,
                                   int ld_gu, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if ((size_t)N * F == 0) return;
    bool vec = F % 8 == 0 && ld_gu % 8 == 0 && mst::aligned16(dgate) && mst::aligned16(dup) && mst::aligned16(dout) &&
               mst::aligned16(gate) && mst::aligned16(up);
    int threads = 256;
    if (vec) mst::launch<swiglu_backward_kernel<8>>(mst_elementwise_blocks((size_t)N * F / 8, threads), threads, 0, stream, dgate, dup, dout, gate, up, N, F, ld_gu);
    else mst::launch<swiglu_backward_kernel<1>>(mst_elementwise_blocks((size_t)N * F, threads), threads, 0, stream, dgate, dup, dout, gate, up, N, F, ld_gu);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// LM-head loss: one block per row, online softmax (max and sum in one pass), then the gradient in place.

static const int CE_THREADS = 1024;

__device__ __forceinline__ void mst_online_combine(float& m, float& s, float m2, float s2) {
    float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return;  // both empty
    s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
    m = mn;
}

// matches crossentropy_forward_backward_cpu (per-token losses instead of their sum)
template <bool VEC>
__global__ void __launch_bounds__(CE_THREADS) crossentropy_kernel(bf16* logits, float* losses, const int* targets, int V,
                                                                  float grad_scale) {
    __shared__ float sm_m[CE_THREADS / 32], sm_s[CE_THREADS / 32];
    __shared__ float sm_target_logit;
    int n = blockIdx.x;
    int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    bf16* row = logits + (size_t)n * V;
    int target = targets[n];
    if (target < 0) {
        // ignored: zero gradient, no loss
        if (VEC) {
            mst::Pack8 z;
            z.u = make_uint4(0, 0, 0, 0);
            for (int i = tid * 8; i < V; i += CE_THREADS * 8) mst::store_bf16x8(row + i, z);
        } else {
            for (int i = tid; i < V; i += CE_THREADS) row[i] = __float2bfloat16(0.f);
        }
        if (tid == 0) losses[n] = 0.f;
        return;
    }
    if (tid == 0) sm_target_logit = target < V ? __bfloat162float(row[target]) : NAN;
    // pass 1: per-thread online max/sum
    float m = -INFINITY, s = 0.f;
    if (VEC) {
        for (int i = tid * 8; i < V; i += CE_THREADS * 8) {
            mst::Pack8 p;
            p = mst::load_bf16x8(row + i);
            float x[8], mx = -INFINITY;
            for (int j = 0; j < 8; j++) { x[j] = __bfloat162float(p.h[j]); mx = fmaxf(mx, x[j]); }
            float mn = fmaxf(m, mx);
            float add = 0.f;
            for (int j = 0; j < 8; j++) add += __expf(x[j] - mn);
            s = s * __expf(m - mn) + add;
            m = mn;
        }
    } else {
        for (int i = tid; i < V; i += CE_THREADS) {
            float x = __bfloat162float(row[i]);
            float mn = fmaxf(m, x);
            s = s * __expf(m - mn) + __expf(x - mn);
            m = mn;
        }
    }
    // warp then block combine (fixed order: deterministic)
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        mst_online_combine(m, s, m2, s2);
    }
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        m = lane < CE_THREADS / 32 ? sm_m[lane] : -INFINITY;
        s = lane < CE_THREADS / 32 ? sm_s[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
            mst_online_combine(m, s, m2, s2);
        }
        if (lane == 0) { sm_m[0] = m; sm_s[0] = s; }
    }
    __syncthreads();
    float lse = sm_m[0] + logf(sm_s[0]);
    if (tid == 0) losses[n] = lse - sm_target_logit;
    // pass 2: gradient in place (sm_target_logit was read before the barrier above)
    if (VEC) {
        for (int i = tid * 8; i < V; i += CE_THREADS * 8) {
            mst::Pack8 p;
            p = mst::load_bf16x8(row + i);
            for (int j = 0; j < 8; j++) {
                float g = __expf(__bfloat162float(p.h[j]) - lse) * grad_scale;
                if (i + j == target) g -= grad_scale;
                p.h[j] = __float2bfloat16(g);
            }
            mst::store_bf16x8(row + i, p);
        }
    } else {
        for (int i = tid; i < V; i += CE_THREADS) {
            float g = __expf(__bfloat162float(row[i]) - lse) * grad_scale;
            if (i == target) g -= grad_scale;
            row[i] = __float2bfloat16(g);
        }
    }
}
static inline void crossentropy_forward_backward(bf16* logits, float* losses, const int* targets, int N, int V,
                                                 float grad_scale, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if (N <= 0) return;
    bool vec = V % 8 == 0 && mst::aligned16(logits);
    if (vec) mst::launch<crossentropy_kernel<true>>(N, CE_THREADS, 0, stream, logits, losses, targets, V, grad_scale);
    else mst::launch<crossentropy_kernel<false>>(N, CE_THREADS, 0, stream, logits, losses, targets, V, grad_scale);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// AdamW

__device__ __forceinline__ unsigned int mst_hash(unsigned int x) {  // lowbias32 (Chris Wellons)
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}
// fp32 -> bf16, rounding up with probability equal to the dropped fraction
__device__ __forceinline__ bf16 mst_stochastic_round(float x, unsigned int random) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16(x);  // inf / nan
    bits += random & 0xffffu;
    bits &= 0xffff0000u;
    return __ushort_as_bfloat16((unsigned short)(bits >> 16));
}
// an AdamW state or gradient element as fp32
__device__ __forceinline__ float mst_load_state(const float* p) { return *p; }
__device__ __forceinline__ float mst_load_state(const bf16* p) { return __bfloat162float(*p); }
// bf16 m and v are stored with stochastic rounding (fp32 ones as they are)
__device__ __forceinline__ void mst_store_state(float* p, float x, unsigned int) { *p = x; }
__device__ __forceinline__ void mst_store_state(bf16* p, float x, unsigned int random) { *p = mst_stochastic_round(x, random); }

struct AdamwStep {
    float lr, beta1, beta2, bias_correction1, bias_correction2, eps, weight_decay, scale;
    unsigned int seed;
    size_t index_base;  // the first element's index in its tensor (ZeRO-1's shards: one update's bits however split)
};
// one element of matches adamw_cpu: p, m, v updated in place from g (already scaled); returns element i's random
// bits (hash of the seed and i + index_base: the same whichever path, vector or scalar, handles i)
__device__ __forceinline__ unsigned int adamw_element(const AdamwStep& a, size_t i, float& p, float g, float& m, float& v) {
    p -= a.lr * a.weight_decay * p;
    m = a.beta1 * m + (1.f - a.beta1) * g;
    v = a.beta2 * v + (1.f - a.beta2) * g * g;
    p -= a.lr * (m / a.bias_correction1) / (sqrtf(v / a.bias_correction2) + a.eps);
    size_t e = i + a.index_base;  // the element's index in its tensor
    return mst_hash(a.seed ^ mst_hash((unsigned int)e ^ (unsigned int)(e >> 32) * 0x9e3779b9u));
}
// 8 consecutive states: bf16 with stochastic rounding (random bits per element), fp32 as they are
__device__ __forceinline__ void adamw_store8_state(float* p, const float* x, const unsigned int*) { mst::store8(p, x); }
__device__ __forceinline__ void adamw_store8_state(bf16* p, const float* x, const unsigned int* random) {
    mst::Pack8 v;
    for (int j = 0; j < 8; j++) v.h[j] = mst_stochastic_round(x[j], random[j]);
    mst::store_bf16x8(p, v);
}
static const unsigned int ADAMW_V_SALT = 0x68e31da4u, ADAMW_PARAM_SALT = 0xb5297a4du;

// matches adamw_cpu; G: fp32 gradients, or bf16 ones (held on the host in bf16). VEC 8: each thread loads 8
// elements of every array with 16-byte loads (issued together: up to 6 x 16 bytes in flight per thread), the
// tail past the last multiple of 8 element by element; VEC 1 (an array not 16-byte aligned): element by element.
// m at random bits h, v at hash(h ^ ADAMW_V_SALT), a parameter without master at hash(h ^ ADAMW_PARAM_SALT).
template <typename S, typename G, int VEC>
__global__ void adamw_kernel(bf16* params, float* master, const G* grads, S* m, S* v, size_t count, AdamwStep a,
                             const float* grad_scale_device) {
    if (grad_scale_device) a.scale *= *grad_scale_device;
    size_t groups = (count + VEC - 1) / VEC;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < groups; k += (size_t)gridDim.x * blockDim.x) {
        size_t e = k * VEC;
        if (VEC == 8 && e + 8 <= count) {
            float p[8], g[8], mi[8], vi[8];
            unsigned int h[8], hv[8], hp[8];
            if (master) mst::load8(master + e, p); else mst::load8(params + e, p);
            mst::load8(grads + e, g);
            mst::load8(m + e, mi);
            mst::load8(v + e, vi);
            for (int j = 0; j < 8; j++) {
                h[j] = adamw_element(a, e + j, p[j], g[j] * a.scale, mi[j], vi[j]);
                hv[j] = mst_hash(h[j] ^ ADAMW_V_SALT);
                hp[j] = mst_hash(h[j] ^ ADAMW_PARAM_SALT);
            }
            adamw_store8_state(m + e, mi, h);
            adamw_store8_state(v + e, vi, hv);
            if (master) {
                mst::store8(master + e, p);
                mst::store8(params + e, p);
            } else {
                adamw_store8_state(params + e, p, hp);
            }
            continue;
        }
        for (size_t i = e; i < e + VEC && i < count; i++) {
            float p = master ? master[i] : __bfloat162float(params[i]);
            float mi = mst_load_state(m + i), vi = mst_load_state(v + i);
            unsigned int h = adamw_element(a, i, p, mst_load_state(grads + i) * a.scale, mi, vi);
            mst_store_state(m + i, mi, h);
            mst_store_state(v + i, vi, mst_hash(h ^ ADAMW_V_SALT));
            if (master) {
                master[i] = p;
                params[i] = __float2bfloat16(p);
            } else {
                params[i] = mst_stochastic_round(p, mst_hash(h ^ ADAMW_PARAM_SALT));
            }
        }
    }
}
template <typename S, typename G>
static inline void adamw_update(bf16* params, float* master, const G* grads, S* m, S* v, size_t count, int t, float lr,
                                float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                                const float* grad_scale_device, unsigned int seed, cudaStream_t stream,
                                size_t index_base = 0) {
    profile_phase(PHASE_OPTIMIZER, stream);
    if (count == 0) return;
    AdamwStep a = {lr, beta1, beta2, 1.f - powf(beta1, (float)t), 1.f - powf(beta2, (float)t), eps, weight_decay,
                   grad_scale, seed, index_base};
    bool vec = mst::aligned16(params) && (!master || mst::aligned16(master)) && mst::aligned16(grads) &&
               mst::aligned16(m) && mst::aligned16(v);
    int threads = 256;
    if (vec) mst::launch<adamw_kernel<S, G, 8>>(mst_elementwise_blocks((count + 7) / 8, threads), threads, 0, stream,
                                                params, master, grads, m, v, count, a, grad_scale_device);
    else mst::launch<adamw_kernel<S, G, 1>>(mst_elementwise_blocks(count, threads), threads, 0, stream,
                                            params, master, grads, m, v, count, a, grad_scale_device);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// global gradient norm

static const int GLOBAL_NORM_BLOCKS = 512;
static const int GLOBAL_NORM_THREADS = 512;

static inline size_t global_norm_scratch_bytes(int num_slots) {
    return (size_t)num_slots * GLOBAL_NORM_BLOCKS * sizeof(double);
}
// matches sum_of_squares_cpu; with `rounded`, each element is first rounded to bf16 (round-to-nearest-even,
// round_bf16 on the CPU) and written there, and the rounded value is squared: the norm of what the held bf16
// gradient will apply. partial null: only the rounding (a micro-batch's partial sum on its way to the host).
// VEC 8: 8 elements per thread per iteration (two 16-byte loads, one 16-byte store of the rounded), the tail past
// the last multiple of 8 element by element; VEC 1: arrays not 16-byte aligned. (GLOBAL_NORM_BLOCKS x 512
// threads = 256K threads x 32 bytes: 8 MB in flight, the 4.8 MB an H200 needs.)
template <int VEC>
__global__ void __launch_bounds__(GLOBAL_NORM_THREADS) global_norm_partial_kernel(double* partial, const float* x,
                                                                                 bf16* rounded, size_t count) {
    __shared__ double sm[GLOBAL_NORM_THREADS / 32];
    double sum = 0.0;
    size_t groups = (count + VEC - 1) / VEC;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < groups; k += (size_t)gridDim.x * blockDim.x) {
        size_t e = k * VEC;
        float f[VEC];
        int n = (int)(count - e < (size_t)VEC ? count - e : VEC);
        if (VEC == 8 && n == 8) mst::load8(x + e, f);
        else for (int j = 0; j < n; j++) f[j] = x[e + j];
        if (rounded) {
            for (int j = 0; j < n; j++) f[j] = __bfloat162float(__float2bfloat16(f[j]));
            if (VEC == 8 && n == 8) mst::store8(rounded + e, f);  // exact: f holds bf16 values
            else for (int j = 0; j < n; j++) rounded[e + j] = __float2bfloat16(f[j]);
        }
        for (int j = 0; j < n; j++) sum += (double)f[j] * f[j];
    }
    sum = mst::warp_sum_double(sum);
    if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0 && partial) {
        double total = 0.0;
        for (int w = 0; w < GLOBAL_NORM_THREADS / 32; w++) total += sm[w];
        partial[blockIdx.x] = total;
    }
}
static __global__ void global_norm_finish_kernel(float* norm_out, float* clip_scale_out, const double* partial, int n, float max_norm) {
    __shared__ double sm[32];
    double sum = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += partial[i];
    sum = mst::warp_sum_double(sum);
    if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) total += sm[w];
        float norm = (float)sqrt(total);
        norm_out[0] = norm;
        if (clip_scale_out) clip_scale_out[0] = (max_norm > 0.f && norm > max_norm) ? max_norm / (norm + 1e-6f) : 1.f;
    }
}
static inline void global_norm_partial_launch(double* partial, const float* x, bf16* rounded, size_t count,
                                              cudaStream_t stream) {
    if (mst::aligned16(x) && (!rounded || mst::aligned16(rounded)))
        mst::launch<global_norm_partial_kernel<8>>(GLOBAL_NORM_BLOCKS, GLOBAL_NORM_THREADS, 0, stream, partial, x, rounded, count);
    else mst::launch<global_norm_partial_kernel<1>>(GLOBAL_NORM_BLOCKS, GLOBAL_NORM_THREADS, 0, stream, partial, x, rounded, count);
    CUDA_CHECK(cudaGetLastError());
}
static inline void global_norm_squared_partial(void* scratch, int slot, const float* grad, size_t count, cudaStream_t stream) {
    profile_phase(PHASE_OPTIMIZER, stream);
    double* partial = (double*)scratch + (size_t)slot * GLOBAL_NORM_BLOCKS;
    global_norm_partial_launch(partial, grad, nullptr, count, stream);
}
// rounded = bf16(grad) (round-to-nearest-even); slot >= 0: that slot's partials are the sum of squares of the
// rounded values (one pass: the rounding and the norm read grad once)
static inline void gradient_to_bf16(bf16* rounded, void* scratch, int slot, const float* grad, size_t count,
                                    cudaStream_t stream) {
    profile_phase(PHASE_OPTIMIZER, stream);
    double* partial = slot >= 0 ? (double*)scratch + (size_t)slot * GLOBAL_NORM_BLOCKS : nullptr;
    global_norm_partial_launch(partial, grad, rounded, count, stream);
}
// out = float(in) (ADD false), exact: a held bf16 gradient back into an fp32 gradient buffer (gradient
// accumulation); out += in (ADD true, fp32 in): --zero 2 adds each micro-batch's all-reduced group gradient into
// the rank's shard, one fp32 add per element as a CPU loop does (bitwise). VEC 8: 8 elements per thread by
// 16-byte loads and stores; the tail element by element
template <int VEC, typename In, bool ADD>
__global__ void to_float_kernel(float* out, const In* in, size_t count) {
    size_t groups = (count + VEC - 1) / VEC;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < groups; k += (size_t)gridDim.x * blockDim.x) {
        size_t e = k * VEC;
        if (VEC == 8 && e + 8 <= count) {
            float f[8], o[8];
            mst::load8(in + e, f);
            if (ADD) {
                mst::load8(out + e, o);
                for (int i = 0; i < 8; i++) f[i] = o[i] + f[i];
            }
            mst::store8(out + e, f);
        } else {
            for (size_t i = e; i < e + VEC && i < count; i++) out[i] = (ADD ? out[i] : 0.f) + mst_load_state(in + i);
        }
    }
}
template <typename In, bool ADD>
static inline void to_float_launch(float* out, const In* in, size_t count, cudaStream_t stream) {
    profile_phase(PHASE_MEMORY_BOUND, stream);
    if (count == 0) return;
    int threads = 256;
    if (mst::aligned16(out) && mst::aligned16(in))
        mst::launch<to_float_kernel<8, In, ADD>>(mst_elementwise_blocks((count + 7) / 8, threads), threads, 0, stream, out, in, count);
    else mst::launch<to_float_kernel<1, In, ADD>>(mst_elementwise_blocks(count, threads), threads, 0, stream, out, in, count);
    CUDA_CHECK(cudaGetLastError());
}
static inline void bf16_to_float(float* out, const bf16* in, size_t count, cudaStream_t stream) {
    to_float_launch<bf16, false>(out, in, count, stream);
}
static inline void float_accumulate(float* out, const float* in, size_t count, cudaStream_t stream) {
    to_float_launch<float, true>(out, in, count, stream);
}
static inline void global_norm_finish(float* norm_out, float* clip_scale_out, const void* scratch, int num_slots,
                                      float max_norm, cudaStream_t stream) {
    profile_phase(PHASE_OPTIMIZER, stream);
    mst::launch<global_norm_finish_kernel>(1, 1024, 0, stream, norm_out, clip_scale_out, (const double*)scratch,
                                                      num_slots * GLOBAL_NORM_BLOCKS, max_norm);
    CUDA_CHECK(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// attention: FlashAttention-2-style causal GQA on mma.sync m16n8k16 (bf16 in, fp32 accumulate).
// Tiles are staged in shared memory with rows padded to HD+8 elements (conflict-free ldmatrix), fragments
// are read with ldmatrix (.trans where the operand is needed k-major). Each warp owns 16 rows of its tile.
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane/4, t = lane%4):
//   A (16x16): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B (16x8):  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C (16x8):  c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
// so a C tile of a 16x16 slice converts to an A fragment with no data movement.

namespace mst {

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
    return *reinterpret_cast<uint32_t*>(&v);
}
// A fragment of the 16x16 block at (r0, c0) of a row-major tile
template <int LDS>
__device__ __forceinline__ void load_a(uint32_t* a, const bf16* tile, int r0, int c0, int lane) {
    int m = lane >> 3;
    ldmatrix_x4(a, tile + (r0 + (m & 1) * 8 + (lane & 7)) * LDS + c0 + (m >> 1) * 8);
}
// B fragments of n-blocks n0 and n0+8 (b[0..1], b[2..3]) over k0..k0+15, where B[k][n] = M[n][k], M row-major
template <int LDS>
__device__ __forceinline__ void load_b_nk(uint32_t* b, const bf16* tile, int n0, int k0, int lane) {
    int m = lane >> 3;
    ldmatrix_x4(b, tile + (n0 + (m >> 1) * 8 + (lane & 7)) * LDS + k0 + (m & 1) * 8);
}
// the same where B[k][n] = M[k][n], M row-major (transposing load)
template <int LDS>
__device__ __forceinline__ void load_b_kn(uint32_t* b, const bf16* tile, int k0, int n0, int lane) {
    int m = lane >> 3;
    ldmatrix_x4_trans(b, tile + (k0 + (m & 1) * 8 + (lane & 7)) * LDS + n0 + (m >> 1) * 8);
}
// acc[0..NB) (n-blocks of 8 columns) += A(16x16) B, B's k-slice k0..k0+15 and columns 0..NB*8 of the tile:
// warp_mma_nk where B[k][n] = tile[n][k], warp_mma_kn where B[k][n] = tile[k][n]
template <int NB, int LDS>
__device__ __forceinline__ void warp_mma_nk(float (*acc)[4], const uint32_t* a, const bf16* tile, int k0, int lane) {
#pragma unroll
    for (int nb2 = 0; nb2 < NB / 2; nb2++) {
        uint32_t b[4];
        load_b_nk<LDS>(b, tile, nb2 * 16, k0, lane);
        mma_m16n8k16_bf16(acc[2 * nb2], a, b);
        mma_m16n8k16_bf16(acc[2 * nb2 + 1], a, b + 2);
    }
}
template <int NB, int LDS>
__device__ __forceinline__ void warp_mma_kn(float (*acc)[4], const uint32_t* a, const bf16* tile, int k0, int lane) {
#pragma unroll
    for (int nb2 = 0; nb2 < NB / 2; nb2++) {
        uint32_t b[4];
        load_b_kn<LDS>(b, tile, k0, nb2 * 16, lane);
        mma_m16n8k16_bf16(acc[2 * nb2], a, b);
        mma_m16n8k16_bf16(acc[2 * nb2 + 1], a, b + 2);
    }
}
// acc (16 rows x NB*8) += A_tile[r0..r0+15, 0..HD) B_tile[0..NB*8, 0..HD)^T, both row-major tiles
template <int NB, int HD, int LDS>
__device__ __forceinline__ void warp_gemm_nt(float (*acc)[4], const bf16* a_tile, int r0, const bf16* b_tile, int lane) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[4];
        load_a<LDS>(a, a_tile, r0, kk * 16, lane);
        warp_mma_nk<NB, LDS>(acc, a, b_tile, kk * 16, lane);
    }
}
// the A fragment of columns 16kk..16kk+15 of a 16-row accumulator: n-blocks c0 = acc[2kk], c1 = acc[2kk+1]
__device__ __forceinline__ void acc_to_a(uint32_t* a, const float* c0, const float* c1) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}
template <int NB>
__device__ __forceinline__ void zero_acc(float (*acc)[4]) {
#pragma unroll
    for (int i = 0; i < NB; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// ROWS rows of HD bf16 from global (row r at g + r * stride) into a padded tile; rows >= valid are zero
template <int ROWS, int HD, int LDS, int THREADS>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* g, size_t stride, int valid) {
    constexpr int CHUNKS = HD / 8;
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < valid) val = *reinterpret_cast<const uint4*>(g + (size_t)r * stride + c);
        *reinterpret_cast<uint4*>(tile + r * LDS + c) = val;
    }
}

// the same with cp.async (16 bytes, zero-filled past `valid`; sources clamped to row 0, which is always valid)
template <int ROWS, int HD, int LDS, int THREADS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* g, size_t stride, int valid) {
    constexpr int CHUNKS = HD / 8;
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        const bf16* src = g + (size_t)(r < valid ? r : 0) * stride + c;
        cp_async_16(tile + r * LDS + c, src, r < valid ? 16 : 0);
    }
}

// Document masking (attention_first_key): the first key query `row` of sequence b may see, its document's
// start; 0 without a mask (doc_start null). Starts never decrease along a sequence, so a tile's first row
// has its tile's smallest start and its last row the largest.
__device__ __forceinline__ int first_key(const int* doc_start, int b, int T, int row) {
    return doc_start ? doc_start[(size_t)b * T + row] : 0;
}
// the first row in [lo, hi) whose first key is after `key` (hi if none): the rows from there on see
// none of the keys up to `key`
__device__ __forceinline__ int first_row_after(const int* doc_start, int b, int T, int lo, int hi, int key) {
    if (!doc_start) return hi;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (first_key(doc_start, b, T, mid) > key) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}
// a pair of dK/dV values into row-major gradient memory: fp32 written or added to (query blocks after the
// first), bf16 written (attention_backward lets bf16 gradients take no block after the first)
__device__ __forceinline__ void store_grad_pair(float* p, float x, float y, bool accumulate) {
    float2 v = accumulate ? *reinterpret_cast<const float2*>(p) : make_float2(0.f, 0.f);
    *reinterpret_cast<float2*>(p) = make_float2(v.x + x, v.y + y);
}
__device__ __forceinline__ void store_grad_pair(bf16* p, float x, float y, bool) {
    *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(x, y);
}

}  // namespace mst

static const float MST_LOG2E = 1.4426950408889634f;

// matches document_starts_cpu: doc_start[b, t] = the last position <= t holding the bos token (0 if none),
// a running maximum: each thread scans a contiguous chunk of the sequence, the block combines the chunks'
// last bos positions (an inclusive prefix maximum in shared memory), then each chunk is written. grid B.
static const int DOCUMENT_STARTS_THREADS = 256;
static __global__ void __launch_bounds__(DOCUMENT_STARTS_THREADS) document_starts_kernel(int* doc_start, const int* tokens,
                                                                                        int T, int bos) {
    __shared__ int chunk_last[DOCUMENT_STARTS_THREADS];
    int tid = threadIdx.x, chunk = (T + DOCUMENT_STARTS_THREADS - 1) / DOCUMENT_STARTS_THREADS;
    int begin = min(T, tid * chunk), end = min(T, begin + chunk);
    const int* seq = tokens + (size_t)blockIdx.x * T;
    int* starts = doc_start + (size_t)blockIdx.x * T;
    int last = 0;
    for (int t = begin; t < end; t++)
        if (seq[t] == bos) last = t;
    chunk_last[tid] = last;
    __syncthreads();
    for (int offset = 1; offset < DOCUMENT_STARTS_THREADS; offset *= 2) {
        int before = tid >= offset ? chunk_last[tid - offset] : 0;
        __syncthreads();
        chunk_last[tid] = max(chunk_last[tid], before);
        __syncthreads();
    }
    int start = tid > 0 ? chunk_last[tid - 1] : 0;
    for (int t = begin; t < end; t++) {
        if (seq[t] == bos) start = t;
        starts[t] = start;
    }
}
static inline void document_starts(int* doc_start, const int* tokens, int B, int T, int bos, cudaStream_t stream) {
    mst::launch<document_starts_kernel>(B, DOCUMENT_STARTS_THREADS, 0, stream, doc_start, tokens, T, bos);
    CUDA_CHECK(cudaGetLastError());
}

// matches attention_forward_cpu for the query rows [q_begin, q_end) (keys [0, q_end): nothing at or after
// q_end is read). grid (ceil((q_end - q_begin) / 64), H, B), 128 threads; each warp 16 query rows, key tiles
// of 64 at multiples of 64 (so a row's arithmetic does not depend on which query tile holds it: a query
// block gives the bits of the whole-sequence call). Online softmax in the exp2 domain; lse written in
// natural log. doc_start (nullable): the key loop starts at the tile containing the query tile's smallest
// document start; only tiles crossing the diagonal or a document start are masked element by element.
// ASYNC = false (v1): synchronous tile loads, one K/V buffer. ASYNC = true (v2): cp.async double buffering,
// the next K/V tile loads while this one is used.
template <int HD, bool ASYNC>
__global__ void __launch_bounds__(128) attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                                const bf16* v, const int* doc_start, int q_begin,
                                                                int q_end, int T, int H, int KV, float scale,
                                                                float scale_log2) {
    constexpr int BR = 64, BC = 64, LDS = HD + 8;
    unsigned char* mst_smem = mst::dynamic_shared_memory();
    bf16* Ks0 = reinterpret_cast<bf16*>(mst_smem);
    bf16* Vs0 = Ks0 + BC * LDS;
    bf16* Ks1 = Vs0 + BC * LDS;  // second buffer: ASYNC only
    bf16* Vs1 = Ks1 + BC * LDS;
    bf16* Qs = ASYNC ? Ks1 : Ks0;  // Q is staged in a K tile's space before that tile is first loaded
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    int qb = gridDim.x - 1 - blockIdx.x;  // the longest (last) query blocks first
    int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    int q0 = q_begin + qb * BR;
    size_t q_stride = (size_t)H * HD, kv_stride = (size_t)KV * HD;
    int key_begin = mst::first_key(doc_start, b, T, q0) / BC * BC;  // tiles before it are outside every document here
    const bf16* kbase = k + ((size_t)b * T + key_begin) * kv_stride + (size_t)kvh * HD;
    const bf16* vbase = v + ((size_t)b * T + key_begin) * kv_stride + (size_t)kvh * HD;

    mst::load_tile<BR, HD, LDS, 128>(Qs, q + ((size_t)b * T + q0) * q_stride + (size_t)h * HD, q_stride, q_end - q0);
    if (ASYNC) {  // the first K/V tile into buffer 0
        mst::load_tile_async<BC, HD, LDS, 128>(Ks0, kbase, kv_stride, q_end - key_begin);
        mst::load_tile_async<BC, HD, LDS, 128>(Vs0, vbase, kv_stride, q_end - key_begin);
        mst::cp_async_commit();
    }
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) mst::load_a<LDS>(qf[kk], Qs, warp * 16, kk * 16, lane);
    if (ASYNC) __syncthreads();  // Q (in buffer 1) is consumed before tile 1 lands there

    float o[HD / 8][4];
    mst::zero_acc<HD / 8>(o);
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
    int row_w = q0 + warp * 16;
    int row_a = row_w + g, row_b = row_a + 8;
    // document starts: of this lane's rows, and the smallest and largest of the warp's (rows past q_end: none)
    int first_a = row_a < q_end ? mst::first_key(doc_start, b, T, row_a) : 0;
    int first_b = row_b < q_end ? mst::first_key(doc_start, b, T, row_b) : 0;
    int warp_first = row_w < q_end ? mst::first_key(doc_start, b, T, row_w) : 0;
    int warp_last_first = row_w < q_end ? mst::first_key(doc_start, b, T, min(row_w + 15, q_end - 1)) : 0;
    int kend = min(q_end, q0 + BR);
    int ntiles = (kend - key_begin + BC - 1) / BC;
    for (int j = 0; j < ntiles; j++) {
        int k0 = key_begin + j * BC;
        const bf16* Ks = (ASYNC && (j & 1)) ? Ks1 : Ks0;
        const bf16* Vs = (ASYNC && (j & 1)) ? Vs1 : Vs0;
        if (ASYNC) {
            if (j + 1 < ntiles) {  // prefetch tile j+1 into the other buffer, then wait for tile j only
                size_t k1 = (size_t)(j + 1) * BC;
                mst::load_tile_async<BC, HD, LDS, 128>((j & 1) ? Ks0 : Ks1, kbase + k1 * kv_stride, kv_stride, q_end - k0 - BC);
                mst::load_tile_async<BC, HD, LDS, 128>((j & 1) ? Vs0 : Vs1, vbase + k1 * kv_stride, kv_stride, q_end - k0 - BC);
                mst::cp_async_commit();
                mst::cp_async_wait<1>();
            } else {
                mst::cp_async_wait<0>();
            }
            __syncthreads();  // tile j is visible to every thread
        } else {
            __syncthreads();  // everyone is done with the previous tile (and with the staged Q)
            mst::load_tile<BC, HD, LDS, 128>(Ks0, kbase + (size_t)j * BC * kv_stride, kv_stride, q_end - k0);
            mst::load_tile<BC, HD, LDS, 128>(Vs0, vbase + (size_t)j * BC * kv_stride, kv_stride, q_end - k0);
            __syncthreads();
        }
        // else every key of this tile is after every row of this warp, or before all their documents
        if (k0 <= row_w + 15 && k0 + BC > warp_first) {
            float s[BC / 8][4];
            mst::zero_acc<BC / 8>(s);
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) mst::warp_mma_nk<BC / 8, LDS>(s, qf[kk], Ks, kk * 16, lane);  // S = Q K^T
            if (k0 + BC - 1 > row_w || k0 < warp_last_first) {  // (keys past q_end are past every row's)
#pragma unroll
                for (int nb = 0; nb < BC / 8; nb++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int col = k0 + nb * 8 + 2 * t4 + (e & 1);
                        int row = e < 2 ? row_a : row_b;
                        if (col > row || col < (e < 2 ? first_a : first_b)) s[nb][e] = -INFINITY;
                    }
                }
            }
            float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < BC / 8; nb++) {
                mx_a = fmaxf(mx_a, fmaxf(s[nb][0], s[nb][1]));
                mx_b = fmaxf(mx_b, fmaxf(s[nb][2], s[nb][3]));
            }
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
            float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
            float base_a = mn_a == -INFINITY ? 0.f : mn_a * scale_log2;
            float base_b = mn_b == -INFINITY ? 0.f : mn_b * scale_log2;
            float alpha_a = exp2f(m_a * scale_log2 - base_a);  // m = -inf: 0
            float alpha_b = exp2f(m_b * scale_log2 - base_b);
            float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
            for (int nb = 0; nb < BC / 8; nb++) {
                s[nb][0] = exp2f(s[nb][0] * scale_log2 - base_a);
                s[nb][1] = exp2f(s[nb][1] * scale_log2 - base_a);
                s[nb][2] = exp2f(s[nb][2] * scale_log2 - base_b);
                s[nb][3] = exp2f(s[nb][3] * scale_log2 - base_b);
                sum_a += s[nb][0] + s[nb][1];
                sum_b += s[nb][2] + s[nb][3];
            }
            l_a = l_a * alpha_a + sum_a;
            l_b = l_b * alpha_b + sum_b;
            m_a = mn_a;
            m_b = mn_b;
#pragma unroll
            for (int nb = 0; nb < HD / 8; nb++) {
                o[nb][0] *= alpha_a; o[nb][1] *= alpha_a;
                o[nb][2] *= alpha_b; o[nb][3] *= alpha_b;
            }
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {  // O += P V
                uint32_t a[4];
                mst::acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
                mst::warp_mma_kn<HD / 8, LDS>(o, a, Vs, kk * 16, lane);
            }
        }
        if (ASYNC) __syncthreads();  // everyone is done with buffer j&1 before tile j+2 is loaded into it
    }
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    float inv_a = 1.f / l_a, inv_b = 1.f / l_b;
    if (row_a < q_end) {
        bf16* dst = out + ((size_t)b * T + row_a) * q_stride + (size_t)h * HD + 2 * t4;
#pragma unroll
        for (int nb = 0; nb < HD / 8; nb++)
            *reinterpret_cast<uint32_t*>(dst + nb * 8) = mst::pack_bf16x2(o[nb][0] * inv_a, o[nb][1] * inv_a);
        if (t4 == 0) lse[((size_t)b * H + h) * T + row_a] = m_a * scale + logf(l_a);
    }
    if (row_b < q_end) {
        bf16* dst = out + ((size_t)b * T + row_b) * q_stride + (size_t)h * HD + 2 * t4;
#pragma unroll
        for (int nb = 0; nb < HD / 8; nb++)
            *reinterpret_cast<uint32_t*>(dst + nb * 8) = mst::pack_bf16x2(o[nb][2] * inv_b, o[nb][3] * inv_b);
        if (t4 == 0) lse[((size_t)b * H + h) * T + row_b] = m_b * scale + logf(l_b);
    }
}

// D[b,h,t] = sum_i dout_i out_i (the "delta" of attention_backward_cpu) for the rows t in [q_begin, q_end);
// one warp per (b, t, h) row
static __global__ void attention_backward_preprocess_kernel(float* D, const bf16* dout, const bf16* out, int B, int T, int H,
                                                            int hd, int q_begin, int q_end) {
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // over (b, t - q_begin, h)
    int lane = threadIdx.x % 32, n = q_end - q_begin;
    if (row >= (size_t)B * n * H) return;
    int h = (int)(row % H);
    size_t bt = row / H;
    int t = q_begin + (int)(bt % n), b = (int)(bt / n);
    size_t at = (((size_t)b * T + t) * H + h) * hd;
    float sum = 0.f;
    for (int i = lane; i < hd; i += 32) sum += __bfloat162float(dout[at + i]) * __bfloat162float(out[at + i]);
    sum = mst::warp_sum(sum);
    if (lane == 0) D[((size_t)b * H + h) * T + t] = sum;
}

// dK, dV for one block of 64 keys of one kv head: loops over the query heads of the group and the query
// tiles (32 rows) of [q_begin, q_end) at or after the block, up to the first row whose document starts
// after the block's last key (doc_start nullable). Each warp owns 16 keys. grid (key blocks, KV, B), 128
// threads. dk, dv (GradKV = bf16 or float) are written, or added to with accumulate (query blocks after
// the first); keys with no query in range get 0 written / nothing added.
// ASYNC (v2): the next Q/dO tile loads with cp.async (double buffered) while this one is used.
template <int HD, bool ASYNC, typename GradKV>
__global__ void __launch_bounds__(128) attention_backward_dkdv_kernel(GradKV* dk, GradKV* dv, const bf16* q, const bf16* k,
                                                                      const bf16* v, const bf16* dout, const float* lse,
                                                                      const float* Dbuf, const int* doc_start, int q_begin,
                                                                      int q_end, bool accumulate, int T, int H, int KV,
                                                                      float scale, float scale_log2) {
    constexpr int BKV = 64, BQ = 32, LDS = HD + 8, NBUF = ASYNC ? 2 : 1;
    unsigned char* mst_smem = mst::dynamic_shared_memory();
    bf16* Ks = reinterpret_cast<bf16*>(mst_smem);
    bf16* Vs = Ks + BKV * LDS;
    bf16* Qbuf = Vs + BKV * LDS;          // NBUF tiles of BQ rows
    bf16* dObuf = Qbuf + NBUF * BQ * LDS;  // NBUF tiles of BQ rows
    float* lse2_buf = reinterpret_cast<float*>(dObuf + NBUF * BQ * LDS);  // NBUF x BQ
    float* D_buf = lse2_buf + NBUF * BQ;
    int* first_buf = reinterpret_cast<int*>(D_buf + NBUF * BQ);  // NBUF x BQ: each query row's document start
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    int kvh = blockIdx.y, b = blockIdx.z;
    int k0 = blockIdx.x * BKV;  // the first key blocks have the most queries: they start first
    int group = H / KV;
    size_t q_stride = (size_t)H * HD, kv_stride = (size_t)KV * HD;
    mst::load_tile<BKV, HD, LDS, 128>(Ks, k + ((size_t)b * T + k0) * kv_stride + (size_t)kvh * HD, kv_stride, q_end - k0);
    mst::load_tile<BKV, HD, LDS, 128>(Vs, v + ((size_t)b * T + k0) * kv_stride + (size_t)kvh * HD, kv_stride, q_end - k0);

    float dk_acc[HD / 8][4], dv_acc[HD / 8][4];
    mst::zero_acc<HD / 8>(dk_acc);
    mst::zero_acc<HD / 8>(dv_acc);
    int key_w = k0 + warp * 16;
    int key_a = key_w + g, key_b = key_a + 8;
    // the query rows that see a key of this block: from max(k0, q_begin) (causal) to the first row whose
    // document starts after the block's last key (the rows after it see none)
    int qs = max(k0, q_begin);
    int qe = qs < q_end ? mst::first_row_after(doc_start, b, T, qs, q_end, min(k0 + BKV, q_end) - 1) : qs;
    // one iteration per (query head of the group, query tile), heads outer
    int n_qt = (qe - qs + BQ - 1) / BQ;
    int iters = group * n_qt;
    auto load_q_tile = [&](int it, int buf) {
        int h = kvh * group + it / n_qt;
        int q0 = qs + (it % n_qt) * BQ;
        size_t off = ((size_t)b * T + q0) * q_stride + (size_t)h * HD;
        if (ASYNC) {
            mst::load_tile_async<BQ, HD, LDS, 128>(Qbuf + buf * BQ * LDS, q + off, q_stride, q_end - q0);
            mst::load_tile_async<BQ, HD, LDS, 128>(dObuf + buf * BQ * LDS, dout + off, q_stride, q_end - q0);
        } else {
            mst::load_tile<BQ, HD, LDS, 128>(Qbuf + buf * BQ * LDS, q + off, q_stride, q_end - q0);
            mst::load_tile<BQ, HD, LDS, 128>(dObuf + buf * BQ * LDS, dout + off, q_stride, q_end - q0);
        }
        if (tid < BQ) {
            int qi = q0 + tid;
            size_t row = ((size_t)b * H + h) * T + qi;
            lse2_buf[buf * BQ + tid] = qi < q_end ? lse[row] * MST_LOG2E : INFINITY;
            D_buf[buf * BQ + tid] = qi < q_end ? Dbuf[row] : 0.f;
            first_buf[buf * BQ + tid] = qi < q_end ? mst::first_key(doc_start, b, T, qi) : T;  // past q_end: no key
        }
    };
    if (ASYNC && iters > 0) {
        load_q_tile(0, 0);
        mst::cp_async_commit();
    }
    for (int it = 0; it < iters; it++) {
        int buf = ASYNC ? (it & 1) : 0;
        int q0 = qs + (it % n_qt) * BQ;
        if (ASYNC) {
            if (it + 1 < iters) {  // prefetch the next tile into the other buffer, then wait for this one only
                load_q_tile(it + 1, buf ^ 1);
                mst::cp_async_commit();
                mst::cp_async_wait<1>();
            } else {
                mst::cp_async_wait<0>();
            }
            __syncthreads();  // this tile (and K, V on the first iteration) visible to every thread
        } else {
            __syncthreads();  // the previous tile is consumed (and K, V are complete after the barrier below)
            load_q_tile(it, 0);
            __syncthreads();
        }
        const bf16* Qs = Qbuf + buf * BQ * LDS;
        const bf16* dOs = dObuf + buf * BQ * LDS;
        const float* lse2_s = lse2_buf + buf * BQ;
        const float* D_s = D_buf + buf * BQ;
        const int* first_s = first_buf + buf * BQ;
        // else every query of this tile is before every key of this warp, or in a later document
        if (key_w <= q0 + BQ - 1 && first_s[0] <= key_w + 15) {
            // S^T = K Q^T (16 keys x BQ queries)
            float st[BQ / 8][4];
            mst::zero_acc<BQ / 8>(st);
            mst::warp_gemm_nt<BQ / 8, HD, LDS>(st, Ks, warp * 16, Qs, lane);
            // P^T = exp(S scale - lse), zero where masked
#pragma unroll
            for (int nb = 0; nb < BQ / 8; nb++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qc = nb * 8 + 2 * t4 + (e & 1);
                    int qi = q0 + qc;
                    int key = e < 2 ? key_a : key_b;
                    float p = exp2f(st[nb][e] * scale_log2 - lse2_s[qc]);
                    st[nb][e] = (qi < key || first_s[qc] > key) ? 0.f : p;  // (rows past q_end: first_s = T)
                }
            }
            // dV += P^T dO
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) {
                uint32_t a[4];
                mst::acc_to_a(a, st[2 * kk], st[2 * kk + 1]);
                mst::warp_mma_kn<HD / 8, LDS>(dv_acc, a, dOs, kk * 16, lane);
            }
            // dP^T = V dO^T
            float dpt[BQ / 8][4];
            mst::zero_acc<BQ / 8>(dpt);
            mst::warp_gemm_nt<BQ / 8, HD, LDS>(dpt, Vs, warp * 16, dOs, lane);
            // dS^T = P^T (dP^T - D)
#pragma unroll
            for (int nb = 0; nb < BQ / 8; nb++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qc = nb * 8 + 2 * t4 + (e & 1);
                    dpt[nb][e] = st[nb][e] * (dpt[nb][e] - D_s[qc]);
                }
            }
            // dK += dS^T Q   (scaled at the end)
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) {
                uint32_t a[4];
                mst::acc_to_a(a, dpt[2 * kk], dpt[2 * kk + 1]);
                mst::warp_mma_kn<HD / 8, LDS>(dk_acc, a, Qs, kk * 16, lane);
            }
        }
        if (ASYNC) __syncthreads();  // everyone is done with this buffer before the tile after next lands there
    }
    int key_end = accumulate ? q_end : T;  // accumulating, keys from q_end on have nothing to add
    if (key_a < key_end) {
        size_t off = (((size_t)b * T + key_a) * KV + kvh) * HD + 2 * t4;
#pragma unroll
        for (int nb = 0; nb < HD / 8; nb++) {
            mst::store_grad_pair(dk + off + nb * 8, dk_acc[nb][0] * scale, dk_acc[nb][1] * scale, accumulate);
            mst::store_grad_pair(dv + off + nb * 8, dv_acc[nb][0], dv_acc[nb][1], accumulate);
        }
    }
    if (key_b < key_end) {
        size_t off = (((size_t)b * T + key_b) * KV + kvh) * HD + 2 * t4;
#pragma unroll
        for (int nb = 0; nb < HD / 8; nb++) {
            mst::store_grad_pair(dk + off + nb * 8, dk_acc[nb][2] * scale, dk_acc[nb][3] * scale, accumulate);
            mst::store_grad_pair(dv + off + nb * 8, dv_acc[nb][2], dv_acc[nb][3], accumulate);
        }
    }
}

// dQ for one block of 64 query rows of [q_begin, q_end) of one head, looping over key tiles of 32 at
// multiples of 32 from the tile containing the block's smallest document start (doc_start nullable), as
// the forward does. grid (ceil((q_end - q_begin) / 64), H, B).
// ASYNC (v2): K/V tiles double buffered with cp.async, after the Q/dO staging area.
template <int HD, bool ASYNC>
__global__ void __launch_bounds__(128) attention_backward_dq_kernel(bf16* dq, const bf16* q, const bf16* k, const bf16* v,
                                                                    const bf16* dout, const float* lse, const float* Dbuf,
                                                                    const int* doc_start, int q_begin, int q_end, int T,
                                                                    int H, int KV, float scale, float scale_log2) {
    constexpr int BR = 64, BC = 32, LDS = HD + 8;
    unsigned char* mst_smem = mst::dynamic_shared_memory();
    bf16* Qs = reinterpret_cast<bf16*>(mst_smem);  // staging for Q and dO (v1: then reused for K and V)
    bf16* dOs = Qs + BR * LDS;
    bf16* KVbuf = ASYNC ? dOs + BR * LDS : Qs;     // buffer i: K at KVbuf + 2i BC LDS, V after it
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    int qb = gridDim.x - 1 - blockIdx.x;
    int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    int q0 = q_begin + qb * BR;
    size_t q_stride = (size_t)H * HD, kv_stride = (size_t)KV * HD;
    size_t qoff = ((size_t)b * T + q0) * q_stride + (size_t)h * HD;
    int key_begin = mst::first_key(doc_start, b, T, q0) / BC * BC;
    const bf16* kbase = k + ((size_t)b * T + key_begin) * kv_stride + (size_t)kvh * HD;
    const bf16* vbase = v + ((size_t)b * T + key_begin) * kv_stride + (size_t)kvh * HD;
    mst::load_tile<BR, HD, LDS, 128>(Qs, q + qoff, q_stride, q_end - q0);
    mst::load_tile<BR, HD, LDS, 128>(dOs, dout + qoff, q_stride, q_end - q0);
    if (ASYNC) {  // the first K/V tile into buffer 0
        mst::load_tile_async<BC, HD, LDS, 128>(KVbuf, kbase, kv_stride, q_end - key_begin);
        mst::load_tile_async<BC, HD, LDS, 128>(KVbuf + BC * LDS, vbase, kv_stride, q_end - key_begin);
        mst::cp_async_commit();
    }
    __syncthreads();
    uint32_t qf[HD / 16][4], dof[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        mst::load_a<LDS>(qf[kk], Qs, warp * 16, kk * 16, lane);
        mst::load_a<LDS>(dof[kk], dOs, warp * 16, kk * 16, lane);
    }
    int row_w = q0 + warp * 16;
    int row_a = row_w + g, row_b = row_a + 8;
    const float* lse_h = lse + ((size_t)b * H + h) * T;
    const float* D_h = Dbuf + ((size_t)b * H + h) * T;
    float lse2_a = row_a < q_end ? lse_h[row_a] * MST_LOG2E : INFINITY;
    float lse2_b = row_b < q_end ? lse_h[row_b] * MST_LOG2E : INFINITY;
    float D_a = row_a < q_end ? D_h[row_a] : 0.f;
    float D_b = row_b < q_end ? D_h[row_b] : 0.f;
    int first_a = row_a < q_end ? mst::first_key(doc_start, b, T, row_a) : 0;
    int first_b = row_b < q_end ? mst::first_key(doc_start, b, T, row_b) : 0;
    int warp_first = row_w < q_end ? mst::first_key(doc_start, b, T, row_w) : 0;
    float dq_acc[HD / 8][4];
    mst::zero_acc<HD / 8>(dq_acc);
    int kend = min(q_end, q0 + BR);
    int ntiles = (kend - key_begin + BC - 1) / BC;
    for (int j = 0; j < ntiles; j++) {
        int k0 = key_begin + j * BC;
        int buf = ASYNC ? (j & 1) : 0;
        const bf16* Ks = KVbuf + buf * 2 * BC * LDS;
        const bf16* Vs = Ks + BC * LDS;
        if (ASYNC) {
            if (j + 1 < ntiles) {  // prefetch tile j+1 into the other buffer, then wait for tile j only
                size_t k1 = (size_t)(j + 1) * BC;
                bf16* next = KVbuf + (buf ^ 1) * 2 * BC * LDS;
                mst::load_tile_async<BC, HD, LDS, 128>(next, kbase + k1 * kv_stride, kv_stride, q_end - k0 - BC);
                mst::load_tile_async<BC, HD, LDS, 128>(next + BC * LDS, vbase + k1 * kv_stride, kv_stride, q_end - k0 - BC);
                mst::cp_async_commit();
                mst::cp_async_wait<1>();
            } else {
                mst::cp_async_wait<0>();
            }
            __syncthreads();  // tile j is visible to every thread
        } else {
            __syncthreads();  // staging / previous tile consumed
            mst::load_tile<BC, HD, LDS, 128>(KVbuf, kbase + (size_t)j * BC * kv_stride, kv_stride, q_end - k0);
            mst::load_tile<BC, HD, LDS, 128>(KVbuf + BC * LDS, vbase + (size_t)j * BC * kv_stride, kv_stride, q_end - k0);
            __syncthreads();
        }
        // else every key of this tile is after every row of this warp, or before all their documents
        if (k0 <= row_w + 15 && k0 + BC > warp_first) {
            float s[BC / 8][4], dp[BC / 8][4];
            mst::zero_acc<BC / 8>(s);
            mst::zero_acc<BC / 8>(dp);
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                mst::warp_mma_nk<BC / 8, LDS>(s, qf[kk], Ks, kk * 16, lane);    // S = Q K^T
                mst::warp_mma_nk<BC / 8, LDS>(dp, dof[kk], Vs, kk * 16, lane);  // dP = dO V^T
            }
            // dS = P (dP - D), P = exp(S scale - lse), zero where masked
#pragma unroll
            for (int nb = 0; nb < BC / 8; nb++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int col = k0 + nb * 8 + 2 * t4 + (e & 1);
                    int row = e < 2 ? row_a : row_b;
                    float p = exp2f(s[nb][e] * scale_log2 - (e < 2 ? lse2_a : lse2_b));
                    if (col > row || col < (e < 2 ? first_a : first_b) || row >= q_end) p = 0.f;
                    s[nb][e] = p * (dp[nb][e] - (e < 2 ? D_a : D_b));
                }
            }
            // dQ += dS K   (scaled at the end)
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t a[4];
                mst::acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
                mst::warp_mma_kn<HD / 8, LDS>(dq_acc, a, Ks, kk * 16, lane);
            }
        }
        if (ASYNC) __syncthreads();  // everyone is done with buffer j&1 before tile j+2 is loaded into it
    }
    if (row_a < q_end) {
        bf16* dst = dq + ((size_t)b * T + row_a) * q_stride + (size_t)h * HD + 2 * t4;
#pragma unroll
        for (int nb = 0; nb < HD / 8; nb++)
            *reinterpret_cast<uint32_t*>(dst + nb * 8) = mst::pack_bf16x2(dq_acc[nb][0] * scale, dq_acc[nb][1] * scale);
    }
    if (row_b < q_end) {
        bf16* dst = dq + ((size_t)b * T + row_b) * q_stride + (size_t)h * HD + 2 * t4;
#pragma unroll
        for (int nb = 0; nb < HD / 8; nb++)
            *reinterpret_cast<uint32_t*>(dst + nb * 8) = mst::pack_bf16x2(dq_acc[nb][2] * scale, dq_acc[nb][3] * scale);
    }
}

template <int HD> static inline size_t attention_forward_smem(bool async) { return (async ? 4 : 2) * 64 * (HD + 8) * sizeof(bf16); }
template <int HD> static inline size_t attention_dkdv_smem(bool async) {
    int nbuf = async ? 2 : 1;  // K, V; per buffer a Q and a dO tile, and per query row lse, D and its document start
    return (2 * 64 + nbuf * 2 * 32) * (HD + 8) * sizeof(bf16) + nbuf * 32 * (2 * sizeof(float) + sizeof(int));
}
template <int HD> static inline size_t attention_dq_smem(bool async) { return (async ? 4 : 2) * 64 * (HD + 8) * sizeof(bf16); }

static inline void attention_check_args(const char* who, int B, int T, int H, int KV, int hd, int q0, int n,
                                        const void* const* ptrs, int nptrs) {
    if (hd != 64 && hd != 128) { fprintf(stderr, "%s: head dim %d unsupported (64 or 128)\n", who, hd); exit(1); }
    if (KV <= 0 || H % KV != 0) { fprintf(stderr, "%s: H=%d not a multiple of KV=%d\n", who, H, KV); exit(1); }
    if (H > 65535 || B > 65535 || B <= 0 || T <= 0) { fprintf(stderr, "%s: bad shape B=%d T=%d H=%d\n", who, B, T, H); exit(1); }
    if (q0 < 0 || n <= 0 || q0 > T - n) {
        fprintf(stderr, "%s: query block q0=%d n=%d is not a non-empty part of [0, T=%d)\n", who, q0, n, T);
        exit(1);
    }
    for (int i = 0; i < nptrs; i++)
        if (!mst::aligned16(ptrs[i])) { fprintf(stderr, "%s: pointer %d is not 16-byte aligned\n", who, i); exit(1); }
}

template <int HD, bool ASYNC>
static inline void attention_forward_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int* doc_start,
                                        int q0, int n, int B, int T, int H, int KV, cudaStream_t stream) {
    float scale = 1.f / sqrtf((float)HD);
    size_t smem = attention_forward_smem<HD>(ASYNC);
    if (smem > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(attention_forward_kernel<HD, ASYNC>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(mst_ceil_div(n, 64), H, B);
    mst::launch<attention_forward_kernel<HD, ASYNC>>(grid, 128, smem, stream, out, lse, q, k, v, doc_start, q0, q0 + n, T, H,
                                                     KV, scale, scale * MST_LOG2E);
    CUDA_CHECK(cudaGetLastError());
}
// which forward kernel attention_forward runs: 1 (synchronous loads) or 2 (cp.async double buffering)
static inline int& attention_forward_version() { static int version = 2; return version; }

static inline void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T,
                                     int H, int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t stream) {
    profile_phase(PHASE_ATTENTION_FORWARD, stream);
    const void* ptrs[] = {out, q, k, v};
    attention_check_args("attention_forward", B, T, H, KV, hd, q0, n, ptrs, 4);
    bool async = attention_forward_version() == 2;
    if (hd == 64) {
        if (async) attention_forward_hd<64, true>(out, lse, q, k, v, doc_start, q0, n, B, T, H, KV, stream);
        else attention_forward_hd<64, false>(out, lse, q, k, v, doc_start, q0, n, B, T, H, KV, stream);
    } else {
        if (async) attention_forward_hd<128, true>(out, lse, q, k, v, doc_start, q0, n, B, T, H, KV, stream);
        else attention_forward_hd<128, false>(out, lse, q, k, v, doc_start, q0, n, B, T, H, KV, stream);
    }
}

static inline size_t attention_backward_scratch_bytes(int B, int T, int H, int hd) {
    (void)hd;
    return ((size_t)B * H * T * sizeof(float) + 255) / 256 * 256;
}

template <int HD, bool ASYNC, typename GradKV>
static inline void attention_backward_hd(bf16* dq, GradKV* dk, GradKV* dv, float* D, const bf16* dout, const bf16* q,
                                         const bf16* k, const bf16* v, const float* lse, const int* doc_start, int q0, int n,
                                         int B, int T, int H, int KV, cudaStream_t stream) {
    float scale = 1.f / sqrtf((float)HD);
    size_t smem_kv = attention_dkdv_smem<HD>(ASYNC), smem_q = attention_dq_smem<HD>(ASYNC);
    if (smem_kv > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_kernel<HD, ASYNC, GradKV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_kv));
    if (smem_q > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dq_kernel<HD, ASYNC>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q));
    // the first block (q0 == 0) writes every key's dk, dv (0 where no query sees it), later ones add to keys before q0 + n
    bool accumulate = q0 > 0;
    dim3 grid_kv(mst_ceil_div(accumulate ? q0 + n : T, 64), KV, B);
    mst::launch<attention_backward_dkdv_kernel<HD, ASYNC, GradKV>>(grid_kv, 128, smem_kv, stream, dk, dv, q, k, v, dout, lse, D,
                                                                   doc_start, q0, q0 + n, accumulate, T, H, KV, scale,
                                                                   scale * MST_LOG2E);
    CUDA_CHECK(cudaGetLastError());
    dim3 grid_q(mst_ceil_div(n, 64), H, B);
    mst::launch<attention_backward_dq_kernel<HD, ASYNC>>(grid_q, 128, smem_q, stream, dq, q, k, v, dout, lse, D, doc_start, q0,
                                                         q0 + n, T, H, KV, scale, scale * MST_LOG2E);
    CUDA_CHECK(cudaGetLastError());
}
// what every attention backward does first: the argument checks (query blocks after the first accumulate dk,
// dv: fp32 only) and the preprocess D = rowsum(dout * out) of the rows [q0, q0 + n) into scratch; returns D
template <typename GradKV>
static inline float* attention_backward_prologue(const char* who, bf16* dq, GradKV* dk, GradKV* dv, void* scratch, const bf16* dout,
                                                 const bf16* q, const bf16* k, const bf16* v, const bf16* out, int B, int T, int H,
                                                 int KV, int hd, int q0, int n, cudaStream_t stream) {
    profile_phase(PHASE_ATTENTION_BACKWARD, stream);
    const void* ptrs[] = {dq, dk, dv, dout, q, k, v, out};
    attention_check_args(who, B, T, H, KV, hd, q0, n, ptrs, 8);
    if (q0 > 0 && sizeof(GradKV) != sizeof(float)) {
        fprintf(stderr, "%s: query block q0=%d accumulates dk, dv: they must be fp32\n", who, q0);
        exit(1);
    }
    float* D = (float*)scratch;
    size_t rows = (size_t)B * n * H;
    mst::launch<attention_backward_preprocess_kernel>((unsigned)((rows + 3) / 4), 128, 0, stream, D, dout, out, B, T, H, hd, q0,
                                                      q0 + n);
    CUDA_CHECK(cudaGetLastError());
    return D;
}
// which backward kernels attention_backward runs: 1 (synchronous loads) or 2 (cp.async double buffering)
static inline int& attention_backward_version() { static int version = 2; return version; }
template <typename GradKV>  // bf16 or float
static inline void attention_backward(bf16* dq, GradKV* dk, GradKV* dv, void* scratch, const bf16* dout, const bf16* q,
                                      const bf16* k, const bf16* v, const bf16* out, const float* lse, int B, int T, int H,
                                      int KV, int hd, const int* doc_start, int q0, int n, cudaStream_t stream) {
    float* D = attention_backward_prologue("attention_backward", dq, dk, dv, scratch, dout, q, k, v, out, B, T, H, KV, hd, q0, n, stream);
    bool async = attention_backward_version() == 2;
    if (hd == 64) {
        if (async) attention_backward_hd<64, true>(dq, dk, dv, D, dout, q, k, v, lse, doc_start, q0, n, B, T, H, KV, stream);
        else attention_backward_hd<64, false>(dq, dk, dv, D, dout, q, k, v, lse, doc_start, q0, n, B, T, H, KV, stream);
    } else {
        if (async) attention_backward_hd<128, true>(dq, dk, dv, D, dout, q, k, v, lse, doc_start, q0, n, B, T, H, KV, stream);
        else attention_backward_hd<128, false>(dq, dk, dv, D, dout, q, k, v, lse, doc_start, q0, n, B, T, H, KV, stream);
    }
}

// the sm_90a forward and backward (TMA, wgmma, warp specialization): attention_forward_sm90,
// attention_backward_sm90, same layouts
#include "mst/attention_sm90.cuh"
