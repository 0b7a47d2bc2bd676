// trainer.h: one training run from a resolved configuration: data preparation (once), the
// model, the optimizer loop with gradient accumulation, clipping and the cosine schedule,
// validation, checkpoints, resume and preemption (SIGTERM / SIGINT save and exit 0), on one
// process or on the ranks a launcher started (data parallel, trainer/dist.h; parts in run.h).
#pragma once
#include "trainer/train_config.h"

// returns the process exit status
int trainer_run(const TrainConfig *cfg);
