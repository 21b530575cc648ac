// step_model.h: the predicted time of one training step, phase by phase, from the plan's FLOPs and bytes, a
// card's peak rates and the fractions of those rates our kernels last measured (dev/cuda/README.md).
//
// The kernels run on the compute stream, one after another, so the step's time is the sum of their phases;
// the host copies (held gradients, layer checkpoints) run on the copy stream beside them and add only what
// the compute cannot hide. The phase with the largest share bounds the step. `--dry-run` prints the prediction for the cards below; on a GPU the step line
// prints predicted beside measured, so every run checks the model.
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "mst/llama_config.h"
#include "mst/memory_plan.h"
#include "mst/phases.h"

// A card's peak rates (vendor figures: dense bf16 tensor FLOP/s, HBM bytes/s, PCIe bytes/s each direction).
struct CardRates {
    const char* name;      // matched against the CUDA device name
    double bf16_flops;
    double hbm_bytes;
    double pcie_bytes;     // Gen4 x16 ~25 GB/s, Gen5 x16 ~50 GB/s in practice, each direction
};

// The cards --dry-run predicts for; a GPU whose name contains none of these gets no prediction.
static const CardRates KNOWN_CARDS[] = {
    {"A100", 312e12, 2039e9, 25e9},        // A100 80GB SXM
    {"H100 PCIe", 756e12, 2000e9, 50e9},
    {"H100", 989e12, 3350e9, 50e9},        // H100 SXM
    {"H200", 989e12, 4800e9, 50e9},
};
static const int DRY_RUN_CARDS[] = {0, 2, 3};  // A100 80GB, H100 SXM, H200

// the card whose name the device's contains (the longest match: "H100 PCIe" before "H100"); nullptr if none
static inline const CardRates* card_rates_for(const char* device_name) {
    const CardRates* best = nullptr;
    for (const CardRates& card : KNOWN_CARDS)
        if (strstr(device_name, card.name) && (!best || strlen(card.name) > strlen(best->name))) best = &card;
    return best;
}

// Measured on an NVIDIA H200 by dev/gpu_check.sh, 2026-11-28 (dev/cuda/README.md): the ceilings as fractions of
// the peaks above (cuBLASLt bf16 8192^3: 778 of 989 TFLOP/s; device-to-device copy: 4183 of 4800 GB/s), and each
// kernel as a fraction of its ceiling. Assumed the same on the other cards until measured there.
static const double MATMUL_CEILING_OF_PEAK = 778.0 / 989.0;
static const double COPY_CEILING_OF_PEAK = 4183.0 / 4800.0;
static const double MATMUL_FORWARD_OF_CEILING = 0.97;    // mean of the three forward shapes (1.01, 1.01, 0.88)
static const double MATMUL_BACKWARD_OF_CEILING = 0.88;   // mean of the six backward rows (0.73 .. 0.94)
// attention (mma.sync cp.async v2, the product's), mean of T = 8192 and 32768 at head dim 128; T = 8192 at 64.
// Backward's FLOPs are counted as FlashAttention's, 2.5 x forward's (five matmuls to two).
static inline double attention_forward_of_ceiling(int head_dim) { return head_dim >= 128 ? 0.31 : 0.28; }
static inline double attention_backward_of_ceiling(int head_dim) { return head_dim >= 128 ? 0.215 : 0.17; }

// A memory-bound kernel: bytes moved per element (from the benchmark's time x rate) and its measured fraction
// of the copy ceiling.
struct BoundKernel { double bytes_per_element, of_ceiling; };
static const BoundKernel RMSNORM_RESIDUAL_FORWARD = {8, 0.73}, RMSNORM_FORWARD = {4, 0.55},
                         RMSNORM_BACKWARD = {8, 0.43}, ROPE = {4, 0.30}, SWIGLU_FORWARD = {6, 0.99},
                         SWIGLU_BACKWARD = {10, 1.0}, CROSSENTROPY = {4, 0.65}, EMBEDDING_FORWARD = {4, 0.80},
                         EMBEDDING_BACKWARD = {10, 0.02}, GLOBAL_NORM = {4, 0.59};
// AdamW per parameter: bf16 state 16 bytes (0.51), fp32 state or fp32 master weights 24 bytes (0.77 / 0.80)
static inline BoundKernel adamw_kernel_rate(const TrainingOptions& o) {
    if (o.master_weights) return {o.bf16_optimizer_state ? 24.0 : 32.0, 0.80};
    return o.bf16_optimizer_state ? BoundKernel{16, 0.51} : BoundKernel{24, 0.77};
}

struct StepPrediction {
    double seconds[NUM_PHASES];
    double work[NUM_PHASES];   // FLOPs (matmuls, attention) or bytes (the others) per update
    double total_s, tokens_per_s, mfu;  // mfu: training_flops_per_token's model FLOPs / total_s / peak
    double compute_s, copy_s;  // the kernels' time; the host copies' whole time (one copy stream: both directions in turn)
    int bound;                 // the phase with the largest share
};

// One update of `micro_batches` forward + backward passes of the plan's B x T tokens, then the update.
static inline StepPrediction predict_step(const MemoryPlan& plan, const CardRates& card, int micro_batches = 1) {
    const ModelConfig& c = plan.config;
    const TrainingOptions& o = plan.options;
    double N = (double)o.B * o.T * micro_batches, C = c.d_model, F = c.ffn_dim, V = c.vocab_size, L = c.n_layer;
    double Q = c.q_dim(), KV = c.kv_dim(), hd = c.head_dim();
    ParameterLayout layout = parameter_layout(c);
    double P = (double)layout.total, layer_matmul = (double)layout.layer.count - 2.0 * C;  // less the two norm weights
    double matmul_rate = card.bf16_flops * MATMUL_CEILING_OF_PEAK, copy_rate = card.hbm_bytes * COPY_CEILING_OF_PEAK;
    double forward_layers = o.recompute ? 2.0 : 1.0;  // recomputation runs each layer's forward again in backward
    // --segment k: one more forward of each segment's other k - 1 layers, attention included
    double segment_layers = SegmentSchedule(o.segment, c.n_layer).recomputed_layers();
    // --attention-blocks: backward runs each block's norm, q projection, RoPE and attention forward once more, and
    // the norm again for dWk, dWv; each forward of a layer runs the norm twice (K and V first, then q)
    double blocked = attention_blocks_used(o) > 1 ? 1.0 : 0.0;
    StepPrediction p = {};

    // matmuls: forward 2 FLOPs per weight per token, backward 4; the LM head once (its mini-sequences are not
    // recomputed), each layer's forward again when recomputed
    double forward_flops = 2.0 * N * ((forward_layers * L + segment_layers) * layer_matmul + V * C + blocked * L * C * Q);
    double backward_flops = 4.0 * N * (L * layer_matmul + V * C);
    p.work[PHASE_MATMULS] = forward_flops + backward_flops;
    p.seconds[PHASE_MATMULS] = forward_flops / (matmul_rate * MATMUL_FORWARD_OF_CEILING) +
                               backward_flops / (matmul_rate * MATMUL_BACKWARD_OF_CEILING);
    // causal attention: QK^T and PV, 4 T hd FLOPs per query head and token without the mask, half with it
    // (document masking would skip more: not counted, so this is the upper bound)
    double attention_forward = 2.0 * N * o.T * Q * L;
    double attention_forwards = (o.keep_attention > 0 ? 1.0 : forward_layers) + segment_layers / L + blocked;  // kept: not recomputed
    p.work[PHASE_ATTENTION_FORWARD] = attention_forwards * attention_forward;
    p.seconds[PHASE_ATTENTION_FORWARD] = p.work[PHASE_ATTENTION_FORWARD] / (matmul_rate * attention_forward_of_ceiling((int)hd));
    p.work[PHASE_ATTENTION_BACKWARD] = 2.5 * attention_forward;
    p.seconds[PHASE_ATTENTION_BACKWARD] = p.work[PHASE_ATTENTION_BACKWARD] / (matmul_rate * attention_backward_of_ceiling((int)hd));

    // memory-bound kernels, per token: each layer's two norms, RoPE on q and k, SwiGLU; forward (twice when
    // recomputed) and backward; then the final norm, the cross-entropy over V logits, the embedding
    double bound_s = 0, bound_bytes = 0;
    auto add = [&](const BoundKernel& k, double elements) {
        bound_bytes += k.bytes_per_element * elements;
        bound_s += k.bytes_per_element * elements / (copy_rate * k.of_ceiling);
    };
    add(RMSNORM_RESIDUAL_FORWARD, (forward_layers * L + segment_layers) * 2 * N * C);
    add(ROPE, (forward_layers * L + segment_layers) * N * (Q + KV));
    add(SWIGLU_FORWARD, (forward_layers * L + segment_layers) * N * F);
    add(RMSNORM_FORWARD, blocked * (forward_layers * L + segment_layers + 2 * L) * N * C);
    add(ROPE, blocked * L * N * Q);
    add(RMSNORM_BACKWARD, L * 2 * N * C);
    add(ROPE, L * N * (Q + KV));
    add(SWIGLU_BACKWARD, L * N * F);
    add(RMSNORM_FORWARD, N * C);
    add(RMSNORM_BACKWARD, N * C);
    add(CROSSENTROPY, N * V);
    add(EMBEDDING_FORWARD, N * C);
    add(EMBEDDING_BACKWARD, N * C);
    p.work[PHASE_MEMORY_BOUND] = bound_bytes;
    p.seconds[PHASE_MEMORY_BOUND] = bound_s;
    // the update: the global norm over every gradient, then AdamW over every parameter
    BoundKernel adamw = adamw_kernel_rate(o);
    p.work[PHASE_OPTIMIZER] = P * (GLOBAL_NORM.bytes_per_element + adamw.bytes_per_element);
    p.seconds[PHASE_OPTIMIZER] = P * GLOBAL_NORM.bytes_per_element / (copy_rate * GLOBAL_NORM.of_ceiling) +
                                 P * adamw.bytes_per_element / (copy_rate * adamw.of_ceiling);
    // host copies at the card's PCIe rate, each micro-batch's (the held gradients' P x 4 out and back,
    // training.h; the checkpoints'), and once per update the AdamW state's (--state-offload): on the copy stream,
    // so only what exceeds the compute shows
    p.compute_s = 0;
    for (int phase = 0; phase < PHASE_HOST_COPIES; phase++) p.compute_s += p.seconds[phase];
    double state_bytes = 2.0 * plan.bytes[REGION_HOST_ADAM_STATE];
    p.work[PHASE_HOST_COPIES] = (plan.pcie_to_host + plan.pcie_to_device - state_bytes) * micro_batches + state_bytes;
    p.copy_s = p.work[PHASE_HOST_COPIES] / card.pcie_bytes;
    p.seconds[PHASE_HOST_COPIES] = std::max(0.0, p.copy_s - p.compute_s);

    for (int phase = 0; phase < NUM_PHASES; phase++) {
        p.total_s += p.seconds[phase];
        if (p.seconds[phase] > p.seconds[p.bound]) p.bound = phase;
    }
    p.tokens_per_s = N / p.total_s;
    p.mfu = training_flops_per_token(c, o.T) * N / p.total_s / card.bf16_flops;
    return p;
}

// --dry-run: milliseconds per phase on each of DRY_RUN_CARDS, then seconds per step, tokens/s, MFU and the bound
static inline void print_step_prediction(const MemoryPlan& plan, int micro_batches = 1) {
    const int n = sizeof DRY_RUN_CARDS / sizeof DRY_RUN_CARDS[0];
    StepPrediction p[n];
    for (int i = 0; i < n; i++) p[i] = predict_step(plan, KNOWN_CARDS[DRY_RUN_CARDS[i]], micro_batches);
    printf("predicted step (kernels in series, host copies beside them; rates: the cards' peaks x our kernels' fractions measured on an "
           "H200, dev/cuda/README.md):\n| %-20s |", "phase");
    for (int i = 0; i < n; i++) printf(" %9s ms |", KNOWN_CARDS[DRY_RUN_CARDS[i]].name);
    printf("\n|----------------------|");
    for (int i = 0; i < n; i++) printf("--------------|");
    printf("\n");
    for (int phase = 0; phase < NUM_PHASES; phase++) {
        printf("| %-20s |", PHASE_NAMES[phase]);
        for (int i = 0; i < n; i++) printf(" %12.2f |", 1e3 * p[i].seconds[phase]);
        printf("\n");
    }
    printf("| %-20s |", "step");
    for (int i = 0; i < n; i++) printf(" %12.2f |", 1e3 * p[i].total_s);
    printf("\n");
    for (int i = 0; i < n; i++) {
        const CardRates& card = KNOWN_CARDS[DRY_RUN_CARDS[i]];
        printf("%s: %.0f tokens/s, MFU %.1f%%, bound by %s (%.0f%% of the step)", card.name, p[i].tokens_per_s,
               100.0 * p[i].mfu, PHASE_NAMES[p[i].bound], 100.0 * p[i].seconds[p[i].bound] / p[i].total_s);
        if (p[i].copy_s > 0)  // the PCIe copies against the kernels they run beside
            printf("; host copies %.2f s at %.0f GB/s beside %.2f s of kernels: %s", p[i].copy_s, card.pcie_bytes / 1e9,
                   p[i].compute_s, p[i].copy_s <= p[i].compute_s ? "hidden" : "not hidden");
        printf("\n");
    }
}
