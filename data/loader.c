// loader.c: training batches from prepared shards (see loader.h).
//
// What each micro-batch holds is decided in loader_next (on the caller's thread) from the
// position alone: the epoch's permutation (seed, epoch), this rank's slice, batch_size samples.
// The samples' work (read + decompress + checksum, image decode + the tower's preprocessing) goes to a
// pool of `threads` workers up to `prefetch` micro-batches ahead; the worker that finishes the
// last sample of a micro-batch lays it out (padding or packing). The layout depends only on the
// samples and on which of them failed, never on timing, so batches are bit-identical for any
// thread count. loader_seek drains the pool and discards everything prefetched.
// Workers never call fatal() on bad data: a record that fails its checks or an image that does
// not decode is warned about once and counted (n_skipped); preprocessing's memory is bounded for
// any aspect ratio the decoder accepts (data/resize.c), so no image can exhaust it.
#include "data/loader.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/rng.h"
#include "common/util.h"
#include "data/image_prep.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/tiling.h"

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_HELD };

typedef struct {
    int64_t sample;  // index in the dataset
    int ok;
    int len;         // positions, the image slots expanded
    int *ids;        // max_seq_len entries (slot storage): the expanded sample
    uint8_t *mask;   // 1: the position carries loss
    int n_tiles;     // every image's tiles, in order
    int *tile_start; // (n_tiles) the first feature position of each
    float *pix;      // (n_tiles, 3, S, S), malloc'd by the worker, freed by assemble
    uint16_t *pix16; // the same in bf16 (spec.pixels_bf16)
} SampleOut;

typedef struct {
    int state;
    int64_t seq, epoch;
    LoaderPos end;  // where the batch after this one starts
    int n, pending;
    SampleOut *smp;
    float *pix;  // max_tiles tiles of 3*S*S
    uint16_t *pix16;  // the same in bf16 (spec.pixels_bf16), else NULL
    int *ids, *targets, *pos, *seg, *img_row, *img_start;
    int *scratch;  // 4 x batch_size ints for assemble
    int64_t *planned;  // batch_size dataset indices
    LoaderBatch b;
} Slot;

typedef struct {
    Slot *slot;
    int k;
} Task;

struct Loader {
    LoaderSpec spec;
    Shards *sh;
    int64_t N, per_rank;
    int64_t first;  // split_all: this rank's first sample
    uint32_t *perm;
    int64_t perm_epoch;
    LoaderPos plan, tell;
    int nslots;
    Slot *slots;
    int64_t plan_seq, next_seq;
    int held;
    pthread_t *thr;
    int nthr;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    Task *q;
    int qcap, qhead, qcount;
    int busy, stop;
    uint8_t *warned;  // one bit per sample: already warned about
    size_t img_floats;
    int max_tiles;  // per micro-batch
    ImageSlot own_slot;  // spec.slot when the caller gave none (llava)
    const ImageSlot *slot;
};

static void warn_once(Loader *l, int64_t sample, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void warn_once(Loader *l, int64_t sample, const char *fmt, ...) {
    pthread_mutex_lock(&l->mu);
    int first = !(l->warned[sample >> 3] & (1u << (sample & 7)));
    l->warned[sample >> 3] |= (uint8_t)(1u << (sample & 7));
    pthread_mutex_unlock(&l->mu);
    if (!first) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    warn("%s", msg);
}

// ---------------------------------------------------------------- per-sample work (workers)

static void sample_release(SampleOut *o) {
    free(o->pix);
    free(o->pix16);
    free(o->tile_start);
    o->pix = NULL, o->pix16 = NULL, o->tile_start = NULL;
    o->n_tiles = 0;
}

static void do_sample(Loader *l, Slot *s, int k, ShardReadBuf *rb) {
    SampleOut *o = &s->smp[k];
    const LoaderSpec *sp = &l->spec;
    o->ok = 0;
    sample_release(o);
    ShardRecord rec;
    char err[512];
    if (shards_read(l->sh, o->sample, rb, &rec, err, sizeof err) != 0) {
        warn_once(l, o->sample, "%s: %s; sample skipped", shards_dir(l->sh), err);
        return;
    }
    // the expanded sample: text up to each image's position, then its slot (data/image_slot.h)
    int n_tiles = 0, len = rec.n_tokens;
    for (int i = 0; i < rec.n_images; i++) {
        const ShardImage *im = &rec.images[i];
        ImageGrid g = {im->rows, im->cols, im->thumb};
        const int max_side = l->slot->fmt == IMAGE_FORMAT_IDEFICS3 ? l->slot->max_side : 1 << 20;
        if (image_grid_tiles(g) > image_tiles_max(&sp->prep) || (image_grid_tiles(g) > 1 && (g.rows > max_side || g.cols > max_side))) {
            warn_once(l, o->sample, "%s: sample %" PRId64 ": image %d has a grid of %dx%d tiles, more than max_tiles allows; "
                      "sample skipped (re-run ./prepare with this max_tiles)", shards_dir(l->sh), o->sample, i, g.rows, g.cols);
            return;
        }
        n_tiles += image_grid_tiles(g);
        len += image_slot_len(l->slot, g);
    }
    if (len > sp->max_seq_len || (uint32_t)(len - rec.n_tokens) != shards_entry(l->sh, o->sample)->n_slot) {
        warn_once(l, o->sample, "%s: sample %" PRId64 ": its image slots take %d positions (%d in all), the index says %u; "
                  "sample skipped (prepared for another image format? re-run ./prepare)", shards_dir(l->sh), o->sample,
                  len - rec.n_tokens, len, shards_entry(l->sh, o->sample)->n_slot);
        return;
    }
    o->tile_start = xmalloc((size_t)(n_tiles ? n_tiles : 1) * sizeof(int));
    o->n_tiles = n_tiles;
    int pos[SHARDS_MAX_IMAGES];
    ImageGrid grids[SHARDS_MAX_IMAGES];
    for (int i = 0; i < rec.n_images; i++) {
        pos[i] = rec.images[i].pos;
        grids[i] = (ImageGrid){rec.images[i].rows, rec.images[i].cols, rec.images[i].thumb};
    }
    _Static_assert(sizeof(int32_t) == sizeof(int), "record ids are read as int");
    o->len = image_slots_insert(l->slot, (const int *)rec.ids, rec.mask, rec.n_tokens, pos, grids, rec.n_images, o->ids,
                                o->mask, o->tile_start);
    if (n_tiles) {
        o->pix = xmalloc((size_t)n_tiles * l->img_floats * sizeof(float));
        if (sp->pixels_bf16) o->pix16 = xmalloc((size_t)n_tiles * l->img_floats * sizeof(uint16_t));
    }
    int tile = 0;
    for (int i = 0; i < rec.n_images; i++) {
        const ShardImage *im = &rec.images[i];
        ImageGrid g = {im->rows, im->cols, im->thumb};
        Image img;
        char ierr[256];
        if (image_prep_decode(&sp->prep, im->bytes, im->len, &img, ierr, sizeof ierr) != 0) {
            warn_once(l, o->sample, "%s/shard-%05u.zst: sample %" PRId64 " (id \"%.*s\", image %.*s): %s; sample skipped",
                      shards_dir(l->sh), shards_entry(l->sh, o->sample)->shard, o->sample, (int)rec.id_len, rec.id,
                      (int)im->name_len, im->name, ierr);
            sample_release(o);
            return;
        }
        ImageGrid want = image_grid(&sp->prep, img.w, img.h);
        if (want.rows != g.rows || want.cols != g.cols || want.thumb != g.thumb) {
            warn_once(l, o->sample, "%s: sample %" PRId64 " (image %.*s, %dx%d): prepared as %dx%d tiles, this run's tiling "
                      "gives %dx%d; sample skipped (re-run ./prepare)", shards_dir(l->sh), o->sample, (int)im->name_len,
                      im->name, img.w, img.h, g.rows, g.cols, want.rows, want.cols);
            image_free(&img);
            sample_release(o);
            return;
        }
        float *px = o->pix + (size_t)tile * l->img_floats;
        image_preprocess_tiles(&img, &sp->prep, g, px);
        image_free(&img);
        size_t nf = (size_t)image_grid_tiles(g) * l->img_floats;
        if (o->pix16)  // here, on an image thread, rather than on the training thread while the GPU waits
            for (size_t j = 0; j < nf; j++) o->pix16[(size_t)tile * l->img_floats + j] = f32_to_bf16(px[j]);
        tile += image_grid_tiles(g);
    }
    o->ok = 1;
}

// lays the finished samples of a slot out into its batch
static void assemble(Loader *l, Slot *s) {
    const LoaderSpec *sp = &l->spec;
    int *len = s->scratch, *row_of = len + sp->batch_size, *off_of = row_of + sp->batch_size;
    int *last_off = off_of + sp->batch_size;  // per row: offset of its last sample
    int B = 0, T = 0, cur = 0, kept = 0;
    for (int k = 0; k < s->n; k++) {
        SampleOut *o = &s->smp[k];
        if (!o->ok) continue;
        kept++;
        len[k] = o->len;
        if (!sp->packing || B == 0 || cur + len[k] > sp->max_seq_len) {  // next-fit, in permutation order
            B++;
            cur = 0;
        }
        row_of[k] = B - 1;
        off_of[k] = cur;
        last_off[B - 1] = cur;
        cur += len[k];
        if (cur > T) T = cur;
    }
    if (sp->host_ready) {  // the device may still be copying this slot's previous batch
        sp->host_ready(sp->pixels_bf16 ? (const void *)s->pix16 : (const void *)s->pix);
        sp->host_ready(s->seg);
    }
    LoaderBatch *b = &s->b;
    memset(b, 0, sizeof *b);
    b->B = B;
    b->T = T;
    b->ids = s->ids;
    b->targets = s->targets;
    b->pos = s->pos;
    b->seg = sp->packing ? s->seg : NULL;
    b->pixels = s->pix;
    b->pixels_bf16 = s->pix16;
    b->img_row = s->img_row;
    b->img_start = s->img_start;
    b->n_samples = kept;
    b->n_skipped = s->n - kept;
    // padding: id 0, no target, segment -1, positions continuing those of the row's last sample
    for (int r = 0; r < B; r++)
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            s->ids[i] = 0;
            s->targets[i] = -1;
            s->seg[i] = -1;
            s->pos[i] = t - last_off[r];
        }
    int nimg = 0, labelled = 0, seg_in_row = 0, last_row = -1;
    for (int k = 0; k < s->n; k++) {
        SampleOut *o = &s->smp[k];
        if (!o->ok) continue;
        int r = row_of[k], off = off_of[k], L = len[k];
        seg_in_row = r == last_row ? seg_in_row + 1 : 0;
        last_row = r;
        size_t base = (size_t)r * T + off;
        int *ids = s->ids + base, *tg = s->targets + base, *ps = s->pos + base, *sg = s->seg + base;
        // the expanded sample (slots hold their marker and image token ids, no loss);
        // targets[t] = ids[t + 1] when token t + 1 carries loss, inside the sample only
        for (int t = 0; t < L; t++) {
            int id = o->ids[t], m = o->mask[t];
            ids[t] = id;
            ps[t] = t;
            sg[t] = seg_in_row;
            if (t > 0 && m) {
                tg[t - 1] = id;
                labelled++;
            }
        }
        // the plan holds these many tiles (loader_max_tiles): a CHECK, not a data error
        CHECK(nimg + o->n_tiles <= l->max_tiles, "loader: %d tiles in a micro-batch planned for %d", nimg + o->n_tiles, l->max_tiles);
        if (o->n_tiles) {
            size_t nf = (size_t)o->n_tiles * l->img_floats;
            memcpy(s->pix + (size_t)nimg * l->img_floats, o->pix, nf * sizeof(float));
            if (s->pix16) memcpy(s->pix16 + (size_t)nimg * l->img_floats, o->pix16, nf * sizeof(uint16_t));
        }
        for (int j = 0; j < o->n_tiles; j++) {
            s->img_row[nimg] = r;
            s->img_start[nimg] = off + o->tile_start[j];
            nimg++;
        }
        sample_release(o);
    }
    b->n_img = nimg;
    b->n_labelled = labelled;
}

static void *worker(void *arg) {
    Loader *l = arg;
    ShardReadBuf rb = {0};
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->qcount == 0) pthread_cond_wait(&l->cv_work, &l->mu);
        if (l->stop) break;
        Task t = l->q[l->qhead];
        l->qhead = (l->qhead + 1) % l->qcap;
        l->qcount--;
        l->busy++;
        pthread_mutex_unlock(&l->mu);
        do_sample(l, t.slot, t.k, &rb);
        pthread_mutex_lock(&l->mu);
        if (--t.slot->pending == 0) {
            pthread_mutex_unlock(&l->mu);
            assemble(l, t.slot);
            pthread_mutex_lock(&l->mu);
            t.slot->state = SLOT_READY;
        }
        l->busy--;
        pthread_cond_broadcast(&l->cv_done);
    }
    pthread_mutex_unlock(&l->mu);
    shard_readbuf_free(&rb);
    return NULL;
}

// the caller's host memory (LoaderSpec.host_alloc), else malloc
static void *host_alloc(Loader *l, size_t bytes) {
    return l->spec.host_alloc ? l->spec.host_alloc(bytes) : xmalloc(bytes);
}
static void host_free(Loader *l, void *p) {
    if (l->spec.host_free) l->spec.host_free(p);
    else free(p);
}

// ---------------------------------------------------------------- planning (caller's thread)

static void ensure_perm(Loader *l, int64_t epoch) {
    if (!l->spec.shuffle || l->perm_epoch == epoch) return;
    for (int64_t i = 0; i < l->N; i++) l->perm[i] = (uint32_t)i;
    Rng r;
    rng_init(&r, l->spec.seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(epoch + 1)));
    for (int64_t i = l->N - 1; i > 0; i--) {
        uint32_t j = rng_below(&r, (uint32_t)(i + 1));
        uint32_t t = l->perm[i];
        l->perm[i] = l->perm[j];
        l->perm[j] = t;
    }
    l->perm_epoch = epoch;
}

static void plan_next(Loader *l) {
    const LoaderSpec *sp = &l->spec;
    LoaderPos p = l->plan;
    if (p.index >= l->per_rank) p.epoch++, p.index = 0;
    ensure_perm(l, p.epoch);
    Slot *s = &l->slots[l->plan_seq % l->nslots];
    CHECK(s->state == SLOT_FREE, "loader slot %lld still in use", (long long)(l->plan_seq % l->nslots));
    int64_t n = l->per_rank - p.index;
    if (n > sp->batch_size) n = sp->batch_size;
    for (int k = 0; k < n; k++) {
        int64_t i = p.index + k, j;  // i: position in this rank's slice; j: in the epoch's order
        if (sp->step_block > 0)
            j = i / sp->step_block * sp->step_block * sp->world + (int64_t)sp->rank * sp->step_block + i % sp->step_block;
        else if (sp->split_all)
            j = l->first + i;
        else
            j = (int64_t)sp->rank + (int64_t)sp->world * i;
        s->smp[k].sample = sp->shuffle ? (int64_t)l->perm[j] : j;
        s->smp[k].ok = 0;
        s->planned[k] = s->smp[k].sample;
    }
    s->n = (int)n;
    s->seq = l->plan_seq++;
    s->epoch = p.epoch;
    s->end = (LoaderPos){p.epoch, p.index + n};
    if (s->end.index >= l->per_rank) s->end = (LoaderPos){p.epoch + 1, 0};
    l->plan = s->end;
    pthread_mutex_lock(&l->mu);
    s->state = SLOT_FILLING;
    s->pending = (int)n;
    for (int k = 0; k < n; k++) {
        l->q[(l->qhead + l->qcount) % l->qcap] = (Task){s, k};
        l->qcount++;
    }
    pthread_cond_broadcast(&l->cv_work);
    pthread_mutex_unlock(&l->mu);
}

// waits until no worker holds a task, dropping the queued ones; every slot becomes free
static void drain(Loader *l) {
    pthread_mutex_lock(&l->mu);
    l->qcount = 0;
    while (l->busy > 0) pthread_cond_wait(&l->cv_done, &l->mu);
    for (int i = 0; i < l->nslots; i++) l->slots[i].state = SLOT_FREE;
    pthread_mutex_unlock(&l->mu);
    l->held = -1;
}

static void start_at(Loader *l, LoaderPos pos) {
    l->plan = pos;
    l->tell = pos;
    l->next_seq = l->plan_seq;
    for (int i = 0; i < l->spec.prefetch; i++) plan_next(l);
}

// ---------------------------------------------------------------- API

static int meta_int(const Shards *sh, const char *key, int lo, int hi) {
    char p[4096];
    path_join(p, sizeof p, shards_dir(sh), "meta.json");
    return (int)json_get_i64(shards_meta(sh), key, lo, hi, p);
}

Loader *loader_open(const LoaderSpec *spec) {
    const LoaderSpec *sp = spec;
    if (!sp->shard_dir) fatal("loader: no shard directory given");
    if (sp->batch_size < 1) fatal("loader: batch_size must be >= 1, got %d", sp->batch_size);
    if (sp->max_seq_len < 1) fatal("loader: max_seq_len must be >= 1, got %d", sp->max_seq_len);
    if (sp->image_tokens < 1) fatal("loader: image_tokens must be >= 1, got %d", sp->image_tokens);
    if (sp->prep.size < 1 || sp->prep.size > 8192) fatal("loader: image_size must be in 1..8192, got %d", sp->prep.size);
    if (sp->world < 1 || sp->rank < 0 || sp->rank >= sp->world)
        fatal("loader: rank %d of world %d is not valid", sp->rank, sp->world);
    for (int c = 0; c < 3; c++)
        if (!(sp->prep.std[c] != 0)) fatal("loader: image std[%d] must be non-zero", c);
    // a zeroed ImagePrep would only fail in a worker, at the first image
    if ((int)sp->prep.family < 0 || sp->prep.family >= N_IMAGE_PREP || sp->prep.filter < IMAGE_FILTER_LANCZOS ||
        sp->prep.filter > IMAGE_FILTER_HAMMING)
        fatal("loader: image preprocessing not set up (family %d, filter %d: see image_prep_load)", (int)sp->prep.family,
              (int)sp->prep.filter);
    Shards *sh = shards_open(sp->shard_dir);
    Loader *l = xcalloc(1, sizeof *l);
    l->spec = *sp;
    if (l->spec.threads < 1) l->spec.threads = 1;
    if (l->spec.prefetch < 1) l->spec.prefetch = 1;
    l->sh = sh;
    int it = meta_int(sh, "image_tokens", 1, 65536), msl = meta_int(sh, "max_seq_len", 2, SHARDS_MAX_TOKENS);
    if (it != sp->image_tokens)
        fatal("%s: the shards were prepared with --image-tokens %d but the model's image slot has %d tokens; "
              "re-run ./prepare with --image-tokens %d",
              sp->shard_dir, it, sp->image_tokens, sp->image_tokens);
    if (msl > sp->max_seq_len)
        fatal("%s: the shards were prepared with --max-seq-len %d, longer than the run's max_seq_len %d; "
              "re-run ./prepare with --max-seq-len %d",
              sp->shard_dir, msl, sp->max_seq_len, sp->max_seq_len);
    l->N = shards_count(sh);
    for (int64_t i = 0; i < l->N; i++) {
        const ShardEntry *e = shards_entry(sh, i);
        int64_t L = (int64_t)e->n_tokens + e->n_slot;
        if (L > msl) fatal("%s: sample %" PRId64 " has %" PRId64 " tokens, over the prepared max_seq_len %d; re-run ./prepare",
                           sp->shard_dir, i, L, msl);
    }
    if (l->N > (int64_t)UINT32_MAX) fatal("%s: %" PRId64 " samples: at most 2^32 - 1 supported", sp->shard_dir, l->N);
    if (sp->step_block < 0) fatal("loader: step_block must be >= 0, got %d", sp->step_block);
    if (sp->step_block > 0) {
        int64_t per_step = (int64_t)sp->step_block * sp->world;
        l->per_rank = l->N / per_step * sp->step_block;
        if (l->per_rank == 0)
            fatal("%s: %" PRId64 " samples is fewer than one step's %" PRId64 " (%d ranks x %d)", sp->shard_dir, l->N,
                  per_step, sp->world, sp->step_block);
    } else if (sp->split_all) {
        l->first = l->N * sp->rank / sp->world;
        l->per_rank = l->N * (sp->rank + 1) / sp->world - l->first;
    } else {
        l->per_rank = l->N / sp->world;
    }
    if (l->per_rank == 0)
        fatal("%s: %" PRId64 " samples is fewer than the %d ranks", sp->shard_dir, l->N, sp->world);
    if (l->spec.shuffle) l->perm = xmalloc((size_t)l->N * sizeof *l->perm);
    l->perm_epoch = -1;
    l->warned = xcalloc((size_t)(l->N + 7) / 8, 1);
    l->img_floats = (size_t)3 * sp->prep.size * sp->prep.size;
    if (sp->slot) {
        l->slot = sp->slot;
        if (sp->slot->tokens != sp->image_tokens)
            fatal("loader: the image slot has %d tokens per tile, image_tokens is %d", sp->slot->tokens, sp->image_tokens);
    } else {
        image_slot_init(&l->own_slot, IMAGE_FORMAT_LLAVA, sp->image_tokens, 1, NULL, NULL);
        l->slot = &l->own_slot;
    }
    {
        char p[4096];
        path_join(p, sizeof p, shards_dir(sh), "meta.json");
        const char *fm = json_get_str_opt(shards_meta(sh), "image_format", "llava", p);
        if (strcmp(fm, image_format_name(l->slot->fmt)))
            fatal("%s: the shards were prepared for the %s image format, the model uses %s; re-run ./prepare", sp->shard_dir,
                  fm, image_format_name(l->slot->fmt));
        char want[160];
        prepare_tiling_text(&sp->prep, want, sizeof want);
        const char *tl = json_get_str_opt(shards_meta(sh), "tiling", "none", p);
        if (strcmp(tl, want))
            fatal("%s: the shards were prepared with tiling \"%s\", this run's is \"%s\"; re-run ./prepare with the same "
                  "vision model and max_tiles", sp->shard_dir, tl, want);
    }
    l->max_tiles = sp->max_tiles > 0 ? sp->max_tiles
                                     : loader_max_tiles(sp->batch_size, sp->max_seq_len, sp->image_tokens, sp->packing,
                                                        SHARDS_MAX_IMAGES, &sp->prep);
    l->nslots = l->spec.prefetch + 1;
    l->slots = xcalloc((size_t)l->nslots, sizeof *l->slots);
    size_t bt = (size_t)sp->batch_size * sp->max_seq_len;
    for (int i = 0; i < l->nslots; i++) {
        Slot *s = &l->slots[i];
        s->smp = xcalloc((size_t)sp->batch_size, sizeof *s->smp);
        for (int k = 0; k < sp->batch_size; k++) {
            s->smp[k].ids = xmalloc((size_t)sp->max_seq_len * sizeof(int));
            s->smp[k].mask = xmalloc((size_t)sp->max_seq_len);
        }
        // the arrays the backend uploads from in place: its host memory (double buffered at
        // least: prefetch + 1 slots, one held by the step, the others filled meanwhile)
        size_t pf = (size_t)l->max_tiles * l->img_floats;
        s->pix = sp->pixels_bf16 ? xmalloc(pf * sizeof(float)) : host_alloc(l, pf * sizeof(float));
        s->pix16 = sp->pixels_bf16 ? host_alloc(l, pf * sizeof(uint16_t)) : NULL;
        s->ids = xmalloc(bt * sizeof(int));
        s->targets = xmalloc(bt * sizeof(int));
        s->pos = xmalloc(bt * sizeof(int));
        s->seg = host_alloc(l, bt * sizeof(int));
        s->img_row = xmalloc((size_t)l->max_tiles * sizeof(int));
        s->img_start = xmalloc((size_t)l->max_tiles * sizeof(int));
        s->scratch = xmalloc((size_t)4 * sp->batch_size * sizeof(int));
        s->planned = xmalloc((size_t)sp->batch_size * sizeof(int64_t));
    }
    l->qcap = l->nslots * sp->batch_size;
    l->q = xmalloc((size_t)l->qcap * sizeof *l->q);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_work, NULL);
    pthread_cond_init(&l->cv_done, NULL);
    l->nthr = l->spec.threads;
    l->thr = xmalloc((size_t)l->nthr * sizeof *l->thr);
    for (int i = 0; i < l->nthr; i++)
        if (pthread_create(&l->thr[i], NULL, worker, l) != 0) fatal("loader: cannot start a thread");
    l->held = -1;
    start_at(l, (LoaderPos){0, 0});
    return l;
}

void loader_close(Loader *l) {
    if (!l) return;
    drain(l);
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv_work);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->nthr; i++) pthread_join(l->thr[i], NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv_work);
    pthread_cond_destroy(&l->cv_done);
    for (int i = 0; i < l->nslots; i++) {
        Slot *s = &l->slots[i];
        for (int k = 0; k < l->spec.batch_size; k++) {
            free(s->smp[k].ids);
            free(s->smp[k].mask);
            sample_release(&s->smp[k]);
        }
        free(s->smp);
        if (l->spec.pixels_bf16) {
            free(s->pix);
            host_free(l, s->pix16);
        } else {
            host_free(l, s->pix);
        }
        free(s->ids);
        free(s->targets);
        free(s->pos);
        host_free(l, s->seg);
        free(s->img_row);
        free(s->img_start);
        free(s->scratch);
        free(s->planned);
    }
    free(l->slots);
    free(l->q);
    free(l->thr);
    free(l->perm);
    free(l->warned);
    image_slot_free(&l->own_slot);
    shards_close(l->sh);
    free(l);
}

int loader_max_tiles(int batch_size, int max_seq_len, int image_tokens, int packing, int images_per_sample,
                     const ImagePrep *prep) {
    int per_image = image_tiles_max(prep);
    // a one-tile sample also has a text token; tiles of one image follow each other
    int fit = max_seq_len / (image_tokens + (per_image == 1 ? 1 : 0));
    if (fit < 1) fit = 1;
    int64_t cap = (int64_t)images_per_sample * per_image;
    int per_row = packing || fit < cap ? fit : (int)cap;
    return batch_size * per_row;
}

int64_t loader_samples(const Loader *l) { return l->N; }
int64_t loader_samples_per_rank(const Loader *l) { return l->per_rank; }

int64_t loader_next(Loader *l, LoaderBatch *b) {
    if (l->held >= 0) {
        pthread_mutex_lock(&l->mu);
        l->slots[l->held].state = SLOT_FREE;
        pthread_mutex_unlock(&l->mu);
        l->held = -1;
        plan_next(l);
    }
    int si = (int)(l->next_seq % l->nslots);
    Slot *s = &l->slots[si];
    pthread_mutex_lock(&l->mu);
    while (s->state != SLOT_READY) pthread_cond_wait(&l->cv_done, &l->mu);
    s->state = SLOT_HELD;
    pthread_mutex_unlock(&l->mu);
    CHECK(s->seq == l->next_seq, "loader slot holds batch %lld, want %lld", (long long)s->seq, (long long)l->next_seq);
    l->held = si;
    l->next_seq++;
    l->tell = s->end;
    *b = s->b;
    b->n_planned = s->n;
    b->planned = s->planned;
    return s->epoch;
}

LoaderPos loader_tell(const Loader *l) { return l->tell; }

void loader_seek(Loader *l, LoaderPos pos) {
    if (pos.epoch < 0 || pos.index < 0 || pos.index > l->per_rank)
        fatal("loader: cannot seek to epoch %" PRId64 " index %" PRId64 ": this rank has %" PRId64
              " samples per epoch (was the data or the number of ranks changed?)",
              pos.epoch, pos.index, l->per_rank);
    if (pos.index == l->per_rank) pos = (LoaderPos){pos.epoch + 1, 0};
    drain(l);
    start_at(l, pos);
}
