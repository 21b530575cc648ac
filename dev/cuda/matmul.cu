// dev/cuda/matmul.cu: the cuBLASLt matmuls (bf16 in, fp32 accumulate): forward (bf16 out), backward to the
// input (bf16, optionally accumulating), backward to the weight (fp32, accumulating across calls).
// CPU reference: matmul_forward_cpu / matmul_backward_cpu. Product: matmul_* in mst_kernels.cuh (matmul_forward_add:
// the residual adds, the addend a separate array read in the epilogue).
#include "common.h"

static void check(int N, int IC, int OC) {
    ensure_matmul();
    std::vector<float> x = rand_uniform((size_t)N * IC, -1.f, 1.f), w = rand_uniform((size_t)OC * IC, -1.f, 1.f);
    std::vector<float> dy = rand_uniform((size_t)N * OC, -1.f, 1.f), dx0 = rand_uniform((size_t)N * IC, -1.f, 1.f);
    std::vector<float> dw0 = rand_uniform((size_t)OC * IC, -1.f, 1.f);
    to_bf16(dx0);
    bf16 *d_x = upload_bf16(x), *d_w = upload_bf16(w), *d_dy = upload_bf16(dy), *d_dx = upload_bf16(dx0);
    bf16* d_y = dmalloc<bf16>((size_t)N * OC);
    float* d_dw = upload(dw0);
    char name[128];
    poison(d_y, (size_t)N * OC * 2);
    matmul_forward(d_y, d_x, d_w, N, IC, OC, false, 0);
    std::vector<float> y_ref((size_t)N * OC);
    matmul_forward_cpu(y_ref.data(), x.data(), w.data(), N, IC, OC);
    float tol = 1e-2f * sqrtf((float)IC) / 4;
    snprintf(name, sizeof name, "matmul_forward N=%d IC=%d OC=%d", N, IC, OC);
    compare(name, download_bf16(d_y, (size_t)N * OC), y_ref, tol, 1e-2f);
    // accumulate into y: y += x W^T
    matmul_forward(d_y, d_x, d_w, N, IC, OC, true, 0);
    for (auto& e : y_ref) e *= 2.f;
    snprintf(name, sizeof name, "matmul_forward accumulate N=%d IC=%d OC=%d", N, IC, OC);
    compare(name, download_bf16(d_y, (size_t)N * OC), y_ref, 2 * tol, 1e-2f);

    // out = addend + x W^T with out != addend (the trainer's residual adds): the bits of a copy of the addend then
    // matmul_forward's accumulate; the addend untouched
    bf16 *d_sum = dmalloc<bf16>((size_t)N * OC), *d_copy = dmalloc<bf16>((size_t)N * OC);
    std::vector<float> addend = download_bf16(d_y, (size_t)N * OC);
    poison(d_sum, (size_t)N * OC * 2);
    matmul_forward_add(d_sum, d_y, d_x, d_w, N, IC, OC, 0);
    CUDA_CHECK(cudaMemcpy(d_copy, d_y, (size_t)N * OC * 2, cudaMemcpyDeviceToDevice));
    matmul_forward(d_copy, d_x, d_w, N, IC, OC, true, 0);
    std::vector<float> sum = download_bf16(d_sum, (size_t)N * OC), copied = download_bf16(d_copy, (size_t)N * OC);
    snprintf(name, sizeof name, "matmul_forward_add bitwise copy + accumulate, addend kept N=%d IC=%d OC=%d", N, IC, OC);
    check_true(name, bitwise_equal(sum.data(), copied.data(), sum.size() * 4) &&
                         bitwise_equal(addend.data(), download_bf16(d_y, (size_t)N * OC).data(), addend.size() * 4));
    for (auto& e : y_ref) e *= 1.5f;  // 3 x W^T
    snprintf(name, sizeof name, "matmul_forward_add N=%d IC=%d OC=%d", N, IC, OC);
    compare(name, sum, y_ref, 3 * tol, 1e-2f);
    CUDA_CHECK(cudaFree(d_sum));
    CUDA_CHECK(cudaFree(d_copy));

    std::vector<float> dx_ref = dx0, dw_ref = dw0;
    matmul_backward_cpu(dx_ref.data(), dw_ref.data(), dy.data(), x.data(), w.data(), N, IC, OC);
    matmul_backward_input(d_dx, d_dy, d_w, N, IC, OC, true, 0);
    matmul_backward_weight(d_dw, d_dy, d_x, N, IC, OC, 0);
    snprintf(name, sizeof name, "matmul_backward_input accumulate N=%d IC=%d OC=%d", N, IC, OC);
    compare(name, download_bf16(d_dx, (size_t)N * IC), dx_ref, 1e-2f * sqrtf((float)OC) / 4 + 1e-2f, 1e-2f);
    snprintf(name, sizeof name, "matmul_backward_weight accumulate N=%d IC=%d OC=%d", N, IC, OC);
    compare(name, download(d_dw, (size_t)OC * IC), dw_ref, 1e-4f * N, 1e-4f);
    // overwrite mode of backward_input
    poison(d_dx, (size_t)N * IC * 2);
    matmul_backward_input(d_dx, d_dy, d_w, N, IC, OC, false, 0);
    std::vector<float> dx2((size_t)N * IC, 0.f);
    matmul_backward_cpu(dx2.data(), nullptr, dy.data(), x.data(), w.data(), N, IC, OC);
    snprintf(name, sizeof name, "matmul_backward_input write N=%d IC=%d OC=%d", N, IC, OC);
    compare(name, download_bf16(d_dx, (size_t)N * IC), dx2, 1e-2f * sqrtf((float)OC) / 4, 1e-2f);
    // weight gradient over two mini-sequences equals one call over the whole
    if (N >= 2) {
        int n1 = N / 2;
        CUDA_CHECK(cudaMemcpy(d_dw, dw0.data(), dw0.size() * 4, cudaMemcpyHostToDevice));
        matmul_backward_weight(d_dw, d_dy, d_x, n1, IC, OC, 0);
        matmul_backward_weight(d_dw, d_dy + (size_t)n1 * OC, d_x + (size_t)n1 * IC, N - n1, IC, OC, 0);
        snprintf(name, sizeof name, "matmul_backward_weight in two mini-sequences N=%d", N);
        compare(name, download(d_dw, (size_t)OC * IC), dw_ref, 1e-4f * N, 1e-4f);
    }
    for (void* p : {(void*)d_x, (void*)d_w, (void*)d_dy, (void*)d_dx, (void*)d_y, (void*)d_dw}) CUDA_CHECK(cudaFree(p));
}

static void bench(int N, int IC, int OC) {
    ensure_matmul();
    bf16 *x = device_random_bf16((size_t)N * IC), *w = device_random_bf16((size_t)OC * IC), *dy = device_random_bf16((size_t)N * OC), *y = dmalloc<bf16>((size_t)N * OC), *dx = dmalloc<bf16>((size_t)N * IC);
    float* dw = dmalloc<float>((size_t)OC * IC);
    CUDA_CHECK(cudaMemset(dw, 0, (size_t)OC * IC * 4));
    double flops = 2.0 * N * IC * (double)OC;
    char name[96];
    float ms = bench_ms([&] { matmul_forward(y, x, w, N, IC, OC, false, 0); });
    snprintf(name, sizeof name, "matmul_forward N=%d IC=%d OC=%d", N, IC, OC);
    report_flops(name, "cuBLASLt", ms, flops);
    ms = bench_ms([&] { matmul_backward_input(dx, dy, w, N, IC, OC, false, 0); });
    snprintf(name, sizeof name, "matmul_backward_input N=%d IC=%d OC=%d", N, IC, OC);
    report_flops(name, "cuBLASLt", ms, flops);
    ms = bench_ms([&] { matmul_backward_weight(dw, dy, x, N, IC, OC, 0); });
    snprintf(name, sizeof name, "matmul_backward_weight N=%d IC=%d OC=%d", N, IC, OC);
    report_flops(name, "cuBLASLt fp32 C", ms, flops);
    for (void* p : {(void*)x, (void*)w, (void*)dy, (void*)y, (void*)dx, (void*)dw}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check(37, 128, 232);
    check(5, 64, 504);
    if (!g_small) {
        check(1, 128, 504);
        check(129, 512, 1376);
        check(300, 1376, 512);
        if (g_bench) {
            matmul_tflops();
            bench(8192, 4096, 14336);
            bench(8192, 14336, 4096);
            bench(2048, 4096, 128256);
        }
    }
    return finish("matmul");
}
