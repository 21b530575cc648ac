// memory_plan.h: every byte the GPU trainer allocates, on the device and in pinned host memory,
// computed up front by one function.
//
// train_llama allocates one device arena of plan.total bytes and (with --offload) one pinned host arena
// of plan.host_total bytes at start-up, and carves them into the regions below, in this order, each at
// plan.offset[region] of its arena (region_on_host() says which); nothing is allocated afterwards. `--dry-run` prints the
// plan beside the standard plan (no mini-sequences, no recomputation), so the saving of each MST choice
// can be read off region by region.
//
// Notation: N = B*T tokens, C = d_model, Q = n_head*head_dim, KV = n_kv_head*head_dim, F = ffn_dim,
// V = vocab, L = layers, P = parameters, n_mlp = tokens in one MLP mini-sequence, n_lm = tokens in one
// LM-head mini-sequence. Activations and their gradients are bf16 (2 bytes), parameter gradients fp32.
#pragma once
#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "mst/llama_config.h"
#include "mst/token_buckets.h"
#include "mst/training.h"

// cuBLASLt's workspace, taken from the arena (mst_kernels.cuh hands it to cuBLASLt once)
static const size_t CUBLASLT_WORKSPACE_BYTES = 32ull << 20;
// RMSNorm's weight gradient is reduced in this many fixed row chunks (deterministic): partials C x 4 each
static const int RMSNORM_GRADIENT_CHUNKS = 128;
// what the CUDA context, cuBLASLt's handle and kernels' code take outside the arena, held back from the
// card's memory when checking that a plan fits
static const double CUDA_CONTEXT_RESERVE_GIB = 1.0;

struct TrainingOptions {
    int B = 1;
    int T = 60000;
    int mlp_chunks = 0;          // -m: MLP mini-sequences; 0 = automatic rule, 1 = standard
    int lmhead_chunks = 0;       // -M: LM-head mini-sequences; 0 = automatic rule, 1 = standard
    bool recompute = true;       // -r: keep only each layer's input, recompute the layer in backward
    bool bf16_optimizer_state = true;  // AdamW m and v in bf16 (stochastic rounding) instead of fp32
    bool master_weights = false; // fp32 master copy of the weights
    int fused_optimizer = -1;    // -f: 1 update each group once backward has completed it, its gradient held in
                                 // pinned host memory until the exact clip is known (training.h); 0 every
                                 // gradient on the card, one update after backward, no host traffic; -1
                                 // automatic: 0 when that plan fits, else 1 (resolve_automatic(), before planning)
    int held_gradient_bytes = 0; // --held-gradients, fused: the host copy of each gradient group in bf16 (2) or
                                 // fp32 (4); 0: automatic, as the AdamW state (-a), but fp32 where only that plan
                                 // fits (resolve_held_keep_and_offload()); plan_memory takes a 0 as the state
    bool doc_mask = false;       // --doc-mask: attention within documents; the tokens region holds doc_start
    int offload = 0;             // layers 0 .. offload-1 keep their input checkpoints in pinned host memory
                                 // (clamped to L; --offload 1 gives OFFLOAD_ALL, 0 none); -1: automatic, the
                                 // fewest layers that make the plan fit (resolve_offload(), before planning)
    int keep_attention = 0;      // --keep-attention: each layer's attention output and lse kept from the training
                                 // forward (outputs 0 .. L-3 in pinned host memory, the last two in the two device
                                 // buffers), so backward's recomputation skips the attention forward; needs -r 1;
                                 // -1: automatic, on when the plan fits with it (resolve_keep_attention_and_offload())
    int segment = 1;             // --segment k: only every k-th layer input (and the last output) kept from forward,
                                 // a segment's other k - 1 recomputed into shared buffers as its backward begins;
                                 // 1 every input kept; 0 automatic (resolve_segment_and_rest()); needs -r 1 and
                                 // --keep-attention 0; with offload every checkpoint in pinned host memory
    int state_offload = 0;       // --state-offload: AdamW m and v in pinned host memory, each group's streamed through two
                                 // device staging slots for its update (one GPU only); -1: automatic, on only when the
                                 // plan does not fit without it and fits with it (resolve_automatic())
    int attention_blocks = 1;    // --attention-blocks N: each layer's attention half (norm, q, RoPE, attention, o
                                 // projection) over N query blocks of ceil(T / N) tokens of each sequence, so only
                                 // K and V (and their fp32 gradients) span the whole sequence; 1 the whole sequence
                                 // at once; 0 automatic (resolve_automatic()); needs -r 1, --keep-attention 0, one GPU
    int dp = 1;                  // --dp: data-parallel ranks (ZeRO-1: AdamW state and update sharded over the world)
    int zero = 0;                // --zero, several ranks: the ZeRO stage. 1: every rank holds the whole model's fp32
                                 // gradient, reduce-scattered after backward; 2: each group's gradient is all-reduced
                                 // as backward completes it (two slots, as fused) and only this rank's shard is kept;
                                 // 0 automatic: 1 when that plan fits, else 2 (resolve_automatic())
    int sp = 1;                  // --sp: sequence-parallel ranks (Ulysses): each holds T / sp tokens of each sequence
    size_t region_guard_bytes = 0;  // left unused after every region: the CPU device's overrun guards
                                    // (mst::region_guard_bytes(); 0 on a GPU and in every printed plan)
};

static const int OFFLOAD_ALL = 1 << 30;

// What a plan may use: the card (less the CUDA context's reserve) and pinned host memory.
struct MemoryBudget {
    double gpu_gib = 80.0;
    double host_gib = 120.0;
};

enum Region {
    // persistent: the model and its optimizer
    REGION_PARAMETERS,        // P x 2
    REGION_MASTER_WEIGHTS,    // P x 4, or nothing
    REGION_ADAM_M,            // P x (2 or 4)
    REGION_ADAM_V,            // P x (2 or 4); both nothing with --state-offload
    REGION_STATE_STAGING,     // --state-offload: 2 slots x (m, v) x the largest gradient group x (2 or 4): the state of
                              // the group being updated and of the next, in flight
    REGION_GRADIENTS,         // fused: two slots that gradient groups alternate in (training.h), and the tied
                              // embedding's V x C; else P x 4
    REGION_GRADIENT_STAGING,  // fused with bf16 held gradients: the gradient region's elements x 2, each group
                              // rounded to bf16 here before its copy to the host (and fetched back here)
    // saved by forward for backward
    REGION_LAYER_INPUTS,      // (L + 1) x N x C x 2: each layer's input (its checkpoint) and the last output;
                              // h layers offloaded: 2 staging buffers, then L + 1 - S kept (S, staged_layers());
                              // --segment k: the n + 1 kept inputs' buffers (n + 1, or 2 offloaded), k - 1 shared
    REGION_HOST_CHECKPOINTS,  // pinned host, offloaded: stored x N x C x 2, kept inputs 0 .. stored-1 (stored =
                              // S - 2, OffloadSchedule::stored(); the last two staged ones never leave the card)
    REGION_HOST_GRADIENTS,    // pinned host, fused optimizer: P x 2 (bf16) or P x 4, every gradient group held
                              // from backward until its exactly clipped update (mst/training.h)
    REGION_HOST_ATTENTION,    // pinned host, --keep-attention: (L - 2) x N x (Q x 2 + H x 4), layers 0 .. L-3's
                              // attention output and lse (kept_attention_schedule(): the last two stay staged)
    REGION_HOST_ADAM_STATE,   // pinned host, --state-offload: AdamW m, then v: 2 x P x (2 or 4)
    // one layer's activations (recomputed in backward), or all L layers' without recomputation
    REGION_ATTENTION_NORM,    // N x C x 2 normed input, N x 4 rstd; query blocks: n_att x C x 2, N x 4
    REGION_QKV,               // N x (Q + 2 KV) x 2; query blocks: (n_att + pad) x Q x 2 q, N x 2 KV x 2 k, v
    REGION_ATTENTION_OUT,     // N x Q x 2 attention output, N x H x 4 log-sum-exp; --keep-attention: 2 of each,
                              // the staging buffers layer l's pass through (buffer l % 2); query blocks:
                              // n_att x Q x 2, T x H x 4 (one sequence's lse)
    REGION_ATTENTION_RESIDUAL,// N x C x 2 residual after attention (the MLP's input)
    REGION_MLP_NORM,          // N x C x 2, N x 4 rstd
    REGION_MLP_HIDDEN,        // n_mlp x 3F x 2: gate, up, silu(gate)*up of one mini-sequence
    // backward working buffers
    REGION_RESIDUAL_GRADIENT, // N x C x 2 gradient of the residual stream, N x C x 2 of a norm's output
    REGION_QKV_GRADIENT,      // N x (Q + 2 KV) x 2, N x Q x 2 attention-output gradient, N x H x 4 delta;
                              // aliased: N x 2 KV x 2, N x H x 4 (dq and dO live in dead regions); query
                              // blocks: then N x 2 KV x 4, dK and dV summed over the blocks in fp32
    REGION_MLP_HIDDEN_GRADIENT, // n_mlp x 3F x 2: gradients of gate, up, and silu(gate)*up
    // --sp S (Ulysses, recomputation): attention over the whole sequence (Np = B Tp tokens) for this rank's Hl
    // query heads and KVl KV heads; q, k, v, the output, lse stay from the layer's recompute to its backward
    REGION_ULYSSES_HEADS,     // Np x (2 (Hl + 2 KVl) + 2 Hl) hd x 2: q, k, v and their gradients, the output and
                              // its gradient; Np x Hl x 4 lse, the same for backward's delta
    REGION_ALL_TO_ALL,        // 2 x Np x (Hl + 2 KVl) hd x 2: the all-to-all's send and receive buffers
    // LM head and loss
    REGION_FINAL_NORM,        // N x C x 2, N x 4 rstd; aliased: nothing (it lives in the MLP norm's)
    REGION_LMHEAD_LOGITS,     // n_lm x V x 2: one mini-sequence of logits, its gradient written in place
    REGION_LOSSES,            // N x 4 per-token loss
    // small
    REGION_TOKENS,            // N x 4 inputs, N x 4 targets, doc_mask: N x 4 document starts,
                              // (3N + 1) x 4 embedding-backward buckets
    REGION_ROPE_TABLES,       // T x (hd/2) x 4 cos, same sin
    REGION_SCRATCH,           // reduction partials (norm weight gradients, gradient norm)
    REGION_CUBLASLT_WORKSPACE,
    NUM_REGIONS
};

static const char* const REGION_NAMES[NUM_REGIONS] = {
    "parameters (bf16)", "master weights (fp32)", "AdamW m", "AdamW v", "AdamW state staging",
    "parameter gradients (fp32)", "held-gradient staging", "layer inputs (checkpoints)", "layer inputs, host",
    "held gradients, host", "attention outputs, host", "AdamW m + v, host", "attention norm", "q, k, v", "attention output + lse",
    "attention residual", "MLP norm", "MLP hidden (gate, up, act)", "residual gradient", "q, k, v gradient",
    "MLP hidden gradient", "attention heads (Ulysses)", "all-to-all buffers", "final norm", "LM-head logits", "per-token loss", "tokens", "RoPE tables",
    "scratch", "cuBLASLt workspace",
};

struct MemoryPlan {
    ModelConfig config;
    TrainingOptions options;     // as given, with the automatic chunk counts resolved
    int mlp_chunk_tokens;        // n_mlp = ceil(N / mlp_chunks)
    int lmhead_chunk_tokens;     // n_lm = ceil(N / lmhead_chunks)
    int attention_block_tokens;  // n_att = ceil(T / attention_blocks): one query block of one sequence (T: one block)
    size_t bytes[NUM_REGIONS];
    size_t offset[NUM_REGIONS];  // byte offset of each region in its arena (device or host), 256-byte aligned
    std::string shape[NUM_REGIONS];
    size_t total;                // the device arena
    size_t host_total;           // the pinned host arena (0 without offload)
    size_t pcie_to_host, pcie_to_device;  // bytes crossing PCIe per training step, each direction
    size_t all_to_all_bytes;     // --sp: the Ulysses all-to-alls' buffers per step (each GPU sends (S-1)/S of them)
    // With recomputation one layer's buffers die at known points, so three buffers live in others' regions:
    // the final norm (+ rstd) in the MLP norm's (the last layer's is dead after forward; layer L-1's
    // recompute comes after the final norm's backward); in a layer's backward the q gradient in the
    // attention residual's and the attention-output gradient (dO) in the MLP norm's, both dead once the
    // post-attention norm's backward has run. Q == C (head_dim = d_model / n_head), so they fit.
    bool aliased;
};

static const char* const ALIASES_TEXT =
    "aliases: final norm in the MLP norm's region; q gradient in the attention residual's; attention-output "
    "gradient in the MLP norm's";

// the regions in pinned host memory; every other is on the device
static inline bool region_on_host(int r) {
    return r == REGION_HOST_CHECKPOINTS || r == REGION_HOST_GRADIENTS || r == REGION_HOST_ATTENTION ||
           r == REGION_HOST_ADAM_STATE;
}

// With h layers offloaded, layer inputs 0 .. S-1 pass through the two staging buffers (input l in
// buffer l % 2), S = h, or L + 1 when h = L (the last output is staged too, as nothing is copied after it)
static inline int staged_layers(int h, int L) { return h > 0 && h == L ? L + 1 : h; }

// The offload schedule's index math, shared by train_llama.cu's offload_* functions and the walk through
// it in test_memory_plan (h layers offloaded of L; the trainer's streams and events do the rest).
struct OffloadSchedule {
    int h, L, S;  // S = staged_layers(h, L)
    OffloadSchedule(int offloaded = 0, int layers = 0) : h(offloaded), L(layers), S(staged_layers(offloaded, layers)) {}
    // layer input l's buffer in the layer-inputs region: staged ones in l % 2, the others 2, 3, ...
    int buffer(int l) const { return h <= 0 ? l : l < S ? l % 2 : 2 + (l - S); }
    // Forward copies input l to the host only when a later input overwrites its staging buffer (input l + 2,
    // staged): inputs S - 2 and S - 1 are still staged when backward reaches them, so no copy has a reader.
    bool stores(int l) const { return l < h && l + 2 < S; }
    int stored() const { return h > 0 ? std::max(0, S - 2) : 0; }  // inputs 0 .. stored() - 1 go to the host
    // item i (an input; with --keep-attention, a layer's attention output) overwrites staging buffer i % 2,
    // which held item i - 2: its copy to the host must have left
    bool overwrite_waits(int i) const { return i >= 2 && stores(i - 2); }
    bool output_waits(int l) const { return overwrite_waits(l + 1); }  // layer l's output overwrites input l - 1
    bool backward_waits(int l) const { return stores(l); }            // layer l's input was fetched back
    bool fetches_previous(int l) const { return l >= 1 && stores(l - 1); }  // layer l's backward fetches input l - 1
};

// --segment k: forward keeps layer inputs l with l % k == 0 (each segment's checkpoint) and the last output L,
// kept input i = 0 .. n (n = ceil(L / k) checkpoints, i = n the output); a segment's other k - 1 inputs are
// recomputed in backward, one segment at a time. k = 1: every input kept, input l is kept input l.
struct SegmentSchedule {
    int k, L;
    SegmentSchedule(int segment = 1, int layers = 0) : k(std::max(1, std::min(segment, std::max(layers, 1)))), L(layers) {}
    int checkpoints() const { return (L + k - 1) / k; }
    int kept(int l) const { return l == L ? checkpoints() : l % k == 0 ? l / k : -1; }  // -1: recomputed
    int first(int l) const { return l / k * k; }  // layer l's segment starts at this layer
    bool last(int l) const { return l == L - 1 || l % k == k - 1; }  // layer l's backward begins its segment's
    // layer l is its segment's last, and the segment has more than one layer: its backward begins by
    // recomputing inputs first(l) + 1 .. l (one more forward of the segment's other layers)
    bool recomputes(int l) const { return last(l) && l > first(l); }
    int recomputed_layers() const { return L - checkpoints(); }  // per step: one more forward of k - 1 layers per segment
};

// Where the layer inputs live, for train_llama.cu's layer_input() and offload_* functions and the plan's layer-inputs
// region: the n + 1 kept inputs walk the offload schedule over them (h offloaded: kept input i < S staged in buffer
// i % 2, the first S - 2 stored in pinned host memory; with segments every checkpoint or none, so the copies of
// segment s - 1's checkpoint overlap segment s's backward), the recomputed ones share the k - 1 buffers after the
// kept inputs' (input l in the (l % k)-th). k = 1: the offload schedule over the inputs; h = 0: kept input i in buffer i.
struct CheckpointSchedule {
    SegmentSchedule segment;
    OffloadSchedule offload;  // over the kept inputs (SegmentSchedule::kept)
    CheckpointSchedule(int segment_k = 1, int offloaded = 0, int L = 0)
        : segment(segment_k, L),
          offload(segment.k > 1 ? (offloaded > 0 ? segment.checkpoints() : 0) : std::min(std::max(offloaded, 0), L),
                  segment.checkpoints()) {}
    int kept_buffers() const { return offload.h > 0 ? 2 + (offload.L + 1 - offload.S) : offload.L + 1; }
    int buffers() const { return kept_buffers() + segment.k - 1; }
    int buffer(int l) const {
        int i = segment.kept(l);
        return i >= 0 ? offload.buffer(i) : kept_buffers() + l % segment.k - 1;
    }
};

// --keep-attention: the L layers' attention outputs (with lse) walk the same schedule as L + 1 inputs of which
// L are staged: output l in device buffer l % 2, outputs 0 .. L-3 stored in forward and fetched back by the
// backward of the layer above (layer l's backward fetches output l - 1), the last two still staged.
static inline OffloadSchedule kept_attention_schedule(int L) { return OffloadSchedule(L, L + 1); }

// "recomputed", "kept: layers 0-29 in pinned host memory, the last two on the device"
static inline std::string keep_attention_text(const TrainingOptions& o, int L) {
    if (o.keep_attention <= 0) return o.recompute ? "recomputed in backward" : "kept (no recomputation)";
    int k = kept_attention_schedule(L).stored();
    return k > 0 ? "kept: layers 0-" + std::to_string(k - 1) + " in pinned host memory, the last two on the device"
                 : "kept on the device";
}

// "", or " in segments of 3 layers (one input in 3 kept; 21 layers' forward again per step)"
static inline std::string segment_text(const TrainingOptions& o, int L) {
    SegmentSchedule g(o.segment, L);
    if (g.k <= 1) return "";
    return " in segments of " + std::to_string(g.k) + " layers (one input in " + std::to_string(g.k) + " kept; " +
           std::to_string(g.recomputed_layers()) + " layers' forward again per step)";
}

// "on the device", "inputs 0-7 in pinned host memory, the others on the device" (h = 10 offloaded layers: the
// last two staged inputs never leave the card); with segments of 4 of 32 layers "inputs 0, 4, .., 24 in pinned
// host memory" (segment_text says the rest)
static inline std::string offload_text(const TrainingOptions& o, int L) {
    CheckpointSchedule inputs(o.segment, o.offload, L);
    int stored = inputs.offload.stored(), k = inputs.segment.k;
    if (stored <= 0) return "on the device";
    std::string last = std::to_string((stored - 1) * k);
    if (k == 1) return "inputs 0-" + last + " in pinned host memory, the others on the device";
    return (stored == 1 ? "input 0" : stored == 2 ? "inputs 0 and " + last
                                     : "inputs 0, " + std::to_string(k) + (stored > 3 ? ", .., " : ", ") + last) +
           " in pinned host memory";
}

static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// --attention-blocks: the query blocks a plan runs, o.attention_blocks where they apply (recomputation, one GPU,
// --keep-attention 0; 0 unresolved counts as 1), each of ceil(T / blocks) tokens, so ceil(T / that) of them
static inline int attention_blocks_used(const TrainingOptions& o) {
    if (!o.recompute || o.dp * o.sp > 1 || o.keep_attention > 0 || o.attention_blocks <= 1) return 1;
    int n = mini_sequence_length(o.T, std::min(o.attention_blocks, o.T));
    return (o.T + n - 1) / n;
}
// rows after a query block's q: the sm_90a forward reads whole tiles of 128 query rows (mst::sm90::BM) from the
// block's first, up to 127 rows past its end (never written; their results are discarded)
static const int ATTENTION_BLOCK_PAD_ROWS = 128;

// "", or ", attention in 4 query blocks of 15000 tokens (one more attention forward per layer)"
static inline std::string attention_blocks_text(const TrainingOptions& o) {
    int blocks = attention_blocks_used(o);
    if (blocks <= 1) return "";
    return ", attention in " + std::to_string(blocks) + " query blocks of " + std::to_string(mini_sequence_length(o.T, blocks)) +
           " tokens (one more attention forward per layer)";
}

// ZeRO-1 over W = dp x sp ranks: rank r owns parameters [r x shard, (r + 1) x shard) of the P, shard = ceil(P / W);
// it keeps AdamW m, v and master weights for those only, and updates only them. The parameters and the gradients
// are padded to W x shard (the padding never read by the model) so the reduce-scatter and all-gather move equal
// blocks in place. W = 1: shard = P, no padding.
static inline size_t zero_shard(size_t P, int world) { return ceil_div(P, (size_t)std::max(world, 1)); }
static inline double gib(size_t bytes) { return bytes / (double)(1ull << 30); }
// regions start on 256-byte boundaries (cuBLASLt's and the kernels' vector loads want aligned pointers)
static inline size_t round_up_256(size_t bytes) { return ceil_div(bytes, 256) * 256; }

// Every region of the arena for this model and these options. Options are assumed valid
// (training_options_problem() says what is not).
static inline MemoryPlan plan_memory(const ModelConfig& c, TrainingOptions o) {
    MemoryPlan plan;
    plan.config = c;
    // --sp: this rank's N = B Tl tokens (Tl = ceil(T / S)); attention's Np = B Tp over the whole (padded) sequences
    UlyssesShape u(c, o.sp, o.B, o.T);
    bool ulysses = o.sp > 1;
    size_t N = (size_t)o.B * u.Tl, Np = (size_t)o.B * u.Tp, C = c.d_model, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim;
    size_t V = c.vocab_size, L = c.n_layer, H = c.n_head, hd = c.head_dim();
    ParameterLayout layout = parameter_layout(c);
    size_t P = layout.total;
    if (o.fused_optimizer < 0) o.fused_optimizer = 1;  // unresolved automatic: planned fused
    int world = o.dp * o.sp;
    size_t shard = zero_shard(P, world), padded = shard * world;

    o.mlp_chunks = mlp_mini_sequences(c, (long)N, o.mlp_chunks);
    o.lmhead_chunks = lmhead_mini_sequences(c, (long)N, o.lmhead_chunks);
    size_t n_mlp = mini_sequence_length((int)N, o.mlp_chunks);
    size_t n_lm = mini_sequence_length((int)N, o.lmhead_chunks);
    plan.mlp_chunk_tokens = (int)n_mlp;
    plan.lmhead_chunk_tokens = (int)n_lm;
    // without recomputation every layer keeps its own activations for backward
    size_t layers_live = o.recompute ? 1 : L;
    size_t state_bytes = o.bf16_optimizer_state ? 2 : 4;
    // fused: gradients exist for two groups at a time, in two slots (one computed while the other is copied
    // to the host): the LM head (V x C), the final norm, each layer in turn, the embedding (V x C). Tied
    // embeddings share one V x C gradient from the LM head's backward to the embedding's, kept whole beside.
    // --zero 2 (several ranks, -f 0): the fused path's slots, each group all-reduced as it completes, and beside them
    // this rank's shard of the gradient (fp32, accumulated over micro-batches)
    o.zero = world > 1 && o.zero == 2 ? 2 : 1;
    GradientSlots slots = fused_gradient_slots(c);
    size_t slot_elements = (c.tied_embeddings ? V * C : 0) + slots.elements[0] + slots.elements[1];
    size_t gradient_elements = o.fused_optimizer ? slot_elements : o.zero == 2 ? slot_elements + shard : padded;

    auto set = [&](Region r, size_t bytes, std::string shape) { plan.bytes[r] = bytes; plan.shape[r] = shape; };
    auto s = [](size_t x) { return std::to_string(x); };
    std::string per_layer = layers_live > 1 ? s(layers_live) + " x " : "";
    set(REGION_PARAMETERS, padded * 2, s(padded) + " x 2");
    set(REGION_MASTER_WEIGHTS, o.master_weights ? shard * 4 : 0, o.master_weights ? s(shard) + " x 4" : "none");
    // --state-offload: m and v on the host, two slots of (m, v) for the largest group on the card
    o.state_offload = o.state_offload > 0;
    size_t card_state = o.state_offload ? 0 : shard, slot = largest_gradient_group(c);
    std::string state_shape = o.state_offload ? "in pinned host memory" : s(shard) + " x " + s(state_bytes);
    set(REGION_ADAM_M, card_state * state_bytes, state_shape);
    set(REGION_ADAM_V, card_state * state_bytes, state_shape);
    set(REGION_STATE_STAGING, o.state_offload ? 4 * slot * state_bytes : 0,
        o.state_offload ? "2 x 2 x " + s(slot) + " x " + s(state_bytes) : "none");
    set(REGION_HOST_ADAM_STATE, o.state_offload ? 2 * shard * state_bytes : 0,
        o.state_offload ? "2 x " + s(shard) + " x " + s(state_bytes) : "none");
    set(REGION_GRADIENTS, gradient_elements * 4, s(gradient_elements) + " x 4");
    if (o.held_gradient_bytes != 2 && o.held_gradient_bytes != 4) o.held_gradient_bytes = o.bf16_optimizer_state ? 2 : 4;
    size_t held = o.held_gradient_bytes;
    bool staged = o.fused_optimizer && held == 2;
    set(REGION_GRADIENT_STAGING, staged ? gradient_elements * 2 : 0, staged ? s(gradient_elements) + " x 2" : "none");
    // --segment k (with recomputation, without --keep-attention; resolved 0 counts as 1): the kept inputs are
    // every k-th and the last output, the others k - 1 shared buffers (CheckpointSchedule). h layers offloaded
    // (with segments: every checkpoint, h = L): the kept inputs pass through two device staging buffers (the one
    // in use, the one in flight), the others keep a device buffer each; forward copies kept inputs 0 .. stored-1
    // to the host and backward fetches them back (stored = S - 2: the last two staged ones are still there)
    o.segment = !o.recompute || o.keep_attention > 0 ? 1 : SegmentSchedule(o.segment, (int)L).k;
    size_t h = std::min((size_t)std::max(o.offload, 0), L);
    o.offload = (int)(o.segment > 1 && h > 0 ? L : h);
    CheckpointSchedule inputs(o.segment, o.offload, (int)L);
    size_t device_inputs = inputs.buffers(), stored = inputs.offload.stored();
    set(REGION_LAYER_INPUTS, device_inputs * N * C * 2, s(device_inputs) + " x " + s(N) + " x " + s(C) + " x 2");
    set(REGION_HOST_CHECKPOINTS, stored * N * C * 2, stored > 0 ? s(stored) + " x " + s(N) + " x " + s(C) + " x 2" : "none");
    set(REGION_HOST_GRADIENTS, o.fused_optimizer ? P * held : 0, o.fused_optimizer ? s(P) + " x " + s(held) : "none");
    // --keep-attention (with recomputation only): outputs 0 .. L-3 out in forward and back in backward, the
    // last two in the two device buffers of the attention-output region
    o.keep_attention = o.keep_attention > 0 && o.recompute;
    // --attention-blocks: the norm, q and the attention output hold one query block of one sequence (n_att rows),
    // the rstd, k and v every row
    o.attention_blocks = attention_blocks_used(o);
    bool blocked = o.attention_blocks > 1;
    size_t n_att = mini_sequence_length(o.T, o.attention_blocks);
    size_t q_rows = blocked ? n_att + ATTENTION_BLOCK_PAD_ROWS : N;
    plan.attention_block_tokens = (int)n_att;
    size_t attention_buffers = o.keep_attention ? 2 : layers_live;
    size_t kept = o.keep_attention ? kept_attention_schedule((int)L).stored() : 0;
    std::string attention_shape = s(N) + " x (" + s(Q) + " x 2 + " + s(H) + " x 4)";
    set(REGION_HOST_ATTENTION, kept * N * (Q * 2 + H * 4), kept > 0 ? s(kept) + " x " + attention_shape : "none");
    // checkpoints: the stored inputs out and back; held gradients: P x 2 or 4 out and back; kept attention outputs;
    // the AdamW state: m and v in for each update and back out
    plan.pcie_to_host = stored * N * C * 2 + plan.bytes[REGION_HOST_GRADIENTS] + plan.bytes[REGION_HOST_ATTENTION] +
                        plan.bytes[REGION_HOST_ADAM_STATE];
    plan.pcie_to_device = plan.pcie_to_host;
    if (blocked) {
        set(REGION_ATTENTION_NORM, n_att * C * 2 + N * 4, s(n_att) + " x " + s(C) + " x 2 + " + s(N) + " x 4");
    } else {
        set(REGION_ATTENTION_NORM, layers_live * (N * C * 2 + N * 4), per_layer + s(N) + " x (" + s(C) + " x 2 + 4)");
    }
    if (ulysses) {  // q, k, v (head layout) in the attention heads region; the output's token layout here
        set(REGION_QKV, 0, "in the attention heads");
        set(REGION_ATTENTION_OUT, N * Q * 2, s(N) + " x " + s(Q) + " x 2");
    } else if (blocked) {  // q with its pad rows; the lse of one sequence (the kernels' B x H x T layout, B = 1)
        set(REGION_QKV, q_rows * Q * 2 + N * 2 * KV * 2, s(q_rows) + " x " + s(Q) + " x 2 + " + s(N) + " x " + s(2 * KV) + " x 2");
        set(REGION_ATTENTION_OUT, n_att * Q * 2 + o.T * H * 4, s(n_att) + " x " + s(Q) + " x 2 + " + s(o.T) + " x " + s(H) + " x 4");
    } else {
        set(REGION_QKV, layers_live * N * (Q + 2 * KV) * 2, per_layer + s(N) + " x " + s(Q + 2 * KV) + " x 2");
        set(REGION_ATTENTION_OUT, attention_buffers * (N * Q * 2 + N * H * 4),
            (attention_buffers > 1 ? s(attention_buffers) + " x " : "") + attention_shape);
    }
    set(REGION_ATTENTION_RESIDUAL, layers_live * N * C * 2, per_layer + s(N) + " x " + s(C) + " x 2");
    set(REGION_MLP_NORM, layers_live * (N * C * 2 + N * 4), per_layer + s(N) + " x (" + s(C) + " x 2 + 4)");
    set(REGION_MLP_HIDDEN, layers_live * n_mlp * 3 * F * 2, per_layer + s(n_mlp) + " x 3 x " + s(F) + " x 2");
    set(REGION_RESIDUAL_GRADIENT, 2 * N * C * 2, "2 x " + s(N) + " x " + s(C) + " x 2");
    plan.aliased = o.recompute && Q == C && !ulysses;
    plan.options = o;
    if (ulysses) {  // the attention-output gradient in token layout; the rest in the attention heads region
        set(REGION_QKV_GRADIENT, N * Q * 2, s(N) + " x " + s(Q) + " x 2");
    } else if (plan.aliased) {
        set(REGION_QKV_GRADIENT, N * 2 * KV * 2 + N * H * 4, s(N) + " x (" + s(2 * KV) + " x 2 + " + s(H) + " x 4) + 2 aliases");
    } else {
        set(REGION_QKV_GRADIENT, N * (Q + 2 * KV) * 2 + N * Q * 2 + N * H * 4,
            s(N) + " x (" + s(Q + 2 * KV) + " x 2 + " + s(Q) + " x 2 + " + s(H) + " x 4)");
    }
    if (blocked) {  // first in the region: dK and dV summed over the query blocks in fp32
        plan.bytes[REGION_QKV_GRADIENT] += N * 2 * KV * 4;
        plan.shape[REGION_QKV_GRADIENT] = s(N) + " x " + s(2 * KV) + " x 4 + " + plan.shape[REGION_QKV_GRADIENT];
    }
    set(REGION_MLP_HIDDEN_GRADIENT, n_mlp * 3 * F * 2, s(n_mlp) + " x 3 x " + s(F) + " x 2");
    size_t head_qkv = (size_t)(u.Hl + 2 * u.KVl) * hd, head_out = (size_t)u.Hl * hd;  // one token's, head layout
    // (the delta last, in whole 256-byte units: attention_backward_scratch_bytes)
    set(REGION_ULYSSES_HEADS, ulysses ? Np * (2 * head_qkv + 2 * head_out) * 2 + Np * u.Hl * 4 + round_up_256(Np * u.Hl * 4) : 0,
        ulysses ? s(Np) + " x (" + s(2 * head_qkv + 2 * head_out) + " x 2 + 2 x " + s(u.Hl) + " x 4)" : "none");
    set(REGION_ALL_TO_ALL, ulysses ? 2 * Np * head_qkv * 2 : 0, ulysses ? "2 x " + s(Np) + " x " + s(head_qkv) + " x 2" : "none");
    // all-to-all bytes per step, each layer: q, k, v to heads and the output back in forward and again in the
    // recompute, the output's gradient to heads and q, k, v's back in backward
    plan.all_to_all_bytes = ulysses ? 3 * L * Np * (head_qkv + head_out) * 2 : 0;
    set(REGION_FINAL_NORM, plan.aliased ? 0 : N * C * 2 + N * 4,
        plan.aliased ? "alias: in MLP norm" : s(N) + " x (" + s(C) + " x 2 + 4)");
    set(REGION_LMHEAD_LOGITS, n_lm * V * 2, s(n_lm) + " x " + s(V) + " x 2");
    set(REGION_LOSSES, N * 4, s(N) + " x 4");
    // inputs, targets, with document masking the document starts, then the embedding backward's token
    // buckets (token_buckets.h): (5N + 1) x 4, or (6N + 1) x 4. --sp with document masking: the whole
    // sequences' inputs and document starts (2 Np), for attention over all of them
    size_t token_arrays = o.doc_mask ? 3 : 2;
    if (ulysses && o.doc_mask) {
        set(REGION_TOKENS, (5 * N + 2 * Np + 1) * 4, "(5 x " + s(N) + " + 2 x " + s(Np) + " + 1) x 4");
    } else {
        set(REGION_TOKENS, (token_arrays * N + token_bucket_ints(N)) * 4, "(" + s(token_arrays + 3) + " x " + s(N) + " + 1) x 4");
    }
    set(REGION_ROPE_TABLES, 2 * (size_t)u.Tp * (hd / 2) * 4, "2 x " + s(u.Tp) + " x " + s(hd / 2) + " x 4");
    // reduction partials: RMSNorm weight gradient's chunks x C fp32, then 1 MiB for the gradient norm's
    set(REGION_SCRATCH, RMSNORM_GRADIENT_CHUNKS * C * 4 + (1u << 20), s(RMSNORM_GRADIENT_CHUNKS) + " x " + s(C) + " x 4 + 1 MiB");
    set(REGION_CUBLASLT_WORKSPACE, CUBLASLT_WORKSPACE_BYTES, "32 MiB");

    size_t at[2] = {0, 0};  // device, host
    for (int r = 0; r < NUM_REGIONS; r++) {
        plan.offset[r] = at[region_on_host(r)];
        at[region_on_host(r)] += round_up_256(plan.bytes[r]) + round_up_256(o.region_guard_bytes);
    }
    plan.total = at[0];
    plan.host_total = at[1];
    return plan;
}

// The comparison plan: the same model and optimizer without mini-sequences or recomputation.
static inline TrainingOptions standard_options(TrainingOptions o) {
    o.mlp_chunks = 1;
    o.lmhead_chunks = 1;
    o.recompute = false;
    o.offload = 0;
    o.keep_attention = 0;
    o.state_offload = 0;
    o.attention_blocks = 1;
    return o;
}

// Does the plan fit the card (with the CUDA context's reserve held back) and the pinned host budget?
static inline bool plan_fits(const MemoryPlan& plan, const MemoryBudget& budget) {
    return gib(plan.total) + CUDA_CONTEXT_RESERVE_GIB <= budget.gpu_gib && gib(plan.host_total) <= budget.host_gib;
}

// --offload's automatic choice (-1): none when the plan fits without, else the fewest layers (the least
// PCIe traffic) that make it fit, else all (the plan that misses by least on the device). With segments
// every checkpoint is offloaded or none.
static inline TrainingOptions resolve_offload(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.offload >= 0) return o;
    int step = o.segment > 1 ? c.n_layer : 1;
    for (int h = 0; h <= c.n_layer; h += step) {
        o.offload = h;
        if (plan_fits(plan_memory(c, o), budget)) return o;
    }
    o.offload = OFFLOAD_ALL;
    return o;
}

// --keep-attention's automatic choice (-1), then the offload's: kept when the layers are recomputed and the plan
// with the kept outputs (a second device buffer, L - 2 outputs in pinned host memory) fits both budgets with the
// automatic offload (which may then offload more layers: the copies run on the copy stream beside the compute,
// while the kept outputs save the recomputation's attention forward); else not kept. It is chosen only where the
// plan fits with it, so it never shortens --max-T.
static inline TrainingOptions resolve_keep_attention_and_offload(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.keep_attention < 0 && o.segment > 1) o.keep_attention = 0;  // the segment's forward would overwrite them
    if (o.keep_attention < 0 && o.dp * o.sp > 1) o.keep_attention = 0;  // one GPU only, so far
    if (o.keep_attention < 0 && attention_blocks_used(o) > 1) o.keep_attention = 0;  // the blocks are recomputed
    if (o.keep_attention < 0) {
        TrainingOptions kept = o;
        kept.keep_attention = 1;
        kept = resolve_offload(c, kept, budget);
        if (o.recompute && plan_fits(plan_memory(c, kept), budget)) return kept;
        o.keep_attention = 0;
    }
    return resolve_offload(c, o, budget);
}

// Checks options against the model; returns "" or the problem (naming the flag).
static inline std::string training_options_problem(const ModelConfig& c, const TrainingOptions& o) {
    if (o.B <= 0) return "-B must be positive (got " + std::to_string(o.B) + ")";
    if (o.T <= 0) return "-T must be positive (got " + std::to_string(o.T) + ")";
    if (o.mlp_chunks < 0) return "-m must be 0 (automatic) or a positive count (got " + std::to_string(o.mlp_chunks) + ")";
    if (o.lmhead_chunks < 0) return "-M must be 0 (automatic) or a positive count (got " + std::to_string(o.lmhead_chunks) + ")";
    if (o.keep_attention > 0 && !o.recompute) return "--keep-attention 1: needs -r 1 (it keeps what the recomputation would redo)";
    if (o.segment < 0) return "--segment must be 0 (automatic) or a positive count (got " + std::to_string(o.segment) + ")";
    if (o.segment > 1 && !o.recompute) return "--segment " + std::to_string(o.segment) + ": needs -r 1 (a segment is recomputed)";
    if (o.segment > 1 && o.keep_attention > 0)
        return "--segment " + std::to_string(o.segment) + " with --keep-attention 1: not supported (a segment's forward "
               "would overwrite the kept outputs); give --keep-attention 0 or --segment 1";
    if (o.sp > 1) {
        std::string problem = ulysses_problem(c, o.sp);
        if (!problem.empty()) return "--sp " + std::to_string(o.sp) + ": " + problem;
        if (!o.recompute) return "--sp with -r 0: not supported (Ulysses keeps one layer's attention heads: -r 1)";
    }
    if (o.dp * o.sp > 1 && o.keep_attention > 0)
        return "--keep-attention 1 with --sp/--dp: not supported yet (one GPU only); give --keep-attention 0";
    if (o.dp * o.sp > 1 && o.state_offload > 0)
        return "--state-offload 1 with --sp/--dp: not supported yet (one GPU only; ZeRO-1 already shards the AdamW "
               "state); give --state-offload 0";
    if (o.dp * o.sp > 1 && o.segment > 1)
        return "--segment " + std::to_string(o.segment) + " with --sp/--dp: not supported yet (one GPU only); give --segment 1";
    if (o.zero < 0 || o.zero > 2) return "--zero must be 0 (automatic), 1 or 2 (got " + std::to_string(o.zero) + ")";
    if (o.zero == 2 && o.dp * o.sp == 1) return "--zero 2: needs several ranks (--sp/--dp); one GPU holds its whole gradient";
    if (o.attention_blocks < 0)
        return "--attention-blocks must be 0 (automatic) or a positive count (got " + std::to_string(o.attention_blocks) + ")";
    if (o.attention_blocks > 1) {
        std::string flag = "--attention-blocks " + std::to_string(o.attention_blocks);
        if (o.attention_blocks > o.T) return flag + ": more blocks than the " + std::to_string(o.T) + " tokens of -T";
        if (!o.recompute) return flag + " with -r 0: not supported yet (the blocks are recomputed in backward: give -r 1)";
        if (o.keep_attention > 0) return flag + " with --keep-attention 1: not supported yet; give --keep-attention 0";
        if (o.dp * o.sp > 1) return flag + " with --sp/--dp: not supported yet (one GPU only); give --attention-blocks 1";
    }
    if ((long)o.B * o.T > INT_MAX / std::max(c.vocab_size / 1024, 1)) return "-B x -T is too large for 32-bit indexing";
    return model_config_problem(c);
}

// The plan's automatic choices, before planning: the optimizer path (-f, when automatic: every gradient on the
// card, so no host traffic, when that plan fits with the automatic offload; else fused, the gradients held on
// the host), then --keep-attention with the offload. Offloaded checkpoints are copied on the copy stream beside the compute, the held
// gradients on the compute stream (step_model.h), so the gradients on the card win even with more offload.
// --held-gradients' automatic choice (0) with the fused optimizer and bf16 AdamW state: bf16 (half the pinned
// host bytes and the PCIe traffic) when that plan fits; else fp32 when that one fits, since bf16's rounding
// needs a staging copy of the gradient slots on the card (where the card binds, fp32 fits longer T)
static inline TrainingOptions resolve_held_keep_and_offload(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.held_gradient_bytes != 0 || o.fused_optimizer != 1 || !o.bf16_optimizer_state)
        return resolve_keep_attention_and_offload(c, o, budget);
    TrainingOptions held[2] = {o, o};
    held[0].held_gradient_bytes = 2;
    held[1].held_gradient_bytes = 4;
    for (TrainingOptions& h : held) {
        h = resolve_keep_attention_and_offload(c, h, budget);
        if (plan_fits(plan_memory(c, h), budget)) return h;
    }
    return held[0];
}

// An automatic choice's first try: *o with `first` applied and the later choices resolved by `rest`, taken (into *o)
// when that plan fits
template <typename Apply, typename Rest>
static inline bool fits_with(const ModelConfig& c, TrainingOptions* o, const MemoryBudget& budget, Apply first, Rest rest) {
    TrainingOptions tried = *o;
    first(tried);
    tried = rest(c, tried, budget);
    if (!plan_fits(plan_memory(c, tried), budget)) return false;
    *o = tried;
    return true;
}

static inline TrainingOptions resolve_optimizer_keep_and_offload(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.fused_optimizer < 0) {
        if (fits_with(c, &o, budget, [](TrainingOptions& t) { t.fused_optimizer = 0; }, resolve_keep_attention_and_offload)) return o;
        o.fused_optimizer = 1;
    }
    return resolve_held_keep_and_offload(c, o, budget);
}

// --segment's automatic choice (0), before the others: 1 (every input kept) when that plan fits with the other
// automatic choices (offloaded checkpoints cost no compute); else the smallest k >= 2 (the fewest layers'
// forward again) whose plan fits with the other automatic choices (no kept attention; the checkpoints on the
// card, or all in pinned host memory); else 1, the plan that reports the shortfall.
static inline TrainingOptions resolve_segment_and_rest(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.segment == 0 && o.dp * o.sp > 1) o.segment = 1;  // one GPU only, so far
    if (o.segment != 0) return resolve_optimizer_keep_and_offload(c, o, budget);
    TrainingOptions whole = o;
    whole.segment = 1;
    whole = resolve_optimizer_keep_and_offload(c, whole, budget);
    if (plan_fits(plan_memory(c, whole), budget) || !o.recompute || o.keep_attention > 0) return whole;
    for (int k = 2; k <= c.n_layer; k++) {
        TrainingOptions segmented = o;
        segmented.segment = k;
        segmented = resolve_optimizer_keep_and_offload(c, segmented, budget);
        if (plan_fits(plan_memory(c, segmented), budget)) return segmented;
    }
    return whole;
}

// --state-offload's automatic choice (-1): off (no PCIe traffic for the state) when the plan fits without it, with
// the other choices resolved; on when only the plan with it fits; off when neither fits (it costs as many host bytes
// as it saves on the card, so it never makes a miss smaller).
static inline TrainingOptions resolve_state_and_rest(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.state_offload >= 0) return resolve_segment_and_rest(c, o, budget);
    TrainingOptions on_card = o, on_host = o;
    on_card.state_offload = 0;
    on_card = resolve_segment_and_rest(c, on_card, budget);
    if (plan_fits(plan_memory(c, on_card), budget) || o.dp * o.sp > 1) return on_card;
    on_host.state_offload = 1;
    on_host = resolve_segment_and_rest(c, on_host, budget);
    return plan_fits(plan_memory(c, on_host), budget) ? on_host : on_card;
}

// --attention-blocks' automatic choice (0), before the state's: 1 (the whole sequence) when that plan fits with
// the other automatic choices (the blocks cost one more attention forward per layer); else the smallest count whose
// plan fits (fitting is monotone in the count: each block's buffers shrink as it grows), searched up to
// MAX_AUTOMATIC_ATTENTION_BLOCKS (blocks of T / 256 tokens leave little to save); else 1, the plan that reports the
// shortfall. Only where blocks apply: with recomputation, on one GPU, without --keep-attention 1.
static const int MAX_AUTOMATIC_ATTENTION_BLOCKS = 256;
static inline TrainingOptions resolve_blocks_and_rest(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.attention_blocks != 0) return resolve_state_and_rest(c, o, budget);
    TrainingOptions whole = o;
    whole.attention_blocks = 1;
    whole = resolve_state_and_rest(c, whole, budget);
    if (plan_fits(plan_memory(c, whole), budget) || !o.recompute || o.dp * o.sp > 1 || o.keep_attention > 0 || o.T < 2) return whole;
    auto blocked = [&](int blocks) {
        TrainingOptions b = o;
        b.attention_blocks = blocks;
        return resolve_state_and_rest(c, b, budget);
    };
    int lo = 2, hi = std::min(o.T, MAX_AUTOMATIC_ATTENTION_BLOCKS);
    if (!plan_fits(plan_memory(c, blocked(hi)), budget)) return whole;
    while (lo < hi) {  // the smallest count in [lo, hi] that fits (hi does)
        int mid = lo + (hi - lo) / 2;
        if (plan_fits(plan_memory(c, blocked(mid)), budget)) hi = mid; else lo = mid + 1;
    }
    return blocked(lo);
}

// Every automatic choice, before planning. With several ranks --zero's (0) first: ZeRO-1 (one reduce-scatter per
// step) when that plan fits, else 2; then the attention blocks', the AdamW state's, the segments', the optimizer
// path's, the held gradients', the kept attention's and the offload's, each nested in the one before.
static inline TrainingOptions resolve_automatic(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    if (o.zero == 0 && o.dp * o.sp > 1) {
        if (fits_with(c, &o, budget, [](TrainingOptions& t) { t.zero = 1; }, resolve_automatic)) return o;
        o.zero = 2;
    }
    return resolve_blocks_and_rest(c, o, budget);
}

// The longest T (with options' B, chunk rules, optimizer path and offload, the automatic ones resolved at each
// T) whose plan fits the budget; 0 if none does. Fitting is monotone in T with each choice fixed, so also with
// the first that fits.
static inline int max_T_that_fits(const ModelConfig& c, TrainingOptions o, const MemoryBudget& budget) {
    int lo = 0, hi = 1 << 24;  // 16M tokens: beyond any card here
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        o.T = mid;
        if (plan_fits(plan_memory(c, resolve_automatic(c, o, budget)), budget)) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// The plan as a table, device and host columns beside the standard plan's bytes, then the PCIe traffic.
static inline void print_memory_plan(const MemoryPlan& plan, const MemoryPlan& standard) {
    const TrainingOptions& o = plan.options;
    printf("memory plan: %s, B=%d T=%d, MLP %d mini-sequences of %d tokens, LM head %d of %d, recompute %s,\n"
           "             AdamW state %s%s, master weights %s, optimizer %s,\n"
           "             checkpoints %s%s,\n"
           "             attention output %s%s\n",
           plan.config.name, o.B, o.T, o.mlp_chunks, plan.mlp_chunk_tokens, o.lmhead_chunks,
           plan.lmhead_chunk_tokens, o.recompute ? "on" : "off", o.bf16_optimizer_state ? "bf16" : "fp32",
           o.state_offload ? " in pinned host memory (streamed per group)" : "",
           o.master_weights ? "fp32" : "none", !o.fused_optimizer ? (o.zero == 2 ? "after backward, each group's gradient all-reduced and this rank's shard kept (ZeRO-2)"
                                                         : "after backward, gradients on the card")
           : o.held_gradient_bytes == 2 ? "fused into backward, gradients held on the host (bf16)"
                                        : "fused into backward, gradients held on the host (fp32)",
           offload_text(o, plan.config.n_layer).c_str(), segment_text(o, plan.config.n_layer).c_str(), keep_attention_text(o, plan.config.n_layer).c_str(),
           attention_blocks_text(o).c_str());
    int world = o.dp * o.sp;
    if (world > 1) {  // Ulysses' all-to-alls; ZeRO-1: the fp32 gradients reduce-scattered (ZeRO-2: all-reduced group by
                      // group, twice the bytes), the bf16 parameters all-gathered
        size_t padded = plan.bytes[REGION_PARAMETERS] / 2;
        printf("one GPU of %d (--sp %d x --dp %d): %d tokens of each sequence, AdamW state for %zu parameters (ZeRO-%d%s);\n"
               "             per step all-to-all %.2f GiB, %s %.2f GiB, all-gather %.2f GiB (each GPU sends "
               "(n-1)/n of each%s)\n", world, o.sp, o.dp, UlyssesShape(plan.config, o.sp, o.B, o.T).Tl, padded / world,
               o.zero, o.zero == 2 ? ", and only its shard of the fp32 gradient" : "", gib(plan.all_to_all_bytes),
               o.zero == 2 ? "all-reduce" : "reduce-scatter", gib(padded * 4), gib(padded * 2),
               o.zero == 2 ? "; of the all-reduce 2(n-1)/n, once per micro-batch" : "");
    }
    printf("| %-27s | %-40s | %10s | %10s | %12s |\n", "region", "shape (elements x bytes)", "device GiB", "host GiB",
           "standard GiB");
    printf("|-----------------------------|------------------------------------------|------------|------------|--------------|\n");
    for (int r = 0; r < NUM_REGIONS; r++) {
        double bytes = gib(plan.bytes[r]);
        printf("| %-27s | %-40s | %10.3f | %10.3f | %12.3f |\n", REGION_NAMES[r], plan.shape[r].c_str(),
               region_on_host(r) ? 0.0 : bytes, region_on_host(r) ? bytes : 0.0, gib(standard.bytes[r]));
    }
    printf("| %-27s | %-40s | %10.3f | %10.3f | %12.3f |\n", "total", "", gib(plan.total), gib(plan.host_total),
           gib(standard.total));
    if (plan.aliased) printf("%s\n", ALIASES_TEXT);
    printf("PCIe per step: %.1f GiB to the host, %.1f GiB back, on the copy stream beside the compute",
           gib(plan.pcie_to_host), gib(plan.pcie_to_device));
    if (o.state_offload) printf("; of each, AdamW m and v %.1f GiB", gib(plan.bytes[REGION_HOST_ADAM_STATE]));
    printf("\n");
}
