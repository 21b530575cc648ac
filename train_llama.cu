// train_llama.cu: Llama 3 training on one GPU or several with the Mini-Sequence Transformer (arXiv 2407.15892).
//
// One step: embedding; per layer RMSNorm, q/k/v projections, RoPE, flash attention, output projection
// + residual, RMSNorm, then the MLP (gate/up, SwiGLU, down + residual) over mini-sequences of the
// tokens; final RMSNorm; LM head + cross-entropy over mini-sequences, each mini-sequence's logits turned
// into their gradient in place and consumed at once (dHidden = dLogits W, dW += dLogits^T h), so one
// mini-sequence of logits is all that ever exists. Backward recomputes each layer from its input (-r 1)
// or reads the activations every layer kept (-r 0). The optimizer is fused with backward (-f 1): each
// group of parameters (LM head, final norm, each layer, embedding) leaves the GPU's gradient region as
// soon as its gradient is complete, so no full-model gradient exists on the GPU.
//
// Memory: memory_plan.h says every byte. One cudaMalloc of plan.total at start-up, carved into the
// plan's regions, and with --offload one cudaHostAlloc of plan.host_total (pinned) for the layer
// checkpoints; nothing is allocated afterwards (device_allocations and host_allocations count, test_llama
// checks).
//
// Checkpoints (-o, -k, -y), Hugging Face weights in and out (-e DIR, --export) and samples (-g, -s) work
// on host copies of the arena's buffers (checkpoint.h, hf_io.h, generate.h). A checkpoint holds all
// that a step depends on (weights, AdamW state and step, the data's position; no pending update), so a
// resumed run's losses are bitwise those of a run that never stopped.
//
// Exact gradient clipping with the fused step (training.h): the global norm is known only once backward
// has finished, so each group's completed gradient goes to pinned host memory (plan.bytes[REGION_HOST_GRADIENTS])
// while its share of the norm accumulates on the GPU; the update, scaled by min(1, clip / norm) of the
// same step, is applied before the weights are next read (the next step's forward, validation, a
// sample, a checkpoint, an export), each group's gradient streamed back into the gradient region. A step
// whose loss or norm is not finite leaves that update out: no weight or AdamW state changes. With -f 0
// the whole gradient stays on the GPU and is clipped and applied after backward. Gradient accumulation
// (-d) runs micro-batches into the same gradients (fused: each group's host copy streamed back before
// its next backward) with the loss normalized over the counted targets of all micro-batches.
//
// AdamW state on the host (--state-offload 1, one GPU): m and v live in pinned host memory; each update streams
// them group by group through two device staging slots (the copy stream fetches the next group's state while
// AdamW updates this one's, then writes it back), so the card holds two groups' state instead of all of it. The
// update is the same kernel on the same values: the weights are bitwise those with the state on the card.
//
// Several GPUs (--sp, --dp under mpirun; struct Parallel says how): Ulysses all-to-alls around attention, ZeRO-1
// (gradients reduce-scattered, AdamW on each rank's shard, parameters all-gathered), checkpoints gathered by rank 0.
//
// The model code (structs, forward, backward, update) comes first, then the command line and main,
// which test_llama.cu leaves out by defining TESTING before it includes this file (as llm.c's
// test_gpt2.cu does).
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <cuda_runtime.h>
#include <curand_kernel.h>
#include <nvtx3/nvToolsExt.h>

#include "mst_kernels.cuh"
#include "mst/llama_config.h"
#include "mst/memory_plan.h"
#include "mst/step_model.h"
#include "mst/token_buckets.h"
#include "mst/lr_schedule.h"
#include "mst/training.h"
#include "mst/numbers.h"
#include "dataloader.h"
#include "mst/checkpoint.h"  // and through it hf_io.h, tokenizer.h (decoding only), llama_reference.h
#include "mst/generate.h"
#include "mst/run_log.h"
#include "mst/comm.h"

// ----------------------------------------------------------------------------
// the arena: the program's one device allocation

static int device_allocations = 0;  // 1 after start-up, and still 1 after any number of steps
static int host_allocations = 0;    // pinned: 1 after start-up with --offload, else 0

static char* device_malloc_counted(size_t bytes) {
    void* p;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    device_allocations++;
    return (char*)p;
}

static char* host_malloc_pinned_counted(size_t bytes) {
    void* p;
    cudaError_t error = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (error != cudaSuccess) {
        fprintf(stderr, "error: --host-mem: cannot pin %.1f GiB of host memory for the plan's host regions (checkpoints, "
                "held gradients, AdamW state) (%s); give --host-mem what the machine can pin\n", gib(bytes),
                cudaGetErrorString(error));
        exit(1);
    }
    host_allocations++;
    return (char*)p;
}

// ----------------------------------------------------------------------------
// the model

struct OptimizerSettings {
    float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
    float grad_clip = 1.0f;  // global gradient-norm clip, 0 = off
};

// One layer's activations: what its forward writes and its backward reads. With recomputation all
// layers share one set; without, each layer has its own (the plan's regions hold L of each).
struct LayerActivationsGPU {
    bf16* attention_norm; float* attention_rstd;  // N x C, N
    bf16* q; bf16* k; bf16* v;                    // N x Q, N x KV, N x KV (q and k after RoPE)
    bf16* attention_out; float* lse;              // N x Q, B x H x T
    bf16* attention_residual;                     // N x C: layer input + attention_out Wo^T
    bf16* mlp_norm; float* mlp_rstd;              // N x C, N
    bf16* gate_up; bf16* act;                     // one mini-sequence: n_mlp x 2F ([gate | up] rows), n_mlp x F
    bf16* attention_heads;                        // --sp: the output in head layout, B x Tp x Hl x hd (q, k, v, lse
                                                  // are then head layout too: B x Tp x (Hl, KVl, KVl) x hd, B x Hl x Tp)
};

// Several GPUs (issue 20): one process per GPU, started by mpirun or srun; --dp D data-parallel ranks, each on
// its own batches. ZeRO-1 (memory_plan.h's zero_shard): rank r keeps AdamW m and v (and the master weights) for
// parameters [shard_begin, shard_begin + shard) only. After backward the fp32 gradients are reduce-scattered
// (each rank gets its shard summed over the ranks), the global norm sums every rank's shard, each rank updates
// its shard and the bf16 parameters are all-gathered. One rank: the one-GPU trainer (shard = P, no collective).
//
// --sp S (Ulysses): the ranks rank - rank % S .. of a group share the same sequences, rank j of the group holding
// tokens [j Tl, j Tl + Tl) of each (Tl = ceil(T / S); the last block padded past T: input 0, target -1, so no
// loss, no gradient, and causal attention keeps every real token from them). Everything but attention runs
// on the block; around attention two all-to-alls (forward, its recompute and backward) give each rank the
// whole sequences for query heads [j Hl, j Hl + Hl) and the KV heads they read (UlyssesShape: replicated when
// S exceeds the KV heads), and bring the output back. RoPE positions and document starts are the sequences'.
// The loss is the mean over every rank's counted targets; the gradients are summed over all the ranks.
struct Parallel {
    int rank = 0, world = 1, dp = 1, sp = 1;
    int local_rank = 0;  // among the ranks on this node: its GPU
    Comm host;           // host values through MPI: counted targets, the loss, checkpoint gathers
    Comm device;         // device buffers through NCCL (on the CPU device, its NCCL over MPI)
    Comm sp_host, sp_device;  // this rank's Ulysses group (S ranks), host and device
    int sp_rank() const { return rank % sp; }
    int dp_rank() const { return rank / sp; }
};

struct Model {
    ModelConfig config;
    ParameterLayout layout;
    std::vector<ParameterTensor> tensors;  // for AdamW: weight decay on the 2-D ones only
    MemoryPlan plan;
    OptimizerSettings optimizer;
    int B, T, N;                   // N = B x Tl: this rank's tokens (B x T on one rank)
    UlyssesShape ulysses;          // --sp's split (S = 1: Tl = Tp = T, all heads)
    cudaStream_t stream;
    cublasLtHandle_t cublaslt;
    char* arena;
    // --offload: the layer checkpoints in pinned host memory, copied on their own stream and ordered by
    // events: stored[i] = the copy of a layer input out of staging buffer i has finished, fetched[i] =
    // one into buffer i has; compute_point marks the compute stream for the copy stream to wait on
    char* host_arena;              // null when the plan has no host regions
    CheckpointSchedule checkpoints; // which layer inputs forward keeps (--segment k; k = 1 all) and which of those
                                   // go to the host (--offload), memory_plan.h
    bf16* host_checkpoints;        // stored x N x C: kept input i (layer i x k's input) at i x N x C
    cudaStream_t copy_stream;
    cudaEvent_t stored[2], fetched[2], compute_point;
    // --keep-attention: the layers' attention outputs and lse through two device buffers (kept_attention_schedule),
    // outputs 0 .. L-3 in pinned host memory; the same events for their copies
    OffloadSchedule kept;
    char* host_attention;          // (L - 2) x [N x Q bf16 | N x H fp32]
    cudaEvent_t attention_stored[2], attention_fetched[2];

    // persistent
    bf16* params;
    float* master;                 // fp32 master weights, or null
    void* adam_m; void* adam_v;    // bf16 or fp32 (plan.options.bf16_optimizer_state); --state-offload: unused
    char* host_state;              // --state-offload: pinned host m (P elements), then v; else null
    char* state_staging;           // --state-offload: 2 slots of [m | v], each largest_gradient_group() elements
    cudaEvent_t state_in[2];       // --state-offload: a group's state has landed in staging slot i
    float* grads;                  // fused: one gradient group at a time; else all P
    void* host_grads;              // fused: pinned host P x 2 (bf16) or P x 4, each group's gradient held for the exact clip
    bf16* grad_staging;            // fused, held in bf16: each gradient slot's bf16 copy on the card, or null
    std::vector<GradientGroup> groups;  // gradient_groups(): the order backward completes them
    GradientSlots gradient_slots;  // fused and --zero 2: the two slots' sizes (training.h)
    float* grad_shard;             // --zero 2: this rank's shard of the gradient, [shard_begin, shard_end), after the slots
    cudaEvent_t gradient_out[3], gradient_in[3];  // fused: a slot's copy to / from the host has finished
    bool update_pending;           // fused: the last step's update, applied before the weights are next read
    int groups_applied;            // of it, in forward order (apply_pending_groups)
    float pending_lr;              // its learning rate
    // forward
    bf16* layer_inputs;            // (L + 1) x N x C: each layer's input, then the last layer's output
    LayerActivationsGPU layer_acts[2];  // layer 0's views and layer 1's (the same with recomputation)
    bf16* final_norm; float* final_rstd;
    bf16* logits;                  // n_lm x V: one LM-head mini-sequence
    float* losses;                 // N
    int* inputs; int* targets;     // N each
    int* doc_start;                // B x Tp: each token's document start (document_starts), or null: no --doc-mask
    int* sequence_inputs;          // --sp with --doc-mask: the whole sequences' inputs (B x Tp), for doc_start
    int bos_token;                 // the token that starts a document: <|begin_of_text|> (a test's tiny vocabulary: its own)
    int* token_buckets;            // the embedding backward's buckets of the inputs (mst/token_buckets.h)
    TokenBuckets buckets;          // their host copy, rebuilt as each batch is uploaded
    float* rope_cos; float* rope_sin;
    // backward
    bf16* dresidual; bf16* dnorm;  // N x C each: the residual stream's gradient, a norm output's gradient
    bf16* dq; bf16* dk; bf16* dv; bf16* dattention_out;
    float* dk_sum; float* dv_sum;  // --attention-blocks: N x KV each, dK and dV summed over the query blocks in fp32
    void* attention_scratch;       // N x H fp32 (attention backward's rowsum(dout * out)); --sp: B x Tp x Hl
    bf16* dattention_heads;        // --sp: the attention output's gradient, head layout
    bf16* all_to_all_send; bf16* all_to_all_recv;  // --sp: S blocks each, block j to / from group rank j
    bf16* dgate_up; bf16* dact;    // one mini-sequence
    void* norm_scratch;            // RMSNorm weight-gradient partials
    void* grad_norm_scratch;       // global-norm partials, one slot per gradient group
    int grad_norm_slots;           // slots written this step
    float* grad_norm;              // this step's global gradient norm (device)
    float* clip_scale;             // min(1, clip / norm) of the last step
    int steps_done;                // training steps done (a skipped step counts: the data and lr moved on)
    int updates_applied;           // AdamW's t is updates_applied + 1 (a skipped step applies none)
    uint64_t seed;
    bool attention_sm90;           // the sm_90a attention forward and backward (else the mma.sync ones)
    // several GPUs: the ranks, this rank's ZeRO-1 shard of the parameters (the state regions hold `shard`
    // elements for [shard_begin, shard_begin + shard); the last rank's may end past P, in padding)
    Parallel par;
    size_t shard, shard_begin, shard_end;  // shard_end = min(P, shard_begin + shard)
    cudaEvent_t collective_start, collective_done;  // order the NCCL stream's collectives with the compute stream
};

// layer l's activations: slot 0 with recomputation, slot l without (the slots are evenly spaced); with
// --keep-attention the attention output and lse in buffer l % 2 (the attention-output region holds
// [out 0 | out 1 | lse 0 | lse 1])
static LayerActivationsGPU layer_activations(const Model* m, int l) {
    const LayerActivationsGPU& a = m->layer_acts[0];
    if (m->plan.options.keep_attention) {
        LayerActivationsGPU kept = a;
        kept.attention_out += (size_t)(l % 2) * m->N * m->config.q_dim();
        kept.lse += (size_t)(l % 2) * m->N * m->config.n_head;
        return kept;
    }
    if (m->plan.options.recompute || l == 0) return a;
    const LayerActivationsGPU& b = m->layer_acts[1];
    auto at = [l](auto* first, auto* second) { return first + (size_t)l * (second - first); };
    return {at(a.attention_norm, b.attention_norm), at(a.attention_rstd, b.attention_rstd), at(a.q, b.q),
            at(a.k, b.k), at(a.v, b.v), at(a.attention_out, b.attention_out), at(a.lse, b.lse),
            at(a.attention_residual, b.attention_residual), at(a.mlp_norm, b.mlp_norm), at(a.mlp_rstd, b.mlp_rstd),
            at(a.gate_up, b.gate_up), at(a.act, b.act), at(a.attention_heads, b.attention_heads)};
}

// layer l's input (l = L: the last layer's output), in buffer checkpoints.buffer(l) of the layer-inputs region
// (memory_plan.h's CheckpointSchedule). Offloaded, kept inputs 0 .. S-1 pass through staging buffer i % 2, the
// others have buffers 2 .. of their own; with --segment k the recomputed inputs share the k - 1 buffers after them.
static bf16* layer_input(const Model* m, int l) {
    return m->layer_inputs + (size_t)m->checkpoints.buffer(l) * m->N * m->config.d_model;
}

// Carves the arena exactly as the plan says. In a region holding one tensor per layer (no
// recomputation) the layers' copies of a tensor come one after another, so every pointer stays aligned.
static void carve_arena(Model* m) {
    const MemoryPlan& p = m->plan;
    size_t N = m->N, C = m->config.d_model, Q = m->config.q_dim(), KV = m->config.kv_dim();
    size_t F = m->config.ffn_dim, H = m->config.n_head, L_live = p.options.recompute ? 1 : m->config.n_layer;
    size_t n_mlp = p.mlp_chunk_tokens;
    // --attention-blocks: the norm, q and the attention output hold one query block (NA rows; q then its pad rows)
    bool blocked = p.options.attention_blocks > 1;
    size_t NA = blocked ? p.attention_block_tokens : N, q_rows = blocked ? NA + ATTENTION_BLOCK_PAD_ROWS : N;
    auto region = [&](Region r) { return m->arena + p.offset[r]; };
    m->params = (bf16*)region(REGION_PARAMETERS);
    m->master = p.options.master_weights ? (float*)region(REGION_MASTER_WEIGHTS) : nullptr;
    m->adam_m = region(REGION_ADAM_M);
    m->adam_v = region(REGION_ADAM_V);
    m->grads = (float*)region(REGION_GRADIENTS);
    m->grad_shard = p.options.zero == 2 ? m->grads + (m->config.tied_embeddings ? (size_t)m->config.vocab_size * m->config.d_model : 0) +
                                              m->gradient_slots.elements[0] + m->gradient_slots.elements[1] : nullptr;
    m->layer_inputs = (bf16*)region(REGION_LAYER_INPUTS);
    m->host_checkpoints = m->checkpoints.offload.stored() > 0 ? (bf16*)(m->host_arena + p.offset[REGION_HOST_CHECKPOINTS]) : nullptr;
    m->host_grads = p.bytes[REGION_HOST_GRADIENTS] ? m->host_arena + p.offset[REGION_HOST_GRADIENTS] : nullptr;
    m->host_attention = p.bytes[REGION_HOST_ATTENTION] ? m->host_arena + p.offset[REGION_HOST_ATTENTION] : nullptr;
    m->host_state = p.bytes[REGION_HOST_ADAM_STATE] ? m->host_arena + p.offset[REGION_HOST_ADAM_STATE] : nullptr;
    m->state_staging = region(REGION_STATE_STAGING);
    size_t attention_slots = p.options.keep_attention ? 2 : L_live;  // --keep-attention: two buffers
    m->grad_staging = p.bytes[REGION_GRADIENT_STAGING] ? (bf16*)region(REGION_GRADIENT_STAGING) : nullptr;
    for (int slot = 0; slot < 2; slot++) {
        size_t l = L_live > 1 ? slot : 0;
        LayerActivationsGPU& a = m->layer_acts[slot];
        a.attention_norm = (bf16*)region(REGION_ATTENTION_NORM) + l * NA * C;
        a.attention_rstd = (float*)(region(REGION_ATTENTION_NORM) + L_live * NA * C * 2) + l * N;
        a.q = (bf16*)region(REGION_QKV) + l * (q_rows * Q + N * 2 * KV);
        a.k = a.q + q_rows * Q;
        a.v = a.k + N * KV;
        a.attention_out = (bf16*)region(REGION_ATTENTION_OUT) + l * NA * Q;
        a.lse = (float*)(region(REGION_ATTENTION_OUT) + attention_slots * NA * Q * 2) + l * N * H;
        a.attention_residual = (bf16*)region(REGION_ATTENTION_RESIDUAL) + l * N * C;
        a.mlp_norm = (bf16*)region(REGION_MLP_NORM) + l * N * C;
        a.mlp_rstd = (float*)(region(REGION_MLP_NORM) + L_live * N * C * 2) + l * N;
        a.gate_up = (bf16*)region(REGION_MLP_HIDDEN) + l * n_mlp * 3 * F;
        a.act = a.gate_up + n_mlp * 2 * F;
    }
    m->dresidual = (bf16*)region(REGION_RESIDUAL_GRADIENT);
    m->dnorm = m->dresidual + N * C;
    // the plan's aliases (memory_plan.h says why each region is dead by then)
    bool aliased = p.aliased;
    m->dk_sum = blocked ? (float*)region(REGION_QKV_GRADIENT) : nullptr;  // first in the region
    m->dv_sum = blocked ? m->dk_sum + N * KV : nullptr;
    bf16* qkv_gradient = (bf16*)(region(REGION_QKV_GRADIENT) + (blocked ? N * 2 * KV * 4 : 0));
    m->dq = aliased ? (bf16*)region(REGION_ATTENTION_RESIDUAL) : qkv_gradient;
    m->dk = aliased ? qkv_gradient : m->dq + N * Q;
    m->dv = m->dk + N * KV;
    m->dattention_out = aliased ? (bf16*)region(REGION_MLP_NORM) : m->dv + N * KV;
    m->attention_scratch = aliased ? (void*)(m->dv + N * KV) : (void*)(m->dattention_out + N * Q);
    m->dgate_up = (bf16*)region(REGION_MLP_HIDDEN_GRADIENT);
    m->dact = m->dgate_up + n_mlp * 2 * F;
    m->final_norm = (bf16*)region(aliased ? REGION_MLP_NORM : REGION_FINAL_NORM);
    m->final_rstd = (float*)(m->final_norm + N * C);
    m->logits = (bf16*)region(REGION_LMHEAD_LOGITS);
    m->losses = (float*)region(REGION_LOSSES);
    m->inputs = (int*)region(REGION_TOKENS);
    m->targets = m->inputs + N;
    // document starts over the whole sequences (B x Tp: N on one rank), with --sp their inputs beside them
    const UlyssesShape& u = m->ulysses;
    size_t Np = (size_t)m->B * u.Tp, hd = m->config.head_dim();
    bool ulysses = u.S > 1;
    m->doc_start = p.options.doc_mask ? m->targets + N : nullptr;
    m->sequence_inputs = p.options.doc_mask && ulysses ? m->doc_start + Np : nullptr;
    m->token_buckets = m->targets + N + (p.options.doc_mask ? (ulysses ? 2 : 1) * Np : 0);
    m->rope_cos = (float*)region(REGION_ROPE_TABLES);
    m->rope_sin = m->rope_cos + (size_t)u.Tp * (hd / 2);
    char* attention_scratch_end = region(REGION_QKV_GRADIENT) + round_up_256(p.bytes[REGION_QKV_GRADIENT]);
    if (ulysses) {  // recomputation: one layer's; q, k, v, lse, the output in head layout (memory_plan.h)
        LayerActivationsGPU& a = m->layer_acts[0];
        size_t qkv_heads = Np * (u.Hl + 2 * u.KVl) * hd, out_heads = Np * u.Hl * hd;
        a.q = (bf16*)region(REGION_ULYSSES_HEADS);
        a.k = a.q + Np * u.Hl * hd;
        a.v = a.k + Np * u.KVl * hd;
        m->dq = a.q + qkv_heads;
        m->dk = m->dq + Np * u.Hl * hd;
        m->dv = m->dk + Np * u.KVl * hd;
        a.attention_heads = m->dq + qkv_heads;
        m->dattention_heads = a.attention_heads + out_heads;
        a.lse = (float*)(m->dattention_heads + out_heads);
        m->attention_scratch = a.lse + Np * u.Hl;
        a.attention_out = (bf16*)region(REGION_ATTENTION_OUT);
        m->dattention_out = (bf16*)region(REGION_QKV_GRADIENT);
        m->all_to_all_send = (bf16*)region(REGION_ALL_TO_ALL);
        m->all_to_all_recv = m->all_to_all_send + qkv_heads;
        m->layer_acts[1] = a;
        attention_scratch_end = region(REGION_ULYSSES_HEADS) + round_up_256(p.bytes[REGION_ULYSSES_HEADS]);
    }
    // scratch: RMSNorm partials (RMSNORM_GRADIENT_CHUNKS x C x 4), then in the last MiB the global-norm partials
    // and the two scalars
    size_t norm_scratch_bytes = rmsnorm_backward_scratch_bytes(m->N, C);
    // slots: one per gradient group (fused), or one per rank and this rank's own (ZeRO-1's global norm)
    size_t grad_norm_bytes = global_norm_scratch_bytes(std::max(m->config.n_layer + 3, m->par.world + 1));
    size_t reserved_for_norm = (size_t)RMSNORM_GRADIENT_CHUNKS * C * 4;
    // the attention scratch ends its region; the region's 256-byte rounding is its own
    size_t attention_scratch_room = attention_scratch_end - (char*)m->attention_scratch;
    if (norm_scratch_bytes > reserved_for_norm || round_up_256(grad_norm_bytes) + 256 > (1u << 20) ||
        attention_backward_scratch_bytes(m->B, u.Tp, u.Hl, hd) > attention_scratch_room) {
        fprintf(stderr, "error: the memory plan's scratch is smaller than the kernels need\n");
        exit(1);
    }
    m->norm_scratch = region(REGION_SCRATCH);
    m->grad_norm_scratch = region(REGION_SCRATCH) + reserved_for_norm;
    m->grad_norm = (float*)((char*)m->grad_norm_scratch + round_up_256(grad_norm_bytes));
    m->clip_scale = m->grad_norm + 1;
    matmul_init(m->cublaslt, region(REGION_CUBLASLT_WORKSPACE), p.bytes[REGION_CUBLASLT_WORKSPACE]);
}

// The plan's regions of each arena, for the CPU device's guards between them (nothing on a GPU)
static void declare_arena_regions(const Model* m) {
    for (int host = 0; host < 2; host++) {
        std::vector<size_t> offset, bytes;
        std::vector<const char*> names;
        for (int r = 0; r < NUM_REGIONS; r++) {
            if (region_on_host(r) != (host == 1) || m->plan.bytes[r] == 0) continue;
            offset.push_back(m->plan.offset[r]);
            bytes.push_back(m->plan.bytes[r]);
            names.push_back(REGION_NAMES[r]);
        }
        char* arena = host ? m->host_arena : m->arena;
        if (arena && !names.empty())
            mst::declare_regions(arena, host ? "pinned host arena" : "device arena", offset.data(), bytes.data(), names.data(),
                                 (int)names.size());
    }
}

// The one allocation, the views into it, the RoPE tables, zeroed optimizer state. The weights come
// after: model_init_random (or, in test_llama.cu, model_set_parameters from fp32 host values).
static void model_create(Model* m, const ModelConfig& config, const TrainingOptions& options,
                         const OptimizerSettings& optimizer, uint64_t seed, const Parallel& par = Parallel()) {
    if (options.dp * options.sp != par.world) {
        fprintf(stderr, "internal error: the plan's --dp %d x --sp %d is not the %d ranks\n", options.dp, options.sp, par.world);
        exit(1);
    }
    m->config = config;
    m->par = par;
    m->layout = parameter_layout(config);
    m->tensors = parameter_tensors(config);
    TrainingOptions planned = options;
    planned.region_guard_bytes = mst::region_guard_bytes();  // 0 on a GPU: the plan --dry-run prints
    m->plan = plan_memory(config, planned);
    m->optimizer = optimizer;
    m->B = options.B;
    m->T = options.T;
    m->ulysses = UlyssesShape(config, options.sp, options.B, options.T);
    m->N = options.B * m->ulysses.Tl;
    m->seed = seed;
    m->shard = zero_shard(m->layout.total, par.world);
    m->shard_begin = std::min(m->layout.total, (size_t)par.rank * m->shard);
    m->shard_end = std::min(m->layout.total, m->shard_begin + m->shard);
    m->attention_sm90 = mst::device_major() == 9;  // train() decides with --attention and the self-test
    // <|begin_of_text|> starts a document; a vocabulary without it (a test's) has token 0, as samples begin with
    m->bos_token = config.vocab_size > LLAMA3_BOS_TOKEN ? LLAMA3_BOS_TOKEN : 0;
    m->steps_done = 0;
    m->updates_applied = 0;
    m->update_pending = false;
    m->groups_applied = 0;
    m->groups = gradient_groups(config);
    m->gradient_slots = fused_gradient_slots(config);
    CUDA_CHECK(cudaStreamCreate(&m->stream));
    CUBLAS_CHECK(cublasLtCreate(&m->cublaslt));
    m->arena = device_malloc_counted(m->plan.total);
    m->checkpoints = CheckpointSchedule(m->plan.options.segment, m->plan.options.offload, config.n_layer);
    m->kept = m->plan.options.keep_attention ? kept_attention_schedule(config.n_layer) : OffloadSchedule();
    m->host_arena = m->plan.host_total > 0 ? host_malloc_pinned_counted(m->plan.host_total) : nullptr;
    CUDA_CHECK(cudaStreamCreate(&m->copy_stream));
    for (cudaEvent_t* e : {&m->stored[0], &m->stored[1], &m->fetched[0], &m->fetched[1], &m->compute_point,
                           &m->attention_stored[0], &m->attention_stored[1], &m->attention_fetched[0], &m->attention_fetched[1],
                           &m->collective_start, &m->collective_done, &m->state_in[0], &m->state_in[1]})
        CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    for (int slot = 0; slot < 3; slot++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&m->gradient_out[slot], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&m->gradient_in[slot], cudaEventDisableTiming));
    }
    declare_arena_regions(m);
    carve_arena(m);
    std::vector<float> cos_table((size_t)m->ulysses.Tp * config.head_dim() / 2), sin_table(cos_table.size());
    rope_tables(config, m->ulysses.Tp, cos_table.data(), sin_table.data());
    CUDA_CHECK(cudaMemcpy(m->rope_cos, cos_table.data(), cos_table.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(m->rope_sin, sin_table.data(), sin_table.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(m->adam_m, 0, m->plan.bytes[REGION_ADAM_M]));
    CUDA_CHECK(cudaMemset(m->adam_v, 0, m->plan.bytes[REGION_ADAM_V]));
    if (m->host_state) memset(m->host_state, 0, m->plan.bytes[REGION_HOST_ADAM_STATE]);
    CUDA_CHECK(cudaMemset(m->params, 0, m->plan.bytes[REGION_PARAMETERS]));  // ZeRO-1's padding past P too
    float one = 1.f;
    CUDA_CHECK(cudaMemcpy(m->clip_scale, &one, 4, cudaMemcpyHostToDevice));
}

static void model_free(Model* m) {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaFree(m->arena));
    device_allocations--;
    if (m->host_arena) {
        CUDA_CHECK(cudaFreeHost(m->host_arena));
        host_allocations--;
    }
    for (cudaEvent_t e : {m->stored[0], m->stored[1], m->fetched[0], m->fetched[1], m->compute_point,
                          m->attention_stored[0], m->attention_stored[1], m->attention_fetched[0], m->attention_fetched[1],
                          m->collective_start, m->collective_done, m->state_in[0], m->state_in[1]})
        CUDA_CHECK(cudaEventDestroy(e));
    for (int slot = 0; slot < 3; slot++) {
        CUDA_CHECK(cudaEventDestroy(m->gradient_out[slot]));
        CUDA_CHECK(cudaEventDestroy(m->gradient_in[slot]));
    }
    CUDA_CHECK(cudaStreamDestroy(m->copy_stream));
    CUBLAS_CHECK(cublasLtDestroy(m->cublaslt));
    CUDA_CHECK(cudaStreamDestroy(m->stream));
}

// Llama's initialization: matrices normal(0, 0.02), norm weights 1. Element i of the parameter buffer
// draws from Philox subsequence i of the seed, so the weights depend on the seed only.
__global__ void init_parameters_kernel(bf16* params, size_t offset, size_t count, float std, uint64_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        float value = 1.f;
        if (std > 0.f) {
            curandStatePhilox4_32_10_t state;
            curand_init(seed, offset + i, 0, &state);
            value = std * curand_normal(&state);
        }
        params[offset + i] = __float2bfloat16(value);
    }
}

// master = the bf16 weights, widened
__global__ void widen_parameters_kernel(float* master, const bf16* params, size_t count) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        master[i] = __bfloat162float(params[i]);
}

static void model_init_random(Model* m) {
    for (const ParameterTensor& t : m->tensors) {
        size_t count = t.rows * t.cols;
        mst::launch<init_parameters_kernel>(mst_elementwise_blocks(count, 256), 256, 0, m->stream,
            m->params, t.offset, count, t.rows > 1 ? 0.02f : 0.f, m->seed);
        CUDA_CHECK(cudaGetLastError());
    }
    if (m->master) {  // this rank's shard
        size_t count = m->shard_end - m->shard_begin;
        mst::launch<widen_parameters_kernel>(mst_elementwise_blocks(count, 256), 256, 0, m->stream,
            m->master, m->params + m->shard_begin, count);
        CUDA_CHECK(cudaGetLastError());
    }
    CUDA_CHECK(cudaStreamSynchronize(m->stream));
}

// ----------------------------------------------------------------------------
// forward

// an NVTX range (what Nsight Systems shows) named with an index: "layer 3 forward", "MLP mini-sequence 2"
static void nvtx_push(const char* format, int index) {
    char name[64];
    snprintf(name, sizeof name, format, index);
    nvtxRangePushA(name);
}


// ----------------------------------------------------------------------------
// --offload: the inputs of layers 0 .. h-1 in pinned host memory. Forward: once input l is complete in
// staging buffer l % 2, the copy stream sends it to the host while layer l computes; layer l writes its
// output into the other buffer only after that buffer's input (l - 1) has reached the host. Backward:
// layer l's backward (its input in buffer l % 2) starts by fetching input l - 1 into the other buffer,
// free since layer l + 1's backward; layer l - 1 waits for it. Input h - 1 is still staged from forward
// (h = L: with the last output in the other buffer). Only events order the two streams: the host never
// waits per layer. With --segment k the same schedule runs over the kept inputs (every checkpoint and the
// last output, memory_plan.h's CheckpointSchedule): checkpoint s (layer s k's input) is kept input s, stored
// while segment s computes its forward; the backward of segment s begins by waiting for its checkpoint and
// fetching checkpoint s - 1, which lands while segment s recomputes its inputs and runs its backward.

// A copy on the copy stream (offloaded checkpoints, held gradients) once the compute stream has reached this
// point: what it reads is written, what it overwrites has been read. Timed by --profile; `done` (unless null)
// marks its end for the compute stream to wait on.
static void copy_after_compute(Model* m, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaEvent_t done) {
    CUDA_CHECK(cudaEventRecord(m->compute_point, m->stream));
    CUDA_CHECK(cudaStreamWaitEvent(m->copy_stream, m->compute_point, 0));
    profile_copy_mark(m->copy_stream);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, m->copy_stream));
    profile_copy_mark(m->copy_stream);
    if (done) CUDA_CHECK(cudaEventRecord(done, m->copy_stream));
}

// copy_after_compute between a device buffer and its host copy, in either direction
static void copy_with_host(Model* m, void* device, void* host, size_t bytes, bool to_host, cudaEvent_t done) {
    if (to_host) copy_after_compute(m, host, device, bytes, cudaMemcpyDeviceToHost, done);
    else copy_after_compute(m, device, host, bytes, cudaMemcpyHostToDevice, done);
}

static bf16* host_checkpoint(const Model* m, int i) { return m->host_checkpoints + (size_t)i * m->N * m->config.d_model; }

// input l is complete: a kept input that backward fetches back goes to the host
static void offload_store(Model* m, int l) {
    int i = m->checkpoints.segment.kept(l);
    if (i < 0 || !m->checkpoints.offload.stores(i)) return;
    copy_after_compute(m, host_checkpoint(m, i), layer_input(m, l), (size_t)m->N * m->config.d_model * 2,
                       cudaMemcpyDeviceToHost, m->stored[i % 2]);
}

// before layer l's forward writes its output into a staging buffer: the kept input there before has left
static void offload_before_output(Model* m, int l) {
    int i = m->checkpoints.segment.kept(l + 1);
    if (i < 0 || !m->checkpoints.offload.overwrite_waits(i)) return;
    profile_phase(PHASE_HOST_COPIES, m->stream);  // what the compute stream waits here is a copy not hidden
    CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->stored[i % 2], 0));
}

// the backward of layer l, its segment's last (every layer without --segment), begins: it waits for the segment's
// checkpoint i (fetched, for i < S - 2), then fetches checkpoint i - 1 (stored) into buffer (i - 1) % 2
static void offload_before_backward(Model* m, int l) {
    const SegmentSchedule& g = m->checkpoints.segment;
    if (!g.last(l)) return;
    int i = g.kept(g.first(l));
    if (m->checkpoints.offload.backward_waits(i)) {
        profile_phase(PHASE_HOST_COPIES, m->stream);
        CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->fetched[i % 2], 0));
    }
    if (!m->checkpoints.offload.fetches_previous(i)) return;
    copy_after_compute(m, layer_input(m, g.first(l) - g.k), host_checkpoint(m, i - 1), (size_t)m->N * m->config.d_model * 2,
                       cudaMemcpyHostToDevice, m->fetched[(i - 1) % 2]);
}

// --keep-attention: the training forward keeps each layer's attention output and lse (buffer l % 2); outputs
// 0 .. L-3 go to the host while the layer computes on, layer l + 2's attention writes that buffer only once
// they have left; layer l's backward fetches output l - 1 into the other buffer (free since layer l + 1's
// backward) and waits for its own, so the recomputation runs the norm, q, k, v and RoPE (the attention backward
// reads them), the o projection and the post-attention norm, but not the attention forward. The schedule is the
// offloaded inputs' (memory_plan.h's kept_attention_schedule), with its own events.

// layer l's attention output and lse between its device buffer and its host copy (two copies, one event)
static void kept_attention_copy(Model* m, int l, bool to_host, cudaEvent_t done) {
    LayerActivationsGPU a = layer_activations(m, l);
    size_t out_bytes = (size_t)m->N * m->config.q_dim() * 2, lse_bytes = (size_t)m->N * m->config.n_head * 4;
    char* host = m->host_attention + (size_t)l * (out_bytes + lse_bytes);
    copy_with_host(m, a.attention_out, host, out_bytes, to_host, done);
    copy_with_host(m, a.lse, host + out_bytes, lse_bytes, to_host, done);
}

// before layer l's attention forward writes buffer l % 2: output l - 2's copy out of it has left
static void kept_attention_before_write(Model* m, int l) {
    if (!m->kept.overwrite_waits(l)) return;
    profile_phase(PHASE_HOST_COPIES, m->stream);
    CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->attention_stored[l % 2], 0));
}

// layer l's attention output is complete in a training forward: it goes to the host if a later one overwrites it
static void kept_attention_store(Model* m, int l) {
    if (m->kept.stores(l)) kept_attention_copy(m, l, true, m->attention_stored[l % 2]);
}

// layer l's backward begins: it waits for its own attention output (fetched), then fetches output l - 1
static void kept_attention_before_backward(Model* m, int l) {
    if (m->kept.backward_waits(l)) {
        profile_phase(PHASE_HOST_COPIES, m->stream);
        CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->attention_fetched[l % 2], 0));
    }
    if (m->kept.fetches_previous(l)) kept_attention_copy(m, l - 1, false, m->attention_fetched[(l - 1) % 2]);
}

// --segment k: forward kept only each segment's first input (and wrote the others into k - 1 shared buffers, since
// overwritten); the backward of a segment's last layer l begins by running the forward of layers first .. l - 1
// again from that checkpoint (offloaded: once its fetch has landed), so inputs first + 1 .. l are there, bit for
// bit as forward made them, for the segment's layers' backward (each of which then recomputes its own layer as always).
static void layer_forward(Model* m, int l, bool with_mlp, bool backward_follows);
static void segment_before_backward(Model* m, int l) {
    if (!m->checkpoints.segment.recomputes(l)) return;
    for (int j = m->checkpoints.segment.first(l); j < l; j++) layer_forward(m, j, true, false);
}

// Attention over sequences of T tokens (H query heads, KV key-value heads, the model's head dim), the query rows
// [q0, q0 + n) of each (the whole sequence: 0, T) with the document starts doc_start, by the kernels train() chose:
// the sm_90a ones, or mma.sync's (mst_kernels.cuh)
static void chosen_attention_forward(Model* m, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                     int B, int T, int H, int KV, const int* doc_start, int q0, int n) {
    int hd = m->config.head_dim();
    if (m->attention_sm90) attention_forward_sm90(out, lse, q, k, v, B, T, H, KV, hd, doc_start, q0, n, m->stream);
    else attention_forward(out, lse, q, k, v, B, T, H, KV, hd, doc_start, q0, n, m->stream);
}
// its backward into dq and dk, dv (bf16, or fp32 summed over query blocks: q0 == 0 writes, q0 > 0 adds) from the
// output's gradient dout
template <typename GradKV>
static void chosen_attention_backward(Model* m, bf16* dq, GradKV* dk, GradKV* dv, const bf16* dout, const bf16* q, const bf16* k,
                                      const bf16* v, const bf16* out, const float* lse, int B, int T, int H, int KV,
                                      const int* doc_start, int q0, int n) {
    int hd = m->config.head_dim();
    if (m->attention_sm90)
        attention_backward_sm90(dq, dk, dv, m->attention_scratch, dout, q, k, v, out, lse, B, T, H, KV, hd, doc_start, q0, n, m->stream);
    else
        attention_backward(dq, dk, dv, m->attention_scratch, dout, q, k, v, out, lse, B, T, H, KV, hd, doc_start, q0, n, m->stream);
}

// ----------------------------------------------------------------------------
// --attention-blocks: a layer's attention half over query blocks (memory_plan.h). Block (b, q0, n) is the rows
// [q0, q0 + n) of sequence b. The norm, q and attention-output buffers (and backward's dq and dO) hold one block;
// the rstd, k and v (and dK, dV) every row. The kernels address whole sequences (B x T x heads x hd), so a block is
// passed as one sequence (B = 1) whose buffer pointer is q0 rows before the block buffer: only the rows
// [q0, q0 + n) are read or written through it (the sm_90a forward reads up to 127 rows past them, into the plan's
// pad rows, and discards their results). Causal attention of a block reads the keys [0, q0 + n): forward computes
// K and V of every block first (pass A), then each block's q, attention and o projection (pass B, the norm again).
static_assert(mst::sm90::BM <= ATTENTION_BLOCK_PAD_ROWS, "the pad rows after a query block's q cover the sm_90a forward's tile");
struct QueryBlock {
    int b, q0, n;
    size_t row;  // b T + q0: the block's first row of the N
};
static std::vector<QueryBlock> query_blocks(const Model* m) {
    std::vector<QueryBlock> blocks;
    int length = m->plan.attention_block_tokens;
    for (int b = 0; b < m->B; b++)
        for (int q0 = 0; q0 < m->T; q0 += length) blocks.push_back({b, q0, std::min(length, m->T - q0), (size_t)b * m->T + q0});
    return blocks;
}
static bool attention_in_blocks(const Model* m) { return m->plan.options.attention_blocks > 1; }
// a block buffer of rows `width` wide, as the kernels' whole sequence (row q0 is the buffer's first)
template <typename X>
static X* as_sequence(X* block, const QueryBlock& k, int width) { return block - (ptrdiff_t)k.q0 * width; }
// the input norm of the block's rows into the block's norm buffer (their rstd among every row's)
static void block_norm(Model* m, const LayerActivationsGPU& a, const bf16* x, const bf16* w, const QueryBlock& k) {
    int C = m->config.d_model;
    rmsnorm_forward(a.attention_norm, a.attention_rstd + k.row, x + k.row * C, w + m->layout.layer.input_norm, k.n, C,
                    m->config.norm_eps, m->stream);
}
// RoPE (or its inverse) on n rows of `heads` heads at positions q0 .. q0 + n - 1: rope_qk with no second tensor
static void rope_rows(Model* m, bf16* x, int q0, int n, int heads, bool inverse) {
    int half = m->config.head_dim() / 2;
    rope_qk(x, x, m->rope_cos + (size_t)q0 * half, m->rope_sin + (size_t)q0 * half, 1, n, heads, 0, 2 * half, inverse, m->stream);
}
// the block's norm, q (after RoPE), attention output and lse (of the block's sequence), from K and V of every row
static void block_attention_forward(Model* m, const LayerActivationsGPU& a, const bf16* x, const bf16* w, const QueryBlock& k) {
    const ModelConfig& c = m->config;
    int C = c.d_model, Q = c.q_dim(), KV = c.kv_dim();
    size_t sequence = (size_t)k.b * m->T;
    block_norm(m, a, x, w, k);
    matmul_forward(a.q, a.attention_norm, w + m->layout.layer.q, k.n, C, Q, false, m->stream);
    rope_rows(m, a.q, k.q0, k.n, c.n_head, false);
    chosen_attention_forward(m, as_sequence(a.attention_out, k, Q), a.lse, as_sequence(a.q, k, Q), a.k + sequence * KV,
                             a.v + sequence * KV, 1, m->T, c.n_head, c.n_kv_head, m->doc_start ? m->doc_start + sequence : nullptr,
                             k.q0, k.n);
}
// Forward of the attention half in blocks: k and v of every row (pass A), then each block's attention and
// attention_residual's rows = x + attention_out Wo^T (pass B; x read in the matmul's epilogue)
static void attention_blocks_forward(Model* m, const LayerActivationsGPU& a, const bf16* x, const bf16* w) {
    const ModelConfig& c = m->config;
    const LayerOffsets& o = m->layout.layer;
    int C = c.d_model, Q = c.q_dim(), KV = c.kv_dim();
    cudaStream_t s = m->stream;
    std::vector<QueryBlock> blocks = query_blocks(m);
    for (const QueryBlock& k : blocks) {
        block_norm(m, a, x, w, k);
        matmul_forward(a.k + k.row * KV, a.attention_norm, w + o.k, k.n, C, KV, false, s);
        matmul_forward(a.v + k.row * KV, a.attention_norm, w + o.v, k.n, C, KV, false, s);
        rope_rows(m, a.k + k.row * KV, k.q0, k.n, c.n_kv_head, false);
    }
    for (const QueryBlock& k : blocks) {
        block_attention_forward(m, a, x, w, k);
        matmul_forward_add(a.attention_residual + k.row * C, x + k.row * C, a.attention_out, w + o.o, k.n, Q, C, s);
    }
}
// Backward of the attention half in blocks, from dresidual (attention_residual's gradient) into dnorm and grad, K and V
// of every row kept from the recompute. Per block in order q0 = 0, 1, ...: its attention again, then dO, dWo, the
// attention backward (dq; dK, dV summed in fp32), dq's RoPE backward, dnorm's rows = dq Wq^T and dWq. Then dK and dV
// (complete) to bf16, dK's RoPE backward, dnorm += dK Wk^T + dV Wv^T, and dWk, dWv per block (the norm again).
static void attention_blocks_backward(Model* m, const LayerActivationsGPU& a, const bf16* x, const bf16* w, float* grad) {
    const ModelConfig& c = m->config;
    const LayerOffsets& o = m->layout.layer;
    int C = c.d_model, Q = c.q_dim(), KV = c.kv_dim();
    size_t N = m->N;
    cudaStream_t s = m->stream;
    std::vector<QueryBlock> blocks = query_blocks(m);
    for (const QueryBlock& k : blocks) {
        block_attention_forward(m, a, x, w, k);
        const bf16* dout = m->dresidual + k.row * C;
        matmul_backward_input(m->dattention_out, dout, w + o.o, k.n, Q, C, false, s);
        matmul_backward_weight(grad + o.o, dout, a.attention_out, k.n, Q, C, s);
        size_t sequence = (size_t)k.b * m->T;
        chosen_attention_backward(m, as_sequence(m->dq, k, Q), m->dk_sum + sequence * KV, m->dv_sum + sequence * KV,
                                  as_sequence(m->dattention_out, k, Q), as_sequence(a.q, k, Q), a.k + sequence * KV,
                                  a.v + sequence * KV, as_sequence(a.attention_out, k, Q), a.lse, 1, m->T, c.n_head, c.n_kv_head,
                                  m->doc_start ? m->doc_start + sequence : nullptr, k.q0, k.n);
        rope_rows(m, m->dq, k.q0, k.n, c.n_head, true);
        matmul_backward_input(m->dnorm + k.row * C, m->dq, w + o.q, k.n, C, Q, false, s);
        matmul_backward_weight(grad + o.q, m->dq, a.attention_norm, k.n, C, Q, s);
    }
    gradient_to_bf16(m->dk, nullptr, -1, m->dk_sum, N * KV, s);
    gradient_to_bf16(m->dv, nullptr, -1, m->dv_sum, N * KV, s);
    rope_qk(m->dk, m->dk, m->rope_cos, m->rope_sin, m->B, m->T, c.n_kv_head, 0, c.head_dim(), true, s);
    matmul_backward_input(m->dnorm, m->dk, w + o.k, N, C, KV, true, s);
    matmul_backward_input(m->dnorm, m->dv, w + o.v, N, C, KV, true, s);
    for (const QueryBlock& k : blocks) {
        block_norm(m, a, x, w, k);
        matmul_backward_weight(grad + o.k, m->dk + k.row * KV, a.attention_norm, k.n, C, KV, s);
        matmul_backward_weight(grad + o.v, m->dv + k.row * KV, a.attention_norm, k.n, C, KV, s);
    }
}

// A collective of a group's device buffers, on its NCCL stream, after the compute stream's work so far and
// before its next (events: the host does not wait)
template <typename Collective>
static void device_collective(Model* m, const Comm& group, Collective run) {
#ifdef MST_WITH_NCCL
    CUDA_CHECK(cudaEventRecord(m->collective_start, m->stream));
    CUDA_CHECK(cudaStreamWaitEvent(group.stream, m->collective_start, 0));
    run();
    CUDA_CHECK(cudaEventRecord(m->collective_done, group.stream));
    CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->collective_done, 0));
#else
    (void)group;
    run();
#endif
}

// --sp: S blocks of `block` elements, block j to group rank j, block i from group rank i
static void ulysses_all_to_all(Model* m, size_t block) {
    device_collective(m, m->par.sp_device, [&] {
        comm_all_to_all(m->par.sp_device, m->all_to_all_send, m->all_to_all_recv, block, COMM_BF16);
    });
}

// --sp: each received block's B x Tl rows of `width` elements (at `at` in the block: its q, k, v or output part)
// to their place in the whole sequences, heads = B x Tp x width: block i's rows are positions i Tl .. of each
static void blocks_to_sequences(Model* m, bf16* heads, size_t block, size_t at, int width) {
    const UlyssesShape& u = m->ulysses;
    size_t row = (size_t)u.Tl * width * 2;
    for (int i = 0; i < u.S; i++)
        CUDA_CHECK(cudaMemcpy2DAsync(heads + (size_t)i * u.Tl * width, (size_t)u.Tp * width * 2,
                                     m->all_to_all_recv + i * block + at, row, row, u.B, cudaMemcpyDeviceToDevice, m->stream));
}

// the inverse: positions i Tl .. of each sequence of heads into send block i, at `at`
static void sequences_to_blocks(Model* m, const bf16* heads, size_t block, size_t at, int width) {
    const UlyssesShape& u = m->ulysses;
    size_t row = (size_t)u.Tl * width * 2;
    for (int i = 0; i < u.S; i++)
        CUDA_CHECK(cudaMemcpy2DAsync(m->all_to_all_send + i * block + at, row, heads + (size_t)i * u.Tl * width,
                                     (size_t)u.Tp * width * 2, row, u.B, cudaMemcpyDeviceToDevice, m->stream));
}

// --sp: columns [column, column + width) of this rank's token-layout matrix x (N rows of x_width) to send block j
// at `at` (N x width), and the inverse from receive block j
static void columns_to_block(Model* m, const bf16* x, int x_width, size_t block, size_t at, int width, int j, int column) {
    CUDA_CHECK(cudaMemcpy2DAsync(m->all_to_all_send + j * block + at, (size_t)width * 2, x + column, (size_t)x_width * 2,
                                 (size_t)width * 2, m->N, cudaMemcpyDeviceToDevice, m->stream));
}
static void block_to_columns(Model* m, bf16* x, int x_width, size_t block, size_t at, int width, int j, int column) {
    CUDA_CHECK(cudaMemcpy2DAsync(x + column, (size_t)x_width * 2, m->all_to_all_recv + j * block + at, (size_t)width * 2,
                                 (size_t)width * 2, m->N, cudaMemcpyDeviceToDevice, m->stream));
}

// --sp, forward: q, k, v of this rank's tokens by one rank's matmuls (token layout, in the receive buffer, free
// until the all-to-all), group rank j's heads into send block j ([q_j | k_j | v_j]: query heads [j Hl, j Hl + Hl),
// the KV heads from kv_first(j)), the all-to-all, the received blocks into the whole sequences (head layout),
// RoPE at the sequences' positions, attention over them; then the output's blocks back into this rank's token
// layout, rank j's heads at columns j Hl hd.
static void ulysses_attention_forward(Model* m, const LayerActivationsGPU& a, const bf16* w) {
    const UlyssesShape& u = m->ulysses;
    const LayerOffsets& o = m->layout.layer;
    int N = m->N, C = m->config.d_model, Q = m->config.q_dim(), KV = m->config.kv_dim(), hd = u.hd;
    int Hl = u.Hl * hd, KVl = u.KVl * hd;
    cudaStream_t s = m->stream;
    bf16* q = m->all_to_all_recv;
    bf16* k = q + (size_t)N * Q;
    bf16* v = k + (size_t)N * KV;
    matmul_forward(q, a.attention_norm, w + o.q, N, C, Q, false, s);
    matmul_forward(k, a.attention_norm, w + o.k, N, C, KV, false, s);
    matmul_forward(v, a.attention_norm, w + o.v, N, C, KV, false, s);
    size_t block = (size_t)N * (Hl + 2 * KVl);
    for (int j = 0; j < u.S; j++) {
        columns_to_block(m, q, Q, block, 0, Hl, j, j * Hl);
        columns_to_block(m, k, KV, block, (size_t)N * Hl, KVl, j, u.kv_first(j) * hd);
        columns_to_block(m, v, KV, block, (size_t)N * (Hl + KVl), KVl, j, u.kv_first(j) * hd);
    }
    ulysses_all_to_all(m, block);
    blocks_to_sequences(m, a.q, block, 0, Hl);
    blocks_to_sequences(m, a.k, block, (size_t)N * Hl, KVl);
    blocks_to_sequences(m, a.v, block, (size_t)N * (Hl + KVl), KVl);
    rope_qk(a.q, a.k, m->rope_cos, m->rope_sin, u.B, u.Tp, u.Hl, u.KVl, hd, false, s);
    chosen_attention_forward(m, a.attention_heads, a.lse, a.q, a.k, a.v, u.B, u.Tp, u.Hl, u.KVl, m->doc_start, 0, u.Tp);
    size_t out_block = (size_t)N * Hl;
    sequences_to_blocks(m, a.attention_heads, out_block, 0, Hl);
    ulysses_all_to_all(m, out_block);
    for (int j = 0; j < u.S; j++) block_to_columns(m, a.attention_out, Q, out_block, 0, Hl, j, j * Hl);
}

// --sp, backward from the output's gradient (token layout, m->dattention_out) to dnorm and the q, k, v weight
// gradients: rank j's columns to it (all-to-all) into the whole sequences, attention backward, RoPE's, the dq,
// dk, dv blocks back (all-to-all) into this rank's token layout (in the send buffer, free again: N x (Q + 2 KV)
// fits), then one rank's matmuls. A replicated KV head's gradient (S > KV) arrives from S / KV ranks: the
// matmuls of each block accumulate instead.
static void ulysses_attention_backward(Model* m, const LayerActivationsGPU& a, const bf16* w, float* grad) {
    const UlyssesShape& u = m->ulysses;
    const LayerOffsets& o = m->layout.layer;
    int N = m->N, C = m->config.d_model, Q = m->config.q_dim(), KV = m->config.kv_dim(), hd = u.hd;
    int Hl = u.Hl * hd, KVl = u.KVl * hd;
    cudaStream_t s = m->stream;
    size_t out_block = (size_t)N * Hl, block = (size_t)N * (Hl + 2 * KVl);
    for (int j = 0; j < u.S; j++) columns_to_block(m, m->dattention_out, Q, out_block, 0, Hl, j, j * Hl);
    ulysses_all_to_all(m, out_block);
    blocks_to_sequences(m, m->dattention_heads, out_block, 0, Hl);
    chosen_attention_backward(m, m->dq, m->dk, m->dv, m->dattention_heads, a.q, a.k, a.v, a.attention_heads, a.lse, u.B, u.Tp, u.Hl,
                              u.KVl, m->doc_start, 0, u.Tp);
    rope_qk(m->dq, m->dk, m->rope_cos, m->rope_sin, u.B, u.Tp, u.Hl, u.KVl, hd, true, s);
    sequences_to_blocks(m, m->dq, block, 0, Hl);
    sequences_to_blocks(m, m->dk, block, (size_t)N * Hl, KVl);
    sequences_to_blocks(m, m->dv, block, (size_t)N * (Hl + KVl), KVl);
    ulysses_all_to_all(m, block);
    bool replicated = m->config.n_kv_head < u.S;
    bf16* dq = m->all_to_all_send;
    bf16* dk = dq + (size_t)N * Q;
    bf16* dv = dk + (size_t)N * KV;
    for (int j = 0; j < u.S; j++) {
        block_to_columns(m, dq, Q, block, 0, Hl, j, j * Hl);
        if (replicated) continue;
        block_to_columns(m, dk, KV, block, (size_t)N * Hl, KVl, j, u.kv_first(j) * hd);
        block_to_columns(m, dv, KV, block, (size_t)N * (Hl + KVl), KVl, j, u.kv_first(j) * hd);
    }
    matmul_backward_input(m->dnorm, dq, w + o.q, N, C, Q, false, s);
    if (!replicated) {
        matmul_backward_input(m->dnorm, dk, w + o.k, N, C, KV, true, s);
        matmul_backward_input(m->dnorm, dv, w + o.v, N, C, KV, true, s);
    }
    matmul_backward_weight(grad + o.q, dq, a.attention_norm, N, C, Q, s);
    if (!replicated) {
        matmul_backward_weight(grad + o.k, dk, a.attention_norm, N, C, KV, s);
        matmul_backward_weight(grad + o.v, dv, a.attention_norm, N, C, KV, s);
        return;
    }
    for (int j = 0; j < u.S; j++) {  // KVl = 1: block j's KV head kv_first(j)
        const bf16* dk_j = m->all_to_all_recv + j * block + (size_t)N * Hl;
        const bf16* dv_j = dk_j + (size_t)N * KVl;
        size_t rows = (size_t)u.kv_first(j) * hd * C;
        matmul_backward_input(m->dnorm, dk_j, w + o.k + rows, N, C, KVl, true, s);
        matmul_backward_input(m->dnorm, dv_j, w + o.v + rows, N, C, KVl, true, s);
        matmul_backward_weight(grad + o.k + rows, dk_j, a.attention_norm, N, C, KVl, s);
        matmul_backward_weight(grad + o.v + rows, dv_j, a.attention_norm, N, C, KVl, s);
    }
}

// gate and up for one MLP mini-sequence [start, start + n): one matmul over the contiguous gate and up
// weights (2F x C) gives rows [gate | up]; then act = silu(gate) * up
static void mlp_hidden_forward(Model* m, const bf16* w, const LayerActivationsGPU& a, int start, int n) {
    int C = m->config.d_model, F = m->config.ffn_dim;
    matmul_forward(a.gate_up, a.mlp_norm + (size_t)start * C, w + m->layout.layer.gate, n, C, 2 * F, false, m->stream);
    swiglu_forward(a.act, a.gate_up, a.gate_up + F, n, F, 2 * F, m->stream);
}

// Layer l from its input to the MLP's input (mlp_norm); with with_mlp, also the MLP over mini-sequences
// into the layer's output, layer_input(l + 1), which goes to the host (offload) when backward follows.
// Backward's recomputation stops before the MLP: the MLP backward recomputes its own mini-sequences.
static void layer_forward(Model* m, int l, bool with_mlp, bool backward_follows = false) {
    const ModelConfig& c = m->config;
    const LayerOffsets& o = m->layout.layer;
    int N = m->N, C = c.d_model, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim, hd = c.head_dim();
    const bf16* w = m->params + m->layout.layer_start(l);
    const bf16* x = layer_input(m, l);
    LayerActivationsGPU a = layer_activations(m, l);
    cudaStream_t s = m->stream;
    nvtx_push(with_mlp ? "layer %d forward" : "layer %d recompute", l);
    if (attention_in_blocks(m)) {
        attention_blocks_forward(m, a, x, w);
    } else {
        rmsnorm_forward(a.attention_norm, a.attention_rstd, x, w + o.input_norm, N, C, c.norm_eps, s);
        if (m->ulysses.S > 1) {
            ulysses_attention_forward(m, a, w);
        } else {
            matmul_forward(a.q, a.attention_norm, w + o.q, N, C, Q, false, s);
            matmul_forward(a.k, a.attention_norm, w + o.k, N, C, KV, false, s);
            matmul_forward(a.v, a.attention_norm, w + o.v, N, C, KV, false, s);
            rope_qk(a.q, a.k, m->rope_cos, m->rope_sin, m->B, m->T, c.n_head, c.n_kv_head, hd, false, s);
            if (with_mlp) kept_attention_before_write(m, l);
            if (with_mlp || !m->plan.options.keep_attention) {  // --keep-attention: backward fetched it instead
                chosen_attention_forward(m, a.attention_out, a.lse, a.q, a.k, a.v, m->B, m->T, c.n_head, c.n_kv_head, m->doc_start, 0, m->T);
            }
            if (backward_follows) kept_attention_store(m, l);
        }
        // attention_residual = x + attention_out Wo^T (x read in the matmul's epilogue: no copy)
        matmul_forward_add(a.attention_residual, x, a.attention_out, w + o.o, N, Q, C, s);
    }
    rmsnorm_forward(a.mlp_norm, a.mlp_rstd, a.attention_residual, w + o.post_attention_norm, N, C, c.norm_eps, s);
    if (with_mlp) {
        bf16* out = layer_input(m, l + 1);
        offload_before_output(m, l);
        int mlp_chunk_tokens = m->plan.mlp_chunk_tokens;
        for (int start = 0; start < N; start += mlp_chunk_tokens) {
            int n = std::min(mlp_chunk_tokens, N - start);
            nvtx_push("MLP mini-sequence %d", start / mlp_chunk_tokens);
            mlp_hidden_forward(m, w, a, start, n);
            // out = attention_residual + act Wdown^T, a mini-sequence at a time
            matmul_forward_add(out + (size_t)start * C, a.attention_residual + (size_t)start * C, a.act, w + o.down, n, F, C, s);
            nvtxRangePop();
        }
        if (backward_follows) offload_store(m, l + 1);
    }
    nvtxRangePop();
}

static void apply_pending_groups(Model* m, int through);

// embedding, the layers, the final norm (the LM head's input). When backward follows, the pending update is
// applied group by group just before forward reads the group (its index in forward order: the embedding 0,
// layer l 1 + l, then the final norm and the LM head), and offloaded inputs go to the host; any other pass
// (validation, samples, test losses) has applied the update first and stores nothing.
static void model_forward(Model* m, bool backward_follows) {
    int C = m->config.d_model;
    if (m->checkpoints.offload.h > 0) {  // a forward-only pass (validation) may have left copies out of the staging in flight
        profile_phase(PHASE_HOST_COPIES, m->stream);
        CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->stored[0], 0));
        CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->stored[1], 0));
    }
    if (backward_follows) apply_pending_groups(m, 0);
    embedding_forward(layer_input(m, 0), m->inputs, m->params + m->layout.embedding, m->N, C, m->stream);
    if (backward_follows) offload_store(m, 0);
    for (int l = 0; l < m->config.n_layer; l++) {
        if (backward_follows) apply_pending_groups(m, 1 + l);
        layer_forward(m, l, true, backward_follows);
    }
    if (backward_follows) apply_pending_groups(m, INT_MAX);
    rmsnorm_forward(m->final_norm, m->final_rstd, layer_input(m, m->config.n_layer), m->params + m->layout.final_norm,
                    m->N, C, m->config.norm_eps, m->stream);
}

// LM head + cross-entropy, one mini-sequence at a time: logits (n_lm x V x 2 bytes), per-token losses,
// the logits' gradient in place, then at once dnorm = dlogits W (writes) and lm_head_grad += dlogits^T h.
// lm_head_grad null: losses only (validation).
static void lmhead_forward_backward(Model* m, float grad_scale, float* lm_head_grad) {
    int N = m->N, C = m->config.d_model, V = m->config.vocab_size;
    const bf16* w = m->params + m->layout.lm_head;
    int lmhead_chunk_tokens = m->plan.lmhead_chunk_tokens;
    for (int start = 0; start < N; start += lmhead_chunk_tokens) {
        int n = std::min(lmhead_chunk_tokens, N - start);
        const bf16* h = m->final_norm + (size_t)start * C;
        nvtx_push("LM-head mini-sequence %d", start / lmhead_chunk_tokens);
        matmul_forward(m->logits, h, w, n, C, V, false, m->stream);
        crossentropy_forward_backward(m->logits, m->losses + start, m->targets + start, n, V, grad_scale, m->stream);
        if (lm_head_grad) {
            matmul_backward_input(m->dnorm + (size_t)start * C, m->logits, w, n, C, V, false, m->stream);
            matmul_backward_weight(lm_head_grad, m->logits, h, n, C, V, m->stream);
        }
        nvtxRangePop();
    }
}

// the sum of the per-token losses (target -1 is not counted; its loss is 0); synchronizes the stream
static double summed_loss(Model* m) {
    std::vector<float> losses(m->N);
    profile_phase(PHASE_HOST_COPIES, m->stream);
    CUDA_CHECK(cudaMemcpyAsync(losses.data(), m->losses, (size_t)m->N * 4, cudaMemcpyDeviceToHost, m->stream));
    CUDA_CHECK(cudaStreamSynchronize(m->stream));
    double sum = 0.0;
    for (float x : losses) sum += x;
    return sum;
}

static int counted_targets(const int* targets, size_t count) {
    int counted = 0;
    for (size_t n = 0; n < count; n++) counted += targets[n] >= 0;
    return counted;
}

// This rank's tokens of B rows of T: with --sp, positions [j Tl, j Tl + Tl) of each row (group rank j), those
// past T `pad`; on one rank, the rows. Positions 0 .. Tp - 1 of each row with first 0, Tl = Tp (the whole
// sequences, padded).
static std::vector<int> sequence_block(const Model* m, const int* rows, int first, int Tl, int pad) {
    std::vector<int> block((size_t)m->B * Tl);
    for (int b = 0; b < m->B; b++)
        for (int t = 0; t < Tl; t++)
            block[(size_t)b * Tl + t] = first + t < m->T ? rows[(size_t)b * m->T + first + t] : pad;
    return block;
}
static std::vector<int> rank_block(const Model* m, const int* rows, int pad) {
    return sequence_block(m, rows, m->par.sp_rank() * m->ulysses.Tl, m->ulysses.Tl, pad);
}

// B rows of T tokens (inputs, targets): this rank's block of them to the device, and with --doc-mask the
// document starts of the whole sequences; returns the block's counted targets (padding has target -1)
static int upload_tokens(Model* m, const int* input_rows, const int* target_rows) {
    std::vector<int> inputs = rank_block(m, input_rows, 0), targets = rank_block(m, target_rows, -1);
    if (!bucket_tokens(&m->buckets, inputs.data(), m->N, m->config.vocab_size))
        error_exit("an input token is outside [0, " + std::to_string(m->config.vocab_size) + ")");
    profile_phase(PHASE_HOST_COPIES, m->stream);
    CUDA_CHECK(cudaMemcpyAsync(m->inputs, inputs.data(), (size_t)m->N * 4, cudaMemcpyHostToDevice, m->stream));
    CUDA_CHECK(cudaMemcpyAsync(m->targets, targets.data(), (size_t)m->N * 4, cudaMemcpyHostToDevice, m->stream));
    CUDA_CHECK(cudaMemcpyAsync(m->token_buckets, m->buckets.table.data(), m->buckets.table.size() * 4,
                               cudaMemcpyHostToDevice, m->stream));
    std::vector<int> sequences;
    if (m->sequence_inputs) {  // --sp: the starts over the whole sequences, from their inputs
        sequences = sequence_block(m, input_rows, 0, m->ulysses.Tp, 0);
        CUDA_CHECK(cudaMemcpyAsync(m->sequence_inputs, sequences.data(), sequences.size() * 4, cudaMemcpyHostToDevice, m->stream));
        document_starts(m->doc_start, m->sequence_inputs, m->B, m->ulysses.Tp, m->bos_token, m->stream);
    } else if (m->doc_start) {
        document_starts(m->doc_start, m->inputs, m->B, m->T, m->bos_token, m->stream);
    }
    CUDA_CHECK(cudaStreamSynchronize(m->stream));  // the host arrays may change after we return
    return counted_targets(targets.data(), m->N);
}

static void model_apply_pending_update(Model* m);

// the loss of a batch, forward only (after any pending update: the weights as trained so far)
static float model_loss(Model* m, const int* inputs, const int* targets) {
    model_apply_pending_update(m);
    double counted = comm_sum_scalar(m->par.sp_host, upload_tokens(m, inputs, targets));  // --sp: the whole rows'
    model_forward(m, false);
    lmhead_forward_backward(m, 1.f, nullptr);
    double loss_sum = comm_sum_scalar(m->par.sp_host, summed_loss(m));
    return counted > 0 ? (float)(loss_sum / counted) : 0.f;
}

// ----------------------------------------------------------------------------
// optimizer

// Where AdamW finds the m and v of parameters from `begin` on: the state regions (begin = m->shard_begin), or a
// --state-offload staging slot holding a group's state (begin = the group's offset)
struct StateView { void* m; void* v; size_t begin; };
static StateView state_on_card(const Model* m) { return {m->adam_m, m->adam_v, m->shard_begin}; }

// AdamW over the parameters [offset, offset + count) (whole tensors, or ZeRO-1's shard, which may cut two),
// whose gradient (fp32, or bf16 when held in bf16) starts at grad, their m and v where `at` says. Weight decay on
// 2-D tensors only. Each tensor's stochastic rounding gets its own seed from (seed, step, the tensor's offset) and
// each element its index in the tensor, so a shard's piece of a tensor (or a group's) gets the bits of one update.
template <typename G>
static void adamw_group(Model* m, size_t offset, size_t count, const G* grad, float lr, const StateView& at) {
    const OptimizerSettings& o = m->optimizer;
    int t = m->updates_applied + 1;
    nvtxRangePushA("AdamW");
    for (const ParameterTensor& tensor : m->tensors) {
        size_t begin = std::max(tensor.offset, offset), end = std::min(tensor.offset + tensor.rows * tensor.cols, offset + count);
        if (begin >= end) continue;
        size_t n = end - begin, state = begin - at.begin;
        const G* g = grad + (begin - offset);
        float decay = tensor.rows > 1 ? o.weight_decay : 0.f;
        uint64_t seed_state = m->seed ^ ((uint64_t)t << 40) ^ tensor.offset;
        unsigned int seed = (unsigned int)splitmix64(&seed_state);
        float* master = m->master ? m->master + (begin - m->shard_begin) : nullptr;
        if (m->plan.options.bf16_optimizer_state) {
            adamw_update(m->params + begin, master, g, (bf16*)at.m + state, (bf16*)at.v + state, n, t, lr,
                         o.beta1, o.beta2, o.eps, decay, 1.f, m->clip_scale, seed, m->stream, begin - tensor.offset);
        } else {
            adamw_update(m->params + begin, master, g, (float*)at.m + state, (float*)at.v + state, n, t, lr,
                         o.beta1, o.beta2, o.eps, decay, 1.f, m->clip_scale, seed, m->stream, begin - tensor.offset);
        }
    }
    nvtxRangePop();
}

// --state-offload: AdamW m and v in pinned host memory (m for the shard, then v). An update takes the groups in
// forward order (j = 0, 1, ..., so a fused update's groups come as the forward reads them); group j's state passes
// through staging slot j % 2: the copy stream fetches it one group ahead (so the fetch overlaps the AdamW before),
// AdamW waits for state_in[j % 2], and the copy stream writes the slot back once AdamW has run. The copy stream is
// in order, so group j + 2's fetch into the slot follows that write-back: only events order the two streams, the
// host never waits per group.
static GradientGroup forward_group(const Model* m, int j) { return m->groups[m->groups.size() - 1 - j]; }

// staging slot j % 2 as the state of the group at `offset`: [m | v], each of the largest group's bytes
static StateView state_slot(const Model* m, int j, size_t offset) {
    size_t array_bytes = m->plan.bytes[REGION_STATE_STAGING] / 4;
    char* slot = m->state_staging + (size_t)(j % 2) * 2 * array_bytes;
    return {slot, slot + array_bytes, offset};
}

// group j's m and v between staging slot j % 2 and the host copy (two copies; `done` marks the second's end)
static void state_copy(Model* m, int j, bool to_host, cudaEvent_t done) {
    GradientGroup g = forward_group(m, j);
    size_t element = m->plan.options.bf16_optimizer_state ? 2 : 4;
    StateView slot = state_slot(m, j, g.offset);
    void* device[2] = {slot.m, slot.v};
    for (int i = 0; i < 2; i++)
        copy_with_host(m, device[i], m->host_state + (i * m->shard + g.offset - m->shard_begin) * element, g.count * element,
                       to_host, done);
}

// AdamW for group j of an update (forward order), its gradient at grad: the state in its regions, or streamed
// through a staging slot (--state-offload)
template <typename G>
static void update_group(Model* m, int j, const G* grad, float lr) {
    GradientGroup g = forward_group(m, j);
    if (!m->host_state) {
        adamw_group(m, g.offset, g.count, grad, lr, state_on_card(m));
        return;
    }
    if (j == 0) state_copy(m, 0, false, m->state_in[0]);
    if (j + 1 < (int)m->groups.size()) state_copy(m, j + 1, false, m->state_in[(j + 1) % 2]);
    profile_phase(PHASE_HOST_COPIES, m->stream);  // waiting here is a copy not hidden
    CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->state_in[j % 2], 0));
    adamw_group(m, g.offset, g.count, grad, lr, state_slot(m, j, g.offset));
    state_copy(m, j, true, nullptr);  // read back only by a later fetch on the same stream, or after a synchronize
}

// Not fused: this rank's shard of the gradient, summed over the ranks after reduce_gradients_for_norm: ZeRO-1 (and one
// rank) its place in the whole gradient, ZeRO-2 its own buffer
static float* shard_gradient(const Model* m) { return m->grad_shard ? m->grad_shard : m->grads + (size_t)m->par.rank * m->shard; }

// After backward, not fused: the squares of the gradient into the global norm's partials. ZeRO-1 (several
// ranks): first each rank's shard of the gradient summed over the ranks (reduce-scatter in place, into its
// block of m->grads); each rank's partials of its shard go to slot `world`, then all of them to slots
// 0 .. world-1 (all-gather), so every rank sums the same partials in the same order: the same norm, exactly.
// ZeRO-2: the shard is summed over the ranks already (zero2_reduce_group).
static void reduce_gradients_for_norm(Model* m) {
    const Parallel& par = m->par;
    if (par.world == 1) {
        global_norm_squared_partial(m->grad_norm_scratch, m->grad_norm_slots++, m->grads, m->layout.total, m->stream);
        return;
    }
    float* shard_grad = shard_gradient(m);
    if (!m->grad_shard)
        device_collective(m, par.device, [&] { comm_reduce_scatter(par.device, m->grads, shard_grad, m->shard, COMM_F32); });
    double* partials = (double*)m->grad_norm_scratch;
    global_norm_squared_partial(partials, par.world, shard_grad, m->shard, m->stream);
    device_collective(m, par.device, [&] {
        comm_all_gather(par.device, partials + (size_t)par.world * GLOBAL_NORM_BLOCKS, partials, GLOBAL_NORM_BLOCKS, COMM_F64);
    });
    m->grad_norm_slots = par.world;
}

// Not fused: this rank's shard of the update (all of it on one rank; --state-offload, one GPU: group by group,
// the state streamed through), then ZeRO-1's all-gather of the updated bf16 parameters (in place: each rank's
// block of m->params is its shard)
static void apply_update_after_backward(Model* m, float lr) {
    if (m->host_state) {
        for (int j = 0; j < (int)m->groups.size(); j++) update_group(m, j, m->grads + forward_group(m, j).offset, lr);
    } else {
        adamw_group(m, m->shard_begin, m->shard_end - m->shard_begin, shard_gradient(m), lr, state_on_card(m));
    }
    if (m->par.world > 1)
        device_collective(m, m->par.device, [&] {
            comm_all_gather(m->par.device, m->params + (size_t)m->par.rank * m->shard, m->params, m->shard, COMM_BF16);
        });
}

// Gradient groups: the LM head, the final norm, each layer, the embedding (the LM head's when tied).
// Fused, the groups alternate between two slots of the gradient region (backward's i-th group in slot i % 2),
// so a group's copy to the host on the copy stream overlaps the next group's backward, and in the update a
// group's fetch overlaps the one before's AdamW and forward. The tied embedding's gradient lives whole from
// the LM head's backward to the embedding's, before the two slots (its own slot, 2, for the events). Not
// fused, every gradient lives at its parameter's place.
static const int TIED_EMBEDDING_SLOT = 2;
static int group_slot(const Model* m, size_t offset) {
    if (m->config.tied_embeddings && offset == m->layout.embedding) return TIED_EMBEDDING_SLOT;
    for (size_t i = 0; i < m->groups.size(); i++)
        if (m->groups[i].offset == offset) return (int)(i % 2);
    fprintf(stderr, "internal error: no gradient group at offset %zu\n", offset);
    exit(1);
}
static float* group_gradient(const Model* m, size_t offset) {
    if (!m->plan.options.fused_optimizer && !m->grad_shard) return m->grads + offset;
    const ModelConfig& c = m->config;
    size_t VC = (size_t)c.vocab_size * c.d_model;
    int slot = group_slot(m, offset);
    if (slot == TIED_EMBEDDING_SLOT) return m->grads;
    return m->grads + (c.tied_embeddings ? VC : 0) + (slot == 1 ? m->gradient_slots.elements[0] : 0);
}

// Held in bf16 (--held-gradients, default with -a bf16): half the pinned host bytes and half the PCIe bytes.
// Each group's fp32 gradient is rounded on the card into its slot's bf16 staging copy (the same place in
// REGION_GRADIENT_STAGING as the slot's in REGION_GRADIENTS) and copied from there; it comes back there, and
// AdamW reads it there. Rounding: to nearest even, not stochastic. The held gradient is read once, by one
// update, never accumulated into across steps, so stochastic rounding's unbiasedness (which the AdamW state
// needs: it adds a small change to itself every step) buys nothing, while nearest-even halves the error (2^-9
// relative at most) and needs no random bits. With gradient accumulation (-d) each micro-batch's partial sum is
// rounded too, so the held sum carries up to one such error per micro-batch. The global norm is taken from the
// rounded values (gradient_to_bf16, in the same pass): the clip is exact for the gradient AdamW applies.
static bool held_in_bf16(const Model* m) { return m->grad_staging != nullptr; }
static size_t held_bytes(const Model* m) { return (size_t)m->plan.options.held_gradient_bytes; }
static void* held_gradient(const Model* m, size_t offset) { return (char*)m->host_grads + offset * held_bytes(m); }
static bf16* group_staging(const Model* m, size_t offset) { return m->grad_staging + (group_gradient(m, offset) - m->grads); }
// what crosses PCIe for a group: its bf16 staging copy, or its fp32 gradient
static void* group_on_card(const Model* m, size_t offset) {
    return held_in_bf16(m) ? (void*)group_staging(m, offset) : (void*)group_gradient(m, offset);
}

// the copy stream fetches a group's held gradient into its slot (its staging copy in bf16); gradient_in[slot]
// marks its arrival
static void fetch_group_gradient(Model* m, size_t offset, size_t count) {
    // after the compute point: the slot's last reader (the AdamW two groups back) has run
    copy_after_compute(m, group_on_card(m, offset), held_gradient(m, offset), count * held_bytes(m), cudaMemcpyHostToDevice,
                       m->gradient_in[group_slot(m, offset)]);
}

// --zero 2: a group's gradient (this micro-batch's, in its slot) is complete: summed over the ranks in place
// (all-reduce), then the part in this rank's shard added into m->grad_shard (zeroed at the step's start), so the
// slot is free for the group after the next. The compute stream waits for the all-reduce (device_collective):
// not overlapped with the next group's backward yet.
static void zero2_reduce_group(Model* m, size_t offset, size_t count) {
    float* grad = group_gradient(m, offset);
    const Parallel& par = m->par;
    device_collective(m, par.device, [&] { comm_all_reduce(par.device, grad, grad, count, COMM_F32); });
    size_t begin = std::max(offset, m->shard_begin), end = std::min(offset + count, m->shard_end);
    if (begin < end) float_accumulate(m->grad_shard + (begin - m->shard_begin), grad + (begin - offset), end - begin, m->stream);
}

// A group's backward begins. Fused: once its slot's last copy to the host has left, its gradient buffer is
// zeroed in the first micro-batch, and in a later one holds the sum so far, fetched back from its host copy.
// Not fused: backward zeroed them all before the first micro-batch.
static float* begin_group(Model* m, size_t offset, size_t count, bool first_micro_batch) {
    float* grad = group_gradient(m, offset);
    if (m->grad_shard) {  // ZeRO-2: the slot's last group was all-reduced and taken into the shard before now
        profile_phase(PHASE_MEMORY_BOUND, m->stream);
        CUDA_CHECK(cudaMemsetAsync(grad, 0, count * 4, m->stream));
        return grad;
    }
    if (!m->plan.options.fused_optimizer) return grad;
    int slot = group_slot(m, offset);
    profile_phase(PHASE_HOST_COPIES, m->stream);  // waiting here is a copy not hidden
    CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->gradient_out[slot], 0));
    if (first_micro_batch) {
        profile_phase(PHASE_MEMORY_BOUND, m->stream);
        CUDA_CHECK(cudaMemsetAsync(grad, 0, count * 4, m->stream));
    } else {
        fetch_group_gradient(m, offset, count);
        CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->gradient_in[slot], 0));
        if (held_in_bf16(m)) bf16_to_float(grad, group_staging(m, offset), count, m->stream);
    }
    return grad;
}

// A group's gradient is complete for this micro-batch. Fused: held in bf16, it is rounded into its staging
// copy; after the last micro-batch its share of the global norm is taken (of the rounded values when held in
// bf16); then the copy stream sends it to its host copy (count x 2 or 4 bytes over PCIe) while backward goes on;
// gradient_out[slot] marks it gone. Not fused: nothing until backward has finished.
static void end_group(Model* m, size_t offset, size_t count, bool last_micro_batch) {
    if (m->grad_shard) return zero2_reduce_group(m, offset, count);
    if (!m->plan.options.fused_optimizer) return;
    const float* grad = group_gradient(m, offset);
    int norm_slot = last_micro_batch ? m->grad_norm_slots++ : -1;
    if (held_in_bf16(m)) gradient_to_bf16(group_staging(m, offset), m->grad_norm_scratch, norm_slot, grad, count, m->stream);
    else if (norm_slot >= 0) global_norm_squared_partial(m->grad_norm_scratch, norm_slot, grad, count, m->stream);
    copy_after_compute(m, held_gradient(m, offset), group_on_card(m, offset), count * held_bytes(m), cudaMemcpyDeviceToHost,
                       m->gradient_out[group_slot(m, offset)]);
}

// Fused: the last step's update, if pending, is applied group by group in the order forward reads them
// (m->groups reversed: embedding, layers 0 .. L-1, final norm, LM head), each group's gradient fetched from
// the host and scaled by that step's clip scale (m->clip_scale, still on the device). A training forward
// applies each group just before it reads it (through = its index in that order), so the fetch of the next
// group overlaps this one's AdamW and forward; anything else that reads the weights (validation, samples,
// checkpoints, exports, the end) applies the rest first (model_apply_pending_update).
static void apply_pending_groups(Model* m, int through) {
    if (!m->update_pending) return;
    int n = (int)m->groups.size();
    for (; m->groups_applied <= std::min(through, n - 1); m->groups_applied++) {
        int j = m->groups_applied;
        if (j == 0) fetch_group_gradient(m, forward_group(m, 0).offset, forward_group(m, 0).count);
        if (j + 1 < n) fetch_group_gradient(m, forward_group(m, j + 1).offset, forward_group(m, j + 1).count);
        GradientGroup g = forward_group(m, j);
        profile_phase(PHASE_HOST_COPIES, m->stream);
        CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->gradient_in[group_slot(m, g.offset)], 0));
        if (held_in_bf16(m)) update_group(m, j, group_staging(m, g.offset), m->pending_lr);
        else update_group(m, j, group_gradient(m, g.offset), m->pending_lr);
    }
    if (m->groups_applied < n) return;
    m->updates_applied++;
    m->update_pending = false;
    m->groups_applied = 0;
}

static void model_apply_pending_update(Model* m) {
    if (!m->update_pending) return;
    apply_pending_groups(m, (int)m->groups.size() - 1);
    CUDA_CHECK(cudaStreamSynchronize(m->stream));
}

// ----------------------------------------------------------------------------
// backward

// Layer l's backward; dresidual holds the gradient of the layer's output and leaves holding that of its
// input. grad is the layer's gradient (layer layout), accumulated into.
static void layer_backward(Model* m, int l, float* grad) {
    const ModelConfig& c = m->config;
    const LayerOffsets& o = m->layout.layer;
    int N = m->N, C = c.d_model, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim, hd = c.head_dim();
    const bf16* w = m->params + m->layout.layer_start(l);
    const bf16* x = layer_input(m, l);
    cudaStream_t s = m->stream;
    offload_before_backward(m, l);
    kept_attention_before_backward(m, l);
    segment_before_backward(m, l);
    if (m->plan.options.recompute) layer_forward(m, l, false);
    LayerActivationsGPU a = layer_activations(m, l);
    nvtx_push("layer %d backward", l);
    // MLP, one mini-sequence at a time; its hidden activations are recomputed unless forward kept them
    // all (one mini-sequence, no recomputation)
    bool hidden_kept = !m->plan.options.recompute && m->plan.mlp_chunk_tokens >= N;
    int mlp_chunk_tokens = m->plan.mlp_chunk_tokens;
    for (int start = 0; start < N; start += mlp_chunk_tokens) {
        int n = std::min(mlp_chunk_tokens, N - start);
        const bf16* dout = m->dresidual + (size_t)start * C;
        nvtx_push("MLP mini-sequence %d backward", start / mlp_chunk_tokens);
        if (!hidden_kept) mlp_hidden_forward(m, w, a, start, n);
        matmul_backward_input(m->dact, dout, w + o.down, n, F, C, false, s);
        matmul_backward_weight(grad + o.down, dout, a.act, n, F, C, s);
        swiglu_backward(m->dgate_up, m->dgate_up + F, m->dact, a.gate_up, a.gate_up + F, n, F, 2 * F, s);
        matmul_backward_input(m->dnorm + (size_t)start * C, m->dgate_up, w + o.gate, n, C, 2 * F, false, s);
        matmul_backward_weight(grad + o.gate, m->dgate_up, a.mlp_norm + (size_t)start * C, n, C, 2 * F, s);
        nvtxRangePop();
    }
    rmsnorm_backward(m->dresidual, grad + o.post_attention_norm, m->norm_scratch, m->dnorm, a.attention_residual,
                     w + o.post_attention_norm, a.mlp_rstd, N, C, s);
    // attention
    if (attention_in_blocks(m)) {
        attention_blocks_backward(m, a, x, w, grad);
    } else {
        matmul_backward_input(m->dattention_out, m->dresidual, w + o.o, N, Q, C, false, s);
        matmul_backward_weight(grad + o.o, m->dresidual, a.attention_out, N, Q, C, s);
        if (m->ulysses.S > 1) {
            ulysses_attention_backward(m, a, w, grad);
        } else {
            chosen_attention_backward(m, m->dq, m->dk, m->dv, m->dattention_out, a.q, a.k, a.v, a.attention_out, a.lse, m->B, m->T,
                                      c.n_head, c.n_kv_head, m->doc_start, 0, m->T);
            rope_qk(m->dq, m->dk, m->rope_cos, m->rope_sin, m->B, m->T, c.n_head, c.n_kv_head, hd, true, s);
            matmul_backward_input(m->dnorm, m->dq, w + o.q, N, C, Q, false, s);
            matmul_backward_input(m->dnorm, m->dk, w + o.k, N, C, KV, true, s);
            matmul_backward_input(m->dnorm, m->dv, w + o.v, N, C, KV, true, s);
            matmul_backward_weight(grad + o.q, m->dq, a.attention_norm, N, C, Q, s);
            matmul_backward_weight(grad + o.k, m->dk, a.attention_norm, N, C, KV, s);
            matmul_backward_weight(grad + o.v, m->dv, a.attention_norm, N, C, KV, s);
        }
    }
    rmsnorm_backward(m->dresidual, grad + o.input_norm, m->norm_scratch, m->dnorm, x, w + o.input_norm,
                     a.attention_rstd, N, C, s);
    nvtxRangePop();
}

// One training step: forward and backward over micro_batches micro-batches of B rows of T tokens (inputs and
// targets one after another; with --sp each rank takes its block of them), the gradient of the loss averaged over the counted targets of all of them,
// then (apply_update) the AdamW update with lr, clipped with this step's norm. Fused, the update is
// pending until the weights are next read (model_apply_pending_update); not fused, it is applied here.
// A step whose loss or norm is not finite applies no update (*skipped). With apply_update false the
// gradient is left in m->grads (not fused) or m->host_grads (fused) for tests.
// Returns the mean loss; *grad_norm gets this step's global gradient norm (before clipping).
static float model_step(Model* m, const int* inputs, const int* targets, float lr, bool apply_update, float* grad_norm,
                        int micro_batches = 1, bool* skipped = nullptr) {
    const ModelConfig& c = m->config;
    const ParameterLayout& p = m->layout;
    bool fused = m->plan.options.fused_optimizer;
    size_t VC = (size_t)c.vocab_size * c.d_model, N = m->N, rows = (size_t)m->B * m->T;
    profile_step_begin();  // the last step's update, if pending, is applied by the first forward, group by group
    // the loss is the mean over the counted targets of every rank's batches (or blocks of them)
    int counted_here = 0;
    for (int micro = 0; micro < micro_batches; micro++)
        counted_here += counted_targets(rank_block(m, targets + micro * rows, -1).data(), N);
    double counted = comm_sum_scalar(m->par.host, counted_here);
    float grad_scale = counted > 0 ? (float)(1.0 / counted) : 0.f;
    profile_phase(PHASE_MEMORY_BOUND, m->stream);
    if (!fused) CUDA_CHECK(cudaMemsetAsync(m->grads, 0, m->plan.bytes[REGION_GRADIENTS], m->stream));
    m->grad_norm_slots = 0;
    double loss_sum = 0.0;
    for (int micro = 0; micro < micro_batches; micro++) {
        bool first = micro == 0, last = micro == micro_batches - 1;
        upload_tokens(m, inputs + micro * rows, targets + micro * rows);
        model_forward(m, true);
        // LM head + loss; the tied LM head's gradient is the embedding's, complete after the embedding backward
        float* lm_head_grad = begin_group(m, p.lm_head, VC, first);
        lmhead_forward_backward(m, grad_scale, lm_head_grad);
        if (!c.tied_embeddings) end_group(m, p.lm_head, VC, last);
        // final norm: dresidual = its input's gradient
        profile_phase(PHASE_MEMORY_BOUND, m->stream);
        CUDA_CHECK(cudaMemsetAsync(m->dresidual, 0, N * c.d_model * 2, m->stream));
        float* final_norm_grad = begin_group(m, p.final_norm, c.d_model, first);
        rmsnorm_backward(m->dresidual, final_norm_grad, m->norm_scratch, m->dnorm, layer_input(m, c.n_layer),
                         m->params + p.final_norm, m->final_rstd, m->N, c.d_model, m->stream);
        end_group(m, p.final_norm, c.d_model, last);
        for (int l = c.n_layer - 1; l >= 0; l--) {
            layer_backward(m, l, begin_group(m, p.layer_start(l), p.layer.count, first));
            end_group(m, p.layer_start(l), p.layer.count, last);
        }
        float* embedding_grad = c.tied_embeddings ? lm_head_grad : begin_group(m, p.embedding, VC, first);
        embedding_backward(embedding_grad, m->dresidual, m->token_buckets, m->buckets.count, m->N, c.d_model, m->stream);
        end_group(m, p.embedding, VC, last);
        loss_sum += summed_loss(m);  // synchronizes the stream
    }

    loss_sum = comm_sum_scalar(m->par.host, loss_sum);
    // the global norm: fused, of the groups' partials; not fused, of the whole gradient (summed over the ranks)
    if (!fused) reduce_gradients_for_norm(m);
    global_norm_finish(m->grad_norm, m->clip_scale, m->grad_norm_scratch, m->grad_norm_slots,
                       m->optimizer.grad_clip, m->stream);
    CUDA_CHECK(cudaMemcpyAsync(grad_norm, m->grad_norm, 4, cudaMemcpyDeviceToHost, m->stream));
    CUDA_CHECK(cudaStreamSynchronize(m->stream));
    float loss = counted > 0 ? (float)(loss_sum / counted) : 0.f;
    bool finite = std::isfinite(loss) && std::isfinite(*grad_norm);
    if (skipped) *skipped = !finite;
    if (apply_update && finite) {
        if (fused) {
            m->update_pending = true;
            m->pending_lr = lr;
        } else {
            apply_update_after_backward(m, lr);
            m->updates_applied++;
        }
    }
    if (apply_update) m->steps_done++;
    if (!apply_update) CUDA_CHECK(cudaStreamSynchronize(m->copy_stream));  // the held gradients are on the host
    profile_step_end();
    return loss;
}

// --random-tokens: batch `index` of seeded uniform tokens; each row is T + 1 tokens, inputs its first
// T, targets its last T
static void random_batch(int* inputs, int* targets, int B, int T, int V, uint64_t seed, uint64_t index) {
    for (int b = 0; b < B; b++) {
        uint64_t state = seed ^ ((index * B + b + 1) * 0x9e3779b97f4a7c15ull);
        int previous = (int)(splitmix64(&state) % V);
        for (int t = 0; t < T; t++) {
            int next = (int)(splitmix64(&state) % V);
            inputs[b * T + t] = previous;
            targets[b * T + t] = next;
            previous = next;
        }
    }
}

// ----------------------------------------------------------------------------
// host copies: checkpoints, Hugging Face import and export, generation. The host buffers are plain
// std::vectors; the device arena is only copied to and from.

static std::vector<unsigned char> download_bytes(const void* device, size_t bytes) {
    std::vector<unsigned char> host(bytes);
    CUDA_CHECK(cudaMemcpy(host.data(), device, bytes, cudaMemcpyDeviceToHost));
    return host;
}

// weights from fp32 on the host: bf16 (round to nearest) into the parameters, fp32 into master weights
static void model_set_parameters(Model* m, const std::vector<float>& params) {
    std::vector<bf16> rounded(params.size());
    for (size_t i = 0; i < params.size(); i++) rounded[i] = __float2bfloat16(params[i]);
    CUDA_CHECK(cudaMemcpy(m->params, rounded.data(), rounded.size() * 2, cudaMemcpyHostToDevice));
    if (m->master)  // this rank's shard
        CUDA_CHECK(cudaMemcpy(m->master, params.data() + m->shard_begin, (m->shard_end - m->shard_begin) * 4, cudaMemcpyHostToDevice));
}

// ZeRO-1 state (AdamW m or v, the master weights: `shard` elements of element_bytes each on every rank) whole on
// the host of every rank: each rank's shard all-gathered through MPI, the padding past P cut off. One rank: the
// download. (MPI counts are ints: at most 1 GiB a collective.)
static std::vector<unsigned char> gather_shards(Model* m, std::vector<unsigned char> shard, size_t element_bytes) {
    int world = m->par.world;
    if (world == 1) return shard;
    size_t shard_bytes = shard.size(), chunk_bytes = 1ull << 30;
    std::vector<unsigned char> whole(shard_bytes * world), received;
    for (size_t at = 0; at < shard_bytes; at += chunk_bytes) {
        size_t bytes = std::min(chunk_bytes, shard_bytes - at);  // even: element_bytes is 2 or 4
        received.resize(bytes * world);
        comm_all_gather(m->par.host, shard.data() + at, received.data(), bytes / 2, COMM_BF16);  // moved as 2-byte units
        for (int r = 0; r < world; r++) memcpy(whole.data() + r * shard_bytes + at, received.data() + r * bytes, bytes);
    }
    whole.resize(m->layout.total * element_bytes);
    return whole;
}
static std::vector<unsigned char> gather_shards(Model* m, const void* device, size_t element_bytes) {
    return gather_shards(m, download_bytes(device, m->shard * element_bytes), element_bytes);
}

// AdamW m (which = 0) or v (1) of this rank's shard as the arena holds it: its region, or with --state-offload
// its host copy, once the copy stream has written back the last update's groups
static char* host_state_array(const Model* m, int which) {
    return m->host_state + which * m->shard * (m->plan.options.bf16_optimizer_state ? 2 : 4);
}
static std::vector<unsigned char> gather_state(Model* m, int which, size_t element_bytes) {
    if (!m->host_state) return gather_shards(m, which ? m->adam_v : m->adam_m, element_bytes);
    CUDA_CHECK(cudaStreamSynchronize(m->copy_stream));
    const unsigned char* host = (const unsigned char*)host_state_array(m, which);
    return gather_shards(m, std::vector<unsigned char>(host, host + m->shard * element_bytes), element_bytes);
}

// the bf16 parameters, widened (exactly) to fp32
static std::vector<float> download_params(Model* m) {
    model_apply_pending_update(m);
    std::vector<bf16> raw(m->layout.total);
    CUDA_CHECK(cudaMemcpy(raw.data(), m->params, raw.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> out(raw.size());
    for (size_t i = 0; i < raw.size(); i++) out[i] = __bfloat162float(raw[i]);
    return out;
}

static std::vector<float> download_master(Model* m) {
    model_apply_pending_update(m);
    std::vector<unsigned char> bytes = gather_shards(m, m->master, 4);
    std::vector<float> out(m->layout.total);
    memcpy(out.data(), bytes.data(), out.size() * 4);
    return out;
}

// fp32 weights for export and generation: the master weights where kept, else the parameters (the
// parameters are the master weights rounded to nearest, so a bf16 export is the same either way)
static std::vector<float> download_weights(Model* m) { return m->master ? download_master(m) : download_params(m); }

// weights from a Hugging Face directory of the model's config (hf_io.h), instead of model_init_random
static void model_import_hf(Model* m, const std::string& dir) {
    std::vector<float> params;
    std::string error;
    if (!hf_read_weights(dir, m->config, &params, &error)) safetensors_exit_on_error(error);
    model_set_parameters(m, params);
}

// dir/config.json and dir/model.safetensors (bf16) that transformers' LlamaForCausalLM loads as is;
// a dir that holds files is replaced whole only with replace (hf_export)
static void model_export_hf(Model* m, const std::string& dir, bool replace = false) {
    std::string error;
    std::vector<float> weights = download_weights(m);  // every rank: ZeRO-1's master weights are gathered
    if (m->par.rank == 0 && !hf_export(dir, m->config, weights.data(), "BF16", &error, replace)) safetensors_exit_on_error(error);
}

static const char* optimizer_state_dtype(const Model* m) { return m->plan.options.bf16_optimizer_state ? "BF16" : "F32"; }

// Writes checkpoint steps_done into dir (several ranks: every rank gathers, rank 0 writes the whole state, the
// file of one GPU's run): the bf16 parameters, the master weights where kept, AdamW m and
// v as the arena holds them (bf16 or fp32) and the last step's clip scale (for the reader: a pending
// update is applied before writing, so no later step depends on it). info brings the data loader, the RNG and options; the config, step and the choices a
// resume must share (state dtype, master weights, seed of the stochastic rounding) are the model's.
// Returns the file's path.
static std::string model_save_checkpoint(Model* m, const std::string& dir, CheckpointInfo info) {
    model_apply_pending_update(m);  // a checkpoint holds no pending update
    info.config = m->config;
    info.step = m->steps_done;
    info.options["optimizer_state"] = optimizer_state_dtype(m);
    info.options["master_weights"] = m->master ? "1" : "0";
    info.options["seed"] = std::to_string(m->seed);
    info.options["adamw_updates"] = std::to_string(m->updates_applied);  // fewer than steps after skipped steps
    size_t P = m->layout.total, state_size = safetensors_dtype_size(optimizer_state_dtype(m));
    std::vector<int64_t> shape = {(int64_t)P};
    std::vector<unsigned char> params = download_bytes(m->params, P * 2), adam_m = gather_state(m, 0, state_size),
                               adam_v = gather_state(m, 1, state_size), clip = download_bytes(m->clip_scale, 4),
                               master = m->master ? gather_shards(m, m->master, 4) : std::vector<unsigned char>();
    if (m->par.rank != 0) return checkpoint_path(dir, info.step);
    SafetensorsWriter arrays;
    arrays.add("params", "BF16", shape, params.data());
    arrays.add("adam_m", optimizer_state_dtype(m), shape, adam_m.data());
    arrays.add("adam_v", optimizer_state_dtype(m), shape, adam_v.data());
    arrays.add("clip_scale", "F32", {1}, clip.data());
    if (m->master) arrays.add("master", "F32", shape, master.data());
    std::string error;
    if (!checkpoint_write(dir, info, arrays, &error)) safetensors_exit_on_error(error);
    return checkpoint_path(dir, info.step);
}

// The arrays of a checkpoint of this model with these options: the bf16 parameters, AdamW m and v, the
// clip scale, the master weights where kept
struct CheckpointArray { const char* name; const char* dtype; size_t count; };
static std::vector<CheckpointArray> checkpoint_arrays(const ModelConfig& c, const TrainingOptions& o) {
    size_t P = parameter_layout(c).total;
    const char* state = o.bf16_optimizer_state ? "BF16" : "F32";
    std::vector<CheckpointArray> arrays = {{"params", "BF16", P}, {"adam_m", state, P}, {"adam_v", state, P},
                                           {"clip_scale", "F32", 1}};
    if (o.master_weights) arrays.push_back({"master", "F32", P});
    return arrays;
}

// AdamW's step count in a checkpoint: at most its step (fewer after skipped steps); a checkpoint from
// before the non-finite guard has none: every step updated
static int checkpoint_adamw_updates(CheckpointInfo& info, const std::string& path) {
    const std::string& text = info.options["adamw_updates"];
    int64_t updates = info.step;
    if (!text.empty() && !parse_int64(text.c_str(), 0, info.step, &updates))
        file_error(path.c_str(), "bad adamw_updates '%s' in the metadata (expected 0 to its step, %lld)", text.c_str(),
                   (long long)info.step);
    return (int)updates;
}

// Reads a checkpoint into a model created with the same config and options (one error line if they
// differ) and returns its info (data loader, RNG, options); the model continues from its step.
static CheckpointInfo model_load_checkpoint(Model* m, const std::string& path) {
    SafetensorsReader reader;
    CheckpointInfo info;
    std::string error;
    if (!checkpoint_open(path, &reader, &info, &error)) safetensors_exit_on_error(error);
    if (hf_config_json(info.config, "F32") != hf_config_json(m->config, "F32"))
        file_error(path.c_str(), "its model (%s: %d layers, d_model %d, vocab %d) is not this run's (%s: %d layers, "
                   "d_model %d, vocab %d)", info.config.name, info.config.n_layer, info.config.d_model,
                   info.config.vocab_size, m->config.name, m->config.n_layer, m->config.d_model, m->config.vocab_size);
    std::string state = optimizer_state_dtype(m), master = m->master ? "1" : "0", seed = std::to_string(m->seed);
    if (info.options["optimizer_state"] != state || info.options["master_weights"] != master || info.options["seed"] != seed)
        file_error(path.c_str(), "written with AdamW state %s, master weights %s, seed %s; this run has %s, %s, %s "
                   "(-a, -w and --seed must match)", info.options["optimizer_state"].c_str(),
                   info.options["master_weights"].c_str(), info.options["seed"].c_str(), state.c_str(), master.c_str(),
                   seed.c_str());
    // --state-offload: m and v go to their host copy
    bool state_on_host = m->host_state != nullptr;
    std::map<std::string, void*> device = {{"params", m->params}, {"clip_scale", m->clip_scale}, {"master", m->master},
                                           {"adam_m", state_on_host ? host_state_array(m, 0) : m->adam_m},
                                           {"adam_v", state_on_host ? host_state_array(m, 1) : m->adam_v}};
    for (const CheckpointArray& a : checkpoint_arrays(m->config, m->plan.options)) {
        size_t element_bytes = safetensors_dtype_size(a.dtype);
        std::vector<unsigned char> host(a.count * element_bytes);
        if (!checkpoint_read_array(reader, a.name, a.dtype, a.count, host.data(), &error)) safetensors_exit_on_error(error);
        bool sharded = a.count == m->layout.total && device[a.name] != m->params;  // ZeRO-1: this rank's shard
        size_t begin = sharded ? m->shard_begin : 0, end = sharded ? m->shard_end : a.count;
        bool to_host = state_on_host && strncmp(a.name, "adam_", 5) == 0;
        CUDA_CHECK(cudaMemcpy(device[a.name], host.data() + begin * element_bytes, (end - begin) * element_bytes,
                              to_host ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice));
    }
    m->steps_done = (int)info.step;
    m->updates_applied = checkpoint_adamw_updates(info, path);
    m->update_pending = false;
    return info;
}

// The start-up self-test of the sm_90a attention forward and backward, which may not have run on a GPU before
// (UNVERIFIED until one has): once at a small shape (B = 2, T = 200: a partial tile and a batch boundary; 4 query
// heads over 2 KV heads; the model's head dim) on seeded inputs, beside the mma.sync kernels, by FlashAttention-3's
// rule with the mma.sync kernel (validated on GPUs) as the bf16 yardstick: max |sm90 - ref32| <= 2 max |mma - ref32|
// + atol per output. Forward: out (atol 1e-3) against attention_forward_cpu, lse within 1e-3 of it. Backward: both
// from the mma.sync forward's out and lse, dq, dk, dv (bf16, as the trainer's; atol 1e-3 of the largest
// reference magnitude) against attention_backward_cpu from the same out and lse. No NaN. perturb.forward is added to
// one output of the sm90 forward, perturb.backward to one of its dq (planted disagreements: tests, and
// MST_ATTENTION_SELFTEST_PERTURB / _PERTURB_BACKWARD in train()). Its own small allocations, freed: it runs before
// the arena exists. *report: the numbers, for the start-up line.
struct SelftestPerturbation {
    float forward = 0.f, backward = 0.f;
};
// max |x - ref| over the elements (x bf16, plus `perturb` on the middle one); NaN (or inf) clears *finite
static double max_error(const std::vector<bf16>& x, const std::vector<float>& ref, float perturb, bool* finite) {
    double err = 0;
    for (size_t i = 0; i < x.size(); i++) {
        double e = (double)__bfloat162float(x[i]) + (i == x.size() / 2 ? perturb : 0.f);
        *finite = *finite && std::isfinite(e);
        err = std::max(err, fabs(e - ref[i]));
    }
    return err;
}
static std::vector<bf16> download_bits(const bf16* d, size_t n) {
    std::vector<bf16> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
    return h;
}
static bool attention_selftest(int hd, SelftestPerturbation perturb, std::string* report) {
    const int B = 2, T = 200, H = 4, KV = 2;
    size_t nq = (size_t)B * T * H * hd, nkv = (size_t)B * T * KV * hd, nl = (size_t)B * H * T;
    std::vector<float> q(nq), k(nkv), v(nkv), dout(nq);
    uint64_t state = 0x5eed5eed5eedull;
    auto fill = [&](std::vector<float>& x, float range) {  // xorshift64, rounded to bf16 as uploaded
        for (float& e : x) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            e = __bfloat162float(__float2bfloat16(range * (2.f * (state >> 40) / 16777216.f - 1.f)));
        }
    };
    fill(q, 2.f); fill(k, 2.f); fill(v, 1.f); fill(dout, 1.f);
    std::vector<bf16> staging(nq);
    bf16* inputs[4];
    const std::vector<float>* host[4] = {&q, &k, &v, &dout};
    for (int i = 0; i < 4; i++) {
        for (size_t j = 0; j < host[i]->size(); j++) staging[j] = __float2bfloat16((*host[i])[j]);
        CUDA_CHECK(cudaMalloc(&inputs[i], host[i]->size() * 2));
        CUDA_CHECK(cudaMemcpy(inputs[i], staging.data(), host[i]->size() * 2, cudaMemcpyHostToDevice));
    }
    // per kernel (0 mma.sync, 1 sm90): out, lse, then dq, dk, dv
    bf16 *out[2], *grad[2][3];
    float* lse[2];
    void* scratch;
    CUDA_CHECK(cudaMalloc(&scratch, attention_backward_scratch_bytes(B, T, H, hd)));
    for (int i = 0; i < 2; i++) {
        CUDA_CHECK(cudaMalloc(&out[i], nq * 2));
        CUDA_CHECK(cudaMalloc(&lse[i], nl * 4));
        for (int g = 0; g < 3; g++) CUDA_CHECK(cudaMalloc(&grad[i][g], (g == 0 ? nq : nkv) * 2));
    }
    attention_forward(out[0], lse[0], inputs[0], inputs[1], inputs[2], B, T, H, KV, hd, nullptr, 0, T, 0);
    attention_forward_sm90(out[1], lse[1], inputs[0], inputs[1], inputs[2], B, T, H, KV, hd, nullptr, 0, T, 0);
    attention_backward(grad[0][0], grad[0][1], grad[0][2], scratch, inputs[3], inputs[0], inputs[1], inputs[2], out[0], lse[0], B, T, H,
                       KV, hd, nullptr, 0, T, 0);
    attention_backward_sm90(grad[1][0], grad[1][1], grad[1][2], scratch, inputs[3], inputs[0], inputs[1], inputs[2], out[0], lse[0], B, T,
                            H, KV, hd, nullptr, 0, T, 0);
    std::vector<bf16> out_bits[2] = {download_bits(out[0], nq), download_bits(out[1], nq)}, grad_bits[2][3];
    for (int i = 0; i < 2; i++)
        for (int g = 0; g < 3; g++) grad_bits[i][g] = download_bits(grad[i][g], g == 0 ? nq : nkv);
    std::vector<float> lse_host[2] = {std::vector<float>(nl), std::vector<float>(nl)};
    for (int i = 0; i < 2; i++) CUDA_CHECK(cudaMemcpy(lse_host[i].data(), lse[i], nl * 4, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 2; i++) {
        for (void* p : {(void*)out[i], (void*)lse[i], (void*)grad[i][0], (void*)grad[i][1], (void*)grad[i][2]}) CUDA_CHECK(cudaFree(p));
    }
    for (void* p : {(void*)inputs[0], (void*)inputs[1], (void*)inputs[2], (void*)inputs[3], scratch}) CUDA_CHECK(cudaFree(p));

    std::vector<float> ref(nq), ref_lse(nl);
    attention_forward_cpu(ref.data(), ref_lse.data(), q.data(), k.data(), v.data(), B, T, H, KV, hd);
    bool finite = true;
    double sm90_err = max_error(out_bits[1], ref, perturb.forward, &finite), mma_err = max_error(out_bits[0], ref, 0.f, &finite);
    double lse_err = 0;
    for (size_t i = 0; i < nl; i++) {
        finite = finite && std::isfinite(lse_host[1][i]);
        lse_err = std::max(lse_err, fabs((double)lse_host[1][i] - ref_lse[i]));
    }
    bool ok = sm90_err <= 2 * mma_err + 1e-3 && lse_err <= 1e-3;
    // the backward's reference from the out and lse both backwards were given (the mma.sync forward's)
    std::vector<float> mma_out(nq), ref_grad[3] = {std::vector<float>(nq), std::vector<float>(nkv), std::vector<float>(nkv)};
    for (size_t i = 0; i < nq; i++) mma_out[i] = __bfloat162float(out_bits[0][i]);
    attention_backward_cpu(ref_grad[0].data(), ref_grad[1].data(), ref_grad[2].data(), dout.data(), q.data(), k.data(), v.data(),
                           mma_out.data(), lse_host[0].data(), B, T, H, KV, hd);
    double ours[3], theirs[3], allowed[3];  // dq, dk, dv
    for (int g = 0; g < 3; g++) {
        double largest = 0;
        for (float x : ref_grad[g]) largest = std::max(largest, (double)fabsf(x));
        ours[g] = max_error(grad_bits[1][g], ref_grad[g], g == 0 ? perturb.backward : 0.f, &finite);
        theirs[g] = max_error(grad_bits[0][g], ref_grad[g], 0.f, &finite);
        allowed[g] = 2 * theirs[g] + 1e-3 * largest + 1e-6;
        ok = ok && ours[g] <= allowed[g];
    }
    char text[256];
    snprintf(text, sizeof text, "forward out %.3g vs mma.sync %.3g (allowed %.3g), lse %.2g; backward dq dk dv %.3g %.3g %.3g vs %.3g %.3g %.3g "
             "(allowed %.3g %.3g %.3g)", sm90_err, mma_err, 2 * mma_err + 1e-3, lse_err, ours[0], ours[1], ours[2], theirs[0], theirs[1],
             theirs[2], allowed[0], allowed[1], allowed[2]);
    *report = text;
    return finite && ok;
}

// The start-up self-test of RoPE v2 (rope_qk_v2: q and k in one launch, 16-byte loads), which no GPU has run yet
// (UNVERIFIED until one has): at a small shape (B = 2, T = 37: odd; 4 query heads, 2 KV heads; the model's head dim
// and tables) on seeded inputs, forward and inverse, against v1 (rope_forward, confirmed on an H200): every output
// within one bf16 ulp of v1's (2^-8 of |v1|: the same fp32 arithmetic per pair, rounded once; the compiler may
// contract it into other FMAs), no NaN. perturb is added to one v2 output first (a planted disagreement:
// MST_ROPE_SELFTEST_PERTURB in train()). Its own small allocations, freed. *report: the numbers.
static bool rope_selftest(const ModelConfig& c, float perturb, std::string* report) {
    const int B = 2, T = 37, H = 4, KV = 2, hd = c.head_dim();
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KV * hd, half_table = (size_t)T * (hd / 2);
    std::vector<float> cos_table(half_table), sin_table(half_table);
    rope_tables(c, T, cos_table.data(), sin_table.data());
    std::vector<bf16> x(nq + nk);
    uint64_t state = 0x0fe5eed5ull;
    for (bf16& e : x) e = __float2bfloat16(2.f * (splitmix64(&state) >> 40) / 16777216.f - 1.f);
    bf16 *v1, *v2;
    float* tables;
    CUDA_CHECK(cudaMalloc(&v1, x.size() * 2)); CUDA_CHECK(cudaMalloc(&v2, x.size() * 2));
    CUDA_CHECK(cudaMalloc(&tables, 2 * half_table * 4));
    CUDA_CHECK(cudaMemcpy(tables, cos_table.data(), half_table * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(tables + half_table, sin_table.data(), half_table * 4, cudaMemcpyHostToDevice));
    double worst = 0;  // max |v2 - v1| / ulp(v1)
    bool finite = true;
    for (int inverse = 0; inverse < 2; inverse++) {
        CUDA_CHECK(cudaMemcpy(v1, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(v2, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
        rope_forward(v1, tables, tables + half_table, B, T, H, hd, inverse, 0);
        rope_forward(v1 + nq, tables, tables + half_table, B, T, KV, hd, inverse, 0);
        rope_qk_v2(v2, v2 + nq, tables, tables + half_table, B, T, H, KV, hd, inverse, 0);
        std::vector<bf16> a(x.size()), b(x.size());
        CUDA_CHECK(cudaMemcpy(a.data(), v1, a.size() * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(b.data(), v2, b.size() * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < a.size(); i++) {
            double want = __bfloat162float(a[i]), got = __bfloat162float(b[i]) + (i == a.size() / 2 ? perturb : 0.f);
            finite = finite && std::isfinite(got);
            worst = std::max(worst, fabs(got - want) / std::max(fabs(want) / 256.0, 1e-30));
        }
    }
    for (void* p : {(void*)v1, (void*)v2, (void*)tables}) CUDA_CHECK(cudaFree(p));
    char text[96];
    snprintf(text, sizeof text, "max difference from v1 %.3g bf16 ulps (allowed 1)", worst);
    *report = text;
    return finite && worst <= 1.0;
}

// The start-up self-test of RMSNorm backward v2 (one pass: a block per row chunk), which no GPU has run yet
// (UNVERIFIED until one has): N = 643 rows (6 a chunk: each launch shape's row tail, the last chunk one row), the
// model's width, seeded inputs, against v1 (two passes, confirmed on an H200): the weight gradient bitwise v1's (the
// same sums in the same order), every dinp within one bf16 ulp of v1's plus 1e-4 of the largest (each row's dot
// product is summed in another order, which moves a value by ~1e-6 of the row's terms before its rounding), no NaN.
// perturb is added to one v2 dinp first (a planted disagreement: MST_RMSNORM_SELFTEST_PERTURB in train()). Its own
// small allocations, freed. *report: the numbers.
static bool rmsnorm_selftest(const ModelConfig& c, float perturb, std::string* report) {
    const int N = 643, C = c.d_model;
    size_t n = (size_t)N * C;
    uint64_t state = 0x5eedf00dull;
    auto uniform = [&](float lo, float hi) { return lo + (hi - lo) * (float)(splitmix64(&state) >> 40) / 16777216.f; };
    std::vector<bf16> host(4 * n + C);  // dy, x, the dinp both versions add to (twice), weight
    for (size_t i = 0; i < host.size(); i++) host[i] = __float2bfloat16(i < 4 * n ? uniform(-1.f, 1.f) : uniform(0.5f, 1.5f));
    std::copy(host.begin() + 2 * n, host.begin() + 3 * n, host.begin() + 3 * n);
    std::vector<float> rstd(N);
    for (float& r : rstd) r = uniform(0.5f, 2.f);
    bf16* d;
    float *f, *scratch;
    CUDA_CHECK(cudaMalloc(&d, host.size() * 2));
    CUDA_CHECK(cudaMalloc(&f, (N + 2 * (size_t)C) * 4));  // rstd, dweight of v1, of v2
    CUDA_CHECK(cudaMalloc(&scratch, rmsnorm_backward_scratch_bytes(N, C)));
    CUDA_CHECK(cudaMemcpy(d, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(f, rstd.data(), N * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(f + N, 0, 2 * (size_t)C * 4));
    for (int version = 1; version <= 2; version++) {
        rmsnorm_backward_version() = version;
        rmsnorm_backward(d + (1 + version) * n, f + N + (version - 1) * C, scratch, d, d + n, d + 4 * n, f, N, C, 0);
    }
    std::vector<bf16> dinp(2 * n);
    std::vector<float> dweight(2 * (size_t)C);
    CUDA_CHECK(cudaMemcpy(dinp.data(), d + 2 * n, 2 * n * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(dweight.data(), f + N, 2 * (size_t)C * 4, cudaMemcpyDeviceToHost));
    for (void* p : {(void*)d, (void*)f, (void*)scratch}) CUDA_CHECK(cudaFree(p));
    double largest = 0, worst = 0;  // worst: max |v2 - v1| / (ulp(v1) + 1e-4 largest |v1|)
    for (size_t i = 0; i < n; i++) largest = std::max(largest, fabs((double)__bfloat162float(dinp[i])));
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        double want = __bfloat162float(dinp[i]), got = __bfloat162float(dinp[n + i]) + (i == n / 2 ? perturb : 0.f);
        finite = finite && std::isfinite(got);
        double ulp = want != 0 ? std::ldexp(1.0, std::ilogb(want) - 7) : 0.0;  // bf16: 8 significant bits
        worst = std::max(worst, fabs(got - want) / (ulp + 1e-4 * largest + 1e-30));
    }
    bool same_dweight = memcmp(dweight.data(), dweight.data() + C, C * 4) == 0;
    char text[160];
    snprintf(text, sizeof text, "dinp differs from v1's by %.3g of the allowed (one bf16 ulp + 1e-4 of the largest), dweight %s", worst,
             same_dweight ? "bitwise v1's" : "NOT bitwise v1's");
    *report = text;
    return finite && same_dweight && worst <= 1.0;
}

// ----------------------------------------------------------------------------
// command line (no CUDA call in this part: --dry-run and --max-T work on a machine without a GPU)
#ifndef TESTING

struct CommandLine {
    const char* train_pattern = DEFAULT_TRAIN_SHARDS;
    const char* val_pattern = DEFAULT_VAL_SHARDS;
    bool random_tokens = false;       // --random-tokens: seeded uniform tokens instead of shards
    bool overwrite = false;           // --overwrite 1: a new run may replace the checkpoints in -o DIR
    const char* model_name = "llama3-8b";
    bool custom_config = false;       // --config V,C,L,H,KV,F
    ModelConfig config;
    TrainingOptions options;          // B, T, mini-sequences, recompute, optimizer memory choices
    OptimizerSettings optimizer;
    int steps = 10;
    int warmup_steps = 5;             // AdamW's first updates are ~lr x sign(g) everywhere: ramp up to lr
    float final_lr_fraction = 0.1f;
    int val_interval = 0;             // 0: no validation
    int val_batches = 4;
    uint64_t seed = 1337;
    int64_t tokens_per_update = 0;    // -d: 0 = one batch of B x T
    int micro_batches = 1;            // tokens_per_update / (B x T)
    int nonfinite_limit = 5;          // --nonfinite-limit: stop after this many non-finite steps in a row
    double comm_timeout_s = 600;      // --comm-timeout: a rank waiting this long in a collective stops the job; 0 = never
    const char* attention = nullptr;  // --attention mma|sm90; null: sm90 on compute capability 9.0, else mma
    bool attention_selftest = true;   // --attention-selftest 0: no start-up self-test of the sm90 kernels
    const char* log_path = nullptr;   // -L: one JSON object per line per step
    bool dry_run = false, print_max_T = false;
    bool profile = false;             // --profile 1: each phase's time per step (profiler.h), a table at the end
    double gpu_mem_gib = 0.0;         // 0: not given
    double host_mem_gib = 0.0;        // --host-mem: pinned host memory the plan may use; 0: not given
    const char* hf_dir = nullptr;     // -e DIR: a Hugging Face directory's weights (its config.json is config)
    const char* checkpoint_dir = nullptr;  // -o
    int checkpoint_every = 0;         // -k: 0 = only at the end
    bool resume = false;              // -y 1
    const char* export_dir = nullptr; // --export
    bool overwrite_export = false;    // --overwrite-export 1: --export may replace a directory that holds files
    int sample_tokens = 0;            // -g: 0 = no samples
    int sample_every = 20;            // -s: 0 = only at the end
    float temperature = 1.f, top_p = 0.9f;
};

static void print_usage() {
    printf(
"usage: ./train_llama [options]   (Llama 3 training with mini-sequences; defaults fit llama3-8b at\n"
"                                  T=60000 on an 80 GB card: make train_llama && ./train_llama -T 60000)\n"
"  -i PATTERN      training shards (default %s)\n"
"  -j PATTERN      validation shards (default %s)\n"
"  --random-tokens seeded random tokens instead of shards (benchmarks)\n"
"  --doc-mask 0|1  attention within documents: a token sees keys from its document's <|begin_of_text|> on;\n"
"                  the loss is unchanged in form (default 1 on shards, 0 with --random-tokens)\n"
"  -e NAME|DIR     model: %s (default llama3-8b),\n"
"                  or a Hugging Face Llama directory (config.json, model.safetensors or shards)\n"
"  --config V,C,L,H,KV,F  a custom model: vocab, d_model, layers, heads, kv heads, ffn width\n"
"  -B N            batch size (default 1)\n"
"  -T N            sequence length (default 60000)\n"
"  -m N            MLP mini-sequences: 0 automatic (default), 1 standard\n"
"  -M N            LM-head mini-sequences: 0 automatic (default), 1 standard\n"
"  -r 0|1          recompute each layer in backward (default 1)\n"
"  -f 0|1          1: each group's update fused into backward, its gradient held on the host for the exact\n"
"                  clip; 0: every gradient on the card, the update after backward (default: 0 when it fits)\n"
"  -a fp32|bf16    AdamW state precision (default bf16; also --state)\n"
"  --held-gradients fp32|bf16  -f 1: the precision of the gradients held on the host (default: as -a; fp32\n"
"                  when bf16's staging copy on the card would not fit)\n"
"  -w 0|1          fp32 master weights (default 0)\n"
"  -n N            training steps (default 10)\n"
"  -l LR           peak learning rate (default 3e-4)\n"
"  -u N            linear warmup steps (default 5)\n"
"  -F FRACTION     final lr as a fraction of the peak, reached by a cosine (default 0.1)\n"
"  -c WD           AdamW weight decay on 2-D matrices (default 0.1)\n"
"  --clip NORM     global gradient-norm clip, 0 = off (default 1.0)\n"
"  -v N            validation loss every N steps, 0 = never (default 0)\n"
"  --val-batches N batches per validation (default 4)\n"
"  --seed N        seed of the initial weights and random tokens (default 1337)\n"
"  -d TOKENS       tokens per update, a multiple of B x T: gradient accumulation (default B x T)\n"
"  --dp D          data-parallel ranks under mpirun or srun (one per GPU): each its own B x T batches,\n"
"                  ZeRO (AdamW state and update sharded over the ranks, --zero; sets -f 0) (default 1)\n"
"  --sp S          sequence-parallel ranks (Ulysses): each holds T / S tokens of every sequence and attends\n"
"                  over all of them for 1/S of the heads; --sp x --dp ranks in all (default 1)\n"
"  --zero 0|1|2    several ranks: ZeRO stage; 1 each rank holds the whole fp32 gradient, reduce-scattered after\n"
"                  backward; 2 each group's gradient all-reduced as backward completes it, only this rank's shard\n"
"                  kept (default 0: 1 when it fits, else 2)\n"
"  --comm-timeout SECONDS  with several ranks: a rank that waits this long in a collective (another rank stopped\n"
"                  or is stuck) prints one line and stops every rank; 0 = wait forever (default 600)\n"
"  --nonfinite-limit N  stop after N steps in a row with a NaN/inf loss or gradient norm (default 5)\n"
"  -L FILE         log every step as one JSON object per line\n"
"  -o DIR          write checkpoints into DIR (every -k steps and at the end)\n"
"  -k N            checkpoint every N steps, 0 = only at the end (default 0)\n"
"  -y 0|1          resume from the latest checkpoint in -o DIR (default 0)\n"
"  --overwrite 0|1 1: start in an -o DIR that holds another run's checkpoints, replacing them (default 0)\n"
"  --export DIR    at the end, write DIR/config.json and DIR/model.safetensors (bf16) for transformers\n"
"  --overwrite-export 0|1  1: --export may replace a DIR that holds files, whole (default 0: refused)\n"
"  -g N            sample N tokens from <|begin_of_text|>, 0 = never (default 0)\n"
"  -s N            sample every N steps and at the end, 0 = only at the end (default 20)\n"
"  --temperature X sampling temperature, 0 = greedy (default 1.0)\n"
"  --top-p P       nucleus sampling: the likeliest tokens up to probability P (default 0.9)\n"
"  --gpu-mem GIB   plan for a card of this many GiB (default: the GPU's memory; 80 in a dry run)\n"
"  --host-mem GIB  pinned host memory the plan may use (default: the machine's less a quarter; 120 in a dry run)\n"
"  --offload 0|1   layer checkpoints in pinned host memory (default: on when the plan needs it to fit)\n"
"  --keep-attention 0|1  keep each layer's attention output and lse from forward (pinned host memory) so the\n"
"                  recomputation skips the attention forward; needs -r 1 (default: on when the plan fits with it)\n"
"  --segment K     keep every K-th layer input (with --offload, in pinned host memory); backward recomputes a\n"
"                  segment's other K-1 inputs first (one more forward of them); 1 keeps all (default 0: 1, or the\n"
"                  smallest K that fits)\n"
"  --state-offload 0|1  AdamW m and v in pinned host memory, streamed through the card group by group for each\n"
"                  update (one GPU) (default: on only when the plan fits with it and not without)\n"
"  --attention-blocks N  each layer's attention half (norm, q, RoPE, attention, o projection) over N query blocks\n"
"                  of ceil(T / N) tokens, so only K and V span the whole sequence; one more attention forward per\n"
"                  layer; needs -r 1; 1 the whole sequence (default 0: 1, or the smallest N that fits)\n"
"  --attention mma|sm90  attention forward and backward: mma.sync (any card) or the sm_90a kernels (TMA, wgmma;\n"
"                  compute capability 9.0); default sm90 on 9.0 after a start-up self-test, mma elsewhere\n"
"  --attention-selftest 0|1  check the sm90 kernels against mma.sync at start-up, falling back to mma with a\n"
"                  warning if they disagree (default 1)\n"
"  --dry-run       print the memory plan beside the standard plan and whether it fits; no GPU used\n"
"  --profile 0|1   time each phase of every step (CUDA events); a table at the end, phases in -L (default 0)\n"
"  --max-T         print the longest T that fits --gpu-mem and --host-mem, with these options and the standard ones\n"
"  -h, --help      this text\n",
        DEFAULT_TRAIN_SHARDS, DEFAULT_VAL_SHARDS, model_config_names().c_str());
}

// The one way a bad command line ends: one line on stderr, exit status 1, nothing on stdout.
[[noreturn]] static void usage_error(const char* format, ...) {
    va_list args;
    va_start(args, format);
    error_line_exit(nullptr, format, args);
}

static bool parse_bool(const char* flag, const char* value) { return flag_int(flag, value, 0, 1, "0 or 1") == 1; }
// GiB of a card or of host memory: positive, and far below what a size_t of bytes holds
static const double MAX_MEMORY_GIB = 1 << 20;
static double parse_gib(const char* flag, const char* value) {
    return flag_double(flag, value, DBL_TRUE_MIN, MAX_MEMORY_GIB, "a positive number of GiB up to 1048576");
}

static bool is_directory(const char* path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

// --config V,C,L,H,KV,F: Llama 3's RoPE theta and norm epsilon, untied, no RoPE scaling
static ModelConfig parse_custom_config(const char* value) {
    int v[6];
    std::string text = value;
    size_t at = 0;
    for (int i = 0; i < 6; i++) {
        size_t comma = i < 5 ? text.find(',', at) : text.size();
        if (comma == std::string::npos || !parse_int(text.substr(at, comma - at).c_str(), 1, INT_MAX, &v[i]))
            usage_error("--config: must be six positive integers V,C,L,H,KV,F (got \"%s\")", value);
        at = comma + 1;
    }
    ModelConfig c = {"custom", v[0], v[1], v[2], v[3], v[4], v[5], 500000.f, 1e-5f, false, 0.f, 0.f, 0.f, 0, false};
    std::string problem = model_config_problem(c);
    if (!problem.empty()) usage_error("--config: %s (got \"%s\")", problem.c_str(), value);
    return c;
}

static CommandLine parse_command_line(int argc, char** argv) {
    CommandLine cl;
    cl.options.offload = -1;  // --offload: automatic unless given
    cl.options.keep_attention = -1;  // --keep-attention: automatic unless given
    cl.options.segment = 0;          // --segment: automatic unless given
    cl.options.state_offload = -1;   // --state-offload: automatic unless given
    cl.options.attention_blocks = 0; // --attention-blocks: automatic unless given
    for (int i = 1; i < argc; i++) {
        std::string flag = argv[i];
        if (flag == "-h" || flag == "--help") { print_usage(); exit(0); }
        if (flag == "--dry-run") { cl.dry_run = true; continue; }
        if (flag == "--max-T") { cl.print_max_T = true; continue; }
        if (flag == "--random-tokens") { cl.random_tokens = true; continue; }
        static const char* const valued[] = {"-i", "-j", "-e", "--config", "-B", "-T", "-m", "-M", "-r", "-f",
            "-a", "--state", "--held-gradients", "-w", "-n", "-l", "-u", "-F", "-c", "--clip", "-v", "--val-batches", "--seed", "--gpu-mem",
            "-o", "-k", "-y", "--export", "-g", "-s", "--temperature", "--top-p", "--offload", "--host-mem", "-d", "--nonfinite-limit", "-L", "--overwrite",
            "--profile", "--attention", "--attention-selftest", "--doc-mask", "--overwrite-export", "--keep-attention", "--segment", "--state-offload",
            "--attention-blocks", "--dp", "--sp", "--comm-timeout", "--zero"};
        if (std::find_if(std::begin(valued), std::end(valued), [&](const char* f) { return flag == f; }) == std::end(valued))
            usage_error("unknown flag \"%s\" (see --help)", flag.c_str());
        if (i + 1 >= argc) usage_error("%s: missing value", flag.c_str());
        const char* f = flag.c_str();
        const char* value = argv[++i];
        if (!*value) usage_error("%s: empty value", f);  // no flag takes an empty path, name or number
        TrainingOptions& o = cl.options;
        if (flag == "-i") cl.train_pattern = value;
        else if (flag == "-j") cl.val_pattern = value;
        else if (flag == "-e") cl.model_name = value;
        else if (flag == "--config") { cl.config = parse_custom_config(value); cl.custom_config = true; }
        else if (flag == "-B") o.B = flag_int(f, value, 1, INT_MAX, "a positive integer");
        else if (flag == "-T") o.T = flag_int(f, value, 1, INT_MAX, "a positive integer");
        else if (flag == "-m") o.mlp_chunks = flag_int(f, value, 0, INT_MAX, "0 (automatic) or a positive integer");
        else if (flag == "-M") o.lmhead_chunks = flag_int(f, value, 0, INT_MAX, "0 (automatic) or a positive integer");
        else if (flag == "-r") o.recompute = parse_bool(f, value);
        else if (flag == "-f") o.fused_optimizer = parse_bool(f, value);
        else if (flag == "-w") o.master_weights = parse_bool(f, value);
        else if (flag == "-a" || flag == "--state") {
            if (strcmp(value, "bf16") != 0 && strcmp(value, "fp32") != 0)
                usage_error("%s: must be fp32 or bf16 (got \"%s\")", f, value);
            o.bf16_optimizer_state = strcmp(value, "bf16") == 0;
        }
        else if (flag == "--held-gradients") {
            if (strcmp(value, "bf16") != 0 && strcmp(value, "fp32") != 0)
                usage_error("%s: must be fp32 or bf16 (got \"%s\")", f, value);
            o.held_gradient_bytes = strcmp(value, "bf16") == 0 ? 2 : 4;
        }
        else if (flag == "-n") cl.steps = flag_int(f, value, 1, INT_MAX, "a positive integer");
        else if (flag == "-l") cl.optimizer.lr = flag_float(f, value, 0.f, FLT_MAX, "a non-negative number");
        else if (flag == "-u") cl.warmup_steps = flag_int(f, value, 0, INT_MAX, "a non-negative integer");
        else if (flag == "-F") cl.final_lr_fraction = flag_float(f, value, 0.f, 1.f, "a fraction in [0, 1]");
        else if (flag == "-c") cl.optimizer.weight_decay = flag_float(f, value, 0.f, FLT_MAX, "a non-negative number");
        else if (flag == "--clip") cl.optimizer.grad_clip = flag_float(f, value, 0.f, FLT_MAX, "a non-negative number");
        else if (flag == "-v") cl.val_interval = flag_int(f, value, 0, INT_MAX, "a non-negative integer");
        else if (flag == "--val-batches") cl.val_batches = flag_int(f, value, 1, INT_MAX, "a positive integer");
        else if (flag == "--seed") cl.seed = (uint64_t)flag_int64(f, value, 0, INT64_MAX, "a non-negative integer");
        else if (flag == "--gpu-mem") cl.gpu_mem_gib = parse_gib(f, value);
        else if (flag == "--host-mem") cl.host_mem_gib = parse_gib(f, value);
        else if (flag == "--offload") o.offload = parse_bool(f, value) ? OFFLOAD_ALL : 0;
        else if (flag == "--keep-attention") o.keep_attention = parse_bool(f, value);
        else if (flag == "--state-offload") o.state_offload = parse_bool(f, value);
        else if (flag == "--attention-blocks") o.attention_blocks = flag_int(f, value, 0, INT_MAX, "0 (automatic) or a positive count of query blocks");
        else if (flag == "--segment") o.segment = flag_int(f, value, 0, INT_MAX, "0 (automatic) or a positive count of layers");
        else if (flag == "--profile") cl.profile = parse_bool(f, value);
        else if (flag == "--doc-mask") o.doc_mask = parse_bool(f, value);
        else if (flag == "-o") cl.checkpoint_dir = value;
        else if (flag == "-k") cl.checkpoint_every = flag_int(f, value, 0, INT_MAX, "0 (only at the end) or a positive integer");
        else if (flag == "-y") cl.resume = parse_bool(f, value);
        else if (flag == "--overwrite") cl.overwrite = parse_bool(f, value);
        else if (flag == "--export") cl.export_dir = value;
        else if (flag == "--overwrite-export") cl.overwrite_export = parse_bool(f, value);
        else if (flag == "-g") cl.sample_tokens = flag_int(f, value, 0, INT_MAX, "a non-negative integer");
        else if (flag == "-s") cl.sample_every = flag_int(f, value, 0, INT_MAX, "0 (only at the end) or a positive integer");
        else if (flag == "--temperature") cl.temperature = flag_float(f, value, 0.f, FLT_MAX, "a non-negative number");
        else if (flag == "-d") cl.tokens_per_update = flag_int64(f, value, 1, INT64_MAX, "a positive integer");
        else if (flag == "--nonfinite-limit") cl.nonfinite_limit = flag_int(f, value, 1, INT_MAX, "a positive integer");
        else if (flag == "-L") cl.log_path = value;
        else if (flag == "--dp") o.dp = flag_int(f, value, 1, 4096, "a positive integer (ranks)");
        else if (flag == "--sp") o.sp = flag_int(f, value, 1, 4096, "a positive integer (ranks)");
        else if (flag == "--zero") o.zero = flag_int(f, value, 0, 2, "0 (automatic), 1 or 2");
        else if (flag == "--comm-timeout") cl.comm_timeout_s = flag_double(f, value, 0, 1e9, "0 (never) or a number of seconds");
        else if (flag == "--attention") {
            if (strcmp(value, "mma") != 0 && strcmp(value, "sm90") != 0) usage_error("%s: must be mma or sm90 (got \"%s\")", f, value);
            cl.attention = value;
        }
        else if (flag == "--attention-selftest") cl.attention_selftest = parse_bool(f, value);
        else if (flag == "--top-p") cl.top_p = flag_float(f, value, FLT_TRUE_MIN, 1.f, "a probability in (0, 1]");
    }
    auto given = [&](const char* flag) { return std::any_of(argv + 1, argv + argc, [&](const char* a) { return strcmp(a, flag) == 0; }); };
    if (!given("--doc-mask")) cl.options.doc_mask = !cl.random_tokens;  // shards hold documents; random tokens none
    if (cl.custom_config) {
        if (given("-e")) usage_error("-e and --config: give one of them");
    } else if (is_directory(cl.model_name)) {  // a Hugging Face directory: only its config.json is read here
        std::string error;
        if (!hf_read_config(cl.model_name, &cl.config, &error)) usage_error("-e: %s", error.c_str());
        cl.hf_dir = cl.model_name;
    } else if (!find_model_config(cl.model_name, &cl.config)) {
        usage_error("-e: unknown model \"%s\" (known: %s)", cl.model_name, model_config_names().c_str());
    }
    if (cl.resume && !cl.checkpoint_dir) usage_error("-y 1: needs -o DIR, the directory to resume from");
    if (given("-s") && cl.sample_tokens == 0) usage_error("-s: samples need -g N, the tokens to sample");
    if (given("--val-batches") && cl.val_interval == 0) usage_error("--val-batches: validation needs -v N, its interval");
    if (cl.checkpoint_every > 0 && !cl.checkpoint_dir) usage_error("-k %d: needs -o DIR, where checkpoints go", cl.checkpoint_every);
    if (cl.overwrite && !cl.checkpoint_dir) usage_error("--overwrite 1: needs -o DIR, whose checkpoints it replaces");
    if (cl.overwrite_export && !cl.export_dir) usage_error("--overwrite-export 1: needs --export DIR, the directory it replaces");
    if (cl.overwrite && cl.resume) usage_error("--overwrite 1 and -y 1: a run either continues the checkpoints in -o or replaces them");
    if (cl.tokens_per_update > 0) {
        std::string problem;
        cl.micro_batches = accumulation_micro_batches(cl.tokens_per_update, cl.options.B, cl.options.T, &problem);
        if (cl.micro_batches == 0) usage_error("%s", problem.c_str());
    }
    if (cl.options.dp * cl.options.sp > 1) {  // ZeRO-1 shards the update that runs after backward; the fused path is one GPU's
        if (cl.options.fused_optimizer == 1)
            usage_error("--sp %d --dp %d with -f 1: not supported yet (give -f 0)", cl.options.sp, cl.options.dp);
        cl.options.fused_optimizer = 0;
    }
    std::string problem = training_options_problem(cl.config, cl.options);
    if (!problem.empty()) usage_error("%s", problem.c_str());
    int head_dim = cl.config.head_dim();
    if (head_dim != 64 && head_dim != 128)
        usage_error("%s: head_dim d_model / n_head = %d, but the GPU attention supports 64 and 128",
                    cl.custom_config ? "--config" : "-e", head_dim);
    if (cl.config.plan_only && !cl.dry_run && !cl.print_max_T)
        usage_error("-e %s: plan only, too large to train on one GPU here (--dry-run and --max-T work)", cl.config.name);
    return cl;
}

// ----------------------------------------------------------------------------
// preflight: everything that can be checked without a GPU, before the GPU is touched (--dry-run runs
// the same checks, so a dry run that passes describes a run that starts)

// A run's identity, recorded in its checkpoints: a resume (-y 1) must match every field, and one that
// does not is refused with each differing field named (checkpoint.h's run_identity_differences).
static RunIdentity run_identity(const CommandLine& cl) {
    auto number = [](double x) { char text[32]; snprintf(text, sizeof text, "%.9g", x); return std::string(text); };
    const TrainingOptions& o = cl.options;
    // B: the rows of one step over the data-parallel ranks, so a run resumes on another number of them
    return {{"B", std::to_string(o.B * o.dp)}, {"T", std::to_string(o.T)},
            {"tokens_per_update", std::to_string((long long)cl.micro_batches * o.B * o.dp * o.T)},
            {"train_data", cl.random_tokens ? "random tokens" : cl.train_pattern}, {"doc_mask", o.doc_mask ? "1" : "0"},
            {"optimizer_state", o.bf16_optimizer_state ? "bf16" : "fp32"}, {"master_weights", o.master_weights ? "1" : "0"},
            {"fused_optimizer", o.fused_optimizer < 0 ? "automatic" : std::to_string(o.fused_optimizer)}, {"seed", std::to_string(cl.seed)},
            {"lr", number(cl.optimizer.lr)}, {"warmup", std::to_string(cl.warmup_steps)},
            {"final_lr_fraction", number(cl.final_lr_fraction)}, {"weight_decay", number(cl.optimizer.weight_decay)},
            {"clip", number(cl.optimizer.grad_clip)}, {"steps", std::to_string(cl.steps)}};
}

// Creates dir and its parents if missing (dir itself not a link) and proves it writable with a file
// made and removed there (file_io.h: a fresh name, no link followed, nothing left behind).
static void ensure_writable_directory(const char* flag, const std::string& dir) {
    std::string error;
    if (!make_directories(dir, &error) || !probe_directory_writable(dir, &error)) usage_error("%s: %s", flag, error.c_str());
}

// The ranks of this process: one, or those mpirun (srun) started (start_ranks)
static Parallel ranks;

// The training data's split: data-parallel rank dp_rank of dp reads its own batches (rank-strided); the
// sequence-parallel ranks of a group would read the same ones
static int dp_rank() { return ranks.dp_rank(); }

// A checkpoint's data position, for this rank's split of the same batches (written on another number of ranks)
static void resume_loader(DataLoader* loader, const DataLoaderState& saved) {
    DataLoaderState state = dataloader_state_for_ranks(saved, loader->B, loader->rank, loader->num_ranks);
    dataloader_resume(loader, &state);
}

// Shards: every header of the pattern's files, their sizes and enough windows (dataloader_init refuses
// with one line), without reading their tokens; where given, a checkpoint's position in them. Training data
// is split over the data-parallel ranks; validation is read whole by each.
static void check_shards(const CommandLine& cl, const char* pattern, bool shuffle, const DataLoaderState* resume = nullptr) {
    DataLoader loader;
    dataloader_init(&loader, pattern, cl.options.B, cl.options.T, shuffle ? dp_rank() : 0, shuffle ? ranks.dp : 1, shuffle,
                    cl.seed, cl.config.vocab_size);
    if (resume) resume_loader(&loader, *resume);
    dataloader_free(&loader);
}

// -y 1: the checkpoint the run would resume, read whole before the GPU is touched: its metadata's
// model, run and field ranges, its data loader's position in the shards, every array's checksum
static void check_resume_checkpoint(const CommandLine& cl, const std::string& path) {
    SafetensorsReader reader;
    CheckpointInfo info;
    std::string error;
    if (!checkpoint_open(path, &reader, &info, &error)) safetensors_exit_on_error(error);
    if (hf_config_json(info.config, "F32") != hf_config_json(cl.config, "F32"))
        file_error(path.c_str(), "its model (%s) is not this run's (%s)", info.config.name, cl.config.name);
    std::string differences = run_identity_differences(info, run_identity(cl));
    if (!differences.empty())
        file_error(path.c_str(), "written by another run (-y 1 continues the same run): %s", differences.c_str());
    if (info.step > cl.steps)
        file_error(path.c_str(), "its step %lld is beyond this run's -n %d", (long long)info.step, cl.steps);
    checkpoint_adamw_updates(info, path);
    if (!cl.random_tokens) check_shards(cl, cl.train_pattern, true, &info.loader);
    for (const CheckpointArray& a : checkpoint_arrays(cl.config, cl.options))
        if (!checkpoint_read_array(reader, a.name, a.dtype, a.count, nullptr, &error)) safetensors_exit_on_error(error);
}

static void preflight(const CommandLine& cl) {
    std::string error;
    if (cl.hf_dir && !cl.resume && !hf_read_weights(cl.hf_dir, cl.config, nullptr, &error))
        usage_error("-e: %s", error.c_str());
    if (!cl.random_tokens) {
        check_shards(cl, cl.train_pattern, true);
        if (cl.val_interval > 0) check_shards(cl, cl.val_pattern, false);
    }
    if (cl.checkpoint_dir) {
        ensure_writable_directory("-o", cl.checkpoint_dir);
        std::vector<std::string> complete, temporary;
        checkpoint_files(cl.checkpoint_dir, &complete, &temporary);
        if (cl.resume) {
            if (complete.empty()) usage_error("-y 1: no checkpoint in %s", cl.checkpoint_dir);
            check_resume_checkpoint(cl, complete.back());
        } else if (!complete.empty() && !cl.overwrite) {
            usage_error("-o: %s already holds checkpoints (latest %s); continue that run with -y 1, or replace them "
                        "with --overwrite 1", cl.checkpoint_dir, complete.back().c_str());
        }
    }
    if (cl.export_dir && !hf_export_possible(cl.export_dir, cl.overwrite_export, &error)) usage_error("--export: %s", error.c_str());
    if (cl.log_path && !RunLog::check(cl.log_path, cl.resume, &error)) usage_error("-L: %s", error.c_str());
}

// At start-up (not in a dry run): a killed checkpoint write's temporary files go (said). Returns, with
// --overwrite 1, the earlier run's checkpoints, which go once this run's first checkpoint is written
// (save_checkpoint), so a run that stops before then leaves them.
static std::vector<std::string> clean_checkpoint_directory(const CommandLine& cl) {
    std::vector<std::string> complete, temporary;
    if (!cl.checkpoint_dir) return complete;
    checkpoint_files(cl.checkpoint_dir, &complete, &temporary);
    for (const std::string& path : temporary)  // rank 0's to remove: the ranks share the directory
        if (ranks.rank == 0 && remove(path.c_str()) != 0) usage_error("-o: cannot remove %s (%s)", path.c_str(), strerror(errno));
    if (!temporary.empty())
        printf("checkpoints: removed %zu temporary file(s) of an interrupted write from %s\n", temporary.size(), cl.checkpoint_dir);
    if (!cl.overwrite) complete.clear();
    return complete;
}

// --host-mem's default: the machine's memory (MemTotal in /proc/meminfo) less a quarter, at least 8 GiB,
// held back for the system, the data loader and the host copies checkpoints and samples make; 120 in a
// dry run (the budget of issue 10), or with no /proc/meminfo
static double default_host_mem_gib(bool dry_run) {
    FILE* f = dry_run ? nullptr : fopen("/proc/meminfo", "r");
    double kib = 0.0;
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) if (sscanf(line, "MemTotal: %lf kB", &kib) == 1) break;
        fclose(f);
    }
    if (kib <= 0.0) return 120.0;
    double total = kib / (1 << 20);
    return std::max(0.0, total - std::max(8.0, total / 4));
}

// the budget of a card of gpu_mem_gib and the host memory --host-mem gives (or its default)
static MemoryBudget memory_budget(const CommandLine& cl, double gpu_mem_gib) {
    MemoryBudget budget;
    budget.gpu_gib = gpu_mem_gib;
    budget.host_gib = cl.host_mem_gib > 0 ? cl.host_mem_gib : default_host_mem_gib(cl.dry_run || cl.print_max_T);
    return budget;
}

// "a card of 80.0 GiB and 120.0 GiB of pinned host memory"
static std::string budget_text(const MemoryBudget& b) {
    char text[96];
    snprintf(text, sizeof text, "a card of %.1f GiB and %.1f GiB of pinned host memory", b.gpu_gib, b.host_gib);
    return text;
}

// What would fit the budget instead: the longest T at these options, then each memory-saving choice not
// taken, alone and (if several) all together, at this T. One line, for the error and the dry run.
static std::string settings_that_fit(const ModelConfig& c, const TrainingOptions& o, const MemoryBudget& budget) {
    int longest_T = max_T_that_fits(c, o, budget);
    std::string s = longest_T > 0 ? "-T " + std::to_string(longest_T) + " at these options" : "no T at these options";
    std::vector<std::pair<std::string, TrainingOptions>> alternatives;
    TrainingOptions all = o;
    std::string all_flags;
    auto consider = [&](bool taken, const char* flags, void (*choose)(TrainingOptions&)) {
        if (taken) return;
        TrainingOptions alone = o;
        choose(alone);
        choose(all);
        alternatives.push_back({flags, alone});
        all_flags += (all_flags.empty() ? "" : " ") + std::string(flags);
    };
    consider(o.recompute, "-r 1", [](TrainingOptions& a) { a.recompute = true; });
    consider(o.mlp_chunks == 0 && o.lmhead_chunks == 0, "-m 0 -M 0", [](TrainingOptions& a) { a.mlp_chunks = a.lmhead_chunks = 0; });
    consider(o.bf16_optimizer_state, "-a bf16", [](TrainingOptions& a) { a.bf16_optimizer_state = true; });
    consider(!o.master_weights, "-w 0", [](TrainingOptions& a) { a.master_weights = false; });
    consider(o.fused_optimizer, "-f 1", [](TrainingOptions& a) { a.fused_optimizer = true; });
    consider(o.offload != 0, "--offload 1", [](TrainingOptions& a) { a.offload = OFFLOAD_ALL; });
    consider(o.keep_attention <= 0, "--keep-attention 0", [](TrainingOptions& a) { a.keep_attention = 0; });
    consider(o.segment == 0, "--segment 0", [](TrainingOptions& a) { a.segment = 0; });
    consider(o.state_offload != 0 || o.dp * o.sp > 1, "--state-offload 1", [](TrainingOptions& a) { a.state_offload = 1; });
    consider(o.attention_blocks == 0, "--attention-blocks 0", [](TrainingOptions& a) { a.attention_blocks = 0; });
    if (alternatives.size() > 1) alternatives.push_back({all_flags, all});
    for (const auto& [flags, options] : alternatives) {
        MemoryPlan plan = plan_memory(c, resolve_automatic(c, options, budget));
        char text[160];
        snprintf(text, sizeof text, "; %s: %s (%.1f GiB, %.1f GiB host)", flags.c_str(),
                 plan_fits(plan, budget) ? "fits" : "does not fit", gib(plan.total), gib(plan.host_total));
        s += text;
    }
    return s;
}

// "the plan needs X GiB ... short by Z GiB; nearest settings that fit: ..." for options that do not fit
// (the options as given: automatic chunk counts and offload stay automatic in the alternatives)
static std::string shortfall(const ModelConfig& c, const TrainingOptions& o, const MemoryBudget& budget) {
    MemoryPlan plan = plan_memory(c, resolve_automatic(c, o, budget));
    char text[320];
    snprintf(text, sizeof text, "the plan needs %.1f GiB + %.1f GiB for the CUDA context and %.1f GiB of pinned host memory, "
             "but has %s: short by %.1f GiB on the card, %.1f GiB on the host; nearest settings that fit: ",
             gib(plan.total), CUDA_CONTEXT_RESERVE_GIB, gib(plan.host_total), budget_text(budget).c_str(),
             std::max(0.0, gib(plan.total) + CUDA_CONTEXT_RESERVE_GIB - budget.gpu_gib),
             std::max(0.0, gib(plan.host_total) - budget.host_gib));
    return text + settings_that_fit(c, o, budget);
}

// What the automatic choices chose: " (-f 1: the gradients do not fit on the card; --offload turned on for
// layers 0-9: the plan needs it)"; "" when nothing was automatic or nothing needed saying
static std::string turned_on(const ModelConfig& c, const TrainingOptions& given, const TrainingOptions& resolved) {
    std::vector<std::string> said;
    if (given.fused_optimizer < 0)
        said.push_back(resolved.fused_optimizer ? "-f 1: the gradients do not fit on the card, held on the host"
                                                : "-f 0: every gradient on the card, no host copies");
    if (given.held_gradient_bytes == 0 && resolved.fused_optimizer && resolved.bf16_optimizer_state && resolved.held_gradient_bytes == 4)
        said.push_back("--held-gradients fp32: bf16's staging copy of the gradient slots would not fit on the card");
    int h = std::min(resolved.offload, c.n_layer);
    if (given.state_offload < 0 && resolved.state_offload > 0)
        said.push_back("--state-offload 1: the plan fits only with AdamW m and v in pinned host memory");
    int blocks = attention_blocks_used(resolved);
    if (given.attention_blocks == 0 && blocks > 1)
        said.push_back("--attention-blocks " + std::to_string(blocks) + ": the plan fits only with attention in " + std::to_string(blocks) +
                       " query blocks of " + std::to_string(mini_sequence_length(resolved.T, blocks)) + " tokens, at one more attention "
                       "forward per layer");
    SegmentSchedule segments(resolved.segment, c.n_layer);
    if (given.offload < 0 && h > 0)
        said.push_back("--offload turned on for " + (segments.k > 1 ? std::string("the segment checkpoints")
                                                     : h == c.n_layer ? "all " + std::to_string(h) + " layers"
                                                                      : "layers 0-" + std::to_string(h - 1)) + ": the plan needs it");
    if (given.segment == 0 && segments.k > 1)
        said.push_back("--segment " + std::to_string(segments.k) + ": the plan fits only with segment checkpoints, at one more "
                       "forward of " + std::to_string(segments.recomputed_layers()) + " layers per step");
    if (given.keep_attention < 0)
        said.push_back(resolved.keep_attention ? "--keep-attention 1: the plan fits with the attention outputs kept, so "
                                                 "the recomputation skips the attention forward"
                       : !resolved.recompute ? "--keep-attention 0: nothing is recomputed (-r 0)"
                       : resolved.dp * resolved.sp > 1 ? "--keep-attention 0: not with --sp/--dp yet (one GPU only)"
                       : segments.k > 1 ? "--keep-attention 0: a segment's forward would overwrite the kept outputs"
                       : blocks > 1 ? "--keep-attention 0: not with attention in query blocks yet"
                                        : "--keep-attention 0: the plan would not fit with the attention outputs kept");
    std::string text;
    for (const std::string& part : said) text += (text.empty() ? " (" : "; ") + part;
    return text.empty() ? "" : text + ")";
}

// --dry-run and --max-T: the plan on paper
// --dry-run and --max-T; returns whether the run they describe would start (the plan fits; some T fits)
static bool print_plan_on_paper(const CommandLine& cl) {
    MemoryBudget budget = memory_budget(cl, cl.gpu_mem_gib > 0 ? cl.gpu_mem_gib : 80.0);
    bool starts = true;
    if (cl.dry_run) {
        TrainingOptions options = resolve_automatic(cl.config, cl.options, budget);
        MemoryPlan plan = plan_memory(cl.config, options);
        MemoryPlan standard = plan_memory(cl.config, standard_options(cl.options));
        print_memory_plan(plan, standard);
        print_step_prediction(plan, cl.micro_batches);
        starts = plan_fits(plan, budget);
        if (starts) {
            printf("MST plan: fits %s (%.1f GiB planned + %.1f GiB CUDA context, %.1f GiB pinned)%s\n",
                   budget_text(budget).c_str(), gib(plan.total), CUDA_CONTEXT_RESERVE_GIB, gib(plan.host_total),
                   turned_on(cl.config, cl.options, options).c_str());
        } else {
            printf("MST plan: does not fit %s: %s\n", budget_text(budget).c_str(), shortfall(cl.config, cl.options, budget).c_str());
        }
        printf("standard plan (-m 1 -M 1 -r 0 --offload 0): %s %s (%.1f GiB planned + %.1f GiB CUDA context)\n",
               plan_fits(standard, budget) ? "fits" : "does not fit", budget_text(budget).c_str(), gib(standard.total),
               CUDA_CONTEXT_RESERVE_GIB);
    }
    if (cl.print_max_T) {
        int longest = max_T_that_fits(cl.config, cl.options, budget);
        TrainingOptions at_longest = cl.options;
        at_longest.T = std::max(1, longest);
        printf("longest T on %s (B=%d): %d with these options%s, %d standard (-m 1 -M 1 -r 0 --offload 0)\n",
               budget_text(budget).c_str(), cl.options.B, longest,
               turned_on(cl.config, cl.options, resolve_automatic(cl.config, at_longest, budget)).c_str(),
               max_T_that_fits(cl.config, standard_options(cl.options), budget));
        starts &= longest > 0;
    }
    return starts;
}

// ----------------------------------------------------------------------------
// training loop

// the card's dense bf16 peak for MFU: from the known cards' table, else by compute capability; 0 if unknown
static double peak_bf16_flops(const cudaDeviceProp& prop) {
    if (const CardRates* card = card_rates_for(prop.name)) return card->bf16_flops;
    if (prop.major == 9) return 989e12;
    if (prop.major == 8 && prop.minor == 0) return 312e12;
    return 0.0;
}

// A source of batches: shards through dataloader.h, or random tokens.
// Rank `rank` of `ranks` reads every ranks-th batch from the rank-th (random tokens: the rows a run on one rank
// with B x ranks rows would give it).
struct Batches {
    bool random;
    DataLoader loader;
    std::vector<int> inputs, targets;
    uint64_t seed, served = 0;
    int rank = 0, ranks = 1;
};

static void batches_init(Batches* b, const CommandLine& cl, const char* pattern, bool shuffle, uint64_t stream, int rank,
                         int ranks) {
    int N = cl.options.B * cl.options.T;
    b->random = cl.random_tokens;
    b->seed = cl.seed ^ (stream << 56);
    b->rank = rank;
    b->ranks = ranks;
    b->inputs.resize(N);
    b->targets.resize(N);
    if (!b->random)
        dataloader_init(&b->loader, pattern, cl.options.B, cl.options.T, rank, ranks, shuffle, cl.seed, cl.config.vocab_size);
}

static void batches_next(Batches* b, const CommandLine& cl) {
    int N = cl.options.B * cl.options.T;
    if (b->random) {
        random_batch(b->inputs.data(), b->targets.data(), cl.options.B, cl.options.T, cl.config.vocab_size, b->seed,
                     b->served * b->ranks + b->rank);
    } else {
        dataloader_next_batch(&b->loader);
        std::copy(b->loader.inputs, b->loader.inputs + N, b->inputs.begin());
        std::copy(b->loader.targets, b->loader.targets + N, b->targets.begin());
    }
    b->served++;
}

// validation: the first val_batches batches, the same ones every time
static float validation_loss(Model* m, Batches* val, const CommandLine& cl) {
    if (val->random) val->served = 0; else dataloader_reset(&val->loader);
    double sum = 0.0;
    for (int i = 0; i < cl.val_batches; i++) {
        batches_next(val, cl);
        sum += model_loss(m, val->inputs.data(), val->targets.data());
    }
    return (float)(sum / cl.val_batches);
}

// -o: a checkpoint of the steps done, the data loader standing after the last step's batch (random
// batches need nothing: batch i is a function of the seed and i), and the sampler's generator; then
// the earlier run's checkpoints that --overwrite 1 replaces (all but the one just written) go
static void save_checkpoint(Model* m, const CommandLine& cl, const Batches& b, uint64_t sample_rng,
                            std::vector<std::string>* replaced) {
    CheckpointInfo info;
    info.rng_state = sample_rng;
    if (!b.random) info.loader = dataloader_state(&b.loader);
    set_run_identity(&info, run_identity(cl));
    std::string written = model_save_checkpoint(m, cl.checkpoint_dir, info);
    printf("checkpoint: %s\n", written.c_str());
    if (replaced->empty() || ranks.rank != 0) return;
    for (const std::string& path : *replaced)
        if (path != written && remove(path.c_str()) != 0) usage_error("-o: cannot remove %s (%s)", path.c_str(), strerror(errno));
    printf("checkpoints: --overwrite 1 replaced %zu checkpoint(s) of an earlier run in %s\n", replaced->size(), cl.checkpoint_dir);
    replaced->clear();
}

// -g: samples are decoded with tokenizer.model for Llama 3's vocabulary; else (no file, or a test
// vocabulary) they are printed as ids, said once
static bool load_sample_tokenizer(const ModelConfig& c, Tokenizer* tokenizer) {
    std::string error;
    FILE* f = c.vocab_size == LLAMA3_VOCAB_SIZE ? open_regular_file(DEFAULT_TOKENIZER_PATH, &error) : nullptr;
    if (!f) {
        printf("note: samples are printed as token ids (%s)\n", c.vocab_size != LLAMA3_VOCAB_SIZE ?
               "not Llama 3's vocabulary" : "no tokenizer.model; make tokenizer creates it");
        return false;
    }
    fclose(f);
    tokenizer_init(tokenizer, DEFAULT_TOKENIZER_PATH);
    return true;
}

// cl.sample_tokens tokens after <|begin_of_text|> (token 0 in a test vocabulary), generated on the CPU
// from a host copy of the weights (generate.h: a KV cache, so linear in the length)
static void print_sample(Model* m, const CommandLine& cl, const Tokenizer* tokenizer, uint64_t* rng, int step) {
    std::vector<int> tokens = {m->config.vocab_size > LLAMA3_BEGIN_OF_TEXT ? LLAMA3_BEGIN_OF_TEXT : 0};
    generate(m->config, download_weights(m).data(), &tokens, cl.sample_tokens, cl.temperature, cl.top_p, rng);
    std::string text;
    if (tokenizer) tokenizer_decode(tokenizer, tokens.data() + 1, tokens.size() - 1, &text);
    else for (size_t i = 1; i < tokens.size(); i++) text += (i > 1 ? " " : "") + std::to_string(tokens[i]);
    printf("sample at step %d: %s\n", step, text.c_str());
}

// "45s", "3m05s", "2h10m": a step line's elapsed time and estimate of the time left
static std::string duration_text(double seconds) {
    long s = std::lround(std::max(0.0, seconds));
    char text[32];
    if (s < 60) snprintf(text, sizeof text, "%lds", s);
    else if (s < 3600) snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
    else snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, s % 3600 / 60);
    return text;
}

// this process's resident host memory (VmRSS in /proc/self/status), 0 where unknown
static double host_memory_gib() {
    FILE* f = fopen("/proc/self/status", "r");
    if (!f) return 0.0;
    char line[256];
    long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lld kB", &kib) == 1) break;
    fclose(f);
    return kib / (1024.0 * 1024.0);
}

// -L: one record (run_log.h), or one error line and exit status 1
static void log_record(RunLog* log, const std::string& record) {
    std::string error;
    if (!log->write(record, &error)) usage_error("-L: %s", error.c_str());
}

// validation every -v steps: printed and logged
static void report_validation(Model* m, Batches* val, const CommandLine& cl, RunLog* log, int step) {
    float loss = validation_loss(m, val, cl);
    printf("step %4d | val loss %.4f\n", step, loss);
    log_record(log, validation_record_json(step, loss));
}

// Why there is no usable GPU, in words. The runtime says cudaErrorInsufficientDriver both for a driver
// too old and for none at all (no libcuda.so.1); cudaDriverGetVersion tells them apart: 0 without one.
static std::string no_gpu_cause(cudaError_t error) {
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
    if (driver == 0) return "no NVIDIA driver: libcuda.so.1 is not installed or not on the library path";
    if (error == cudaErrorInsufficientDriver)
        return "the NVIDIA driver supports CUDA up to " + version(driver) + ", older than this build's CUDA " +
               version(runtime) + " runtime: update the driver";
    if (error == cudaErrorNoDevice) return "the NVIDIA driver (CUDA " + version(driver) + ") sees no GPU";
    return cudaGetErrorString(error);
}

// --attention: the sm_90a forward and backward on compute capability 9.0 once their self-test passes, else (or
// with --attention mma) the mma.sync kernels. Prints one line saying which; a failed self-test is one warning line.
// (--attention sm90 on another card was refused at start-up.)
static bool choose_attention(const CommandLine& cl, const cudaDeviceProp& prop) {
    if (cl.attention ? strcmp(cl.attention, "sm90") != 0 : prop.major != 9) {
        printf("attention kernels: mma.sync\n");
        return false;
    }
    if (!cl.attention_selftest) {
        printf("attention kernels: sm_90a forward and backward (self-test skipped: --attention-selftest 0)\n");
        return true;
    }
    SelftestPerturbation perturb;  // planted disagreements (dev/cpu_device_train.sh)
    if (const char* x = getenv("MST_ATTENTION_SELFTEST_PERTURB")) perturb.forward = (float)atof(x);
    if (const char* x = getenv("MST_ATTENTION_SELFTEST_PERTURB_BACKWARD")) perturb.backward = (float)atof(x);
    std::string report;
    if (attention_selftest(cl.config.head_dim(), perturb, &report)) {
        printf("attention kernels: sm_90a forward and backward (start-up self-test: %s)\n", report.c_str());
        return true;
    }
    printf("warning: the sm_90a attention kernels failed their start-up self-test against mma.sync (%s): using mma.sync\n", report.c_str());
    return false;
}

// The ranks: one, or under a launcher (mpirun, srun: its world size in the environment) or with --dp above 1,
// those MPI started, which must be --dp x --sp. Every rank's error line then names it, any rank's exit before
// the end stops them all (MPI_Abort: no rank waits in a collective for one that left), and only rank 0 prints
// (its stdout; the others' goes to /dev/null).
static int launcher_world_size() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"})
        if (const char* value = getenv(name)) return atoi(value);
    return 1;
}

#ifdef MST_WITH_NCCL
static void abort_unfinished_ranks() {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) {
        fflush(stdout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}
#endif

static void start_ranks(const CommandLine& cl) {
    ranks.dp = cl.options.dp;
    ranks.sp = cl.options.sp;
    int wanted = ranks.dp * ranks.sp, launched = launcher_world_size();
    if (wanted == 1 && launched <= 1) return;
    if (launched <= 1)  // refused before MPI starts: a lone process would be an MPI singleton of one rank
        usage_error("--sp %d x --dp %d = %d ranks, but no launcher started ranks (mpirun -np %d, or srun)", ranks.sp,
                    ranks.dp, wanted, wanted);
#ifndef MST_WITH_NCCL
    usage_error("--dp %d: this build has no MPI and NCCL (make builds them in where mpicxx and nccl.h are)", ranks.dp);
#else
    ranks.host = comm_init_mpi(nullptr, nullptr);
    atexit(abort_unfinished_ranks);
    ranks.rank = ranks.host.rank;
    ranks.world = ranks.host.size;
    error_line_rank = "rank " + std::to_string(ranks.rank) + ": ";
    comm_watchdog_start(cl.comm_timeout_s, ranks.rank);  // no rank hangs in a collective for one that left
    if (ranks.world != wanted)
        usage_error("%d ranks were started, but --dp %d x --sp %d = %d (start --dp x --sp ranks: mpirun -np %d)", ranks.world,
                    ranks.dp, ranks.sp, wanted, wanted);
    MPI_Comm node;  // the ranks on this machine: the local rank picks the GPU
    comm_mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ranks.rank, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
    comm_mpi_check(MPI_Comm_rank(node, &ranks.local_rank), "MPI_Comm_rank");
    MPI_Comm_free(&node);
    if (ranks.rank != 0 && !freopen("/dev/null", "w", stdout)) error_exit("cannot send rank " + std::to_string(ranks.rank) + "'s stdout to /dev/null");
#endif
}

// The end of a run of several ranks: the NCCL group, then MPI
static void finish_ranks() {
#ifdef MST_WITH_NCCL
    if (ranks.world == 1 && ranks.host.backend == COMM_SINGLE) return;
    comm_free(ranks.sp_device);
    comm_free(ranks.sp_host);
    comm_free(ranks.device);
    fflush(stdout);
    MPI_Finalize();
#endif
}

// A v2 kernel that no GPU has confirmed passes its start-up self-test against v1, or one warning line says it
// failed (the caller then uses v1); perturb_variable plants a disagreement (dev/test_cli.sh)
template <typename Selftest>
static bool passes_selftest(const char* kernel, const char* perturb_variable, Selftest selftest) {
    const char* perturb = getenv(perturb_variable);
    std::string report;
    if (selftest(perturb ? (float)atof(perturb) : 0.f, &report)) return true;
    printf("warning: %s v2 failed its start-up self-test against v1 (%s): using v1\n", kernel, report.c_str());
    return false;
}

// RoPE v2 where it applies (half the head dim a multiple of 8) once its self-test passes, else v1
static void choose_rope(const CommandLine& cl) {
    if ((cl.config.head_dim() / 2) % 8 != 0) return;  // rope_qk uses v1 here
    bool ok = passes_selftest("RoPE", "MST_ROPE_SELFTEST_PERTURB",
                              [&](float perturb, std::string* report) { return rope_selftest(cl.config, perturb, report); });
    if (!ok) rope_version() = 1;
}

// RMSNorm backward v2 where it has a launch shape once its self-test passes, else v1
static void choose_rmsnorm(const CommandLine& cl) {
    RmsnormV2Shape shape;
    if (!rmsnorm_backward_v2_shape(cl.config.d_model, cl.config.d_model % 8 == 0, &shape)) return;  // v1 here
    bool ok = passes_selftest("RMSNorm backward", "MST_RMSNORM_SELFTEST_PERTURB",
                              [&](float perturb, std::string* report) { return rmsnorm_selftest(cl.config, perturb, report); });
    rmsnorm_backward_version() = ok ? 2 : 1;
}

static int train(const CommandLine& cl) {
    cudaDeviceProp prop;
    int device_count = 0;
    cudaError_t no_gpu = cudaGetDeviceCount(&device_count);
    int device = device_count > 0 ? ranks.local_rank % device_count : 0;  // one GPU per rank on a node
    if (no_gpu == cudaSuccess) no_gpu = cudaSetDevice(device);
    if (no_gpu == cudaSuccess) no_gpu = cudaGetDeviceProperties(&prop, device);
    if (no_gpu != cudaSuccess)
        usage_error("no usable GPU (%s); --dry-run and --max-T work without one", no_gpu_cause(no_gpu).c_str());
#ifdef MST_WITH_NCCL
    if (ranks.host.backend == COMM_MPI) {
        ranks.device = comm_init_nccl(ranks.host);  // rank 0's id, broadcast over MPI
        if (ranks.sp > 1) {  // the Ulysses groups: S consecutive ranks
            ranks.sp_host = comm_split(ranks.host, ranks.dp_rank(), ranks.sp_rank());
            ranks.sp_device = comm_split(ranks.device, ranks.dp_rank(), ranks.sp_rank());
        }
    }
#endif
    if (cl.attention && !strcmp(cl.attention, "sm90") && prop.major != 9)
        usage_error("--attention sm90: needs a compute capability 9.0 card (H100, H200); %s is %d.%d", prop.name, prop.major, prop.minor);
    size_t free_bytes, total_bytes;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    double card_gib = gib(total_bytes);
    if (cl.gpu_mem_gib > 0) card_gib = std::min(card_gib, cl.gpu_mem_gib);
    MemoryBudget budget = memory_budget(cl, card_gib);
    TrainingOptions options = resolve_automatic(cl.config, cl.options, budget);
    MemoryPlan plan = plan_memory(cl.config, options);
    if (!plan_fits(plan, budget)) usage_error("%s", shortfall(cl.config, cl.options, budget).c_str());

    Batches train_batches, val_batches;
    batches_init(&train_batches, cl, cl.train_pattern, true, 1, dp_rank(), ranks.dp);
    if (cl.val_interval > 0) batches_init(&val_batches, cl, cl.val_pattern, false, 2, 0, 1);
    std::string resume_from = cl.resume ? checkpoint_latest(cl.checkpoint_dir) : "";  // preflight: there is one
    std::vector<std::string> replaced_checkpoints = clean_checkpoint_directory(cl);
    Tokenizer tokenizer;
    bool decode = cl.sample_tokens > 0 && load_sample_tokenizer(cl.config, &tokenizer);

    printf("device: %s, %.1f GiB (planning for %.1f GiB)\n", prop.name, gib(total_bytes), card_gib);
    if (ranks.world > 1)
        printf("ranks: %d (--sp %d x --dp %d: each group of %d its own batches of %d x %d tokens, each rank %d tokens of each "
               "sequence; ZeRO-1: the AdamW state and update sharded)\n", ranks.world, ranks.sp, ranks.dp, ranks.sp,
               cl.options.B, cl.options.T, UlyssesShape(cl.config, ranks.sp, cl.options.B, cl.options.T).Tl);
    printf("attention: %s\n", options.doc_mask ? "within documents (--doc-mask 1: each <|begin_of_text|> starts one)"
                                               : "over the whole sequence (--doc-mask 0)");
    print_memory_plan(plan, plan_memory(cl.config, standard_options(cl.options)));
    bool attention_sm90 = choose_attention(cl, prop);
    choose_rope(cl);  // before the arena exists: the self-tests allocate their own
    choose_rmsnorm(cl);
    Model model;
    model_create(&model, cl.config, options, cl.optimizer, cl.seed, ranks);
    model.attention_sm90 = attention_sm90;
    profile_attach(model.stream, cl.profile);
    int start_step = 0;
    uint64_t sample_rng = (cl.seed * 0x9E3779B97F4A7C15ull) | 1;  // xorshift's state must not be 0
    if (cl.resume) {
        printf("loading checkpoint %s\n", resume_from.c_str());
        flush_stdout();
        CheckpointInfo info = model_load_checkpoint(&model, resume_from);
        start_step = (int)info.step;
        sample_rng = info.rng_state;
        train_batches.served = info.step * (uint64_t)cl.micro_batches;
        if (!train_batches.random) resume_loader(&train_batches.loader, info.loader);
        printf("resumed from %s: %d of %d steps done\n", resume_from.c_str(), start_step, cl.steps);
    } else if (cl.hf_dir) {
        printf("loading weights from %s\n", cl.hf_dir);
        flush_stdout();
        model_import_hf(&model, cl.hf_dir);
        printf("weights: %s\n", cl.hf_dir);
    } else {
        model_init_random(&model);
    }
    RunLog log;  // begun once the run has started; a resumed run keeps its log's records up to its step
    std::string error;
    if (cl.log_path && ranks.rank == 0 && !log.start(cl.log_path, cl.resume ? start_step : -1, &error))  // rank 0 logs
        usage_error("-L: %s", error.c_str());

    size_t tokens_per_step = (size_t)model.B * model.T * cl.micro_batches;  // this rank's rows (its group's, with --sp)
    if (cl.micro_batches > 1)
        printf("gradient accumulation: %d micro-batches of %d x %d tokens per update (-d %zu)\n", cl.micro_batches,
               cl.options.B, cl.options.T, tokens_per_step);
    if (plan.bytes[REGION_HOST_GRADIENTS] > 0)  // each micro-batch's groups go out; all but the first's come back, then the update's
        printf("exact clipping: %.2f GiB pinned host memory, %.2f GiB over PCIe per update\n", gib(plan.bytes[REGION_HOST_GRADIENTS]),
               gib(plan.bytes[REGION_HOST_GRADIENTS]) * 2 * cl.micro_batches);
    if (plan.bytes[REGION_HOST_ADAM_STATE] > 0)  // in for the update and back out, once per update
        printf("AdamW state on the host: %.2f GiB pinned host memory, %.2f GiB over PCIe per update\n",
               gib(plan.bytes[REGION_HOST_ADAM_STATE]), gib(plan.bytes[REGION_HOST_ADAM_STATE]) * 2);
    double flops_per_step = training_flops_per_token(cl.config, cl.options.T) * tokens_per_step / ranks.sp;  // one GPU's
    double peak = peak_bf16_flops(prop);
    // the step model's prediction for this card (mst/step_model.h), printed beside each measured step; none for
    // the CPU device's virtual card (its time is not a GPU's)
    const CardRates* card = mst::on_cpu_device() ? nullptr : card_rates_for(prop.name);
    double predicted_ms = card ? 1e3 * predict_step(plan, *card, cl.micro_batches).total_s : 0.0;
    NonFiniteGuard guard;
    guard.limit = cl.nonfinite_limit;
    std::vector<int> step_inputs(tokens_per_step), step_targets(tokens_per_step);
    auto run_start = std::chrono::steady_clock::now();
    double later_steps_seconds = 0.0;  // the steps after the first (which includes warm-up), for the estimate
    for (int step = start_step; step < cl.steps; step++) {
        if (cl.val_interval > 0 && step % cl.val_interval == 0) report_validation(&model, &val_batches, cl, &log, step);
        for (int micro = 0; micro < cl.micro_batches; micro++) {
            batches_next(&train_batches, cl);
            std::copy(train_batches.inputs.begin(), train_batches.inputs.end(), step_inputs.begin() + (size_t)micro * model.N);
            std::copy(train_batches.targets.begin(), train_batches.targets.end(), step_targets.begin() + (size_t)micro * model.N);
        }
        float lr = learning_rate_at(step, cl.steps, cl.optimizer.lr, cl.warmup_steps, cl.final_lr_fraction);
        auto start = std::chrono::steady_clock::now();
        float grad_norm;
        bool skipped;
        float loss = model_step(&model, step_inputs.data(), step_targets.data(), lr, true, &grad_norm, cl.micro_batches, &skipped);
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        guard.skip(loss, grad_norm);  // the same test model_step made: counts the skipped steps in a row
        CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
        StepRecord r = {step + 1, loss, lr, grad_norm, clip_scale(grad_norm, cl.optimizer.grad_clip), skipped,
                        seconds * 1e3, tokens_per_step * ranks.dp / seconds, peak > 0 ? 100.0 * flops_per_step / seconds / peak : -1.0,
                        gib(total_bytes - free_bytes), host_memory_gib(), cl.profile ? profiler.last_ms : nullptr};
        char mfu[32] = "-";
        if (peak > 0) snprintf(mfu, sizeof mfu, "%.1f%%", r.mfu_percent);
        if (step > start_step) later_steps_seconds += seconds;
        double per_step = step > start_step ? later_steps_seconds / (step - start_step) : seconds;
        double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
        char predicted[32] = "";
        if (predicted_ms > 0) snprintf(predicted, sizeof predicted, " (predicted %.0f)", predicted_ms);
        printf("step %4d/%d | loss %.4f | lr %.2e | norm %.3f | clip %.3f | %.0f ms%s | %.0f tok/s | MFU %s | GPU mem %.2f GiB"
               " | %s elapsed, ~%s left%s\n", r.step, cl.steps, loss, lr, grad_norm, r.clip_scale, r.ms, predicted,
               r.tokens_per_second, mfu, r.gpu_mem_gib, duration_text(elapsed).c_str(), duration_text(per_step * (cl.steps - step - 1)).c_str(),
               skipped ? " | SKIPPED: non-finite loss or gradient norm, no update" : "");
        log_record(&log, step_record_json(r));
        if (step == start_step)
            printf("memory: planned %.2f GiB (the arena), in use on the device %.2f GiB (arena + CUDA context), "
                   "allocations %d; pinned host %.2f GiB, allocations %d\n", gib(plan.total),
                   gib(total_bytes - free_bytes), device_allocations, gib(plan.host_total), host_allocations);
        if (guard.should_stop()) {
            fflush(stdout);
            fprintf(stderr, "error: %d steps in a row (%d to %d) had a non-finite loss or gradient norm (--nonfinite-limit %d); "
                    "stopping: the weights are those after step %d\n", guard.in_a_row, step + 2 - guard.in_a_row, step + 1,
                    guard.limit, step + 1 - guard.in_a_row);
            model_free(&model);
            finish_ranks();
            return 1;
        }
        // the last step's sample and checkpoint come after the loop; the sample before the checkpoint,
        // so the checkpoint holds the generator as the next sample finds it
        int done = step + 1;
        if (done < cl.steps && cl.sample_tokens > 0 && cl.sample_every > 0 && done % cl.sample_every == 0)
            print_sample(&model, cl, decode ? &tokenizer : nullptr, &sample_rng, done);
        if (done < cl.steps && cl.checkpoint_dir && cl.checkpoint_every > 0 && done % cl.checkpoint_every == 0)
            save_checkpoint(&model, cl, train_batches, sample_rng, &replaced_checkpoints);
        flush_stdout();
    }
    print_profile(plan, card, cl.micro_batches);
    if (cl.val_interval > 0) report_validation(&model, &val_batches, cl, &log, cl.steps);
    model_apply_pending_update(&model);  // the end: the last step's update
    if (cl.sample_tokens > 0) print_sample(&model, cl, decode ? &tokenizer : nullptr, &sample_rng, cl.steps);
    if (cl.checkpoint_dir && start_step < cl.steps) save_checkpoint(&model, cl, train_batches, sample_rng, &replaced_checkpoints);
    if (cl.export_dir) {
        model_export_hf(&model, cl.export_dir, cl.overwrite_export);
        printf("exported: %s/config.json, %s/model.safetensors\n", cl.export_dir, cl.export_dir);
    }
    if (decode) tokenizer_free(&tokenizer);
    if (!log.close_file(&error)) usage_error("-L: %s", error.c_str());
    model_free(&model);
    if (!train_batches.random) dataloader_free(&train_batches.loader);
    if (cl.val_interval > 0 && !val_batches.random) dataloader_free(&val_batches.loader);
    finish_ranks();
    return 0;
}

static int run(int argc, char** argv) {
    // stdout in whole lines: an error line on stderr never lands inside a progress line (a pipe's block buffer
    // would flush one at whatever byte fills it)
    setvbuf(stdout, nullptr, _IOLBF, 0);
    CommandLine cl = parse_command_line(argc, argv);
    if (!cl.dry_run && !cl.print_max_T) start_ranks(cl);  // MPI before the checks, so any rank's error stops all
    preflight(cl);
    if (cl.dry_run || cl.print_max_T) return print_plan_on_paper(cl) ? 0 : 1;
    // a card smaller than the one present: refuse before touching the GPU
    if (cl.gpu_mem_gib > 0) {
        MemoryBudget budget = memory_budget(cl, cl.gpu_mem_gib);
        if (!plan_fits(plan_memory(cl.config, resolve_automatic(cl.config, cl.options, budget)), budget))
            usage_error("%s", shortfall(cl.config, cl.options, budget).c_str());
    }
    return train(cl);
}

int main(int argc, char** argv) { return main_reporting_errors(run, argc, argv); }
#endif
