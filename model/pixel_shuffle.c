// pixel_shuffle.c: the pixel-shuffle row index of InternVL v2 / Idefics3 (see pixel_shuffle.h).
#include "model/pixel_shuffle.h"

#include "common/util.h"

void pixel_shuffle_check(int grid, int s) {
    if (s < 1 || grid % s)
        fatal("pixel shuffle by %d needs a patch grid divisible by %d; the vision encoder gives %dx%d", s, s, grid, grid);
}

int pixel_shuffle_tokens(int grid, int s) {
    pixel_shuffle_check(grid, s);
    return (grid / s) * (grid / s);
}

void pixel_shuffle_rows(int *idx, int B, int grid, int s) {
    pixel_shuffle_check(grid, s);
    int g = grid / s, r = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < g; i++)
            for (int j = 0; j < g; j++)
                for (int dy = 0; dy < s; dy++)  // the piece order within a token: dy, dx
                    for (int dx = 0; dx < s; dx++) idx[r++] = (b * grid + s * i + dy) * grid + s * j + dx;
}
