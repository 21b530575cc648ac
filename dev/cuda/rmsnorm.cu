// dev/cuda/rmsnorm.cu: RMSNorm forward (plain and fused with the residual add) and backward.
// CPU reference: rmsnorm_forward_cpu / rmsnorm_backward_cpu (llama_reference.h). Product kernels:
// rmsnorm_forward, rmsnorm_residual_forward, rmsnorm_backward (mst_kernels.cuh): one warp per row, 16-byte
// accesses when C % 8 == 0; weight gradient by fixed row chunks then a fixed-order reduction (deterministic).
#include "common.h"

static void check(int N, int C) {
    float eps = 1e-5f;
    std::vector<float> res = rand_uniform((size_t)N * C, -2.f, 2.f), delta = rand_uniform((size_t)N * C, -1.f, 1.f);
    std::vector<float> w = rand_uniform(C, 0.5f, 1.5f), dy = rand_uniform((size_t)N * C, -1.f, 1.f);
    std::vector<float> dres0 = rand_uniform((size_t)N * C, -1.f, 1.f), dw0 = rand_uniform(C, -1.f, 1.f);
    bf16 *d_res = upload_bf16(res), *d_delta = upload_bf16(delta), *d_w = upload_bf16(w), *d_dy = upload_bf16(dy);
    bf16 *d_dres = upload_bf16(dres0);
    float* d_dw = upload(dw0);
    bf16 *d_out = dmalloc<bf16>((size_t)N * C), *d_resout = dmalloc<bf16>((size_t)N * C);
    float* d_rstd = dmalloc<float>(N);
    void* scratch = dmalloc<char>(rmsnorm_backward_scratch_bytes(N, C));
    char name[128];

    // plain forward
    poison(d_out, (size_t)N * C * 2); poison(d_rstd, N * 4);
    rmsnorm_forward(d_out, d_rstd, d_res, d_w, N, C, eps, 0);
    std::vector<float> out_ref((size_t)N * C), rstd_ref(N);
    rmsnorm_forward_cpu(out_ref.data(), rstd_ref.data(), res.data(), w.data(), N, C, eps);
    snprintf(name, sizeof name, "rmsnorm_forward out N=%d C=%d", N, C);
    compare(name, download_bf16(d_out, (size_t)N * C), out_ref, 1e-2f, 1e-2f);
    snprintf(name, sizeof name, "rmsnorm_forward rstd N=%d C=%d", N, C);
    compare(name, download(d_rstd, N), rstd_ref, 1e-5f, 1e-4f);

    // fused residual forward: residual_out = res + delta (bf16), then rmsnorm of it
    poison(d_out, (size_t)N * C * 2); poison(d_rstd, N * 4); poison(d_resout, (size_t)N * C * 2);
    rmsnorm_residual_forward(d_resout, d_out, d_rstd, d_res, d_delta, d_w, N, C, eps, 0);
    std::vector<float> resout_ref((size_t)N * C);
    for (size_t i = 0; i < resout_ref.size(); i++) resout_ref[i] = round_bf16(res[i] + delta[i]);
    rmsnorm_forward_cpu(out_ref.data(), rstd_ref.data(), resout_ref.data(), w.data(), N, C, eps);
    snprintf(name, sizeof name, "rmsnorm_residual_forward residual N=%d C=%d", N, C);
    compare(name, download_bf16(d_resout, (size_t)N * C), resout_ref, 0.f, 0.f);
    snprintf(name, sizeof name, "rmsnorm_residual_forward out N=%d C=%d", N, C);
    compare(name, download_bf16(d_out, (size_t)N * C), out_ref, 1e-2f, 1e-2f);
    snprintf(name, sizeof name, "rmsnorm_residual_forward rstd N=%d C=%d", N, C);
    compare(name, download(d_rstd, N), rstd_ref, 1e-5f, 1e-4f);
    // in place: residual_out == residual_in
    bf16* d_inplace = dmalloc<bf16>((size_t)N * C);
    CUDA_CHECK(cudaMemcpy(d_inplace, d_res, (size_t)N * C * 2, cudaMemcpyDeviceToDevice));
    rmsnorm_residual_forward(d_inplace, d_out, d_rstd, d_inplace, d_delta, d_w, N, C, eps, 0);
    snprintf(name, sizeof name, "rmsnorm_residual_forward in place N=%d C=%d", N, C);
    compare(name, download_bf16(d_inplace, (size_t)N * C), resout_ref, 0.f, 0.f);

    // backward on the fused forward's residual and rstd; accumulates into dres and dw
    std::vector<float> dres_ref = dres0, dw_ref = dw0;
    rmsnorm_backward_cpu(dres_ref.data(), dw_ref.data(), dy.data(), resout_ref.data(), w.data(), rstd_ref.data(), N, C);
    rmsnorm_backward(d_dres, d_dw, scratch, d_dy, d_resout, d_w, d_rstd, N, C, 0);
    std::vector<float> dres = download_bf16(d_dres, (size_t)N * C);
    snprintf(name, sizeof name, "rmsnorm_backward dinp (accumulated) N=%d C=%d", N, C);
    compare(name, dres, dres_ref, 2e-2f, 1e-2f);
    std::vector<float> dw = download(d_dw, C);
    snprintf(name, sizeof name, "rmsnorm_backward dweight (accumulated) N=%d C=%d", N, C);
    compare(name, dw, dw_ref, 1e-3f * sqrtf((float)N), 1e-3f);
    // determinism of dweight
    CUDA_CHECK(cudaMemcpy(d_dw, dw0.data(), C * 4, cudaMemcpyHostToDevice));
    rmsnorm_backward(d_dres, d_dw, scratch, d_dy, d_resout, d_w, d_rstd, N, C, 0);
    std::vector<float> dw2 = download(d_dw, C);
    snprintf(name, sizeof name, "rmsnorm_backward dweight deterministic N=%d C=%d", N, C);
    check_true(name, bitwise_equal(dw.data(), dw2.data(), C * 4));
    for (void* p : {(void*)d_res, (void*)d_delta, (void*)d_w, (void*)d_dy, (void*)d_dres, (void*)d_dw, (void*)d_out,
                    (void*)d_resout, (void*)d_rstd, scratch, (void*)d_inplace})
        CUDA_CHECK(cudaFree(p));
}

static void bench(int N, int C) {
    size_t n = (size_t)N * C;
    bf16 *a = device_random_bf16(n), *b = device_random_bf16(n), *d_w = device_random_bf16(C, 0.5f, 1.5f);
    bf16 *out = dmalloc<bf16>(n), *res = dmalloc<bf16>(n), *dres = device_random_bf16(n);
    float *rstd = dmalloc<float>(N), *dw = dmalloc<float>(C);
    CUDA_CHECK(cudaMemset(dw, 0, C * 4));
    void* scratch = dmalloc<char>(rmsnorm_backward_scratch_bytes(N, C));
    char name[96];
    float ms = bench_ms([&] { rmsnorm_residual_forward(res, out, rstd, a, b, d_w, N, C, 1e-5f, 0); });
    snprintf(name, sizeof name, "rmsnorm_residual_forward N=%d C=%d", N, C);
    report_bandwidth(name, "warp/row v1", ms, 4.0 * n * 2);  // read 2, write 2
    ms = bench_ms([&] { rmsnorm_forward(out, rstd, a, d_w, N, C, 1e-5f, 0); });
    snprintf(name, sizeof name, "rmsnorm_forward N=%d C=%d", N, C);
    report_bandwidth(name, "warp/row v1", ms, 2.0 * n * 2);
    ms = bench_ms([&] { rmsnorm_backward(dres, dw, scratch, a, b, d_w, rstd, N, C, 0); });
    snprintf(name, sizeof name, "rmsnorm_backward N=%d C=%d", N, C);
    report_bandwidth(name, "warp/row + chunked dw v1", ms, 4.0 * n * 2);  // read dy, x, dres; write dres
    for (void* p : {(void*)a, (void*)b, (void*)d_w, (void*)out, (void*)res, (void*)dres, (void*)rstd, (void*)dw, scratch})
        CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    if (g_small) {
        check(5, 128);
        check(3, 130);
        return finish("rmsnorm");
    }
    check(1, 128);
    check(37, 232);
    check(37, 130);
    check(1000, 4096);
    check(129, 3072);
    check(300, 8200);
    if (g_bench) bench(16384, 4096);
    return finish("rmsnorm");
}
