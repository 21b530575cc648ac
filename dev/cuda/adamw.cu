// dev/cuda/adamw.cu: AdamW over bf16 parameters, fp32 gradients, fp32 or bf16 (stochastically rounded)
// optimizer state, optional fp32 master weights, and a gradient scale (clipping) from the host or the device.
// CPU reference: adamw_cpu (fp32 everything). Product kernel: adamw_update<S> (mst_kernels.cuh).
#include "common.h"

// the kernel's arrays on the device: bf16 parameters, fp32 master weights (or null), zeroed m and v, a
// gradient, the device-side clip scale
template <typename S>
struct DeviceAdamw {
    bf16* p; float* master; S* m; S* v; float* g; float* clip;
    DeviceAdamw(std::vector<float>& params, bool use_master, float clip_scale) {
        size_t count = params.size();
        p = upload_bf16(params);
        master = use_master ? upload(params) : nullptr;
        m = dmalloc<S>(count);
        v = dmalloc<S>(count);
        CUDA_CHECK(cudaMemset(m, 0, count * sizeof(S)));
        CUDA_CHECK(cudaMemset(v, 0, count * sizeof(S)));
        g = dmalloc<float>(count);
        clip = upload(std::vector<float>{clip_scale});
    }
    void free() { for (void* q : {(void*)p, (void*)master, (void*)m, (void*)v, (void*)g, (void*)clip}) CUDA_CHECK(cudaFree(q)); }
};

template <typename S>
static void check(size_t count, bool use_master, int steps) {
    bool bf16_state = sizeof(S) == 2;
    float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 0.5f;
    std::vector<float> p = rand_uniform(count, -1.f, 1.f);
    to_bf16(p);  // the CPU starts from the same (bf16) parameters
    std::vector<float> m(count, 0.f), v(count, 0.f);
    DeviceAdamw<S> d(p, use_master, clip);
    bf16* d_p = d.p;
    float *d_master = d.master, *d_g = d.g, *d_clip = d.clip;
    S *d_m = d.m, *d_v = d.v;
    for (int t = 1; t <= steps; t++) {
        std::vector<float> g = rand_uniform(count, -1.f, 1.f);
        CUDA_CHECK(cudaMemcpy(d_g, g.data(), count * 4, cudaMemcpyHostToDevice));
        for (auto& x : g) x *= 2.f * clip;  // host scale 2, device scale clip
        adamw_cpu(p.data(), g.data(), m.data(), v.data(), count, t, lr, b1, b2, eps, wd);
        adamw_update<S>(d_p, d_master, d_g, d_m, d_v, count, t, lr, b1, b2, eps, wd, 2.f, d_clip, 1234u + t, 0);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    char name[128];
    const char* cfg = bf16_state ? (use_master ? "bf16 state + master" : "bf16 state") : (use_master ? "fp32 state + master" : "fp32 state");
    // bf16 params without master: stochastic rounding each step; a few ulps of bf16 (2^-8 relative) after a few steps
    float ptol = use_master ? 4e-3f : 1.6e-2f;
    snprintf(name, sizeof name, "adamw params (%s) count=%zu steps=%d", cfg, count, steps);
    compare(name, download_bf16(d_p, count), p, ptol, ptol);
    if (use_master) {
        snprintf(name, sizeof name, "adamw master (%s) count=%zu", cfg, count);
        // bf16 state: m and v carry up to one bf16 ulp (2^-7 relative, stochastic rounding) each step, so
        // each step's update lr m/sqrt(v) may differ by a few ulps of lr
        float master_tol = bf16_state ? steps * lr * 3.f / 128.f : 1e-5f;
        compare(name, download(d_master, count), p, master_tol, 1e-5f);
    }
    std::vector<float> gm(count), gv(count);
    if (bf16_state) { gm = download_bf16((bf16*)d_m, count); gv = download_bf16((bf16*)d_v, count); }
    else { gm = download((float*)d_m, count); gv = download((float*)d_v, count); }
    float stol = bf16_state ? 2e-2f : 1e-5f;
    snprintf(name, sizeof name, "adamw m (%s) count=%zu", cfg, count);
    compare(name, gm, m, stol * max_abs(m), stol);
    snprintf(name, sizeof name, "adamw v (%s) count=%zu", cfg, count);
    compare(name, gv, v, stol * max_abs(v), stol);
    if (bf16_state) {
        // stochastic rounding is unbiased: the mean error of m over many elements is far below one bf16 ulp
        double bias = 0, mag = 0;
        for (size_t i = 0; i < count; i++) { bias += (double)gm[i] - m[i]; mag += fabs(m[i]); }
        snprintf(name, sizeof name, "adamw bf16 m unbiased (mean err / mean |m| = %.2g)", fabs(bias) / std::max(mag, 1e-30));
        check_true(name, fabs(bias) / std::max(mag, 1e-30) < 1e-3);
    }
    d.free();
}

// One update (p_after - p_before) against the CPU's from the same state, at a learning rate whose update is
// many bf16 ulps of the weights (|p| <= 0.02, Llama's init: ulp <= 2^-13 = 1.2e-4; lr 1e-3 moves a weight
// by ~1e-3), so an update that is skipped, halved or clipped twice fails: each element within one bf16 ulp
// of p_after (stochastic rounding of the weight; with master weights, 1e-3 lr on the fp32 master) plus
// 1e-3 lr, and the projection sum(d_gpu d_cpu) / sum(d_cpu^2) within 2% of 1 (skipped: 0, halved: 0.5).
// The GPU's own state after 3 steps is the starting point, downloaded, so bf16 state enters exactly.
template <typename S>
static void check_update(size_t count, bool use_master) {
    bool bf16_state = sizeof(S) == 2;
    float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 0.5f;
    std::vector<float> p = rand_uniform(count, -0.02f, 0.02f);
    to_bf16(p);
    DeviceAdamw<S> d(p, use_master, clip);
    bf16* d_p = d.p;
    float *d_master = d.master, *d_g = d.g, *d_clip = d.clip;
    S *d_m = d.m, *d_v = d.v;
    const int t = 4;
    for (int step = 1; step <= t; step++) {
        if (step == t) CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> g = rand_uniform(count, -1.f, 1.f);
        CUDA_CHECK(cudaMemcpy(d_g, g.data(), count * 4, cudaMemcpyHostToDevice));
        if (step < t) {
            adamw_update<S>(d_p, d_master, d_g, d_m, d_v, count, step, lr, b1, b2, eps, wd, 1.f, d_clip, 99u + step, 0);
            continue;
        }
        // the state before step t, as the GPU holds it
        std::vector<float> before = use_master ? download(d_master, count) : download_bf16(d_p, count);
        std::vector<float> m = bf16_state ? download_bf16((bf16*)d_m, count) : download((float*)d_m, count);
        std::vector<float> v = bf16_state ? download_bf16((bf16*)d_v, count) : download((float*)d_v, count);
        adamw_update<S>(d_p, d_master, d_g, d_m, d_v, count, t, lr, b1, b2, eps, wd, 1.f, d_clip, 99u + t, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> after = use_master ? download(d_master, count) : download_bf16(d_p, count);
        std::vector<float> cpu = before;
        for (auto& x : g) x *= clip;
        adamw_cpu(cpu.data(), g.data(), m.data(), v.data(), count, t, lr, b1, b2, eps, wd);
        double dot = 0, norm = 0;
        size_t bad = 0;
        for (size_t i = 0; i < count; i++) {
            double d_gpu = (double)after[i] - before[i], d_cpu = (double)cpu[i] - before[i];
            double ulp = use_master ? 0.0 : fabs(after[i]) / 128.0;  // one bf16 ulp is at most |x| 2^-7
            bad += fabs(d_gpu - d_cpu) > ulp + 1e-3 * lr;
            dot += d_gpu * d_cpu;
            norm += d_cpu * d_cpu;
        }
        const char* cfg = bf16_state ? (use_master ? "bf16 state + master" : "bf16 state") : (use_master ? "fp32 state + master" : "fp32 state");
        char name[160];
        snprintf(name, sizeof name, "adamw update p_after - p_before (%s): %zu of %zu elements off, projection %.4f",
                 cfg, bad, count, dot / norm);
        check_true(name, bad == 0 && fabs(dot / norm - 1.0) < 0.02);
    }
    d.free();
}

// same seed, same bits; and the same bits when the tensor is updated in pieces (ZeRO-1's shards) each given
// its offset as index_base (run 2), which pieces without it (run 3: every piece's index from 0) do not give
static void check_deterministic(size_t count) {
    std::vector<float> p = rand_uniform(count, -1.f, 1.f), g = rand_uniform(count, -1.f, 1.f);
    std::vector<uint16_t> out[4];
    size_t cuts[4] = {0, count / 3, count / 3 + 7, count};  // uneven pieces, one of 7 elements
    for (int r = 0; r < 4; r++) {
        bf16* d_p = upload_bf16(p);
        float* d_g = upload(g);
        bf16 *d_m = dmalloc<bf16>(count), *d_v = dmalloc<bf16>(count);
        CUDA_CHECK(cudaMemset(d_m, 0, count * 2));
        CUDA_CHECK(cudaMemset(d_v, 0, count * 2));
        for (int t = 1; t <= 3; t++) {
            for (int piece = 0; piece < (r < 2 ? 1 : 3); piece++) {
                size_t begin = r < 2 ? 0 : cuts[piece], end = r < 2 ? count : cuts[piece + 1];
                adamw_update<bf16>(d_p + begin, nullptr, d_g + begin, d_m + begin, d_v + begin, end - begin, t, 1e-3f, 0.9f,
                                   0.95f, 1e-8f, 0.1f, 1.f, nullptr, 77u + t, 0, r == 2 ? begin : 0);
            }
        }
        out[r].resize(count * 2);
        CUDA_CHECK(cudaMemcpy(out[r].data(), d_p, count * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(out[r].data() + count, d_m, count * 2, cudaMemcpyDeviceToHost));
        for (void* q : {(void*)d_p, (void*)d_g, (void*)d_m, (void*)d_v}) CUDA_CHECK(cudaFree(q));
    }
    check_true("adamw bf16 state deterministic given the seed", out[0] == out[1]);
    check_true("adamw in 3 pieces with index_base: the bits of one update (ZeRO-1's shards)", out[2] == out[0]);
    check_true("adamw in 3 pieces without index_base: other bits (the check can fail)", out[3] != out[0]);
}

// bf16 gradients (held on the host in bf16, --held-gradients): the update from a bf16 gradient is bitwise the
// update from the fp32 gradient holding the same values (the kernel widens exactly); 3 steps, bf16 state
// (stochastic rounding: same seed, same bits), with and without master weights
static void check_bf16_gradients(size_t count, bool use_master) {
    std::vector<float> p = rand_uniform(count, -1.f, 1.f);
    to_bf16(p);
    std::vector<float> grads[3];
    for (auto& g : grads) {
        g = rand_uniform(count, -1.f, 1.f);
        to_bf16(g);
    }
    std::vector<uint16_t> out[2];
    for (int bf16_grad = 0; bf16_grad < 2; bf16_grad++) {
        DeviceAdamw<bf16> d(p, use_master, 0.5f);
        for (int t = 1; t <= 3; t++) {
            std::vector<float>& g = grads[t - 1];
            bf16* g16 = upload_bf16(g);
            CUDA_CHECK(cudaMemcpy(d.g, g.data(), count * 4, cudaMemcpyHostToDevice));
            if (bf16_grad) adamw_update<bf16>(d.p, d.master, (const bf16*)g16, d.m, d.v, count, t, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.f, d.clip, 55u + t, 0);
            else adamw_update<bf16>(d.p, d.master, (const float*)d.g, d.m, d.v, count, t, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.f, d.clip, 55u + t, 0);
            CUDA_CHECK(cudaDeviceSynchronize());
            CUDA_CHECK(cudaFree(g16));
        }
        out[bf16_grad].resize(count * 3);
        CUDA_CHECK(cudaMemcpy(out[bf16_grad].data(), d.p, count * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(out[bf16_grad].data() + count, d.m, count * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(out[bf16_grad].data() + 2 * count, d.v, count * 2, cudaMemcpyDeviceToHost));
        d.free();
    }
    char name[128];
    snprintf(name, sizeof name, "adamw bf16 gradients = fp32 gradients of the same values%s, count=%zu (bitwise)",
             use_master ? " (master)" : "", count);
    check_true(name, out[0] == out[1]);
}

// The vector path (16-byte loads, 8 elements a thread, the tail one by one) against the element-by-element one
// (taken when an array is not 16-byte aligned: here every array starts one element past an aligned address):
// 3 steps from the same values, bitwise the same parameters, master weights and state (same arithmetic per
// element, random bits from the element's index)
template <typename S>
static void check_vector_vs_scalar(size_t count, bool use_master) {
    std::vector<float> p = rand_uniform(count, -1.f, 1.f), pm = p;
    std::vector<float> grads[3];
    for (auto& g : grads) g = rand_uniform(count, -1.f, 1.f);
    std::vector<uint16_t> pbits = to_bf16(p);
    std::vector<std::vector<char>> out[2];
    for (int shift = 0; shift < 2; shift++) {
        bf16* d_p = dmalloc<bf16>(count + 1);
        float* d_master = use_master ? dmalloc<float>(count + 1) : nullptr;
        float* d_g = dmalloc<float>(count + 1);
        S *d_m = dmalloc<S>(count + 1), *d_v = dmalloc<S>(count + 1);
        CUDA_CHECK(cudaMemcpy(d_p + shift, pbits.data(), count * 2, cudaMemcpyHostToDevice));
        if (use_master) CUDA_CHECK(cudaMemcpy(d_master + shift, pm.data(), count * 4, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemset(d_m, 0, (count + 1) * sizeof(S)));
        CUDA_CHECK(cudaMemset(d_v, 0, (count + 1) * sizeof(S)));
        for (int t = 1; t <= 3; t++) {
            CUDA_CHECK(cudaMemcpy(d_g + shift, grads[t - 1].data(), count * 4, cudaMemcpyHostToDevice));
            adamw_update<S>(d_p + shift, use_master ? d_master + shift : nullptr, (const float*)(d_g + shift), d_m + shift,
                            d_v + shift, count, t, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.f, nullptr, 31u + t, 0);
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        auto bytes = [&](const void* d, size_t size) {
            std::vector<char> h(size);
            CUDA_CHECK(cudaMemcpy(h.data(), d, size, cudaMemcpyDeviceToHost));
            return h;
        };
        out[shift] = {bytes(d_p + shift, count * 2), bytes(d_m + shift, count * sizeof(S)), bytes(d_v + shift, count * sizeof(S))};
        if (use_master) out[shift].push_back(bytes(d_master + shift, count * 4));
        for (void* q : {(void*)d_p, (void*)d_master, (void*)d_g, (void*)d_m, (void*)d_v}) CUDA_CHECK(cudaFree(q));
    }
    char name[160];
    snprintf(name, sizeof name, "adamw 16-byte path = element path (unaligned arrays), %s state%s, count=%zu (bitwise)",
             sizeof(S) == 2 ? "bf16" : "fp32", use_master ? " + master" : "", count);
    check_true(name, out[0] == out[1]);
}

template <typename S>
static void bench(size_t count, bool use_master) {
    bf16* d_p = device_random_bf16(count);
    float* d_master = use_master ? device_random_f32(count) : nullptr;
    float* d_g = device_random_f32(count);
    S *d_m = dmalloc<S>(count), *d_v = dmalloc<S>(count);
    CUDA_CHECK(cudaMemset(d_m, 0, count * sizeof(S)));
    CUDA_CHECK(cudaMemset(d_v, 0, count * sizeof(S)));
    int t = 0;
    float ms = bench_ms([&] { t++; adamw_update<S>(d_p, d_master, d_g, d_m, d_v, count, t, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.f, nullptr, t, 0); });
    double bytes = (double)count * (2 * 2 + 4 + 4 * sizeof(S) + (use_master ? 8 : 0));
    char name[96];
    snprintf(name, sizeof name, "adamw %s state%s count=%zuM", sizeof(S) == 2 ? "bf16" : "fp32", use_master ? " + master" : "", count >> 20);
    report_bandwidth(name, "16-byte x8 v2", ms, bytes);
    for (void* q : {(void*)d_p, (void*)d_master, (void*)d_m, (void*)d_v, (void*)d_g}) CUDA_CHECK(cudaFree(q));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    size_t n = g_small ? 1003 : 1000003;  // not a multiple of 8: the vector path's tail
    check<float>(n, false, 3);
    check<float>(n, true, 3);
    check<bf16>(n, false, 3);
    check<bf16>(n, true, 3);
    check_update<float>(n, false);
    check_update<float>(n, true);
    check_update<bf16>(n, false);
    check_update<bf16>(n, true);
    check_deterministic(n);
    check_bf16_gradients(n, false);
    check_bf16_gradients(n, true);
    for (size_t count : {(size_t)1, (size_t)7, n}) {
        check_vector_vs_scalar<bf16>(count, false);
        check_vector_vs_scalar<float>(count, true);
    }
    if (g_bench) {
        bench<float>(256ull << 20, false);
        bench<bf16>(256ull << 20, false);
        bench<bf16>(256ull << 20, true);
    }
    return finish("adamw");
}
