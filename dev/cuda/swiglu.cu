// dev/cuda/swiglu.cu: SwiGLU forward and backward, with gate/up as separate (N, F) buffers or interleaved
// rows of one fused [gate; up] matmul output (N, 2F). CPU reference: swiglu_forward_cpu / swiglu_backward_cpu.
// Product kernels: swiglu_forward / swiglu_backward (mst_kernels.cuh).
#include "common.h"

static void check(int N, int F, bool fused) {
    int ld = fused ? 2 * F : F;
    size_t n = (size_t)N * F;
    std::vector<float> g = rand_uniform(n, -4.f, 4.f), u = rand_uniform(n, -2.f, 2.f), dy = rand_uniform(n, -1.f, 1.f);
    to_bf16(g); to_bf16(u);
    // device layout: fused rows [gate | up] or two buffers
    std::vector<float> gu_host(fused ? 2 * n : n);
    bf16 *d_gu, *d_g, *d_u;
    if (fused) {
        for (int r = 0; r < N; r++)
            for (int f = 0; f < F; f++) { gu_host[(size_t)r * ld + f] = g[(size_t)r * F + f]; gu_host[(size_t)r * ld + F + f] = u[(size_t)r * F + f]; }
        d_gu = upload_bf16(gu_host);
        d_g = d_gu; d_u = d_gu + F;
    } else {
        d_gu = nullptr;
        d_g = upload_bf16(g); d_u = upload_bf16(u);
    }
    bf16 *d_dy = upload_bf16(dy), *d_out = dmalloc<bf16>(n);
    size_t nd = fused ? 2 * n : n;
    bf16 *d_dg = dmalloc<bf16>(nd), *d_du = fused ? d_dg + F : dmalloc<bf16>(n);
    char name[128];
    poison(d_out, n * 2);
    swiglu_forward(d_out, d_g, d_u, N, F, ld, 0);
    std::vector<float> out_ref(n), dg_ref(n), du_ref(n);
    swiglu_forward_cpu(out_ref.data(), g.data(), u.data(), n);
    snprintf(name, sizeof name, "swiglu_forward N=%d F=%d %s", N, F, fused ? "fused" : "separate");
    compare(name, download_bf16(d_out, n), out_ref, 1e-2f, 1e-2f);
    poison(d_dg, nd * 2);
    if (!fused) poison(d_du, n * 2);
    swiglu_backward(d_dg, d_du, d_dy, d_g, d_u, N, F, ld, 0);
    swiglu_backward_cpu(dg_ref.data(), du_ref.data(), dy.data(), g.data(), u.data(), n);
    std::vector<float> all = download_bf16(d_dg, nd), dg(n), du(n);
    if (fused) {
        for (int r = 0; r < N; r++)
            for (int f = 0; f < F; f++) { dg[(size_t)r * F + f] = all[(size_t)r * ld + f]; du[(size_t)r * F + f] = all[(size_t)r * ld + F + f]; }
    } else {
        dg = all;
        du = download_bf16(d_du, n);
    }
    snprintf(name, sizeof name, "swiglu_backward dgate N=%d F=%d %s", N, F, fused ? "fused" : "separate");
    compare(name, dg, dg_ref, 1e-2f, 1e-2f);
    snprintf(name, sizeof name, "swiglu_backward dup N=%d F=%d %s", N, F, fused ? "fused" : "separate");
    compare(name, du, du_ref, 1e-2f, 1e-2f);
    // in place: dgate/dup over gate/up
    if (fused) {
        swiglu_backward(d_gu, d_gu + F, d_dy, d_gu, d_gu + F, N, F, ld, 0);
        std::vector<float> all2 = download_bf16(d_gu, nd);
        snprintf(name, sizeof name, "swiglu_backward in place N=%d F=%d", N, F);
        compare(name, all2, all, 0.f, 0.f);
        CUDA_CHECK(cudaFree(d_gu));
    } else {
        CUDA_CHECK(cudaFree(d_g)); CUDA_CHECK(cudaFree(d_u)); CUDA_CHECK(cudaFree(d_du));
    }
    for (void* p : {(void*)d_dy, (void*)d_out, (void*)d_dg}) CUDA_CHECK(cudaFree(p));
}

static void bench(int N, int F) {
    size_t n = (size_t)N * F;
    std::vector<float> h = rand_uniform(2 * n, -2.f, 2.f);
    bf16 *gu = upload_bf16(h), *dgu = dmalloc<bf16>(2 * n), *out = dmalloc<bf16>(n);
    char name[96];
    float ms = bench_ms([&] { swiglu_forward(out, gu, gu + F, N, F, 2 * F, 0); });
    snprintf(name, sizeof name, "swiglu_forward N=%d F=%d", N, F);
    report_bandwidth(name, "elementwise x8 v1", ms, 3.0 * n * 2);
    ms = bench_ms([&] { swiglu_backward(dgu, dgu + F, out, gu, gu + F, N, F, 2 * F, 0); });
    snprintf(name, sizeof name, "swiglu_backward N=%d F=%d", N, F);
    report_bandwidth(name, "elementwise x8 v1", ms, 5.0 * n * 2);
    for (void* p : {(void*)gu, (void*)dgu, (void*)out}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check(3, 232, true);
    check(5, 37, false);
    if (!g_small) {
        check(37, 232, false);
        check(37, 1376, true);
        check(129, 131, true);
        check(1000, 14336, true);
        if (g_bench) bench(8192, 14336);
    }
    return finish("swiglu");
}
