// dev/cuda/crossentropy.cu: the LM-head loss over one mini-sequence of bf16 logits, in place.
// CPU reference: crossentropy_forward_backward_cpu, called one row at a time for per-token losses.
// Product kernel: crossentropy_forward_backward (mst_kernels.cuh): one block per row, online softmax.
#include "common.h"

static void check(int N, int V) {
    size_t n = (size_t)N * V;
    std::vector<float> logits = rand_uniform(n, -6.f, 6.f);
    std::vector<int> targets(N);
    for (int i = 0; i < N; i++) targets[i] = rand_int(0, 4) == 0 ? -1 : rand_int(0, V - 1);
    targets[0] = V - 1;
    if (N > 1) targets[N - 1] = -1;
    int counted = 0;
    for (int t : targets) counted += t >= 0;
    float grad_scale = 1.f / std::max(counted * 3, 1);  // as if the batch had more mini-sequences
    bf16* d_logits = upload_bf16(logits);
    int* d_t = upload(targets);
    float* d_loss = dmalloc<float>(N);
    poison(d_loss, N * 4);
    crossentropy_forward_backward(d_logits, d_loss, d_t, N, V, grad_scale, 0);
    std::vector<float> loss_ref(N);
    std::vector<float> grad_ref = logits;
    for (int i = 0; i < N; i++)
        loss_ref[i] = (float)crossentropy_forward_backward_cpu(grad_ref.data() + (size_t)i * V, &targets[i], 1, V, grad_scale);
    char name[128];
    snprintf(name, sizeof name, "crossentropy losses N=%d V=%d", N, V);
    compare(name, download(d_loss, N), loss_ref, 1e-3f, 1e-4f);
    snprintf(name, sizeof name, "crossentropy logit gradient N=%d V=%d", N, V);
    compare(name, download_bf16(d_logits, n), grad_ref, 1e-3f * grad_scale, 1e-2f);
    for (void* p : {(void*)d_logits, (void*)d_t, (void*)d_loss}) CUDA_CHECK(cudaFree(p));
}

static void bench(int N, int V) {
    size_t n = (size_t)N * V;
    std::vector<int> targets(N);
    for (auto& t : targets) t = rand_int(0, V - 1);
    bf16* d_logits = device_random_bf16(n, -6.f, 6.f);
    int* d_t = upload(targets);
    float* d_loss = dmalloc<float>(N);
    // in place: the logits become gradients; timing on gradients is the same work (values stay finite)
    float ms = bench_ms([&] { crossentropy_forward_backward(d_logits, d_loss, d_t, N, V, 1.f / N, 0); });
    char name[96];
    snprintf(name, sizeof name, "crossentropy N=%d V=%d", N, V);
    report_bandwidth(name, "block/row online v1", ms, 2.0 * n * 2);  // minimum: read once, write once
    for (void* p : {(void*)d_logits, (void*)d_t, (void*)d_loss}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check(7, 504);
    check(3, 37);
    if (!g_small) {
        check(37, 504);
        check(17, 503);
        check(9, 128256);
        check(64, 4099);
        if (g_bench) bench(2048, 128256);
    }
    return finish("crossentropy");
}
