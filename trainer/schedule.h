// schedule.h: the learning-rate schedule, exactly transformers' cosine schedule with linear
// warmup (get_cosine_schedule_with_warmup, and its min-lr variant when min_lr_rate > 0).
#pragma once

// warmup steps as TrainingArguments computes them from a ratio: ceil(total * ratio)
int schedule_warmup_steps(int total, double ratio);
// multiplier of the peak learning rate for optimizer step `step` (0-based: the first update
// uses step 0, as the HF Trainer steps its scheduler after each optimizer step)
double schedule_factor(int step, int total, int warmup, double min_lr_rate);
