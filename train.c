// train.c: ./train CONFIG [key=value ...]: runs one training stage (see train/trainer.h).
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "trainer/trainer.h"

int main(int argc, char **argv) {
    openmp_prefer_passive(argv);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr,
                "usage: ./train CONFIG [key=value ...]\n"
                "  CONFIG      a file of `key = value` lines (see configs/); key=value arguments override it\n"
                "  keys:       ./train --keys lists every key with its default\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--keys")) {
        for (int i = 0; i < n_train_keys; i++)
            printf("%-20s %-24s %s\n", train_keys[i].key, train_keys[i].def[0] ? train_keys[i].def : "\"\"", train_keys[i].help);
        return 0;
    }
    TrainConfig cfg;
    train_config_load(&cfg, argv[1], argc - 2, argv + 2);
    return trainer_run(&cfg);
}
