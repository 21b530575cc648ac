// profiler.h: where a training step's time goes, phase by phase (phases.h: the step model's phases), for
// `--profile 1`, and NVTX ranges of the same names for Nsight Systems (always).
//
// Every launch helper in mst_kernels.cuh, and the trainer before its host copies and its waits on the copy
// stream, marks its phase on the stream it uses (profile_phase). On the compute stream a mark that changes the
// phase ends one NVTX range and starts the next, and with --profile records a CUDA event: the time from one
// event to the next is the earlier phase's, as the device ran it. So the compute stream's "host copies" is
// what the step spends copying there (the held gradients) or waiting for the copy stream (checkpoints not
// hidden); the copy stream's own busy time is timed apart, around each of its copies.
// Events are created as the first profiled step needs them and reused after (no device memory).
#pragma once
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <vector>

#include "mst/phases.h"
#include "mst/step_model.h"

struct PhaseProfiler {
    bool attached = false;          // the trainer's (profile_attach); test and dev programs mark nothing
    cudaStream_t stream = nullptr;  // the compute stream; marks on other streams are ignored
    bool timing = false;            // --profile: record events
    int current = -1;               // the phase running on the stream since the last mark
    nvtxRangeId_t range = 0;
    std::vector<cudaEvent_t> marks;  // this step's marks, and the phase each begins
    std::vector<int> mark_phase;
    size_t used = 0;
    std::vector<cudaEvent_t> copy_marks;  // the copy stream's: begin, end of each copy
    size_t copies_used = 0;
    cudaEvent_t step_end = nullptr;
    double last_ms[NUM_PHASES] = {}, last_copy_stream_ms = 0;  // the last step
    double total_ms[NUM_PHASES] = {}, total_copy_stream_ms = 0;  // the steps after the first (warm-up)
    int steps = 0;
};
static PhaseProfiler profiler;  // one trainer, one compute stream per process

static inline cudaEvent_t profiler_event(std::vector<cudaEvent_t>* pool, size_t* used) {
    if (*used == pool->size()) {
        cudaEvent_t e;
        CUDA_CHECK(cudaEventCreate(&e));
        pool->push_back(e);
    }
    return (*pool)[(*used)++];
}

// the work on `stream` from here on is `phase`'s
static inline void profile_phase(int phase, cudaStream_t stream) {
    PhaseProfiler& p = profiler;
    if (!p.attached || stream != p.stream || phase == p.current) return;
    if (p.current >= 0) nvtxRangeEnd(p.range);
    p.range = nvtxRangeStartA(PHASE_NAMES[phase]);
    p.current = phase;
    if (!p.timing) return;
    CUDA_CHECK(cudaEventRecord(profiler_event(&p.marks, &p.used), stream));
    p.mark_phase.resize(p.used);
    p.mark_phase[p.used - 1] = phase;
}

// the trainer's compute stream; timing: --profile 1
static inline void profile_attach(cudaStream_t stream, bool timing) {
    profiler.attached = true;
    profiler.stream = stream;
    profiler.timing = timing;
}

// before and after each copy on the copy stream (pairs: begin, end)
static inline void profile_copy_mark(cudaStream_t copy_stream) {
    if (profiler.timing) CUDA_CHECK(cudaEventRecord(profiler_event(&profiler.copy_marks, &profiler.copies_used), copy_stream));
}

// a training step begins: what was marked since the last one (validation, samples) is not counted
static inline void profile_step_begin() {
    PhaseProfiler& p = profiler;
    if (p.current >= 0) nvtxRangeEnd(p.range);
    p.current = -1;
    p.used = 0;
    p.copies_used = 0;
}

// a training step's work is all on the streams: wait for it, then add each mark's time to its phase
static inline void profile_step_end() {
    PhaseProfiler& p = profiler;
    if (!p.attached) return;
    if (p.current >= 0) nvtxRangeEnd(p.range);
    p.current = -1;
    if (!p.timing) return;
    if (!p.step_end) CUDA_CHECK(cudaEventCreate(&p.step_end));
    CUDA_CHECK(cudaEventRecord(p.step_end, p.stream));
    CUDA_CHECK(cudaDeviceSynchronize());  // the copy stream's events too
    for (int phase = 0; phase < NUM_PHASES; phase++) p.last_ms[phase] = 0;
    p.last_copy_stream_ms = 0;
    for (size_t i = 0; i < p.used; i++) {
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, p.marks[i], i + 1 < p.used ? p.marks[i + 1] : p.step_end));
        p.last_ms[p.mark_phase[i]] += ms;
    }
    for (size_t i = 0; i + 1 < p.copies_used; i += 2) {
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, p.copy_marks[i], p.copy_marks[i + 1]));
        p.last_copy_stream_ms += ms;
    }
    if (p.steps++ > 0) {
        for (int phase = 0; phase < NUM_PHASES; phase++) p.total_ms[phase] += p.last_ms[phase];
        p.total_copy_stream_ms += p.last_copy_stream_ms;
    }
}

// The end-of-run table: each phase's milliseconds per step (the mean of the steps after the first, or the
// first alone), its share, its rate from the step model's work (FLOP/s for matmuls and attention, bytes/s for
// the others) and the model's prediction for this card (card: null when unknown, as on the CPU device).
static inline void print_profile(const MemoryPlan& plan, const CardRates* card, int micro_batches) {
    const PhaseProfiler& p = profiler;
    if (!p.timing || p.steps == 0) return;
    int counted = p.steps > 1 ? p.steps - 1 : 1;
    const double* ms = p.steps > 1 ? p.total_ms : p.last_ms;
    double copy_stream_ms = (p.steps > 1 ? p.total_copy_stream_ms : p.last_copy_stream_ms) / counted;
    static const CardRates no_card = {"", 1, 1, 1};  // the work does not depend on the card
    StepPrediction work = predict_step(plan, no_card, micro_batches);
    StepPrediction predicted = card ? predict_step(plan, *card, micro_batches) : StepPrediction{};
    double step_ms = 0;
    for (int phase = 0; phase < NUM_PHASES; phase++) step_ms += ms[phase] / counted;
    printf("profile (--profile 1): %s, compute stream; rates from the step model's work; predicted for %s\n",
           p.steps > 1 ? ("mean of steps 2-" + std::to_string(p.steps)).c_str() : "step 1 (with its warm-up)",
           card ? card->name : "no known card");
    printf("| %-20s | %10s | %6s | %16s | %12s |\n", "phase", "ms/step", "share", "rate", "predicted ms");
    printf("|----------------------|------------|--------|------------------|--------------|\n");
    for (int phase = 0; phase < NUM_PHASES; phase++) {
        double phase_ms = ms[phase] / counted;
        bool flops = phase == PHASE_MATMULS || phase == PHASE_ATTENTION_FORWARD || phase == PHASE_ATTENTION_BACKWARD;
        char rate[32] = "-", expected[32] = "-";
        if (phase_ms > 0)
            snprintf(rate, sizeof rate, flops ? "%.3g TFLOP/s" : "%.3g GB/s", work.work[phase] / (phase_ms * 1e-3) / (flops ? 1e12 : 1e9));
        if (card) snprintf(expected, sizeof expected, "%.2f", 1e3 * predicted.seconds[phase]);
        printf("| %-20s | %10.2f | %5.1f%% | %16s | %12s |\n", PHASE_NAMES[phase], phase_ms,
               step_ms > 0 ? 100.0 * phase_ms / step_ms : 0.0, rate, expected);
    }
    char expected[32] = "-";
    if (card) snprintf(expected, sizeof expected, "%.2f", 1e3 * predicted.total_s);
    printf("| %-20s | %10.2f | %5.1f%% | %16s | %12s |\n", "step", step_ms, 100.0, "", expected);
    printf("copy stream: %.2f ms per step copying checkpoints (what the compute stream waited for is in host copies)\n",
           copy_stream_ms);
}
