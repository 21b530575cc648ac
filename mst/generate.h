// generate.h: text generation on the CPU with a KV cache, from fp32 weights in our parameter layout.
//
// Each new token runs one position through the model and appends its keys and values to the cache, so
// generating n tokens costs O(n) token steps (each attending over the cache), not O(n^2) as re-running
// the whole sequence would. The GPU trainer calls it on a host copy of its weights for its -g samples.
//
//   std::vector<int> tokens = {128000};                    // the prompt
//   uint64_t rng = seed;
//   generate(config, params, &tokens, 64, 1.0f, 0.9f, &rng);   // appends 64 sampled tokens
//   tokenizer_decode(&tokenizer, tokens.data(), tokens.size(), &text);
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "mst/llama_config.h"
#include "mst/llama_reference.h"

struct KVCache {
    int max_length = 0, length = 0;              // positions held, and room for
    std::vector<std::vector<float>> keys, values;  // per layer (max_length, kv_dim), keys after RoPE
    std::vector<float> cos_table, sin_table;       // (max_length, head_dim/2)
};

static inline KVCache kv_cache(const ModelConfig& c, int max_length) {
    KVCache cache;
    cache.max_length = max_length;
    cache.keys.assign(c.n_layer, std::vector<float>((size_t)max_length * c.kv_dim()));
    cache.values = cache.keys;
    cache.cos_table.resize((size_t)max_length * c.head_dim() / 2);
    cache.sin_table.resize(cache.cos_table.size());
    rope_tables(c, max_length, cache.cos_table.data(), cache.sin_table.data());
    return cache;
}

// Attention of one query position t over cached positions 0..t: each head through attention_row_cpu,
// the arithmetic of attention_forward_cpu, so it gives the full-sequence result.
static inline void attention_one_query_cpu(float* out, const float* q, const float* keys, const float* values, int t,
                                           int H, int KV, int hd) {
    int group = H / KV;
    std::vector<float> scores(t + 1);
    for (int h = 0; h < H; h++) {
        size_t first_kv = (size_t)(h / group) * hd;
        attention_row_cpu(out + (size_t)h * hd, q + (size_t)h * hd, keys + first_kv, values + first_kv,
                          (size_t)KV * hd, t + 1, hd, scores.data());
    }
}

// Runs `token` at position cache->length through the model, appends its keys and values, writes the
// logits (V) of the next token. The cache must have room.
static inline void generate_step(const ModelConfig& c, const float* params, KVCache* cache, int token, float* logits) {
    ParameterLayout p = parameter_layout(c);
    int C = c.d_model, F = c.ffn_dim, t = cache->length, hd = c.head_dim();
    const float* cos_row = cache->cos_table.data() + (size_t)t * hd / 2;  // rope_cpu at T = 1 reads row 0
    const float* sin_row = cache->sin_table.data() + (size_t)t * hd / 2;
    std::vector<float> x(C), norm(C), q(c.q_dim()), attention(c.q_dim()), projection(C), gate(F), up(F), act(F);
    float rstd;
    embedding_forward_cpu(x.data(), &token, params + p.embedding, 1, C);
    for (int l = 0; l < c.n_layer; l++) {
        const float* w = params + p.layer_start(l);
        float* k = cache->keys[l].data() + (size_t)t * c.kv_dim();
        float* v = cache->values[l].data() + (size_t)t * c.kv_dim();
        rmsnorm_forward_cpu(norm.data(), &rstd, x.data(), w + p.layer.input_norm, 1, C, c.norm_eps);
        matmul_forward_cpu(q.data(), norm.data(), w + p.layer.q, 1, C, c.q_dim());
        matmul_forward_cpu(k, norm.data(), w + p.layer.k, 1, C, c.kv_dim());
        matmul_forward_cpu(v, norm.data(), w + p.layer.v, 1, C, c.kv_dim());
        rope_cpu(q.data(), cos_row, sin_row, 1, 1, c.n_head, hd, false);
        rope_cpu(k, cos_row, sin_row, 1, 1, c.n_kv_head, hd, false);
        attention_one_query_cpu(attention.data(), q.data(), cache->keys[l].data(), cache->values[l].data(), t,
                                c.n_head, c.n_kv_head, hd);
        matmul_forward_cpu(projection.data(), attention.data(), w + p.layer.o, 1, c.q_dim(), C);
        for (int i = 0; i < C; i++) x[i] += projection[i];
        rmsnorm_forward_cpu(norm.data(), &rstd, x.data(), w + p.layer.post_attention_norm, 1, C, c.norm_eps);
        mlp_chunk_intermediates(gate.data(), up.data(), act.data(), norm.data(), w + p.layer.gate, w + p.layer.up, 1, C, F);
        matmul_forward_cpu(projection.data(), act.data(), w + p.layer.down, 1, F, C);
        for (int i = 0; i < C; i++) x[i] += projection[i];
    }
    rmsnorm_forward_cpu(norm.data(), &rstd, x.data(), params + p.final_norm, 1, C, c.norm_eps);
    matmul_forward_cpu(logits, norm.data(), params + p.lm_head, 1, C, c.vocab_size);
    cache->length++;
}

// xorshift64*: the sampler's generator; state must not be 0
static inline float random_unit(uint64_t* state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (float)((*state * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.f;  // 24 bits in [0, 1)
}

// Samples a token from logits (V): temperature 0 takes the most likely; otherwise softmax(logits / T),
// cut to the most likely tokens whose probabilities sum to at least top_p (nucleus sampling).
static inline int sample_token(const float* logits, int V, float temperature, float top_p, uint64_t* rng) {
    int best = (int)(std::max_element(logits, logits + V) - logits);
    if (temperature <= 0.f) return best;
    std::vector<double> probability(V);
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += probability[i] = exp((double)(logits[i] - logits[best]) / temperature);
    std::vector<int> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return probability[a] > probability[b]; });
    int kept = 0;
    double kept_mass = 0.0;
    while (kept < V && (kept == 0 || kept_mass < top_p * sum)) kept_mass += probability[order[kept++]];
    double target = random_unit(rng) * kept_mass, cumulative = 0.0;
    for (int i = 0; i < kept; i++) {
        cumulative += probability[order[i]];
        if (target < cumulative) return order[i];
    }
    return order[kept - 1];
}

// Appends n sampled tokens to *tokens (the prompt, at least one token).
static inline void generate(const ModelConfig& c, const float* params, std::vector<int>* tokens, int n,
                            float temperature, float top_p, uint64_t* rng) {
    KVCache cache = kv_cache(c, (int)tokens->size() + n);
    std::vector<float> logits(c.vocab_size);
    for (size_t i = 0; i + 1 < tokens->size(); i++) generate_step(c, params, &cache, (*tokens)[i], logits.data());
    for (int i = 0; i < n; i++) {
        generate_step(c, params, &cache, tokens->back(), logits.data());
        tokens->push_back(sample_token(logits.data(), c.vocab_size, temperature, top_p, rng));
    }
}
