// dev/cuda/embedding.cu: token embedding forward and (deterministic) backward.
// CPU reference: embedding_forward_cpu / embedding_backward_cpu. Product kernels: embedding_forward,
// embedding_backward (mst_kernels.cuh). Both backward versions sum each dwte element over n in ascending
// order, the CPU's order, so each must match the CPU exactly and be bitwise reproducible.
//   v1 (history, below): one thread per 2 columns walks all N tokens serially.
//   v2 (product): the tokens bucketed by id on the host (mst/token_buckets.h), one block per distinct id
//      adding its rows in ascending position, 8 columns per thread.
#include "common.h"
#include "mst/token_buckets.h"

// v1: matches embedding_backward_cpu; each thread owns 2 columns and walks n in ascending order
static __global__ void embedding_backward_v1_kernel(float* dwte, const bf16* dout, const int* tokens, int N, int C) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * 2;
    if (c >= C) return;
    bool two = c + 1 < C;
    for (int n = 0; n < N; n++) {
        int tok = __ldg(tokens + n);
        float* dw = dwte + (size_t)tok * C + c;
        const bf16* d = dout + (size_t)n * C + c;
        dw[0] += __bfloat162float(d[0]);
        if (two) dw[1] += __bfloat162float(d[1]);
    }
}
static void embedding_backward_v1(float* dwte, const bf16* dout, const int* tokens, int N, int C) {
    int threads = 64;
    mst::launch<embedding_backward_v1_kernel>(mst_ceil_div(mst_ceil_div(C, 2), threads), threads, 0, 0, dwte, dout, tokens, N, C);
    CUDA_CHECK(cudaGetLastError());
}

// N tokens in [0, V): a quarter of them one hot id (long buckets), the rest uniform
static std::vector<int> random_tokens(int N, int V, bool hot) {
    std::vector<int> tokens(N);
    int hot_id = rand_int(0, V - 1);
    for (int n = 0; n < N; n++) tokens[n] = hot && rand_int(0, 3) == 0 ? hot_id : rand_int(0, V - 1);
    return tokens;
}

// the tokens, uploaded with their buckets as train_llama's upload_tokens does
struct DeviceTokens {
    TokenBuckets buckets;
    int* tokens;
    int* table;
};
static DeviceTokens upload_tokens(const std::vector<int>& tokens, int V) {
    DeviceTokens d;
    if (!bucket_tokens(&d.buckets, tokens.data(), (int)tokens.size(), V)) { fprintf(stderr, "token out of range\n"); exit(1); }
    d.tokens = upload(tokens);
    d.table = upload(d.buckets.table);
    return d;
}

static void check(int N, int V, int C) {
    std::vector<float> wte = rand_uniform((size_t)V * C, -1.f, 1.f), dout = rand_uniform((size_t)N * C, -1.f, 1.f);
    std::vector<float> dwte0 = rand_uniform((size_t)V * C, -1.f, 1.f);
    std::vector<int> tokens = random_tokens(N, V, true);  // many repeats
    DeviceTokens tok = upload_tokens(tokens, V);
    bf16 *d_wte = upload_bf16(wte), *d_dout = upload_bf16(dout), *d_out = dmalloc<bf16>((size_t)N * C);
    float* d_dwte = upload(dwte0);
    char name[128];
    poison(d_out, (size_t)N * C * 2);
    embedding_forward(d_out, tok.tokens, d_wte, N, C, 0);
    std::vector<float> out_ref((size_t)N * C);
    embedding_forward_cpu(out_ref.data(), tokens.data(), wte.data(), N, C);
    snprintf(name, sizeof name, "embedding_forward N=%d V=%d C=%d", N, V, C);
    compare(name, download_bf16(d_out, (size_t)N * C), out_ref, 0.f, 0.f);

    // accumulated onto random values, exact (atol = rtol = 0: the CPU's additions in the CPU's order)
    std::vector<float> ref = dwte0;
    embedding_backward_cpu(ref.data(), dout.data(), tokens.data(), N, C);
    embedding_backward(d_dwte, d_dout, tok.table, tok.buckets.count, N, C, 0);
    std::vector<float> first = download(d_dwte, (size_t)V * C);
    snprintf(name, sizeof name, "embedding_backward v2 (bucketed, accumulated, exact) N=%d V=%d C=%d", N, V, C);
    compare(name, first, ref, 0.f, 0.f);
    CUDA_CHECK(cudaMemcpy(d_dwte, dwte0.data(), dwte0.size() * 4, cudaMemcpyHostToDevice));
    embedding_backward(d_dwte, d_dout, tok.table, tok.buckets.count, N, C, 0);
    std::vector<float> second = download(d_dwte, (size_t)V * C);
    snprintf(name, sizeof name, "embedding_backward v2 bitwise equal across runs N=%d C=%d", N, C);
    check_true(name, bitwise_equal(first.data(), second.data(), first.size() * 4));

    CUDA_CHECK(cudaMemcpy(d_dwte, dwte0.data(), dwte0.size() * 4, cudaMemcpyHostToDevice));
    embedding_backward_v1(d_dwte, d_dout, tok.tokens, N, C);
    snprintf(name, sizeof name, "embedding_backward v1 (column-serial, accumulated, exact) N=%d V=%d C=%d", N, V, C);
    compare(name, download(d_dwte, (size_t)V * C), ref, 0.f, 0.f);
    for (void* p : {(void*)d_wte, (void*)d_dout, (void*)d_out, (void*)tok.tokens, (void*)tok.table, (void*)d_dwte})
        CUDA_CHECK(cudaFree(p));
}

// bytes: v1 reads dout and reads and writes a dwte element per token and column, N x C x (2 + 8); v2
// reads dout once and each touched dwte row once and writes it, N x C x 2 + buckets x C x 8
static void bench_backward(int N, int V, int C, bool hot, bool with_v1) {
    std::vector<int> tokens = random_tokens(N, V, hot);
    auto t0 = std::chrono::high_resolution_clock::now();
    DeviceTokens tok = upload_tokens(tokens, V);
    double bucket_ms = std::chrono::duration<double, std::milli>(std::chrono::high_resolution_clock::now() - t0).count();
    bf16* d_dout = device_random_bf16((size_t)N * C);
    float* d_dwte = dmalloc<float>((size_t)V * C);
    CUDA_CHECK(cudaMemset(d_dwte, 0, (size_t)V * C * 4));
    char name[128];
    snprintf(name, sizeof name, "embedding_backward N=%d C=%d %s", N, C, hot ? "(1/4 one id)" : "(uniform ids)");
    int count = tok.buckets.count;
    float v2 = bench_ms([&] { embedding_backward(d_dwte, d_dout, tok.table, count, N, C, 0); });
    report_bandwidth(name, "bucketed v2", v2, (double)N * C * 2 + (double)count * C * 8);
    printf("  %d buckets; host bucketing + upload %.2f ms\n", count, bucket_ms);
    if (with_v1) {
        float v1 = bench_ms([&] { embedding_backward_v1(d_dwte, d_dout, tok.tokens, N, C); }, 1, 3);
        report_bandwidth(name, "column-serial v1", v1, (double)N * C * (2 + 8));
        printf("  v2 is %.1fx v1\n", v1 / v2);
    }
    for (void* p : {(void*)d_dout, (void*)tok.tokens, (void*)tok.table, (void*)d_dwte}) CUDA_CHECK(cudaFree(p));
}

static void bench_forward(int N, int V, int C) {
    std::vector<int> tokens = random_tokens(N, V, false);
    int* d_tok = upload(tokens);
    bf16 *d_wte = device_random_bf16((size_t)V * C), *d_out = dmalloc<bf16>((size_t)N * C);
    float ms = bench_ms([&] { embedding_forward(d_out, d_tok, d_wte, N, C, 0); });
    char name[96];
    snprintf(name, sizeof name, "embedding_forward N=%d C=%d", N, C);
    report_bandwidth(name, "block/row v1", ms, 2.0 * N * C * 2);
    for (void* p : {(void*)d_wte, (void*)d_out, (void*)d_tok}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check(37, 504, 128);
    check(5, 504, 130);
    if (!g_small) {
        check(1000, 504, 131);
        check(4096, 128256, 64);
        check(3001, 2000, 2056);  // C / 8 = 257 column groups: a partial warp
        if (g_bench) {
            bench_forward(8192, 128256, 4096);
            bench_backward(60000, 128256, 4096, false, true);  // llama3-8b at T = 60000: the issue's target
            bench_backward(60000, 128256, 4096, true, false);
            bench_backward(60000, 128256, 2048, false, true);  // llama3.2-1b
        }
    }
    return finish("embedding");
}
