// dev/cuda/embedding.cu: token embedding forward and (deterministic) backward.
// CPU reference: embedding_forward_cpu / embedding_backward_cpu. Product kernels: embedding_forward,
// embedding_backward (mst_kernels.cuh). The backward sums each dwte element over n in ascending order,
// the CPU's order, so it must match the CPU exactly and be bitwise reproducible.
#include "common.h"

static void check(int N, int V, int C) {
    std::vector<float> wte = rand_uniform((size_t)V * C, -1.f, 1.f), dout = rand_uniform((size_t)N * C, -1.f, 1.f);
    std::vector<float> dwte0 = rand_uniform((size_t)V * C, -1.f, 1.f);
    std::vector<int> tokens(N);
    int hot = rand_int(0, V - 1);
    for (int n = 0; n < N; n++) tokens[n] = rand_int(0, 3) == 0 ? hot : rand_int(0, V - 1);  // many repeats
    bf16 *d_wte = upload_bf16(wte), *d_dout = upload_bf16(dout), *d_out = dmalloc<bf16>((size_t)N * C);
    int* d_tok = upload(tokens);
    float* d_dwte = upload(dwte0);
    char name[128];
    poison(d_out, (size_t)N * C * 2);
    embedding_forward(d_out, d_tok, d_wte, N, C, 0);
    std::vector<float> out_ref((size_t)N * C);
    embedding_forward_cpu(out_ref.data(), tokens.data(), wte.data(), N, C);
    snprintf(name, sizeof name, "embedding_forward N=%d V=%d C=%d", N, V, C);
    compare(name, download_bf16(d_out, (size_t)N * C), out_ref, 0.f, 0.f);
    embedding_backward(d_dwte, d_dout, d_tok, N, C, 0);
    std::vector<float> ref = dwte0;
    embedding_backward_cpu(ref.data(), dout.data(), tokens.data(), N, C);
    snprintf(name, sizeof name, "embedding_backward (accumulated, exact) N=%d V=%d C=%d", N, V, C);
    compare(name, download(d_dwte, (size_t)V * C), ref, 0.f, 0.f);
    for (void* p : {(void*)d_wte, (void*)d_dout, (void*)d_out, (void*)d_tok, (void*)d_dwte}) CUDA_CHECK(cudaFree(p));
}

static void bench(int N, int V, int C) {
    std::vector<int> tokens(N);
    for (auto& t : tokens) t = rand_int(0, V - 1);
    bf16 *d_wte = device_random_bf16((size_t)V * C), *d_dout = device_random_bf16((size_t)N * C), *d_out = dmalloc<bf16>((size_t)N * C);
    int* d_tok = upload(tokens);
    float* d_dwte = dmalloc<float>((size_t)V * C);
    CUDA_CHECK(cudaMemset(d_dwte, 0, (size_t)V * C * 4));
    char name[96];
    float ms = bench_ms([&] { embedding_forward(d_out, d_tok, d_wte, N, C, 0); });
    snprintf(name, sizeof name, "embedding_forward N=%d C=%d", N, C);
    report_bandwidth(name, "block/row v1", ms, 2.0 * N * C * 2);
    ms = bench_ms([&] { embedding_backward(d_dwte, d_dout, d_tok, N, C, 0); }, 1, 5);
    snprintf(name, sizeof name, "embedding_backward N=%d C=%d", N, C);
    report_bandwidth(name, "column-serial v1", ms, (double)N * C * (2 + 8));
    for (void* p : {(void*)d_wte, (void*)d_dout, (void*)d_out, (void*)d_tok, (void*)d_dwte}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check(37, 504, 128);
    check(5, 504, 130);
    if (!g_small) {
        check(1000, 504, 131);
        check(4096, 128256, 64);
        if (g_bench) bench(8192, 128256, 4096);
    }
    return finish("embedding");
}
