// mst/cpu_device/cublaslt.cpp: the cuBLASLt calls mst makes (mst_kernels.cuh's matmul_lt), on the CPU:
// column-major D (m x n, ldd) = alpha op(A) op(B) + beta D, A and B bf16, D bf16 or fp32, fp32 compute.
// The products of bf16 values are exact in fp32; they are summed in fp32 (in another order than
// cuBLASLt's, so results agree within fp32 rounding, never bitwise), then D is rounded once (bf16: to
// nearest even). Anything else the API offers is refused with one line.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>
#include <cublasLt.h>

#include "mst/cpu_device/runtime.h"

struct cublasLtContext { int unused; };

namespace {

struct MatmulDesc {
    bool transa = false, transb = false;
};
struct Layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
static_assert(sizeof(MatmulDesc) <= sizeof(cublasLtMatmulDescOpaque_t), "fits the opaque descriptor");

float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept NaN (as __float2bfloat16)
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return (uint16_t)((u >> 16) | ((u & 0xffff) ? 0x40 : 0));
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// op(X) as `rows` contiguous fp32 rows of length k: row r = row r of op(X) (for A: i; for B^T: column j)
void unpack(const uint16_t* x, int64_t ld, bool transposed_storage, int64_t rows, int64_t k, float* out) {
    // transposed_storage: element (r, kk) at x[kk + r * ld]; else at x[r + kk * ld]
    mst_cpu::parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; r++) {
            float* o = out + r * k;
            if (transposed_storage)
                for (int64_t kk = 0; kk < k; kk++) o[kk] = bf16_to_float(x[kk + r * ld]);
            else
                for (int64_t kk = 0; kk < k; kk++) o[kk] = bf16_to_float(x[r + kk * ld]);
        }
    });
}

// out[a][b] = dot(A[i0 + a], B[j0 + b]) for a 4 x 4 tile (fewer at the edges), over k contiguous floats
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void dot_tile(const float* A, const float* B, int64_t k, int na, int nb, float out[4][4]) {
    float acc[4][4][8] = {};
    int64_t kk = 0;
    if (na == 4 && nb == 4) {
        for (; kk + 8 <= k; kk += 8)
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++)
                    for (int v = 0; v < 8; v++) acc[a][b][v] += A[a * k + kk + v] * B[b * k + kk + v];
    }
    for (int a = 0; a < na; a++)
        for (int b = 0; b < nb; b++) {
            float s = 0.f;
            for (int v = 0; v < 8; v++) s += acc[a][b][v];
            for (int64_t t = kk; t < k; t++) s += A[a * k + t] * B[b * k + t];
            out[a][b] = s;
        }
}

void gemm(const MatmulDesc& desc, const Layout& la, const Layout& lb, const Layout& ld, int64_t m, int64_t n, int64_t k,
          float alpha, float beta, const uint16_t* a, const uint16_t* b, void* d) {
    // op(A) row i = A row i (no transpose: element (i, kk) at a[i + kk lda]) or A column i (transpose)
    std::vector<float> A((size_t)m * k), B((size_t)n * k);
    unpack(a, la.ld, desc.transa, m, k, A.data());
    // op(B) column j: B column j (no transpose: element (kk, j) at b[kk + j ldb]) or B row j (transpose)
    unpack(b, lb.ld, !desc.transb, n, k, B.data());
    const bool fp32 = ld.type == CUDA_R_32F;
    const int64_t tiles_i = (m + 3) / 4, tiles_j = (n + 3) / 4;
    mst_cpu::parallel_for(tiles_i * tiles_j, 16, [&](int64_t begin, int64_t end) {
        for (int64_t tile = begin; tile < end; tile++) {
            int64_t i0 = tile % tiles_i * 4, j0 = tile / tiles_i * 4;
            int na = (int)std::min<int64_t>(4, m - i0), nb = (int)std::min<int64_t>(4, n - j0);
            float out[4][4];
            dot_tile(A.data() + i0 * k, B.data() + j0 * k, k, na, nb, out);
            for (int bb = 0; bb < nb; bb++)
                for (int aa = 0; aa < na; aa++) {
                    size_t at = (size_t)(i0 + aa) + (size_t)(j0 + bb) * ld.ld;
                    if (fp32) {
                        float* D = (float*)d;
                        D[at] = alpha * out[aa][bb] + (beta != 0.f ? beta * D[at] : 0.f);
                    } else {
                        uint16_t* D = (uint16_t*)d;
                        float old = beta != 0.f ? beta * bf16_to_float(D[at]) : 0.f;
                        D[at] = float_to_bf16(alpha * out[aa][bb] + old);
                    }
                }
        }
    });
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) { *handle = new cublasLtContext(); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) { delete handle; return CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F)
        mst_cpu::fatal("cublasLtMatmulDescCreate: compute type %d, scale type %d (the CPU device does CUBLAS_COMPUTE_32F, CUDA_R_32F)",
                       (int)compute, (int)scale);
    *desc = new cublasLtMatmulDescOpaque_t();
    new ((*desc)->data) MatmulDesc();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) { delete desc; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                                              const void* value, size_t size) {
    MatmulDesc* d = (MatmulDesc*)desc->data;
    if ((attribute != CUBLASLT_MATMUL_DESC_TRANSA && attribute != CUBLASLT_MATMUL_DESC_TRANSB) || size != sizeof(cublasOperation_t))
        mst_cpu::fatal("cublasLtMatmulDescSetAttribute: attribute %d is not emulated (TRANSA and TRANSB are)", (int)attribute);
    cublasOperation_t op;
    memcpy(&op, value, sizeof op);
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) mst_cpu::fatal("cublasLtMatmulDescSetAttribute: operation %d (N or T)", (int)op);
    (attribute == CUBLASLT_MATMUL_DESC_TRANSA ? d->transa : d->transb) = op == CUBLAS_OP_T;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != CUDA_R_16BF && type != CUDA_R_32F) mst_cpu::fatal("cublasLtMatrixLayoutCreate: data type %d (bf16 or fp32)", (int)type);
    if (ld < (int64_t)std::max<uint64_t>(rows, 1)) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new cublasLtMatrixLayoutOpaque_t();
    Layout* l = (Layout*)(*layout)->data;
    *l = {type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) { delete layout; return CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    *pref = new cublasLtMatmulPreferenceOpaque_t();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) { delete pref; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t attribute,
                                                    const void*, size_t) {
    switch (attribute) {
        case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
            return CUBLAS_STATUS_SUCCESS;  // one algorithm here: any workspace and alignment suit it
        default:
            mst_cpu::fatal("cublasLtMatmulPreferenceSetAttribute: attribute %d is not emulated", (int)attribute);
    }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t,
                                              int requested, cublasLtMatmulHeuristicResult_t* results, int* returned) {
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    memset(&results[0], 0, sizeof results[0]);
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                              const void* C, cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const MatmulDesc& d = *(const MatmulDesc*)desc->data;
    const Layout& la = *(const Layout*)Adesc->data;
    const Layout& lb = *(const Layout*)Bdesc->data;
    const Layout& lc = *(const Layout*)Cdesc->data;
    const Layout& ld = *(const Layout*)Ddesc->data;
    if (C != D || memcmp(&lc, &ld, sizeof lc) != 0) mst_cpu::fatal("cublasLtMatmul: C must be D (in place), as mst calls it");
    if (la.type != CUDA_R_16BF || lb.type != CUDA_R_16BF) mst_cpu::fatal("cublasLtMatmul: A and B must be bf16");
    int64_t m = (int64_t)ld.rows, n = (int64_t)ld.cols;
    int64_t k = d.transa ? (int64_t)la.rows : (int64_t)la.cols;
    int64_t am = d.transa ? (int64_t)la.cols : (int64_t)la.rows;
    int64_t bk = d.transb ? (int64_t)lb.cols : (int64_t)lb.rows, bn = d.transb ? (int64_t)lb.rows : (int64_t)lb.cols;
    if (am != m || bk != k || bn != n)
        mst_cpu::fatal("cublasLtMatmul: shapes disagree: op(A) %lldx%lld, op(B) %lldx%lld, D %lldx%lld", (long long)am,
                       (long long)k, (long long)bk, (long long)bn, (long long)m, (long long)n);
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    auto span = [](const Layout& l, size_t element) { return ((l.cols - 1) * (size_t)l.ld + l.rows) * element; };
    const size_t d_element = ld.type == CUDA_R_32F ? 4 : 2;
    if (!mst_cpu::is_device_memory(A, span(la, 2)) || !mst_cpu::is_device_memory(B, span(lb, 2)) ||
        !mst_cpu::is_device_memory(D, span(ld, d_element)))
        mst_cpu::fatal("cublasLtMatmul: an operand (A %p, B %p, D %p; m %lld n %lld k %lld) is not inside one device "
                       "allocation and region", A, B, D, (long long)m, (long long)n, (long long)k);
    float a = *(const float*)alpha, b = *(const float*)beta;  // host pointers, read at the call
    MatmulDesc desc_copy = d;
    Layout la_copy = la, lb_copy = lb, ld_copy = ld;
    mst_cpu::stream_enqueue(stream, "cublasLtMatmul", [=] {
        gemm(desc_copy, la_copy, lb_copy, ld_copy, m, n, k, a, b, (const uint16_t*)A, (const uint16_t*)B, D);
    });
    return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) { return status == CUBLAS_STATUS_SUCCESS ? "success" : "cuBLASLt error"; }
const char* cublasGetStatusString(cublasStatus_t status) { return cublasLtGetStatusString(status); }

}  // extern "C"
