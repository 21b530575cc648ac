// reference_parallel.h: the CPU reference of Llama 3 training split across ranks (issue 12): Ulysses
// sequence parallelism (SP) and ZeRO-1 data parallelism (DP), built from the layer functions of
// llama_reference.h and the collectives of comm.h. It is the specification of what the multi-GPU trainer
// must compute, and tests/test_parallel.cpp checks it against the one-rank reference.
//
// Ranks: P = S x D. World rank r has sp_rank = r % S and dp_rank = r / S: an SP group is S consecutive
// ranks. The global batch of B sequences is split by rows over the D data-parallel groups (B / D each);
// within an SP group every rank holds Tl = ceil(T / S) token slots of every sequence: rank s holds
// positions [s Tl, s Tl + Tl). When S does not divide T, the slots past T (at the end of the last ranks)
// are padding: token 0, target -1 (ignored). Causal attention never lets a real token see a later
// position, and an ignored target gives no gradient, so padding changes nothing, and every all-to-all
// moves equal blocks (what NCCL wants). Padding costs at most S - 1 token slots per sequence.
//
// Ulysses: outside attention (norms, projections, MLP and LM-head mini-sequences) a rank works on its
// B x Tl tokens. RoPE rotates by global positions (the tables offset by s Tl). Before attention an
// all-to-all turns q (B, Tl, H, hd) into (B, S Tl, H/S, hd): all tokens, heads [s H/S, (s+1) H/S); k and v
// likewise with the KV heads those query heads read. When S exceeds the KV heads (S a multiple of KV),
// each KV head is sent to the S / KV ranks whose query heads read it (DeepSpeed's kv replication); in
// backward their dk, dv come back and are summed in rank order. Attention runs unchanged on the full
// sequence; a reverse all-to-all returns the output to token order. The loss is the sum over all ranks
// divided by the counted targets of all ranks.
//
// ZeRO-1: the parameter buffer (layout of parameter_layout) is cut into P equal shards (the last padded).
// The gradients, each rank's partial sum, are reduce-scattered over all P ranks (summed in rank order);
// each rank clips its shard by the global norm (sum of squares all-reduced), updates the shard's weights
// with its own AdamW m and v (memory / P), and the weights are all-gathered. Shards span all P ranks, not
// only the D data-parallel ones: SP ranks hold the same weights, so sharding over them too divides the
// state by P (DeepSpeed's Ulysses does the same).
#pragma once
#include <string>
#include <vector>

#include "mst/comm.h"
#include "mst/llama_reference.h"

// ----------------------------------------------------------------------------
// where one rank stands

struct ParallelRanks {
    Comm world;       // all P ranks: the gradient reduce-scatter, the weight all-gather, the loss and norm sums
    Comm sp_group;    // the S ranks that share sequences: Ulysses all-to-alls
    int S = 1, D = 1, sp_rank = 0, dp_rank = 0;
    size_t shard = 0;                    // parameters per ZeRO-1 shard: ceil(total / P)
    std::vector<float> adam_m, adam_v;   // this rank's shard of the AdamW state
    int step = 0;
};

static inline ParallelRanks parallel_ranks(const Comm& world, int S, const ModelConfig& config) {
    ParallelRanks p;
    p.world = world;
    p.S = S;
    p.D = world.size / S;
    p.sp_rank = world.rank % S;
    p.dp_rank = world.rank / S;
    p.sp_group = comm_split(world, p.dp_rank, p.sp_rank);
    p.shard = (parameter_layout(config).total + world.size - 1) / world.size;
    p.adam_m.assign(p.shard, 0.f);
    p.adam_v.assign(p.shard, 0.f);
    return p;
}

// This rank's tokens: rows [dp_rank B/D, ...) of the global (B, T) batch, positions [sp_rank Tl, ...),
// padded with token 0 / target -1 past T. Writes (B/D, Tl) inputs and targets.
static inline void parallel_local_batch(const ParallelRanks& p, const int* inputs, const int* targets, int B, int T,
                                        std::vector<int>& local_inputs, std::vector<int>& local_targets) {
    int Bl = B / p.D, Tl = mini_sequence_length(T, p.S);
    local_inputs.assign((size_t)Bl * Tl, 0);
    local_targets.assign((size_t)Bl * Tl, -1);
    for (int b = 0; b < Bl; b++)
        for (int t = 0; t < Tl; t++) {
            int position = p.sp_rank * Tl + t;
            if (position >= T) continue;
            size_t from = (size_t)(p.dp_rank * Bl + b) * T + position;
            local_inputs[(size_t)b * Tl + t] = inputs[from];
            local_targets[(size_t)b * Tl + t] = targets[from];
        }
}

// ----------------------------------------------------------------------------
// Ulysses all-to-alls


// Copies between a sequence (B, S Tl, row) and S blocks of (B, Tl, row), block i holding tokens
// [i Tl, i Tl + Tl): into the blocks (to_blocks) or out of them.
static inline void ulysses_token_blocks(float* blocks, float* sequence, const UlyssesShape& u, size_t row, bool to_blocks) {
    size_t block = (size_t)u.B * u.Tl * row, rows = u.Tl * row;
    for (int i = 0; i < u.S; i++)
        for (int b = 0; b < u.B; b++) {
            float* in_blocks = blocks + i * block + b * rows;
            float* in_sequence = sequence + ((size_t)b * u.Tp + (size_t)i * u.Tl) * row;
            if (to_blocks) memcpy(in_blocks, in_sequence, rows * sizeof(float));
            else memcpy(in_sequence, in_blocks, rows * sizeof(float));
        }
}

// x (B, Tl, heads, hd): this rank's tokens, every head -> out (B, S Tl, n, hd): every token, the n heads
// of this rank. Rank j is sent heads [first(j), first(j) + n) of our tokens.
template <typename First>
static inline void ulysses_tokens_to_heads(const Comm& g, const UlyssesShape& u, float* out, const float* x, int heads,
                                           int n, First first) {
    size_t block = (size_t)u.B * u.Tl * n * u.hd, row = (size_t)n * u.hd;
    std::vector<float> send(block * u.S), recv(block * u.S);
    for (int j = 0; j < u.S; j++)
        for (size_t bt = 0; bt < (size_t)u.B * u.Tl; bt++)
            memcpy(&send[j * block + bt * row], x + (bt * heads + first(j)) * u.hd, row * sizeof(float));
    comm_all_to_all(g, send.data(), recv.data(), block, COMM_F32);
    ulysses_token_blocks(recv.data(), out, u, row, false);
}

// The reverse: out (B, S Tl, n, hd) -> x (B, Tl, heads, hd) += rank j's heads [first(j), ...) of our tokens,
// added in ascending j (a replicated KV head's gradient arrives from S / KV ranks; others arrive once).
template <typename First>
static inline void ulysses_heads_to_tokens(const Comm& g, const UlyssesShape& u, float* x, const float* out, int heads,
                                           int n, First first) {
    size_t block = (size_t)u.B * u.Tl * n * u.hd, row = (size_t)n * u.hd;
    std::vector<float> send(block * u.S), recv(block * u.S);
    ulysses_token_blocks(send.data(), const_cast<float*>(out), u, row, true);
    comm_all_to_all(g, send.data(), recv.data(), block, COMM_F32);
    for (int j = 0; j < u.S; j++)
        for (size_t bt = 0; bt < (size_t)u.B * u.Tl; bt++) {
            float* to = x + (bt * heads + first(j)) * u.hd;
            const float* from = &recv[j * block + bt * row];
            for (size_t i = 0; i < row; i++) to[i] += from[i];
        }
}

// ----------------------------------------------------------------------------
// one layer on this rank's tokens, attention over all tokens of its heads

struct ParallelLayerActivations {
    std::vector<float> norm1, rstd1;           // (Nl, C), (Nl)
    std::vector<float> q, k, v;                // heads layout after RoPE: (B, Tp, Hl, hd), (B, Tp, KVl, hd)
    std::vector<float> attention_heads, lse;   // (B, Tp, Hl, hd), (B, Hl, Tp)
    std::vector<float> attention;              // back in token order (Nl, q_dim)
    std::vector<float> residual, norm2, rstd2; // (Nl, C), (Nl, C), (Nl)

    void allocate(const UlyssesShape& u, int C) {
        size_t Nl = (size_t)u.B * u.Tl, Np = (size_t)u.B * u.Tp;
        norm1.resize(Nl * C); rstd1.resize(Nl);
        q.resize(Np * u.Hl * u.hd); k.resize(Np * u.KVl * u.hd); v.resize(Np * u.KVl * u.hd);
        attention_heads.resize(Np * u.Hl * u.hd); lse.resize(Np * u.Hl);
        attention.resize(Nl * u.H * u.hd);
        residual.resize(Nl * C); norm2.resize(Nl * C); rstd2.resize(Nl);
    }
};

// RoPE tables of the whole padded sequence; this rank's rows start at sp_rank Tl
struct ParallelRope {
    std::vector<float> cos_table, sin_table;
    const float* cos_at(int position, int hd) const { return cos_table.data() + (size_t)position * (hd / 2); }
    const float* sin_at(int position, int hd) const { return sin_table.data() + (size_t)position * (hd / 2); }
};

static inline void parallel_layer_forward(const ReferenceModel& m, int l, const ParallelRanks& p, const UlyssesShape& u,
                                          const ParallelRope& rope, int mlp_chunks, const float* input,
                                          ParallelLayerActivations& a, float* output) {
    const LayerOffsets& o = m.layout.layer;
    const float* w = m.params.data() + m.layout.layer_start(l);
    int C = m.config.d_model, F = m.config.ffn_dim, Nl = u.B * u.Tl, q_dim = u.H * u.hd, kv_dim = u.KV * u.hd;
    float eps = m.config.norm_eps;
    rmsnorm_forward_cpu(a.norm1.data(), a.rstd1.data(), input, w + o.input_norm, Nl, C, eps);
    std::vector<float> q((size_t)Nl * q_dim), k((size_t)Nl * kv_dim), v((size_t)Nl * kv_dim);
    matmul_forward_cpu(q.data(), a.norm1.data(), w + o.q, Nl, C, q_dim);
    matmul_forward_cpu(k.data(), a.norm1.data(), w + o.k, Nl, C, kv_dim);
    matmul_forward_cpu(v.data(), a.norm1.data(), w + o.v, Nl, C, kv_dim);
    int position = p.sp_rank * u.Tl;  // global positions
    rope_cpu(q.data(), rope.cos_at(position, u.hd), rope.sin_at(position, u.hd), u.B, u.Tl, u.H, u.hd, false);
    rope_cpu(k.data(), rope.cos_at(position, u.hd), rope.sin_at(position, u.hd), u.B, u.Tl, u.KV, u.hd, false);
    auto q_first = [&](int j) { return j * u.Hl; };
    auto kv_first = [&](int j) { return u.kv_first(j); };
    ulysses_tokens_to_heads(p.sp_group, u, a.q.data(), q.data(), u.H, u.Hl, q_first);
    ulysses_tokens_to_heads(p.sp_group, u, a.k.data(), k.data(), u.KV, u.KVl, kv_first);
    ulysses_tokens_to_heads(p.sp_group, u, a.v.data(), v.data(), u.KV, u.KVl, kv_first);
    attention_forward_cpu(a.attention_heads.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), u.B, u.Tp, u.Hl,
                          u.KVl, u.hd);
    std::fill(a.attention.begin(), a.attention.end(), 0.f);
    ulysses_heads_to_tokens(p.sp_group, u, a.attention.data(), a.attention_heads.data(), u.H, u.Hl, q_first);
    matmul_forward_cpu(a.residual.data(), a.attention.data(), w + o.o, Nl, q_dim, C);
    for (size_t i = 0; i < (size_t)Nl * C; i++) a.residual[i] += input[i];
    rmsnorm_forward_cpu(a.norm2.data(), a.rstd2.data(), a.residual.data(), w + o.post_attention_norm, Nl, C, eps);

    int length = mini_sequence_length(Nl, mlp_chunks);
    std::vector<float> gate((size_t)length * F), up((size_t)length * F), act((size_t)length * F);
    for (int start = 0; start < Nl; start += length) {
        int n = std::min(length, Nl - start);
        size_t at = (size_t)start * C;
        mlp_chunk_intermediates(gate.data(), up.data(), act.data(), a.norm2.data() + at, w + o.gate, w + o.up, n, C, F);
        matmul_forward_cpu(output + at, act.data(), w + o.down, n, F, C);
    }
    for (size_t i = 0; i < (size_t)Nl * C; i++) output[i] += a.residual[i];
}

// Backward of parallel_layer_forward: the MLP per mini-sequence as in reference_layer_backward, then the
// attention's all-to-alls in reverse (dout to heads, dq dk dv back to tokens).
static inline void parallel_layer_backward(ReferenceModel& m, int l, const ParallelRanks& p, const UlyssesShape& u,
                                           const ParallelRope& rope, int mlp_chunks, const float* input,
                                           const ParallelLayerActivations& a, const float* doutput, float* dinput) {
    const LayerOffsets& o = m.layout.layer;
    const float* w = m.params.data() + m.layout.layer_start(l);
    float* dw = m.grads.data() + m.layout.layer_start(l);
    int C = m.config.d_model, F = m.config.ffn_dim, Nl = u.B * u.Tl, q_dim = u.H * u.hd, kv_dim = u.KV * u.hd;
    size_t NC = (size_t)Nl * C;

    std::vector<float> dresidual(doutput, doutput + NC), dnorm2(NC, 0.f);
    int length = mini_sequence_length(Nl, mlp_chunks);
    size_t chunk_F = (size_t)length * F;
    std::vector<float> gate(chunk_F), up(chunk_F), act(chunk_F), dact(chunk_F), dgate(chunk_F), dup(chunk_F);
    for (int start = 0; start < Nl; start += length) {
        int n = std::min(length, Nl - start);
        size_t at = (size_t)start * C;
        const float* x = a.norm2.data() + at;
        mlp_chunk_intermediates(gate.data(), up.data(), act.data(), x, w + o.gate, w + o.up, n, C, F);
        std::fill(dact.begin(), dact.end(), 0.f);
        matmul_backward_cpu(dact.data(), dw + o.down, doutput + at, act.data(), w + o.down, n, F, C);
        swiglu_backward_cpu(dgate.data(), dup.data(), dact.data(), gate.data(), up.data(), (size_t)n * F);
        matmul_backward_cpu(dnorm2.data() + at, dw + o.gate, dgate.data(), x, w + o.gate, n, C, F);
        matmul_backward_cpu(dnorm2.data() + at, dw + o.up, dup.data(), x, w + o.up, n, C, F);
    }
    rmsnorm_backward_cpu(dresidual.data(), dw + o.post_attention_norm, dnorm2.data(), a.residual.data(),
                         w + o.post_attention_norm, a.rstd2.data(), Nl, C);

    memcpy(dinput, dresidual.data(), NC * sizeof(float));
    std::vector<float> dattention((size_t)Nl * q_dim, 0.f);
    matmul_backward_cpu(dattention.data(), dw + o.o, dresidual.data(), a.attention.data(), w + o.o, Nl, q_dim, C);
    auto q_first = [&](int j) { return j * u.Hl; };
    auto kv_first = [&](int j) { return u.kv_first(j); };
    size_t Np = (size_t)u.B * u.Tp;
    std::vector<float> dattention_heads(Np * u.Hl * u.hd), dqh(Np * u.Hl * u.hd), dkh(Np * u.KVl * u.hd),
        dvh(Np * u.KVl * u.hd);
    ulysses_tokens_to_heads(p.sp_group, u, dattention_heads.data(), dattention.data(), u.H, u.Hl, q_first);
    attention_backward_cpu(dqh.data(), dkh.data(), dvh.data(), dattention_heads.data(), a.q.data(), a.k.data(),
                           a.v.data(), a.attention_heads.data(), a.lse.data(), u.B, u.Tp, u.Hl, u.KVl, u.hd);
    std::vector<float> dq((size_t)Nl * q_dim, 0.f), dk((size_t)Nl * kv_dim, 0.f), dv((size_t)Nl * kv_dim, 0.f);
    ulysses_heads_to_tokens(p.sp_group, u, dq.data(), dqh.data(), u.H, u.Hl, q_first);
    ulysses_heads_to_tokens(p.sp_group, u, dk.data(), dkh.data(), u.KV, u.KVl, kv_first);
    ulysses_heads_to_tokens(p.sp_group, u, dv.data(), dvh.data(), u.KV, u.KVl, kv_first);
    int position = p.sp_rank * u.Tl;
    rope_cpu(dq.data(), rope.cos_at(position, u.hd), rope.sin_at(position, u.hd), u.B, u.Tl, u.H, u.hd, true);
    rope_cpu(dk.data(), rope.cos_at(position, u.hd), rope.sin_at(position, u.hd), u.B, u.Tl, u.KV, u.hd, true);
    std::vector<float> dnorm1(NC, 0.f);
    matmul_backward_cpu(dnorm1.data(), dw + o.q, dq.data(), a.norm1.data(), w + o.q, Nl, C, q_dim);
    matmul_backward_cpu(dnorm1.data(), dw + o.k, dk.data(), a.norm1.data(), w + o.k, Nl, C, kv_dim);
    matmul_backward_cpu(dnorm1.data(), dw + o.v, dv.data(), a.norm1.data(), w + o.v, Nl, C, kv_dim);
    rmsnorm_backward_cpu(dinput, dw + o.input_norm, dnorm1.data(), input, w + o.input_norm, a.rstd1.data(), Nl, C);
}

// ----------------------------------------------------------------------------
// the model on this rank

struct ParallelForward {
    ParallelRope rope;
    std::vector<std::vector<float>> layer_inputs;  // L + 1 of (Nl, C)
    std::vector<ParallelLayerActivations> layers;  // L, or 1 with recompute
    std::vector<float> hidden, hidden_rstd;        // final RMSNorm (Nl, C), (Nl)
};

// Forward of this rank's local batch (Bl, Tl) to the final RMSNorm.
static inline void parallel_forward_to_hidden(const ReferenceModel& m, const ParallelRanks& p, const UlyssesShape& u,
                                              const int* local_inputs, const ReferenceOptions& options, ParallelForward& f) {
    int L = m.config.n_layer, C = m.config.d_model, Nl = u.B * u.Tl;
    f.rope.cos_table.resize((size_t)u.Tp * u.hd / 2);
    f.rope.sin_table.resize((size_t)u.Tp * u.hd / 2);
    rope_tables(m.config, u.Tp, f.rope.cos_table.data(), f.rope.sin_table.data());
    f.layer_inputs.assign(L + 1, std::vector<float>((size_t)Nl * C));
    f.layers.resize(options.recompute ? 1 : L);
    for (ParallelLayerActivations& a : f.layers) a.allocate(u, C);
    embedding_forward_cpu(f.layer_inputs[0].data(), local_inputs, m.params.data() + m.layout.embedding, Nl, C);
    for (int l = 0; l < L; l++)
        parallel_layer_forward(m, l, p, u, f.rope, options.mlp_chunks, f.layer_inputs[l].data(),
                               f.layers[options.recompute ? 0 : l], f.layer_inputs[l + 1].data());
    f.hidden.resize((size_t)Nl * C);
    f.hidden_rstd.resize(Nl);
    rmsnorm_forward_cpu(f.hidden.data(), f.hidden_rstd.data(), f.layer_inputs[L].data(),
                        m.params.data() + m.layout.final_norm, Nl, C, m.config.norm_eps);
}

// logits (Bl Tl, V) of this rank's tokens, written (forward only)
static inline void parallel_forward_logits(const ReferenceModel& m, const ParallelRanks& p, int B, int T,
                                           const int* local_inputs, float* logits) {
    UlyssesShape u(m.config, p.S, B / p.D, T);
    ReferenceOptions options;
    options.recompute = true;
    ParallelForward f;
    parallel_forward_to_hidden(m, p, u, local_inputs, options, f);
    matmul_forward_cpu(logits, f.hidden.data(), m.params.data() + m.layout.lm_head, u.B * u.Tl, m.config.d_model,
                       m.config.vocab_size);
}

// Forward and backward of this rank's part of the global (B, T) batch, given as its local (B/D, Tl)
// inputs and targets (parallel_local_batch). Writes this rank's partial gradients into m.grads (sum them
// over the world with parallel_reduce_gradients); returns the loss of the whole
// global batch, the same on every rank.
static inline float parallel_forward_backward(ReferenceModel& m, const ParallelRanks& p, const int* local_inputs,
                                              const int* local_targets, int B, int T, const ReferenceOptions& options) {
    UlyssesShape u(m.config, p.S, B / p.D, T);
    int L = m.config.n_layer, C = m.config.d_model, V = m.config.vocab_size, Nl = u.B * u.Tl;
    std::fill(m.grads.begin(), m.grads.end(), 0.f);
    ParallelForward f;
    parallel_forward_to_hidden(m, p, u, local_inputs, options, f);

    int counted_here = 0;
    for (int n = 0; n < Nl; n++) counted_here += local_targets[n] >= 0;
    int counted = (int)comm_sum_scalar(p.world, counted_here);  // the targets of every rank
    float grad_scale = counted > 0 ? 1.f / counted : 0.f;
    const float* w_head = m.params.data() + m.layout.lm_head;
    float* dw_head = m.grads.data() + m.layout.lm_head;
    std::vector<float> dhidden((size_t)Nl * C, 0.f);
    int length = mini_sequence_length(Nl, options.lmhead_chunks);
    std::vector<float> logits((size_t)length * V);
    double loss_sum = 0.0;
    for (int start = 0; start < Nl; start += length) {
        int n = std::min(length, Nl - start);
        const float* h = f.hidden.data() + (size_t)start * C;
        matmul_forward_cpu(logits.data(), h, w_head, n, C, V);
        loss_sum += crossentropy_forward_backward_cpu(logits.data(), local_targets + start, n, V, grad_scale);
        matmul_backward_cpu(dhidden.data() + (size_t)start * C, dw_head, logits.data(), h, w_head, n, C, V);
    }

    std::vector<float> dresidual((size_t)Nl * C, 0.f), dlayer_input((size_t)Nl * C);
    rmsnorm_backward_cpu(dresidual.data(), m.grads.data() + m.layout.final_norm, dhidden.data(), f.layer_inputs[L].data(),
                         m.params.data() + m.layout.final_norm, f.hidden_rstd.data(), Nl, C);
    for (int l = L - 1; l >= 0; l--) {
        ParallelLayerActivations& a = f.layers[options.recompute ? 0 : l];
        if (options.recompute) {
            std::vector<float> output((size_t)Nl * C);
            parallel_layer_forward(m, l, p, u, f.rope, options.mlp_chunks, f.layer_inputs[l].data(), a, output.data());
        }
        parallel_layer_backward(m, l, p, u, f.rope, options.mlp_chunks, f.layer_inputs[l].data(), a, dresidual.data(),
                                dlayer_input.data());
        dresidual.swap(dlayer_input);
    }
    embedding_backward_cpu(m.grads.data() + m.layout.embedding, dresidual.data(), local_inputs, Nl, C);
    double loss = comm_sum_scalar(p.world, loss_sum);
    return counted > 0 ? (float)(loss / counted) : 0.f;
}

// ----------------------------------------------------------------------------
// ZeRO-1

// This rank's shard [begin, end) of the parameter buffer
static inline size_t shard_begin(const ParallelRanks& p, size_t total) { return std::min(total, p.world.rank * p.shard); }
static inline size_t shard_end(const ParallelRanks& p, size_t total) { return std::min(total, (p.world.rank + 1) * p.shard); }

// grad_shard (p.shard) = the sum over all ranks (in rank order) of their m.grads on this rank's shard
static inline void parallel_reduce_gradients(const ReferenceModel& m, const ParallelRanks& p, std::vector<float>& grad_shard) {
    std::vector<float> padded(p.shard * p.world.size, 0.f);
    std::copy(m.grads.begin(), m.grads.end(), padded.begin());
    grad_shard.assign(p.shard, 0.f);
    comm_reduce_scatter(p.world, padded.data(), grad_shard.data(), p.shard, COMM_F32);
}

// clip_grad_norm_ over the shards: the global norm from the all-reduced sum of squares; returns it
static inline float parallel_clip_gradients(const ParallelRanks& p, std::vector<float>& grad_shard, float max_norm) {
    double norm = sqrt(comm_sum_scalar(p.world, sum_of_squares_cpu(grad_shard.data(), grad_shard.size())));
    double scale = max_norm / (norm + 1e-6);
    if (scale < 1.0)
        for (float& g : grad_shard) g *= (float)scale;
    return (float)norm;
}

// AdamW on this rank's shard (weight decay on the 2-D matrices, as reference_adamw_step), then the
// updated weights all-gathered into every rank's m.params
static inline void parallel_adamw_step(ReferenceModel& m, ParallelRanks& p, const std::vector<float>& grad_shard, float lr,
                                       float beta1, float beta2, float eps, float weight_decay) {
    p.step++;
    size_t total = m.layout.total, begin = shard_begin(p, total), end = shard_end(p, total);
    for (const ParameterTensor& t : parameter_tensors(m.config)) {
        size_t from = std::max(begin, t.offset), to = std::min(end, t.offset + t.rows * t.cols);
        if (from >= to) continue;
        size_t at = from - begin;  // into the shard
        adamw_cpu(m.params.data() + from, grad_shard.data() + at, p.adam_m.data() + at, p.adam_v.data() + at, to - from,
                  p.step, lr, beta1, beta2, eps, t.rows > 1 ? weight_decay : 0.f);
    }
    std::vector<float> mine(p.shard, 0.f), all(p.shard * p.world.size);
    std::copy(m.params.begin() + begin, m.params.begin() + end, mine.begin());
    comm_all_gather(p.world, mine.data(), all.data(), p.shard, COMM_F32);
    std::copy(all.begin(), all.begin() + total, m.params.begin());
}
