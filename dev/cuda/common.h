// dev/cuda/common.h: what the kernel microbenchmarks share: random inputs, bf16 round trips, poisoned
// outputs, tolerance checks, event timing, the card's measured ceilings, and the result rows that
// dev/gpu_check.sh collects ("RESULT | kernel | version | card | time | achieved | fraction of ceiling |").
// The dev programs may allocate freely; the product kernels in mst_kernels.cuh never do.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "mst/llama_reference.h"
#include "mst_kernels.cuh"

// ----------------------------------------------------------------------------
// options: --small (tiny sizes, no benchmarks: for compute-sanitizer), --no-bench, --seed N

static bool g_small = false, g_bench = true;
static unsigned g_seed = 0;
static int g_failures = 0;

static inline void parse_args(int argc, char** argv) {
    g_seed = (unsigned)std::chrono::high_resolution_clock::now().time_since_epoch().count();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) { g_small = true; g_bench = false; }
        else if (!strcmp(argv[i], "--no-bench")) g_bench = false;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) g_seed = (unsigned)strtoul(argv[++i], nullptr, 10);
        else { fprintf(stderr, "usage: %s [--small] [--no-bench] [--seed N]\n", argv[0]); exit(2); }
    }
    printf("seed %u%s\n", g_seed, g_small ? " (small)" : "");
    int dev_count = 0;
    if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
        printf("no CUDA device: nothing to check\n");
        exit(0);
    }
}

static std::mt19937& rng() { static std::mt19937 r(g_seed); return r; }

static inline std::vector<float> rand_uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng());
    return v;
}
static inline int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng()); }

// ----------------------------------------------------------------------------
// bf16 host helpers (round to nearest even, as __float2bfloat16)

static inline uint16_t f2bf_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return (uint16_t)((u >> 16) | ((u & 0xffff) ? 0x40 : 0));
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline float bf2f_bits(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float round_bf16(float f) { return bf2f_bits(f2bf_bits(f)); }
// rounds v in place to bf16 values and returns the bf16 bits
static inline std::vector<uint16_t> to_bf16(std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); i++) { b[i] = f2bf_bits(v[i]); v[i] = bf2f_bits(b[i]); }
    return b;
}

// ----------------------------------------------------------------------------
// device buffers

template <typename T>
static inline T* dmalloc(size_t n) {
    T* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    return p;
}
// upload floats as bf16 (rounding the host copy in place so the CPU reference sees the same values)
static inline bf16* upload_bf16(std::vector<float>& v) {
    std::vector<uint16_t> b = to_bf16(v);
    bf16* d = dmalloc<bf16>(v.size());
    CUDA_CHECK(cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
static inline T* upload(const std::vector<T>& v) {
    T* d = dmalloc<T>(v.size());
    CUDA_CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
// FNV-1a over every byte downloaded for a check: finish() prints it, so runs of the same --seed under
// different CPU-device schedules (dev/cpu_device_kernels.sh) can be required to give the same bytes
static uint64_t g_output_digest = 0xcbf29ce484222325ull;
static inline void digest(const void* p, size_t bytes) {
    for (size_t i = 0; i < bytes; i++) g_output_digest = (g_output_digest ^ ((const unsigned char*)p)[i]) * 0x100000001b3ull;
}
static inline std::vector<float> download_bf16(const bf16* d, size_t n) {
    std::vector<uint16_t> b(n);
    CUDA_CHECK(cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost));
    digest(b.data(), n * 2);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = bf2f_bits(b[i]);
    return v;
}
template <typename T>
static inline std::vector<T> download(const T* d, size_t n) {
    std::vector<T> v(n);
    CUDA_CHECK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    digest(v.data(), n * sizeof(T));
    return v;
}
// all bits set: NaN as bf16 and as fp32, so any element a kernel forgets to write fails the check
static inline void poison(void* d, size_t bytes) { CUDA_CHECK(cudaMemset(d, 0xff, bytes)); }

// ----------------------------------------------------------------------------
// checks

// PASS iff every element satisfies |a - b| <= atol + rtol |b| (NaN never passes)
static inline bool compare(const char* name, const float* got, const float* ref, size_t n, float atol, float rtol) {
    size_t bad = 0, first_bad = (size_t)-1;
    double max_err = 0.0, err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = got[i], b = ref[i];
        double e = fabs(a - b);
        bool ok = e <= atol + rtol * fabs(b);  // false for NaN
        if (!ok) { if (bad == 0) first_bad = i; bad++; }
        if (e == e) max_err = std::max(max_err, e);
        err2 += (a - b) * (a - b);
        ref2 += b * b;
    }
    double rel = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
    bool pass = bad == 0;
    printf("%s %-52s n=%zu max_abs_err=%.3g rel_l2=%.3g", pass ? "PASS" : "FAIL", name, n, max_err, rel);
    if (!pass) printf(" bad=%zu first at %zu: got %g want %g", bad, first_bad, got[first_bad], ref[first_bad]);
    printf("\n");
    if (!pass) g_failures++;
    return pass;
}
static inline bool compare(const char* name, const std::vector<float>& got, const std::vector<float>& ref, float atol, float rtol) {
    if (got.size() != ref.size()) { printf("FAIL %s: size %zu vs %zu\n", name, got.size(), ref.size()); g_failures++; return false; }
    return compare(name, got.data(), ref.data(), got.size(), atol, rtol);
}
static inline bool check_true(const char* name, bool ok) {
    printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    if (!ok) g_failures++;
    return ok;
}
static inline bool bitwise_equal(const void* a, const void* b, size_t bytes) { return memcmp(a, b, bytes) == 0; }
static inline float max_abs(const std::vector<float>& v) {
    float m = 0.f;
    for (float x : v) m = std::max(m, fabsf(x));
    return m;
}

// Attention outputs, FlashAttention-3's rule: |ours - ref32| <= 2 max |ref_bf16 - ref32| + atol (elementwise
// maxima; NaN fails), where ref_bf16 (attention_forward_bf16_reference) rounds S, P and O to bf16 as a bf16 kernel
// must: the bf16 reference's own error sizes the tolerance. atol 1e-3 covers outputs whose bf16 error is ~0
// (T = 1: O = v exactly). Returns our max error.
static inline double check_fa3_rule(const char* name, const std::vector<float>& got, const std::vector<float>& ref32,
                                    const std::vector<float>& ref16, double atol = 1e-3) {
    double bf16_err = 0, our_err = 0;
    size_t nan = 0;
    for (size_t i = 0; i < got.size(); i++) {
        bf16_err = std::max(bf16_err, (double)fabsf(ref16[i] - ref32[i]));
        double e = fabs((double)got[i] - ref32[i]);
        if (e != e) nan++;
        else our_err = std::max(our_err, e);
    }
    char line[512];
    snprintf(line, sizeof line, "%s: max err %.3g <= 2 x bf16 ref's %.3g + %.0e%s", name, our_err, bf16_err, atol, nan ? " (NaN)" : "");
    check_true(line, nan == 0 && our_err <= 2 * bf16_err + atol);
    return our_err;
}

// Programs of sm_90a kernels: "" on an sm_90 card, else why not ("no CUDA device", "the card is sm_80, ...")
// for the caller's SKIP lines
static inline std::string why_not_sm90() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) return "no CUDA device";
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    if (prop.major == 9) return "";
    char why[64];
    snprintf(why, sizeof why, "the card is sm_%d%d, not sm_90", prop.major, prop.minor);
    return why;
}

static inline int finish(const char* program) {
    printf("output digest: %016llx\n", (unsigned long long)g_output_digest);
    printf("%s: %s (%d failed checks)\n", program, g_failures ? "FAILED" : "all checks passed", g_failures);
    return g_failures ? 1 : 0;
}

// ----------------------------------------------------------------------------
// attention's bf16 references, for FlashAttention-3's rule |ours - ref32| <= 2 |ref_bf16 - ref32| + atol
// (elementwise maxima): attention_forward_cpu / attention_backward_cpu's arithmetic with the bf16 roundings
// of a tensor-core kernel. Forward: S, P and O rounded (lse from the rounded S and P). Backward (from the
// fp32 reference's out and lse, out rounded as a kernel stores it): P and dS rounded where they feed a
// matmul, dq, dk, dv rounded. doc_start: see attention_first_key (nullable).

// Forward: query rows [q0, q0 + n) (n < 0: to T), as attention_forward_cpu; lse nullable.
static inline void attention_forward_bf16_reference(float* out, float* lse, const float* q, const float* k, const float* v,
                                                    int B, int T, int H, int KV, int hd, const int* doc_start,
                                                    int q0 = 0, int n = -1) {
    float scale = 1.f / sqrtf((float)hd);
    int group = H / KV, q1 = n < 0 ? T : std::min(T, q0 + n);
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            std::vector<float> p(T);
            for (int t = q0; t < q1; t++) {
                int first = attention_first_key(doc_start, b, T, t);
                const float* qt = q + (((size_t)b * T + t) * H + h) * hd;
                auto kv_row = [&](const float* x, int s) { return x + (((size_t)b * T + s) * KV + h / group) * hd; };
                float mx = -INFINITY, sum = 0.f;
                for (int s = first; s <= t; s++) {
                    float dot = 0.f;
                    for (int i = 0; i < hd; i++) dot += qt[i] * kv_row(k, s)[i];
                    p[s] = round_bf16(dot * scale);
                    mx = std::max(mx, p[s]);
                }
                for (int s = first; s <= t; s++) { float e = round_bf16(expf(p[s] - mx)); sum += e; p[s] = e; }
                float* o = out + (((size_t)b * T + t) * H + h) * hd;
                for (int i = 0; i < hd; i++) {
                    float acc = 0.f;
                    for (int s = first; s <= t; s++) acc += p[s] * kv_row(v, s)[i];
                    o[i] = round_bf16(acc / sum);
                }
                if (lse) lse[((size_t)b * H + h) * T + t] = mx + logf(sum);
            }
        }
}

// the rule's atol for a gradient: 1e-3 of its largest reference magnitude
static inline double gradient_atol(const std::vector<float>& ref) { return 1e-3 * max_abs(ref) + 1e-6; }

// a device copy of x (rows of `width` elements, `rows_per_seq` per sequence) with every row outside
// [q0, q1) of each sequence poisoned: what a query block may not read
template <typename E>
static inline E* rows_only(const E* x, int seqs, int rows_per_seq, size_t width, int q0, int q1) {
    size_t n = (size_t)seqs * rows_per_seq * width;
    E* copy = dmalloc<E>(n);
    poison(copy, n * sizeof(E));
    for (int s = 0; s < seqs; s++) {
        size_t at = ((size_t)s * rows_per_seq + q0) * width;
        CUDA_CHECK(cudaMemcpy(copy + at, x + at, (size_t)(q1 - q0) * width * sizeof(E), cudaMemcpyDeviceToDevice));
    }
    return copy;
}

static inline void attention_backward_bf16_reference(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                                     const float* k, const float* v, const float* out, const float* lse,
                                                     int B, int T, int H, int KV, int hd, const int* doc_start) {
    float scale = 1.f / sqrtf((float)hd);
    int group = H / KV;
    std::fill(dq, dq + (size_t)B * T * H * hd, 0.f);
    std::fill(dk, dk + (size_t)B * T * KV * hd, 0.f);
    std::fill(dv, dv + (size_t)B * T * KV * hd, 0.f);
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++)  // each thread owns its dk, dv rows
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    size_t row = (((size_t)b * T + t) * H + h) * hd;
                    float delta = 0.f;
                    for (int i = 0; i < hd; i++) delta += dout[row + i] * round_bf16(out[row + i]);
                    for (int s = attention_first_key(doc_start, b, T, t); s <= t; s++) {
                        size_t kv = (((size_t)b * T + s) * KV + kvh) * hd;
                        float score = 0.f, dp = 0.f;
                        for (int i = 0; i < hd; i++) { score += q[row + i] * k[kv + i]; dp += dout[row + i] * v[kv + i]; }
                        float p = expf(score * scale - lse[((size_t)b * H + h) * T + t]);
                        float p16 = round_bf16(p), ds = round_bf16(p * (dp - delta));
                        for (int i = 0; i < hd; i++) {
                            dq[row + i] += ds * k[kv + i];
                            dk[kv + i] += ds * q[row + i];
                            dv[kv + i] += p16 * dout[row + i];
                        }
                    }
                }
    for (size_t i = 0; i < (size_t)B * T * H * hd; i++) dq[i] = round_bf16(dq[i] * scale);
    for (size_t i = 0; i < (size_t)B * T * KV * hd; i++) { dk[i] = round_bf16(dk[i] * scale); dv[i] = round_bf16(dv[i]); }
}

// ----------------------------------------------------------------------------
// fast random fill on the device for benchmark inputs (validation uses host-side inputs above)

__global__ void fill_uniform_kernel(bf16* b, float* f, size_t n, unsigned seed, float lo, float hi) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = mst_hash(seed ^ mst_hash((unsigned)i ^ mst_hash((unsigned)(i >> 32) + 0x9e3779b9u)));
        float x = lo + (hi - lo) * (h >> 8) * (1.f / 16777216.f);
        if (b) b[i] = __float2bfloat16(x);
        else f[i] = x;
    }
}
static inline bf16* device_random_bf16(size_t n, float lo = -1.f, float hi = 1.f) {
    bf16* d = dmalloc<bf16>(n);
    mst::launch<fill_uniform_kernel>(1024, 256, 0, 0, d, nullptr, n, (unsigned)rng()(), lo, hi);
    CUDA_CHECK(cudaGetLastError());
    return d;
}
static inline float* device_random_f32(size_t n, float lo = -1.f, float hi = 1.f) {
    float* d = dmalloc<float>(n);
    mst::launch<fill_uniform_kernel>(1024, 256, 0, 0, nullptr, d, n, (unsigned)rng()(), lo, hi);
    CUDA_CHECK(cudaGetLastError());
    return d;
}

// ----------------------------------------------------------------------------
// timing and ceilings

// median milliseconds of `reps` event-timed runs after `warmup` runs
static inline float bench_ms(const std::function<void()>& fn, int warmup = 3, int reps = 20) {
    for (int i = 0; i < warmup; i++) fn();
    CUDA_CHECK(cudaDeviceSynchronize());
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    std::vector<float> t(reps);
    for (int i = 0; i < reps; i++) {
        CUDA_CHECK(cudaEventRecord(a));
        fn();
        CUDA_CHECK(cudaEventRecord(b));
        CUDA_CHECK(cudaEventSynchronize(b));
        CUDA_CHECK(cudaEventElapsedTime(&t[i], a, b));
    }
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaEventDestroy(a));
    CUDA_CHECK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[reps / 2];
}

static inline std::string card_name() {
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    std::string s = p.name;
    for (auto& c : s) if (c == ' ') c = '_';
    return s;
}

// device-to-device copy bandwidth, GB/s counting bytes read + written (env MST_COPY_GBPS overrides)
static inline double copy_bandwidth_gbps() {
    static double cached = 0.0;
    if (cached > 0) return cached;
    if (const char* e = getenv("MST_COPY_GBPS")) { cached = atof(e); if (cached > 0) return cached; }
    size_t bytes = 1ull << 30;
    void *a = dmalloc<char>(bytes), *b = dmalloc<char>(bytes);
    CUDA_CHECK(cudaMemset(a, 1, bytes));
    float ms = bench_ms([&] { CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 2, 10);
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    cached = 2.0 * bytes / (ms * 1e-3) / 1e9;
    printf("ceiling: device-to-device copy %.0f GB/s\n", cached);
    return cached;
}

static cublasLtHandle_t g_lt = nullptr;
static void* g_lt_workspace = nullptr;
static inline void ensure_matmul() {
    if (g_lt) return;
    CUBLAS_CHECK(cublasLtCreate(&g_lt));
    g_lt_workspace = dmalloc<char>(CUBLASLT_WORKSPACE_BYTES);
    matmul_init(g_lt, g_lt_workspace, CUBLASLT_WORKSPACE_BYTES);
}

// bf16 cuBLASLt matmul rate at 8192^3, TFLOP/s (env MST_MATMUL_TFLOPS overrides)
static inline double matmul_tflops() {
    static double cached = 0.0;
    if (cached > 0) return cached;
    if (const char* e = getenv("MST_MATMUL_TFLOPS")) { cached = atof(e); if (cached > 0) return cached; }
    ensure_matmul();
    int n = 8192;
    bf16* a = device_random_bf16((size_t)n * n);
    bf16* b = device_random_bf16((size_t)n * n);
    bf16* c = dmalloc<bf16>((size_t)n * n);
    float ms = bench_ms([&] { matmul_forward(c, a, b, n, n, n, false, 0); }, 3, 10);
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(c));
    cached = 2.0 * n * n * (double)n / (ms * 1e-3) / 1e12;
    printf("ceiling: bf16 cuBLASLt matmul 8192^3 %.0f TFLOP/s\n", cached);
    return cached;
}

// one row of the results table, memory-bound (bytes moved) or compute-bound (flops)
static inline void report_bandwidth(const char* kernel, const char* version, float ms, double bytes) {
    double gbps = bytes / (ms * 1e-3) / 1e9;
    double frac = gbps / copy_bandwidth_gbps();
    printf("RESULT | %s | %s | %s | %.4f ms | %.0f GB/s | %.2f of copy |\n", kernel, version, card_name().c_str(), ms, gbps, frac);
}
static inline void report_flops(const char* kernel, const char* version, float ms, double flops) {
    double tf = flops / (ms * 1e-3) / 1e12;
    double frac = tf / matmul_tflops();
    printf("RESULT | %s | %s | %s | %.4f ms | %.1f TFLOP/s | %.2f of matmul |\n", kernel, version, card_name().c_str(), ms, tf, frac);
}

