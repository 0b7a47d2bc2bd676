// cli.h: command-line values of the programs (./generate, ./evaluate, ./prepare, ./synth):
// an option's value, integers and numbers range-checked, each error one line naming the option.
#pragma once

// argv[*i + 1], advancing *i; fatal (naming the option and `prog`'s --help) when there is none
const char *cli_value(int argc, char **argv, int *i, const char *prog);
// s as a whole integer in [lo, hi], else fatal naming opt
long long cli_int(const char *opt, const char *s, long long lo, long long hi);
// s as a whole number in [lo, hi] (NaN refused), else fatal naming opt
double cli_num(const char *opt, const char *s, double lo, double hi);
