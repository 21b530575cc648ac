// dev/cuda/attention_sm90.cu: the product's sm_90a attention forward and backward (mst/attention_sm90.cuh: 128-key blocks,
// TMA ring, ping-pong consumer warpgroups, intra-warpgroup overlap, document masking, query blocks) on fresh
// random inputs against attention_forward_cpu (fp32) with FlashAttention-3's rule (dev/cuda/common.h,
// check_fa3_rule), lse within 1e-3; every check also requires:
//   - the rows outside the query block untouched (the poison still there), and the same bytes on a rerun;
//   - without document masking or a query block: within the rule's bound of the mma.sync forward
//     (attention_forward), each being within it of the fp32 reference;
//   - a query block's rows bitwise equal to the whole forward's (keys are blocked from key 0 either way, and a
//     block that is fully masked for a row adds exact zeros).
// Sizes: T = 1, 37, 129, 300, 1000, 421 (no multiple of a tile), GQA 4/1, 8/8, 32/8, hd 64 and 128, batches of
// 2 (a tile's rows past T are the next sequence's), random document boundaries (one document of length 1, one
// crossing a 128-row tile edge). --small: a subset (for the four-schedule runs of dev/cpu_device_kernels.sh);
// --all (the last argument): the T = 1000 cases as well.
// Then the backward (attention_backward_sm90: K/V-stationary dK/dV, Q-stationary dQ) against
// attention_backward_cpu by the same rule for dq, dk, dv, reruns bitwise, query blocks (check_backward).
// UNVERIFIED on a GPU until one runs it. Other cards: SKIP lines. On the CPU device (make
// dev/cuda/bin/attention_sm90_cpu), which stands in for an sm_90a card: TMA tiles land only at their mbarrier
// phase, wgmma results only at wgmma.wait_group, shared memory race-checked, named barriers' phases checked.
#include "common.h"

// random document starts for B sequences of T: boundaries at 0, at about every 60 positions, a document of
// length 1 at a random p (boundaries p and p + 1), and, for T > 140, one document over [121, 140) and beyond
// (it crosses the tile edge at 128)
static std::vector<int> random_doc_starts(int B, int T) {
    std::vector<int> starts((size_t)B * T);
    for (int b = 0; b < B; b++) {
        std::vector<char> boundary(T + 1, 0);
        boundary[0] = 1;
        for (int i = 0; i < T / 60; i++) boundary[rand_int(1, T - 1)] = 1;
        if (T > 2) {
            int p = rand_int(1, T - 2);
            boundary[p] = boundary[p + 1] = 1;
        }
        if (T > 140) {
            for (int t = 122; t < 140; t++) boundary[t] = 0;
            boundary[121] = 1;
        }
        int start = 0;
        for (int t = 0; t < T; t++) {
            if (boundary[t]) start = t;
            starts[(size_t)b * T + t] = start;
        }
    }
    return starts;
}

// rows [q0, q1) of every sequence of x (B, T, width): the part a query block writes
static std::vector<float> rows_of(const std::vector<float>& x, int B, int T, size_t width, int q0, int q1) {
    std::vector<float> r;
    for (int b = 0; b < B; b++) r.insert(r.end(), x.begin() + ((size_t)b * T + q0) * width, x.begin() + ((size_t)b * T + q1) * width);
    return r;
}

struct Case {
    int B, T, H, KV, hd;
    bool doc;
    int q0 = 0, n = -1;
};

static void check_case(const Case& c) {
    int B = c.B, T = c.T, H = c.H, KV = c.KV, hd = c.hd, q0 = c.q0, q1 = c.n < 0 ? T : std::min(T, c.q0 + c.n);
    bool whole = q0 == 0 && q1 == T;
    size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * KV * hd, nl = (size_t)B * H * T;
    std::vector<float> q = rand_uniform(nq, -2.f, 2.f), k = rand_uniform(nkv, -2.f, 2.f), v = rand_uniform(nkv, -1.f, 1.f);
    std::vector<int> starts = c.doc ? random_doc_starts(B, T) : std::vector<int>();
    bf16 *dq = upload_bf16(q), *dk = upload_bf16(k), *dv = upload_bf16(v);
    int* d_starts = nullptr;
    if (c.doc) {
        d_starts = dmalloc<int>(starts.size());
        CUDA_CHECK(cudaMemcpy(d_starts, starts.data(), starts.size() * sizeof(int), cudaMemcpyHostToDevice));
    }
    const int* doc = c.doc ? starts.data() : nullptr;
    bf16* out = dmalloc<bf16>(nq);
    float* lse = dmalloc<float>(nl);
    char what[160];
    snprintf(what, sizeof what, "hd=%d B=%d T=%d H=%d KV=%d%s rows [%d, %d)", hd, B, T, H, KV, c.doc ? " docs" : "", q0, q1);

    // two runs on poisoned outputs: the same bytes, and the rows outside [q0, q1) never written
    std::vector<uint16_t> out_bits[2];
    std::vector<uint32_t> lse_bits[2];
    for (int run = 0; run < 2; run++) {
        poison(out, nq * 2);
        poison(lse, nl * 4);
        attention_forward_sm90(out, lse, dq, dk, dv, B, T, H, KV, hd, d_starts, q0, q1 - q0, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        out_bits[run] = download((const uint16_t*)out, nq);
        lse_bits[run] = download((const uint32_t*)lse, nl);
    }
    char name[256];
    snprintf(name, sizeof name, "attention_sm90 %s: the same bytes on a rerun", what);
    check_true(name, out_bits[0] == out_bits[1] && lse_bits[0] == lse_bits[1]);
    if (!whole) {
        size_t untouched = 0, outside = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                if (t >= q0 && t < q1) continue;
                for (int h = 0; h < H; h++) {
                    outside++;
                    bool clean = lse_bits[0][((size_t)b * H + h) * T + t] == 0xffffffffu;
                    for (int i = 0; i < hd; i++) clean = clean && out_bits[0][(((size_t)b * T + t) * H + h) * hd + i] == 0xffffu;
                    untouched += clean;
                }
            }
        snprintf(name, sizeof name, "attention_sm90 %s: %zu of %zu rows outside untouched", what, untouched, outside);
        check_true(name, untouched == outside);
    }
    std::vector<float> got(nq), got_lse(nl);
    for (size_t i = 0; i < nq; i++) got[i] = bf2f_bits(out_bits[0][i]);
    memcpy(got_lse.data(), lse_bits[0].data(), nl * 4);

    std::vector<float> ref32(nq, 0.f), lse32(nl, 0.f), ref16(nq, 0.f);
    attention_forward_cpu(ref32.data(), lse32.data(), q.data(), k.data(), v.data(), B, T, H, KV, hd, doc, q0, c.n);
    attention_forward_bf16_reference(ref16.data(), nullptr, q.data(), k.data(), v.data(), B, T, H, KV, hd, doc, q0, c.n);
    snprintf(name, sizeof name, "attention_sm90 out %s", what);
    double err = check_fa3_rule(name, rows_of(got, B, T, (size_t)H * hd, q0, q1), rows_of(ref32, B, T, (size_t)H * hd, q0, q1),
                                rows_of(ref16, B, T, (size_t)H * hd, q0, q1));
    std::vector<float> lse_got, lse_ref;  // (B, H, T): rows [q0, q1) of each (b, h)
    for (size_t bh = 0; bh < (size_t)B * H; bh++) {
        lse_got.insert(lse_got.end(), got_lse.begin() + bh * T + q0, got_lse.begin() + bh * T + q1);
        lse_ref.insert(lse_ref.end(), lse32.begin() + bh * T + q0, lse32.begin() + bh * T + q1);
    }
    snprintf(name, sizeof name, "attention_sm90 lse %s", what);
    compare(name, lse_got, lse_ref, 1e-3f, 1e-4f);

    if (!c.doc && whole) {  // the mma.sync forward on the same inputs: both within the rule's bound E of ref32
        bf16* out_mma = dmalloc<bf16>(nq);
        float* lse_mma = dmalloc<float>(nl);
        attention_forward(out_mma, lse_mma, dq, dk, dv, B, T, H, KV, hd, nullptr, 0, T, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> mma = download_bf16(out_mma, nq);
        double bf16_err = 0, diff = 0;
        for (size_t i = 0; i < nq; i++) {
            bf16_err = std::max(bf16_err, (double)fabsf(ref16[i] - ref32[i]));
            diff = std::max(diff, (double)fabsf(mma[i] - got[i]));
        }
        double bound = 2 * (2 * bf16_err + 1e-3);  // the triangle inequality over the two rule bounds
        snprintf(name, sizeof name, "attention_sm90 vs mma.sync %s: max diff %.3g <= %.3g (ours vs ref32 %.3g)", what, diff, bound, err);
        check_true(name, diff == diff && diff <= bound);
        CUDA_CHECK(cudaFree(out_mma));
        CUDA_CHECK(cudaFree(lse_mma));
    }
    if (!whole) {  // the whole forward on the same inputs: the block's rows bitwise equal
        poison(out, nq * 2);
        poison(lse, nl * 4);
        attention_forward_sm90(out, lse, dq, dk, dv, B, T, H, KV, hd, d_starts, 0, T, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<uint16_t> full_out = download((const uint16_t*)out, nq);
        std::vector<uint32_t> full_lse = download((const uint32_t*)lse, nl);
        bool same = true;
        for (int b = 0; b < B; b++) {
            size_t at = ((size_t)b * T + q0) * H * hd, len = (size_t)(q1 - q0) * H * hd;
            same = same && !memcmp(full_out.data() + at, out_bits[0].data() + at, len * 2);
            for (int h = 0; h < H; h++) {
                size_t l_at = ((size_t)b * H + h) * T + q0;
                same = same && !memcmp(full_lse.data() + l_at, lse_bits[0].data() + l_at, (size_t)(q1 - q0) * 4);
            }
        }
        snprintf(name, sizeof name, "attention_sm90 %s: bitwise equal to the whole forward's rows", what);
        check_true(name, same);
    }
    for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)out, (void*)lse, (void*)d_starts})
        if (p) CUDA_CHECK(cudaFree(p));
}

// The backward (attention_backward_sm90) on fresh random inputs, out and lse from attention_forward_cpu (out as
// bf16): dq and bf16 dk, dv (the trainer's) against attention_backward_cpu (fp32) by the rule, the same bytes on a
// rerun; then query blocks [ends[i-1], ends[i]) in order (empty: none), each with q, dout, out, lse present only
// in the block and k, v only before its end (the rest poisoned), fp32 dk, dv accumulated over the blocks: dq
// bitwise equal to the whole call's (its key blocks are the same), dk and dv by the rule.
struct BackwardCase {
    int B, T, H, KV, hd;
    bool doc;
    std::vector<int> ends;
};

static void check_backward(const BackwardCase& c) {
    int B = c.B, T = c.T, H = c.H, KV = c.KV, hd = c.hd;
    size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * KV * hd, nl = (size_t)B * H * T;
    std::vector<float> q = rand_uniform(nq, -2.f, 2.f), k = rand_uniform(nkv, -2.f, 2.f), v = rand_uniform(nkv, -1.f, 1.f),
                       dout = rand_uniform(nq, -1.f, 1.f);
    std::vector<int> starts = c.doc ? random_doc_starts(B, T) : std::vector<int>();
    const int* doc = c.doc ? starts.data() : nullptr;
    bf16 *d_q = upload_bf16(q), *d_k = upload_bf16(k), *d_v = upload_bf16(v), *d_dout = upload_bf16(dout);
    std::vector<float> out32(nq, 0.f), lse32(nl, 0.f);
    attention_forward_cpu(out32.data(), lse32.data(), q.data(), k.data(), v.data(), B, T, H, KV, hd, doc);
    std::vector<float> out_rounded = out32;
    bf16* d_out = upload_bf16(out_rounded);
    float* d_lse = upload(lse32);
    int* d_starts = c.doc ? upload(starts) : nullptr;
    void* scratch = dmalloc<char>(attention_backward_scratch_bytes(B, T, H, hd));
    bf16 *dq = dmalloc<bf16>(nq), *dk = dmalloc<bf16>(nkv), *dv = dmalloc<bf16>(nkv);
    char what[160], name[256];
    snprintf(what, sizeof what, "hd=%d B=%d T=%d H=%d KV=%d%s", hd, B, T, H, KV, c.doc ? " docs" : "");

    std::vector<uint16_t> bits[2][3];  // two runs on poisoned outputs: dq, dk, dv
    for (int run = 0; run < 2; run++) {
        poison(dq, nq * 2);
        poison(dk, nkv * 2);
        poison(dv, nkv * 2);
        attention_backward_sm90(dq, dk, dv, scratch, d_dout, d_q, d_k, d_v, d_out, d_lse, B, T, H, KV, hd, d_starts, 0, T, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        bits[run][0] = download((const uint16_t*)dq, nq);
        bits[run][1] = download((const uint16_t*)dk, nkv);
        bits[run][2] = download((const uint16_t*)dv, nkv);
    }
    snprintf(name, sizeof name, "attention_sm90 backward %s: the same bytes on a rerun", what);
    check_true(name, bits[0][0] == bits[1][0] && bits[0][1] == bits[1][1] && bits[0][2] == bits[1][2]);
    std::vector<float> ref32[3] = {std::vector<float>(nq), std::vector<float>(nkv), std::vector<float>(nkv)};
    std::vector<float> ref16[3] = {std::vector<float>(nq), std::vector<float>(nkv), std::vector<float>(nkv)};
    attention_backward_cpu(ref32[0].data(), ref32[1].data(), ref32[2].data(), dout.data(), q.data(), k.data(), v.data(), out32.data(),
                           lse32.data(), B, T, H, KV, hd, doc);
    attention_backward_bf16_reference(ref16[0].data(), ref16[1].data(), ref16[2].data(), dout.data(), q.data(), k.data(), v.data(),
                                      out32.data(), lse32.data(), B, T, H, KV, hd, doc);
    const char* grad[3] = {"dq", "dk", "dv"};
    for (int g = 0; g < 3; g++) {
        std::vector<float> got(bits[0][g].size());
        for (size_t i = 0; i < got.size(); i++) got[i] = bf2f_bits(bits[0][g][i]);
        snprintf(name, sizeof name, "attention_sm90 backward %s %s", grad[g], what);
        check_fa3_rule(name, got, ref32[g], ref16[g], gradient_atol(ref32[g]));
    }

    if (!c.ends.empty()) {
        float *dk32 = dmalloc<float>(nkv), *dv32 = dmalloc<float>(nkv);
        poison(dq, nq * 2);
        poison(dk32, nkv * 4);
        poison(dv32, nkv * 4);
        int q0 = 0;
        for (int q1 : c.ends) {
            bf16 *bq = rows_only(d_q, B, T, (size_t)H * hd, q0, q1), *bdout = rows_only(d_dout, B, T, (size_t)H * hd, q0, q1),
                 *bout = rows_only(d_out, B, T, (size_t)H * hd, q0, q1), *bk = rows_only(d_k, B, T, (size_t)KV * hd, 0, q1),
                 *bv = rows_only(d_v, B, T, (size_t)KV * hd, 0, q1);
            float* blse = rows_only(d_lse, B * H, T, 1, q0, q1);
            attention_backward_sm90(dq, dk32, dv32, scratch, bdout, bq, bk, bv, bout, blse, B, T, H, KV, hd, d_starts, q0, q1 - q0, 0);
            CUDA_CHECK(cudaDeviceSynchronize());
            for (void* p : {(void*)bq, (void*)bdout, (void*)bout, (void*)bk, (void*)bv, (void*)blse}) CUDA_CHECK(cudaFree(p));
            q0 = q1;
        }
        std::string blocks;
        for (int e : c.ends) blocks += " " + std::to_string(e);
        snprintf(name, sizeof name, "attention_sm90 backward query blocks (ends%s) %s: dq bitwise equal to the whole call's", blocks.c_str(), what);
        check_true(name, download((const uint16_t*)dq, nq) == bits[0][0]);
        snprintf(name, sizeof name, "attention_sm90 backward query blocks dk (fp32, accumulated) %s", what);
        check_fa3_rule(name, download(dk32, nkv), ref32[1], ref16[1], gradient_atol(ref32[1]));
        snprintf(name, sizeof name, "attention_sm90 backward query blocks dv (fp32, accumulated) %s", what);
        check_fa3_rule(name, download(dv32, nkv), ref32[2], ref16[2], gradient_atol(ref32[2]));
        CUDA_CHECK(cudaFree(dk32));
        CUDA_CHECK(cudaFree(dv32));
    }
    for (void* p : {(void*)d_q, (void*)d_k, (void*)d_v, (void*)d_dout, (void*)d_out, (void*)d_lse, (void*)d_starts, scratch, (void*)dq,
                    (void*)dk, (void*)dv})
        if (p) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    std::string why = why_not_sm90();
    if (!why.empty()) {
        printf("SKIP attention_sm90: %s\n", why.c_str());
        printf("0 passed, 0 failed, 1 skipped\n");
        return 0;
    }
    // --all: the T = 1000 cases too (about 2 minutes on the CPU device; the default set is make test's)
    bool all = argc > 1 && !strcmp(argv[argc - 1], "--all");
    parse_args(argc - all, argv);
    std::vector<Case> cases;
    for (int hd : {64, 128})
        for (int T : {1, 37, 300}) cases.push_back({1, T, 4, 1, hd, false});
    cases.push_back({1, 129, 32, 8, 128, false});
    cases.push_back({2, 300, 4, 2, 64, true});
    cases.push_back({2, 300, 4, 2, 128, true, 129, 100});
    if (!g_small) {
        for (int hd : {64, 128})
            for (int T : {129, 421}) cases.push_back({1, T, 4, 1, hd, false});
        cases.push_back({1, 300, 32, 8, 64, false});
        cases.push_back({2, 421, 8, 8, 128, false});
        cases.push_back({1, 37, 4, 1, 64, true});
        cases.push_back({2, 421, 4, 2, 128, true});
        cases.push_back({1, 421, 4, 1, 64, false, 37, -1});  // a query block off the tile grid, to the end
    }
    if (all) {
        for (int hd : {64, 128}) {
            cases.push_back({1, 1000, 4, 1, hd, false});
            cases.push_back({2, 1000, 4, 2, hd, true});
        }
        cases.push_back({1, 1000, 8, 8, 128, false});
        cases.push_back({1, 1000, 4, 1, 128, false, 129, 300});
        cases.push_back({2, 1000, 8, 2, 128, true, 256, 128});  // one tile, with documents
    }
    for (const Case& c : cases) check_case(c);
    std::vector<BackwardCase> backward = {
        {1, 37, 4, 1, 64, false, {}},
        {1, 129, 2, 2, 128, false, {}},
        {2, 300, 4, 2, 64, true, {129, 200, 300}},
    };
    if (!g_small) {
        backward.push_back({1, 1, 4, 1, 128, false, {}});
        backward.push_back({1, 300, 4, 1, 128, false, {}});
        backward.push_back({2, 421, 4, 2, 128, true, {}});
        backward.push_back({1, 421, 2, 2, 64, false, {37, 300, 421}});
        backward.push_back({1, 129, 32, 8, 128, false, {}});  // llama3-8b's GQA: 4 query heads a KV head
    }
    if (all) {
        for (int hd : {64, 128}) backward.push_back({2, 1000, 4, 2, hd, true, {}});
        backward.push_back({1, 1000, 8, 8, 128, false, {}});
        backward.push_back({1, 300, 32, 8, 64, false, {}});
        backward.push_back({1, 1000, 4, 1, 128, false, {256, 700, 1000}});
    }
    for (const BackwardCase& c : backward) check_backward(c);
    return finish("attention_sm90");
}
