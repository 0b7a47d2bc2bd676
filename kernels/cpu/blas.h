// blas.h: OpenBLAS's cblas.h, and nothing else that calls itself cblas.h.
// Debian's netlib reference BLAS (libblas-dev) installs a cblas.h too, and when both are present
// the one found first depends on the alternatives system and on -I order. Ours is linked with
// -lopenblas, so its header must be OpenBLAS's: it declares OpenBLAS's own calls (thread count,
// the kernel it picked) that netlib's lacks, and a mismatched pair would build a program whose
// declarations are not those of the library it runs. install_deps.sh puts OpenBLAS's include
// directory first (pkg-config openblas); this guard makes any other arrangement a clear error.
#pragma once

#include <cblas.h>

#ifndef OPENBLAS_VERSION
#error "cblas.h found first is not OpenBLAS's (netlib's reference BLAS?): run `make deps`, or put OpenBLAS's include directory first in CFLAGS"
#endif
