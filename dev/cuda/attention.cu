// dev/cuda/attention.cu: causal grouped-query flash attention, forward (with lse) and backward.
// CPU reference: attention_forward_cpu / attention_backward_cpu (llama_reference.h). Product kernels:
// attention_forward / attention_backward (mst_kernels.cuh), mma.sync m16n8k16 bf16 FlashAttention-2 style,
// with document masking (doc_start from document_starts) and query blocks.
// Checks (check_attention): against the fp32 reference with FlashAttention-3's rule |ours - ref32| <=
// 2 |ref_bf16 - ref32| + atol (elementwise maxima; common.h's bf16 references) for out, lse, dq, dk, dv, at
// T = 1, 37, 129, 300, 777 (a multiple of no tile) and 1000, GQA 32/8, 8/8, 4/1 (and 4/2, 2/1), hd 64 and
// 128, with and without documents (random bos positions, always a document of length 1 and one crossing
// the tile edge at 64); document_starts against document_starts_cpu (bitwise); v2 (cp.async) against v1,
// and a second run, bitwise; query blocks covering T against the whole-sequence call (out, lse, dq bitwise,
// fp32 dk, dv by the rule), each block reading only its rows and the keys before its end (everything else
// poisoned). At T = 4000 and 65536 (not on the CPU device) a sample of query rows (out, lse, dq) and key
// rows (dk, dv) against double-precision CPU computations of just those rows.
// Benchmark: B=1, H=32, KV=8, hd=128, T=8192 and 32768 (and hd=64 at 8192); causal FLOPs
// fwd = 4 B H T^2 hd / 2, bwd = 2.5 x fwd (FlashAttention's convention).
#include "common.h"

struct AttnBuffers {
    int B, T, H, KV, hd;
    size_t nq, nkv, nl;
    std::vector<float> q, k, v, dout;
    std::vector<int> doc_start;  // host copy of d_doc_start (empty: no document masking)
    bf16 *dq_in, *dk_in, *dv_in, *ddout, *dout_, *dq, *dk, *dv;
    float *dlse;
    int* d_doc_start = nullptr;
    void* scratch;
    // device_inputs: random inputs drawn on the GPU (benchmarks), no host copies
    AttnBuffers(int B_, int T_, int H_, int KV_, int hd_, float qk_range, bool device_inputs = false)
        : B(B_), T(T_), H(H_), KV(KV_), hd(hd_) {
        nq = (size_t)B * T * H * hd;
        nkv = (size_t)B * T * KV * hd;
        nl = (size_t)B * H * T;
        if (device_inputs) {
            dq_in = device_random_bf16(nq, -qk_range, qk_range);
            dk_in = device_random_bf16(nkv, -qk_range, qk_range);
            dv_in = device_random_bf16(nkv);
            ddout = device_random_bf16(nq);
        } else {
            q = rand_uniform(nq, -qk_range, qk_range);
            k = rand_uniform(nkv, -qk_range, qk_range);
            v = rand_uniform(nkv, -1.f, 1.f);
            dout = rand_uniform(nq, -1.f, 1.f);
            dq_in = upload_bf16(q);
            dk_in = upload_bf16(k);
            dv_in = upload_bf16(v);
            ddout = upload_bf16(dout);
        }
        dout_ = dmalloc<bf16>(nq);
        dq = dmalloc<bf16>(nq);
        dk = dmalloc<bf16>(nkv);
        dv = dmalloc<bf16>(nkv);
        dlse = dmalloc<float>(nl);
        scratch = dmalloc<char>(attention_backward_scratch_bytes(B, T, H, hd));
    }
    ~AttnBuffers() {
        for (void* p : {(void*)dq_in, (void*)dk_in, (void*)dv_in, (void*)ddout, (void*)dout_, (void*)dq, (void*)dk, (void*)dv,
                        (void*)dlse, (void*)d_doc_start, scratch})
            CUDA_CHECK(cudaFree(p));
    }
    const int* docs() const { return doc_start.empty() ? nullptr : doc_start.data(); }
    void forward() {
        poison(dout_, nq * 2);
        poison(dlse, nl * 4);
        attention_forward(dout_, dlse, dq_in, dk_in, dv_in, B, T, H, KV, hd, d_doc_start, 0, T, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    void backward() {
        poison(dq, nq * 2);
        poison(dk, nkv * 2);
        poison(dv, nkv * 2);
        attention_backward(dq, dk, dv, scratch, ddout, dq_in, dk_in, dv_in, dout_, dlse, B, T, H, KV, hd, d_doc_start, 0, T, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
};

// Token ids with documents: bos (128000) at random positions, always a document of length 1 (bos at p and
// p + 1) and, when T allows, one crossing the 64-row tile edge (bos at 60 and 70); the rest random ids.
// Sets a.doc_start from them with document_starts on the device, checked against document_starts_cpu.
static void make_documents(AttnBuffers& a) {
    int B = a.B, T = a.T;
    std::vector<int> tokens((size_t)B * T);
    for (int& t : tokens) t = rand_int(0, 127999);
    for (int b = 0; b < B; b++) {
        int* seq = tokens.data() + (size_t)b * T;
        for (int i = 0; i < T / 100; i++) seq[rand_int(0, T - 1)] = LLAMA3_BOS_TOKEN;
        if (T > 70) seq[60] = seq[70] = LLAMA3_BOS_TOKEN;
        if (T >= 3) {
            int p = rand_int(1, T - 2);
            seq[p] = seq[p + 1] = LLAMA3_BOS_TOKEN;
        }
    }
    a.doc_start.resize(tokens.size());
    document_starts_cpu(a.doc_start.data(), tokens.data(), B, T);
    int* d_tokens = upload(tokens);
    a.d_doc_start = dmalloc<int>(tokens.size());
    poison(a.d_doc_start, tokens.size() * 4);
    document_starts(a.d_doc_start, d_tokens, B, T, LLAMA3_BOS_TOKEN, 0);
    std::vector<int> got = download(a.d_doc_start, tokens.size());
    CUDA_CHECK(cudaFree(d_tokens));
    char name[160];
    snprintf(name, sizeof name, "document_starts == document_starts_cpu B=%d T=%d", B, T);
    check_true(name, got == a.doc_start);
}

// FlashAttention-3's rule on one tensor (common.h's check_fa3_rule), named with the case
static void check_rule(const char* what, const AttnBuffers& a, const std::vector<float>& got, const std::vector<float>& ref32,
                       const std::vector<float>& ref16, double atol) {
    char name[224];
    snprintf(name, sizeof name, "attention %s B=%d T=%d H=%d KV=%d hd=%d%s", what, a.B, a.T, a.H, a.KV, a.hd, a.docs() ? " docs" : "");
    check_fa3_rule(name, got, ref32, ref16, atol);
}

// the bits of a device buffer (bf16 or fp32)
template <typename T> static std::vector<T> bits(const T* d, size_t n) { return download(d, n); }
static std::vector<uint16_t> bits(const bf16* d, size_t n) { return download((const uint16_t*)d, n); }

// Query blocks [ends[i-1], ends[i]) in order against the whole-sequence call (a's outputs): forward with
// q, k, v present only up to the block's end, backward with q, dout, out, lse present only in the block
// (and fp32 dk, dv accumulated over the blocks).
static void check_query_blocks(AttnBuffers& a, const std::vector<int>& ends, const std::vector<float>& dk32,
                               const std::vector<float>& dv32, const std::vector<float>& dk16, const std::vector<float>& dv16) {
    int B = a.B, T = a.T, H = a.H, KV = a.KV, hd = a.hd;
    bf16* out = dmalloc<bf16>(a.nq);
    float* lse = dmalloc<float>(a.nl);
    bf16* dq = dmalloc<bf16>(a.nq);
    float *dk = dmalloc<float>(a.nkv), *dv = dmalloc<float>(a.nkv);
    poison(out, a.nq * 2);
    poison(lse, a.nl * 4);
    poison(dq, a.nq * 2);
    poison(dk, a.nkv * 4);
    poison(dv, a.nkv * 4);
    int q0 = 0;
    for (int q1 : ends) {
        bf16 *q = rows_only(a.dq_in, B, T, (size_t)H * hd, 0, q1), *k = rows_only(a.dk_in, B, T, (size_t)KV * hd, 0, q1),
             *v = rows_only(a.dv_in, B, T, (size_t)KV * hd, 0, q1);
        attention_forward(out, lse, q, k, v, B, T, H, KV, hd, a.d_doc_start, q0, q1 - q0, 0);
        for (void* p : {(void*)q, (void*)k, (void*)v}) CUDA_CHECK(cudaFree(p));
        q0 = q1;
    }
    q0 = 0;
    for (int q1 : ends) {
        bf16 *q = rows_only(a.dq_in, B, T, (size_t)H * hd, q0, q1), *dout = rows_only(a.ddout, B, T, (size_t)H * hd, q0, q1),
             *o = rows_only(out, B, T, (size_t)H * hd, q0, q1);
        float* l = rows_only(lse, B * H, T, 1, q0, q1);
        attention_backward(dq, dk, dv, a.scratch, dout, q, a.dk_in, a.dv_in, o, l, B, T, H, KV, hd, a.d_doc_start, q0, q1 - q0, 0);
        for (void* p : {(void*)q, (void*)dout, (void*)o, (void*)l}) CUDA_CHECK(cudaFree(p));
        q0 = q1;
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    char name[224];
    std::string blocks;
    for (int e : ends) blocks += " " + std::to_string(e);
    snprintf(name, sizeof name, "attention query blocks (ends%s) == whole sequence bitwise: out, lse, dq B=%d T=%d H=%d KV=%d hd=%d%s",
             blocks.c_str(), B, T, H, KV, hd, a.docs() ? " docs" : "");
    check_true(name, bits(out, a.nq) == bits(a.dout_, a.nq) && bits(lse, a.nl) == bits(a.dlse, a.nl) &&
                         bits(dq, a.nq) == bits(a.dq, a.nq));
    check_rule("query blocks dk (fp32, accumulated)", a, download(dk, a.nkv), dk32, dk16, gradient_atol(dk32));
    check_rule("query blocks dv (fp32, accumulated)", a, download(dv, a.nkv), dv32, dv16, gradient_atol(dv32));
    for (void* p : {(void*)out, (void*)lse, (void*)dq, (void*)dk, (void*)dv}) CUDA_CHECK(cudaFree(p));
}

// forward or backward with kernel version 1 (synchronous loads) or 2 (cp.async)
static void run_version(AttnBuffers& a, int version, bool backward) {
    int& selected = backward ? attention_backward_version() : attention_forward_version();
    int saved = selected;
    selected = version;
    if (backward) a.backward();
    else a.forward();
    selected = saved;
}

// One shape: forward and backward (v1, v2, a second run) against the references, then query blocks
// ending at `ends` (empty: none)
static void check_attention(int B, int T, int H, int KV, int hd, bool docs, const std::vector<int>& ends) {
    AttnBuffers a(B, T, H, KV, hd, 2.f);
    if (docs) make_documents(a);
    char name[224];
    run_version(a, 1, false);
    std::vector<uint16_t> out1 = bits(a.dout_, a.nq);
    std::vector<float> lse1 = bits(a.dlse, a.nl);
    run_version(a, 2, false);
    snprintf(name, sizeof name, "attention fwd v2 == v1 bitwise (out, lse) T=%d H=%d KV=%d hd=%d%s", T, H, KV, hd, docs ? " docs" : "");
    check_true(name, out1 == bits(a.dout_, a.nq) && lse1 == bits(a.dlse, a.nl));
    std::vector<float> out32(a.nq), lse32(a.nl), out16(a.nq), lse16(a.nl);
    attention_forward_cpu(out32.data(), lse32.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, KV, hd, a.docs());
    attention_forward_bf16_reference(out16.data(), lse16.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, KV, hd, a.docs());
    check_rule("fwd out", a, download_bf16(a.dout_, a.nq), out32, out16, 1e-3);
    check_rule("fwd lse", a, download(a.dlse, a.nl), lse32, lse16, 1e-3);

    run_version(a, 1, true);
    std::vector<uint16_t> dq1 = bits(a.dq, a.nq), dk1 = bits(a.dk, a.nkv), dv1 = bits(a.dv, a.nkv);
    run_version(a, 2, true);
    snprintf(name, sizeof name, "attention bwd v2 == v1 bitwise (dq, dk, dv) T=%d H=%d KV=%d hd=%d%s", T, H, KV, hd, docs ? " docs" : "");
    check_true(name, dq1 == bits(a.dq, a.nq) && dk1 == bits(a.dk, a.nkv) && dv1 == bits(a.dv, a.nkv));
    std::vector<float> dq32(a.nq), dk32(a.nkv), dv32(a.nkv), dq16(a.nq), dk16(a.nkv), dv16(a.nkv);
    attention_backward_cpu(dq32.data(), dk32.data(), dv32.data(), a.dout.data(), a.q.data(), a.k.data(), a.v.data(),
                           out32.data(), lse32.data(), B, T, H, KV, hd, a.docs());
    attention_backward_bf16_reference(dq16.data(), dk16.data(), dv16.data(), a.dout.data(), a.q.data(), a.k.data(), a.v.data(),
                                      out32.data(), lse32.data(), B, T, H, KV, hd, a.docs());
    check_rule("bwd dq", a, download_bf16(a.dq, a.nq), dq32, dq16, gradient_atol(dq32));
    check_rule("bwd dk", a, download_bf16(a.dk, a.nkv), dk32, dk16, gradient_atol(dk32));
    check_rule("bwd dv", a, download_bf16(a.dv, a.nkv), dv32, dv16, gradient_atol(dv32));

    // determinism: a second forward + backward gives the same bits
    a.forward();
    a.backward();
    snprintf(name, sizeof name, "attention deterministic (out, lse, dq, dk, dv bits) T=%d H=%d KV=%d hd=%d%s", T, H, KV, hd,
             docs ? " docs" : "");
    check_true(name, out1 == bits(a.dout_, a.nq) && lse1 == bits(a.dlse, a.nl) && dq1 == bits(a.dq, a.nq) &&
                         dk1 == bits(a.dk, a.nkv) && dv1 == bits(a.dv, a.nkv));
    if (!ends.empty()) check_query_blocks(a, ends, dk32, dv32, dk16, dv16);
}

// long T: rows sampled, reference in double computed from the rounded inputs
static void check_sampled(int B, int T, int H, int KV, int hd) {
    AttnBuffers a(B, T, H, KV, hd, 2.f);
    // v2 does the same arithmetic in the same order as v1: the same bits
    run_version(a, 1, false);
    std::vector<uint16_t> out1 = bits(a.dout_, a.nq);
    run_version(a, 2, false);
    char name[160];
    snprintf(name, sizeof name, "attention fwd v2 == v1 bitwise T=%d hd=%d", T, hd);
    check_true(name, out1 == bits(a.dout_, a.nq));
    run_version(a, 1, true);
    std::vector<uint16_t> dq1 = bits(a.dq, a.nq), dk1 = bits(a.dk, a.nkv), dv1 = bits(a.dv, a.nkv);
    run_version(a, 2, true);
    snprintf(name, sizeof name, "attention bwd v2 == v1 bitwise (dq, dk, dv) T=%d hd=%d", T, hd);
    check_true(name, dq1 == bits(a.dq, a.nq) && dk1 == bits(a.dk, a.nkv) && dv1 == bits(a.dv, a.nkv));
    std::vector<float> out = download_bf16(a.dout_, a.nq), lse = download(a.dlse, a.nl);
    std::vector<float> dq = download_bf16(a.dq, a.nq), dk = download_bf16(a.dk, a.nkv), dv = download_bf16(a.dv, a.nkv);
    int group = H / KV;
    double scale = 1.0 / sqrt((double)hd);
    auto Q = [&](int b, int t, int h) { return &a.q[(((size_t)b * T + t) * H + h) * hd]; };
    auto DO = [&](int b, int t, int h) { return &a.dout[(((size_t)b * T + t) * H + h) * hd]; };
    auto K = [&](int b, int s, int kv) { return &a.k[(((size_t)b * T + s) * KV + kv) * hd]; };
    auto V = [&](int b, int s, int kv) { return &a.v[(((size_t)b * T + s) * KV + kv) * hd]; };
    auto dot = [&](const float* x, const float* y) { double d = 0; for (int i = 0; i < hd; i++) d += (double)x[i] * y[i]; return d; };
    std::vector<int> rows = {0, 1, 63, 64, 1000, T / 2 + 3, T - 65, T - 1};
    std::vector<float> got_o, ref_o, got_l, ref_l, got_dq, ref_dq, got_dk, ref_dk, got_dv, ref_dv;
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            int kv = h / group;
            for (int t : rows) {
                if (t < 0 || t >= T) continue;
                std::vector<double> sc(t + 1);
                double mx = -1e300;
                for (int s = 0; s <= t; s++) { sc[s] = dot(Q(b, t, h), K(b, s, kv)) * scale; mx = std::max(mx, sc[s]); }
                double sum = 0;
                for (int s = 0; s <= t; s++) sum += exp(sc[s] - mx);
                double l = mx + log(sum);
                std::vector<double> o(hd, 0.0), g(hd, 0.0);
                for (int s = 0; s <= t; s++) {
                    double p = exp(sc[s] - l);
                    for (int i = 0; i < hd; i++) o[i] += p * V(b, s, kv)[i];
                }
                double delta = 0;
                for (int i = 0; i < hd; i++) delta += (double)DO(b, t, h)[i] * o[i];
                for (int s = 0; s <= t; s++) {
                    double p = exp(sc[s] - l);
                    double ds = p * (dot(DO(b, t, h), V(b, s, kv)) - delta) * scale;
                    for (int i = 0; i < hd; i++) g[i] += ds * K(b, s, kv)[i];
                }
                size_t row = ((size_t)b * T + t) * H + h;
                for (int i = 0; i < hd; i++) {
                    got_o.push_back(out[row * hd + i]); ref_o.push_back((float)o[i]);
                    got_dq.push_back(dq[row * hd + i]); ref_dq.push_back((float)g[i]);
                }
                got_l.push_back(lse[((size_t)b * H + h) * T + t]); ref_l.push_back((float)l);
            }
        }
        // key rows: dk, dv summed over the group's heads and all queries t >= s, using the GPU's lse and out
        for (int kv = 0; kv < KV; kv++) {
            for (int s : rows) {
                if (s < 0 || s >= T) continue;
                std::vector<double> gk(hd, 0.0), gv(hd, 0.0);
                for (int h = kv * group; h < (kv + 1) * group; h++) {
                    for (int t = s; t < T; t++) {
                        size_t row = ((size_t)b * T + t) * H + h;
                        double delta = 0;
                        for (int i = 0; i < hd; i++) delta += (double)DO(b, t, h)[i] * out[row * hd + i];
                        double p = exp(dot(Q(b, t, h), K(b, s, kv)) * scale - lse[((size_t)b * H + h) * T + t]);
                        double ds = p * (dot(DO(b, t, h), V(b, s, kv)) - delta) * scale;
                        for (int i = 0; i < hd; i++) { gk[i] += ds * Q(b, t, h)[i]; gv[i] += p * DO(b, t, h)[i]; }
                    }
                }
                size_t row = ((size_t)b * T + s) * KV + kv;
                for (int i = 0; i < hd; i++) {
                    got_dk.push_back(dk[row * hd + i]); ref_dk.push_back((float)gk[i]);
                    got_dv.push_back(dv[row * hd + i]); ref_dv.push_back((float)gv[i]);
                }
            }
        }
    }
    snprintf(name, sizeof name, "attention fwd out sampled rows T=%d H=%d KV=%d hd=%d", T, H, KV, hd);
    compare(name, got_o, ref_o, 1e-2f, 2e-2f);
    snprintf(name, sizeof name, "attention fwd lse sampled rows T=%d", T);
    compare(name, got_l, ref_l, 2e-3f, 1e-3f);
    snprintf(name, sizeof name, "attention bwd dq sampled rows T=%d", T);
    compare(name, got_dq, ref_dq, 2e-2f * max_abs(ref_dq) + 1e-6f, 3e-2f);
    snprintf(name, sizeof name, "attention bwd dk sampled rows T=%d", T);
    compare(name, got_dk, ref_dk, 2e-2f * max_abs(ref_dk) + 1e-6f, 3e-2f);
    snprintf(name, sizeof name, "attention bwd dv sampled rows T=%d", T);
    compare(name, got_dv, ref_dv, 2e-2f * max_abs(ref_dv) + 1e-6f, 3e-2f);
}

static void bench(int B, int T, int H, int KV, int hd) {
    AttnBuffers a(B, T, H, KV, hd, 2.f, true);
    int reps = T >= 32768 ? 5 : 10;
    int saved = attention_forward_version();
    attention_forward_version() = 2;
    float fwd2 = bench_ms([&] { attention_forward(a.dout_, a.dlse, a.dq_in, a.dk_in, a.dv_in, B, T, H, KV, hd, nullptr, 0, T, 0); }, 1, reps);
    attention_forward_version() = 1;
    float fwd = bench_ms([&] { attention_forward(a.dout_, a.dlse, a.dq_in, a.dk_in, a.dv_in, B, T, H, KV, hd, nullptr, 0, T, 0); }, 1, reps);
    attention_forward_version() = saved;
    auto run_bwd = [&] { attention_backward(a.dq, a.dk, a.dv, a.scratch, a.ddout, a.dq_in, a.dk_in, a.dv_in, a.dout_, a.dlse, B, T, H, KV, hd, nullptr, 0,
                                        T, 0); };
    saved = attention_backward_version();
    attention_backward_version() = 2;
    float bwd2 = bench_ms(run_bwd, 1, reps);
    attention_backward_version() = 1;
    float bwd = bench_ms(run_bwd, 1, reps);
    attention_backward_version() = saved;
    double flops = 4.0 * B * H * (double)T * T * hd / 2.0;
    char name[128];
    snprintf(name, sizeof name, "attention_fwd T=%d hd=%d", T, hd);
    report_flops(name, "mma.sync v1", fwd, flops);
    report_flops(name, "mma.sync cp.async v2", fwd2, flops);
    snprintf(name, sizeof name, "attention_bwd T=%d hd=%d", T, hd);
    report_flops(name, "mma.sync v1", bwd, 2.5 * flops);
    report_flops(name, "mma.sync cp.async v2", bwd2, 2.5 * flops);
    snprintf(name, sizeof name, "attention_fwdbwd T=%d hd=%d", T, hd);
    report_flops(name, "mma.sync v1", fwd + bwd, 3.5 * flops);
    report_flops(name, "mma.sync cp.async v2", fwd2 + bwd2, 3.5 * flops);
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    if (g_small) {  // documents (one of length 1) and query blocks (one of one row) under every CPU-device schedule
        check_attention(1, 37, 2, 1, 64, true, {13, 14, 37});
        check_attention(1, 129, 2, 1, 128, false, {64, 100, 129});
        return finish("attention");
    }
    check_attention(1, 1, 4, 1, 64, true, {});
    check_attention(1, 1, 4, 1, 128, false, {});
    check_attention(2, 37, 8, 8, 128, true, {5, 6, 37});
    check_attention(1, 129, 4, 1, 64, true, {40, 64, 129});
    check_attention(1, 129, 4, 1, 128, false, {});
    check_attention(1, 300, 32, 8, 128, true, {100, 177, 300});
    check_attention(1, 777, 4, 1, 128, true, {200, 201, 777});
    check_attention(1, 777, 8, 8, 64, false, {});
    check_attention(1, 1000, 4, 1, 64, true, {333, 640, 1000});
    check_attention(1, 1000, 4, 2, 128, false, {});
    if (mst::on_cpu_device())  // about an hour of fibers: the CPU device's sampled-block mode will run it
        printf("SKIP attention sampled rows T=65536 (on the CPU device)\n");
    else
        check_sampled(1, 65536, 2, 1, 128);
    check_sampled(1, 4000, 4, 2, 64);
    if (g_bench) {
        bench(1, 8192, 32, 8, 128);
        bench(1, 32768, 32, 8, 128);
        bench(1, 8192, 32, 8, 64);
    }
    return finish("attention");
}
