// loader.h: training batches from prepared shards: seeded shuffling per epoch, a disjoint slice
// per rank, padding to the longest sample (or packing several samples per row, attention kept
// inside each), the image slot expanded to the model's length, images decoded and preprocessed
// by a pool of threads ahead of the step, and an exact position to save and restore.
#pragma once
#include <stdint.h>

#include "data/image_prep.h"
#include "data/image_slot.h"

typedef struct {
    const char *shard_dir;  // written by ./prepare (data/prepare.h)
    int batch_size;         // samples per micro-batch (rows when not packing)
    int max_seq_len;        // tokens per row after expanding the image slot
    int image_tokens;       // feature rows per tile (the connector's output tokens)
    const ImageSlot *slot;  // the image slot's format (data/image_slot.h; its tokens = image_tokens);
                            // NULL: llava, image_tokens rows per tile
    ImagePrep prep;         // the vision tower's preprocessing (image_prep_load; pad_to_square:
                            // LLaVA's image_aspect_ratio = pad; max_tiles: tiling, data/tiling.h);
                            // tiles are (3, prep.size, prep.size)
    int max_tiles;          // tiles per micro-batch at most (the model's VlmSpec.max_images); 0:
                            // batch_size x what a sample can hold (loader_max_tiles)
    uint64_t seed;          // shuffling: the permutation of epoch e depends on (seed, e) only
    int rank, world;        // this process's slice of the order (below)
    // How the ranks share an epoch's order:
    //   step_block > 0 (training): each optimizer step takes the next step_block x world samples
    //     of the order and rank r the r-th run of step_block of them, so what one step trains on
    //     does not depend on the number of ranks; an epoch's last samples that fill no whole step
    //     are left out of it
    //   split_all (file-order sets: validation): rank r takes the r-th of world contiguous,
    //     nearly equal parts, so every sample is seen once whatever the number of ranks
    //   neither: rank r takes samples r, r + world, r + 2 world ... (the remainder left out)
    int step_block, split_all;
    int packing;            // 1: fill rows up to max_seq_len with several samples
    int threads;            // image decoding threads (>= 1)
    int prefetch;           // micro-batches prepared ahead (>= 1)
    int shuffle;            // 0 for validation sets: file order
    int pixels_bf16;        // 1: the image threads also round each image to bf16 (LoaderBatch.pixels_bf16)
                            // for a backend with bf16 activations, off the training thread
    // Host memory for what a backend uploads straight from the batch (the pixels it reads: bf16
    // when pixels_bf16, else fp32; the segments): Kernels.host_alloc / host_free / host_ready,
    // pinned on CUDA, so the copies read it in place, asynchronously. The image thread that
    // refills a slot calls host_ready on its arrays first: a batch is never overwritten while the
    // device may still be copying it. NULL: malloc, and no wait.
    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *p);
    void (*host_ready)(const void *p);
} LoaderSpec;

// One micro-batch, in the layout model/vlm.h's VlmBatch takes. Arrays stay valid until the
// next loader_next (or loader_seek / loader_close) call. Padding: id 0, target -1, positions
// continuing those of the row's last sample, seg -1. B is 0 (and T 0) in the rare micro-batch
// whose every sample was dropped: a step with nothing to learn, kept so that ranks stay in step.
typedef struct {
    int B, T;
    int *ids;      // (B, T)
    int *targets;  // (B, T): the next token where it carries loss, else -1
    int *pos;      // (B, T) position ids (restart at 0 for each packed sample)
    int *seg;      // (B, T) sample index within the row; NULL unless packing
    int n_img;                    // tiles (every image's, row-major, its thumbnail last; samples in order)
    float *pixels;                // (n_img, 3, S, S)
    uint16_t *pixels_bf16;        // the same rounded to bf16 (nearest even) when spec.pixels_bf16, else NULL
    int *img_row, *img_start;     // (n_img) each tile's row and first feature position
    int n_samples;                // samples in this micro-batch
    int n_labelled;               // positions with targets >= 0
    int n_skipped;                // samples dropped while building it (bad image: counted, warned)
    int n_planned;                // n_samples + n_skipped
    const int64_t *planned;       // (n_planned) their indices in the dataset, in order
} LoaderBatch;

// where the next micro-batch starts: saved in checkpoints, restored by loader_seek
typedef struct {
    int64_t epoch;
    int64_t index;  // position in this rank's slice of the epoch's order
} LoaderPos;

typedef struct Loader Loader;

// The tiles a micro-batch can hold at most: per row, every tile takes image_tokens positions of
// max_seq_len (one more for the text each packed one-tile sample has), and without packing a row
// is one sample of at most images_per_sample images of image_tiles_max(prep) tiles each.
int loader_max_tiles(int batch_size, int max_seq_len, int image_tokens, int packing, int images_per_sample,
                     const ImagePrep *prep);

Loader *loader_open(const LoaderSpec *spec);  // fatal() naming the shard dir when unusable
void loader_close(Loader *l);
int64_t loader_samples(const Loader *l);           // samples in the whole dataset
int64_t loader_samples_per_rank(const Loader *l);  // samples of one epoch this rank sees
// Fills *b with the next micro-batch; at the end of an epoch it moves on to the next one.
// Returns the epoch the batch belongs to.
int64_t loader_next(Loader *l, LoaderBatch *b);
LoaderPos loader_tell(const Loader *l);  // the position of the batch loader_next returns next
void loader_seek(Loader *l, LoaderPos pos);
