// training.h: the rules of a training step that the GPU trainer and the CPU reference share (host code
// only): the gradient groups and their order, the clip scale, gradient accumulation's micro-batch count,
// and the guard against non-finite steps.
//
// Exact clipping with the fused optimizer (deferred update): backward completes the gradient one group
// at a time (LM head, final norm, layers L-1 ... 0, embedding). Each completed group is held (the GPU
// trainer copies it to pinned host memory) and its sum of squares added to the global norm. Only when
// backward has finished is the norm known; the update of step s, scaled by clip_scale(norm_s), is then
// applied group by group before the group's weights are next read (step s+1's forward, validation,
// sampling, a checkpoint, an export, the end). The result is the unfused clip_grad_norm_ + AdamW.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "mst/llama_config.h"

// One group of parameters whose gradient backward completes at once: [offset, offset + count)
struct GradientGroup {
    size_t offset, count;
};

// The groups in the order backward completes them: the LM head (absent when tied: its gradient is the
// embedding's), the final norm, layers L-1 ... 0, the embedding. Forward reads them in reverse order.
static inline std::vector<GradientGroup> gradient_groups(const ModelConfig& c) {
    ParameterLayout p = parameter_layout(c);
    size_t VC = (size_t)c.vocab_size * c.d_model;
    std::vector<GradientGroup> groups;
    if (!c.tied_embeddings) groups.push_back({p.lm_head, VC});
    groups.push_back({p.final_norm, (size_t)c.d_model});
    for (int l = c.n_layer - 1; l >= 0; l--) groups.push_back({p.layer_start(l), p.layer.count});
    groups.push_back({p.embedding, VC});
    return groups;
}

// The fused optimizer's gradient region: the groups alternate between two slots (backward's i-th group in
// slot i % 2), each as large as its largest group; the tied embedding's V x C lives apart, before them.
// Returns the slots' element counts.
struct GradientSlots { size_t elements[2]; };
static inline GradientSlots fused_gradient_slots(const ModelConfig& c) {
    std::vector<GradientGroup> groups = gradient_groups(c);
    GradientSlots slots = {{0, 0}};
    size_t tied_embedding = c.tied_embeddings ? parameter_layout(c).embedding : (size_t)-1;
    for (size_t i = 0; i < groups.size(); i++)
        if (groups[i].offset != tied_embedding) slots.elements[i % 2] = std::max(slots.elements[i % 2], groups[i].count);
    return slots;
}

// --state-offload's staging slots: each holds the AdamW state of one group, so the largest one's element count
static inline size_t largest_gradient_group(const ModelConfig& c) {
    size_t largest = 0;
    for (const GradientGroup& g : gradient_groups(c)) largest = std::max(largest, g.count);
    return largest;
}

// clip_grad_norm_'s factor as the GPU's global_norm_finish computes it: max_norm / (norm + 1e-6) when
// the norm exceeds max_norm, else 1; max_norm 0 is no clipping
static inline float clip_scale(float norm, float max_norm) {
    return (max_norm > 0.f && norm > max_norm) ? max_norm / (norm + 1e-6f) : 1.f;
}

// -d TOKENS: micro-batches of B x T tokens per update. Returns the count, or 0 and *problem.
static inline int accumulation_micro_batches(long long tokens_per_update, int B, int T, std::string* problem) {
    long long batch = (long long)B * T;
    if (tokens_per_update <= 0 || tokens_per_update % batch != 0) {
        *problem = "-d: tokens per update must be a positive multiple of B x T = " + std::to_string(batch) +
                   " (got " + std::to_string(tokens_per_update) + ")";
        return 0;
    }
    if (tokens_per_update / batch > INT_MAX) {
        *problem = "-d: " + std::to_string(tokens_per_update) + " tokens per update is more than " +
                   std::to_string(INT_MAX) + " micro-batches of B x T = " + std::to_string(batch);
        return 0;
    }
    return (int)(tokens_per_update / batch);
}

// A step whose loss or gradient norm is NaN or infinite is skipped: no weight, no AdamW state (nor its
// step count) changes. `limit` such steps in a row stop the run.
struct NonFiniteGuard {
    int limit = 5;
    int in_a_row = 0, skipped_total = 0;
    // true: skip this step
    bool skip(float loss, float norm) {
        bool bad = !std::isfinite(loss) || !std::isfinite(norm);
        in_a_row = bad ? in_a_row + 1 : 0;
        skipped_total += bad;
        return bad;
    }
    bool should_stop() const { return in_a_row >= limit; }
};
