// pixel_shuffle.h: the pixel shuffle (space-to-depth) of InternVL (ps_version "v2",
// downsample_ratio 0.5 is s = 2) and of Idefics3 / SmolVLM (scale_factor s): a grid x grid map
// of C-wide patch features becomes a (grid/s) x (grid/s) map of s*s*C-wide tokens, token (i, j)
// holding patches (s*i + dy, s*j + dx) in the order dy, dx, channel. Both projects write it as
// view / permute / reshape; it is a row permutation: seen as rows of C, output row r is input
// row idx[r], so the forward is one gather_rows (and a backward, if ever needed, scatter_rows).
// The connectors that use it (InternVL's mlp1, Idefics3's modality_projection) are not wired in
// yet: this is the math and its index.
#pragma once

// fatal() in one line when s does not divide the patch grid (or s < 1)
void pixel_shuffle_check(int grid, int s);
// tokens per image after the shuffle: (grid / s)^2
int pixel_shuffle_tokens(int grid, int s);
// idx (B * grid * grid): the input row (of B * grid^2 rows of C) that output row r takes, the
// output being B images x (grid/s)^2 tokens x s^2 pieces of C
void pixel_shuffle_rows(int *idx, int B, int grid, int s);
