// test_reference.cpp: the CPU reference (llama_reference.h) against the golden outputs of the independent
// PyTorch model (dev/reference.py -> golden/test-tiny.safetensors), the Mini-Sequence Transformer options
// against the plain whole-sequence path, the tied embeddings, the safetensors reader's errors, and the
// embedding backward's token buckets.
// Run from the repository root (make test does): ./test_reference [golden file]
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mst/llama_config.h"
#include "mst/llama_reference.h"
#include "mst/lr_schedule.h"
#include "tests/golden.h"
#include "mst/safetensors.h"
#include "mst/token_buckets.h"
#include "tests/test_util.h"

// dev/reference.py's training hyperparameters
static const float LR = 1e-3f, BETA1 = 0.9f, BETA2 = 0.95f, ADAM_EPS = 1e-8f, WEIGHT_DECAY = 0.1f, MAX_GRAD_NORM = 1.0f;

// fp32 tolerances against PyTorch (different summation orders): relative max error per tensor
static const double GRAD_TOLERANCE = 1e-4, LOGITS_TOLERANCE = 1e-5, LOSS_TOLERANCE = 1e-5, LOSSES_TOLERANCE = 1e-5;
// mini-sequences change where intermediates live, not the arithmetic: the same within 1e-6 (in fact bits)
static const double MST_TOLERANCE = 1e-6;

// max |a - b| / max |b|
static double relative_error(const float* a, const float* b, size_t count) {
    double max_difference = 0.0, max_reference = 0.0;
    for (size_t i = 0; i < count; i++) {
        max_difference = std::max(max_difference, (double)fabsf(a[i] - b[i]));
        max_reference = std::max(max_reference, (double)fabsf(b[i]));
    }
    return max_reference > 0.0 ? max_difference / max_reference : max_difference;
}

// Compares every parameter tensor's gradient on its own; true when all are within tolerance.
// *worst names the tensor with the largest relative error and the error.
static bool compare_gradients(const ModelConfig& config, const std::vector<float>& computed,
                              const std::vector<float>& expected, double tolerance, std::string* worst,
                              double* worst_error) {
    bool all_within = true;
    *worst_error = -1.0;
    for (const ParameterTensor& t : parameter_tensors(config)) {
        double e = relative_error(computed.data() + t.offset, expected.data() + t.offset, t.rows * t.cols);
        all_within = all_within && e <= tolerance;
        if (e > *worst_error) { *worst_error = e; *worst = t.name; }
    }
    return all_within;
}

static ReferenceModel golden_model(const Golden& g) {
    ReferenceModel m = reference_model(g.config);
    m.params = g.params;
    return m;
}

static ReferenceOptions mst_options(int mlp_chunks, int lmhead_chunks, bool recompute) {
    ReferenceOptions o;
    o.mlp_chunks = mlp_chunks;
    o.lmhead_chunks = lmhead_chunks;
    o.recompute = recompute;
    return o;
}

// ----------------------------------------------------------------------------

// the plain options, with document masking when the golden file has a bos token
static ReferenceOptions golden_options(const Golden& g) {
    ReferenceOptions o;
    o.doc_mask = g.bos >= 0;
    if (o.doc_mask) o.bos = g.bos;
    return o;
}

static void test_against_golden(const Golden& g) {
    ReferenceModel m = golden_model(g);
    std::vector<float> logits(g.logits.size());
    ReferenceOptions options = golden_options(g);
    reference_forward_logits(m, g.inputs.data(), g.B, g.T, logits.data(), options.doc_mask, options.bos);
    double logits_error = relative_error(logits.data(), g.logits.data(), logits.size());
    check(logits_error <= LOGITS_TOLERANCE, "golden: logits");

    float loss = reference_forward_backward(m, g.inputs.data(), g.targets.data(), g.B, g.T, options);
    double loss_error = fabs(loss - g.loss[0]);
    check(loss_error <= LOSS_TOLERANCE, "golden: loss");

    std::string worst;
    double grad_error;
    for (const ParameterTensor& t : parameter_tensors(g.config)) {
        double e = relative_error(m.grads.data() + t.offset, g.grads.data() + t.offset, t.rows * t.cols);
        check(e <= GRAD_TOLERANCE, ("golden: gradient of " + t.name).c_str());
    }
    compare_gradients(g.config, m.grads, g.grads, GRAD_TOLERANCE, &worst, &grad_error);

    // the comparison itself must catch one wrong element of one gradient
    // (by 10 x the tolerance, relative to the tensor's largest gradient)
    const ParameterLayout& layout = m.layout;
    size_t up_start = layout.layer_start(1) + layout.layer.up, up_count = (size_t)g.config.ffn_dim * g.config.d_model;
    float largest = 0.f;
    for (size_t i = up_start; i < up_start + up_count; i++) largest = std::max(largest, fabsf(g.grads[i]));
    std::vector<float> perturbed = m.grads;
    perturbed[up_start + 7] += 10 * GRAD_TOLERANCE * largest;
    std::string perturbed_worst;
    double perturbed_error;
    bool accepted = compare_gradients(g.config, perturbed, g.grads, GRAD_TOLERANCE, &perturbed_worst, &perturbed_error);
    check(!accepted && perturbed_worst == "model.layers.1.mlp.up_proj.weight",
          "golden: the gradient comparison rejects one perturbed element");

    // 10 AdamW steps with clipping on the same batch; the loss is recorded before each update
    ReferenceModel trained = golden_model(g);
    double losses_error = 0.0;
    float first_norm = 0.f;
    for (int step = 0; step < GOLDEN_STEPS; step++) {
        float step_loss = reference_forward_backward(trained, g.inputs.data(), g.targets.data(), g.B, g.T, options);
        float norm = reference_clip_gradients(trained, MAX_GRAD_NORM);
        if (step == 0) first_norm = norm;
        reference_adamw_step(trained, LR, BETA1, BETA2, ADAM_EPS, WEIGHT_DECAY);
        losses_error = std::max(losses_error, fabs(step_loss - g.losses[step]) / g.losses[step]);
    }
    check(losses_error <= LOSSES_TOLERANCE, "golden: 10 training steps' losses");
    double golden_norm = sqrt(sum_of_squares_cpu(g.grads.data(), g.grads.size()));
    check(fabs(first_norm - golden_norm) <= 1e-4 * golden_norm, "golden: gradient norm before clipping");

    printf("golden%s: logits %.2e, loss %.2e (%.6f vs %.6f), worst gradient %.2e (%s), 10 losses %.2e (relative)\n",
           g.bos >= 0 ? " (document mask)" : "", logits_error, loss_error, loss, g.loss[0], grad_error, worst.c_str(),
           losses_error);
}

// Clipping: the norm is returned, the gradients are scaled to max_norm only when the norm exceeds it.
static void test_clipping(const Golden& g) {
    ReferenceModel m = golden_model(g);
    m.grads = g.grads;
    double norm = sqrt(sum_of_squares_cpu(g.grads.data(), g.grads.size()));
    float returned = reference_clip_gradients(m, (float)(norm * 2));
    check(returned == (float)norm && m.grads == g.grads, "clip: a norm below max_norm leaves the gradients alone");
    reference_clip_gradients(m, 0.5f);
    double clipped = sqrt(sum_of_squares_cpu(m.grads.data(), m.grads.size()));
    check(fabs(clipped - 0.5) < 1e-5, "clip: a norm above max_norm is scaled to max_norm");
}

// Mini-sequence MLP and LM head, and layer recomputation, against the whole-sequence path.
static void test_mini_sequences(const Golden& g) {
    ReferenceModel whole = golden_model(g);
    float whole_loss = reference_forward_backward(whole, g.inputs.data(), g.targets.data(), g.B, g.T, ReferenceOptions());
    int N = g.B * g.T;  // 74: 3, 5, 7 and 9 do not divide it; N + 1 and 1000 exceed it
    const ReferenceOptions variants[] = {
        mst_options(2, 1, false), mst_options(3, 1, false), mst_options(7, 1, false), mst_options(N, 1, false),
        mst_options(N + 1, 1, false), mst_options(1000, 1, false), mst_options(1, 2, false), mst_options(1, 3, false),
        mst_options(1, 5, false), mst_options(1, N, false), mst_options(1, 1000, false), mst_options(1, 1, true),
        mst_options(9, 5, true), mst_options(N + 1, 3, true),
    };
    double worst_error = 0.0;
    for (const ReferenceOptions& o : variants) {
        ReferenceModel m = golden_model(g);
        float loss = reference_forward_backward(m, g.inputs.data(), g.targets.data(), g.B, g.T, o);
        std::string name = "mini-sequences: mlp_chunks " + std::to_string(o.mlp_chunks) + ", lmhead_chunks " +
                           std::to_string(o.lmhead_chunks) + (o.recompute ? ", recompute" : "");
        std::string worst;
        double grad_error;
        bool grads_equal = compare_gradients(g.config, m.grads, whole.grads, MST_TOLERANCE, &worst, &grad_error);
        double loss_error = fabs(loss - whole_loss) / whole_loss;
        check(loss_error <= MST_TOLERANCE && grads_equal, name.c_str());
        worst_error = std::max(worst_error, std::max(loss_error, grad_error));
    }
    printf("mini-sequences and recomputation: %zu variants, worst relative difference %.2e\n",
           sizeof(variants) / sizeof(variants[0]), worst_error);
}

// Checkpoints every k layers: a 5-layer test-tiny (the golden layers repeated, each scaled a little so no
// two are alike) with checkpoint_every k against per-layer checkpoints (k = 1), bit for bit: k = 2 and 3
// do not divide 5, k = 5 is one segment, k = 7 exceeds the layers.
static void test_segment_checkpoints(const Golden& g) {
    ModelConfig config = g.config;
    config.n_layer = 5;
    ReferenceModel base = reference_model(config);
    ParameterLayout golden_layout = parameter_layout(g.config);
    size_t layer_count = base.layout.layer.count;
    std::copy(g.params.begin(), g.params.begin() + golden_layout.layers, base.params.begin());
    for (int l = 0; l < config.n_layer; l++) {
        const float* from = g.params.data() + golden_layout.layer_start(l % g.config.n_layer);
        for (size_t i = 0; i < layer_count; i++) base.params[base.layout.layer_start(l) + i] = from[i] * (1.f + 0.05f * l);
    }
    size_t head = golden_layout.final_norm, tail = golden_layout.total - head;
    std::copy(g.params.begin() + head, g.params.begin() + head + tail, base.params.begin() + base.layout.final_norm);

    ReferenceModel per_layer = base;
    ReferenceOptions options = mst_options(3, 5, true);
    float per_layer_loss = reference_forward_backward(per_layer, g.inputs.data(), g.targets.data(), g.B, g.T, options);
    for (int k : {2, 3, 5, 7}) {
        ReferenceModel m = base;
        options.checkpoint_every = k;
        float loss = reference_forward_backward(m, g.inputs.data(), g.targets.data(), g.B, g.T, options);
        std::string name = "checkpoints every " + std::to_string(k) + " of 5 layers: loss and gradients bitwise those of every layer";
        check(loss == per_layer_loss && m.grads == per_layer.grads, name.c_str());
    }
    // without recompute there is nothing to recompute from: checkpoint_every is ignored
    ReferenceModel kept = base;
    ReferenceOptions no_recompute = mst_options(3, 5, false);
    no_recompute.checkpoint_every = 2;
    float kept_loss = reference_forward_backward(kept, g.inputs.data(), g.targets.data(), g.B, g.T, no_recompute);
    check(kept_loss == per_layer_loss && kept.grads == per_layer.grads, "checkpoint_every without recompute: the plain path");
}

// Tied embeddings: the tied model's gradients must equal those of an untied copy whose LM head holds the
// same matrix, with the embedding and LM head gradients added; and finite differences confirm a few.
static void test_tied_embeddings(const Golden& g) {
    ModelConfig tied_config;
    if (!check(find_model_config("test-tiny-tied", &tied_config), "tied: config test-tiny-tied exists")) return;
    ReferenceModel tied = reference_model(tied_config);
    ReferenceModel untied = golden_model(g);
    std::copy(g.params.begin(), g.params.begin() + tied.layout.total, tied.params.begin());
    std::copy(untied.params.begin() + untied.layout.embedding, untied.params.begin() + untied.layout.layers,
              untied.params.begin() + untied.layout.lm_head);
    ReferenceOptions options = mst_options(3, 5, true);
    float tied_loss = reference_forward_backward(tied, g.inputs.data(), g.targets.data(), g.B, g.T, options);
    float untied_loss = reference_forward_backward(untied, g.inputs.data(), g.targets.data(), g.B, g.T, options);
    check(tied_loss == untied_loss, "tied: same loss as the untied copy");

    std::vector<float> summed(untied.grads.begin(), untied.grads.begin() + tied.layout.total);
    size_t embedding_count = (size_t)tied_config.vocab_size * tied_config.d_model;
    for (size_t i = 0; i < embedding_count; i++) summed[untied.layout.embedding + i] += untied.grads[untied.layout.lm_head + i];
    std::string worst;
    double error;
    check(compare_gradients(tied_config, tied.grads, summed, MST_TOLERANCE, &worst, &error),
          "tied: gradients equal the untied ones with embedding and LM head gradients added");

    // central differences (L(w + h) - L(w - h)) / 2h on the largest embedding gradients; h = 1e-2 keeps the
    // fp32 rounding of the loss (~1e-6) small against the difference, the O(h^2) error stays ~0.1 %
    const float h = 1e-2f;
    int checked = 0, agreed = 0;
    std::vector<size_t> order(embedding_count);
    for (size_t i = 0; i < embedding_count; i++) order[i] = i;
    std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                      [&](size_t a, size_t b) { return fabsf(tied.grads[a]) > fabsf(tied.grads[b]); });
    for (int k = 0; k < 3; k++, checked++) {
        size_t i = tied.layout.embedding + order[k];
        ReferenceModel probe = tied;
        float saved = probe.params[i];
        probe.params[i] = saved + h;
        double plus = reference_forward_backward(probe, g.inputs.data(), g.targets.data(), g.B, g.T, options);
        probe.params[i] = saved - h;
        double minus = reference_forward_backward(probe, g.inputs.data(), g.targets.data(), g.B, g.T, options);
        double numeric = (plus - minus) / (2.0 * h);
        agreed += fabs(numeric - tied.grads[i]) <= 0.02 * fabs(tied.grads[i]);
        printf("tied: d loss / d embedding[%zu] analytic %.6e, finite difference %.6e\n", order[k], tied.grads[i], numeric);
    }
    check(agreed == checked, "tied: finite differences agree with the largest embedding gradients");
}

// The golden loader fails cleanly, with the file named, on a missing, truncated or corrupt file.
static void test_golden_errors(const std::string& golden_path) {
    Golden g;
    std::string error;
    check(!load_golden("/tmp/mst_no_such_file.safetensors", &g, &error) &&
              error.find("/tmp/mst_no_such_file.safetensors: cannot open") == 0,
          "errors: a missing golden file");

    FILE* f = fopen(golden_path.c_str(), "rb");
    std::vector<unsigned char> bytes;
    if (f) {
        bytes.resize(8192 * 1024);
        bytes.resize(fread(bytes.data(), 1, bytes.size(), f));
        fclose(f);
    }
    auto load_altered = [&](size_t keep, const std::string& find, const std::string& replace) {
        std::string path = "/tmp/mst_test_reference_corrupt.safetensors";
        std::string header(bytes.begin(), bytes.begin() + std::min(bytes.size(), (size_t)4096));
        std::vector<unsigned char> altered(bytes.begin(), bytes.begin() + std::min(keep, bytes.size()));
        size_t at = find.empty() ? std::string::npos : header.find(find);
        if (at != std::string::npos) std::copy(replace.begin(), replace.end(), altered.begin() + at);
        FILE* out = fopen(path.c_str(), "wb");
        fwrite(altered.data(), 1, altered.size(), out);
        fclose(out);
        bool loaded = load_golden(path, &g, &error);
        remove(path.c_str());
        return !loaded && error.find(path + ": ") == 0;
    };
    check(load_altered(1000, "", "") && error.find("beyond the end of the file") != std::string::npos,
          "errors: a truncated header");
    check(load_altered(bytes.size() - 4, "", "") && error.find("out of range") != std::string::npos,
          "errors: truncated data");
    check(load_altered(bytes.size(), "\"F32\"", "\"F99\"") && error.find("unknown dtype") != std::string::npos,
          "errors: an unknown dtype");
    check(load_altered(bytes.size(), "\"logits\"", "\"logitz\"") && error.find("no tensor 'logits'") != std::string::npos,
          "errors: a missing tensor");
    check(load_altered(bytes.size(), "[2,37,504]", "[4,37,252]") &&
              error.find("has shape [4, 37, 252], expected [2, 37, 504]") != std::string::npos,
          "errors: a wrong shape (same element count, so the offsets still match)");
}

// The writer and reader round trip: dtypes, metadata, names that need JSON escapes.
static void test_safetensors_round_trip() {
    const float f32[3] = {1.5f, -2.25f, 3e-8f};
    const uint16_t bf16[2] = {float_to_bf16(1.0f), float_to_bf16(-3.140625f)};
    const uint16_t f16[3] = {0x3c00, 0xc000, 0x0001};  // 1, -2, the smallest subnormal 2^-24
    const int32_t i32[2] = {-1, 128255};
    SafetensorsWriter writer;
    writer.metadata["format"] = "pt";
    writer.add("a \"quoted\" name", "F32", {3}, f32);
    writer.add("bf16", "BF16", {2, 1}, bf16);
    writer.add("f16", "F16", {3}, f16);
    writer.add("ids", "I32", {2}, i32);
    std::string path = "/tmp/mst_test_reference_round_trip.safetensors", error;
    bool written = writer.write(path, &error);
    SafetensorsReader reader;
    std::vector<float> a, b, c;
    std::vector<int32_t> ids;
    bool read = written && reader.open(path, &error) && reader.read_f32("a \"quoted\" name", {3}, &a, &error) &&
                reader.read_f32("bf16", {2, 1}, &b, &error) && reader.read_f32("f16", {}, &c, &error) &&
                reader.read_i32("ids", {2}, &ids, &error);
    remove(path.c_str());
    check(read && a == std::vector<float>(f32, f32 + 3) && b == std::vector<float>{1.0f, -3.140625f} &&
              c == std::vector<float>{1.0f, -2.0f, ldexpf(1.f, -24)} && ids == std::vector<int32_t>(i32, i32 + 2) &&
              reader.metadata["format"] == "pt",
          "safetensors: write and read back F32, BF16, F16, I32 and metadata");
    if (!read) printf("  %s\n", error.c_str());
}

// The learning-rate schedule the trainer uses (lr_schedule.h): linear warmup, then a cosine from the
// peak to final_fraction x peak at the last step; checked against the formula at the points that matter.
static void test_learning_rate_schedule() {
    const float lr = 3e-4f, final_fraction = 0.1f;
    const int steps = 100, warmup = 10;
    bool ok = fabsf(learning_rate_at(0, steps, lr, warmup, final_fraction) - lr / warmup) < 1e-9f &&
              fabsf(learning_rate_at(warmup - 1, steps, lr, warmup, final_fraction) - lr) < 1e-9f &&
              fabsf(learning_rate_at(warmup, steps, lr, warmup, final_fraction) - lr) < 1e-9f &&
              fabsf(learning_rate_at(steps - 1, steps, lr, warmup, final_fraction) - lr * final_fraction) < 1e-9f;
    // halfway through the decay the cosine is at the mean of the peak and the floor
    int middle = warmup + (steps - warmup - 1) / 2;
    float expected_middle = lr * final_fraction + (lr - lr * final_fraction) * 0.5f *
                            (1.f + cosf((float)M_PI * (middle - warmup) / (steps - warmup - 1)));
    ok = ok && fabsf(learning_rate_at(middle, steps, lr, warmup, final_fraction) - expected_middle) < 1e-8f;
    bool decreasing = true;
    for (int s = warmup + 1; s < steps; s++)
        decreasing &= learning_rate_at(s, steps, lr, warmup, final_fraction) < learning_rate_at(s - 1, steps, lr, warmup, final_fraction);
    check(ok && decreasing, "learning rate: warmup to the peak, cosine down to the floor at the last step");
    check(learning_rate_at(7, 10, lr, 0, 1.f) == lr, "learning rate: no warmup and final fraction 1 is constant");
}

// The embedding backward's buckets (token_buckets.h), checked against their definition: every position
// once, ids strictly ascending across buckets, positions ascending within one, one bucket per distinct id;
// and summing the buckets as the GPU kernel does (each id's rows in bucket order onto its dwte row) gives
// embedding_backward_cpu's result bit for bit.
static bool buckets_valid(const TokenBuckets& b, const std::vector<int>& tokens, int V) {
    int N = (int)tokens.size();
    std::vector<int> seen(N, 0), present(V, 0);
    for (int t : tokens) present[t] = 1;
    int distinct = 0;
    for (int v = 0; v < V; v++) distinct += present[v];
    bool ok = b.N == N && b.count == distinct && b.bucket_start()[0] == 0 && b.bucket_start()[b.count] == N;
    for (int k = 0; ok && k < b.count; k++) {
        int begin = b.bucket_start()[k], end = b.bucket_start()[k + 1];
        ok = begin < end && (k == 0 || b.bucket_id()[k - 1] < b.bucket_id()[k]);
        for (int i = begin; ok && i < end; i++) {
            int n = b.positions()[i];
            ok = n >= 0 && n < N && seen[n]++ == 0 && tokens[n] == b.bucket_id()[k] && (i == begin || b.positions()[i - 1] < n);
        }
    }
    for (int n = 0; ok && n < N; n++) ok = seen[n] == 1;
    return ok;
}
static bool bucket_sums_match_cpu(const TokenBuckets& b, const std::vector<int>& tokens, int V, int C, std::mt19937* rng) {
    int N = (int)tokens.size();
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    std::vector<float> dout((size_t)N * C), start((size_t)V * C);
    for (auto& x : dout) x = uniform(*rng);
    for (auto& x : start) x = uniform(*rng);
    std::vector<float> expected = start, got = start;
    embedding_backward_cpu(expected.data(), dout.data(), tokens.data(), N, C);
    for (int k = 0; k < b.count; k++)
        for (int c = 0; c < C; c++) {
            float acc = got[(size_t)b.bucket_id()[k] * C + c];
            for (int i = b.bucket_start()[k]; i < b.bucket_start()[k + 1]; i++) acc += dout[(size_t)b.positions()[i] * C + c];
            got[(size_t)b.bucket_id()[k] * C + c] = acc;
        }
    return memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0;
}
static void test_token_buckets() {
    std::mt19937 rng(20260101);
    TokenBuckets b;  // reused across cases, as train_llama reuses it across batches
    struct Case { const char* name; int N, V; int kind; };  // kind 0: heavy repeats, 1: each id once, 2: one id
    const Case cases[] = {{"random ids with heavy repetition, N=1009 V=7", 1009, 7, 0},
                          {"random ids, a hot one, N=4099 V=50000", 4099, 50000, 0},
                          {"ids each appearing once, N=777 V=1000", 777, 1000, 1},
                          {"one id everywhere, N=333 V=5", 333, 5, 2},
                          {"a single token, N=1 V=3", 1, 3, 0}};
    for (const Case& k : cases) {
        std::vector<int> tokens(k.N);
        if (k.kind == 1) {
            std::vector<int> ids(k.V);
            for (int v = 0; v < k.V; v++) ids[v] = v;
            std::shuffle(ids.begin(), ids.end(), rng);
            std::copy(ids.begin(), ids.begin() + k.N, tokens.begin());
        } else {
            int hot = std::uniform_int_distribution<int>(0, k.V - 1)(rng);
            for (int& t : tokens)
                t = k.kind == 2 || rng() % 4 == 0 ? hot : std::uniform_int_distribution<int>(0, k.V - 1)(rng);
        }
        bool ok = bucket_tokens(&b, tokens.data(), k.N, k.V);
        std::string name = std::string("token buckets: ") + k.name;
        check(ok && buckets_valid(b, tokens, k.V), name.c_str());
        name += ": bucket sums equal embedding_backward_cpu bitwise";
        check(ok && bucket_sums_match_cpu(b, tokens, k.V, 13, &rng), name.c_str());
    }
    std::vector<int> bad = {0, 2, 3, 1};
    check(!bucket_tokens(&b, bad.data(), 4, 3), "token buckets: an id >= V is refused");
    bad[2] = -1;
    check(!bucket_tokens(&b, bad.data(), 4, 4), "token buckets: a negative id is refused");
}

// Random attention inputs (B, T, H | KV, hd) in [-1, 1).
struct AttentionCase {
    int B, T, H, KV, hd;
    std::vector<float> q, k, v, dout;
};
static AttentionCase attention_case(int B, int T, int H, int KV, int hd, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    AttentionCase c{B, T, H, KV, hd, {}, {}, {}, {}};
    for (auto* x : {&c.q, &c.dout}) { x->resize((size_t)B * T * H * hd); for (float& e : *x) e = uniform(rng); }
    for (auto* x : {&c.k, &c.v}) { x->resize((size_t)B * T * KV * hd); for (float& e : *x) e = uniform(rng); }
    return c;
}
// Outputs of one attention forward + backward.
struct AttentionResult { std::vector<float> out, lse, dq, dk, dv; };
static AttentionResult attention_run(const AttentionCase& c, const int* doc_start, int block) {
    size_t nq = (size_t)c.B * c.T * c.H * c.hd, nkv = (size_t)c.B * c.T * c.KV * c.hd;
    AttentionResult r{std::vector<float>(nq), std::vector<float>((size_t)c.B * c.H * c.T), std::vector<float>(nq),
                      std::vector<float>(nkv), std::vector<float>(nkv)};
    for (int q0 = 0; q0 < c.T; q0 += block)
        attention_forward_cpu(r.out.data(), r.lse.data(), c.q.data(), c.k.data(), c.v.data(), c.B, c.T, c.H, c.KV,
                              c.hd, doc_start, q0, block);
    for (int q0 = 0; q0 < c.T; q0 += block)
        attention_backward_cpu(r.dq.data(), r.dk.data(), r.dv.data(), c.dout.data(), c.q.data(), c.k.data(),
                               c.v.data(), r.out.data(), r.lse.data(), c.B, c.T, c.H, c.KV, c.hd, doc_start, q0, block);
    return r;
}
static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Query blocks [q0, q0 + n) in order give the whole-sequence attention. Forward, dq: the same arithmetic per
// row, so the same bits. dk, dv: with one query head per kv head each key sums its queries in the same order
// (bits); with grouped heads the block loop moves outside the head loop, reordering the fp32 sum of at most
// group * T terms of size ~1: within 1e-5 relative.
static void test_attention_query_blocks() {
    for (int KV : {4, 2}) {
        AttentionCase c = attention_case(2, 13, 4, KV, 8, 100 + KV);
        AttentionResult full = attention_run(c, nullptr, c.T);
        AttentionResult whole_default{full.out, full.lse, full.dq, full.dk, full.dv};
        attention_forward_cpu(whole_default.out.data(), whole_default.lse.data(), c.q.data(), c.k.data(),
                              c.v.data(), c.B, c.T, c.H, c.KV, c.hd);
        check(same_bits(whole_default.out, full.out), "attention: default arguments = one block of T");
        for (int block : {1, 4, 5, 12, 20}) {
            AttentionResult r = attention_run(c, nullptr, block);
            char name[128];
            snprintf(name, sizeof name, "attention query blocks of %d (KV %d): out, lse, dq bitwise", block, KV);
            check(same_bits(r.out, full.out) && same_bits(r.lse, full.lse) && same_bits(r.dq, full.dq), name);
            snprintf(name, sizeof name, "attention query blocks of %d (KV %d): dk, dv", block, KV);
            if (KV == c.H) check(same_bits(r.dk, full.dk) && same_bits(r.dv, full.dv), name);
            else check(relative_error(r.dk.data(), full.dk.data(), r.dk.size()) <= 1e-5 &&
                       relative_error(r.dv.data(), full.dv.data(), r.dv.size()) <= 1e-5, name);
        }
    }
}

// Random document boundaries per sequence (position 0 always starts one) as doc_start (B, T).
static std::vector<int> random_document_starts(int B, int T, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int> doc_start((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0, start = 0; t < T; t++) {
            if (t > 0 && rng() % 4 == 0) start = t;
            doc_start[(size_t)b * T + t] = start;
        }
    return doc_start;
}

// Document-masked attention against each document run as its own unmasked sequence (copied out, attention
// over B = 1, copied back): every result, forward and backward. The same keys in the same order: bitwise
// (dk, dv of grouped heads in query blocks: within 1e-5).
static bool document_mask_matches_separate_runs(const AttentionCase& c, const std::vector<int>& mask_starts,
                                                const std::vector<int>& true_starts, int block) {
    AttentionResult masked = attention_run(c, mask_starts.data(), block);
    AttentionResult separate{std::vector<float>(masked.out.size()), std::vector<float>(masked.lse.size()),
                             std::vector<float>(masked.dq.size()), std::vector<float>(masked.dk.size()),
                             std::vector<float>(masked.dv.size())};
    for (int b = 0; b < c.B; b++) {
        for (int start = 0; start < c.T;) {
            int end = start + 1;
            while (end < c.T && true_starts[(size_t)b * c.T + end] == start) end++;
            int len = end - start;
            AttentionCase d{1, len, c.H, c.KV, c.hd, {}, {}, {}, {}};
            size_t q_off = ((size_t)b * c.T + start) * c.H * c.hd, kv_off = ((size_t)b * c.T + start) * c.KV * c.hd;
            size_t q_len = (size_t)len * c.H * c.hd, kv_len = (size_t)len * c.KV * c.hd;
            d.q.assign(c.q.begin() + q_off, c.q.begin() + q_off + q_len);
            d.dout.assign(c.dout.begin() + q_off, c.dout.begin() + q_off + q_len);
            d.k.assign(c.k.begin() + kv_off, c.k.begin() + kv_off + kv_len);
            d.v.assign(c.v.begin() + kv_off, c.v.begin() + kv_off + kv_len);
            AttentionResult r = attention_run(d, nullptr, len);
            std::copy(r.out.begin(), r.out.end(), separate.out.begin() + q_off);
            std::copy(r.dq.begin(), r.dq.end(), separate.dq.begin() + q_off);
            std::copy(r.dk.begin(), r.dk.end(), separate.dk.begin() + kv_off);
            std::copy(r.dv.begin(), r.dv.end(), separate.dv.begin() + kv_off);
            for (int h = 0; h < c.H; h++)
                std::copy(r.lse.begin() + (size_t)h * len, r.lse.begin() + (size_t)(h + 1) * len,
                          separate.lse.begin() + ((size_t)b * c.H + h) * c.T + start);
            start = end;
        }
    }
    // grouped heads in query blocks reorder dk, dv sums (see test_attention_query_blocks): 1e-5 then
    bool kv_bits = c.H == c.KV || block >= c.T;
    bool kv_ok = kv_bits ? same_bits(masked.dk, separate.dk) && same_bits(masked.dv, separate.dv)
                         : relative_error(masked.dk.data(), separate.dk.data(), masked.dk.size()) <= 1e-5 &&
                           relative_error(masked.dv.data(), separate.dv.data(), masked.dv.size()) <= 1e-5;
    return same_bits(masked.out, separate.out) && same_bits(masked.lse, separate.lse) &&
           same_bits(masked.dq, separate.dq) && kv_ok;
}

static void test_attention_document_mask() {
    for (int KV : {3, 1}) {
        AttentionCase c = attention_case(3, 29, 3, KV, 8, 200 + KV);
        std::vector<int> starts = random_document_starts(c.B, c.T, 300 + KV);
        for (int block : {c.T, 7}) {
            char name[128];
            snprintf(name, sizeof name, "document mask = separate documents (KV %d, query blocks of %d)", KV, block);
            check(document_mask_matches_separate_runs(c, starts, starts, block), name);
        }
        // perturbation: a document's first token also sees the previous token (off-by-one) must fail
        std::vector<int> off_by_one = starts;
        for (int& s : off_by_one) s = std::max(0, s - 1);
        check(!document_mask_matches_separate_runs(c, off_by_one, starts, c.T), "document mask off by one is caught");
    }
    // document_starts_cpu: bos at 0, 3 and 4 of T = 6, and a row without bos at position 0
    const int tokens[12] = {9, 5, 6, 9, 9, 7, 1, 2, 9, 3, 4, 5};
    const int expected[12] = {0, 0, 0, 3, 4, 4, 0, 0, 2, 2, 2, 2};
    std::vector<int> starts(12);
    document_starts_cpu(starts.data(), tokens, 2, 6, 9);
    check(std::equal(starts.begin(), starts.end(), expected), "document_starts_cpu at bos tokens and position 0");
}

// Model level: with doc_mask the loss of sequences split into documents at bos tokens equals the token-weighted
// sum of each document run on its own (and so do the gradients). Not bitwise: RoPE scores depend on the
// relative position only mathematically, and the sums run in other orders: 1e-5 relative (loss), 1e-4
// (gradients, the golden tolerance). Without the mask the same comparison fails.
static void test_document_mask_model(const Golden& g) {
    const int B = 2, T = 23, bos = 1;
    std::mt19937 rng(7);
    std::vector<int> inputs((size_t)B * T), targets((size_t)B * T);
    for (size_t i = 0; i < inputs.size(); i++) {
        inputs[i] = 2 + (int)(rng() % (g.config.vocab_size - 2));
        targets[i] = (int)(rng() % g.config.vocab_size);
        if (i % T == 0 || rng() % 5 == 0) inputs[i] = bos;
    }
    // the documents on their own, gradients and loss weighted by their token counts
    ReferenceModel separate = golden_model(g);
    std::vector<float> expected_grads(separate.grads.size(), 0.f);
    double expected_loss = 0.0;
    for (int b = 0; b < B; b++)
        for (int start = 0; start < T;) {
            int end = start + 1;
            while (end < T && inputs[(size_t)b * T + end] != bos) end++;
            float weight = (float)(end - start) / (B * T);
            size_t at = (size_t)b * T + start;
            expected_loss += weight * reference_forward_backward(separate, inputs.data() + at, targets.data() + at,
                                                                 1, end - start, ReferenceOptions());
            for (size_t i = 0; i < expected_grads.size(); i++) expected_grads[i] += weight * separate.grads[i];
            start = end;
        }
    for (bool doc_mask : {true, false}) {
        ReferenceModel m = golden_model(g);
        ReferenceOptions o;
        o.doc_mask = doc_mask;
        o.bos = bos;
        float loss = reference_forward_backward(m, inputs.data(), targets.data(), B, T, o);
        std::string worst;
        double worst_error;
        bool grads_ok = compare_gradients(g.config, m.grads, expected_grads, GRAD_TOLERANCE, &worst, &worst_error);
        bool ok = fabs(loss - expected_loss) <= 1e-5 * fabs(expected_loss) && grads_ok;
        if (doc_mask) {
            printf("document mask: loss %.6f vs documents %.6f, worst gradient %.2e (%s)\n", loss, expected_loss,
                   worst_error, worst.c_str());
            check(ok, "document-masked model = documents run separately (loss, gradients)");
        } else {
            check(!ok, "without the document mask the model differs from the separate documents");
        }
    }
}

int main(int argc, char** argv) {
    std::string golden_path = argc > 1 ? argv[1] : GOLDEN_PATH;
    Golden g;
    std::string error;
    if (!load_golden(golden_path, &g, &error))
        safetensors_exit_on_error(error + " (run from the repository root; regenerate with python3 dev/reference.py)");
    test_against_golden(g);
    Golden docmask;
    if (!load_golden(GOLDEN_DOCMASK_PATH, &docmask, &error))
        safetensors_exit_on_error(error + " (run from the repository root; regenerate with python3 dev/reference.py)");
    check(docmask.bos >= 0, "golden: the document-mask file names its bos token");
    test_against_golden(docmask);
    {   // the mask matters for this batch: the unmasked reference misses the document-masked golden logits
        std::vector<float> unmasked(docmask.logits.size());
        reference_forward_logits(golden_model(docmask), docmask.inputs.data(), docmask.B, docmask.T, unmasked.data());
        check(relative_error(unmasked.data(), docmask.logits.data(), unmasked.size()) > 100 * LOGITS_TOLERANCE,
              "golden: the document-masked logits differ from unmasked attention");
    }
    test_clipping(g);
    test_mini_sequences(g);
    test_segment_checkpoints(g);
    test_tied_embeddings(g);
    test_golden_errors(golden_path);
    test_safetensors_round_trip();
    test_learning_rate_schedule();
    test_token_buckets();
    test_attention_query_blocks();
    test_attention_document_mask();
    test_document_mask_model(g);
    return test_summary();
}
