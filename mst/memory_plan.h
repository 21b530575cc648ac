// memory_plan.h: every byte the GPU trainer allocates, computed up front by one function.
//
// train_llama allocates one arena of plan.total bytes at start-up and carves it into the regions below,
// in this order, each at plan.offset[region]; nothing is allocated afterwards. `--dry-run` prints the
// plan beside the standard plan (no mini-sequences, no recomputation), so the saving of each MST choice
// can be read off region by region.
//
// Notation: N = B*T tokens, C = d_model, Q = n_head*head_dim, KV = n_kv_head*head_dim, F = ffn_dim,
// V = vocab, L = layers, P = parameters, n_mlp = tokens in one MLP mini-sequence, n_lm = tokens in one
// LM-head mini-sequence. Activations and their gradients are bf16 (2 bytes), parameter gradients fp32.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "mst/llama_config.h"

// cuBLASLt's workspace, taken from the arena (mst_kernels.cuh hands it to cuBLASLt once)
static const size_t CUBLASLT_WORKSPACE_BYTES = 32ull << 20;
// RMSNorm's weight gradient is reduced in this many fixed row chunks (deterministic): partials C x 4 each
static const int RMSNORM_GRADIENT_CHUNKS = 128;
// what the CUDA context, cuBLASLt's handle and kernels' code take outside the arena, held back from the
// card's memory when checking that a plan fits
static const double CUDA_CONTEXT_RESERVE_GIB = 1.0;
// a mini-sequence shorter than this wastes the matmuls' efficiency, so the automatic rule stops there
static const int MIN_CHUNK_TOKENS = 1024;

struct TrainingOptions {
    int B = 1;
    int T = 60000;
    int mlp_chunks = 0;          // -m: MLP mini-sequences; 0 = automatic rule, 1 = standard
    int lmhead_chunks = 0;       // -M: LM-head mini-sequences; 0 = automatic rule, 1 = standard
    bool recompute = true;       // -r: keep only each layer's input, recompute the layer in backward
    bool bf16_optimizer_state = true;  // AdamW m and v in bf16 (stochastic rounding) instead of fp32
    bool master_weights = false; // fp32 master copy of the weights
    bool fused_optimizer = true; // update each layer as soon as its gradients are complete
};

enum Region {
    // persistent: the model and its optimizer
    REGION_PARAMETERS,        // P x 2
    REGION_MASTER_WEIGHTS,    // P x 4, or nothing
    REGION_ADAM_M,            // P x (2 or 4)
    REGION_ADAM_V,            // P x (2 or 4)
    REGION_GRADIENTS,         // fused: one tensor group at a time; else P x 4
    // saved by forward for backward
    REGION_LAYER_INPUTS,      // (L + 1) x N x C x 2: each layer's input (its checkpoint) and the last output
    // one layer's activations (recomputed in backward), or all L layers' without recomputation
    REGION_ATTENTION_NORM,    // N x C x 2 normed input, N x 4 rstd
    REGION_QKV,               // N x (Q + 2 KV) x 2
    REGION_ATTENTION_OUT,     // N x Q x 2 attention output, N x H x 4 log-sum-exp
    REGION_ATTENTION_RESIDUAL,// N x C x 2 residual after attention (the MLP's input)
    REGION_MLP_NORM,          // N x C x 2, N x 4 rstd
    REGION_MLP_HIDDEN,        // n_mlp x 3F x 2: gate, up, silu(gate)*up of one mini-sequence
    // backward working buffers
    REGION_RESIDUAL_GRADIENT, // N x C x 2 gradient of the residual stream, N x C x 2 of a norm's output
    REGION_QKV_GRADIENT,      // N x (Q + 2 KV) x 2, N x Q x 2 attention-output gradient, N x H x 4 delta
    REGION_MLP_HIDDEN_GRADIENT, // n_mlp x 3F x 2: gradients of gate, up, and silu(gate)*up
    // LM head and loss
    REGION_FINAL_NORM,        // N x C x 2, N x 4 rstd
    REGION_LMHEAD_LOGITS,     // n_lm x V x 2: one mini-sequence of logits, its gradient written in place
    REGION_LOSSES,            // N x 4 per-token loss
    // small
    REGION_TOKENS,            // N x 4 inputs, N x 4 targets
    REGION_ROPE_TABLES,       // T x (hd/2) x 4 cos, same sin
    REGION_SCRATCH,           // reduction partials (norm weight gradients, gradient norm)
    REGION_CUBLASLT_WORKSPACE,
    NUM_REGIONS
};

static const char* const REGION_NAMES[NUM_REGIONS] = {
    "parameters (bf16)", "master weights (fp32)", "AdamW m", "AdamW v", "parameter gradients (fp32)",
    "layer inputs (checkpoints)", "attention norm", "q, k, v", "attention output + lse",
    "attention residual", "MLP norm", "MLP hidden (gate, up, act)", "residual gradient", "q, k, v gradient",
    "MLP hidden gradient", "final norm", "LM-head logits", "per-token loss", "tokens", "RoPE tables",
    "scratch", "cuBLASLt workspace",
};

struct MemoryPlan {
    ModelConfig config;
    TrainingOptions options;     // as given, with the automatic chunk counts resolved
    int mlp_chunk_tokens;        // n_mlp = ceil(N / mlp_chunks)
    int lmhead_chunk_tokens;     // n_lm = ceil(N / lmhead_chunks)
    size_t bytes[NUM_REGIONS];
    size_t offset[NUM_REGIONS];  // byte offset of each region in the arena, 256-byte aligned
    std::string shape[NUM_REGIONS];
    size_t total;
    // pinned host memory (not in the arena): with the fused optimizer, every gradient group held from
    // backward until its exactly clipped update (training.h), P x 4
    size_t host_gradient_bytes;
};

static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }
static inline double gib(size_t bytes) { return bytes / (double)(1ull << 30); }
// regions start on 256-byte boundaries (cuBLASLt's and the kernels' vector loads want aligned pointers)
static inline size_t round_up_256(size_t bytes) { return ceil_div(bytes, 256) * 256; }

// The automatic rule: a mini-sequence's widest intermediate is no larger than the layer's hidden
// states (N x C): MLP hidden n_mlp x F <= N x C gives ceil(F / C) mini-sequences, LM-head logits
// n_lm x V <= N x C gives ceil(V / C) (Llama 3 8B: 4 and 32), but no mini-sequence below
// MIN_CHUNK_TOKENS tokens, and never more mini-sequences than tokens.
static inline int automatic_chunks(int width, int d_model, long N) {
    long by_width = (long)ceil_div(width, d_model);
    long by_min_tokens = std::max(1L, N / MIN_CHUNK_TOKENS);
    return (int)std::max(1L, std::min(by_width, by_min_tokens));
}

// Every region of the arena for this model and these options. Options are assumed valid
// (training_options_problem() says what is not).
static inline MemoryPlan plan_memory(const ModelConfig& c, TrainingOptions o) {
    MemoryPlan plan;
    plan.config = c;
    size_t N = (size_t)o.B * o.T, C = c.d_model, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim;
    size_t V = c.vocab_size, L = c.n_layer, H = c.n_head, hd = c.head_dim();
    ParameterLayout layout = parameter_layout(c);
    size_t P = layout.total;

    if (o.mlp_chunks == 0) o.mlp_chunks = automatic_chunks(c.ffn_dim, c.d_model, (long)N);
    if (o.lmhead_chunks == 0) o.lmhead_chunks = automatic_chunks(c.vocab_size, c.d_model, (long)N);
    size_t n_mlp = mini_sequence_length((int)N, o.mlp_chunks);
    size_t n_lm = mini_sequence_length((int)N, o.lmhead_chunks);
    plan.options = o;
    plan.mlp_chunk_tokens = (int)n_mlp;
    plan.lmhead_chunk_tokens = (int)n_lm;
    // without recomputation every layer keeps its own activations for backward
    size_t layers_live = o.recompute ? 1 : L;
    size_t state_bytes = o.bf16_optimizer_state ? 2 : 4;
    // fused: gradients exist for one group at a time: the LM head (V x C), then each layer in turn,
    // then the embedding (V x C). Tied embeddings share one V x C gradient from the LM head's backward
    // to the embedding's, so it is kept whole beside one layer's.
    size_t gradient_elements = !o.fused_optimizer ? P
                             : c.tied_embeddings ? V * C + std::max(layout.layer.count, C)
                             : std::max(V * C, layout.layer.count);

    auto set = [&](Region r, size_t bytes, std::string shape) { plan.bytes[r] = bytes; plan.shape[r] = shape; };
    auto s = [](size_t x) { return std::to_string(x); };
    std::string per_layer = layers_live > 1 ? s(layers_live) + " x " : "";
    set(REGION_PARAMETERS, P * 2, s(P) + " x 2");
    set(REGION_MASTER_WEIGHTS, o.master_weights ? P * 4 : 0, o.master_weights ? s(P) + " x 4" : "none");
    set(REGION_ADAM_M, P * state_bytes, s(P) + " x " + s(state_bytes));
    set(REGION_ADAM_V, P * state_bytes, s(P) + " x " + s(state_bytes));
    set(REGION_GRADIENTS, gradient_elements * 4, s(gradient_elements) + " x 4");
    set(REGION_LAYER_INPUTS, (L + 1) * N * C * 2, s(L + 1) + " x " + s(N) + " x " + s(C) + " x 2");
    set(REGION_ATTENTION_NORM, layers_live * (N * C * 2 + N * 4), per_layer + s(N) + " x (" + s(C) + " x 2 + 4)");
    set(REGION_QKV, layers_live * N * (Q + 2 * KV) * 2, per_layer + s(N) + " x " + s(Q + 2 * KV) + " x 2");
    set(REGION_ATTENTION_OUT, layers_live * (N * Q * 2 + N * H * 4), per_layer + s(N) + " x (" + s(Q) + " x 2 + " + s(H) + " x 4)");
    set(REGION_ATTENTION_RESIDUAL, layers_live * N * C * 2, per_layer + s(N) + " x " + s(C) + " x 2");
    set(REGION_MLP_NORM, layers_live * (N * C * 2 + N * 4), per_layer + s(N) + " x (" + s(C) + " x 2 + 4)");
    set(REGION_MLP_HIDDEN, layers_live * n_mlp * 3 * F * 2, per_layer + s(n_mlp) + " x 3 x " + s(F) + " x 2");
    set(REGION_RESIDUAL_GRADIENT, 2 * N * C * 2, "2 x " + s(N) + " x " + s(C) + " x 2");
    set(REGION_QKV_GRADIENT, N * (Q + 2 * KV) * 2 + N * Q * 2 + N * H * 4,
        s(N) + " x (" + s(Q + 2 * KV) + " x 2 + " + s(Q) + " x 2 + " + s(H) + " x 4)");
    set(REGION_MLP_HIDDEN_GRADIENT, n_mlp * 3 * F * 2, s(n_mlp) + " x 3 x " + s(F) + " x 2");
    set(REGION_FINAL_NORM, N * C * 2 + N * 4, s(N) + " x (" + s(C) + " x 2 + 4)");
    set(REGION_LMHEAD_LOGITS, n_lm * V * 2, s(n_lm) + " x " + s(V) + " x 2");
    set(REGION_LOSSES, N * 4, s(N) + " x 4");
    set(REGION_TOKENS, 2 * N * 4, "2 x " + s(N) + " x 4");
    set(REGION_ROPE_TABLES, 2 * (size_t)o.T * (hd / 2) * 4, "2 x " + s(o.T) + " x " + s(hd / 2) + " x 4");
    // reduction partials: RMSNorm weight gradient's chunks x C fp32, then 1 MiB for the gradient norm's
    set(REGION_SCRATCH, RMSNORM_GRADIENT_CHUNKS * C * 4 + (1u << 20), s(RMSNORM_GRADIENT_CHUNKS) + " x " + s(C) + " x 4 + 1 MiB");
    set(REGION_CUBLASLT_WORKSPACE, CUBLASLT_WORKSPACE_BYTES, "32 MiB");

    size_t at = 0;
    for (int r = 0; r < NUM_REGIONS; r++) {
        plan.offset[r] = at;
        at += round_up_256(plan.bytes[r]);
    }
    plan.total = at;
    plan.host_gradient_bytes = o.fused_optimizer ? P * 4 : 0;
    return plan;
}

// The comparison plan: the same model and optimizer without mini-sequences or recomputation.
static inline TrainingOptions standard_options(TrainingOptions o) {
    o.mlp_chunks = 1;
    o.lmhead_chunks = 1;
    o.recompute = false;
    return o;
}

// Does the plan fit a card of gpu_mem_gib, with the CUDA context's reserve held back?
static inline bool plan_fits(const MemoryPlan& plan, double gpu_mem_gib) {
    return gib(plan.total) + CUDA_CONTEXT_RESERVE_GIB <= gpu_mem_gib;
}

// Checks options against the model; returns "" or the problem (naming the flag).
static inline std::string training_options_problem(const ModelConfig& c, const TrainingOptions& o) {
    if (o.B <= 0) return "-B must be positive (got " + std::to_string(o.B) + ")";
    if (o.T <= 0) return "-T must be positive (got " + std::to_string(o.T) + ")";
    if (o.mlp_chunks < 0) return "-m must be 0 (automatic) or a positive count (got " + std::to_string(o.mlp_chunks) + ")";
    if (o.lmhead_chunks < 0) return "-M must be 0 (automatic) or a positive count (got " + std::to_string(o.lmhead_chunks) + ")";
    if ((long)o.B * o.T > (1L << 31) / std::max(c.vocab_size / 1024, 1)) return "-B x -T is too large for 32-bit indexing";
    return model_config_problem(c);
}

// The longest T (with options' B and chunk rules) whose plan fits gpu_mem_gib; 0 if none does.
static inline int max_T_that_fits(const ModelConfig& c, TrainingOptions o, double gpu_mem_gib) {
    int lo = 0, hi = 1 << 24;  // 16M tokens: beyond any card here
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        o.T = mid;
        if (plan_fits(plan_memory(c, o), gpu_mem_gib)) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// The plan as a table, beside the standard plan's bytes.
static inline void print_memory_plan(const MemoryPlan& plan, const MemoryPlan& standard) {
    const TrainingOptions& o = plan.options;
    printf("memory plan: %s, B=%d T=%d, MLP %d mini-sequences of %d tokens, LM head %d of %d, recompute %s,\n"
           "             AdamW state %s, master weights %s, optimizer %s\n",
           plan.config.name, o.B, o.T, o.mlp_chunks, plan.mlp_chunk_tokens, o.lmhead_chunks,
           plan.lmhead_chunk_tokens, o.recompute ? "on" : "off", o.bf16_optimizer_state ? "bf16" : "fp32",
           o.master_weights ? "fp32" : "none", o.fused_optimizer ? "fused into backward" : "after backward");
    printf("| %-27s | %-40s | %12s | %12s |\n", "region", "shape (elements x bytes)", "MST GiB", "standard GiB");
    printf("|-----------------------------|------------------------------------------|--------------|--------------|\n");
    for (int r = 0; r < NUM_REGIONS; r++) {
        printf("| %-27s | %-40s | %12.3f | %12.3f |\n", REGION_NAMES[r], plan.shape[r].c_str(),
               gib(plan.bytes[r]), gib(standard.bytes[r]));
    }
    printf("| %-27s | %-40s | %12.3f | %12.3f |\n", "total", "", gib(plan.total), gib(standard.total));
    if (plan.host_gradient_bytes > 0)
        printf("pinned host memory: held gradients (fp32, exact clipping with the fused optimizer) %zu x 4 = %.3f GiB\n",
               plan.host_gradient_bytes / 4, gib(plan.host_gradient_bytes));
}
