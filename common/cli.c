// cli.c: command-line values (see cli.h).
#include "common/cli.h"

#include <errno.h>
#include <stdlib.h>

#include "common/util.h"

const char *cli_value(int argc, char **argv, int *i, const char *prog) {
    if (*i + 1 >= argc) fatal("%s needs a value (see %s --help)", argv[*i], prog);
    return argv[++*i];
}

long long cli_int(const char *opt, const char *s, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        fatal("%s %s: want an integer in [%lld, %lld]", opt, s, lo, hi);
    return v;
}

double cli_num(const char *opt, const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) fatal("%s %s: want a number in [%g, %g]", opt, s, lo, hi);
    return v;
}
