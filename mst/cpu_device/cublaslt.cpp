// mst/cpu_device/cublaslt.cpp: the cuBLASLt subset the trainer calls (mst_kernels.cuh's matmul_lt), computed
// on the CPU. The declarations and types are the real cublasLt.h's; nothing of libcublasLt is linked.
//
// What is supported, and everything else is refused with one mst_cpu::fatal line naming it:
//   D(m x n, ldd) = alpha op(A) op(B) + beta C, column-major, with op = N or T on A and B,
//   A and B CUDA_R_16BF, C and D both CUDA_R_16BF or both CUDA_R_32F (same layout), compute type
//   CUBLAS_COMPUTE_32F, scale type CUDA_R_32F, alpha and beta host pointers (the default pointer mode,
//   read when cublasLtMatmul is called), no epilogue, batch count 1 (no layout attribute can be set).
//   C may be D (the trainer's use) or a separate matrix that does not overlap D.
//
// Numerics: every output element is one fp32 fused multiply-add chain over p = 0, 1, ..., k-1 in order,
// starting from 0 (products of two bf16 values are exact in fp32), whatever the blocking, the thread count
// or the instruction set (AVX-512 and AVX2 give bitwise the same results; the portable fallback has no FMA
// instruction on baseline x86-64 and rounds each product's sum separately). Then, in fp32,
// D = alpha * acc (+ beta * C_old when beta != 0), rounded once to bf16 for a bf16 D (round to nearest even,
// NaN -> 0x7fff, as __float2bfloat16). As in BLAS: beta == 0 reads no C (a NaN there does not propagate),
// alpha == 0 or k == 0 reads no A or B.
//
// Speed: a BLIS-style blocked GEMM. Blocks of op(A) (MC x KC) and op(B) (KC x NB) are converted to fp32
// into packed buffers (transposing where the matrix runs along k), and a register-blocked micro-kernel
// computes MR x NR tiles of D from them: AVX-512 32 x 12 (with AVX-512 packing and epilogue), AVX2 16 x 6,
// portable 8 x 4, chosen at run time (MST_CPU_GEMM_ISA=avx512|avx2|generic forces one this CPU has).
// D is cut into items (MB x NB blocks) that the CPU device's workers take in turn, so a thread slowed by other
// work on the machine takes fewer. When k > KC_MAX the partial sums of an item wait in an fp32 scratch
// between the k blocks, which keeps the per-element FMA chain unbroken. About 190 GFLOP/s per core of an
// AMD EPYC (Zen 5) for the trainer's shapes; the AVX-512 path does not depend on -O3, the others gain from
// it (tests/test_cpu_gemm.cpp --bench measures).
#include <cublasLt.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>


#include "mst/cpu_device/runtime.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12 warns of the intrinsics' own _mm512_undefined_*() ("may be used uninitialized") once they are
// inlined into a target("avx512f") function; the warning's location is in the header, hence the pragma here
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#define MST_GEMM_X86 1
#else
#define MST_GEMM_X86 0
#endif

// ----------------------------------------------------------------------------------------------------------
// descriptors: our own structs, constructed inside the opaque storage cublasLt.h declares (the handle's
// struct is ours to define)

struct cublasLtContext {
    uint64_t magic;
    int isa;  // Isa below
};

namespace {

const uint64_t MAGIC_HANDLE = 0x6d73742d68616e64ull;  // "mst-hand"
const uint64_t MAGIC_DESC = 0x6d73742d64657363ull;    // "mst-desc"
const uint64_t MAGIC_LAYOUT = 0x6d73742d6c61796full;  // "mst-layo"
const uint64_t MAGIC_PREF = 0x6d73742d70726566ull;    // "mst-pref"
const uint64_t MAGIC_ALGO = 0x6d73742d616c676full;    // "mst-algo"
const uint64_t MAGIC_DEAD = 0x6d73742d64656164ull;    // "mst-dead": destroyed

struct Desc {
    uint64_t magic;
    int compute_type, scale_type;
    int transa, transb;  // 0 = N, 1 = T
};
struct Layout {
    uint64_t magic;
    int type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Pref {
    uint64_t magic;
    uint64_t max_workspace;
};
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "Desc fits the opaque descriptor");
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "Layout fits the opaque descriptor");
static_assert(sizeof(Pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "Pref fits the opaque descriptor");

template <class T, class Opaque>
T* inside(Opaque* o) { return reinterpret_cast<T*>(o->data); }

template <class T, class Opaque>
T* live(Opaque* o, uint64_t magic, const char* fn, const char* what) {
    if (!o) mst_cpu::fatal("%s: %s is NULL", fn, what);
    T* t = inside<T>(o);
    if (t->magic != magic)
        mst_cpu::fatal("%s: %s is not a live descriptor (%s)", fn, what,
                       t->magic == MAGIC_DEAD ? "destroyed" : "never created by its Create function");
    return t;
}

static cublasLtContext* live_handle(cublasLtHandle_t h, const char* fn) {
    if (!h) mst_cpu::fatal("%s: the handle is NULL", fn);
    if (h->magic != MAGIC_HANDLE)
        mst_cpu::fatal("%s: the handle is not live (%s)", fn,
                       h->magic == MAGIC_DEAD ? "destroyed" : "not made by cublasLtCreate");
    return h;
}

const char* type_name(int t) {
    switch (t) {
        case CUDA_R_16BF: return "CUDA_R_16BF";
        case CUDA_R_32F: return "CUDA_R_32F";
        case CUDA_R_16F: return "CUDA_R_16F";
        case CUDA_R_64F: return "CUDA_R_64F";
        case CUDA_R_8I: return "CUDA_R_8I";
        case CUDA_R_32I: return "CUDA_R_32I";
        default: return "a data type";
    }
}

const char* desc_attr_name(int a) {
    switch (a) {
        case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return "CUBLASLT_MATMUL_DESC_COMPUTE_TYPE";
        case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return "CUBLASLT_MATMUL_DESC_SCALE_TYPE";
        case CUBLASLT_MATMUL_DESC_POINTER_MODE: return "CUBLASLT_MATMUL_DESC_POINTER_MODE";
        case CUBLASLT_MATMUL_DESC_TRANSC: return "CUBLASLT_MATMUL_DESC_TRANSC";
        case CUBLASLT_MATMUL_DESC_FILL_MODE: return "CUBLASLT_MATMUL_DESC_FILL_MODE";
        case CUBLASLT_MATMUL_DESC_EPILOGUE: return "CUBLASLT_MATMUL_DESC_EPILOGUE";
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return "CUBLASLT_MATMUL_DESC_BIAS_POINTER";
        case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return "CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER";
        case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return "CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD";
        case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: return "CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET";
        case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: return "CUBLASLT_MATMUL_DESC_A_SCALE_POINTER";
        case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: return "CUBLASLT_MATMUL_DESC_B_SCALE_POINTER";
        case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER: return "CUBLASLT_MATMUL_DESC_D_SCALE_POINTER";
        case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return "CUBLASLT_MATMUL_DESC_FAST_ACCUM";
        case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return "CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE";
        default: return "an attribute";
    }
}

const char* pref_attr_name(int a) {
    switch (a) {
        case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return "CUBLASLT_MATMUL_PREF_SEARCH_MODE";
        case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return "CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK";
        case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: return "CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT";
        case CUBLASLT_MATMUL_PREF_IMPL_MASK: return "CUBLASLT_MATMUL_PREF_IMPL_MASK";
        default: return "an attribute";
    }
}

// ----------------------------------------------------------------------------------------------------------
// the instruction set: the best this CPU has, or MST_CPU_GEMM_ISA's choice

enum Isa { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
const char* const ISA_NAMES[] = {"generic", "avx2", "avx512"};

int best_isa() {
#if MST_GEMM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
#endif
    return ISA_GENERIC;
}

int choose_isa() {
    int best = best_isa();
    const char* e = getenv("MST_CPU_GEMM_ISA");
    if (!e || !*e) return best;
    for (int i = 0; i <= ISA_AVX512; i++) {
        if (strcmp(e, ISA_NAMES[i]) != 0) continue;
        if (i > best) mst_cpu::fatal("MST_CPU_GEMM_ISA=%s: this CPU lacks it (the best it has is %s)", e, ISA_NAMES[best]);
        return i;
    }
    mst_cpu::fatal("MST_CPU_GEMM_ISA=%s: not one of generic, avx2, avx512", e);
}

// bf16 <-> fp32: runtime.h's
using mst_cpu::bf16_to_float;
using mst_cpu::float_to_bf16;

// ----------------------------------------------------------------------------------------------------------
// the matmul, as captured when cublasLtMatmul is called

struct Gemm {
    int transa, transb;
    int64_t m, n, k;
    const uint16_t* A;
    int64_t lda;
    const uint16_t* B;
    int64_t ldb;
    const void* C;  // NULL when beta == 0 (not read)
    int64_t ldc;
    void* D;
    int64_t ldd;
    bool d_fp32;
    float alpha, beta;
    int isa;
};

inline int64_t round_up(int64_t x, int64_t u) { return (x + u - 1) / u * u; }
inline int64_t ceil_div(int64_t x, int64_t u) { return (x + u - 1) / u; }

// ----------------------------------------------------------------------------------------------------------
// the pieces each instruction set provides:
//   kernel:  c(MR x NR, column-major, ld ldc) = (load ? c : 0) + a-panel * b-panel over kc steps, with
//            a-panel[p * MR + i] and b-panel[p * NR + j]; one FMA per product, p in order
//   packing: dst[p * W + x] = src(x, p) as fp32 for x < count (0 for count <= x < W), p < kc, where src(x, p)
//            is src[x + p * stride] (pack_contiguous) or src[x * stride + p] (pack_transposed); nothing
//            outside those elements is read
//   epilogue: D[i0.., j0..] (mr x nr) = alpha * acc + beta * C from acc (column-major, ld ldt), in fp32

typedef void (*KernelFn)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int load);
typedef void (*PackFn)(float* dst, const uint16_t* src, int64_t stride, int64_t kc, int count, int W);
typedef void (*EpilogueFn)(const Gemm& g, const float* acc, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr);

struct Ops {
    KernelFn kernel;
    int mr, nr;
    PackFn pack_contiguous, pack_transposed;
    EpilogueFn epilogue;
};

// ---- portable (any CPU; vectorized as the compiler flags allow)

template <int MR, int NR>
void kernel_generic(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                    int64_t ldc, int load) {
    float acc[NR][MR];
    for (int j = 0; j < NR; j++)
        for (int i = 0; i < MR; i++) acc[j][i] = load ? c[j * ldc + i] : 0.f;
    for (int64_t p = 0; p < kc; p++) {
        for (int j = 0; j < NR; j++) {
            float bj = b[j];
            for (int i = 0; i < MR; i++) acc[j][i] += a[i] * bj;
        }
        a += MR;
        b += NR;
    }
    for (int j = 0; j < NR; j++)
        for (int i = 0; i < MR; i++) c[j * ldc + i] = acc[j][i];
}

void pack_contiguous_generic(float* __restrict dst, const uint16_t* __restrict src, int64_t stride, int64_t kc,
                             int count, int W) {
    for (int64_t p = 0; p < kc; p++) {
        const uint16_t* s = src + p * stride;
        float* d = dst + p * W;
        int x = 0;
        for (; x < count; x++) d[x] = bf16_to_float(s[x]);
        for (; x < W; x++) d[x] = 0.f;
    }
}

void pack_transposed_generic(float* __restrict dst, const uint16_t* __restrict src, int64_t stride, int64_t kc,
                             int count, int W) {
    const int64_t PB = 64;  // a block of p: the W x PB destination block stays in L1
    for (int64_t p0 = 0; p0 < kc; p0 += PB) {
        int64_t pe = std::min(kc, p0 + PB);
        for (int x = 0; x < count; x++) {
            const uint16_t* s = src + x * stride;
            for (int64_t p = p0; p < pe; p++) dst[p * W + x] = bf16_to_float(s[p]);
        }
        for (int x = count; x < W; x++)
            for (int64_t p = p0; p < pe; p++) dst[p * W + x] = 0.f;
    }
}

void epilogue_generic(const Gemm& g, const float* acc, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr) {
    const float alpha = g.alpha, beta = g.beta;
    for (int j = 0; j < nr; j++) {
        const float* t = acc + j * ldt;
        const int64_t dj = i0 + (j0 + j) * g.ldd, cj = i0 + (j0 + j) * g.ldc;
        if (g.d_fp32) {
            float* d = (float*)g.D + dj;
            if (beta == 0.f) {
                for (int i = 0; i < mr; i++) d[i] = alpha * t[i];
            } else {
                const float* c = (const float*)g.C + cj;  // may be d itself: element i is read before it is written
                for (int i = 0; i < mr; i++) d[i] = alpha * t[i] + beta * c[i];
            }
        } else {
            uint16_t* d = (uint16_t*)g.D + dj;
            if (beta == 0.f) {
                for (int i = 0; i < mr; i++) d[i] = float_to_bf16(alpha * t[i]);
            } else {
                const uint16_t* c = (const uint16_t*)g.C + cj;
                for (int i = 0; i < mr; i++) d[i] = float_to_bf16(alpha * t[i] + beta * bf16_to_float(c[i]));
            }
        }
    }
}

#if MST_GEMM_X86
// ---- AVX2 + FMA: the kernel (packing and epilogue are the portable ones)

template <int MV, int NR>
__attribute__((target("avx2,fma"))) void kernel_avx2(int64_t kc, const float* __restrict a, const float* __restrict b,
                                                     float* __restrict c, int64_t ldc, int load) {
    __m256 acc[NR][MV];
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++)
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) acc[j][v] = load ? _mm256_loadu_ps(c + j * ldc + 8 * v) : _mm256_setzero_ps();
    for (int64_t p = 0; p < kc; p++) {
        __m256 av[MV];
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) av[v] = _mm256_load_ps(a + 8 * v);
#pragma GCC unroll 16
        for (int j = 0; j < NR; j++) {
            __m256 bj = _mm256_broadcast_ss(b + j);
#pragma GCC unroll 4
            for (int v = 0; v < MV; v++) acc[j][v] = _mm256_fmadd_ps(av[v], bj, acc[j][v]);
        }
        a += 8 * MV;
        b += NR;
    }
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++)
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) _mm256_storeu_ps(c + j * ldc + 8 * v, acc[j][v]);
}

// ---- AVX-512 (F, BW, VL): kernel, packing, epilogue

#define MST_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))

template <int MV, int NR>
MST_AVX512 void kernel_avx512(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                              int64_t ldc, int load) {
    __m512 acc[NR][MV];
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++)
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) acc[j][v] = load ? _mm512_loadu_ps(c + j * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; p++) {
        __m512 av[MV];
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) av[v] = _mm512_load_ps(a + 16 * v);
#pragma GCC unroll 16
        for (int j = 0; j < NR; j++) {
            __m512 bj = _mm512_set1_ps(b[j]);
#pragma GCC unroll 4
            for (int v = 0; v < MV; v++) acc[j][v] = _mm512_fmadd_ps(av[v], bj, acc[j][v]);
        }
        a += 16 * MV;
        b += NR;
    }
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++)
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) _mm512_storeu_ps(c + j * ldc + 16 * v, acc[j][v]);
}

MST_AVX512 inline __mmask16 lanes(int n) {  // the first n (0..16) lanes
    return (__mmask16)(n >= 16 ? 0xffffu : (1u << (n < 0 ? 0 : n)) - 1u);
}
MST_AVX512 inline __m512 load_bf16x16(__mmask16 m, const uint16_t* p) {  // masked-off lanes read nothing, give 0
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

MST_AVX512 void pack_contiguous_avx512(float* __restrict dst, const uint16_t* __restrict src, int64_t stride,
                                       int64_t kc, int count, int W) {
    for (int64_t p = 0; p < kc; p++) {
        const uint16_t* s = src + p * stride;
        float* d = dst + p * W;
        for (int x0 = 0; x0 < W; x0 += 16)
            _mm512_mask_storeu_ps(d + x0, lanes(W - x0), load_bf16x16(lanes(count - x0), s + x0));
    }
}

// r[i] = row i (16 floats) -> r[j] = column j
MST_AVX512 inline void transpose16x16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], 128-bit lane L: column 4L + c of rows 4g..4g+3
    for (int g = 0; g < 4; g++) {
        u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    for (int c = 0; c < 4; c++) {
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v2 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), w2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(v2, w2, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v2, w2, 0xdd);
    }
}

// 16 x 16 blocks: 16 rows of 16 p each, converted, transposed in registers, stored as 16 rows of 16 x
MST_AVX512 void pack_transposed_avx512(float* __restrict dst, const uint16_t* __restrict src, int64_t stride,
                                       int64_t kc, int count, int W) {
    for (int x0 = 0; x0 < W; x0 += 16) {
        const int xc = std::max(0, std::min(16, count - x0));
        const __mmask16 store = lanes(W - x0);
        for (int64_t p0 = 0; p0 < kc; p0 += 16) {
            const int pn = (int)std::min<int64_t>(16, kc - p0);
            const __mmask16 load = lanes(pn);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < xc ? load_bf16x16(load, src + (x0 + i) * stride + p0) : _mm512_setzero_ps();
            transpose16x16(r);
#pragma GCC unroll 16
            for (int q = 0; q < 16; q++)
                if (q < pn) _mm512_mask_storeu_ps(dst + (p0 + q) * W + x0, store, r[q]);
        }
    }
}

MST_AVX512 void epilogue_avx512(const Gemm& g, const float* acc, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr) {
    const __m512 alpha = _mm512_set1_ps(g.alpha), beta = _mm512_set1_ps(g.beta);
    const bool use_c = g.beta != 0.f;
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    for (int j = 0; j < nr; j++) {
        const float* t = acc + j * ldt;
        const int64_t dj = i0 + (j0 + j) * g.ldd, cj = i0 + (j0 + j) * g.ldc;
        for (int i = 0; i < mr; i += 16) {
            const __mmask16 m = lanes(mr - i);
            __m512 v = _mm512_mul_ps(alpha, _mm512_maskz_loadu_ps(m, t + i));
            if (g.d_fp32) {
                if (use_c) v = _mm512_add_ps(v, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(m, (const float*)g.C + cj + i)));
                _mm512_mask_storeu_ps((float*)g.D + dj + i, m, v);
            } else {
                if (use_c) v = _mm512_add_ps(v, _mm512_mul_ps(beta, load_bf16x16(m, (const uint16_t*)g.C + cj + i)));
                // round to nearest even as float_to_bf16, NaN -> 0x7fff
                __m512i u = _mm512_castps_si512(v);
                __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
                r = _mm512_srli_epi32(r, 16);
                r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), bias);
                _mm256_mask_storeu_epi16((uint16_t*)g.D + dj + i, m, _mm512_cvtepi32_epi16(r));
            }
        }
    }
}
#undef MST_AVX512
#endif  // MST_GEMM_X86

const Ops& ops_for(int isa) {
    static const Ops generic = {kernel_generic<8, 4>, 8, 4, pack_contiguous_generic, pack_transposed_generic,
                                epilogue_generic};
#if MST_GEMM_X86
    static const Ops avx2 = {kernel_avx2<2, 6>, 16, 6, pack_contiguous_generic, pack_transposed_generic,
                             epilogue_generic};
    static const Ops avx512 = {kernel_avx512<2, 12>, 32, 12, pack_contiguous_avx512, pack_transposed_avx512,
                               epilogue_avx512};
    if (isa == ISA_AVX512) return avx512;
    if (isa == ISA_AVX2) return avx2;
#endif
    (void)isa;
    return generic;
}

// ----------------------------------------------------------------------------------------------------------
// the blocked matmul

// blocking (in elements): a k block is at most KC_MAX long; MC rows of op(A) are packed at a time (L2);
// D is cut into items of at most NC_MAX columns that threads take in turn, each with its op(B) block
// packed once (L3); when k > KC_MAX an item's partial sums (at most SCRATCH_MAX floats) wait in a scratch
const int64_t KC_MAX = 512;
const int64_t MC_TARGET = 192;
const int64_t NC_MAX = 2048;
const int64_t ITEM_MIN = 256;                  // rows and columns of an item, at least (unless D is smaller)
const int64_t SCRATCH_MAX = (int64_t)1 << 20;  // floats: 4 MiB per thread

// a thread's buffers, kept between calls (64-byte aligned, grown when too small)
struct Buffer {
    float* p = nullptr;
    size_t cap = 0;
    float* get(size_t n) {
        if (n > cap) {
            free(p);
            size_t bytes = (size_t)round_up((int64_t)(n * sizeof(float)), 64);
            p = (float*)aligned_alloc(64, bytes);
            if (!p) mst_cpu::fatal("cublasLtMatmul: out of host memory (%zu bytes of packing buffers)", bytes);
            cap = n;
        }
        return p;
    }
    ~Buffer() { free(p); }
};
struct ThreadBuffers {
    Buffer a, b, scratch;
    uint64_t b_call = 0;  // the matmul (gemm_run's call number) and the column block whose op(B) block
    int64_t b_n0 = -1;    // b holds, when k is one block; b_call 0: none
};
thread_local ThreadBuffers tls_buffers;
std::atomic<uint64_t> gemm_calls(0);

// ---- threads: the kernel engine's workers (mst_cpu::parallel_for), so the matmul shares the cores with
// kernels and no second thread pool spins beside them; items are taken in turn, one at a time

// body(begin, end) over [0, count), in ranges of one item
void parallel_items(int64_t count, bool parallel, const std::function<void(int64_t, int64_t)>& body) {
    if (!parallel || count <= 1) { body(0, count); return; }
    mst_cpu::parallel_for(count, 1, body);
}

struct Plan {
    int64_t nk, KC, MC;       // k blocks and their length; rows of op(A) per packed block
    int64_t MB, NB;           // an item: MB rows x NB columns of D
    int64_t row_items, items;
};

// op(A) rows [i0, i0 + mc) x columns [p0, p0 + kc) into MR-row panels
void pack_a(const Gemm& g, const Ops& K, float* dst, int64_t i0, int64_t mc, int64_t p0, int64_t kc) {
    for (int64_t ir = 0; ir < mc; ir += K.mr) {
        int count = (int)std::min<int64_t>(K.mr, mc - ir);
        float* d = dst + ir * kc;
        if (g.transa) K.pack_transposed(d, g.A + (i0 + ir) * g.lda + p0, g.lda, kc, count, K.mr);
        else K.pack_contiguous(d, g.A + (i0 + ir) + p0 * g.lda, g.lda, kc, count, K.mr);
    }
}
// op(B) rows [p0, p0 + kc) x columns [j0, j0 + nc) into NR-column panels
void pack_b(const Gemm& g, const Ops& K, float* dst, int64_t p0, int64_t kc, int64_t j0, int64_t nc) {
    for (int64_t jr = 0; jr < nc; jr += K.nr) {
        int count = (int)std::min<int64_t>(K.nr, nc - jr);
        float* d = dst + jr * kc;
        if (g.transb) K.pack_contiguous(d, g.B + (j0 + jr) + p0 * g.ldb, g.ldb, kc, count, K.nr);
        else K.pack_transposed(d, g.B + (j0 + jr) * g.ldb + p0, g.ldb, kc, count, K.nr);
    }
}

// asks for the cache lines of D's (and C's) tile before the kernel computes it, for the epilogue: the tile's
// nr columns are far apart in a tall D, where the hardware prefetchers do not see streams
inline void prefetch_tile(const Gemm& g, int64_t i0, int64_t j0, int mr, int nr) {
    const int64_t es = g.d_fp32 ? 4 : 2, bytes = mr * es;
    for (int j = 0; j < nr; j++) {
        const char* d = (const char*)g.D + (i0 + (j0 + j) * g.ldd) * es;
        for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(d + o, 1);
        if (g.C && g.C != g.D) {
            const char* c = (const char*)g.C + (i0 + (j0 + j) * g.ldc) * es;
            for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0);
        }
    }
}

// one item: rows [m0, m1) x columns [n0, n1) of D, on this thread's buffers. When k is one block, a
// thread's consecutive items in the same column block share the packed op(B) block.
void gemm_item(const Gemm& g, const Ops& K, const Plan& P, uint64_t call, int64_t m0, int64_t m1, int64_t n0,
               int64_t n1) {
    const int MR = K.mr, NR = K.nr;
    const int64_t nc = n1 - n0, lds = round_up(m1 - m0, MR);
    ThreadBuffers& tb = tls_buffers;
    float* apack = tb.a.get((size_t)(P.MC * P.KC));
    float* bpack = tb.b.get((size_t)(P.NB * P.KC));
    float* scratch = P.nk > 1 ? tb.scratch.get((size_t)(P.MB * P.NB)) : nullptr;
    // (the buffer only grows on a call's first item on this thread, when b_call is not yet this call's)
    alignas(64) float tile[32 * 16];  // MR x NR
    for (int64_t kb = 0; kb < P.nk; kb++) {
        const int64_t p0 = kb * P.KC, kc = std::min(P.KC, g.k - p0);
        if (P.nk > 1 || tb.b_call != call || tb.b_n0 != n0) {
            tb.b_call = 0;
            pack_b(g, K, bpack, p0, kc, n0, nc);
            if (P.nk == 1) { tb.b_call = call; tb.b_n0 = n0; }
        }
        for (int64_t ic = m0; ic < m1; ic += P.MC) {
            const int64_t mc = std::min(P.MC, m1 - ic);
            pack_a(g, K, apack, ic, mc, p0, kc);
            for (int64_t jr = 0; jr < nc; jr += NR) {
                const int nr = (int)std::min<int64_t>(NR, nc - jr);
                const float* bp = bpack + jr * kc;
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    const int mr = (int)std::min<int64_t>(MR, mc - ir);
                    const float* ap = apack + ir * kc;
                    if (kb == P.nk - 1) prefetch_tile(g, ic + ir, n0 + jr, mr, nr);
                    if (P.nk == 1) {
                        K.kernel(kc, ap, bp, tile, MR, 0);
                        K.epilogue(g, tile, MR, ic + ir, n0 + jr, mr, nr);
                    } else {
                        float* s = scratch + (ic - m0 + ir) + jr * lds;
                        K.kernel(kc, ap, bp, s, lds, kb > 0);
                        if (kb == P.nk - 1) K.epilogue(g, s, lds, ic + ir, n0 + jr, mr, nr);
                    }
                }
            }
        }
    }
}

// D = beta * C alone (k == 0 or alpha == 0): an accumulator of zeros through the epilogue
void scale_only(const Gemm& g) {
    static const float zeros[1024] = {};
    for (int64_t j = 0; j < g.n; j++)
        for (int64_t i = 0; i < g.m; i += 1024)
            epilogue_generic(g, zeros, 0, i, j, (int)std::min<int64_t>(1024, g.m - i), 1);
}

void gemm_run(const Gemm& g) {
    if (g.m == 0 || g.n == 0) return;
    if (g.k == 0 || g.alpha == 0.f) { scale_only(g); return; }
    const Ops& K = ops_for(g.isa);
    Plan P;
    P.nk = ceil_div(g.k, KC_MAX);
    P.KC = ceil_div(g.k, P.nk);  // nk blocks of nearly equal length
    P.MC = round_up(MC_TARGET, K.mr);
    // one thread below ~2M FMAs (about 10 us of one core): a parallel region would cost more than it saves
    const bool parallel = (double)g.m * (double)g.n * (double)g.k >= 2e6;
    // items: start from all of D (columns capped at NC_MAX), halve the longer side (rows or columns) until
    // there are 4 per worker and the scratch fits, or the sides reach ITEM_MIN
    P.MB = round_up(g.m, K.mr);
    P.NB = std::min(round_up(g.n, K.nr), round_up(NC_MAX, K.nr));
    const int64_t mb_min = round_up(ITEM_MIN, K.mr), nb_min = round_up(ITEM_MIN, K.nr);
    while (ceil_div(g.m, P.MB) * ceil_div(g.n, P.NB) < 4 * mst_cpu::worker_count() || (P.nk > 1 && P.MB * P.NB > SCRATCH_MAX)) {
        const bool rows = P.MB > mb_min, cols = P.NB > nb_min;
        if (!rows && !cols) break;
        if (rows && (!cols || P.MB >= P.NB)) P.MB = round_up(ceil_div(P.MB, 2), K.mr);
        else P.NB = round_up(ceil_div(P.NB, 2), K.nr);
    }
    P.row_items = ceil_div(g.m, P.MB);
    P.items = P.row_items * ceil_div(g.n, P.NB);
    const uint64_t call = ++gemm_calls;
    parallel_items(P.items, parallel, [&](int64_t begin, int64_t end) {
        // items in column-block order, so a thread's next item usually shares its op(B) block
        for (int64_t it = begin; it < end; it++) {
            const int64_t rb = it % P.row_items, cb = it / P.row_items;
            const int64_t m0 = rb * P.MB, n0 = cb * P.NB;
            gemm_item(g, K, P, call, m0, std::min(g.m, m0 + P.MB), n0, std::min(g.n, n0 + P.NB));
        }
    });
}

// ----------------------------------------------------------------------------------------------------------
// argument checks

uint64_t extent_bytes(const Layout* l) {  // bytes spanned by a column-major rows x cols matrix, ld ld
    if (l->rows == 0 || l->cols == 0) return 0;
    unsigned __int128 e = (unsigned __int128)(l->cols - 1) * (uint64_t)l->ld + l->rows;
    e *= (l->type == CUDA_R_32F ? 4 : 2);
    if (e > ((unsigned __int128)1 << 62)) return UINT64_MAX;
    return (uint64_t)e;
}

struct Problem {
    int64_t m, n, k;
};

// the checks shared by cublasLtMatmulAlgoGetHeuristic and cublasLtMatmul
Problem check_problem(const char* fn, const Desc* d, const Layout* a, const Layout* b, const Layout* c,
                      const Layout* dd) {
    if (d->compute_type != CUBLAS_COMPUTE_32F)
        mst_cpu::fatal("%s: compute type %d is not supported (only CUBLAS_COMPUTE_32F)", fn, d->compute_type);
    if (d->scale_type != CUDA_R_32F)
        mst_cpu::fatal("%s: scale type %s (%d) is not supported (only CUDA_R_32F)", fn, type_name(d->scale_type),
                       d->scale_type);
    if (a->type != CUDA_R_16BF) mst_cpu::fatal("%s: A is %s; only CUDA_R_16BF is supported", fn, type_name(a->type));
    if (b->type != CUDA_R_16BF) mst_cpu::fatal("%s: B is %s; only CUDA_R_16BF is supported", fn, type_name(b->type));
    if (dd->type != CUDA_R_16BF && dd->type != CUDA_R_32F)
        mst_cpu::fatal("%s: D is %s; only CUDA_R_16BF or CUDA_R_32F is supported", fn, type_name(dd->type));
    if (c->type != dd->type)
        mst_cpu::fatal("%s: C is %s and D is %s; they must be the same type", fn, type_name(c->type),
                       type_name(dd->type));
    const Layout* ls[4] = {a, b, c, dd};
    const char* names[4] = {"A", "B", "C", "D"};
    for (int i = 0; i < 4; i++) {
        const Layout* l = ls[i];
        if (l->rows > (uint64_t)INT32_MAX || l->cols > (uint64_t)INT32_MAX)
            mst_cpu::fatal("%s: %s is %llu x %llu; each dimension must fit in 31 bits", fn, names[i],
                           (unsigned long long)l->rows, (unsigned long long)l->cols);
        if (l->ld < (int64_t)std::max<uint64_t>(1, l->rows))
            mst_cpu::fatal("%s: %s's leading dimension %lld is less than its %llu rows", fn, names[i],
                           (long long)l->ld, (unsigned long long)l->rows);
    }
    Problem p;
    p.m = (int64_t)dd->rows;
    p.n = (int64_t)dd->cols;
    int64_t am = d->transa ? a->cols : a->rows, ak = d->transa ? a->rows : a->cols;
    int64_t bk = d->transb ? b->cols : b->rows, bn = d->transb ? b->rows : b->cols;
    p.k = ak;
    if (am != p.m || bn != p.n || bk != p.k)
        mst_cpu::fatal("%s: shapes do not match: op(A) is %lld x %lld (transa=%c), op(B) is %lld x %lld (transb=%c), "
                       "D is %lld x %lld", fn, (long long)am, (long long)ak, d->transa ? 'T' : 'N', (long long)bk,
                       (long long)bn, d->transb ? 'T' : 'N', (long long)p.m, (long long)p.n);
    if (c->rows != dd->rows || c->cols != dd->cols || c->ld != dd->ld)
        mst_cpu::fatal("%s: C (%llu x %llu, ld %lld) and D (%llu x %llu, ld %lld) must have the same layout", fn,
                       (unsigned long long)c->rows, (unsigned long long)c->cols, (long long)c->ld,
                       (unsigned long long)dd->rows, (unsigned long long)dd->cols, (long long)dd->ld);
    return p;
}

void check_device(const char* fn, const char* what, const void* p, uint64_t bytes, int element_bytes) {
    if (bytes == 0) return;
    if (!p) mst_cpu::fatal("%s: %s is NULL", fn, what);
    if ((uintptr_t)p % element_bytes)
        mst_cpu::fatal("%s: %s (%p) is not aligned to its %d-byte elements", fn, what, p, element_bytes);
    if (bytes == UINT64_MAX || !mst_cpu::is_device_memory(p, bytes))
        mst_cpu::fatal("%s: %s (%p, %llu bytes) is not inside one device allocation", fn, what, p,
                       (unsigned long long)bytes);
}

bool overlap(const void* p, uint64_t pb, const void* q, uint64_t qb) {
    if (pb == 0 || qb == 0) return false;
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)q;
    return a < b + qb && b < a + pb;
}

const char* status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "<unrecognized cuBLAS status>";
    }
}
const char* status_string(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
        case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
        case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
        default: return "unknown error";
    }
}

}  // namespace

// ----------------------------------------------------------------------------------------------------------
// the API

extern "C" {

const char* CUBLASWINAPI cublasLtGetStatusName(cublasStatus_t status) { return status_name(status); }
const char* CUBLASWINAPI cublasLtGetStatusString(cublasStatus_t status) { return status_string(status); }
const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) { return status_name(status); }
const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) { return status_string(status); }

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle) {
    if (!lightHandle) mst_cpu::fatal("cublasLtCreate: the handle pointer is NULL");
    cublasLtContext* h = new cublasLtContext;
    h->magic = MAGIC_HANDLE;
    h->isa = choose_isa();
    *lightHandle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
    cublasLtContext* h = live_handle(lightHandle, "cublasLtDestroy");
    h->magic = MAGIC_DEAD;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
    if (!matmulDesc) mst_cpu::fatal("cublasLtMatmulDescCreate: the descriptor pointer is NULL");
    if (computeType != CUBLAS_COMPUTE_32F)
        mst_cpu::fatal("cublasLtMatmulDescCreate: compute type %d is not supported (only CUBLAS_COMPUTE_32F)",
                       (int)computeType);
    if (scaleType != CUDA_R_32F)
        mst_cpu::fatal("cublasLtMatmulDescCreate: scale type %s (%d) is not supported (only CUDA_R_32F)",
                       type_name(scaleType), (int)scaleType);
    cublasLtMatmulDescOpaque_t* o = new cublasLtMatmulDescOpaque_t();
    Desc* d = new (o->data) Desc();
    d->magic = MAGIC_DESC;
    d->compute_type = computeType;
    d->scale_type = scaleType;
    d->transa = d->transb = 0;
    *matmulDesc = o;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    Desc* d = live<Desc>(matmulDesc, MAGIC_DESC, "cublasLtMatmulDescDestroy", "the descriptor");
    d->magic = MAGIC_DEAD;
    delete matmulDesc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr, const void* buf,
                                                           size_t sizeInBytes) {
    const char* fn = "cublasLtMatmulDescSetAttribute";
    Desc* d = live<Desc>(matmulDesc, MAGIC_DESC, fn, "the descriptor");
    if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB)
        mst_cpu::fatal("%s: %s (%d) is not supported (only CUBLASLT_MATMUL_DESC_TRANSA and _TRANSB)", fn,
                       desc_attr_name(attr), (int)attr);
    const char* name = attr == CUBLASLT_MATMUL_DESC_TRANSA ? "CUBLASLT_MATMUL_DESC_TRANSA" : "CUBLASLT_MATMUL_DESC_TRANSB";
    if (!buf) mst_cpu::fatal("%s: %s: the value pointer is NULL", fn, name);
    if (sizeInBytes != sizeof(int32_t))
        mst_cpu::fatal("%s: %s takes %zu bytes (a cublasOperation_t), not %zu", fn, name, sizeof(int32_t), sizeInBytes);
    int32_t op;
    memcpy(&op, buf, sizeof(op));
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T)
        mst_cpu::fatal("%s: %s = %d is not supported (only CUBLAS_OP_N and CUBLAS_OP_T)", fn, name, (int)op);
    (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->transa : d->transb) = op == CUBLAS_OP_T;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld) {
    const char* fn = "cublasLtMatrixLayoutCreate";
    if (!matLayout) mst_cpu::fatal("%s: the layout pointer is NULL", fn);
    if (type != CUDA_R_16BF && type != CUDA_R_32F)
        mst_cpu::fatal("%s: data type %s (%d) is not supported (only CUDA_R_16BF and CUDA_R_32F)", fn, type_name(type),
                       (int)type);
    cublasLtMatrixLayoutOpaque_t* o = new cublasLtMatrixLayoutOpaque_t();
    Layout* l = new (o->data) Layout();
    l->magic = MAGIC_LAYOUT;
    l->type = type;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    *matLayout = o;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    Layout* l = live<Layout>(matLayout, MAGIC_LAYOUT, "cublasLtMatrixLayoutDestroy", "the layout");
    l->magic = MAGIC_DEAD;
    delete matLayout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    if (!pref) mst_cpu::fatal("cublasLtMatmulPreferenceCreate: the preference pointer is NULL");
    cublasLtMatmulPreferenceOpaque_t* o = new cublasLtMatmulPreferenceOpaque_t();
    Pref* p = new (o->data) Pref();
    p->magic = MAGIC_PREF;
    p->max_workspace = 0;
    *pref = o;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    Pref* p = live<Pref>(pref, MAGIC_PREF, "cublasLtMatmulPreferenceDestroy", "the preference");
    p->magic = MAGIC_DEAD;
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

// The workspace size and the alignments are accepted and have no effect: the CPU matmul needs no workspace
// and any alignment (of its element type) will do.
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf, size_t sizeInBytes) {
    const char* fn = "cublasLtMatmulPreferenceSetAttribute";
    Pref* p = live<Pref>(pref, MAGIC_PREF, fn, "the preference");
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (!buf) mst_cpu::fatal("%s: CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: the value pointer is NULL", fn);
        if (sizeInBytes != sizeof(uint64_t))
            mst_cpu::fatal("%s: CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES takes %zu bytes, not %zu", fn,
                           sizeof(uint64_t), sizeInBytes);
        memcpy(&p->max_workspace, buf, sizeof(uint64_t));
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES || attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES ||
        attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES || attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
        char which = "ABCD"[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES];
        if (!buf) mst_cpu::fatal("%s: CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_%c_BYTES: the value pointer is NULL", fn, which);
        if (sizeInBytes != sizeof(uint32_t))
            mst_cpu::fatal("%s: CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_%c_BYTES takes %zu bytes, not %zu", fn, which,
                           sizeof(uint32_t), sizeInBytes);
        return CUBLAS_STATUS_SUCCESS;
    }
    mst_cpu::fatal("%s: %s (%d) is not supported (only CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES and "
                   "CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES)", fn, pref_attr_name(attr), (int)attr);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle,
                                                           cublasLtMatmulDesc_t operationDesc,
                                                           cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                                           cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                                           cublasLtMatmulPreference_t preference,
                                                           int requestedAlgoCount,
                                                           cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                                           int* returnAlgoCount) {
    const char* fn = "cublasLtMatmulAlgoGetHeuristic";
    live_handle(lightHandle, fn);
    const Desc* d = live<Desc>(operationDesc, MAGIC_DESC, fn, "the matmul descriptor");
    const Layout* a = live<Layout>(Adesc, MAGIC_LAYOUT, fn, "Adesc");
    const Layout* b = live<Layout>(Bdesc, MAGIC_LAYOUT, fn, "Bdesc");
    const Layout* c = live<Layout>(Cdesc, MAGIC_LAYOUT, fn, "Cdesc");
    const Layout* dd = live<Layout>(Ddesc, MAGIC_LAYOUT, fn, "Ddesc");
    if (preference) live<Pref>(preference, MAGIC_PREF, fn, "the preference");
    if (requestedAlgoCount <= 0) mst_cpu::fatal("%s: requestedAlgoCount is %d (must be > 0)", fn, requestedAlgoCount);
    if (!heuristicResultsArray) mst_cpu::fatal("%s: heuristicResultsArray is NULL", fn);
    if (!returnAlgoCount) mst_cpu::fatal("%s: returnAlgoCount is NULL", fn);
    check_problem(fn, d, a, b, c, dd);
    cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[0];
    memset(&r, 0, sizeof(r));
    r.algo.data[0] = MAGIC_ALGO;
    r.workspaceSize = 0;
    r.state = CUBLAS_STATUS_SUCCESS;
    r.wavesCount = 1.f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                           const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc,
                                           const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                                           const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                                           cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo,
                                           void* workspace, size_t workspaceSizeInBytes, cudaStream_t stream) {
    const char* fn = "cublasLtMatmul";
    (void)workspace;
    (void)workspaceSizeInBytes;
    const cublasLtContext* h = live_handle(lightHandle, fn);
    const Desc* d = live<Desc>(computeDesc, MAGIC_DESC, fn, "the matmul descriptor");
    const Layout* a = live<Layout>(Adesc, MAGIC_LAYOUT, fn, "Adesc");
    const Layout* b = live<Layout>(Bdesc, MAGIC_LAYOUT, fn, "Bdesc");
    const Layout* c = live<Layout>(Cdesc, MAGIC_LAYOUT, fn, "Cdesc");
    const Layout* dd = live<Layout>(Ddesc, MAGIC_LAYOUT, fn, "Ddesc");
    if (algo && algo->data[0] != MAGIC_ALGO)
        mst_cpu::fatal("%s: the algorithm was not returned by cublasLtMatmulAlgoGetHeuristic", fn);
    Problem p = check_problem(fn, d, a, b, c, dd);
    if (!alpha) mst_cpu::fatal("%s: alpha is NULL", fn);
    if (!beta) mst_cpu::fatal("%s: beta is NULL", fn);

    Gemm g;
    g.transa = d->transa;
    g.transb = d->transb;
    g.m = p.m;
    g.n = p.n;
    g.k = p.k;
    g.A = (const uint16_t*)A;
    g.lda = a->ld;
    g.B = (const uint16_t*)B;
    g.ldb = b->ld;
    g.C = C;
    g.ldc = c->ld;
    g.D = D;
    g.ldd = dd->ld;
    g.d_fp32 = dd->type == CUDA_R_32F;
    memcpy(&g.alpha, alpha, sizeof(float));  // host pointers (the default pointer mode), read now
    memcpy(&g.beta, beta, sizeof(float));
    g.isa = h->isa;

    // what the matmul reads and writes: A and B unless alpha == 0 or k == 0, C unless beta == 0
    const bool reads_ab = g.alpha != 0.f && g.k > 0 && g.m > 0 && g.n > 0;
    const bool reads_c = g.beta != 0.f;
    const uint64_t a_bytes = reads_ab ? extent_bytes(a) : 0, b_bytes = reads_ab ? extent_bytes(b) : 0;
    const uint64_t d_bytes = extent_bytes(dd), c_bytes = reads_c ? extent_bytes(c) : 0;
    const int d_element = g.d_fp32 ? 4 : 2;
    check_device(fn, "A", A, a_bytes, 2);
    check_device(fn, "B", B, b_bytes, 2);
    check_device(fn, "D", D, d_bytes, d_element);
    if (reads_c && C != D) {
        check_device(fn, "C", C, c_bytes, d_element);
        if (overlap(C, c_bytes, D, d_bytes)) mst_cpu::fatal("%s: C and D overlap without being the same matrix", fn);
    }
    if (overlap(A, a_bytes, D, d_bytes)) mst_cpu::fatal("%s: D overlaps A", fn);
    if (overlap(B, b_bytes, D, d_bytes)) mst_cpu::fatal("%s: D overlaps B", fn);
    if (g.m == 0 || g.n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!reads_c) g.C = nullptr;

    mst_cpu::stream_enqueue(stream, "cublasLtMatmul", [g]() { gemm_run(g); });
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
