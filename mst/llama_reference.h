// llama_reference.h: the CPU reference of Llama 3 training, fp32, plain C++ with OpenMP.
// It is the executable specification of what the GPU must compute: every kernel in mst_kernels.cuh and
// every dev/cuda benchmark validates against the layer functions here, and the GPU trainer against the
// model functions further down.
//
// Shapes: N = B*T tokens; activations are row-major (N, width); linear weights are (out, in) as in
// Hugging Face, applied as y = x W^T. Attention tensors are (B, T, heads, head_dim), the log-sum-exp
// of the softmax (B, heads, T). Backward functions ACCUMULATE (+=) into parameter gradients and into
// input gradients unless the comment says "writes".
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "mst/llama_config.h"
#include "mst/training.h"

// ----------------------------------------------------------------------------
// layer functions

// out[N, OC] = inp[N, IC] W[OC, IC]^T   (writes)
static inline void matmul_forward_cpu(float* out, const float* inp, const float* weight, int N, int IC, int OC) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            const float* x = inp + (size_t)n * IC;
            const float* w = weight + (size_t)o * IC;
            float sum = 0.f;
            #pragma omp simd reduction(+ : sum)
            for (int i = 0; i < IC; i++) sum += x[i] * w[i];
            out[(size_t)n * OC + o] = sum;
        }
    }
}

// dinp[N, IC] += dout[N, OC] W;  dweight[OC, IC] += dout^T inp, summed over n in ascending order, so
// splitting N into mini-sequences and calling this once per mini-sequence gives the same bits.
// Either output may be null.
static inline void matmul_backward_cpu(float* dinp, float* dweight, const float* dout, const float* inp,
                                const float* weight, int N, int IC, int OC) {
    if (dinp) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float* dx = dinp + (size_t)n * IC;
            for (int o = 0; o < OC; o++) {
                float d = dout[(size_t)n * OC + o];
                const float* w = weight + (size_t)o * IC;
                #pragma omp simd
                for (int i = 0; i < IC; i++) dx[i] += d * w[i];
            }
        }
    }
    if (dweight) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < OC; o++) {
            float* dw = dweight + (size_t)o * IC;
            for (int n = 0; n < N; n++) {
                float d = dout[(size_t)n * OC + o];
                const float* x = inp + (size_t)n * IC;
                #pragma omp simd
                for (int i = 0; i < IC; i++) dw[i] += d * x[i];
            }
        }
    }
}

// out[N, C] = wte[tokens[n], :]   (writes)
static inline void embedding_forward_cpu(float* out, const int* tokens, const float* wte, int N, int C) {
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, C * sizeof(float));
}

// dwte[tokens[n], :] += dout[n, :], in ascending n
static inline void embedding_backward_cpu(float* dwte, const float* dout, const int* tokens, int N, int C) {
    for (int n = 0; n < N; n++) {
        float* dw = dwte + (size_t)tokens[n] * C;
        const float* d = dout + (size_t)n * C;
        for (int i = 0; i < C; i++) dw[i] += d[i];
    }
}

// out = weight * x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps);  writes out and rstd (N)
static inline void rmsnorm_forward_cpu(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        double sum_squares = 0.0;
        for (int i = 0; i < C; i++) sum_squares += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(sum_squares / C + eps));
        for (int i = 0; i < C; i++) out[(size_t)n * C + i] = weight[i] * (x[i] * r);
        rstd[n] = r;
    }
}

// dx_i += r w_i dy_i - r^3 x_i / C * sum_j (w_j dy_j x_j);  dweight_i += sum_n dy_i x_i r
static inline void rmsnorm_backward_cpu(float* dinp, float* dweight, const float* dout, const float* inp,
                                 const float* weight, const float* rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        const float* dy = dout + (size_t)n * C;
        float r = rstd[n];
        double dot = 0.0;
        for (int i = 0; i < C; i++) dot += (double)weight[i] * dy[i] * x[i];
        float coefficient = (float)(dot / C) * r * r * r;
        for (int i = 0; i < C; i++) dinp[(size_t)n * C + i] += r * weight[i] * dy[i] - coefficient * x[i];
    }
    for (int n = 0; n < N; n++)
        for (int i = 0; i < C; i++) dweight[i] += dout[(size_t)n * C + i] * inp[(size_t)n * C + i] * rstd[n];
}

// Rotate-half RoPE over (B, T, heads, head_dim), in place. For each pair (x1, x2) = (x[i], x[i + hd/2]):
// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin; cos/sin tables (T, hd/2) from rope_tables().
// The backward is the rotation by the opposite angle: call with inverse = true on the gradient.
static inline void rope_cpu(float* x, const float* cos_table, const float* sin_table, int B, int T, int heads,
                     int head_dim, bool inverse) {
    int half = head_dim / 2;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < heads; h++) {
                float* v = x + (((size_t)b * T + t) * heads + h) * head_dim;
                for (int i = 0; i < half; i++) {
                    float c = cos_table[(size_t)t * half + i];
                    float s = inverse ? -sin_table[(size_t)t * half + i] : sin_table[(size_t)t * half + i];
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * c - x2 * s;
                    v[i + half] = x2 * c + x1 * s;
                }
            }
        }
    }
}

// One query row over `length` keys and values (row s at keys + s * stride): softmax(q.k / sqrt(hd)) v
// into out (hd), returning the log-sum-exp of the scaled scores. scores: room for `length` floats.
static inline float attention_row_cpu(float* out, const float* q, const float* keys, const float* values,
                                      size_t stride, int length, int hd, float* scores) {
    float scale = 1.f / sqrtf((float)hd);
    float max_score = -INFINITY;
    for (int s = 0; s < length; s++) {
        const float* ks = keys + s * stride;
        float dot = 0.f;
        for (int i = 0; i < hd; i++) dot += q[i] * ks[i];
        scores[s] = dot * scale;
        max_score = fmaxf(max_score, scores[s]);
    }
    double sum = 0.0;
    for (int s = 0; s < length; s++) { scores[s] = expf(scores[s] - max_score); sum += scores[s]; }
    for (int i = 0; i < hd; i++) out[i] = 0.f;
    for (int s = 0; s < length; s++) {
        float p = (float)(scores[s] / sum);
        const float* vs = values + s * stride;
        for (int i = 0; i < hd; i++) out[i] += p * vs[i];
    }
    return max_score + (float)log(sum);
}

// Key range of query t in batch row b: [first, t]. doc_start (B, T) = the position where token t's document
// begins (document masking); null: the whole causal prefix.
static inline int attention_first_key(const int* doc_start, int b, int T, int t) {
    return doc_start ? doc_start[(size_t)b * T + t] : 0;
}

// Document starts for document masking: doc_start[b * T + t] = the position where token t's document
// begins; a document starts at every bos token (<|begin_of_text|> = 128000 in Llama 3) and at position 0.
static const int LLAMA3_BOS_TOKEN = 128000;
static inline void document_starts_cpu(int* doc_start, const int* tokens, int B, int T, int bos = LLAMA3_BOS_TOKEN) {
    for (int b = 0; b < B; b++) {
        int start = 0;
        for (int t = 0; t < T; t++) {
            if (tokens[(size_t)b * T + t] == bos) start = t;
            doc_start[(size_t)b * T + t] = start;
        }
    }
}

// Causal grouped-query attention. q, out (B, T, H, hd); k, v (B, T, KV, hd); query head h reads kv head
// h / (H / KV). Writes out and lse (B, H, T) = log sum_s exp(score_s), score = q.k / sqrt(hd), for the query
// rows [q0, q0 + n) of every sequence (n < 0: to T; causal, so they read keys [0, q0 + n) only).
// doc_start: see attention_first_key.
static inline void attention_forward_cpu(float* out, float* lse, const float* q, const float* k, const float* v,
                                         int B, int T, int H, int KV, int hd, const int* doc_start = nullptr,
                                         int q0 = 0, int n = -1) {
    int group = H / KV;
    int q1 = n < 0 ? T : std::min(T, q0 + n);
    #pragma omp parallel for collapse(3) schedule(dynamic, 4)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            for (int t = q0; t < q1; t++) {
                int first = attention_first_key(doc_start, b, T, t);
                std::vector<float> scores(t + 1 - first);
                size_t row = ((size_t)b * T + t) * H + h;
                size_t first_kv = (((size_t)b * T + first) * KV + h / group) * hd;
                lse[((size_t)b * H + h) * T + t] = attention_row_cpu(out + row * hd, q + row * hd, k + first_kv,
                                                                     v + first_kv, (size_t)KV * hd, t + 1 - first, hd,
                                                                     scores.data());
            }
        }
    }
}

// Backward of attention_forward_cpu, recomputing probabilities from lse:
// P = exp(S - lse); dP = dout v^T; dS = P (dP - sum_i dout_i out_i); dq = dS k scale; dk = dS^T q scale;
// dv = P^T dout. Writes dq for the query rows [q0, q0 + n) (n < 0: to T); dk, dv are zeroed when q0 == 0
// and accumulated over calls, so query blocks in order give the full dk, dv. Parallel over (b, kv head) so
// each thread owns its dk, dv rows.
static inline void attention_backward_cpu(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                   const float* k, const float* v, const float* out, const float* lse,
                                   int B, int T, int H, int KV, int hd, const int* doc_start = nullptr,
                                   int q0 = 0, int n = -1) {
    float scale = 1.f / sqrtf((float)hd);
    int group = H / KV;
    int q1 = n < 0 ? T : std::min(T, q0 + n);
    for (int b = 0; b < B; b++)  // dq rows of this block: (B, [q0, q1), H, hd)
        memset(dq + ((size_t)b * T + q0) * H * hd, 0, (size_t)(q1 - q0) * H * hd * sizeof(float));
    if (q0 == 0) {
        memset(dk, 0, (size_t)B * T * KV * hd * sizeof(float));
        memset(dv, 0, (size_t)B * T * KV * hd * sizeof(float));
    }
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < KV; kvh++) {
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                for (int t = q0; t < q1; t++) {
                    size_t row = ((size_t)b * T + t) * H + h;
                    const float* qt = q + row * hd;
                    const float* dot_ = dout + row * hd;
                    float delta = 0.f;  // sum_i dout_i out_i
                    for (int i = 0; i < hd; i++) delta += dot_[i] * out[row * hd + i];
                    float row_lse = lse[((size_t)b * H + h) * T + t];
                    for (int s = attention_first_key(doc_start, b, T, t); s <= t; s++) {
                        size_t kv_row = ((size_t)b * T + s) * KV + kvh;
                        const float* ks = k + kv_row * hd;
                        const float* vs = v + kv_row * hd;
                        float score = 0.f, dp = 0.f;
                        for (int i = 0; i < hd; i++) { score += qt[i] * ks[i]; dp += dot_[i] * vs[i]; }
                        float p = expf(score * scale - row_lse);
                        float ds = p * (dp - delta) * scale;
                        for (int i = 0; i < hd; i++) {
                            dq[row * hd + i] += ds * ks[i];
                            dk[kv_row * hd + i] += ds * qt[i];
                            dv[kv_row * hd + i] += p * dot_[i];
                        }
                    }
                }
            }
        }
    }
}

static inline float silu(float x) { return x / (1.f + expf(-x)); }

// out[N, F] = silu(gate) * up   (writes)
static inline void swiglu_forward_cpu(float* out, const float* gate, const float* up, size_t count) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) out[i] = silu(gate[i]) * up[i];
}

// dgate = dout * up * silu'(gate), dup = dout * silu(gate)   (writes);
// silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g)))
static inline void swiglu_backward_cpu(float* dgate, float* dup, const float* dout, const float* gate, const float* up, size_t count) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        float sigmoid = 1.f / (1.f + expf(-gate[i]));
        dgate[i] = dout[i] * up[i] * sigmoid * (1.f + gate[i] * (1.f - sigmoid));
        dup[i] = dout[i] * gate[i] * sigmoid;
    }
}

// Cross-entropy over one mini-sequence of logits (N, V), in place: returns the summed loss of the
// counted targets (target -1 is ignored) and overwrites the logits with their gradient,
// (softmax - one_hot) * grad_scale for counted rows and 0 for ignored rows.
// grad_scale = 1 / (counted targets in the whole batch), so the loss is a mean over counted targets.
static inline double crossentropy_forward_backward_cpu(float* logits, const int* targets, int N, int V, float grad_scale) {
    double loss_sum = 0.0;
    #pragma omp parallel for reduction(+ : loss_sum) schedule(static)
    for (int n = 0; n < N; n++) {
        float* row = logits + (size_t)n * V;
        if (targets[n] < 0) { memset(row, 0, V * sizeof(float)); continue; }
        float max_logit = -INFINITY;
        for (int i = 0; i < V; i++) max_logit = fmaxf(max_logit, row[i]);
        double sum = 0.0;
        for (int i = 0; i < V; i++) sum += exp((double)row[i] - max_logit);
        double log_sum = log(sum) + max_logit;
        loss_sum += log_sum - row[targets[n]];
        for (int i = 0; i < V; i++) row[i] = (float)exp((double)row[i] - log_sum) * grad_scale;
        row[targets[n]] -= grad_scale;
    }
    return loss_sum;
}

// AdamW (PyTorch's, decoupled weight decay, bias correction), step t counted from 1:
// p -= lr wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
static inline void adamw_cpu(float* param, const float* grad, float* m, float* v, size_t count, int t, float lr,
                      float beta1, float beta2, float eps, float weight_decay) {
    float bias_correction1 = 1.f - powf(beta1, (float)t);
    float bias_correction2 = 1.f - powf(beta2, (float)t);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        param[i] -= lr * weight_decay * param[i];
        m[i] = beta1 * m[i] + (1.f - beta1) * grad[i];
        v[i] = beta2 * v[i] + (1.f - beta2) * grad[i] * grad[i];
        param[i] -= lr * (m[i] / bias_correction1) / (sqrtf(v[i] / bias_correction2) + eps);
    }
}

// sum of squares of a gradient, in double; the global norm is sqrt of the sum over all tensors
static inline double sum_of_squares_cpu(const float* x, size_t count) {
    double sum = 0.0;
    #pragma omp parallel for reduction(+ : sum) schedule(static)
    for (size_t i = 0; i < count; i++) sum += (double)x[i] * x[i];
    return sum;
}

// ----------------------------------------------------------------------------
// model: Llama 3 training step, with Mini-Sequence Transformer (MST) chunking and layer recomputation
//
//   ReferenceModel model = reference_model(config);             // zeroed params, grads, AdamW m and v
//   float loss = reference_forward_backward(model, inputs, targets, B, T, options);  // writes grads
//   float norm = reference_clip_gradients(model, 1.0f);         // global norm before clipping
//   reference_adamw_step(model, lr, beta1, beta2, eps, weight_decay);
//   reference_forward_logits(model, inputs, B, T, logits);      // (B*T, V), for tests and generation
//
// inputs and targets are (B, T) token ids; a target of -1 is ignored, and the loss is the mean over the
// counted targets. The MST options change the memory held, never the result: the MLP and the LM head +
// loss run over mini-sequences of the N = B*T flattened tokens (length ceil(N / chunks), the last one
// shorter), and the weight gradients accumulate across them in ascending token order, so any chunk count
// gives the same bits as one chunk. With recompute, forward keeps only each layer's input and backward
// recomputes the layer before back-propagating it; with checkpoint_every k > 1 as well, forward keeps
// only the inputs of layers 0, k, 2k, ... (and the last layer's output), and backward first recomputes
// a segment's other inputs from its first (layers s .. s+k-2, whole), then back-propagates it layer by
// layer as before. Forward is deterministic, so the recomputed inputs are the same bits.

struct ReferenceOptions {
    int mlp_chunks = 1;     // mini-sequences of the MLP (gate, up, SwiGLU, down); 0: the automatic rule
    int lmhead_chunks = 1;  // mini-sequences of the LM head + cross-entropy; only one chunk of logits exists; 0: rule
    bool recompute = false; // keep only layer inputs; recompute each layer in backward
    int checkpoint_every = 1;  // with recompute: keep every k-th layer's input; recompute the segment's others
    bool doc_mask = false;     // document masking: tokens attend only within their document (from bos on)
    int bos = LLAMA3_BOS_TOKEN;// the token that starts a document
};

struct ReferenceModel {
    ModelConfig config;
    ParameterLayout layout;
    std::vector<float> params, grads, adam_m, adam_v;  // all in the layout of parameter_layout()
    int step = 0;                                      // AdamW steps taken
};

static inline ReferenceModel reference_model(const ModelConfig& config) {
    ReferenceModel m;
    m.config = config;
    m.layout = parameter_layout(config);
    m.params.assign(m.layout.total, 0.f);
    m.grads.assign(m.layout.total, 0.f);
    m.adam_m.assign(m.layout.total, 0.f);
    m.adam_v.assign(m.layout.total, 0.f);
    return m;
}

// Sizes of one step, derived from the config and (B, T).
struct ReferenceShape {
    int B, T, N, C, V, F, H, KV, hd, q_dim, kv_dim;
    std::vector<int> doc_start;  // (B, T) with options.doc_mask, else empty (no mask)
    ReferenceShape(const ModelConfig& c, int B_, int T_, const int* inputs, const ReferenceOptions& options)
        : B(B_), T(T_), N(B_ * T_), C(c.d_model), V(c.vocab_size), F(c.ffn_dim), H(c.n_head),
          KV(c.n_kv_head), hd(c.head_dim()), q_dim(c.q_dim()), kv_dim(c.kv_dim()) {
        if (!options.doc_mask) return;
        doc_start.resize((size_t)N);
        document_starts_cpu(doc_start.data(), inputs, B, T, options.bos);
    }
    const int* doc_mask() const { return doc_start.empty() ? nullptr : doc_start.data(); }
};

// What one layer's forward keeps for its backward (the MLP intermediates are always recomputed per
// mini-sequence, so only the MLP input is kept).
struct LayerActivations {
    std::vector<float> norm1, rstd1;  // input RMSNorm output (N, C) and 1/rms (N)
    std::vector<float> q, k, v;       // after RoPE for q and k: (N, q_dim), (N, kv_dim), (N, kv_dim)
    std::vector<float> attention, lse;// attention output (N, q_dim), log-sum-exp (B, H, T)
    std::vector<float> residual;      // input + o projection (N, C)
    std::vector<float> norm2, rstd2;  // post-attention RMSNorm output = MLP input (N, C), 1/rms (N)

    void allocate(const ReferenceShape& s) {
        norm1.resize((size_t)s.N * s.C); rstd1.resize(s.N);
        q.resize((size_t)s.N * s.q_dim); k.resize((size_t)s.N * s.kv_dim); v.resize((size_t)s.N * s.kv_dim);
        attention.resize((size_t)s.N * s.q_dim); lse.resize((size_t)s.B * s.H * s.T);
        residual.resize((size_t)s.N * s.C);
        norm2.resize((size_t)s.N * s.C); rstd2.resize(s.N);
    }
};

// The MLP intermediates of one mini-sequence of n tokens x (n, C): gate = x Wg^T, up = x Wu^T,
// act = silu(gate) up, each (n, F), written. The MLP output is act Wd^T.
static inline void mlp_chunk_intermediates(float* gate, float* up, float* act, const float* x,
                                           const float* w_gate, const float* w_up, int n, int C, int F) {
    matmul_forward_cpu(gate, x, w_gate, n, C, F);
    matmul_forward_cpu(up, x, w_up, n, C, F);
    swiglu_forward_cpu(act, gate, up, (size_t)n * F);
}

// One decoder layer: output = r + MLP(RMSNorm(r)), r = input + o(attention(RoPE(q, k), v)).
static inline void reference_layer_forward(const ReferenceModel& m, int l, const ReferenceShape& s,
                                           const float* cos_table, const float* sin_table, int mlp_chunks,
                                           const float* input, LayerActivations& a, float* output) {
    const LayerOffsets& o = m.layout.layer;
    const float* w = m.params.data() + m.layout.layer_start(l);
    float eps = m.config.norm_eps;
    rmsnorm_forward_cpu(a.norm1.data(), a.rstd1.data(), input, w + o.input_norm, s.N, s.C, eps);
    matmul_forward_cpu(a.q.data(), a.norm1.data(), w + o.q, s.N, s.C, s.q_dim);
    matmul_forward_cpu(a.k.data(), a.norm1.data(), w + o.k, s.N, s.C, s.kv_dim);
    matmul_forward_cpu(a.v.data(), a.norm1.data(), w + o.v, s.N, s.C, s.kv_dim);
    rope_cpu(a.q.data(), cos_table, sin_table, s.B, s.T, s.H, s.hd, false);
    rope_cpu(a.k.data(), cos_table, sin_table, s.B, s.T, s.KV, s.hd, false);
    attention_forward_cpu(a.attention.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), s.B, s.T, s.H, s.KV, s.hd,
                          s.doc_mask());
    matmul_forward_cpu(a.residual.data(), a.attention.data(), w + o.o, s.N, s.q_dim, s.C);
    for (size_t i = 0; i < (size_t)s.N * s.C; i++) a.residual[i] += input[i];
    rmsnorm_forward_cpu(a.norm2.data(), a.rstd2.data(), a.residual.data(), w + o.post_attention_norm, s.N, s.C, eps);

    int length = mini_sequence_length(s.N, mlp_chunks);
    std::vector<float> gate((size_t)length * s.F), up((size_t)length * s.F), act((size_t)length * s.F);
    for (int start = 0; start < s.N; start += length) {
        int n = std::min(length, s.N - start);
        size_t at = (size_t)start * s.C;
        mlp_chunk_intermediates(gate.data(), up.data(), act.data(), a.norm2.data() + at, w + o.gate, w + o.up, n, s.C, s.F);
        matmul_forward_cpu(output + at, act.data(), w + o.down, n, s.F, s.C);
    }
    for (size_t i = 0; i < (size_t)s.N * s.C; i++) output[i] += a.residual[i];
}

// Backward of reference_layer_forward: doutput (N, C) is the gradient of the layer's output; writes
// dinput (N, C) and accumulates the layer's parameter gradients. The MLP runs mini-sequence by
// mini-sequence: recompute gate, up, act from the chunk's MLP input, then back-propagate the chunk.
static inline void reference_layer_backward(ReferenceModel& m, int l, const ReferenceShape& s,
                                            const float* cos_table, const float* sin_table, int mlp_chunks,
                                            const float* input, const LayerActivations& a,
                                            const float* doutput, float* dinput) {
    const LayerOffsets& o = m.layout.layer;
    const float* w = m.params.data() + m.layout.layer_start(l);
    float* dw = m.grads.data() + m.layout.layer_start(l);
    size_t NC = (size_t)s.N * s.C;

    // MLP: the residual passes doutput through to dresidual, the MLP adds to it via its RMSNorm
    std::vector<float> dresidual(doutput, doutput + NC), dnorm2(NC, 0.f);
    int length = mini_sequence_length(s.N, mlp_chunks);
    size_t chunk_F = (size_t)length * s.F;
    std::vector<float> gate(chunk_F), up(chunk_F), act(chunk_F), dact(chunk_F), dgate(chunk_F), dup(chunk_F);
    for (int start = 0; start < s.N; start += length) {
        int n = std::min(length, s.N - start);
        size_t at = (size_t)start * s.C;
        const float* x = a.norm2.data() + at;
        mlp_chunk_intermediates(gate.data(), up.data(), act.data(), x, w + o.gate, w + o.up, n, s.C, s.F);
        std::fill(dact.begin(), dact.end(), 0.f);
        matmul_backward_cpu(dact.data(), dw + o.down, doutput + at, act.data(), w + o.down, n, s.F, s.C);
        swiglu_backward_cpu(dgate.data(), dup.data(), dact.data(), gate.data(), up.data(), (size_t)n * s.F);
        matmul_backward_cpu(dnorm2.data() + at, dw + o.gate, dgate.data(), x, w + o.gate, n, s.C, s.F);
        matmul_backward_cpu(dnorm2.data() + at, dw + o.up, dup.data(), x, w + o.up, n, s.C, s.F);
    }
    rmsnorm_backward_cpu(dresidual.data(), dw + o.post_attention_norm, dnorm2.data(), a.residual.data(),
                         w + o.post_attention_norm, a.rstd2.data(), s.N, s.C);

    // attention: the residual passes dresidual through to dinput, attention adds to it via its RMSNorm
    memcpy(dinput, dresidual.data(), NC * sizeof(float));
    std::vector<float> dattention((size_t)s.N * s.q_dim, 0.f);
    matmul_backward_cpu(dattention.data(), dw + o.o, dresidual.data(), a.attention.data(), w + o.o, s.N, s.q_dim, s.C);
    std::vector<float> dq((size_t)s.N * s.q_dim), dk((size_t)s.N * s.kv_dim), dv((size_t)s.N * s.kv_dim);
    attention_backward_cpu(dq.data(), dk.data(), dv.data(), dattention.data(), a.q.data(), a.k.data(), a.v.data(),
                           a.attention.data(), a.lse.data(), s.B, s.T, s.H, s.KV, s.hd, s.doc_mask());
    rope_cpu(dq.data(), cos_table, sin_table, s.B, s.T, s.H, s.hd, true);
    rope_cpu(dk.data(), cos_table, sin_table, s.B, s.T, s.KV, s.hd, true);
    std::vector<float> dnorm1(NC, 0.f);
    matmul_backward_cpu(dnorm1.data(), dw + o.q, dq.data(), a.norm1.data(), w + o.q, s.N, s.C, s.q_dim);
    matmul_backward_cpu(dnorm1.data(), dw + o.k, dk.data(), a.norm1.data(), w + o.k, s.N, s.C, s.kv_dim);
    matmul_backward_cpu(dnorm1.data(), dw + o.v, dv.data(), a.norm1.data(), w + o.v, s.N, s.C, s.kv_dim);
    rmsnorm_backward_cpu(dinput, dw + o.input_norm, dnorm1.data(), input, w + o.input_norm, a.rstd1.data(), s.N, s.C);
}

// Forward through the embedding and all layers to the final RMSNorm. Keeps the checkpointed layers'
// inputs (layer_inputs[l]: every l, or every k-th with checkpoint_every k, the others empty; and
// layer_inputs[L] = the last residual) and, without recompute, every layer's activations; with
// recompute, layers[0] is scratch.
struct ReferenceForward {
    std::vector<float> cos_table, sin_table;      // (T, head_dim/2)
    std::vector<std::vector<float>> layer_inputs; // L + 1 of (N, C), or empty where not a checkpoint
    std::vector<LayerActivations> layers;         // L, or 1 with recompute
    std::vector<float> hidden, hidden_rstd;       // final RMSNorm output (N, C) and 1/rms (N)
};

// the layers whose inputs forward keeps: all, or with recompute every checkpoint_every-th (and the output)
static inline int checkpoint_interval(const ReferenceOptions& options) {
    return options.recompute ? std::max(1, options.checkpoint_every) : 1;
}

// Layers [first, last) from layer_inputs[first], writing layer_inputs[first + 1 .. last]; with
// free_unkept (forward), the inputs that are not checkpoints are freed once the next layer has its own.
static inline void reference_layers_forward(const ReferenceModel& m, const ReferenceShape& s, const ReferenceOptions& options,
                                            ReferenceForward& f, int first, int last, bool free_unkept) {
    int k = checkpoint_interval(options);
    int mlp_chunks = mlp_mini_sequences(m.config, s.N, options.mlp_chunks);
    for (int l = first; l < last; l++) {
        LayerActivations& a = f.layers[options.recompute ? 0 : l];
        f.layer_inputs[l + 1].resize((size_t)s.N * s.C);
        reference_layer_forward(m, l, s, f.cos_table.data(), f.sin_table.data(), mlp_chunks,
                                f.layer_inputs[l].data(), a, f.layer_inputs[l + 1].data());
        if (free_unkept && l % k != 0) std::vector<float>().swap(f.layer_inputs[l]);  // not a checkpoint
    }
}

static inline void reference_forward_to_hidden(const ReferenceModel& m, const int* inputs, const ReferenceShape& s,
                                               const ReferenceOptions& options, ReferenceForward& f) {
    int L = m.config.n_layer;
    f.cos_table.resize((size_t)s.T * s.hd / 2);
    f.sin_table.resize((size_t)s.T * s.hd / 2);
    rope_tables(m.config, s.T, f.cos_table.data(), f.sin_table.data());
    f.layer_inputs.assign(L + 1, std::vector<float>());
    f.layer_inputs[0].resize((size_t)s.N * s.C);
    f.layers.resize(options.recompute ? 1 : L);
    for (LayerActivations& a : f.layers) a.allocate(s);
    embedding_forward_cpu(f.layer_inputs[0].data(), inputs, m.params.data() + m.layout.embedding, s.N, s.C);
    reference_layers_forward(m, s, options, f, 0, L, true);
    f.hidden.resize((size_t)s.N * s.C);
    f.hidden_rstd.resize(s.N);
    rmsnorm_forward_cpu(f.hidden.data(), f.hidden_rstd.data(), f.layer_inputs[L].data(),
                        m.params.data() + m.layout.final_norm, s.N, s.C, m.config.norm_eps);
}

// logits (B*T, V) of the whole batch, written; forward only (keeps only layer inputs).
static inline void reference_forward_logits(const ReferenceModel& m, const int* inputs, int B, int T, float* logits,
                                            bool doc_mask = false, int bos = LLAMA3_BOS_TOKEN) {
    ReferenceOptions options;
    options.recompute = true;
    options.doc_mask = doc_mask;
    options.bos = bos;
    ReferenceShape s(m.config, B, T, inputs, options);
    ReferenceForward f;
    reference_forward_to_hidden(m, inputs, s, options, f);
    matmul_forward_cpu(logits, f.hidden.data(), m.params.data() + m.layout.lm_head, s.N, s.C, s.V);
}

// Zeroes the gradients, runs forward and backward, fills model.grads; returns the mean loss over the
// counted targets (0 when every target is ignored).
static inline float reference_forward_backward(ReferenceModel& m, const int* inputs, const int* targets, int B, int T,
                                               const ReferenceOptions& options) {
    ReferenceShape s(m.config, B, T, inputs, options);
    int L = m.config.n_layer, k = checkpoint_interval(options);
    int mlp_chunks = mlp_mini_sequences(m.config, s.N, options.mlp_chunks);
    std::fill(m.grads.begin(), m.grads.end(), 0.f);
    ReferenceForward f;
    reference_forward_to_hidden(m, inputs, s, options, f);

    // LM head + cross-entropy, one mini-sequence at a time: logits, loss, dlogits in place, then
    // dhidden = dlogits W and dW += dlogits^T hidden, before the next chunk's logits overwrite them.
    int counted = 0;
    for (int n = 0; n < s.N; n++) counted += targets[n] >= 0;
    float grad_scale = counted > 0 ? 1.f / counted : 0.f;
    const float* w_head = m.params.data() + m.layout.lm_head;
    float* dw_head = m.grads.data() + m.layout.lm_head;  // the embedding's gradient when tied
    std::vector<float> dhidden((size_t)s.N * s.C, 0.f);
    int length = mini_sequence_length(s.N, lmhead_mini_sequences(m.config, s.N, options.lmhead_chunks));
    std::vector<float> logits((size_t)length * s.V);
    double loss_sum = 0.0;
    for (int start = 0; start < s.N; start += length) {
        int n = std::min(length, s.N - start);
        const float* h = f.hidden.data() + (size_t)start * s.C;
        matmul_forward_cpu(logits.data(), h, w_head, n, s.C, s.V);
        loss_sum += crossentropy_forward_backward_cpu(logits.data(), targets + start, n, s.V, grad_scale);
        matmul_backward_cpu(dhidden.data() + (size_t)start * s.C, dw_head, logits.data(), h, w_head, n, s.C, s.V);
    }

    // final RMSNorm, then the layers from last to first; dresidual is the residual stream's gradient
    std::vector<float> dresidual((size_t)s.N * s.C, 0.f), dlayer_input((size_t)s.N * s.C);
    rmsnorm_backward_cpu(dresidual.data(), m.grads.data() + m.layout.final_norm, dhidden.data(), f.layer_inputs[L].data(),
                         m.params.data() + m.layout.final_norm, f.hidden_rstd.data(), s.N, s.C);
    for (int l = L - 1; l >= 0; l--) {
        // the last layer of a segment: rebuild the segment's inputs from its checkpoint, layer l / k * k's
        if (f.layer_inputs[l].empty()) reference_layers_forward(m, s, options, f, l / k * k, l, false);
        LayerActivations& a = f.layers[options.recompute ? 0 : l];
        if (options.recompute) {  // rebuild this layer's activations from its kept input
            std::vector<float> output((size_t)s.N * s.C);
            reference_layer_forward(m, l, s, f.cos_table.data(), f.sin_table.data(), mlp_chunks,
                                    f.layer_inputs[l].data(), a, output.data());
        }
        reference_layer_backward(m, l, s, f.cos_table.data(), f.sin_table.data(), mlp_chunks,
                                 f.layer_inputs[l].data(), a, dresidual.data(), dlayer_input.data());
        if (l % k != 0) std::vector<float>().swap(f.layer_inputs[l]);  // recomputed: dead once used
        dresidual.swap(dlayer_input);
    }
    embedding_backward_cpu(m.grads.data() + m.layout.embedding, dresidual.data(), inputs, s.N, s.C);
    return counted > 0 ? (float)(loss_sum / counted) : 0.f;
}

// Global-norm gradient clipping as torch.nn.utils.clip_grad_norm_: norm = sqrt(sum of all g^2);
// scale = max_norm / (norm + 1e-6), applied when it is below 1. Returns the norm before clipping.
static inline float reference_clip_gradients(ReferenceModel& m, float max_norm) {
    double norm = sqrt(sum_of_squares_cpu(m.grads.data(), m.grads.size()));
    double scale = max_norm / (norm + 1e-6);
    if (scale < 1.0)
        for (float& g : m.grads) g *= (float)scale;
    return (float)norm;
}

// One AdamW step over every tensor; weight decay only on the 2-D matrices (embedding, projections,
// LM head), not on the norm weights (1 x C in parameter_tensors()).
static inline void reference_adamw_step(ReferenceModel& m, float lr, float beta1, float beta2, float eps, float weight_decay) {
    m.step++;
    for (const ParameterTensor& t : parameter_tensors(m.config)) {
        size_t count = t.rows * t.cols;
        float decay = t.rows > 1 ? weight_decay : 0.f;
        adamw_cpu(m.params.data() + t.offset, m.grads.data() + t.offset, m.adam_m.data() + t.offset,
                  m.adam_v.data() + t.offset, count, m.step, lr, beta1, beta2, eps, decay);
    }
}

// ----------------------------------------------------------------------------
// training over many steps (training.h): gradient accumulation, clipping deferred until the norm is
// known, the non-finite guard
//
//   float loss = reference_accumulate_gradients(model, inputs, targets, k, B, T, options);  // k micro-batches
//   ReferenceHeldUpdate held;
//   float norm = reference_hold_gradients(model, held, max_norm, lr);   // the fused trainer's host copy
//   if (guard.skip(loss, norm)) held.pending = false;                   // a non-finite step changes nothing
//   reference_apply_held_update(model, held, beta1, beta2, eps, weight_decay);  // before the weights' next use

// Gradients of k micro-batches of (B, T), inputs and targets one after another (micro-batch i at
// i B T), into model.grads: each micro-batch's gradient weighted by its share of the counted targets,
// so the result is the gradient of the loss averaged over all counted targets of all micro-batches.
// Returns that loss.
static inline float reference_accumulate_gradients(ReferenceModel& m, const int* inputs, const int* targets,
                                                   int micro_batches, int B, int T, const ReferenceOptions& options) {
    size_t N = (size_t)B * T;
    int counted_total = 0;
    for (size_t n = 0; n < N * micro_batches; n++) counted_total += targets[n] >= 0;
    std::vector<float> sum(m.grads.size(), 0.f);
    double loss = 0.0;
    for (int i = 0; i < micro_batches; i++) {
        int counted = 0;
        for (size_t n = 0; n < N; n++) counted += targets[i * N + n] >= 0;
        float mean = reference_forward_backward(m, inputs + i * N, targets + i * N, B, T, options);
        float share = counted_total > 0 ? (float)counted / counted_total : 0.f;
        for (size_t j = 0; j < sum.size(); j++) sum[j] += share * m.grads[j];
        loss += (double)mean * share;
    }
    m.grads.swap(sum);
    return (float)loss;
}

// What the fused trainer holds between backward and the update: the gradient (its pinned host copy),
// the clip scale of the same step's norm, and the step's learning rate.
struct ReferenceHeldUpdate {
    std::vector<float> gradient;
    bool pending = false;
    float norm = 0.f, scale = 1.f, lr = 0.f;
};

// Backward has finished: copy model.grads group by group in the order backward completes them, adding
// each group's sum of squares to the norm as the GPU does (one partial per group, summed in that order).
// Returns the norm; the update is pending until reference_apply_held_update.
static inline float reference_hold_gradients(ReferenceModel& m, ReferenceHeldUpdate& held, float max_norm, float lr) {
    held.gradient.resize(m.grads.size());
    double sum = 0.0;
    for (const GradientGroup& g : gradient_groups(m.config)) {
        std::copy(m.grads.begin() + g.offset, m.grads.begin() + g.offset + g.count, held.gradient.begin() + g.offset);
        sum += sum_of_squares_cpu(m.grads.data() + g.offset, g.count);
    }
    held.norm = (float)sqrt(sum);
    held.scale = clip_scale(held.norm, max_norm);
    held.lr = lr;
    held.pending = true;
    return held.norm;
}

// The pending update, if any: AdamW on the held gradient scaled by its own step's clip scale. (Group by
// group on the GPU; the groups are disjoint, so the order does not change the result.)
static inline void reference_apply_held_update(ReferenceModel& m, ReferenceHeldUpdate& held, float beta1, float beta2,
                                               float eps, float weight_decay) {
    if (!held.pending) return;
    for (size_t i = 0; i < m.grads.size(); i++) m.grads[i] = held.gradient[i] * held.scale;
    reference_adamw_step(m, held.lr, beta1, beta2, eps, weight_decay);
    held.pending = false;
}
