// test_llama.cu: the GPU trainer's model code (train_llama.cu, included here without its main) checked
// against golden outputs from PyTorch (golden/test-tiny.safetensors, made by dev/reference.py) and
// against the CPU reference (llama_reference.h). Without a GPU every test prints SKIP and the program
// exits 0.
//
// Tolerances are bf16's, in the manner of llm.c's test_gpt2.cu: the GPU keeps weights and activations in
// bf16 (8 bits of mantissa, ~0.4% per rounding), so a loss must agree to ~1% and a tensor is compared by
// its largest absolute error against a fraction of the reference tensor's largest magnitude. Every check
// is able to fail: a wrong sign, a missing term or a wrong layout moves errors to ~100% of the scale.
// Where the same kernels on the same shapes must give the same bits (recomputation on/off, two runs,
// fused vs unfused updates without clipping), the check is exact.
#define TESTING
#include <filesystem>
#include <functional>
#include "train_llama.cu"
#include "tests/golden.h"
#include "mst/llama_reference.h"
#include "mst/safetensors.h"
#include "tests/test_util.h"

// the golden run's optimizer (dev/reference.py): lr 1e-3 constant, betas 0.9/0.95, eps 1e-8, wd 0.1, clip 1
static const OptimizerSettings GOLDEN_OPTIMIZER = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
// a bf16 gradient against an fp32 one: largest error <= 5% of the tensor's largest magnitude (a CPU model
// of the GPU's roundings lands at 0.3-0.9% on the golden model; a wrong term is ~100%)
static const float GRADIENT_TOLERANCE = 0.05f;

// ----------------------------------------------------------------------------
// helpers

static ModelConfig config_named(const char* name) {
    ModelConfig c;
    if (!find_model_config(name, &c)) { printf("no config %s\n", name); exit(1); }
    return c;
}

static TrainingOptions options_for(int B, int T, int mlp_chunks, int lmhead_chunks, bool recompute, bool fused) {
    TrainingOptions o;
    o.B = B; o.T = T;
    o.mlp_chunks = mlp_chunks; o.lmhead_chunks = lmhead_chunks;
    o.recompute = recompute;
    o.fused_optimizer = fused;
    o.bf16_optimizer_state = false;  // fp32 state + master weights: the reference's arithmetic
    o.master_weights = true;
    return o;
}

// test-2layer (Llama 3's vocabulary) on a GPU. On the CPU device, which runs kernels thousands of times
// slower, the same model with a 5,000-token vocabulary (like 128,256: a multiple of 8, and here not of 64)
// and the sequences a quarter as long (two_layer_T), so the suite keeps within make test's time.
static ModelConfig two_layer_model() {
    ModelConfig c = config_named("test-2layer");
    if (mst::on_cpu_device()) c.vocab_size = 5000;
    return c;
}
static int two_layer_T(int T) { return mst::on_cpu_device() ? T / 4 : T; }

// the trainer's defaults (bf16 state, no master weights, fused, automatic mini-sequences) at B x T
static TrainingOptions default_options(int B, int T) {
    TrainingOptions o;
    o.B = B; o.T = T;
    return o;
}

// the full gradient after an unfused model_step(..., apply_update = false)
static std::vector<float> download_grads(const Model* m) {
    std::vector<float> out(m->layout.total);
    CUDA_CHECK(cudaMemcpy(out.data(), m->grads, out.size() * 4, cudaMemcpyDeviceToHost));
    return out;
}

static float max_abs(const float* x, size_t n) {
    float m = 0.f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

// max |got - want| <= tolerance * max |want| (plus a floor for an all-zero tensor); prints the figures
static bool close_to(const char* what, const float* got, const float* want, size_t n, float tolerance) {
    float error = 0.f;
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        finite &= std::isfinite(got[i]);
        error = fmaxf(error, fabsf(got[i] - want[i]));
    }
    float scale = max_abs(want, n);
    bool ok = finite && error <= tolerance * scale + 1e-7f;
    printf("  %-52s max err %.3e, scale %.3e, ratio %.4f (tolerance %.3f)%s\n", what, error, scale,
           scale > 0 ? error / scale : 0.f, tolerance, ok ? "" : "  <-- FAIL");
    return check(ok, what);
}

static bool loss_close(const char* what, float got, float want, float relative) {
    bool ok = std::isfinite(got) && fabsf(got - want) <= relative * fabsf(want);
    printf("  %-52s %.6f vs %.6f (rel err %.2e)%s\n", what, got, want, fabsf(got - want) / fabsf(want), ok ? "" : "  <-- FAIL");
    return check(ok, what);
}

static bool bitwise_equal(const char* what, const void* a, const void* b, size_t bytes) {
    bool ok = memcmp(a, b, bytes) == 0;
    printf("  %-52s %s\n", what, ok ? "identical" : "DIFFER  <-- FAIL");
    return check(ok, what);
}

// a model with the golden weights and these options
static void golden_model(Model* m, const Golden& g, const TrainingOptions& o, const OptimizerSettings& opt) {
    model_create(m, config_named("test-tiny"), o, opt, 1);
    model_set_parameters(m, g.params);
}

// ----------------------------------------------------------------------------
// tests

// one forward + backward on the golden batch: logits, loss and every parameter's gradient
static void test_golden_gradients(const Golden& g) {
    printf("golden forward/backward (test-tiny, B=%d T=%d, no mini-sequences, no recomputation):\n", g.B, g.T);
    Model m;
    golden_model(&m, g, options_for(g.B, g.T, 1, 1, false, false), GOLDEN_OPTIMIZER);
    float norm;
    float loss = model_step(&m, g.inputs.data(), g.targets.data(), 0.f, false, &norm);
    loss_close("golden loss", loss, g.loss[0], 1e-2f);
    std::vector<float> grads = download_grads(&m);
    std::vector<ParameterTensor> tensors = parameter_tensors(m.config);
    for (const ParameterTensor& t : tensors) {
        std::string name = "grad " + t.name;
        close_to(name.c_str(), grads.data() + t.offset, g.grads.data() + t.offset, t.rows * t.cols, GRADIENT_TOLERANCE);
    }
    // logits: the forward again, then the whole LM head at once (one mini-sequence holds all N rows)
    model_forward(&m, false);
    matmul_forward(m.logits, m.final_norm, m.params + m.layout.lm_head, m.N, m.config.d_model,
                   m.config.vocab_size, false, m.stream);
    std::vector<bf16> raw((size_t)m.N * m.config.vocab_size);
    CUDA_CHECK(cudaMemcpy(raw.data(), m.logits, raw.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> logits(raw.size());
    for (size_t i = 0; i < raw.size(); i++) logits[i] = __bfloat162float(raw[i]);
    close_to("golden logits", logits.data(), g.logits.data(), logits.size(), 0.02f);
    model_free(&m);
}

// ten AdamW steps on the golden batch with fp32 state and master weights, unfused (exact clipping)
static void test_golden_training(const Golden& g) {
    printf("golden training, %d AdamW steps (fp32 state, master weights, not fused):\n", GOLDEN_STEPS);
    Model m;
    golden_model(&m, g, options_for(g.B, g.T, 0, 0, true, false), GOLDEN_OPTIMIZER);
    for (int step = 0; step < GOLDEN_STEPS; step++) {
        float norm;
        float loss = model_step(&m, g.inputs.data(), g.targets.data(), GOLDEN_OPTIMIZER.lr, true, &norm);
        char name[64];
        snprintf(name, sizeof name, "golden loss at step %d", step + 1);
        loss_close(name, loss, g.losses[step], 2e-2f);
    }
    model_free(&m);
}

// Mini-sequences (T % M != 0) and recomputation change memory, not results: the same loss and gradients
// within bf16 tolerance (chunked matmuls may pick other cuBLASLt algorithms); recomputation alone runs
// the same kernels on the same shapes, so it gives the same bits.
static void test_mini_sequences_and_recomputation(const Golden& g) {
    printf("mini-sequences and recomputation (golden batch, N = %d):\n", g.B * g.T);
    struct Variant { const char* name; int mlp, lmhead; bool recompute; };
    const Variant variants[] = {{"m=1 M=1 r=0 (standard)", 1, 1, false}, {"m=1 M=1 r=1", 1, 1, true},
                                {"m=3 M=5 r=0", 3, 5, false}, {"m=3 M=5 r=1", 3, 5, true}, {"m=0 M=0 r=1", 0, 0, true}};
    std::vector<float> losses, standard_grads, previous_grads;
    for (const Variant& v : variants) {
        Model m;
        golden_model(&m, g, options_for(g.B, g.T, v.mlp, v.lmhead, v.recompute, false), GOLDEN_OPTIMIZER);
        float norm;
        float loss = model_step(&m, g.inputs.data(), g.targets.data(), 0.f, false, &norm);
        std::vector<float> grads = download_grads(&m);
        std::string name = std::string(v.name) + ": ";
        if (standard_grads.empty()) {
            standard_grads = grads;
            losses.push_back(loss);
        } else {
            loss_close((name + "loss vs standard").c_str(), loss, losses[0], 5e-3f);
            for (const ParameterTensor& t : parameter_tensors(m.config)) {
                std::string what = name + t.name;
                close_to(what.c_str(), grads.data() + t.offset, standard_grads.data() + t.offset, t.rows * t.cols, 0.02f);
            }
        }
        if (v.recompute && (&v - variants) % 2 == 1)  // r=1 right after the same chunks with r=0
            bitwise_equal((name + "gradients identical to r=0").c_str(), grads.data(), previous_grads.data(), grads.size() * 4);
        previous_grads = grads;
        model_free(&m);
    }
}

// The fused step (each group's gradient held on the host, the update applied before the next forward,
// clipped with the same step's norm) and the unfused one give the same weights with clipping active
// (clip 0.1, below every step's norm): three steps, fp32 state and master weights; untied and tied
// embeddings (the tied gradient lives across the whole backward). The norms' summation order differs
// (per group vs whole), so 1e-6 of the largest weight, not bits.
static void test_fused_optimizer(const Golden& g) {
    printf("fused optimizer vs unfused (clip 0.1, active, 3 steps):\n");
    OptimizerSettings no_clip = GOLDEN_OPTIMIZER;
    no_clip.grad_clip = 0.1f;
    for (const char* model_name : {"test-tiny", "test-tiny-tied"}) {
        std::vector<float> masters[2], gradients[2];
        for (int fused = 0; fused < 2; fused++) {
            Model m;
            model_create(&m, config_named(model_name), options_for(g.B, g.T, 2, 3, true, fused), no_clip, 7);
            model_init_random(&m);
            // the held gradient (fused: the groups' host copies) is the unfused gradient (within 1e-6 of the
            // largest: the same kernels, but cuBLASLt may pick another algorithm for another pointer alignment)
            float first_norm;
            model_step(&m, g.inputs.data(), g.targets.data(), 0.f, false, &first_norm);
            const float* held = (const float*)m.host_grads;  // fp32 state: held in fp32
            if (fused) gradients[1].assign(held, held + m.layout.total);
            else gradients[0] = download_grads(&m);
            for (int step = 0; step < 3; step++) {
                float norm;
                model_step(&m, g.inputs.data(), g.targets.data(), no_clip.lr, true, &norm);
            }
            masters[fused] = download_master(&m);
            model_free(&m);
        }
        close_to((std::string(model_name) + ": gradient held on the host (fused) vs unfused gradient").c_str(),
                 gradients[1].data(), gradients[0].data(), gradients[0].size(), 1e-6f);
        std::string what = std::string(model_name) + ": master weights, fused vs unfused";
        close_to(what.c_str(), masters[1].data(), masters[0].data(), masters[0].size(), 1e-6f);
    }
}

// Two runs from the same seed give the same bits (losses and weights), with the default options (bf16
// state with stochastic rounding, no master weights, fused); and nothing is allocated after start-up.
static void test_determinism_and_no_allocation() {
    ModelConfig c = two_layer_model();
    TrainingOptions o;
    o.T = two_layer_T(1024);
    printf("determinism and no allocation after start-up (test-2layer, V=%d, T=%d, defaults, one random batch):\n",
           c.vocab_size, o.T);
    const int steps = 3;
    std::vector<int> inputs(o.T), targets(o.T);
    std::vector<float> losses[2];
    std::vector<bf16> weights[2];
    for (int run = 0; run < 2; run++) {
        Model m;
        model_create(&m, c, o, OptimizerSettings(), 42);
        model_init_random(&m);
        check(device_allocations == 1, "one device allocation after start-up");
        size_t free_after_first = 0, free_now, total;
        random_batch(inputs.data(), targets.data(), 1, o.T, c.vocab_size, 42, 0);
        for (int step = 0; step < steps; step++) {
            float norm;
            losses[run].push_back(model_step(&m, inputs.data(), targets.data(), 1e-3f, true, &norm));
            CUDA_CHECK(cudaMemGetInfo(&free_now, &total));
            if (step == 0) free_after_first = free_now;
        }
        if (run == 0) {
            printf("  device allocations %d; free bytes after step 1 %zu, after step %d %zu\n", device_allocations,
                   free_after_first, steps, free_now);
            check(device_allocations == 1, "still one device allocation after the steps");
            check(free_now == free_after_first, "free device memory unchanged from step 1 to the last step");
            check(losses[run][steps - 1] < losses[run][0], "the loss falls on a repeated batch");
        }
        model_apply_pending_update(&m);  // the last step's update too: a broken one must not pass
        weights[run].resize(m.layout.total);
        CUDA_CHECK(cudaMemcpy(weights[run].data(), m.params, weights[run].size() * 2, cudaMemcpyDeviceToHost));
        model_free(&m);
    }
    bitwise_equal("losses of two runs", losses[0].data(), losses[1].data(), steps * 4);
    bitwise_equal("weights of two runs", weights[0].data(), weights[1].data(), weights[0].size() * 2);
}

// --offload: layer checkpoints in pinned host memory, copied on their own stream, against the same
// model keeping them on the device: losses (a forward-only loss between steps included, as validation
// does) and weights bitwise equal; one pinned allocation made at start-up and none after. test-2layer
// with 5 layers, so the staging buffers' parity and the prefetch chain run past their first round;
// all 5 layers offloaded, and 3 (inputs 3, 4 and the output keep device buffers).
static void test_offload() {
    ModelConfig c = two_layer_model();
    const int T = two_layer_T(1024);
    printf("layer checkpoints offloaded to pinned host memory (test-2layer with 5 layers, V=%d, T=%d, 3 steps):\n",
           c.vocab_size, T);
    c.n_layer = 5;
    const int steps = 3;
    const int offloads[3] = {0, OFFLOAD_ALL, 3};
    std::vector<int> inputs(T), targets(T);
    std::vector<float> losses[3];
    std::vector<bf16> weights[3];
    for (int run = 0; run < 3; run++) {
        int offload = run > 0;  // the host arena also holds the fused optimizer's gradients
        TrainingOptions o;
        o.T = T;
        o.offload = offloads[run];
        Model m;
        model_create(&m, c, o, OptimizerSettings(), 42);
        model_init_random(&m);
        check(host_allocations == 1, "one pinned host allocation (held gradients, and the checkpoints with offload)");
        for (int step = 0; step < steps; step++) {
            random_batch(inputs.data(), targets.data(), 1, o.T, c.vocab_size, 42, step);
            float norm;
            losses[run].push_back(model_step(&m, inputs.data(), targets.data(), 1e-3f, true, &norm));
            losses[run].push_back(model_loss(&m, inputs.data(), targets.data()));
        }
        if (offload) check(host_allocations == 1 && device_allocations == 1, "offload: still one allocation of each after the steps");
        model_apply_pending_update(&m);  // the last step's update too: a broken one must not pass
        weights[run].resize(m.layout.total);
        CUDA_CHECK(cudaMemcpy(weights[run].data(), m.params, weights[run].size() * 2, cudaMemcpyDeviceToHost));
        model_free(&m);
    }
    bitwise_equal("offload of all 5 layers vs none: losses", losses[0].data(), losses[1].data(), losses[0].size() * 4);
    bitwise_equal("offload of all 5 layers vs none: weights", weights[0].data(), weights[1].data(), weights[0].size() * 2);
    bitwise_equal("offload of 3 layers vs none: losses", losses[0].data(), losses[2].data(), losses[0].size() * 4);
    bitwise_equal("offload of 3 layers vs none: weights", weights[0].data(), weights[2].data(), weights[0].size() * 2);
}

// The gradient of the last step: not fused, the gradient region; fused, the groups' host copies (once the
// copy stream has delivered them), fp32 or bf16 (widened exactly)
static std::vector<float> last_gradient(Model* m) {
    if (!m->plan.options.fused_optimizer) return download_grads(m);
    CUDA_CHECK(cudaStreamSynchronize(m->copy_stream));
    size_t P = m->layout.total;
    if (held_bytes(m) == 4) return std::vector<float>((const float*)m->host_grads, (const float*)m->host_grads + P);
    std::vector<float> widened(P);
    for (size_t i = 0; i < P; i++) widened[i] = __bfloat162float(((const bf16*)m->host_grads)[i]);
    return widened;
}

// The CPU device's high-water marks of device and pinned bytes since reset_high_water(): the plan's totals
static void reset_high_water() {
    mst::allocation_high_water(false, true);
    mst::allocation_high_water(true, true);
}
static void check_high_water(const Model& m, const std::string& what) {
    long long device_high = mst::allocation_high_water(false, false), pinned_high = mst::allocation_high_water(true, false);
    if (device_high < 0) {
        skip((what + "high-water marks").c_str(), "the CPU device's count");
        return;
    }
    printf("  %-52s device %lld, pinned %lld bytes (plan %zu, %zu)\n", (what + "high-water marks").c_str(), device_high,
           pinned_high, m.plan.total, m.plan.host_total);
    check(device_high == (long long)m.plan.total && pinned_high == (long long)m.plan.host_total,
          (what + "allocation high-water marks equal the plan's device and host totals").c_str());
}

// --keep-attention: each layer's attention output and lse kept from forward (outputs 0 .. L-3 through pinned
// host memory) instead of recomputed in backward, against the same model recomputing them: losses and gradient
// norms (a forward-only loss after the first step, as validation does), the first step's gradient and the
// weights after 3 steps bitwise equal, fused, and fused with every checkpoint offloaded too (the two
// schedules share the copy stream). test-tiny with 5 layers (outputs 0, 1 and 2 go to the host, through both buffers and
// both pairs of events) at T = 40 (not a multiple of the attention tiles). --segment k (every k-th input kept,
// the others recomputed as a segment's backward begins) likewise against k = 1: k = 2 fused (segments of 2, 2
// and 1; inputs 1 and 3 share a buffer, so backward needs input 1 recomputed), on the card and with --offload 1
// (checkpoints 0 and 2 to the host through both staging buffers, each fetched back while the segment above runs
// its backward), and k = 3 unfused with --offload 1 (segments of 3 and 2, checkpoint 0 to the host and back).
// Last, every lever the plan combines at the longest T: -f 1 with attention in 3 query blocks, then the same with
// --segment 2 --offload 1 --state-offload 1, bitwise equal to the blocks alone.
// The CPU device's high-water marks of device and pinned bytes equal the plan's totals.
static void test_keep_attention_and_segments() {
    ModelConfig c = config_named("test-tiny");
    c.n_layer = 5;
    const int T = 40, steps = 3;
    printf("--keep-attention and --segment vs recomputing (test-tiny with %d layers, T=%d, %d steps):\n", c.n_layer, T, steps);
    struct Run { const char* name; bool fused, keep; int offload, segment, state_offload = 0, attention_blocks = 1; };
    const Run runs[] = {{"-f 0", false, false, 0, 1}, {"-f 0 --segment 3 --offload 1", false, false, OFFLOAD_ALL, 3},
                        {"-f 1", true, false, 0, 1}, {"-f 1 --keep-attention 1", true, true, 0, 1},
                        {"-f 1 --keep-attention 1 --offload 1", true, true, OFFLOAD_ALL, 1}, {"-f 1 --segment 2", true, false, 0, 2},
                        {"-f 1 --segment 2 --offload 1", true, false, OFFLOAD_ALL, 2},
                        // the levers the plan combines at the longest T (llama3-8b on 80 + 120 GiB): with attention in
                        // query blocks (whose gradients differ from the whole sequence's in summation order only),
                        // the segments' offloaded checkpoints and the AdamW state on the host change no bit
                        {"-f 1 --attention-blocks 3", true, false, 0, 1, 0, 3},
                        {"-f 1 --attention-blocks 3 --segment 2 --offload 1 --state-offload 1", true, false, OFFLOAD_ALL, 2, 1, 3}};
    std::vector<int> inputs(T), targets(T);
    std::vector<float> losses, gradient, weights, baseline[3];
    for (const Run& run : runs) {
        TrainingOptions o = default_options(1, T);
        o.fused_optimizer = run.fused;
        o.keep_attention = run.keep;
        o.offload = run.offload;
        o.segment = run.segment;
        o.state_offload = run.state_offload;
        o.attention_blocks = run.attention_blocks;
        reset_high_water();
        Model m;
        model_create(&m, c, o, OptimizerSettings(), 23);
        model_init_random(&m);
        losses.clear();
        for (int step = 0; step < steps; step++) {
            random_batch(inputs.data(), targets.data(), 1, T, c.vocab_size, 23, step);
            float norm;
            losses.push_back(model_step(&m, inputs.data(), targets.data(), 1e-3f, true, &norm));
            losses.push_back(norm);
            if (step > 0) continue;
            gradient = last_gradient(&m);
            losses.push_back(model_loss(&m, inputs.data(), targets.data()));  // a forward-only pass between steps
        }
        weights = download_params(&m);
        std::string what = std::string(run.name) + ": ";
        check_high_water(m, what);
        if (run.keep) check(m.plan.bytes[REGION_HOST_ATTENTION] > 0, (what + "the plan holds outputs 0 .. 2 on the host").c_str());
        check(m.checkpoints.segment.k == run.segment, (what + "the model runs segments of the layers asked for").c_str());
        if (run.segment > 1 && run.offload)
            check(m.checkpoints.offload.stored() == (run.segment == 2 ? 2 : 1) &&
                  m.plan.bytes[REGION_HOST_CHECKPOINTS] == (size_t)m.checkpoints.offload.stored() * T * c.d_model * 2,
                  (what + "the plan holds the stored checkpoints on the host").c_str());
        model_free(&m);
        if (!run.keep && run.segment == 1) {  // the runs after it compare with it
            baseline[0] = losses; baseline[1] = gradient; baseline[2] = weights;
            continue;
        }
        bitwise_equal((what + "losses, gradient norms vs recomputed").c_str(), losses.data(), baseline[0].data(), losses.size() * 4);
        bitwise_equal((what + "gradient vs recomputed").c_str(), gradient.data(), baseline[1].data(), gradient.size() * 4);
        bitwise_equal((what + "weights vs recomputed").c_str(), weights.data(), baseline[2].data(), weights.size() * 4);
    }
}

// --attention-blocks N: each layer's attention half over N query blocks (forward, its recompute, and backward with
// dK, dV summed over the blocks in fp32) against the whole-sequence path with the same kernels: test-tiny with one
// layer at B = 2, T = 67 (not a multiple of any attention tile: blocks of 23, 23, 21 and of 17, 17, 17, 16 tokens),
// 3 blocks with the mma.sync kernels, and 4 with document masking (starts inside blocks and on a
// block's first row) with the sm_90a kernels (the default on H100/H200), 3 steps (-f 0). A block's forward rows are the same bits as the whole sequence's (the
// attention kernels' promise; on the CPU device the matmuls and norms work row by row too), so there the
// forward-only loss and the first step's loss are bitwise equal (on a GPU, whose cuBLASLt may pick another
// algorithm for fewer rows: within 1e-3). Backward differs in fp32 summation order only: dK, dV over the blocks,
// and dWq, dWk, dWv, dWo over the blocks' rows, each sum of at most B T = 134 terms reordered, so off by at most
// 134 x 2^-24 = 8e-6 of the sum of its terms' magnitudes. The gradient must agree within BLOCK_GRADIENT_TOLERANCE
// = 1e-3 of each tensor's largest magnitude: 100 times that bound (terms summing to up to 100 times the largest
// element), a quarter of one bf16 ulp (2^-8), so nothing systematic in a bf16 tensor hides under it; a rounding
// of dK or dV to bf16 that the order moves by one ulp would show here as a failure to look at (a wrong block, a
// wrong mask or a lost block's dK is tens of percent). The losses of steps 2 and 3 within 1e-3 relative; the
// weights after 3 steps within 2 x 3 x lr plus one bf16 ulp of the largest weight (AdamW's update of an element is
// about lr in size whatever its gradient's, so an element whose gradient is ~0 may move by up to 2 lr a step
// once the order flips its sign). The CPU device's device high-water mark equals the plan's total. The gradient
// check is shown to fail on one element moved by twice its tolerance.
static const float BLOCK_GRADIENT_TOLERANCE = 1e-3f;
static void test_attention_blocks() {
    ModelConfig c = config_named("test-tiny");
    c.n_layer = 1;
    const int B = 2, T = 67, steps = 3, bos = 7;
    const float lr = 1e-3f;
    printf("--attention-blocks vs the whole sequence (test-tiny with 1 layer, B=%d T=%d, %d steps, mma.sync and sm_90a kernels):\n",
           B, T, steps);
    std::vector<int> inputs(B * T), targets(B * T);
    struct Case { int blocks; bool doc_mask, sm90; };
    for (Case k : {Case{3, false, false}, Case{4, true, true}}) {
        bool sm90 = k.sm90;
        if (sm90 && mst::device_major() != 9) { skip("attention blocks with the sm_90a kernels", "compute capability 9.0"); continue; }
        std::vector<float> losses[2], gradient[2], weights[2];
        size_t attention_bytes[2];
        for (int run = 0; run < 2; run++) {
            TrainingOptions o = default_options(B, T);
            o.fused_optimizer = 0;
            o.keep_attention = 0;
            o.doc_mask = k.doc_mask;
            o.attention_blocks = run ? k.blocks : 1;
            mst::allocation_high_water(false, true);
            mst::allocation_high_water(true, true);
            Model m;
            model_create(&m, c, o, OptimizerSettings(), 31);
            m.attention_sm90 = sm90;
            m.bos_token = bos;
            model_init_random(&m);
            for (int step = 0; step < steps; step++) {
                random_batch(inputs.data(), targets.data(), B, T, c.vocab_size, 31, step);
                for (int& x : inputs) if (x == bos) x = bos + 1;
                for (int t : {0, 10, 17, 40}) inputs[t] = bos;  // row 0: a start on block 1's first row (4 blocks: 17)
                for (int t : {5, 34, 66}) inputs[T + t] = bos;  // row 1: one of length 1 at the end
                if (step == 0) losses[run].push_back(model_loss(&m, inputs.data(), targets.data()));
                float norm;
                losses[run].push_back(model_step(&m, inputs.data(), targets.data(), lr, true, &norm));
                if (step == 0) gradient[run] = download_grads(&m);
            }
            weights[run] = download_params(&m);
            attention_bytes[run] = m.plan.bytes[REGION_ATTENTION_NORM] + m.plan.bytes[REGION_QKV] + m.plan.bytes[REGION_ATTENTION_OUT];
            long long device_high = mst::allocation_high_water(false, false);
            std::string what = "--attention-blocks " + std::to_string(o.attention_blocks) + ": ";
            if (device_high < 0) {
                skip((what + "high-water mark").c_str(), "the CPU device's count");
            } else if (run) {
                printf("  %-52s device %lld bytes (plan %zu)\n", (what + "high-water mark").c_str(), device_high, m.plan.total);
                check(device_high == (long long)m.plan.total, (what + "the allocation high-water mark equals the plan's total").c_str());
            }
            check(m.plan.options.attention_blocks == o.attention_blocks, (what + "the plan runs the blocks asked for").c_str());
            model_free(&m);
        }
        std::string what = std::to_string(k.blocks) + " blocks" + (k.doc_mask ? ", --doc-mask 1" : "") +
                           (sm90 ? ", sm_90a: " : ", mma.sync: ");
        printf("  %s attention norm + q, k, v + output: %zu bytes, whole sequence %zu\n", what.c_str(), attention_bytes[1], attention_bytes[0]);
        check(attention_bytes[1] < attention_bytes[0], (what + "the blocks' attention regions are smaller").c_str());
        if (mst::on_cpu_device()) {
            bitwise_equal((what + "forward-only and step-1 losses").c_str(), losses[1].data(), losses[0].data(), 2 * 4);
        } else {
            loss_close((what + "forward-only loss").c_str(), losses[1][0], losses[0][0], 1e-3f);
            loss_close((what + "loss of step 1").c_str(), losses[1][1], losses[0][1], 1e-3f);
        }
        for (int step = 2; step <= steps; step++)
            loss_close((what + "loss of step " + std::to_string(step)).c_str(), losses[1][step], losses[0][step], 1e-3f);
        for (const ParameterTensor& t : parameter_tensors(c)) {
            close_to((what + "grad " + t.name).c_str(), gradient[1].data() + t.offset, gradient[0].data() + t.offset,
                     t.rows * t.cols, BLOCK_GRADIENT_TOLERANCE);
        }
        float worst = 0.f, largest = max_abs(weights[0].data(), weights[0].size());
        for (size_t i = 0; i < weights[0].size(); i++) worst = fmaxf(worst, fabsf(weights[1][i] - weights[0][i]));
        float bound = 2 * steps * lr + largest / 256;
        printf("  %-52s max |difference| %.3e (bound %.3e)\n", (what + "weights after 3 steps").c_str(), worst, bound);
        check(std::isfinite(worst) && worst <= bound, (what + "weights after 3 steps within the bound").c_str());
        if (!sm90) {  // the gradient check can fail: one element of q_proj's moved by 2 x its tolerance
            std::vector<ParameterTensor> tensors = parameter_tensors(c);
            const ParameterTensor& q = *std::find_if(tensors.begin(), tensors.end(),
                                                     [](const ParameterTensor& t) { return t.name.find("layers.0.self_attn.q_proj") != std::string::npos; });
            size_t n = q.rows * q.cols;
            std::vector<float> moved(gradient[1].begin() + q.offset, gradient[1].begin() + q.offset + n);
            moved[n / 2] += 2 * BLOCK_GRADIENT_TOLERANCE * max_abs(gradient[0].data() + q.offset, n);
            float error = 0.f;
            for (size_t i = 0; i < n; i++) error = fmaxf(error, fabsf(moved[i] - gradient[0][q.offset + i]));
            check(error > BLOCK_GRADIENT_TOLERANCE * max_abs(gradient[0].data() + q.offset, n) + 1e-7f,
                  "the gradient check fails on one element moved by twice its tolerance");
        }
    }
}

// One step of the trainer (no update) and the CPU reference's forward and backward on the same bf16 weights and
// tokens: both losses, the trainer's gradient, and the reference (its gradient in reference.grads)
struct StepBesideReference {
    float loss, reference_loss;
    std::vector<float> grads;
    ReferenceModel reference;
};
static StepBesideReference step_beside_reference(Model* m, const ReferenceOptions& options, const std::vector<int>& inputs,
                                                 const std::vector<int>& targets, int B, int T) {
    StepBesideReference r;
    float norm;
    r.loss = model_step(m, inputs.data(), targets.data(), 0.f, false, &norm);
    r.grads = download_grads(m);
    r.reference = reference_model(m->config);
    r.reference.params = download_params(m);
    r.reference_loss = reference_forward_backward(r.reference, inputs.data(), targets.data(), B, T, options);
    return r;
}

// A 2-layer model with Llama 3's vocabulary at T = 4096 with the default mini-sequences and
// recomputation, against the CPU reference (fp32) on the same bf16-rounded weights and tokens.
static void test_against_cpu_reference() {
    const int T = two_layer_T(4096) / (mst::on_cpu_device() ? 2 : 1);  // the CPU reference's own time too
    ModelConfig c = two_layer_model();
    printf("test-2layer (V=%d) at T=%d (automatic mini-sequences, recomputation) vs the CPU reference:\n", c.vocab_size, T);
    Model m;
    model_create(&m, c, options_for(1, T, 0, 0, true, false), OptimizerSettings(), 5);
    model_init_random(&m);
    std::vector<int> inputs(T), targets(T);
    random_batch(inputs.data(), targets.data(), 1, T, c.vocab_size, 5, 0);
    for (int t = 0; t < T; t += 7) targets[t] = -1;  // ignored targets count neither in the loss nor its mean
    ReferenceOptions options;
    options.lmhead_chunks = 16;  // the CPU's logits: 256 x V floats at a time
    StepBesideReference r = step_beside_reference(&m, options, inputs, targets, 1, T);
    loss_close("loss vs CPU", r.loss, r.reference_loss, 1e-2f);
    for (const ParameterTensor& t : parameter_tensors(c)) {
        bool sampled = t.name == "lm_head.weight" || t.name == "model.norm.weight" ||
                       t.name == "model.embed_tokens.weight" || t.name.find("layers.0.self_attn.q_proj") != std::string::npos ||
                       t.name.find("layers.1.mlp.down_proj") != std::string::npos ||
                       t.name.find("layers.0.input_layernorm") != std::string::npos;
        if (!sampled) continue;
        std::string what = "grad " + t.name + " vs CPU";
        close_to(what.c_str(), r.grads.data() + t.offset, r.reference.grads.data() + t.offset, t.rows * t.cols, GRADIENT_TOLERANCE);
    }
    model_free(&m);
}

// The two attention paths: on compute capability 9.0 the model runs the sm_90a forward and backward (model_create's
// default there, so every other test here runs them on such a card); their start-up self-test passes at hd 64 and
// 128 and fails on a planted disagreement in the forward and in the backward; test-2layer's loss and gradients
// with each path agree.
static void test_attention_kernels() {
    if (mst::device_major() != 9) { skip("attention kernels", "the sm_90a kernels need compute capability 9.0"); return; }
    printf("attention kernels: the sm_90a start-up self-test, and test-2layer with each path:\n");
    std::string report;
    for (int hd : {64, 128}) {
        bool ok = attention_selftest(hd, SelftestPerturbation(), &report);
        printf("  self-test hd %d: %s\n", hd, report.c_str());
        check(ok, hd == 64 ? "the sm_90a self-test passes at hd 64" : "the sm_90a self-test passes at hd 128");
    }
    SelftestPerturbation forward, backward;
    forward.forward = backward.backward = 0.05f;
    bool planted = attention_selftest(64, forward, &report);
    printf("  self-test with 0.05 added to one output of the forward: %s\n", report.c_str());
    check(!planted, "the self-test fails on a planted disagreement of 0.05 in the forward");
    planted = attention_selftest(64, backward, &report);
    printf("  self-test with 0.05 added to one dq of the backward: %s\n", report.c_str());
    check(!planted, "the self-test fails on a planted disagreement of 0.05 in the backward");
    ModelConfig c = two_layer_model();
    const int T = two_layer_T(1024);
    std::vector<int> inputs(T), targets(T);
    random_batch(inputs.data(), targets.data(), 1, T, c.vocab_size, 9, 0);
    float loss[2], norm;
    std::vector<float> grads[2];
    for (int sm90 = 0; sm90 < 2; sm90++) {
        Model m;
        model_create(&m, c, options_for(1, T, 0, 0, true, false), OptimizerSettings(), 9);
        check(m.attention_sm90, "model_create picks the sm_90a kernels on compute capability 9.0");
        m.attention_sm90 = sm90;
        model_init_random(&m);
        loss[sm90] = model_step(&m, inputs.data(), targets.data(), 0.f, false, &norm);
        grads[sm90] = download_grads(&m);
        model_free(&m);
    }
    loss_close("loss: sm_90a vs mma.sync attention", loss[1], loss[0], 1e-3f);
    close_to("gradients: sm_90a vs mma.sync attention", grads[1].data(), grads[0].data(), grads[0].size(), GRADIENT_TOLERANCE);
}

// Document masking: test-tiny at B = 2, T = 100 (not a multiple of the attention tiles) with documents
// inside the rows (one of length 1, one crossing position 64, one row without a document at 0), with
// --doc-mask 1 and 0, one step (forward, and backward with its recomputation) against the CPU reference
// with options.doc_mask 1 and 0: the loss and every gradient. The mask must matter: the masked and
// unmasked references' attention gradients differ by more than the tolerance.
static void test_document_masking() {
    printf("document masking: test-tiny B=2 T=100, documents inside the rows, --doc-mask 1 and 0 vs the CPU reference:\n");
    ModelConfig c = config_named("test-tiny");
    const int B = 2, T = 100, bos = 7;  // test-tiny's vocabulary has no 128000: token 7 starts documents here
    std::vector<int> inputs(B * T), targets(B * T);
    random_batch(inputs.data(), targets.data(), B, T, c.vocab_size, 17, 0);
    for (int& x : inputs) if (x == bos) x = bos + 1;
    for (int t : {0, 30, 31, 60, 90}) inputs[t] = bos;          // row 0: a document of length 1 at 30
    for (int t : {17, 50, 70, 99}) inputs[T + t] = bos;         // row 1: [50, 70) crosses 64; the last token alone
    std::vector<float> attention_grads[2];
    for (bool mask : {true, false}) {
        TrainingOptions o = options_for(B, T, 0, 0, true, false);
        o.doc_mask = mask;
        Model m;
        model_create(&m, c, o, OptimizerSettings(), 13);
        m.bos_token = bos;
        model_init_random(&m);
        ReferenceOptions options;
        options.doc_mask = mask;
        options.bos = bos;
        StepBesideReference r = step_beside_reference(&m, options, inputs, targets, B, T);
        std::string what = std::string("--doc-mask ") + (mask ? "1" : "0") + ": ";
        loss_close((what + "loss vs CPU").c_str(), r.loss, r.reference_loss, 1e-2f);
        for (const ParameterTensor& t : parameter_tensors(c))
            close_to((what + "grad " + t.name + " vs CPU").c_str(), r.grads.data() + t.offset,
                     r.reference.grads.data() + t.offset, t.rows * t.cols, GRADIENT_TOLERANCE);
        const std::vector<float>& reference_grads = r.reference.grads;
        size_t q_proj = r.reference.layout.layer_start(0) + r.reference.layout.layer.q;  // its gradient comes through attention
        size_t q_count = (size_t)c.q_dim() * c.d_model;
        attention_grads[mask].assign(reference_grads.begin() + q_proj, reference_grads.begin() + q_proj + q_count);
        model_free(&m);
    }
    float difference = 0.f;
    for (size_t i = 0; i < attention_grads[0].size(); i++)
        difference = fmaxf(difference, fabsf(attention_grads[1][i] - attention_grads[0][i]));
    float scale = max_abs(attention_grads[0].data(), attention_grads[0].size());
    printf("  the mask moves layer 0's q_proj gradient by %.3e (scale %.3e)\n", difference, scale);
    check(difference > GRADIENT_TOLERANCE * scale, "document masking changes the attention gradients beyond the tolerance");
}

// a fresh directory under /tmp for files a test writes (removed with std::filesystem::remove_all)
static std::string temporary_directory(const char* prefix) {
    std::string path = std::string("/tmp/") + prefix + "_XXXXXX";
    if (!mkdtemp(path.data())) { printf("cannot create %s\n", path.c_str()); exit(1); }
    return path;
}

// Steps [from, to) of a 6-step run on random batches with warmup and a cosine (the LR depends on the
// step, the batch on its index); appends the losses
static void train_steps(Model* m, int from, int to, std::vector<float>* losses) {
    const int total = 6;
    std::vector<int> inputs(m->N), targets(m->N);
    for (int step = from; step < to; step++) {
        random_batch(inputs.data(), targets.data(), m->B, m->T, m->config.vocab_size, 3, step);
        float norm, lr = learning_rate_at(step, total, 1e-3f, 2, 0.1f);
        losses->push_back(model_step(m, inputs.data(), targets.data(), lr, true, &norm));
    }
}

// Resuming is bitwise the same as not stopping: 6 steps straight, and 3 steps, a checkpoint, a fresh
// model reading it, 3 more. Both optimizer layouts: the defaults (bf16 state with stochastic rounding,
// no master weights, fused: the last update pending when the checkpoint is written) and fp32 state with
// master weights.
static void test_resume() {
    printf("resume: 6 steps straight vs 3, checkpoint, a fresh model, 3 (test-tiny, B=2 T=64, random batches):\n");
    ModelConfig c = config_named("test-tiny");
    for (const TrainingOptions& o : {default_options(2, 64), options_for(2, 64, 0, 0, true, true)}) {
        std::string what = o.bf16_optimizer_state ? "bf16 state: " : "fp32 state, master weights: ";
        std::vector<float> straight, resumed;
        Model m;
        model_create(&m, c, o, OptimizerSettings(), 11);
        model_init_random(&m);
        train_steps(&m, 0, 6, &straight);
        std::vector<float> straight_weights = download_params(&m);
        model_free(&m);

        std::string dir = temporary_directory("mst_resume");
        model_create(&m, c, o, OptimizerSettings(), 11);
        model_init_random(&m);
        train_steps(&m, 0, 3, &resumed);
        model_save_checkpoint(&m, dir, CheckpointInfo());
        model_free(&m);
        model_create(&m, c, o, OptimizerSettings(), 11);  // its random weights are overwritten
        CheckpointInfo info = model_load_checkpoint(&m, checkpoint_latest(dir));
        check(info.step == 3 && m.steps_done == 3, (what + "the checkpoint's step is 3").c_str());
        train_steps(&m, 3, 6, &resumed);
        bitwise_equal((what + "losses, resumed vs straight").c_str(), resumed.data(), straight.data(), 6 * 4);
        std::vector<float> resumed_weights = download_params(&m);
        bitwise_equal((what + "weights after 6 steps").c_str(), resumed_weights.data(), straight_weights.data(),
                      straight_weights.size() * 4);
        model_free(&m);
        std::filesystem::remove_all(dir);
    }
}

// --state-offload 1: AdamW m and v in pinned host memory, each group's streamed through a staging slot for its
// update, against the state on the card: losses, gradient norms and the weights after 3 steps bitwise equal, with
// -f 1 and bf16 state (the defaults) and with -f 0 and fp32 state with master weights (each path and each state
// size once: the other two pairings cost another 9 CPU-seconds and share every line of these). test-tiny (2 layers: 5 groups of 4 sizes, so both
// staging slots are reused) at T = 40 (not a multiple of the tiles). The run with the state on the host writes a
// checkpoint after step 2 (the state read from the host copy; -f 1: the pending update applied at once, where the
// run with the state on the card applies it group by group in step 3's forward); a fresh model reads it (into its
// host copy) and runs step 3: its loss, norm and weights bitwise the straight run's. The CPU device's high-water
// marks equal the plan's totals.
static void test_state_offload() {
    ModelConfig c = config_named("test-tiny");
    const int T = 40, steps = 3;
    printf("--state-offload 1 vs the state on the card (test-tiny, T=%d, %d steps, a resume before the last):\n", T, steps);
    std::vector<int> inputs(T), targets(T);
    auto step = [&](Model* m, int s, std::vector<float>* out) {
        random_batch(inputs.data(), targets.data(), 1, T, c.vocab_size, 29, s);
        float norm;
        out->push_back(model_step(m, inputs.data(), targets.data(), 1e-3f, true, &norm));
        out->push_back(norm);
    };
    for (bool fp32 : {false, true}) {
        bool fused = !fp32;
        TrainingOptions o = default_options(1, T);
        o.fused_optimizer = fused;
        o.bf16_optimizer_state = !fp32;
        o.master_weights = fp32;
        std::string what = std::string(fused ? "-f 1" : "-f 0") + (fp32 ? " -a fp32 -w 1" : " -a bf16");
        std::string dir = temporary_directory("mst_state_offload");
        std::vector<float> numbers[3], weights[3];  // the state on the card, on the host, resumed on the host
        for (int run = 0; run < 3; run++) {
            o.state_offload = run > 0;
            reset_high_water();
            Model m;
            model_create(&m, c, o, OptimizerSettings(), 29);
            if (run < 2) model_init_random(&m);
            else model_load_checkpoint(&m, checkpoint_latest(dir));
            for (int s = run < 2 ? 0 : steps - 1; s < steps; s++) {
                step(&m, s, &numbers[run]);
                if (run == 1 && s == steps - 2) model_save_checkpoint(&m, dir, CheckpointInfo());
            }
            weights[run] = download_params(&m);
            if (run == 1) check_high_water(m, what + " --state-offload 1: ");
            check((m.host_state != nullptr) == (run > 0) && (m.plan.bytes[REGION_ADAM_M] == 0) == (run > 0),
                  (what + (run ? " --state-offload 1" : "") + ": the AdamW state where the plan says").c_str());
            model_free(&m);
        }
        std::filesystem::remove_all(dir);
        bitwise_equal((what + ": losses and gradient norms, state on the host vs the card").c_str(), numbers[1].data(),
                      numbers[0].data(), numbers[0].size() * 4);
        bitwise_equal((what + ": weights after 3 steps, state on the host vs the card").c_str(), weights[1].data(),
                      weights[0].data(), weights[0].size() * 4);
        bitwise_equal((what + " --state-offload 1: resumed, the last step's loss and norm").c_str(), numbers[2].data(),
                      numbers[0].data() + numbers[0].size() - 2, 2 * 4);
        bitwise_equal((what + " --state-offload 1: resumed, the weights after 3 steps").c_str(), weights[2].data(),
                      weights[0].data(), weights[0].size() * 4);
    }
}

// A Hugging Face directory in and out: the golden weights exported (fp32) and imported into the GPU model
// give the golden loss; after 2 steps the trainer's export (bf16), imported again on the CPU, is the GPU's
// parameters bit for bit.
static void test_hugging_face_in_and_out(const Golden& g) {
    printf("Hugging Face in and out (golden test-tiny exported, imported, 2 steps, exported, imported):\n");
    std::string dir = temporary_directory("mst_hf"), in = dir + "/in", out = dir + "/out", error;
    ModelConfig golden_config = config_named("test-tiny"), config, back_config;
    std::vector<float> back;
    if (!hf_export(in, golden_config, g.params.data(), "F32", &error) || !hf_read_config(in, &config, &error))
        safetensors_exit_on_error(error);
    Model m;
    model_create(&m, config, options_for(g.B, g.T, 0, 0, true, true), GOLDEN_OPTIMIZER, 1);
    model_import_hf(&m, in);
    loss_close("imported weights: golden loss", model_loss(&m, g.inputs.data(), g.targets.data()), g.loss[0], 1e-2f);
    for (int step = 0; step < 2; step++) {
        float norm;
        model_step(&m, g.inputs.data(), g.targets.data(), GOLDEN_OPTIMIZER.lr, true, &norm);
    }
    model_export_hf(&m, out);
    if (!hf_import(out, &back_config, &back, &error)) safetensors_exit_on_error(error);
    check(hf_config_json(back_config, "BF16") == hf_config_json(golden_config, "BF16"), "exported config.json is test-tiny's");
    std::vector<float> params = download_params(&m);
    bitwise_equal("exported weights == the GPU's bf16 parameters", back.data(), params.data(), params.size() * 4);
    model_free(&m);
    std::filesystem::remove_all(dir);
}

// Gradient accumulation: the golden batch (B = 2) as 2 micro-batches of one row against one batch of 2
// rows, fused and not, fp32 state and master weights, 2 steps with clipping active: the same tokens and
// the same bf16 activations row by row, so only the fp32 order of the weight-gradient sums differs
// (cuBLASLt over 37 rows twice vs 74 once): master weights within 1e-5 of the largest (an update of
// lr = 1e-3 that lost a micro-batch, or normalized per micro-batch, moves them by ~1e-3).
static void test_accumulation(const Golden& g) {
    printf("gradient accumulation: 2 micro-batches of B=1 vs one batch of B=2 (golden batch, 2 steps):\n");
    OptimizerSettings o = GOLDEN_OPTIMIZER;
    o.grad_clip = 0.1f;
    std::vector<int> targets = g.targets;
    for (int t = 0; t < g.T - 5; t++) targets[t] = -1;  // the first row counts 4 targets, the second ~36
    for (bool fused : {false, true}) {
        std::vector<float> masters[2];
        for (int micro_batches : {1, 2}) {
            Model m;
            model_create(&m, g.config, options_for(g.B / micro_batches, g.T, 2, 3, true, fused), o, 7);
            model_set_parameters(&m, g.params);
            for (int step = 0; step < 2; step++) {
                float norm;
                model_step(&m, g.inputs.data(), targets.data(), o.lr, true, &norm, micro_batches);
            }
            masters[micro_batches - 1] = download_master(&m);
            model_free(&m);
        }
        close_to(fused ? "fused: accumulated vs one batch, master weights" : "unfused: accumulated vs one batch, master weights",
                 masters[1].data(), masters[0].data(), masters[0].size(), 1e-5f);
    }
}

// Held in bf16 (--held-gradients bf16; fp32 state and master weights otherwise, the reference's arithmetic), against
// the unfused fp32 gradient g of the golden batch:
// - one batch: the host copy is g rounded to nearest: each element within half a bf16 ulp of g (2^(e-9) for
//   |g| in [2^(e-1), 2^e)), plus the 1e-6 of the largest that fused and unfused fp32 gradients differ by
//   (cuBLASLt's choice per alignment). Truncation (up to a whole ulp) fails;
// - the step's norm is the rounded gradient's (what AdamW applies) within 1e-6 relative (summation order);
// - 2 micro-batches of one row: the first row's partial sum g1 is rounded on its way to the host and back, then
//   the sum: each element within 2^-8 (|g1| + |g|) of g, so ||held - g|| <= 2^-8 (||g1|| + ||g||), 2^-7 ||g|| when
//   ||g1|| <= ||g|| (two rows of like gradients: ||g1|| ~ ||g|| / sqrt(2)). A lost or doubled micro-batch is
//   ~0.5-1 of ||g|| off. (Element by element there is no tighter bound: where g1 and the second
//   row's g2 nearly cancel, g1's rounding error can exceed |g|.)
static void test_held_gradients_bf16(const Golden& g) {
    printf("held gradients in bf16 vs fp32 (golden batch):\n");
    auto gradient = [&](bool fused, int micro_batches, float* norm) {
        TrainingOptions t = options_for(g.B / micro_batches, g.T, 2, 3, true, fused);
        t.held_gradient_bytes = 2;
        Model m;
        model_create(&m, g.config, t, GOLDEN_OPTIMIZER, 7);
        model_set_parameters(&m, g.params);
        model_step(&m, g.inputs.data(), g.targets.data(), 0.f, false, norm, micro_batches);
        std::vector<float> out;
        if (fused) {
            const bf16* h = (const bf16*)m.host_grads;
            for (size_t i = 0; i < m.layout.total; i++) out.push_back(__bfloat162float(h[i]));
        } else {
            out = download_grads(&m);
        }
        model_free(&m);
        return out;
    };
    float fp32_norm, held_norm, accumulated_norm;
    std::vector<float> fp32 = gradient(false, 1, &fp32_norm), held = gradient(true, 1, &held_norm);
    std::vector<float> accumulated = gradient(true, 2, &accumulated_norm);
    float floor = 1e-6f * max_abs(fp32.data(), fp32.size());
    size_t outside = 0;
    double sum = 0.0, error2 = 0.0, g2 = 0.0;
    for (size_t i = 0; i < fp32.size(); i++) {
        int e;
        frexpf(fp32[i], &e);
        float half_ulp = fp32[i] == 0.f ? 0.f : ldexpf(1.f, e - 9);
        outside += !(fabsf(held[i] - fp32[i]) <= half_ulp + floor);
        sum += (double)held[i] * held[i];
        error2 += ((double)accumulated[i] - fp32[i]) * ((double)accumulated[i] - fp32[i]);
        g2 += (double)fp32[i] * fp32[i];
    }
    printf("  %zu of %zu held elements outside half a bf16 ulp of the fp32 gradient\n", outside, fp32.size());
    check(outside == 0, "bf16 held gradient = fp32 gradient rounded to nearest");
    loss_close("the norm is the held (rounded) gradient's", held_norm, (float)sqrt(sum), 1e-6f);
    double relative = sqrt(error2 / g2);
    printf("  2 micro-batches, bf16 held: ||held - g|| / ||g|| = %.3e (allowed 2^-7 = %.3e)\n", relative, 1.0 / 128);
    check(relative <= 1.0 / 128, "bf16 held, 2 micro-batches: the accumulated gradient within 2^-7 of g");
}

// A step with a non-finite loss and gradient (one LM-head weight set to inf): no weight, master weight
// or AdamW state changes (bitwise), the step says so, and AdamW's step count stays; fused and not.
static void test_non_finite_guard(const Golden& g) {
    printf("non-finite guard (golden model, one step, then one with an infinite LM-head weight):\n");
    for (bool fused : {false, true}) {
        Model m;
        model_create(&m, g.config, options_for(g.B, g.T, 2, 3, true, fused), GOLDEN_OPTIMIZER, 7);
        std::vector<float> params = g.params;
        float norm;
        bool skipped;
        model_set_parameters(&m, params);
        model_step(&m, g.inputs.data(), g.targets.data(), 1e-3f, true, &norm, 1, &skipped);
        check(!skipped && std::isfinite(norm), fused ? "fused: a finite step is not skipped" : "unfused: a finite step is not skipped");
        std::vector<float> master = download_master(&m);  // applies the pending update
        master[m.layout.lm_head + 5] = INFINITY;
        model_set_parameters(&m, master);
        size_t P = m.layout.total;
        std::vector<unsigned char> before[4] = {download_bytes(m.params, P * 2), download_bytes(m.master, P * 4),
                                                download_bytes(m.adam_m, P * 4), download_bytes(m.adam_v, P * 4)};
        int updates = m.updates_applied;
        model_step(&m, g.inputs.data(), g.targets.data(), 1e-3f, true, &norm, 1, &skipped);
        model_apply_pending_update(&m);
        std::vector<unsigned char> after[4] = {download_bytes(m.params, P * 2), download_bytes(m.master, P * 4),
                                               download_bytes(m.adam_m, P * 4), download_bytes(m.adam_v, P * 4)};
        check(skipped && !std::isfinite(norm), fused ? "fused: the non-finite step is skipped" : "unfused: the non-finite step is skipped");
        bool same = m.updates_applied == updates;
        for (int i = 0; i < 4; i++) same &= before[i] == after[i];
        check(same, fused ? "fused: weights, master weights, AdamW m, v and step unchanged"
                          : "unfused: weights, master weights, AdamW m, v and step unchanged");
        model_free(&m);
    }
}

// 50 steps of test-tiny (B=4, T=64, 8 random batches in turn, so the loss can fall; lr 1e-3, warmup 5,
// cosine) with the defaults (bf16 AdamW state with stochastic rounding, no master weights, fused, exact
// clip 1.0) against fp32 state + master weights, unfused. Tolerance: each step's loss within 2% and the
// mean of the last 10 within 1% (bf16 weights round each update to 2^-8 relative; the stochastic rounding
// is unbiased, so the curves agree on average); and both fall by more than 20% (the CPU reference falls
// from 6.24 to 3.96 on the same batches).
static void test_defaults_against_fp32() {
    printf("50 steps, defaults vs -f 0 -a fp32 -w 1 (test-tiny, B=4 T=64):\n");
    ModelConfig c = config_named("test-tiny");
    const int steps = 50, pool = 8;
    std::vector<float> losses[2];
    for (int exact = 0; exact < 2; exact++) {
        Model m;
        model_create(&m, c, exact ? options_for(4, 64, 0, 0, true, false) : default_options(4, 64), OptimizerSettings(), 21);
        model_init_random(&m);
        std::vector<int> inputs(m.N), targets(m.N);
        for (int step = 0; step < steps; step++) {
            random_batch(inputs.data(), targets.data(), m.B, m.T, c.vocab_size, 21, step % pool);
            float norm, lr = learning_rate_at(step, steps, 1e-3f, 5, 0.1f);
            losses[exact].push_back(model_step(&m, inputs.data(), targets.data(), lr, true, &norm));
        }
        model_free(&m);
    }
    double worst = 0.0, tail[2] = {0.0, 0.0};
    for (int s = 0; s < steps; s++) {
        worst = std::max(worst, (double)fabsf(losses[0][s] - losses[1][s]) / losses[1][s]);
        for (int e = 0; e < 2; e++) tail[e] += s >= steps - 10 ? losses[e][s] / 10.0 : 0.0;
    }
    double tail_difference = fabs(tail[0] - tail[1]) / tail[1];
    printf("  loss %.4f -> %.4f (defaults), %.4f -> %.4f (fp32); worst step %.2f%%, last 10 steps' mean %.2f%%\n",
           losses[0][0], losses[0][steps - 1], losses[1][0], losses[1][steps - 1], 100 * worst, 100 * tail_difference);
    check(worst <= 0.02, "defaults vs fp32: every step's loss within 2%");
    check(tail_difference <= 0.01, "defaults vs fp32: the last 10 steps' mean loss within 1%");
    check(losses[0][steps - 1] < 0.8f * losses[0][0] && losses[1][steps - 1] < 0.8f * losses[1][0],
          "both runs' losses fall by more than 20%");
}

// The same training under every schedule of the CPU device (the order of fibers between synchronization
// points and of blocks; a GPU's order is its own, so there: two runs) gives the same bits: 3 steps of
// test-2layer with the defaults (fused AdamW, exact clipping, bf16 state) and 2 of its 3 layers offloaded
// (the copy stream), a forward-only loss between steps; losses and the weights after the last update.
static void test_schedules() {
    ModelConfig c = two_layer_model();
    c.n_layer = 3;
    TrainingOptions o;
    o.T = two_layer_T(256);
    o.offload = 2;
    printf("the same bits under every schedule (test-2layer with 3 layers, V=%d, T=%d, 2 offloaded, 3 steps):\n",
           c.vocab_size, o.T);
    std::vector<int> inputs(o.T), targets(o.T);
    std::vector<float> losses[4];
    std::vector<bf16> weights[4];
    int runs = mst::set_schedule(0, 1) ? 4 : 2;
    for (int run = 0; run < runs; run++) {
        mst::set_schedule(run, 1 + run);
        Model m;
        model_create(&m, c, o, OptimizerSettings(), 9);
        model_init_random(&m);
        for (int step = 0; step < 3; step++) {
            random_batch(inputs.data(), targets.data(), 1, o.T, c.vocab_size, 9, step);
            float norm;
            losses[run].push_back(model_step(&m, inputs.data(), targets.data(), 1e-3f, true, &norm));
            losses[run].push_back(model_loss(&m, inputs.data(), targets.data()));
        }
        model_apply_pending_update(&m);
        weights[run].resize(m.layout.total);
        CUDA_CHECK(cudaMemcpy(weights[run].data(), m.params, weights[run].size() * 2, cudaMemcpyDeviceToHost));
        model_free(&m);
    }
    mst::set_schedule(0, 1);
    static const char* names[4] = {"random", "round-robin", "lowest-first", "highest-first-reversed"};
    for (int run = 1; run < runs; run++) {
        std::string what = runs == 4 ? std::string(names[run]) + " vs random" : "a second run";
        bitwise_equal((what + ": losses").c_str(), losses[run].data(), losses[0].data(), losses[0].size() * 4);
        bitwise_equal((what + ": weights").c_str(), weights[run].data(), weights[0].data(), weights[0].size() * 2);
    }
}

// ./test_llama [NAME ...]: every test, or those whose names contain one of the NAMEs
int main(int argc, char** argv) {
    struct Test { const char* name; std::function<void(const Golden&)> run; };
    const Test tests[] = {
        {"golden gradients", test_golden_gradients},
        {"golden training", test_golden_training},
        {"mini-sequences and recomputation", test_mini_sequences_and_recomputation},
        {"fused optimizer", test_fused_optimizer},
        {"determinism and no allocation", [](const Golden&) { test_determinism_and_no_allocation(); }},
        {"offload", [](const Golden&) { test_offload(); }},
        {"keep attention and segments", [](const Golden&) { test_keep_attention_and_segments(); }},
        {"state offload", [](const Golden&) { test_state_offload(); }},
        {"attention blocks", [](const Golden&) { test_attention_blocks(); }},
        {"test-2layer vs CPU reference", [](const Golden&) { test_against_cpu_reference(); }},
        {"document masking", [](const Golden&) { test_document_masking(); }},
        {"resume", [](const Golden&) { test_resume(); }},
        {"Hugging Face in and out", test_hugging_face_in_and_out},
        {"gradient accumulation", test_accumulation},
        {"held gradients in bf16", test_held_gradients_bf16},
        {"non-finite guard", test_non_finite_guard},
        {"50 steps: defaults vs -f 0 -a fp32 -w 1", [](const Golden&) { test_defaults_against_fp32(); }},
        {"schedules", [](const Golden&) { test_schedules(); }},
        {"attention kernels", [](const Golden&) { test_attention_kernels(); }},
    };
    auto selected = [&](const char* name) {
        if (argc < 2) return true;
        for (int i = 1; i < argc; i++) if (strstr(name, argv[i])) return true;
        return false;
    };
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        for (const Test& t : tests) if (selected(t.name)) skip(t.name, "no GPU");
        return test_summary();
    }
    Golden golden;
    std::string error;
    if (!load_golden(GOLDEN_PATH, &golden, &error)) safetensors_exit_on_error(error);
    for (const Test& t : tests) {
        if (!selected(t.name)) continue;
        auto start = std::chrono::steady_clock::now();
        t.run(golden);
        printf("  (%s: %.1f s)\n", t.name, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return test_summary();
}
