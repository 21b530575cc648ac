// llama_config.h: Llama 3 model configurations and the one parameter layout that the CPU reference,
// the GPU trainer, the memory plan and the checkpoint code all share.
//
// Weight layout and RoPE convention are Hugging Face transformers' LlamaForCausalLM: every linear weight
// is stored (out_features, in_features) row-major and applied as y = x W^T; RoPE rotates the pairs
// (i, i + head_dim/2) ("rotate-half"), so Hugging Face checkpoints load without permutation.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

struct ModelConfig {
    char name[64];
    int vocab_size;       // V
    int d_model;          // C, the residual stream width
    int n_layer;          // L
    int n_head;           // query heads
    int n_kv_head;        // key/value heads (grouped-query attention: n_head / n_kv_head queries share one)
    int ffn_dim;          // F, the SwiGLU hidden width
    float rope_theta;
    float norm_eps;
    bool tied_embeddings; // Llama 3.2 1B/3B: the LM head is the embedding matrix
    // Llama 3.1 RoPE scaling ("rope_type": "llama3"); off when rope_scaling_factor == 0
    float rope_scaling_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_position;
    bool plan_only;       // too large to train on one GPU here (llama3-70b): --dry-run only

    int head_dim() const { return d_model / n_head; }
    int q_dim() const { return n_head * head_dim(); }
    int kv_dim() const { return n_kv_head * head_dim(); }
};

// The published configurations (Meta's config.json files) and small test models.
// test-tiny is the golden-output model: vocab not a multiple of 64, 2 query heads per kv head,
// head_dim 64 (a head size the GPU attention supports), ffn not a multiple of 64, 2 layers, and RoPE
// scaling whose smooth band falls inside the head's frequencies (original_max_position 64).
static const ModelConfig MODEL_CONFIGS[] = {
    // name          V       C     L   H   KV  F      theta     eps   tied   scale low high orig  plan_only
    {"llama3-8b",    128256, 4096, 32, 32, 8,  14336, 500000.f, 1e-5f, false, 0.f,  0.f, 0.f, 0,    false},
    {"llama3.1-8b",  128256, 4096, 32, 32, 8,  14336, 500000.f, 1e-5f, false, 8.f,  1.f, 4.f, 8192, false},
    {"llama3.2-1b",  128256, 2048, 16, 32, 8,  8192,  500000.f, 1e-5f, true,  32.f, 1.f, 4.f, 8192, false},
    {"llama3.2-3b",  128256, 3072, 28, 24, 8,  8192,  500000.f, 1e-5f, true,  32.f, 1.f, 4.f, 8192, false},
    {"llama3-70b",   128256, 8192, 80, 64, 8,  28672, 500000.f, 1e-5f, false, 0.f,  0.f, 0.f, 0,    true},
    {"test-tiny",    504,    128,  2,  2,  1,  232,   500000.f, 1e-5f, false, 8.f,  1.f, 4.f, 64,   false},
    {"test-tiny-tied", 504,  128,  2,  2,  1,  232,   500000.f, 1e-5f, true,  8.f,  1.f, 4.f, 64,   false},
    // real vocabulary and width of a small Llama, 2 layers: the GPU-vs-CPU test at long T
    {"test-2layer",  128256, 512,  2,  8,  2,  1376,  500000.f, 1e-5f, false, 8.f,  1.f, 4.f, 8192, false},
};
static const int NUM_MODEL_CONFIGS = sizeof(MODEL_CONFIGS) / sizeof(MODEL_CONFIGS[0]);

// Checks that a configuration describes a model the code can build; returns "" or the problem.
// Limits that keep every size the planner and the kernels compute far from wrapping: with them the
// largest tensor (V x C or F x C) stays below 2^40 elements and the parameter count below 2^52, so the
// 64-bit products never overflow, and per-row offsets (C, F, V, heads x head_dim) fit an int.
static const int MAX_VOCAB = 1 << 24, MAX_D_MODEL = 1 << 16, MAX_FFN = 1 << 20, MAX_LAYERS = 4096, MAX_HEADS = 4096;

static inline std::string model_config_problem(const ModelConfig& c) {
    if (c.vocab_size <= 0) return "vocab_size must be positive";
    if (c.d_model <= 0 || c.n_layer <= 0 || c.n_head <= 0 || c.n_kv_head <= 0 || c.ffn_dim <= 0)
        return "d_model, n_layer, n_head, n_kv_head and ffn_dim must be positive";
    if (c.vocab_size > MAX_VOCAB || c.d_model > MAX_D_MODEL || c.ffn_dim > MAX_FFN || c.n_layer > MAX_LAYERS ||
        c.n_head > MAX_HEADS)
        return "sizes beyond what mst supports (vocab <= " + std::to_string(MAX_VOCAB) + ", d_model <= " +
               std::to_string(MAX_D_MODEL) + ", ffn <= " + std::to_string(MAX_FFN) + ", layers <= " +
               std::to_string(MAX_LAYERS) + ", heads <= " + std::to_string(MAX_HEADS) + ")";
    if (!(c.rope_theta > 0.f) || !std::isfinite(c.rope_theta)) return "rope_theta must be a positive number";
    if (!(c.norm_eps > 0.f) || !std::isfinite(c.norm_eps)) return "rms_norm_eps must be a positive number";
    if (c.rope_scaling_factor != 0.f &&
        (!(c.rope_scaling_factor > 0.f) || !std::isfinite(c.rope_scaling_factor) || !(c.rope_low_freq_factor > 0.f) ||
         !(c.rope_high_freq_factor > c.rope_low_freq_factor) || c.rope_original_max_position <= 0))
        return "rope_scaling needs factor > 0, low_freq_factor > 0, high_freq_factor > low_freq_factor and "
               "original_max_position_embeddings > 0";
    if (c.d_model % c.n_head != 0) return "n_head (" + std::to_string(c.n_head) + ") does not divide d_model (" + std::to_string(c.d_model) + ")";
    if (c.n_head % c.n_kv_head != 0) return "n_kv_head (" + std::to_string(c.n_kv_head) + ") does not divide n_head (" + std::to_string(c.n_head) + ")";
    if (c.head_dim() % 2 != 0) return "head_dim must be even for RoPE";
    return "";
}

// Looks a configuration up by name; returns false if there is none of that name.
static inline bool find_model_config(const char* name, ModelConfig* out) {
    for (int i = 0; i < NUM_MODEL_CONFIGS; i++) {
        if (strcmp(MODEL_CONFIGS[i].name, name) == 0) { *out = MODEL_CONFIGS[i]; return true; }
    }
    return false;
}

static inline std::string model_config_names() {
    std::string names;
    for (int i = 0; i < NUM_MODEL_CONFIGS; i++) names += (i ? ", " : "") + std::string(MODEL_CONFIGS[i].name);
    return names;
}

// Mini-sequence length for `chunks` chunks of n tokens: ceil(n / chunks), at least 1 (chunks > n, or
// chunks < 1 taken as 1, both work). Loop: for (start = 0; start < n; start += length). The CPU
// reference and the memory plan (hence the GPU trainer) split the sequence by this one rule.
static inline int mini_sequence_length(int n, int chunks) {
    long long count = std::max(chunks, 1);  // 64-bit: n + chunks - 1 exceeds an int for chunks near 2^31
    return n > 0 ? (int)std::max(1LL, (n + count - 1) / count) : 1;
}

// Ulysses sequence parallelism over S ranks (issue 20: the trainer's --sp, mst/reference_parallel.h's reference):
// each sequence of T tokens is cut into S blocks of Tl = ceil(T / S) tokens (padded to Tp = S Tl), rank j holding
// block j; for attention the all-to-all gives each rank the whole sequence for its heads.
//
// One group's split of the heads: rank j's attention gets query heads [j Hl, j Hl + Hl) and the KVl KV
// heads from kv_first(j) they read (KVl = 1 with replication).
struct UlyssesShape {
    int S = 1, B = 1, Tl = 1, Tp = 1, H = 1, KV = 1, Hl = 1, KVl = 1, hd = 1;
    UlyssesShape() = default;
    UlyssesShape(const ModelConfig& c, int S_, int B_, int T)
        : S(S_), B(B_), Tl(mini_sequence_length(T, S_)), Tp(S_ * Tl), H(c.n_head), KV(c.n_kv_head), Hl(H / S_),
          KVl(std::max(1, KV / S_)), hd(c.head_dim()) {}
    int kv_first(int j) const { return j * Hl / (H / KV); }
};

// "" or why S-way Ulysses cannot split this model's heads
static inline std::string ulysses_problem(const ModelConfig& c, int S) {
    if (S < 1) return "the sequence-parallel degree must be positive";
    if (c.n_head % S != 0) return "query heads (" + std::to_string(c.n_head) + ") are not a multiple of --sp";
    if (S <= c.n_kv_head ? c.n_kv_head % S != 0 : S % c.n_kv_head != 0)
        return "--sp and the KV heads (" + std::to_string(c.n_kv_head) + ") must divide one another";
    return "";
}

// The automatic rule (-m 0, -M 0; ReferenceOptions' 0): tokens per mini-sequence, not a count, so the
// MLP's and the LM head's buffers stop growing with T. A mini-sequence holds as many tokens as keep its
// widest intermediate within MINI_SEQUENCE_BYTES (MLP: gate, up, act, 3F bf16 = 6F bytes per token; LM
// head: the logits, 2V bytes per token), at least MIN_MINI_SEQUENCE_TOKENS (shorter ones waste the
// matmuls); the N tokens are then cut into ceil(N / that) mini-sequences of mini_sequence_length().
// Llama 3 8B: at most 12483 tokens per MLP mini-sequence (2^30 / 86016), 4185 per LM-head one (2^30 / 256512).
static const size_t MINI_SEQUENCE_BYTES = 1ull << 30;
static const int MIN_MINI_SEQUENCE_TOKENS = 1024;
static inline int automatic_mini_sequences(long N, size_t bytes_per_token) {
    long tokens = std::max<long>(MIN_MINI_SEQUENCE_TOKENS, (long)(MINI_SEQUENCE_BYTES / bytes_per_token));
    return (int)std::max(1L, (N + tokens - 1) / tokens);
}
// the MLP's and the LM head's mini-sequence counts for N tokens: chunks as given, or the rule for 0
static inline int mlp_mini_sequences(const ModelConfig& c, long N, int chunks) {
    return chunks > 0 ? chunks : automatic_mini_sequences(N, 6 * (size_t)c.ffn_dim);
}
static inline int lmhead_mini_sequences(const ModelConfig& c, long N, int chunks) {
    return chunks > 0 ? chunks : automatic_mini_sequences(N, 2 * (size_t)c.vocab_size);
}

// ----------------------------------------------------------------------------
// RoPE: inverse frequencies, with Llama 3.1's scaling (transformers' _compute_llama3_parameters)

// inv_freq[i] for i in [0, head_dim/2): theta^(-2i/head_dim), then scaled for long context:
// wavelengths longer than original_max_position/low_freq_factor are divided by `factor`, those shorter
// than original_max_position/high_freq_factor are kept, and the band between is interpolated smoothly.
static inline void rope_inverse_frequencies(const ModelConfig& c, double* inv_freq) {
    int half = c.head_dim() / 2;
    for (int i = 0; i < half; i++) {
        double freq = 1.0 / pow((double)c.rope_theta, (2.0 * i) / c.head_dim());
        if (c.rope_scaling_factor > 0.f) {
            double low_freq_wavelen = c.rope_original_max_position / (double)c.rope_low_freq_factor;
            double high_freq_wavelen = c.rope_original_max_position / (double)c.rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / freq;
            if (wavelen > low_freq_wavelen) {
                freq = freq / c.rope_scaling_factor;
            } else if (wavelen >= high_freq_wavelen) {
                double smooth = (c.rope_original_max_position / wavelen - c.rope_low_freq_factor) /
                                (c.rope_high_freq_factor - c.rope_low_freq_factor);
                freq = (1.0 - smooth) * freq / c.rope_scaling_factor + smooth * freq;
            }
        }
        inv_freq[i] = freq;
    }
}

// cos and sin tables, (T, head_dim/2): angle = position * inv_freq[i], computed in double then rounded,
// so the CPU reference and the GPU trainer (which uploads this table) rotate by the same angles.
static inline void rope_tables(const ModelConfig& c, int T, float* cos_table, float* sin_table) {
    int half = c.head_dim() / 2;
    std::vector<double> inv_freq(half);
    rope_inverse_frequencies(c, inv_freq.data());
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            double angle = (double)t * inv_freq[i];
            cos_table[(size_t)t * half + i] = (float)cos(angle);
            sin_table[(size_t)t * half + i] = (float)sin(angle);
        }
    }
}

// ----------------------------------------------------------------------------
// Parameter layout: all parameters in one buffer, in this order:
//   embedding (V x C) | layer 0 | layer 1 | ... | final norm (C) | LM head (V x C, absent when tied)
// and inside each layer (contiguous, so an optimizer step fused into backward can update one layer
// as soon as its gradients are complete):
//   input norm (C) | q (H*hd x C) | k (KV*hd x C) | v (KV*hd x C) | o (C x H*hd) |
//   post-attention norm (C) | gate (F x C) | up (F x C) | down (C x F)

struct LayerOffsets {  // element offsets from the start of a layer's parameters
    size_t input_norm, q, k, v, o, post_attention_norm, gate, up, down;
    size_t count;      // elements in one layer
};

struct ParameterLayout {
    size_t embedding;      // element offsets into the whole parameter buffer
    size_t layers;         // first layer; layer l starts at layers + l * layer.count
    LayerOffsets layer;
    size_t final_norm;
    size_t lm_head;        // == embedding when the embeddings are tied
    size_t total;          // elements in the buffer

    size_t layer_start(int l) const { return layers + (size_t)l * layer.count; }
};

static inline ParameterLayout parameter_layout(const ModelConfig& c) {
    size_t C = c.d_model, F = c.ffn_dim, Q = c.q_dim(), KV = c.kv_dim(), V = c.vocab_size;
    ParameterLayout p;
    LayerOffsets& l = p.layer;
    size_t at = 0;
    l.input_norm = at;          at += C;
    l.q = at;                   at += Q * C;
    l.k = at;                   at += KV * C;
    l.v = at;                   at += KV * C;
    l.o = at;                   at += C * Q;
    l.post_attention_norm = at; at += C;
    l.gate = at;                at += F * C;
    l.up = at;                  at += F * C;
    l.down = at;                at += C * F;
    l.count = at;
    p.embedding = 0;
    p.layers = V * C;
    p.final_norm = p.layers + (size_t)c.n_layer * l.count;
    p.lm_head = c.tied_embeddings ? p.embedding : p.final_norm + C;
    p.total = p.final_norm + C + (c.tied_embeddings ? 0 : V * C);
    return p;
}

// One named tensor of the layout, with its Hugging Face name, for checkpoints and golden files.
struct ParameterTensor {
    std::string name;   // e.g. "model.layers.3.mlp.gate_proj.weight"
    size_t offset;      // elements into the parameter buffer
    size_t rows, cols;  // a norm weight is 1 x C
};

static inline std::vector<ParameterTensor> parameter_tensors(const ModelConfig& c) {
    ParameterLayout p = parameter_layout(c);
    size_t C = c.d_model, F = c.ffn_dim, Q = c.q_dim(), KV = c.kv_dim(), V = c.vocab_size;
    std::vector<ParameterTensor> t;
    t.push_back({"model.embed_tokens.weight", p.embedding, V, C});
    for (int i = 0; i < c.n_layer; i++) {
        std::string pre = "model.layers." + std::to_string(i) + ".";
        size_t at = p.layer_start(i);
        t.push_back({pre + "input_layernorm.weight", at + p.layer.input_norm, 1, C});
        t.push_back({pre + "self_attn.q_proj.weight", at + p.layer.q, Q, C});
        t.push_back({pre + "self_attn.k_proj.weight", at + p.layer.k, KV, C});
        t.push_back({pre + "self_attn.v_proj.weight", at + p.layer.v, KV, C});
        t.push_back({pre + "self_attn.o_proj.weight", at + p.layer.o, C, Q});
        t.push_back({pre + "post_attention_layernorm.weight", at + p.layer.post_attention_norm, 1, C});
        t.push_back({pre + "mlp.gate_proj.weight", at + p.layer.gate, F, C});
        t.push_back({pre + "mlp.up_proj.weight", at + p.layer.up, F, C});
        t.push_back({pre + "mlp.down_proj.weight", at + p.layer.down, C, F});
    }
    t.push_back({"model.norm.weight", p.final_norm, 1, C});
    if (!c.tied_embeddings) t.push_back({"lm_head.weight", p.lm_head, V, C});
    return t;
}

// ----------------------------------------------------------------------------
// Model FLOPs for MFU: 6 per parameter per token for the matmuls (forward 2, backward 4), plus causal
// attention: QK^T and PV are 4 * T * q_dim FLOPs per token per layer forward without the mask, half
// that with it, times 3 for forward + backward. Layer recomputation is not counted (it is overhead).
static inline double training_flops_per_token(const ModelConfig& c, int T) {
    ParameterLayout p = parameter_layout(c);
    double matmul_params = (double)c.n_layer * (p.layer.count - 2.0 * c.d_model) + (double)c.vocab_size * c.d_model;
    double attention = 3.0 * 2.0 * (double)T * c.q_dim() * c.n_layer;
    return 6.0 * matmul_params + attention;
}
