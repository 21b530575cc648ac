// test_training.cpp: training over many steps on the CPU reference (training.h, llama_reference.h):
// exact clipping with the update deferred until the step's norm is known, gradient accumulation over
// micro-batches, and the guard against non-finite steps. The model is the golden test-tiny.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "dataloader.h"  // splitmix64
#include "mst/llama_reference.h"
#include "tests/golden.h"
#include "tests/test_util.h"

static const float LR = 1e-3f, BETA1 = 0.9f, BETA2 = 0.95f, EPS = 1e-8f, WEIGHT_DECAY = 0.1f;

// max |a - b| / max |b|
static double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < a.size(); i++) {
        diff = std::max(diff, (double)fabsf(a[i] - b[i]));
        scale = std::max(scale, (double)fabsf(b[i]));
    }
    return std::isnan(diff) ? INFINITY : diff / std::max(scale, 1e-30);
}

// Two models after the same steps: the weights' largest difference in units of the learning rate, and
// the AdamW state's relative difference. m and v are linear in the gradient, so a gradient that differs
// by fp32 rounding gives them the same relative difference; the weights are compared in units of lr,
// since AdamW's update g / (|g| + eps) lr turns a rounding-size difference of a gradient element near
// eps (1e-8) into a visible fraction of lr.
struct ModelDifference {
    double params_in_lr, state;
};
static ModelDifference model_difference(const ReferenceModel& a, const ReferenceModel& b, float lr) {
    double params = 0.0;
    for (size_t i = 0; i < a.params.size(); i++) params = std::max(params, (double)fabsf(a.params[i] - b.params[i]));
    if (std::isnan(params)) params = INFINITY;
    return {params / lr, std::max(relative_difference(a.adam_m, b.adam_m), relative_difference(a.adam_v, b.adam_v))};
}
// weights within 5% of lr, AdamW state within 1e-5 relative
static bool close_models(const ModelDifference& d) { return d.params_in_lr <= 0.05 && d.state <= 1e-5; }

static bool same_bits(const ReferenceModel& a, const ReferenceModel& b) {
    return a.step == b.step && memcmp(a.params.data(), b.params.data(), a.params.size() * 4) == 0 &&
           memcmp(a.adam_m.data(), b.adam_m.data(), a.adam_m.size() * 4) == 0 &&
           memcmp(a.adam_v.data(), b.adam_v.data(), a.adam_v.size() * 4) == 0;
}

// `rows` rows of T seeded random tokens; every 7th target ignored, and in rows at or after
// `all_ignored_from` every target but the first few (so micro-batches count different numbers of targets)
static void random_tokens(std::vector<int>& inputs, std::vector<int>& targets, int rows, int T, int V, uint64_t seed,
                          int all_ignored_from = 1 << 30) {
    inputs.resize((size_t)rows * T);
    targets.resize((size_t)rows * T);
    for (int i = 0; i < rows * T; i++) {
        inputs[i] = (int)(splitmix64(&seed) % V);
        bool ignored = i % 7 == 3 || (i / T >= all_ignored_from && i % T > 2);
        targets[i] = ignored ? -1 : (int)(splitmix64(&seed) % V);
    }
}

static ReferenceOptions mst_options() {
    ReferenceOptions o;
    o.mlp_chunks = 3;
    o.lmhead_chunks = 2;
    o.recompute = true;
    return o;
}

// The fused trainer's design (gradients held, the update applied before the next forward with the same
// step's clip scale) against the unfused clip_grad_norm_ + AdamW, over steps where clipping is active.
// The only differences are the norm's summation order (per group, in double) and the clip factor's
// arithmetic (float here, double in reference_clip_gradients): a few fp32 ulps (close_models).
// Clipping with the previous step's norm (the design this replaces) must fail the same comparison.
static void test_deferred_clipping(const Golden& golden) {
    const int B = 2, T = 13, STEPS = 5;
    const float MAX_NORM = 0.5f;  // below test-tiny's gradient norms (about 1 to 3): every step clips
    ReferenceModel unfused = reference_model(golden.config);
    unfused.params = golden.params;
    ReferenceModel deferred = unfused, previous_norm = unfused;
    ReferenceHeldUpdate held, held_previous;
    float last_scale = 1.f;
    int clipped = 0;
    double loss_difference = 0.0;
    for (int s = 0; s < STEPS; s++) {
        std::vector<int> inputs, targets;
        random_tokens(inputs, targets, B, T, golden.config.vocab_size, 100 + s);
        float lr = LR * (s + 1) / STEPS;  // a different lr each step: the held update must use its own step's
        // unfused: backward, clip, update
        float loss = reference_forward_backward(unfused, inputs.data(), targets.data(), B, T, mst_options());
        float norm = reference_clip_gradients(unfused, MAX_NORM);
        clipped += norm > MAX_NORM;
        reference_adamw_step(unfused, lr, BETA1, BETA2, EPS, WEIGHT_DECAY);
        // deferred: the previous step's update first (before this forward), then backward and hold
        reference_apply_held_update(deferred, held, BETA1, BETA2, EPS, WEIGHT_DECAY);
        float deferred_loss = reference_forward_backward(deferred, inputs.data(), targets.data(), B, T, mst_options());
        loss_difference = std::max(loss_difference, (double)fabsf(deferred_loss - loss));
        reference_hold_gradients(deferred, held, MAX_NORM, lr);
        // the old design: step s scaled by step s-1's factor (step 0 unclipped)
        reference_apply_held_update(previous_norm, held_previous, BETA1, BETA2, EPS, WEIGHT_DECAY);
        reference_forward_backward(previous_norm, inputs.data(), targets.data(), B, T, mst_options());
        reference_hold_gradients(previous_norm, held_previous, MAX_NORM, lr);
        std::swap(last_scale, held_previous.scale);
    }
    reference_apply_held_update(deferred, held, BETA1, BETA2, EPS, WEIGHT_DECAY);  // the end of the run
    reference_apply_held_update(previous_norm, held_previous, BETA1, BETA2, EPS, WEIGHT_DECAY);
    check(clipped == STEPS, "deferred clipping: every step's norm exceeds the clip (the case under test)");
    check(loss_difference <= 1e-6, "deferred clipping: the same losses step by step as the unfused path");
    ModelDifference d = model_difference(deferred, unfused, LR), old = model_difference(previous_norm, unfused, LR);
    printf("deferred clipping vs clip_grad_norm_ + AdamW, %d steps: weights differ by %.2g lr, AdamW state by %.2g "
           "relative (tolerance 0.05 lr, 1e-5)\n", STEPS, d.params_in_lr, d.state);
    check(deferred.step == unfused.step && close_models(d), "deferred clipping equals the unfused clip_grad_norm_ + AdamW");
    printf("clipping with the previous step's norm instead: %.2g lr, %.2g relative\n", old.params_in_lr, old.state);
    check(!close_models(old), "clipping with the previous step's norm fails the same comparison");
}

// k micro-batches of (B, T) against one batch of (k B, T): the same tokens, so the same mean loss over
// all counted targets and the same gradient. The micro-batches count different numbers of targets, so
// a mean of the micro-batches' means would differ. Tolerance 1e-5 of the largest gradient: the two
// paths sum the same products in a different grouping (per micro-batch, then weighted), fp32 rounding
// of a few ulps (2^-24 each) over sums of at most k B T = 78 terms per weight, observed far below.
static void test_accumulation(const Golden& golden) {
    const int K = 3, B = 2, T = 13;
    int V = golden.config.vocab_size;
    std::vector<int> inputs, targets;
    random_tokens(inputs, targets, K * B, T, V, 7, 2 * B);  // the last micro-batch counts few targets
    ReferenceModel whole = reference_model(golden.config), accumulated = whole;
    whole.params = accumulated.params = golden.params;
    float loss = reference_forward_backward(whole, inputs.data(), targets.data(), K * B, T, mst_options());
    float accumulated_loss = reference_accumulate_gradients(accumulated, inputs.data(), targets.data(), K, B, T, mst_options());
    double difference = relative_difference(accumulated.grads, whole.grads);
    printf("accumulation over %d micro-batches vs one batch: loss %.7f vs %.7f, gradient max relative difference %.2g "
           "(tolerance 1e-5)\n", K, accumulated_loss, loss, difference);
    check(fabsf(accumulated_loss - loss) <= 1e-6f * fabsf(loss), "accumulation: the loss over all counted targets");
    check(difference <= 1e-5, "accumulation: the gradient of one batch of k times the tokens");
    // the mistake the normalization avoids: the mean of the micro-batches' mean gradients
    ReferenceModel mean_of_means = whole;
    std::vector<float> sum(whole.grads.size(), 0.f);
    for (int i = 0; i < K; i++) {
        size_t at = (size_t)i * B * T;
        reference_forward_backward(mean_of_means, inputs.data() + at, targets.data() + at, B, T, mst_options());
        for (size_t j = 0; j < sum.size(); j++) sum[j] += mean_of_means.grads[j] / K;
    }
    check(relative_difference(sum, whole.grads) > 1e-3, "accumulation: a mean of micro-batch means fails the comparison");
    check(relative_difference(accumulated.grads, whole.grads) <= 1e-5 &&
          relative_difference(sum, whole.grads) > 100 * difference, "accumulation: the tolerance separates the two");

    // a whole step: accumulated, held, clipped and applied == one large batch clipped and updated
    reference_clip_gradients(whole, 0.5f);
    reference_adamw_step(whole, LR, BETA1, BETA2, EPS, WEIGHT_DECAY);
    ReferenceHeldUpdate held;
    reference_hold_gradients(accumulated, held, 0.5f, LR);
    reference_apply_held_update(accumulated, held, BETA1, BETA2, EPS, WEIGHT_DECAY);
    ModelDifference d = model_difference(accumulated, whole, LR);
    printf("accumulated step vs one-batch step: weights differ by %.2g lr, AdamW state by %.2g relative (tolerance "
           "0.05 lr, 1e-5)\n", d.params_in_lr, d.state);
    check(close_models(d), "accumulation: the accumulated, clipped update equals the one-batch update");
    // and the mean of means, updated the same way, does not
    mean_of_means.grads = sum;
    reference_hold_gradients(mean_of_means, held, 0.5f, LR);
    reference_apply_held_update(mean_of_means, held, BETA1, BETA2, EPS, WEIGHT_DECAY);
    check(!close_models(model_difference(mean_of_means, whole, LR)), "accumulation: the mean of means' update fails it");

    std::string problem;
    check(accumulation_micro_batches(3 * B * T, B, T, &problem) == 3, "-d: 3 B T tokens are 3 micro-batches");
    check(accumulation_micro_batches(3 * B * T + 1, B, T, &problem) == 0 && problem.find("-d") == 0 &&
          problem.find("multiple of B x T = 26") != std::string::npos, "-d: a count that is not a multiple of B x T is refused");
}

// A gradient with an infinite (or NaN) element: the step is skipped and counted; weights, AdamW state
// and AdamW's step count stay bit for bit; the next finite step trains as if the bad one never came.
// limit skipped steps in a row stop the run; a finite step in between resets the count.
static void test_non_finite_guard(const Golden& golden) {
    const int B = 2, T = 13;
    int V = golden.config.vocab_size;
    ReferenceModel model = reference_model(golden.config);
    model.params = golden.params;
    ReferenceHeldUpdate held;
    NonFiniteGuard guard;
    std::vector<int> inputs, targets;
    // one good step first, so the AdamW state is not zero
    random_tokens(inputs, targets, B, T, V, 1);
    float loss = reference_forward_backward(model, inputs.data(), targets.data(), B, T, mst_options());
    float norm = reference_hold_gradients(model, held, 1.f, LR);
    check(!guard.skip(loss, norm), "guard: a finite step is not skipped");
    reference_apply_held_update(model, held, BETA1, BETA2, EPS, WEIGHT_DECAY);
    ReferenceModel before = model;

    for (float bad : {INFINITY, -INFINITY, NAN}) {
        reference_forward_backward(model, inputs.data(), targets.data(), B, T, mst_options());
        model.grads[model.layout.layer_start(1) + 17] = bad;  // one element of one group
        norm = reference_hold_gradients(model, held, 1.f, LR);
        if (guard.skip(loss, norm)) held.pending = false;
        reference_apply_held_update(model, held, BETA1, BETA2, EPS, WEIGHT_DECAY);
        check(!std::isfinite(norm) && same_bits(model, before),
              bad != bad ? "guard: a NaN gradient leaves weights, AdamW state and step unchanged"
                         : "guard: an infinite gradient leaves weights, AdamW state and step unchanged");
    }
    check(guard.skipped_total == 3 && guard.in_a_row == 3, "guard: the skipped steps are counted");
    // a NaN loss with a finite gradient norm is skipped too
    check(guard.skip(NAN, 1.f) && guard.in_a_row == 4 && !guard.should_stop(), "guard: a NaN loss is skipped; 4 < 5 go on");
    check(guard.skip(1.f, INFINITY) && guard.should_stop(), "guard: 5 non-finite steps in a row stop the run");

    // the next finite step equals a step taken right after `before`
    NonFiniteGuard fresh;
    check(!fresh.skip(1.f, 1.f) && fresh.skip(NAN, 1.f) && !fresh.skip(1.f, 2.f) && fresh.in_a_row == 0 &&
          fresh.skipped_total == 1, "guard: a finite step resets the count in a row");
    ReferenceModel after_skips = model, straight = before;
    random_tokens(inputs, targets, B, T, V, 2);
    for (ReferenceModel* m : {&after_skips, &straight}) {
        ReferenceHeldUpdate h;
        reference_forward_backward(*m, inputs.data(), targets.data(), B, T, mst_options());
        reference_hold_gradients(*m, h, 1.f, LR);
        reference_apply_held_update(*m, h, BETA1, BETA2, EPS, WEIGHT_DECAY);
    }
    check(same_bits(after_skips, straight), "guard: training after skipped steps is bitwise training without them");
    // the comparison itself notices one changed value of the AdamW state
    *std::max_element(straight.adam_v.begin(), straight.adam_v.end()) *= 1.0001f;
    check(!same_bits(after_skips, straight), "guard: the comparison rejects one changed AdamW v");
}

// the groups cover every parameter exactly once, in backward's order
static void test_gradient_groups() {
    for (const char* name : {"test-tiny", "test-tiny-tied"}) {
        ModelConfig c;
        find_model_config(name, &c);
        ParameterLayout p = parameter_layout(c);
        std::vector<int> covered(p.total, 0);
        for (const GradientGroup& g : gradient_groups(c))
            for (size_t i = g.offset; i < g.offset + g.count; i++) covered[i]++;
        bool once = std::all_of(covered.begin(), covered.end(), [](int x) { return x == 1; });
        std::vector<GradientGroup> groups = gradient_groups(c);
        bool order = groups.back().offset == p.embedding && groups.front().offset == (c.tied_embeddings ? p.final_norm : p.lm_head);
        char text[96];
        snprintf(text, sizeof text, "gradient groups (%s): every parameter once, LM head first, embedding last", name);
        check(once && order, text);
    }
}

int main() {
    Golden golden;
    std::string error;
    if (!load_golden(GOLDEN_PATH, &golden, &error)) {
        printf("error: %s\n", error.c_str());
        check(false, "golden file loads");
        return test_summary();
    }
    test_gradient_groups();
    test_deferred_clipping(golden);
    test_accumulation(golden);
    test_non_finite_guard(golden);
    return test_summary();
}
