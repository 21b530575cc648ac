// dev/cuda/rmsnorm.cu: RMSNorm forward (plain and fused with the residual add) and backward.
// CPU reference: rmsnorm_forward_cpu / rmsnorm_backward_cpu (llama_reference.h). Product kernels:
// rmsnorm_forward, rmsnorm_residual_forward, rmsnorm_backward (mst_kernels.cuh): forward one warp per row, 16-byte
// accesses when C % 8 == 0; weight gradient by fixed row chunks then a fixed-order reduction (deterministic).
// Backward versions (rmsnorm_backward_version()): v2, one pass (a block per row chunk: dinp and the chunk's dweight
// partial from one read of each row; the product's), and v1, two passes (dinp one warp per row, then the partials;
// the history, and the trainer's fallback if v2 fails its start-up self-test). Both checked; their weight
// gradients bitwise equal (the same order of sums); timed against each other and a copy of the same bytes.
#include "common.h"

// a copy of n bf16 at `shift` elements past a fresh allocation's start (0: the array itself)
static bf16* shifted(bf16* d, size_t n, int shift) {
    if (shift == 0) return d;
    bf16* copy = dmalloc<bf16>(n + shift) + shift;
    CUDA_CHECK(cudaMemcpy(copy, d, n * 2, cudaMemcpyDeviceToDevice));
    return copy;
}
// v (already bf16 values) into the device array d
static void upload_into(bf16* d, std::vector<float>& v) {
    std::vector<uint16_t> b = to_bf16(v);
    CUDA_CHECK(cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
}

static void check(int N, int C, bool misaligned = false) {
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

    // backward on the fused forward's residual and rstd, accumulating into dres and dw, each version. dinp by
    // FlashAttention-3's rule against the fp32 reference, whose bf16 rounding sizes the error (inputs are bf16,
    // arithmetic fp32, one rounding to bf16 at the end); dweight (fp32, N rows summed in another order than the
    // CPU's) within 1e-3 sqrt(N). misaligned: every array one element off 16 bytes (the element paths).
    std::vector<float> dres_ref = dres0, dw_ref = dw0;
    rmsnorm_backward_cpu(dres_ref.data(), dw_ref.data(), dy.data(), resout_ref.data(), w.data(), rstd_ref.data(), N, C);
    std::vector<float> dres_ref16(dres_ref.size());
    for (size_t i = 0; i < dres_ref.size(); i++) dres_ref16[i] = round_bf16(dres_ref[i]);
    int shift = misaligned ? 1 : 0;
    bf16 *s_dy = shifted(d_dy, (size_t)N * C, shift), *s_x = shifted(d_resout, (size_t)N * C, shift);
    bf16 *s_w = shifted(d_w, C, shift), *s_dres = shifted(d_dres, (size_t)N * C, shift);
    std::vector<float> dw_of[3];
    for (int version : {2, 1}) {
        rmsnorm_backward_version() = version;
        upload_into(s_dres, dres0);
        CUDA_CHECK(cudaMemcpy(d_dw, dw0.data(), C * 4, cudaMemcpyHostToDevice));
        poison(scratch, rmsnorm_backward_scratch_bytes(N, C));
        rmsnorm_backward(s_dres, d_dw, scratch, s_dy, s_x, s_w, d_rstd, N, C, 0);
        snprintf(name, sizeof name, "rmsnorm_backward v%d dinp (accumulated) N=%d C=%d%s", version, N, C, misaligned ? " misaligned" : "");
        check_fa3_rule(name, download_bf16(s_dres, (size_t)N * C), dres_ref, dres_ref16);
        dw_of[version] = download(d_dw, C);
        snprintf(name, sizeof name, "rmsnorm_backward v%d dweight (accumulated) N=%d C=%d%s", version, N, C, misaligned ? " misaligned" : "");
        compare(name, dw_of[version], dw_ref, 1e-3f * sqrtf((float)N), 1e-3f);
    }
    snprintf(name, sizeof name, "rmsnorm_backward dweight v2 bitwise v1 N=%d C=%d%s", N, C, misaligned ? " misaligned" : "");
    check_true(name, bitwise_equal(dw_of[2].data(), dw_of[1].data(), C * 4));
    // determinism of v2's dweight
    rmsnorm_backward_version() = 2;
    CUDA_CHECK(cudaMemcpy(d_dw, dw0.data(), C * 4, cudaMemcpyHostToDevice));
    rmsnorm_backward(s_dres, d_dw, scratch, s_dy, s_x, s_w, d_rstd, N, C, 0);
    snprintf(name, sizeof name, "rmsnorm_backward dweight deterministic N=%d C=%d%s", N, C, misaligned ? " misaligned" : "");
    check_true(name, bitwise_equal(dw_of[2].data(), download(d_dw, C).data(), C * 4));
    if (shift) for (bf16* p : {s_dy, s_x, s_w, s_dres}) CUDA_CHECK(cudaFree(p - shift));
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
    // backward: v1 (two passes) and v2 (one pass) against a device-to-device copy of the same bytes in the same run
    // (minimum traffic: read dy, x, dres; write dres: 4 x N x C x 2 bytes; the copy reads and writes 2 x N x C bf16)
    float backward_ms[3];
    for (int version : {1, 2}) {
        rmsnorm_backward_version() = version;
        backward_ms[version] = bench_ms([&] { rmsnorm_backward(dres, dw, scratch, a, b, d_w, rstd, N, C, 0); });
        snprintf(name, sizeof name, "rmsnorm_backward N=%d C=%d", N, C);
        report_bandwidth(name, version == 1 ? "warp/row + chunked dw v1" : "block/chunk one pass v2", backward_ms[version], 4.0 * n * 2);
    }
    rmsnorm_backward_version() = 2;
    bf16 *copy_from = dmalloc<bf16>(2 * n), *copy_to = dmalloc<bf16>(2 * n);
    CUDA_CHECK(cudaMemset(copy_from, 0, 4 * n));
    ms = bench_ms([&] { CUDA_CHECK(cudaMemcpyAsync(copy_to, copy_from, 4 * n, cudaMemcpyDeviceToDevice)); });
    snprintf(name, sizeof name, "copy of rmsnorm_backward's bytes N=%d C=%d", N, C);
    report_bandwidth(name, "cudaMemcpy D2D", ms, 4.0 * n * 2);
    printf("rmsnorm_backward N=%d C=%d: v2 %.2fx v1's speed, %.2f of the copy's\n", N, C, backward_ms[1] / backward_ms[2],
           ms / backward_ms[2]);
    CUDA_CHECK(cudaFree(copy_from));
    CUDA_CHECK(cudaFree(copy_to));
    for (void* p : {(void*)a, (void*)b, (void*)d_w, (void*)out, (void*)res, (void*)dres, (void*)rstd, (void*)dw, scratch})
        CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    if (g_small) {
        check(5, 128);
        check(3, 130);
        // several iterations per block (rows per chunk ceil(N / 128)) and several warps: v2's alternating shared
        // buffer and row tails
        check(600, 512);  // 5 rows a chunk: 4 + 1 (ROWS 4), 2 warps
        check(300, 300);  // 3 rows a chunk (element path, ROWS 1), 2 warps
        return finish("rmsnorm");
    }
    check(1, 128);
    check(37, 232);
    check(37, 130);
    check(1000, 4096);   // 8 rows a chunk: ROWS 2, four iterations
    check(129, 3072);
    check(77, 8200);     // v2 has no launch shape (1025 column groups): v1 under both versions
    check(77, 4096);
    check(643, 2048);    // 6 rows a chunk (ROWS 4: 4 + 2), the last chunk 1 row
    check(77, 200);      // C % 8 != 0: the element paths
    check(300, 36);
    check(131, 8192);    // 2 column groups a thread (ROWS 1), 2 rows a chunk
    check(129, 256, true);
    if (g_bench) {
        bench(16384, 4096);
        bench(16384, 2048);
    }
    return finish("rmsnorm");
}
