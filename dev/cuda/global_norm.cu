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

// gradient_to_bf16 (bf16 held gradients): the rounded copy is bitwise the CPU's round-to-nearest-even (the dropped
// 16 bits of a quarter of the inputs are exactly halfway, 0x8000: ties to even; of a quarter just above, 0x8001:
// up; of half just below, 0x7fff: down, so the rounded values' norm is ~2^-10 below the fp32 values' and a kernel
// that summed the unrounded ones fails), the slot's norm is the rounded values', slot -1 leaves the partials
// alone; bf16_to_float brings the rounded copy back exactly. Odd counts: no vector-width multiple.
// shift 1: every array one element past a 16-byte boundary (the element-by-element path).
static void check_rounding(size_t count, int shift) {
    std::vector<float> h = rand_uniform(count, -1.f, 1.f);
    const uint32_t dropped[4] = {0x8000u, 0x8001u, 0x7fffu, 0x7fffu};
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &h[i], 4);
        u = (u & 0xffff0000u) | dropped[i % 4];
        memcpy(&h[i], &u, 4);
    }
    std::vector<float> rounded = h;
    std::vector<uint16_t> want = to_bf16(rounded);
    float* d_base = dmalloc<float>(count + 1);
    bf16* d_bf16_base = dmalloc<bf16>(count + 1);
    float* d_back_base = dmalloc<float>(count + 1);
    float* d = d_base + shift;
    bf16* d_bf16 = d_bf16_base + shift;
    float* d_back = d_back_base + shift;
    CUDA_CHECK(cudaMemcpy(d, h.data(), count * 4, cudaMemcpyHostToDevice));
    void* scratch = dmalloc<char>(global_norm_scratch_bytes(1));
    float* d_out = dmalloc<float>(2);
    gradient_to_bf16(d_bf16, scratch, 0, d, count, 0);
    global_norm_finish(d_out, d_out + 1, scratch, 1, 0.f, 0);
    float norm_rounded;
    CUDA_CHECK(cudaMemcpy(&norm_rounded, d_out, 4, cudaMemcpyDeviceToHost));
    std::vector<char> before(global_norm_scratch_bytes(1)), after(before.size());
    CUDA_CHECK(cudaMemcpy(before.data(), scratch, before.size(), cudaMemcpyDeviceToHost));
    gradient_to_bf16(d_bf16, scratch, -1, d, count, 0);
    CUDA_CHECK(cudaMemcpy(after.data(), scratch, after.size(), cudaMemcpyDeviceToHost));
    bf16_to_float(d_back, d_bf16, count, 0);
    std::vector<uint16_t> got(count);
    CUDA_CHECK(cudaMemcpy(got.data(), d_bf16, count * 2, cudaMemcpyDeviceToHost));
    std::vector<float> back = download(d_back, count);
    char name[128];
    snprintf(name, sizeof name, "gradient_to_bf16 count=%zu shift %d: round to nearest even (bitwise)", count, shift);
    check_true(name, got == want);
    float want_norm = (float)sqrt(sum_of_squares_cpu(rounded.data(), count));
    float fp32_norm = (float)sqrt(sum_of_squares_cpu(h.data(), count));
    snprintf(name, sizeof name, "gradient_to_bf16 count=%zu: norm of the rounded values", count);
    compare(name, &norm_rounded, &want_norm, 1, 0.f, 1e-6f);
    snprintf(name, sizeof name, "gradient_to_bf16 count=%zu: not the fp32 values' norm (%.3g relative away)", count,
             fabs(fp32_norm - want_norm) / want_norm);
    check_true(name, fabs(norm_rounded - fp32_norm) > 1e-4 * want_norm);
    check_true("gradient_to_bf16 slot -1: no partials written", before == after);
    snprintf(name, sizeof name, "bf16_to_float count=%zu: exact", count);
    check_true(name, bitwise_equal(back.data(), rounded.data(), count * 4));
    // float_accumulate: back += h, one fp32 add per element as this loop does
    float_accumulate(d_back, d, count, 0);
    std::vector<float> sum = download(d_back, count), want_sum(count);
    for (size_t i = 0; i < count; i++) want_sum[i] = rounded[i] + h[i];
    snprintf(name, sizeof name, "float_accumulate count=%zu shift %d: out += in (bitwise)", count, shift);
    check_true(name, bitwise_equal(sum.data(), want_sum.data(), count * 4));
    for (void* q : {(void*)d_base, (void*)d_bf16_base, (void*)d_back_base, scratch, (void*)d_out}) CUDA_CHECK(cudaFree(q));
}

static void bench(size_t count) {
    float* d = device_random_f32(count);
    void* scratch = dmalloc<char>(global_norm_scratch_bytes(1));
    float* d_out = dmalloc<float>(2);
    float ms = bench_ms([&] { global_norm_squared_partial(scratch, 0, d, count, 0); global_norm_finish(d_out, d_out + 1, scratch, 1, 1.f, 0); });
    char name[96];
    snprintf(name, sizeof name, "global_norm count=%zuM", count >> 20);
    report_bandwidth(name, "16-byte x8 v2", ms, count * 4.0);
    for (void* q : {(void*)d, scratch, (void*)d_out}) CUDA_CHECK(cudaFree(q));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    check({1}, 0.f);
    check({37, 1000, 5}, 1.f);
    for (int shift = 0; shift < 2; shift++) {
        check_rounding(1, shift);
        check_rounding(1037, shift);
    }
    if (!g_small) {
        check({1000003, 7, 4096 * 4096 + 3}, 100.f);
        check({(size_t)64 << 20}, 1e9f);
        check_rounding(1000003, 0);
        if (g_bench) bench((size_t)256 << 20);
    }
    return finish("global_norm");
}
