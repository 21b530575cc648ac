// dev/cuda/global_norm.cu: global gradient norm over several fp32 buffers, deterministic two-stage reduction,
// result (and the clip scale) on the device. CPU reference: sum_of_squares_cpu.
// Product kernels: global_norm_squared_partial / global_norm_finish (mst_kernels.cuh).
#include "common.h"

static void check(std::vector<size_t> counts, float max_norm) {
    int slots = (int)counts.size();
    void* scratch = dmalloc<char>(global_norm_scratch_bytes(slots));
    std::vector<float*> bufs;
    double ref = 0.0;
    for (size_t c : counts) {
        std::vector<float> h = rand_uniform(c, -1.f, 1.f);
        ref += sum_of_squares_cpu(h.data(), c);
        bufs.push_back(upload(h));
    }
    float* d_out = dmalloc<float>(2);
    float got[2][2];
    for (int r = 0; r < 2; r++) {
        poison(d_out, 8);
        for (int s = 0; s < slots; s++) global_norm_squared_partial(scratch, s, bufs[s], counts[s], 0);
        global_norm_finish(d_out, d_out + 1, scratch, slots, max_norm, 0);
        CUDA_CHECK(cudaMemcpy(got[r], d_out, 8, cudaMemcpyDeviceToHost));
    }
    float norm_ref = (float)sqrt(ref);
    float clip_ref = (max_norm > 0 && norm_ref > max_norm) ? max_norm / (norm_ref + 1e-6f) : 1.f;
    char name[128];
    snprintf(name, sizeof name, "global_norm slots=%d first count=%zu", slots, counts[0]);
    compare(name, &got[0][0], &norm_ref, 1, 0.f, 1e-5f);
    snprintf(name, sizeof name, "global_norm clip scale (max_norm %g)", max_norm);
    compare(name, &got[0][1], &clip_ref, 1, 0.f, 1e-5f);
    check_true("global_norm deterministic", bitwise_equal(got[0], got[1], 8));
    for (float* b : bufs) CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(scratch));
    CUDA_CHECK(cudaFree(d_out));
}

static void bench(size_t count) {
    float* d = device_random_f32(count);
    void* scratch = dmalloc<char>(global_norm_scratch_bytes(1));
    float* d_out = dmalloc<float>(2);
    float ms = bench_ms([&] { global_norm_squared_partial(scratch, 0, d, count, 0); global_norm_finish(d_out, d_out + 1, scratch, 1, 1.f, 0); });
    char name[96];
    snprintf(name, sizeof name, "global_norm count=%zuM", count >> 20);
    report_bandwidth(name, "two-stage v1", ms, count * 4.0);
    for (void* q : {(void*)d, scratch, (void*)d_out}) CUDA_CHECK(cudaFree(q));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check({1}, 0.f);
    check({37, 1000, 5}, 1.f);
    if (!g_small) {
        check({1000003, 7, 4096 * 4096 + 3}, 100.f);
        check({(size_t)64 << 20}, 1e9f);
        if (g_bench) bench((size_t)256 << 20);
    }
    return finish("global_norm");
}
