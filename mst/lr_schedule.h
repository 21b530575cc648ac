// lr_schedule.h: the learning rate at each step, shared by train_llama and the tests.
#pragma once
#include <cmath>

// Linear warmup over warmup_steps (step 0 gets lr / warmup_steps), then a cosine from lr down to
// lr * final_fraction at the last step: lr_s = lr_min + (lr - lr_min) (1 + cos(pi p)) / 2, p in [0, 1].
// warmup_steps = 0 and final_fraction = 1 give a constant lr.
static inline float learning_rate_at(int step, int total_steps, float lr, int warmup_steps, float final_fraction) {
    if (step < warmup_steps) return lr * (step + 1) / warmup_steps;
    int decay_steps = total_steps - warmup_steps - 1;
    if (decay_steps <= 0) return lr;
    double progress = (double)(step - warmup_steps) / decay_steps;
    if (progress > 1.0) progress = 1.0;
    double lr_min = lr * final_fraction;
    return (float)(lr_min + (lr - lr_min) * 0.5 * (1.0 + cos(M_PI * progress)));
}
