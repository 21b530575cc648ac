// test_memory_plan.cpp: the memory plan's figures checked against formulas written out here, by hand,
// from Llama 3's published shapes (not from llama_config.h's layout code), and the plan's invariants.
#include "mst/memory_plan.h"
#include "mst/step_model.h"
#include "tests/test_util.h"

static const MemoryBudget CARD_80 = {80.0, 120.0};  // an 80 GiB card, 120 GiB of pinned host memory

static ModelConfig config_named(const char* name) {
    ModelConfig c;
    if (!find_model_config(name, &c)) { printf("no config %s\n", name); exit(1); }
    return c;
}

// Llama 3 8B at T = 60000 with the default options: bf16 weights and AdamW state, fused optimizer,
// recomputation, automatic mini-sequences (MLP ceil(14336/4096) = 4, LM head ceil(128256/4096) = 32).
static void test_llama3_8b_at_60000() {
    MemoryPlan plan = plan_memory(config_named("llama3-8b"), TrainingOptions());
    const size_t V = 128256, C = 4096, L = 32, F = 14336, T = 60000;
    const size_t layer = 2 * C                 // two RMSNorm weights
                       + 4096 * 4096           // q_proj
                       + 2 * 1024 * 4096       // k_proj, v_proj (8 kv heads x 128)
                       + 4096 * 4096           // o_proj
                       + 3 * F * C;            // gate, up, down
    const size_t P = V * C + L * layer + C + V * C;  // embedding, layers, final norm, untied LM head
    check(P == 8030261248ull, "8b: 8,030,261,248 parameters");
    check(plan.bytes[REGION_PARAMETERS] == P * 2, "8b: bf16 weights P x 2");
    check(plan.bytes[REGION_MASTER_WEIGHTS] == 0, "8b: no master weights by default");
    check(plan.bytes[REGION_ADAM_M] == P * 2 && plan.bytes[REGION_ADAM_V] == P * 2, "8b: bf16 AdamW m, v");
    // fused: two groups alive at once, in alternating slots (one computed while the other is copied): backward
    // completes the LM head (slot 0), the final norm (1), layers 31 .. 0 (0, 1, ...), the embedding (34: 0), so
    // slot 0 holds V x C and slot 1 a layer, in fp32
    check(plan.bytes[REGION_GRADIENTS] == (V * C + layer) * 4, "8b: fused gradients (V x C + a layer) x 4");
    check(plan.bytes[REGION_LAYER_INPUTS] == (L + 1) * T * C * 2, "8b: checkpoints (L+1) x T x C x 2");
    // the fixed-size rule: at most 2^30 / (6F) = 1073741824 / 86016 = 12483 tokens per MLP mini-sequence,
    // so ceil(60000 / 12483) = 5 of 12000; at most 2^30 / (2V) = 1073741824 / 256512 = 4185 per LM-head
    // one, so ceil(60000 / 4185) = 15 of 4000
    check(plan.options.mlp_chunks == 5 && plan.mlp_chunk_tokens == 12000, "8b: MLP 5 x 12000 tokens");
    check(plan.bytes[REGION_MLP_HIDDEN] == 12000ull * 3 * F * 2, "8b: MLP hidden 12000 x 3F x 2");
    check(plan.options.lmhead_chunks == 15 && plan.lmhead_chunk_tokens == 4000, "8b: LM head 15 x 4000 tokens");
    check(plan.bytes[REGION_LMHEAD_LOGITS] == 4000ull * V * 2, "8b: logits 4000 x V x 2");
    check(plan.bytes[REGION_QKV] == T * (4096 + 2 * 1024) * 2, "8b: one layer's q, k, v");
    // inputs and targets (2T ints), then the embedding backward's buckets: positions T, starts T + 1, ids T
    check(plan.bytes[REGION_TOKENS] == (5 * T + 1) * 4, "8b: tokens region (5T + 1) x 4");
    {   // --doc-mask 1: the document starts (T ints) too, and the plan grows by exactly them
        TrainingOptions masked;
        masked.doc_mask = true;
        MemoryPlan with_docs = plan_memory(config_named("llama3-8b"), masked);
        check(with_docs.bytes[REGION_TOKENS] == (6 * T + 1) * 4, "8b: tokens region with --doc-mask 1 (6T + 1) x 4");
        check(with_docs.total - plan.total == round_up_256((6 * T + 1) * 4) - round_up_256((5 * T + 1) * 4),
              "8b: --doc-mask 1 adds only the document starts");
    }
    // aliases (recomputation): the final norm in the MLP norm's region; dq and the attention-output
    // gradient in the attention residual's and MLP norm's, so the q, k, v gradient region keeps dk, dv
    // (T x 2 x 1024 x 2) and the attention backward's delta (T x 32 x 4)
    check(plan.aliased && plan.bytes[REGION_FINAL_NORM] == 0, "8b: the final norm aliases the MLP norm");
    check(plan.bytes[REGION_QKV_GRADIENT] == T * 2 * 1024 * 2 + T * 32 * 4, "8b: q, k, v gradient keeps dk, dv and delta");
    check(plan_fits(plan, CARD_80), "8b: T=60000 fits an 80 GB card");

    MemoryPlan standard = plan_memory(config_named("llama3-8b"), standard_options(TrainingOptions()));
    check(standard.bytes[REGION_MLP_HIDDEN] == L * T * 3 * F * 2, "8b standard: every layer's MLP hidden");
    check(standard.bytes[REGION_LMHEAD_LOGITS] == T * V * 2, "8b standard: all logits");
    check(!standard.aliased && standard.bytes[REGION_FINAL_NORM] == T * C * 2 + T * 4 &&
          standard.bytes[REGION_QKV_GRADIENT] == T * (4096 + 2 * 1024) * 2 + T * 4096 * 2 + T * 32 * 4,
          "8b standard (no recomputation): no aliases, every gradient buffer its own");
    check(!plan_fits(standard, CARD_80), "8b standard: T=60000 does not fit 80 GB");
}

// Every region sits inside its arena (device or host), 256-byte aligned, in order, without overlap.
static void test_regions_are_laid_out(const MemoryPlan& plan, const char* what) {
    bool ok = true;
    size_t end[2] = {0, 0};  // where the last region of each arena ended
    for (int r = 0; r < NUM_REGIONS; r++) {
        bool host = region_on_host(r);
        ok &= plan.offset[r] % 256 == 0 && plan.offset[r] >= end[host];
        end[host] = plan.offset[r] + plan.bytes[r];
    }
    check(ok && end[0] <= plan.total && end[1] <= plan.host_total, what);
}

static void test_options() {
    ModelConfig tiny = config_named("test-tiny");
    TrainingOptions o;
    o.B = 2; o.T = 37;
    o.mlp_chunks = 5;        // does not divide 74 tokens: chunks of ceil(74 / 5) = 15
    o.lmhead_chunks = 1000;  // more mini-sequences than tokens: one token each
    MemoryPlan plan = plan_memory(tiny, o);
    check(plan.mlp_chunk_tokens == 15, "tiny: 74 tokens in 5 mini-sequences of 15");
    check(plan.lmhead_chunk_tokens == 1, "tiny: more mini-sequences than tokens gives 1 token each");
    test_regions_are_laid_out(plan, "tiny: regions aligned and disjoint");

    o.mlp_chunks = o.lmhead_chunks = 0;  // automatic: 74 tokens are under the 1024-token minimum
    plan = plan_memory(tiny, o);
    check(plan.options.mlp_chunks == 1 && plan.options.lmhead_chunks == 1, "tiny: automatic rule keeps 1 chunk below 1024 tokens");

    ModelConfig tied = config_named("llama3.2-1b");
    TrainingOptions defaults;
    plan = plan_memory(tied, defaults);
    size_t V = 128256, C = 2048, F = 8192;
    size_t layer = 2 * C + 2048 * 2048 + 2 * 512 * 2048 + 2048 * 2048 + 3 * F * C;
    check(plan.bytes[REGION_GRADIENTS] == (V * C + 2 * layer) * 4, "1b tied: one V x C gradient kept whole beside two layers' slots");
    test_regions_are_laid_out(plan, "1b: regions aligned and disjoint");

    TrainingOptions unfused = defaults;
    unfused.fused_optimizer = false;
    unfused.bf16_optimizer_state = false;
    unfused.master_weights = true;
    plan = plan_memory(tied, unfused);
    size_t P = V * C + 16 * layer + C;
    check(plan.bytes[REGION_GRADIENTS] == P * 4, "1b unfused: full fp32 gradient");
    check(plan.bytes[REGION_ADAM_M] == P * 4 && plan.bytes[REGION_MASTER_WEIGHTS] == P * 4, "1b: fp32 state and master weights");
}

// The automatic rule fixes tokens per mini-sequence, not the count: the MLP's and the LM head's buffers
// are the same at T = 131072 and T = 1048576 (8b: 2^30 / 86016 = 12483 and 2^30 / 256512 = 4185 tokens
// at most; 131072 = 11 x 11916 (ceil(131072 / 12483) = 11, 131072 / 11 = 11915.6), 1048576 / 85 = 12336.2
// (ceil(1048576 / 12483) = 85)).
static void test_fixed_size_mini_sequences() {
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    o.T = 131072;
    MemoryPlan at_128k = plan_memory(c, o);
    o.T = 1048576;
    MemoryPlan at_1m = plan_memory(c, o);
    check(at_128k.options.mlp_chunks == 11 && at_128k.mlp_chunk_tokens == 11916, "rule: 8b at 128k, MLP 11 x 11916");
    check(at_1m.options.mlp_chunks == 85 && at_1m.mlp_chunk_tokens == 12337, "rule: 8b at 1M, MLP 85 x 12337");
    check(at_1m.options.lmhead_chunks == 251 && at_1m.lmhead_chunk_tokens == 4178, "rule: 8b at 1M, LM head 251 x 4178");
    check(at_128k.bytes[REGION_MLP_HIDDEN] <= MINI_SEQUENCE_BYTES && at_1m.bytes[REGION_MLP_HIDDEN] <= MINI_SEQUENCE_BYTES &&
          at_1m.bytes[REGION_LMHEAD_LOGITS] <= MINI_SEQUENCE_BYTES, "rule: MLP hidden and logits stay within 1 GiB at any T");
    o.mlp_chunks = 3; o.lmhead_chunks = 1;  // -m and -M override the rule
    MemoryPlan given = plan_memory(c, o);
    check(given.mlp_chunk_tokens == 349526 && given.lmhead_chunk_tokens == 1048576, "rule: -m 3 -M 1 override it");
    // the same counts in the CPU reference's and the trainer's sense: one function decides
    check(mlp_mini_sequences(c, 1048576, 0) == 85 && lmhead_mini_sequences(c, 1048576, 0) == 251 &&
          mlp_mini_sequences(c, 1048576, 7) == 7, "rule: mlp_mini_sequences / lmhead_mini_sequences");
}

static void test_max_T() {
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    int max_T = max_T_that_fits(c, o, CARD_80);  // the automatic choices resolved at each T, as --max-T does
    o.T = max_T;
    bool fits_at = plan_fits(plan_memory(c, resolve_automatic(c, o, CARD_80)), CARD_80);
    o.T = max_T + 1;
    bool fits_after = plan_fits(plan_memory(c, resolve_automatic(c, o, CARD_80)), CARD_80);
    check(max_T > 60000 && fits_at && !fits_after, "8b: --max-T is the last T that fits 80 GB, beyond 60000");
    int standard_max_T = max_T_that_fits(c, standard_options(TrainingOptions()), CARD_80);
    check(standard_max_T > 0 && standard_max_T * 8 < max_T, "8b: MST reaches over 8x the standard plan's T");
}

// --offload: the checkpoints move to pinned host memory, two staging buffers stay on the device.
// llama3-8b at T = 524288: inputs 0 .. L-2 go to the host, (L - 1) x T x C x 2 = 31 x 524288 x 4096 x 2 =
// 124 GiB, and come back, once each per step; input L - 1 and the last output stay staged (no copy without a
// reader).
static void test_offload() {
    ModelConfig c = config_named("llama3-8b");
    const size_t T = 524288, C = 4096, L = 32;
    TrainingOptions o;
    o.T = (int)T;
    MemoryPlan kept = plan_memory(c, o);
    o.offload = OFFLOAD_ALL;  // --offload 1
    MemoryPlan offloaded = plan_memory(c, o);
    check(offloaded.bytes[REGION_LAYER_INPUTS] == 2 * T * C * 2, "offload: 2 x T x C x 2 staging on the device");
    // the fused optimizer (the default) also holds every gradient group on the host for the exact clip, in bf16
    // with the default bf16 AdamW state: P x 2
    const size_t G = 8030261248ull * 2;
    check(offloaded.bytes[REGION_HOST_GRADIENTS] == G && kept.bytes[REGION_HOST_GRADIENTS] == G,
          "fused optimizer, -a bf16: P x 2 held gradients on the host");
    check(offloaded.bytes[REGION_HOST_CHECKPOINTS] == (L - 1) * T * C * 2 && offloaded.host_total == (L - 1) * T * C * 2 + G &&
          (L - 1) * T * C * 2 == 124ull << 30, "offload: (L - 1) x T x C x 2 = 124 GiB pinned on the host, plus the gradients");
    check(kept.host_total == G && kept.bytes[REGION_HOST_CHECKPOINTS] == 0, "no offload: only the gradients on the host");
    check(kept.total - offloaded.total == (L + 1 - 2) * T * C * 2, "offload: the device saves (L + 1 - 2) x T x C x 2");
    check(offloaded.pcie_to_host == (L - 1) * T * C * 2 + G && offloaded.pcie_to_device == (L - 1) * T * C * 2 + G &&
          kept.pcie_to_host == G && kept.pcie_to_device == G,
          "offload: PCIe per step L - 1 inputs out and back; the gradients out and back");
    int on_host = 0;
    for (int r = 0; r < NUM_REGIONS; r++) on_host += region_on_host(r);
    check(on_host == 4 && region_on_host(REGION_HOST_CHECKPOINTS) && region_on_host(REGION_HOST_GRADIENTS) &&
          region_on_host(REGION_HOST_ATTENTION) && region_on_host(REGION_HOST_ADAM_STATE), "four regions in pinned host memory");
    test_regions_are_laid_out(offloaded, "offload: device and host regions aligned and disjoint");
    // the predicted step: the copies (2 G and 2 (L - 1) checkpoints at 50 GB/s on an H200, 5.8 s) hide behind
    // the compute (minutes at this T); on a card with no compute to speak of they would all show
    StepPrediction predicted = predict_step(offloaded, *card_rates_for("NVIDIA H200"));
    double copies = 2.0 * (L - 1) * T * C * 2 + 2.0 * G;
    CardRates slow_pcie = *card_rates_for("NVIDIA H200");
    slow_pcie.pcie_bytes = 1e6;
    StepPrediction exposed = predict_step(offloaded, slow_pcie);
    double compute = 0;
    for (int phase = 0; phase < PHASE_HOST_COPIES; phase++) compute += exposed.seconds[phase];
    check(predicted.work[PHASE_HOST_COPIES] == copies && predicted.seconds[PHASE_HOST_COPIES] == 0 &&
          fabs(exposed.seconds[PHASE_HOST_COPIES] - (copies / 1e6 - compute)) < 1e-6 * copies / 1e6,
          "offload: predicted copies hidden behind the compute, only the excess shows");

    check(offloaded.options.offload == (int)L, "offload: --offload 1 is all L layers");

    // 10 of 32 layers offloaded: inputs 0-9 staged through 2 buffers (0-7 go to the host, 8 and 9 stay),
    // inputs 10 .. 32 (23) on the device
    o.offload = 10;
    MemoryPlan partial = plan_memory(c, o);
    check(partial.bytes[REGION_LAYER_INPUTS] == (2 + 23) * T * C * 2 && partial.host_total == 8 * T * C * 2 + G &&
          partial.pcie_to_host == 8 * T * C * 2 + G && partial.pcie_to_device == 8 * T * C * 2 + G,
          "offload 10 layers: 2 staging + 23 device inputs, 8 on the host, 8 out and back per step");

    // automatic (-1): none where the device alone fits, else the fewest layers that fit
    o.offload = -1;
    o.T = 60000;
    check(resolve_offload(c, o, CARD_80).offload == 0, "automatic offload: none at 60000 on 80 GB");
    o.T = 150000;
    int h = resolve_offload(c, o, CARD_80).offload;
    TrainingOptions fewer = o;
    fewer.offload = h - 1;
    check(h > 0 && h < (int)L && plan_fits(plan_memory(c, resolve_offload(c, o, CARD_80)), CARD_80) &&
          !plan_fits(plan_memory(c, fewer), CARD_80), "automatic offload at 150000 on 80 GB: the fewest layers that fit");
    printf("llama3-8b at T=150000 on 80 GiB: %d layers offloaded\n", h);
}

// --max-T respects both budgets: on a huge card with offload forced on, the host bounds T at
// 120 GiB / ((L - 1) x C x 2) = 128849018880 / 253952 = 507375 tokens; with no host memory to speak of,
// automatic offload cannot help and the device-only T stands; with both, T goes beyond the device-only T.
static void test_max_T_both_budgets() {
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    o.fused_optimizer = false;  // -f 0: no held gradients, so the checkpoints alone use the host
    o.offload = OFFLOAD_ALL;
    check(max_T_that_fits(c, o, {1000.0, 120.0}) == 507375, "max-T: 120 GiB of host bounds offloaded 8b at 507375");
    o.offload = -1;
    TrainingOptions device_options;
    device_options.fused_optimizer = false;
    int device_only = max_T_that_fits(c, device_options, CARD_80);
    check(max_T_that_fits(c, o, {80.0, 0.0}) == device_only, "max-T: no host memory, the device-only T");
    // the fused default holds P x 4 = 29.9 GiB of gradients on the host, which no host memory cannot hold
    o.fused_optimizer = true;
    check(max_T_that_fits(c, o, {80.0, 0.0}) == 0, "max-T: the fused optimizer's held gradients need host memory");
    device_only = max_T_that_fits(c, TrainingOptions(), {80.0, 120.0});
    int both = max_T_that_fits(c, o, CARD_80);
    o.T = both + 1;
    bool any_fits_after = false;
    for (int layers = 0; layers <= (int)c.n_layer; layers++) {
        TrainingOptions a = o;
        a.offload = layers;
        any_fits_after |= plan_fits(plan_memory(c, a), CARD_80);
    }
    check(both > device_only && !any_fits_after, "max-T: automatic offload goes further, and T + 1 fits with no layer count");
    // an H200: the device has room to keep some inputs, so a partial offload goes past the host's 507375
    int h200 = max_T_that_fits(c, o, {139.0, 120.0});
    check(h200 > 507375, "max-T: 139 GiB + 120 GiB host passes 507375 by keeping some inputs on the device");
    printf("llama3-8b max T: %d on 80 GiB alone, %d with 120 GiB of pinned host memory, %d on 139 GiB with it\n",
           device_only, both, h200);
}

// The layer inputs' schedule (CheckpointSchedule: --offload and --segment) walked on the CPU for L = 1 .. 7 layers,
// every k = 1 .. L and every h = 0 .. L, two training steps and a forward-only pass between them (validation), as
// the trainer's streams run it: a buffer written while a copy out of it or into it may still run (no wait on its
// event) is an error, as is a layer (forward, backward or a segment's recomputation) reading a buffer that does
// not hold its input, a fetch into the buffer in use or over an input backward still reads, and a host copy
// holding the wrong input. The buffers are what the plan counts (test-tiny with L layers): without segments at
// most 2 + L + 1 - S staged, with them n + k or, offloaded, 2 + k - 1; the host holds the stored kept inputs.
static void test_checkpoint_schedule() {
    bool ok = true;
    std::string first_problem;
    for (int L = 1; L <= 7; L++) {
        for (int k = 1; k <= L; k++) {
            for (int h = 0; h <= L; h++) {
                CheckpointSchedule cs(k, h, L);
                const SegmentSchedule& g = cs.segment;
                const OffloadSchedule& o = cs.offload;
                int buffers = cs.buffers(), n = g.checkpoints();
                auto fail = [&](const char* what) {
                    if (ok) first_problem = "L=" + std::to_string(L) + " k=" + std::to_string(k) + " h=" + std::to_string(h) + ": " + what;
                    ok = false;
                };
                std::vector<int> holds(buffers, -1), host(n + 1, -1);
                std::vector<bool> copy_out(buffers, false), copy_in(buffers, false);  // copies in flight
                std::vector<int> stored_in_pass(n + 1, 0), fetched_in_pass(n + 1, 0);
                auto write = [&](int l) {
                    int b = cs.buffer(l);
                    if (b < 0 || b >= buffers) return fail("buffer outside the region");
                    if (copy_out[b] || copy_in[b]) fail("a buffer written while a copy of it runs");
                    holds[b] = l;
                };
                auto reads = [&](int l, const char* what) {
                    int b = cs.buffer(l);
                    if (b < 0 || b >= buffers || copy_in[b] || holds[b] != l) fail(what);
                };
                auto store = [&](int l) {  // forward's copy of input l to the host
                    int i = g.kept(l);
                    if (i < 0 || !o.stores(i)) return;
                    if (i >= o.stored()) fail("a store outside the host region");
                    stored_in_pass[i]++;
                    reads(l, "the host copy is of the wrong input");
                    host[i] = l;
                    copy_out[cs.buffer(l)] = true;
                };
                auto layer_forward = [&](int l, bool backward_follows) {
                    reads(l, "a forward reads the wrong input");
                    int i = g.kept(l + 1);
                    if (i >= 0 && o.overwrite_waits(i)) copy_out[cs.buffer(l + 1)] = false;  // waits on stored[i % 2]
                    write(l + 1);
                    if (backward_follows) store(l + 1);
                };
                auto forward = [&](bool backward_follows) {
                    std::fill(copy_out.begin(), copy_out.end(), false);  // model_forward waits on both stored events
                    write(0);
                    if (backward_follows) store(0);
                    for (int l = 0; l < L; l++) layer_forward(l, backward_follows);
                    reads(L, "the final norm reads the wrong output");
                };
                auto backward = [&]() {
                    for (int l = L - 1; l >= 0; l--) {
                        if (g.last(l)) {  // the segment's backward begins: its checkpoint, the one below's fetch
                            int first = g.first(l), i = g.kept(first), b = cs.buffer(first);
                            if (o.backward_waits(i)) copy_in[b] = false;  // waits on fetched[i % 2]
                            if (o.fetches_previous(i)) {
                                int target = cs.buffer(first - k);
                                if (target == b) fail("a fetch into the buffer in use");
                                if (holds[target] >= 0 && holds[target] < first) fail("a fetch over an input backward still reads");
                                copy_out[target] = false;  // the copy stream runs in order: copies out of it are done
                                if (host[i - 1] != first - k) fail("the host holds the wrong input");
                                holds[target] = host[i - 1];
                                copy_in[target] = true;
                                fetched_in_pass[i - 1]++;
                            }
                            if (g.recomputes(l))
                                for (int j = first; j < l; j++) layer_forward(j, false);
                        }
                        reads(l, "a backward reads an input not (yet) there");
                    }
                    std::fill(copy_in.begin(), copy_in.end(), false);
                };
                forward(true); backward();
                forward(false);  // validation: forward only, stores nothing
                forward(true); backward();
                for (int i = 0; i <= n; i++)  // no copy without a reader: every input stored is fetched, once a step
                    if (stored_in_pass[i] != fetched_in_pass[i] || stored_in_pass[i] != (i < o.stored() ? 2 : 0))
                        fail("an input stored but not fetched, or stored by the forward-only pass");
                if (g.recomputed_layers() != L - (L + k - 1) / k) fail("the recomputed layers are not L - ceil(L / k)");
                if (k == 1 && h == 0 && buffers != L + 1) fail("k = 1 without offload is not one buffer per input");
                if (k > 1 && buffers != (h > 0 ? k + 1 : n + k)) fail("segments: not n + k buffers, or 2 staging + k - 1 offloaded");
                // the plan's regions hold these buffers and the stored inputs (test-tiny with L layers, T = 100, C = 128)
                ModelConfig tiny = config_named("test-tiny");
                tiny.n_layer = L;
                TrainingOptions t;
                t.T = 100;
                t.offload = h;
                t.segment = k;
                MemoryPlan plan = plan_memory(tiny, t);
                if (plan.bytes[REGION_LAYER_INPUTS] != (size_t)buffers * 100 * 128 * 2 ||
                    plan.bytes[REGION_HOST_CHECKPOINTS] != (size_t)o.stored() * 100 * 128 * 2)
                    fail("the plan's layer-input regions are not the schedule's buffers and stored inputs");
            }
        }
    }
    if (!ok) printf("checkpoint schedule: %s\n", first_problem.c_str());
    check(ok, "checkpoint schedule (offload and segments): every buffer holds what each step reads, no write under a "
              "running copy, every stored input fetched, nothing stored that backward finds staged or that no backward follows");
}

// --keep-attention: each layer's attention output (T x Q x 2) and lse (T x H x 4) through two device buffers,
// outputs 0 .. L-3 in pinned host memory. llama3-8b at T = 60000: 30 x 60000 x (4096 x 2 + 32 x 4) bytes =
// 13.9 GiB on the host and over PCIe each way, one more buffer on the device, and the predicted step loses
// the recomputation's attention forward. The automatic choice takes it where the plan still fits, never
// where it would not, so --max-T is unchanged by it; forced on, --max-T counts it. Then the schedule walked
// for L = 1 .. 7 over two training steps and a forward-only pass between them: no buffer written while a copy
// out of it runs, every backward reading its own layer's output, every stored output fetched once a step.
static void test_keep_attention() {
    ModelConfig c = config_named("llama3-8b");
    const size_t T = 60000, Q = 4096, H = 32, L = 32, out = T * (Q * 2 + H * 4);
    TrainingOptions o;
    o.T = (int)T;
    MemoryPlan recomputed = plan_memory(c, o);
    o.keep_attention = 1;
    MemoryPlan kept = plan_memory(c, o);
    check(kept.bytes[REGION_HOST_ATTENTION] == (L - 2) * out && kept.bytes[REGION_ATTENTION_OUT] == 2 * out &&
          recomputed.bytes[REGION_ATTENTION_OUT] == out && recomputed.bytes[REGION_HOST_ATTENTION] == 0 &&
          kept.shape[REGION_HOST_ATTENTION] == "30 x 60000 x (4096 x 2 + 32 x 4)",
          "keep-attention: (L - 2) x T x (Q x 2 + H x 4) on the host, 2 buffers on the device");
    check(kept.host_total - recomputed.host_total == (L - 2) * out && kept.total - recomputed.total == out &&
          kept.pcie_to_host - recomputed.pcie_to_host == (L - 2) * out &&
          kept.pcie_to_device - recomputed.pcie_to_device == (L - 2) * out,
          "keep-attention: the totals and PCIe each way grow by exactly the kept outputs");
    test_regions_are_laid_out(kept, "keep-attention: device and host regions aligned and disjoint");
    StepPrediction before = predict_step(recomputed, *card_rates_for("NVIDIA H200"));
    StepPrediction after = predict_step(kept, *card_rates_for("NVIDIA H200"));
    check(after.work[PHASE_ATTENTION_FORWARD] * 2 == before.work[PHASE_ATTENTION_FORWARD] &&
          after.work[PHASE_MATMULS] == before.work[PHASE_MATMULS],
          "keep-attention: the predicted step runs the attention forward once, the matmuls as before");
    TrainingOptions no_recompute = o;
    no_recompute.recompute = false;
    check(plan_memory(c, no_recompute).options.keep_attention == 0 &&
          training_options_problem(c, no_recompute).find("--keep-attention 1: needs -r 1") == 0,
          "keep-attention with -r 0: refused by the options check, off in the plan");
    TrainingOptions tiny;
    tiny.T = 100;
    tiny.keep_attention = 1;
    MemoryPlan two = plan_memory(config_named("test-tiny"), tiny);
    check(two.bytes[REGION_HOST_ATTENTION] == 0 && two.bytes[REGION_ATTENTION_OUT] == 2 * 100 * (128 * 2 + 2 * 4),
          "keep-attention with 2 layers: both outputs stay in the device buffers, nothing on the host");
    // automatic
    o.keep_attention = -1;
    check(resolve_automatic(c, o, CARD_80).keep_attention == 1, "automatic keep-attention: on for llama3-8b at 60000 on 80 GiB");
    int longest = max_T_that_fits(c, o, CARD_80);
    TrainingOptions off = o, on = o;
    off.keep_attention = 0;
    on.keep_attention = 1;
    o.T = longest;
    TrainingOptions at_longest = resolve_automatic(c, o, CARD_80);
    check(at_longest.keep_attention == 0 && plan_fits(plan_memory(c, at_longest), CARD_80),
          "automatic keep-attention: off at the longest T, where it would not fit");
    int longest_on = max_T_that_fits(c, on, CARD_80);
    check(longest == max_T_that_fits(c, off, CARD_80) && longest_on < longest,
          "automatic keep-attention never shortens --max-T; forced on, --max-T counts its bytes");
    printf("llama3-8b on 80 GiB + 120 GiB: longest T %d, %d with --keep-attention 1\n", longest, longest_on);

    bool ok = true;
    std::string problem;
    auto fail = [&](int layers, const char* what) {
        if (ok) problem = "L=" + std::to_string(layers) + ": " + what;
        ok = false;
    };
    for (int layers = 1; layers <= 7; layers++) {
        OffloadSchedule k = kept_attention_schedule(layers);
        int holds[2] = {-1, -1};
        bool copy_out[2] = {false, false}, copy_in[2] = {false, false};
        std::vector<int> host(layers, -1), stored(layers, 0), fetched(layers, 0);
        auto forward = [&](bool backward_follows) {
            for (int l = 0; l < layers; l++) {
                int b = k.buffer(l);
                if (b != l % 2) fail(layers, "an output outside the two buffers");
                if (k.overwrite_waits(l)) copy_out[b] = false;  // waits on attention_stored[l % 2]
                if (copy_out[b] || copy_in[b]) fail(layers, "a buffer written while a copy of it runs");
                holds[b] = l;
                if (!backward_follows || !k.stores(l)) continue;
                if (l >= k.stored()) fail(layers, "a store outside the host region");
                host[l] = l;
                copy_out[b] = true;
                stored[l]++;
            }
        };
        auto backward = [&]() {
            for (int l = layers - 1; l >= 0; l--) {
                int b = k.buffer(l);
                if (k.backward_waits(l)) copy_in[b] = false;  // waits on attention_fetched[l % 2]
                if (copy_in[b] || holds[b] != l) fail(layers, "backward reads an output not (yet) there");
                if (!k.fetches_previous(l)) continue;
                int target = k.buffer(l - 1);
                if (target == b) fail(layers, "a fetch into the buffer in use");
                if (host[l - 1] != l - 1) fail(layers, "the host holds the wrong output");
                copy_out[target] = false;  // the copy stream runs in order
                holds[target] = host[l - 1];
                copy_in[target] = true;
                fetched[l - 1]++;
            }
            copy_in[0] = copy_in[1] = false;
        };
        forward(true); backward();
        forward(false);
        forward(true); backward();
        for (int l = 0; l < layers; l++)
            if (stored[l] != fetched[l] || stored[l] != (l < layers - 2 ? 2 : 0))
                fail(layers, "an output stored but not fetched, or one of the last two stored");
    }
    if (!ok) printf("kept attention schedule: %s\n", problem.c_str());
    check(ok, "kept attention schedule: every backward reads its layer's output, no write under a running copy, "
              "outputs 0 .. L-3 stored and fetched once a step, the last two never");
}

// T tokens, every gradient on the card (-f 0), the other options their defaults
static TrainingOptions gradients_on_card(size_t T) {
    TrainingOptions o;
    o.T = (int)T;
    o.fused_optimizer = 0;
    return o;
}

// --segment k: every k-th input kept (and the last output), a segment's others recomputed into k - 1 shared
// buffers. llama3-8b at T = 200000, k = 4: 8 checkpoints + the output + 3 shared = 12 x T x C x 2 on the device,
// and 32 - 8 = 24 more layer forwards per step in the prediction. With --offload 1 the checkpoints but the last
// go to pinned host memory (7 x T x C x 2, out and back each step), the last and the output staged in 2 device
// buffers beside the 3 shared. The automatic choice (0) keeps 1 where the plan fits; where it does not, the
// smallest k that fits (every smaller k, 1 included, does not), with the checkpoints offloaded when that fits
// longer: past --segment 1's T on 139 GiB (host bound), not on 80 GiB (the card binds, and segments on the host
// add k - 1 device buffers to offload's 2).
static void test_segments() {
    ModelConfig c = config_named("llama3-8b");
    const size_t T = 200000, C = 4096;
    TrainingOptions o = gradients_on_card(T);
    MemoryPlan whole = plan_memory(c, o);
    o.segment = 4;
    MemoryPlan segmented = plan_memory(c, o);
    check(segmented.bytes[REGION_LAYER_INPUTS] == 12 * T * C * 2 && whole.bytes[REGION_LAYER_INPUTS] == 33 * T * C * 2 &&
          segmented.shape[REGION_LAYER_INPUTS] == "12 x 200000 x 4096 x 2" && segmented.host_total == 0,
          "segment 4: 8 checkpoints, the output and 3 shared buffers on the device");
    const CardRates& h200 = *card_rates_for("NVIDIA H200");
    StepPrediction before = predict_step(whole, h200), after = predict_step(segmented, h200);
    ParameterLayout layout = parameter_layout(c);
    double layer_matmul = (double)layout.layer.count - 2.0 * C;
    check(fabs(after.work[PHASE_MATMULS] - before.work[PHASE_MATMULS] - 2.0 * T * 24 * layer_matmul) < 1e-9 * after.work[PHASE_MATMULS] &&
          fabs(after.work[PHASE_ATTENTION_FORWARD] / before.work[PHASE_ATTENTION_FORWARD] - (2.0 * 32 + 24) / 64) < 1e-12,
          "segment 4: the prediction counts 24 more layer forwards (matmuls and attention)");
    TrainingOptions offloaded = o;
    offloaded.offload = OFFLOAD_ALL;
    MemoryPlan both = plan_memory(c, offloaded);
    offloaded.offload = 10;  // any count: with segments every checkpoint or none
    MemoryPlan ten = plan_memory(c, offloaded);
    check(both.bytes[REGION_LAYER_INPUTS] == 5 * T * C * 2 && both.bytes[REGION_HOST_CHECKPOINTS] == 7 * T * C * 2 &&
          both.shape[REGION_HOST_CHECKPOINTS] == "7 x 200000 x 4096 x 2" && both.host_total == 7 * T * C * 2 &&
          both.pcie_to_host == 7 * T * C * 2 && both.pcie_to_device == 7 * T * C * 2 &&
          both.total == segmented.total - 7 * T * C * 2 && both.options.segment == 4 && both.options.offload == 32 &&
          ten.total == both.total && ten.host_total == both.host_total && ten.options.offload == 32,
          "segment 4 with --offload 1: checkpoints 0, 4, .., 24 on the host, 2 staging + 3 shared on the device, 7 out and back");
    check(offload_text(both.options, 32) == "inputs 0, 4, .., 24 in pinned host memory" &&
          predict_step(both, h200).work[PHASE_ATTENTION_FORWARD] == after.work[PHASE_ATTENTION_FORWARD],
          "segment 4 with offload: named in the plan, the same 24 more layer forwards");
    test_regions_are_laid_out(both, "segment 4 with offload: device and host regions aligned and disjoint");
    TrainingOptions bad = o;
    bad.keep_attention = 1;
    bool refused = training_options_problem(c, bad).find("--segment 4 with --keep-attention 1") == 0;
    bad = o;
    bad.recompute = false;
    refused &= training_options_problem(c, bad).find("--segment 4: needs -r 1") == 0;
    refused &= training_options_problem(c, offloaded) == "";
    check(refused, "segment: refused with --keep-attention 1 or -r 0, not with --offload 1");

    TrainingOptions automatic, one;
    automatic.segment = 0;
    automatic.offload = -1;
    automatic.fused_optimizer = -1;
    one = automatic;
    one.segment = 1;
    automatic.T = 60000;
    check(resolve_automatic(c, automatic, CARD_80).segment == 1, "automatic segment: 1 where the plan fits (60000 on 80 GiB)");
    const MemoryBudget budgets[3] = {CARD_80, {139.0, 60.0}, {139.0, 120.0}};
    for (const MemoryBudget& budget : budgets) {
        std::string name = std::to_string((int)budget.gpu_gib) + " GiB + " + std::to_string((int)budget.host_gib) + " GiB";
        int longest = max_T_that_fits(c, automatic, budget), longest_one = max_T_that_fits(c, one, budget);
        automatic.T = longest;
        TrainingOptions chosen = resolve_automatic(c, automatic, budget);
        bool smallest = true;
        for (int k = 1; k < chosen.segment; k++) {
            TrainingOptions fewer = automatic;
            fewer.segment = k;
            smallest &= !plan_fits(plan_memory(c, resolve_automatic(c, fewer, budget)), budget);
        }
        bool host_bound = budget.gpu_gib > 100;
        std::string what = "automatic segment: llama3-8b on " + name +
                           (host_bound ? " reaches past --segment 1's T with the checkpoints of the smallest k offloaded"
                                       : " stays at --segment 1's T (the card binds)");
        check(plan_fits(plan_memory(c, chosen), budget) && smallest &&
              (host_bound ? longest > longest_one && chosen.segment > 1 && chosen.offload > 0 : longest == longest_one),
              what.c_str());
        printf("llama3-8b on %s: longest T %d with --segment 1, %d automatic (segments of %d, checkpoints %s)\n",
               name.c_str(), longest_one, longest, chosen.segment, chosen.offload > 0 ? "offloaded" : "on the card");
    }
}

// --attention-blocks: llama3-8b at T = 200,000 in 4 query blocks of 50,000 tokens: the attention norm, q (with the
// sm_90a forward's 128 pad rows) and the attention output hold one block, the rstd, k, v and the lse of the (one)
// sequence every row, and the q, k, v gradient region gains dK, dV summed in fp32 (T x 2 x 1024 x 4); the plan shrinks
// by exactly the difference. The count rule (ceil(T / N) tokens, so fewer blocks where N does not fit T), the
// refusals, the automatic choice (1 where the plan fits, else the smallest count that fits) and the step model's
// extra attention forward.
static void test_attention_blocks() {
    ModelConfig c = config_named("llama3-8b");
    const size_t T = 200000, C = 4096, Q = 4096, KV = 1024, H = 32, n = 50000;
    TrainingOptions o = gradients_on_card(T);
    MemoryPlan whole = plan_memory(c, o);
    o.attention_blocks = 4;
    MemoryPlan blocked = plan_memory(c, o);
    check(blocked.options.attention_blocks == 4 && blocked.attention_block_tokens == (int)n, "blocks: 4 of 50000 tokens");
    check(blocked.bytes[REGION_ATTENTION_NORM] == n * C * 2 + T * 4 &&
          blocked.bytes[REGION_QKV] == (n + 128) * Q * 2 + T * 2 * KV * 2 &&
          blocked.bytes[REGION_ATTENTION_OUT] == n * Q * 2 + T * H * 4 &&
          blocked.bytes[REGION_QKV_GRADIENT] == T * 2 * KV * 4 + T * 2 * KV * 2 + T * H * 4 &&
          blocked.bytes[REGION_FINAL_NORM] == 0 && blocked.aliased,
          "blocks: norm, q and output per block; rstd, k, v, lse whole; fp32 dK, dV sums; the final norm still aliased");
    size_t saved = (T - n) * C * 2 + (T - n - 128) * Q * 2 + (T - n) * Q * 2;
    check(whole.total - blocked.total == saved - T * 2 * KV * 4, "blocks: the plan shrinks by exactly the regions' difference");
    test_regions_are_laid_out(blocked, "blocks: regions aligned and disjoint");
    TrainingOptions tiny = o;
    tiny.T = 67;
    check(attention_blocks_used(tiny) == 4 && mini_sequence_length(67, 4) == 17, "blocks: 67 tokens in 4 blocks of 17");
    tiny.T = 9;
    check(attention_blocks_used(tiny) == 3, "blocks: 9 tokens asked in 4 blocks run 3 blocks of 3");
    tiny.recompute = false;
    check(attention_blocks_used(tiny) == 1 && plan_memory(c, tiny).options.attention_blocks == 1, "blocks: none without recomputation");

    auto refused = [&](void (*change)(TrainingOptions&), const char* start) {
        TrainingOptions bad = o;
        change(bad);
        return training_options_problem(c, bad).find(start) == 0;
    };
    check(refused([](TrainingOptions& b) { b.attention_blocks = -1; }, "--attention-blocks must be 0") &&
          refused([](TrainingOptions& b) { b.T = 3; }, "--attention-blocks 4: more blocks than the 3 tokens") &&
          refused([](TrainingOptions& b) { b.recompute = false; }, "--attention-blocks 4 with -r 0: not supported yet") &&
          refused([](TrainingOptions& b) { b.keep_attention = 1; }, "--attention-blocks 4 with --keep-attention 1: not supported yet") &&
          refused([](TrainingOptions& b) { b.sp = 2; }, "--attention-blocks 4 with --sp/--dp: not supported yet"),
          "blocks: refused below 0, beyond T, with -r 0, --keep-attention 1, --sp/--dp");

    const CardRates& h200 = *card_rates_for("NVIDIA H200");
    StepPrediction before = predict_step(whole, h200), after = predict_step(blocked, h200);
    check(fabs(after.work[PHASE_ATTENTION_FORWARD] / before.work[PHASE_ATTENTION_FORWARD] - 1.5) < 1e-12 &&
          fabs(after.work[PHASE_MATMULS] - before.work[PHASE_MATMULS] - 2.0 * T * 32 * C * Q) < 1e-9 * after.work[PHASE_MATMULS],
          "blocks: the prediction counts one more attention forward and q projection per layer");

    TrainingOptions automatic;
    automatic.offload = -1;
    automatic.keep_attention = -1;
    automatic.segment = 0;
    automatic.fused_optimizer = -1;
    automatic.attention_blocks = 0;
    TrainingOptions one = automatic;
    one.attention_blocks = 1;
    automatic.T = 60000;
    check(resolve_automatic(c, automatic, CARD_80).attention_blocks == 1, "automatic blocks: 1 where the plan fits (60000 on 80 GiB)");
    int longest = max_T_that_fits(c, automatic, CARD_80), longest_one = max_T_that_fits(c, one, CARD_80);
    automatic.T = longest;
    TrainingOptions chosen = resolve_automatic(c, automatic, CARD_80), fewer = chosen;
    fewer.attention_blocks = chosen.attention_blocks - 1;
    check(longest > longest_one && chosen.attention_blocks > 1 && plan_fits(plan_memory(c, chosen), CARD_80),
          "automatic blocks: llama3-8b on 80 GiB + 120 GiB reaches past --attention-blocks 1's T");
    check(chosen.attention_blocks == 2 || !plan_fits(plan_memory(c, resolve_automatic(c, fewer, CARD_80)), CARD_80),
          "automatic blocks: the smallest count that fits");
    printf("llama3-8b on 80 GiB + 120 GiB: longest T %d with --attention-blocks 1, %d automatic (%d blocks)\n", longest_one,
           longest, chosen.attention_blocks);
}

// -f automatic: every gradient on the card (no host traffic) when that plan fits, else held on the host; an
// explicit -f stays; --max-T takes whichever fits the longer T
static void test_automatic_optimizer_path() {
    const MemoryBudget card_139 = {139.0, 60.0};  // where the host binds: offloading more checkpoints is no way out
    TrainingOptions o;
    o.T = 8192;
    TrainingOptions small = resolve_automatic(config_named("llama3.2-1b"), o, CARD_80);
    MemoryPlan plan = plan_memory(config_named("llama3.2-1b"), small);
    check(small.fused_optimizer == 0 && plan.host_total == 0 && plan.pcie_to_host == 0 && plan.pcie_to_device == 0 &&
          plan.bytes[REGION_GRADIENTS] == parameter_layout(config_named("llama3.2-1b")).total * 4,
          "automatic -f: llama3.2-1b at 8192 keeps P x 4 gradients on the card, nothing on the host or over PCIe");
    ModelConfig c = config_named("llama3-8b");
    o.T = 60000;
    TrainingOptions on_80 = resolve_automatic(c, o, CARD_80), on_139 = resolve_automatic(c, o, card_139);
    check(on_80.fused_optimizer == 1 && on_80.offload == 0 && plan_fits(plan_memory(c, on_80), CARD_80),
          "automatic -f: llama3-8b at 60000 on 80 GiB holds the gradients on the host (P x 4 does not fit)");
    check(on_139.fused_optimizer == 0 && plan_fits(plan_memory(c, on_139), card_139),
          "automatic -f: llama3-8b at 60000 on 139 GiB keeps them on the card");
    TrainingOptions given = o;
    given.fused_optimizer = 1;
    check(resolve_automatic(c, given, card_139).fused_optimizer == 1, "explicit -f 1 stays where -f 0 fits");
    given.fused_optimizer = 0;
    check(resolve_automatic(c, given, CARD_80).fused_optimizer == 0, "explicit -f 0 stays where it does not fit");
    for (const MemoryBudget& budget : {CARD_80, card_139}) {
        TrainingOptions fused = o, on_card = o;
        fused.fused_optimizer = 1;
        on_card.fused_optimizer = 0;
        check(max_T_that_fits(c, o, budget) == std::max(max_T_that_fits(c, fused, budget), max_T_that_fits(c, on_card, budget)),
              "automatic -f: --max-T is the longer of the two paths'");
    }
}

static void test_problems() {
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    o.T = 0;
    check(training_options_problem(c, o).find("-T") != std::string::npos, "T=0 is refused, naming -T");
    o = TrainingOptions();
    o.mlp_chunks = -1;
    check(training_options_problem(c, o).find("-m") != std::string::npos, "negative -m is refused");
    ModelConfig bad = c;
    bad.n_head = 30;
    check(model_config_problem(bad).find("does not divide d_model") != std::string::npos, "heads not dividing d_model refused");
    check(training_options_problem(c, TrainingOptions()).empty(), "the defaults are valid");
}

// The step model (step_model.h): its arithmetic on a hand-worked case, its choices, and its prediction
// against the two steps an H200 measured (README, 7872998: 1,864 tokens/s for llama3-8b at T = 60,000, 27,452
// for llama3.2-1b at T = 8,192; that path held no gradients on the host, so no host copies). The model leaves out
// launch gaps and synchronization, so it may be optimistic, by at most 30 %, never pessimistic.
static void test_step_model() {
    const CardRates* h200 = card_rates_for("NVIDIA H200");
    check(h200 && h200->hbm_bytes == 4800e9 && card_rates_for("NVIDIA H100 PCIe")->bf16_flops == 756e12 &&
          card_rates_for("NVIDIA H100 80GB HBM3")->hbm_bytes == 3350e9 && !card_rates_for("Tesla V100"),
          "step model: cards found by name, the longest match first, unknown cards none");
    const char* names[2] = {"llama3-8b", "llama3.2-1b"};
    const int Ts[2] = {60000, 8192};
    const double measured[2] = {1864, 27452};
    for (int i = 0; i < 2; i++) {
        TrainingOptions o;
        o.T = Ts[i];
        o.offload = 0;
        MemoryPlan plan = plan_memory(config_named(names[i]), o);
        plan.pcie_to_host = plan.pcie_to_device = plan.bytes[REGION_HOST_GRADIENTS] = 0;
        StepPrediction p = predict_step(plan, *h200);
        double sum = 0;
        for (int phase = 0; phase < NUM_PHASES; phase++) sum += p.seconds[phase];
        check(fabs(sum - p.total_s) < 1e-12 && fabs(p.tokens_per_s - Ts[i] / p.total_s) < 1e-6,
              "step model: the phases add up to the step, tokens/s = tokens / step");
        double ratio = measured[i] / p.tokens_per_s;
        printf("  %s T=%d on an H200: predicted %.0f tokens/s, measured %.0f (x%.2f)\n", names[i], Ts[i], p.tokens_per_s,
               measured[i], ratio);
        check(ratio >= 0.7 && ratio <= 1.0, "step model: prediction within 30 % above the H200's measured step");
    }
    // by hand: llama3-8b at T = 60,000 spends most of its step in attention (backward 2.5 x forward's 2 N T Q L
    // FLOPs, at 0.215 of 778 TFLOP/s), so attention backward bounds it
    TrainingOptions o;
    MemoryPlan plan = plan_memory(config_named("llama3-8b"), o);
    StepPrediction p = predict_step(plan, *h200);
    double backward_flops = 2.5 * 2.0 * 60000.0 * 60000 * 4096 * 32;
    check(fabs(p.seconds[PHASE_ATTENTION_BACKWARD] - backward_flops / (778e12 * 0.215)) < 1e-9 &&
          p.bound == PHASE_ATTENTION_BACKWARD, "step model: 8b at 60k bound by attention backward (hand-worked)");
    // the held gradients (bf16 with -a bf16): P x 2 out and back = 32.1 GB, 0.64 s at 50 GB/s, hidden behind ~27 s
    // of compute
    check(p.work[PHASE_HOST_COPIES] == 2 * 8030261248.0 * 2 && p.seconds[PHASE_HOST_COPIES] == 0 &&
          fabs(p.copy_s - 2 * 8030261248.0 * 2 / 50e9) < 1e-12 && p.compute_s > 20 && p.compute_s < 40,
          "step model: held gradients 2 x P x 2 bytes over PCIe, 0.64 s beside ~27 s of kernels: hidden");
    // copies longer than the kernels: only the excess shows in the step
    MemoryPlan heavy = plan;
    heavy.pcie_to_host = heavy.pcie_to_device = (size_t)(50e9 * p.compute_s);  // 2 x compute_s at 50 GB/s
    StepPrediction slow = predict_step(heavy, *h200);
    check(fabs(slow.seconds[PHASE_HOST_COPIES] - slow.compute_s) < 1e-6 && fabs(slow.total_s - 2 * slow.compute_s) < 1e-6,
          "step model: copies of twice the kernels' time add their excess, once");
    // two micro-batches: twice the passes and copies, one update
    StepPrediction two = predict_step(plan, *h200, 2);
    check(fabs(two.seconds[PHASE_MATMULS] - 2 * p.seconds[PHASE_MATMULS]) < 1e-9 &&
          two.seconds[PHASE_OPTIMIZER] == p.seconds[PHASE_OPTIMIZER], "step model: -d 2 doubles the passes, one update");
    // without recomputation one forward fewer per layer: less matmul and attention-forward time
    o.recompute = false;
    StepPrediction plain = predict_step(plan_memory(config_named("llama3-8b"), o), *h200);
    check(fabs(plain.seconds[PHASE_ATTENTION_FORWARD] * 2 - p.seconds[PHASE_ATTENTION_FORWARD]) < 1e-9 &&
          plain.seconds[PHASE_MATMULS] < p.seconds[PHASE_MATMULS], "step model: recomputation adds one forward");
}

// ZeRO-1 over --dp D ranks: each GPU keeps AdamW m, v (and master weights) for ceil(P / D) parameters; the bf16
// parameters and the fp32 gradients are padded to D x ceil(P / D) (equal blocks for the reduce-scatter and the
// all-gather); the activations are one rank's B x T. Hand formulas from the 8B's P, checked at D = 8 and D = 3
// (P = 8,030,261,248 is a multiple of 8, not of 3: padding of 2).
static void test_zero1_shards() {
    const size_t P = 8030261248ull;
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    o.fused_optimizer = 0;
    o.master_weights = true;
    MemoryPlan one = plan_memory(c, o);
    for (int D : {8, 3}) {
        o.dp = D;
        MemoryPlan plan = plan_memory(c, o);
        size_t shard = D == 8 ? P / 8 : P / 3 + 1, padded = shard * D;
        char what[160];
        snprintf(what, sizeof what, "ZeRO-1 --dp %d: AdamW m, v bf16 and master weights fp32 for %zu parameters", D, shard);
        check(plan.bytes[REGION_ADAM_M] == shard * 2 && plan.bytes[REGION_ADAM_V] == shard * 2 &&
              plan.bytes[REGION_MASTER_WEIGHTS] == shard * 4, what);
        snprintf(what, sizeof what, "ZeRO-1 --dp %d: parameters x 2 and gradients x 4 padded to %zu (D x shard >= P)", D, padded);
        check(padded >= P && padded - P < (size_t)D && plan.bytes[REGION_PARAMETERS] == padded * 2 &&
              plan.bytes[REGION_GRADIENTS] == padded * 4, what);
        snprintf(what, sizeof what, "ZeRO-1 --dp %d: activations as one GPU's (layer inputs, q/k/v, logits)", D);
        check(plan.bytes[REGION_LAYER_INPUTS] == one.bytes[REGION_LAYER_INPUTS] && plan.bytes[REGION_QKV] == one.bytes[REGION_QKV] &&
              plan.bytes[REGION_LMHEAD_LOGITS] == one.bytes[REGION_LMHEAD_LOGITS], what);
        test_regions_are_laid_out(plan, "ZeRO-1: regions laid out in order, within the arena");
    }
    // 8 GPUs save 7/8 of the state: 8B's (2 + 2 + 4) x P bytes become a shard's
    o.dp = 8;
    double saved = gib(one.total) - gib(plan_memory(c, o).total);
    check(fabs(saved - gib(P / 8 * 7 * 8)) < 0.01, "ZeRO-1 --dp 8: the plan shrinks by 7/8 of m, v and master weights");
}

// ZeRO-2 (--zero 2): the gradient region is the fused path's two slots (8B: the LM head's 128256 x 4096 in slot 0,
// one layer's 218,112,000 in slot 1) and the rank's shard of ceil(P / D), x 4 bytes, in place of D x shard x 4;
// --zero 2 on one GPU is refused; the automatic stage (0) is 1 where that plan fits, else 2.
static void test_zero2_shards() {
    const size_t P = 8030261248ull, VC = 128256ull * 4096, layer = 218112000;
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    o.fused_optimizer = 0;
    o.dp = 8;
    o.zero = 2;
    MemoryPlan plan = plan_memory(c, o);
    check(plan.options.zero == 2 && plan.bytes[REGION_GRADIENTS] == (VC + layer + P / 8) * 4,
          "ZeRO-2 --dp 8: gradients = (LM head slot + layer slot + P / 8 shard) x 4");
    o.zero = 1;
    check(plan_memory(c, o).bytes[REGION_GRADIENTS] - plan.bytes[REGION_GRADIENTS] == (P - VC - layer - P / 8) * 4,
          "ZeRO-2 --dp 8: saves the whole gradient less the slots and the shard");
    test_regions_are_laid_out(plan, "ZeRO-2: regions laid out in order, within the arena");
    TrainingOptions single;
    single.zero = 2;
    check(training_options_problem(c, single).find("--zero 2: needs several ranks") == 0, "--zero 2 on one GPU: refused");
    single.zero = 3;
    check(!training_options_problem(c, single).empty(), "--zero 3: refused");
    // automatic: --sp 8 at T = 500,000 fits 80 GiB with ZeRO-1; at 2,000,000 only with ZeRO-2
    MemoryBudget budget = {80.0, 120.0};
    TrainingOptions automatic;
    automatic.sp = 8;
    automatic.fused_optimizer = 0;
    automatic.offload = -1;  // automatic, as train_llama's default
    automatic.T = 500000;
    TrainingOptions small = resolve_automatic(c, automatic, budget);
    automatic.T = 2000000;
    TrainingOptions large = resolve_automatic(c, automatic, budget);
    check(small.zero == 1 && large.zero == 2 && plan_fits(plan_memory(c, large), budget),
          "--zero automatic: 1 where it fits (T = 500,000 on 8 GPUs), 2 where only that fits (T = 2,000,000)");
}

// --sp S (Ulysses): one GPU's plan holds its N = B ceil(T / S) tokens everywhere but attention, which holds the
// whole Np = B S ceil(T / S) tokens for its Hl = H / S query heads and KVl = max(1, KV / S) KV heads: q, k, v and
// their gradients, the output and its gradient (bf16), lse and delta (fp32), and the all-to-all's send and
// receive buffers of Np x (Hl + 2 KVl) x hd. Hand formulas for the 8B (H 32, KV 8, hd 128) at T = 1,000,003 on 8
// GPUs (blocks of 125,001, the last padded) and at S = 16 (KV heads replicated: KVl = 1).
static void test_ulysses_plan() {
    ModelConfig c = config_named("llama3-8b");
    TrainingOptions o;
    o.fused_optimizer = 0;
    o.offload = OFFLOAD_ALL;
    o.T = 1000003;
    for (int S : {8, 16}) {
        o.sp = S;
        MemoryPlan plan = plan_memory(c, o);
        size_t Tl = (o.T + S - 1) / S, N = Tl, Np = S * Tl, C = 4096, Q = 4096, hd = 128, Hl = 32 / S, KVl = S <= 8 ? 8 / S : 1;
        char what[200];
        snprintf(what, sizeof what, "Ulysses --sp %d: per-token regions hold N = %zu tokens (layer inputs, norms, residual, "
                 "output and its gradient in token layout)", S, N);
        check(plan.bytes[REGION_ATTENTION_RESIDUAL] == N * C * 2 && plan.bytes[REGION_ATTENTION_OUT] == N * Q * 2 &&
              plan.bytes[REGION_QKV_GRADIENT] == N * Q * 2 && plan.bytes[REGION_LAYER_INPUTS] == 2 * N * C * 2 &&
              plan.bytes[REGION_QKV] == 0 && plan.bytes[REGION_LOSSES] == N * 4, what);
        size_t heads = Np * (2 * (Hl + 2 * KVl) * hd + 2 * Hl * hd) * 2 + Np * Hl * 4 + round_up_256(Np * Hl * 4);
        snprintf(what, sizeof what, "Ulysses --sp %d: attention heads Np = %zu x (Hl %zu, KVl %zu): %.2f GiB", S, Np, Hl, KVl, gib(heads));
        check(plan.bytes[REGION_ULYSSES_HEADS] == heads, what);
        snprintf(what, sizeof what, "Ulysses --sp %d: all-to-all send and receive 2 x Np x (Hl + 2 KVl) x hd x 2", S);
        check(plan.bytes[REGION_ALL_TO_ALL] == 2 * Np * (Hl + 2 * KVl) * hd * 2, what);
        snprintf(what, sizeof what, "Ulysses --sp %d: RoPE tables for Tp = %zu positions; all-to-all bytes 3 L Np (Hl + 2 KVl + Hl) hd x 2", S, Np);
        check(plan.bytes[REGION_ROPE_TABLES] == 2 * Np * 64 * 4 && plan.all_to_all_bytes == 3 * 32 * Np * (2 * Hl + 2 * KVl) * hd * 2, what);
        test_regions_are_laid_out(plan, "Ulysses: regions laid out in order, within the arena");
    }
    o.sp = 3;
    check(training_options_problem(c, o).find("--sp 3: query heads (32) are not a multiple of --sp") == 0, "Ulysses: --sp 3 refused for 32 heads");
    o.sp = 2;
    o.recompute = false;
    check(training_options_problem(c, o).find("--sp with -r 0") == 0, "Ulysses: --sp without recomputation refused");
    // the longest T on 8 GPUs of 80 GiB and 120 GiB of pinned host memory each (ZeRO-1, -f 0): beyond one GPU's
    TrainingOptions eight;
    eight.fused_optimizer = 0;
    eight.offload = -1;
    int one_gpu = max_T_that_fits(c, eight, CARD_80);
    eight.sp = 8;
    int eight_gpus = max_T_that_fits(c, eight, CARD_80);
    printf("llama3-8b --max-T, -f 0: %d on one GPU, %d with --sp 8 (80 GiB + 120 GiB host each)\n", one_gpu, eight_gpus);
    check(eight_gpus > 4 * one_gpu && eight_gpus > 1000000, "Ulysses: --sp 8's longest T above 1M tokens and 4 x one GPU's");
}

// --held-gradients (fused): each gradient group's host copy in bf16 (the default with -a bf16) or fp32 (the default
// with -a fp32). bf16 halves the pinned host region and the PCIe bytes (P x 2 out and back instead of P x 4) and
// adds a bf16 staging copy of the gradient region on the card (the rounding happens there, before the copy).
static void test_held_gradients() {
    ModelConfig c = config_named("llama3-8b");
    const size_t P = 8030261248ull;
    TrainingOptions o;
    o.fused_optimizer = 1;
    MemoryPlan bf16_state = plan_memory(c, o);  // -a bf16, --held-gradients as the state
    o.held_gradient_bytes = 4;
    MemoryPlan fp32_held = plan_memory(c, o);   // -a bf16 --held-gradients fp32
    o.held_gradient_bytes = 0;
    o.bf16_optimizer_state = false;
    MemoryPlan fp32_state = plan_memory(c, o);  // -a fp32
    o.held_gradient_bytes = 2;
    MemoryPlan bf16_held = plan_memory(c, o);   // -a fp32 --held-gradients bf16
    size_t G = bf16_state.bytes[REGION_GRADIENTS];
    check(bf16_state.options.held_gradient_bytes == 2 && fp32_state.options.held_gradient_bytes == 4 &&
          fp32_held.options.held_gradient_bytes == 4 && bf16_held.options.held_gradient_bytes == 2,
          "held gradients: as the AdamW state unless --held-gradients says");
    check(bf16_state.bytes[REGION_HOST_GRADIENTS] == P * 2 && fp32_held.bytes[REGION_HOST_GRADIENTS] == P * 4 &&
          bf16_held.bytes[REGION_HOST_GRADIENTS] == P * 2 && fp32_state.bytes[REGION_HOST_GRADIENTS] == P * 4,
          "held gradients: P x 2 pinned host bytes in bf16, P x 4 in fp32");
    check(bf16_state.pcie_to_host == P * 2 && bf16_state.pcie_to_device == P * 2 && fp32_held.pcie_to_host == P * 4 &&
          fp32_held.pcie_to_device == P * 4, "held gradients: PCIe per step P x 2 each way in bf16, P x 4 in fp32");
    check(bf16_state.bytes[REGION_GRADIENT_STAGING] == G / 2 && fp32_held.bytes[REGION_GRADIENT_STAGING] == 0 &&
          bf16_state.total - fp32_held.total == round_up_256(G / 2),
          "held gradients: bf16 adds a staging copy of the gradient region (elements x 2) on the card");
    o.fused_optimizer = 0;
    MemoryPlan unfused = plan_memory(c, o);
    check(unfused.bytes[REGION_GRADIENT_STAGING] == 0 && unfused.bytes[REGION_HOST_GRADIENTS] == 0 && unfused.pcie_to_host == 0,
          "held gradients: -f 0 holds none, stages none");
    test_regions_are_laid_out(bf16_state, "held gradients bf16: device and host regions aligned and disjoint");
    // automatic (0) with -a bf16: bf16 where its plan fits, fp32 where only that one does (on 80 GiB + 120 GiB the
    // card binds at the longest T, and bf16's staging copy costs card bytes); --max-T takes the longer of the two
    TrainingOptions a;
    a.fused_optimizer = 1;
    a.offload = -1;
    a.T = 60000;
    check(resolve_automatic(c, a, CARD_80).held_gradient_bytes == 2, "held gradients automatic: bf16 at T = 60000 on 80 GiB");
    int longest[3];
    for (int bytes : {0, 2, 4}) {
        a.held_gradient_bytes = bytes;
        longest[bytes / 2] = max_T_that_fits(c, a, CARD_80);
    }
    a.held_gradient_bytes = 0;
    a.T = longest[0];
    printf("llama3-8b on 80 GiB + 120 GiB: longest T %d held in bf16, %d in fp32, %d automatic\n", longest[1], longest[2], longest[0]);
    check(longest[2] > longest[1] && longest[0] == longest[2] && resolve_automatic(c, a, CARD_80).held_gradient_bytes == 4,
          "held gradients automatic: fp32 where only it fits, so --max-T is the longer of the two");
}

// --state-offload: AdamW m and v (2 x P x 2 in bf16, x 4 in fp32) leave the card for pinned host memory; the card keeps
// 2 slots of (m, v) for the largest group, the embedding's V x C = 128256 x 4096 = 525336576 elements; each update
// moves the state in and out once (PCIe 2 x P x state bytes each way, once per update however many micro-batches).
// Refused with --sp/--dp. Automatic: on only where the plan fits with it and not without, so --max-T is the
// longer of the two.
static void test_state_offload() {
    ModelConfig c = config_named("llama3-8b");
    const size_t P = 8030261248ull, VC = 128256ull * 4096;
    bool ok = true;
    for (bool bf16 : {true, false}) {
        TrainingOptions o;
        o.bf16_optimizer_state = bf16;
        size_t b = bf16 ? 2 : 4;
        MemoryPlan card = plan_memory(c, o);
        o.state_offload = 1;
        MemoryPlan host = plan_memory(c, o);
        ok &= card.bytes[REGION_ADAM_M] == P * b && host.bytes[REGION_ADAM_M] == 0 && host.bytes[REGION_ADAM_V] == 0 &&
              host.bytes[REGION_STATE_STAGING] == 4 * VC * b && card.bytes[REGION_STATE_STAGING] == 0 &&
              host.bytes[REGION_HOST_ADAM_STATE] == 2 * P * b && card.bytes[REGION_HOST_ADAM_STATE] == 0 &&
              card.total - host.total == 2 * round_up_256(P * b) - round_up_256(4 * VC * b) &&
              host.host_total - card.host_total == round_up_256(2 * P * b) &&
              host.pcie_to_host - card.pcie_to_host == 2 * P * b && host.pcie_to_device - card.pcie_to_device == 2 * P * b &&
              host.shape[REGION_STATE_STAGING] == "2 x 2 x 525336576 x " + std::to_string(b);
        test_regions_are_laid_out(host, bf16 ? "state offload, bf16: regions aligned and disjoint"
                                             : "state offload, fp32: regions aligned and disjoint");
        const CardRates& h200 = *card_rates_for("NVIDIA H200");
        double per_update = 2.0 * 2 * P * b;  // in and out
        ok &= fabs(predict_step(host, h200, 3).work[PHASE_HOST_COPIES] - predict_step(card, h200, 3).work[PHASE_HOST_COPIES] -
                   per_update) < 1.0;
    }
    check(ok, "state offload: m, v on the host (2 P x b), 2 x 2 x V C x b staging on the card, 2 P x b over PCIe each way per update");
    TrainingOptions bad;
    bad.state_offload = 1;
    bad.dp = 2;
    bad.fused_optimizer = 0;
    check(training_options_problem(c, bad).find("--state-offload 1 with --sp/--dp: not supported") == 0,
          "state offload: refused with --dp 2, naming the flag");

    TrainingOptions a, off, on;
    a.offload = a.keep_attention = a.fused_optimizer = -1;
    a.segment = 0;
    a.state_offload = -1;
    a.T = 60000;
    check(resolve_automatic(c, a, CARD_80).state_offload == 0, "state offload automatic: off at T = 60000 on 80 GiB (it fits without)");
    off = on = a;
    off.state_offload = 0;
    on.state_offload = 1;
    for (const MemoryBudget& budget : {CARD_80, MemoryBudget{139.0, 120.0}}) {
        int longest = max_T_that_fits(c, a, budget), without = max_T_that_fits(c, off, budget), with = max_T_that_fits(c, on, budget);
        TrainingOptions at = a;
        at.T = longest;
        TrainingOptions chosen = resolve_automatic(c, at, budget);
        off.T = longest;
        printf("llama3-8b on %.0f GiB + %.0f GiB host: longest T %d with the state on the card, %d on the host, %d automatic\n",
               budget.gpu_gib, budget.host_gib, without, with, longest);
        check(longest == std::max(without, with) && longest > without && chosen.state_offload == 1 &&
              !plan_fits(plan_memory(c, resolve_automatic(c, off, budget)), budget),
              "state offload automatic: on at --max-T only where the state on the card does not fit; the longer T of the two");
    }
    MemoryBudget tiny = {20.0, 120.0};  // nothing fits: the state stays on the card (host bytes no better)
    check(resolve_automatic(c, a, tiny).state_offload == 0, "state offload automatic: off where neither plan fits");
}

int main() {
    test_llama3_8b_at_60000();
    test_options();
    test_fixed_size_mini_sequences();
    test_max_T();
    test_offload();
    test_held_gradients();
    test_max_T_both_budgets();
    test_checkpoint_schedule();
    test_keep_attention();
    test_segments();
    test_attention_blocks();
    test_problems();
    test_automatic_optimizer_path();
    test_step_model();
    test_zero1_shards();
    test_zero2_shards();
    test_ulysses_plan();
    test_state_offload();
    return test_summary();
}
