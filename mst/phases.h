// phases.h: the phases a training step's time is split into, by the step model's prediction (step_model.h)
// and by --profile's measurement (profiler.h), under the same names (NVTX ranges carry them too).
#pragma once

enum Phase { PHASE_MATMULS, PHASE_ATTENTION_FORWARD, PHASE_ATTENTION_BACKWARD, PHASE_MEMORY_BOUND,
             PHASE_OPTIMIZER, PHASE_HOST_COPIES, NUM_PHASES };
static const char* const PHASE_NAMES[NUM_PHASES] = {"matmuls", "attention forward", "attention backward",
                                                    "memory-bound kernels", "optimizer", "host copies"};
