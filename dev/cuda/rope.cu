// dev/cuda/rope.cu: rotate-half RoPE in place, forward and inverse (the backward), tables from
// rope_tables() (Llama 3.1 scaling lives in the tables). CPU reference: rope_cpu. Product kernels: rope_forward (v1),
// rope_qk_v2 (v2), rope_qk (v2 where half the head dim is a multiple of 8, else v1).
#include "common.h"

// v1 (rope_forward: one thread per pair, one tensor per launch) and v2 (rope_qk_v2: q and k in one launch, 8 pairs
// a thread, 16-byte loads) are both product kernels now; the trainer's rope_qk uses v2 after its start-up self-test.
static void rope_qk(bf16* q, bf16* k, const float* cos_table, const float* sin_table, int B, int T, int H, int KV, int hd,
                    bool inverse) {
    rope_qk_v2(q, k, cos_table, sin_table, B, T, H, KV, hd, inverse, 0);
}

// the model's cos/sin tables for T positions, on the host and uploaded
static void make_tables(const ModelConfig& c, int T, std::vector<float>& cs, std::vector<float>& sn, float** d_cos, float** d_sin) {
    int half = c.head_dim() / 2;
    cs.resize((size_t)T * half);
    sn.resize((size_t)T * half);
    rope_tables(c, T, cs.data(), sn.data());
    *d_cos = upload(cs);
    *d_sin = upload(sn);
}

static void check(const char* model, int B, int T, int heads) {
    ModelConfig c;
    if (!find_model_config(model, &c)) { printf("FAIL no model %s\n", model); g_failures++; return; }
    int hd = c.head_dim();
    std::vector<float> cs, sn;
    float *d_cos, *d_sin;
    make_tables(c, T, cs, sn, &d_cos, &d_sin);
    size_t n = (size_t)B * T * heads * hd;
    std::vector<float> x = rand_uniform(n, -2.f, 2.f);
    bf16* d_x = upload_bf16(x);
    char name[128];
    for (int inverse = 0; inverse < 2; inverse++) {
        std::vector<float> ref = x;
        rope_cpu(ref.data(), cs.data(), sn.data(), B, T, heads, hd, inverse);
        bf16* d_y = dmalloc<bf16>(n);
        CUDA_CHECK(cudaMemcpy(d_y, d_x, n * 2, cudaMemcpyDeviceToDevice));
        rope_forward(d_y, d_cos, d_sin, B, T, heads, hd, inverse, 0);
        snprintf(name, sizeof name, "rope %s %s B=%d T=%d heads=%d hd=%d", inverse ? "inverse" : "forward", model, B, T, heads, hd);
        compare(name, download_bf16(d_y, n), ref, 1e-2f, 1e-2f);
        CUDA_CHECK(cudaFree(d_y));
    }
    // v2: q (heads) and k (KV = max(1, heads / 4) heads) in one launch
    int KV = std::max(1, heads / 4);
    size_t nk = (size_t)B * T * KV * hd;
    std::vector<float> xk = rand_uniform(nk, -2.f, 2.f);
    bf16* d_k0 = upload_bf16(xk);
    for (int inverse = 0; inverse < 2; inverse++) {
        std::vector<float> ref_q = x, ref_k = xk;
        rope_cpu(ref_q.data(), cs.data(), sn.data(), B, T, heads, hd, inverse);
        rope_cpu(ref_k.data(), cs.data(), sn.data(), B, T, KV, hd, inverse);
        bf16 *d_q = dmalloc<bf16>(n), *d_k = dmalloc<bf16>(nk);
        CUDA_CHECK(cudaMemcpy(d_q, d_x, n * 2, cudaMemcpyDeviceToDevice));
        CUDA_CHECK(cudaMemcpy(d_k, d_k0, nk * 2, cudaMemcpyDeviceToDevice));
        rope_qk(d_q, d_k, d_cos, d_sin, B, T, heads, KV, hd, inverse);
        snprintf(name, sizeof name, "rope v2 q+k %s %s B=%d T=%d heads=%d/%d hd=%d: q", inverse ? "inverse" : "forward", model, B, T, heads, KV, hd);
        compare(name, download_bf16(d_q, n), ref_q, 1e-2f, 1e-2f);
        snprintf(name, sizeof name, "rope v2 q+k %s %s B=%d T=%d heads=%d/%d hd=%d: k", inverse ? "inverse" : "forward", model, B, T, heads, KV, hd);
        compare(name, download_bf16(d_k, nk), ref_k, 1e-2f, 1e-2f);
        CUDA_CHECK(cudaFree(d_q));
        CUDA_CHECK(cudaFree(d_k));
    }
    for (void* p : {(void*)d_cos, (void*)d_sin, (void*)d_x, (void*)d_k0}) CUDA_CHECK(cudaFree(p));
}

static void bench(int B, int T, int heads) {
    ModelConfig c;
    find_model_config("llama3.1-8b", &c);
    int hd = c.head_dim(), half = hd / 2;
    std::vector<float> cs, sn;
    float *d_cos, *d_sin;
    make_tables(c, T, cs, sn, &d_cos, &d_sin);
    size_t n = (size_t)B * T * heads * hd;
    std::vector<float> x = rand_uniform(n, -2.f, 2.f);
    bf16* d_x = upload_bf16(x);
    float ms = bench_ms([&] { rope_forward(d_x, d_cos, d_sin, B, T, heads, hd, false, 0); });
    char name[96];
    snprintf(name, sizeof name, "rope_forward B=%d T=%d heads=%d hd=%d", B, T, heads, hd);
    report_bandwidth(name, "thread/pair v1", ms, 2.0 * n * 2 + 2.0 * T * half * 4);
    // q (heads) and k (heads / 4) as the trainer rotates them: v1 twice, v2 once
    int KV = heads / 4;
    size_t nk = (size_t)B * T * KV * hd;
    bf16* d_k = device_random_bf16(nk);
    double bytes = 2.0 * (n + nk) * 2 + 2.0 * T * half * 4;
    snprintf(name, sizeof name, "rope q+k B=%d T=%d heads=%d/%d hd=%d", B, T, heads, KV, hd);
    ms = bench_ms([&] {
        rope_forward(d_x, d_cos, d_sin, B, T, heads, hd, false, 0);
        rope_forward(d_k, d_cos, d_sin, B, T, KV, hd, false, 0);
    });
    report_bandwidth(name, "thread/pair v1 x2", ms, bytes);
    ms = bench_ms([&] { rope_qk(d_x, d_k, d_cos, d_sin, B, T, heads, KV, hd, false); });
    report_bandwidth(name, "q+k x8 pairs v2", ms, bytes);
    for (void* p : {(void*)d_cos, (void*)d_sin, (void*)d_x, (void*)d_k}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check("test-tiny", 2, 37, 3);
    if (!g_small) {
        check("llama3.1-8b", 1, 1000, 8);
        check("llama3-8b", 2, 129, 4);
        check("test-2layer", 1, 9000, 2);
        if (g_bench) bench(1, 8192, 32);
    }
    return finish("rope");
}
