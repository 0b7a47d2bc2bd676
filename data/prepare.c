// prepare.c: LLaVA JSON / JSONL -> shard directory (see prepare.h).
//
// The main thread reads and parses samples (so a malformed file stops with its byte offset at
// once), hands them to the workers in chunks, and writes the finished chunks strictly in input
// order; workers template and tokenise, read and check the image, cut to length and compress.
#include "data/prepare.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "common/util.h"
#include "data/image.h"
#include "data/image_slot.h"
#include "data/llava_json.h"
#include "data/shards.h"
#include "data/template.h"
#include "data/tokenizer.h"

#define CHUNK 16                        // samples per work item
#define MAX_IMAGE_FILE (64ll << 20)     // bigger image files are skipped as too large
_Static_assert(MAX_IMAGE_FILE <= SHARDS_MAX_IMAGE_BYTES, "the reader must accept every image prepare writes");
_Static_assert(PATH_MAX <= SHARDS_MAX_NAME_BYTES, "the reader must accept every image name prepare writes");
#define INFLIGHT_BYTES (4 * (int64_t)LLAVA_MAX_SAMPLE_BYTES)  // JSON of the samples read ahead, at most (+ one sample)
#define MAX_WARNINGS 20                 // per-sample skip warnings printed before going quiet

static const char *skip_names[PREPARE_SKIP_COUNT] = {
    "malformed_line", "not_object", "bad_conversations", "bad_image_field", "bad_string", "id_too_long", "no_gpt_turn", "bad_role",
    "bad_order", "multiple_images", "retokenize_mismatch", "missing_special_token", "empty",
    "image_without_placeholder", "placeholder_without_image", "image_missing", "image_unreadable",
    "image_corrupt", "image_unsupported", "image_too_large", "overlong", "tokenizer_failed", "too_long",
    "image_outside_folder",
};

const char *prepare_skip_name(int r) { return r >= 0 && r < PREPARE_SKIP_COUNT ? skip_names[r] : "?"; }

void prepare_spec_defaults(PrepareSpec *s) {
    memset(s, 0, sizeof *s);
    s->max_seq_len = 2048;
    s->image_tokens = 144;
    s->level = 3;
}

// ---------------------------------------------------------------- removing unfinished output

static char g_tmp_dir[PATH_MAX];  // the unfinished output of the running prepare, removed at exit
static int g_atexit;

// removes a directory that holds only prepare's own files; 0 when it is gone. Nothing is
// followed: a symbolic link at dir is removed itself, and the files are unlinked through a
// descriptor of dir opened with O_NOFOLLOW (common/fs_safe.h), so no link leads the removal
// out of the directory.
static int remove_prepared(const char *dir) {
    struct stat sb;
    if (lstat(dir, &sb) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode)) return unlink(dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) return -1;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        int ours = !strcmp(n, "meta.json") || !strcmp(n, "index.bin") ||
                   (!strncmp(n, "shard-", 6) && len > 4 && !strcmp(n + len - 4, ".zst"));
        if (ours) unlinkat(dirfd(d), n, 0);
    }
    closedir(d);
    return rmdir(dir);
}

static void cleanup_at_exit(void) {
    if (g_tmp_dir[0]) {
        remove_prepared(g_tmp_dir);
        g_tmp_dir[0] = 0;
    }
}

// This host's name as it appears in the temporary names: the characters a file name may hold
// unchanged ([A-Za-z0-9._-]), anything else as '_', at most 64 of them ("unknown" without one).
void prepare_host_tag(char *dst, size_t cap) {
    char h[256];
    if (gethostname(h, sizeof h) != 0) h[0] = 0;
    h[sizeof h - 1] = 0;
    size_t n = 0;
    for (const char *p = h; *p && n < 64 && n + 1 < cap; p++, n++) {
        char c = *p;
        dst[n] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'
                     ? c
                     : '_';
    }
    if (cap) dst[n < cap ? n : cap - 1] = 0;
    if (n == 0 && cap) snprintf(dst, cap, "unknown");
}

// Removes "<out>.tmp-<host>-<pid>" and "<out>.old-<host>-<pid>" directories that prepare runs on
// this host left behind when they were killed (their process is gone). Names from other hosts
// are left alone: on shared storage their runs may still be going, and kill() cannot tell (it
// sees this host's processes only).
static void remove_stale_tmp(const char *out) {
    char parent[PATH_MAX], base[PATH_MAX], host[80];
    const char *slash = strrchr(out, '/');
    if (slash) {
        snprintf(parent, sizeof parent, "%.*s", (int)(slash - out), out);
        if (!parent[0]) strcpy(parent, "/");
        snprintf(base, sizeof base, "%s", slash + 1);
    } else {
        strcpy(parent, ".");
        snprintf(base, sizeof base, "%s", out);
    }
    prepare_host_tag(host, sizeof host);
    DIR *d = opendir(parent);
    if (!d) return;
    size_t bl = strlen(base), hl = strlen(host);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (strncmp(n, base, bl) != 0 || (strncmp(n + bl, ".tmp-", 5) != 0 && strncmp(n + bl, ".old-", 5) != 0)) continue;
        n += bl + 5;
        if (strncmp(n, host, hl) != 0 || n[hl] != '-') continue;  // another host's (or an old-style name)
        n += hl + 1;
        if (*n < '0' || *n > '9') continue;
        char *endp;
        errno = 0;
        long pid = strtol(n, &endp, 10);
        if (*endp || errno || pid <= 0 || pid > INT_MAX || pid == getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;  // that run is still alive
        char p[PATH_MAX * 2];
        snprintf(p, sizeof p, "%s/%s", parent, e->d_name);
        remove_prepared(p);
    }
    closedir(d);
}

// ---------------------------------------------------------------- settings

int prepare_eos_id(const char *llm_dir, const Tokenizer *tok) {
    const char *files[2] = {"config.json", "generation_config.json"};
    for (int i = 0; i < 2; i++) {
        char p[PATH_MAX];
        path_join(p, sizeof p, llm_dir, files[i]);
        if (!file_exists(p)) continue;
        cJSON *c = json_load_file(p);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(c, "eos_token_id");
        if (cJSON_IsArray(e)) e = cJSON_GetArrayItem(e, 0);
        int id = -1;
        if (cJSON_IsNumber(e)) {
            int64_t v;
            if (!json_is_i64(e, 0, INT32_MAX, &v)) fatal("%s: eos_token_id must be a non-negative integer", p);
            id = (int)v;
        } else if (e && !cJSON_IsNull(e)) {
            fatal("%s: eos_token_id must be an integer or a list of integers", p);
        }
        cJSON_Delete(c);
        if (id >= 0) return id;
    }
    return tok ? tokenizer_token_id(tok, "<|endoftext|>") : -1;
}

typedef struct {
    char data_real[PATH_MAX];
    int64_t data_size, mtime_s, mtime_ns;
    char image_real[PATH_MAX];  // "" when no folder
    char tok_path[PATH_MAX];
    uint64_t tok_hash;
} Inputs;

static void resolve_inputs(const PrepareSpec *s, Inputs *in) {
    memset(in, 0, sizeof *in);
    struct stat st;
    if (stat(s->data, &st) != 0) fatal("%s: cannot open data file: %s", s->data, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatal("%s: not a regular file", s->data);
    if (!realpath(s->data, in->data_real)) fatal("%s: %s", s->data, strerror(errno));
    in->data_size = st.st_size;
    in->mtime_s = st.st_mtim.tv_sec;
    in->mtime_ns = st.st_mtim.tv_nsec;
    if (s->image_folder) {
        if (!dir_exists(s->image_folder)) fatal("%s: image folder not found", s->image_folder);
        if (!realpath(s->image_folder, in->image_real)) fatal("%s: %s", s->image_folder, strerror(errno));
    }
    if (!dir_exists(s->llm_dir)) fatal("%s: LLM directory not found", s->llm_dir);
    char tp[PATH_MAX];
    path_join(tp, sizeof tp, s->llm_dir, "tokenizer.json");
    if (!shards_hash_file(tp, &in->tok_hash) || !realpath(tp, in->tok_path))
        fatal("%s: cannot read: %s (the LLM directory needs its tokenizer.json)", tp, strerror(errno));
}

static void check_spec(const PrepareSpec *s) {
    if (!s->data) fatal("prepare: no data file given (--data FILE.json|FILE.jsonl)");
    if (!s->llm_dir) fatal("prepare: no LLM directory given (--llm DIR with tokenizer.json)");
    if (!s->template_name) fatal("prepare: no template given (--template plain|chatml|hyperclovax|vicuna_v1)");
    if (!s->out_dir || !s->out_dir[0]) fatal("prepare: no output directory given (--out DIR)");
    if (s->image_tokens < 1 || s->image_tokens > 65536)
        fatal("prepare: image_tokens must be in 1..65536, got %d", s->image_tokens);
    if (s->max_images < 0 || s->max_images > SHARDS_MAX_IMAGES)
        fatal("prepare: max_images must be in 1..%d, got %d", SHARDS_MAX_IMAGES, s->max_images);
    if (s->image_format && s->image_format[0] && image_format_parse(s->image_format) < 0)
        fatal("prepare: image format \"%s\" is not one of llava, internvl, idefics3", s->image_format);
    if (s->prep && image_prep_tiles(s->prep) && (!s->image_format || !s->image_format[0] || !strcmp(s->image_format, "llava")))
        fatal("prepare: max_tiles %d cuts images into tiles, which the llava image format cannot mark; use image_format "
              "internvl or idefics3", s->prep->max_tiles);
    if (s->max_seq_len < 2 || s->max_seq_len > SHARDS_MAX_TOKENS)
        fatal("prepare: max_seq_len must be in 2..%d, got %d", SHARDS_MAX_TOKENS, s->max_seq_len);
    if (s->threads < 0 || s->threads > 1024) fatal("prepare: threads must be in 0..1024, got %d", s->threads);
    if (s->level < 0 || s->level > 19) fatal("prepare: zstd level must be in 1..19, got %d", s->level);
    size_t n = strlen(s->out_dir);
    if (n + 128 >= PATH_MAX) fatal("%s: output path too long", s->out_dir);
}

// ---------------------------------------------------------------- per-sample work

typedef struct {
    int skip;  // -1: written; else PREPARE_SKIP_*
    char why[512];
    uint8_t *frame;
    size_t frame_len;
    ShardEntry e;
    int64_t image_bytes;
    int n_images;
    int n_tiles;  // the images' tiles (thumbnails included)
    int truncated;
    int64_t index, line;  // of the sample in the data file (for warnings)
} Result;

typedef struct Chunk {
    LlavaSample s[CHUNK];
    Result r[CHUNK];
    int n;
    int done;
    int64_t bytes;       // of its samples' JSON
    struct Chunk *next;  // submission order
} Chunk;

typedef struct {
    const PrepareSpec *spec;
    const Template *tmpl;
    const ImageSlot *slot;     // the image slot's format
    const ImagePrep *prep;     // tiling (NULL: one tile)
    const char *image_folder;  // may be NULL
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    Chunk *head, *tail;  // queue of chunks in submission order
    Chunk *next_todo;    // first chunk no worker has taken yet
    int stop;
} Pool;

static int count_placeholders(const LlavaSample *s) {
    int n = 0;
    for (int t = 0; t < s->n_turns; t++)
        for (const char *p = s->turns[t].text; (p = strstr(p, "<image>")); p += 7) n++;
    return n;
}

static int template_reason(int code) {
    switch (code) {
    case TEMPLATE_ERR_NO_GPT: return PREPARE_SKIP_NO_GPT;
    case TEMPLATE_ERR_BAD_ROLE: return PREPARE_SKIP_BAD_ROLE;
    case TEMPLATE_ERR_ORDER: return PREPARE_SKIP_BAD_ORDER;
    case TEMPLATE_ERR_IMAGES: return PREPARE_SKIP_MULTIPLE_IMAGES;
    case TEMPLATE_ERR_RETOKENIZE: return PREPARE_SKIP_RETOKENIZE;
    case TEMPLATE_ERR_SPECIAL: return PREPARE_SKIP_SPECIAL;
    case TEMPLATE_ERR_TOKENIZER: return PREPARE_SKIP_TOKENIZER;
    default: return PREPARE_SKIP_EMPTY;
    }
}

static int image_reason(int code) {
    switch (code) {
    case IMAGE_ERR_TOO_LARGE:
    case IMAGE_ERR_NOMEM: return PREPARE_SKIP_IMAGE_TOO_LARGE;
    case IMAGE_ERR_UNSUPPORTED: return PREPARE_SKIP_IMAGE_UNSUPPORTED;
    default: return PREPARE_SKIP_IMAGE_CORRUPT;
    }
}

// 1 when an image name, taken relative to the image folder, stays inside it: not absolute, and
// no ".." climbs above the folder. Judged on the name alone, before any file is opened; links
// inside the folder are its owner's doing and are followed (datasets often link subfolders).
static int image_name_inside(const char *name) {
    if (name[0] == '/') return 0;
    int depth = 0;
    for (const char *p = name; *p;) {
        size_t len = strcspn(p, "/");
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0) return 0;
        } else if (len > 0 && !(len == 1 && p[0] == '.')) {
            depth++;
        }
        p += len;
        if (*p) p++;
    }
    return 1;
}

#define SKIP(reason, ...) do { r->skip = (reason); snprintf(r->why, sizeof r->why, __VA_ARGS__); goto out; } while (0)

static void process(const Pool *p, void *cctx, LlavaSample *s, Result *r) {
    const PrepareSpec *spec = p->spec;
    int *ids = NULL;
    uint8_t *mask = NULL, *imgs[SHARDS_MAX_IMAGES] = {0};
    memset(r, 0, sizeof *r);
    r->skip = -1;
    r->index = s->index;
    r->line = s->line;
    if (s->skip) {
        static const int map[] = {0, PREPARE_SKIP_MALFORMED_LINE, PREPARE_SKIP_NOT_OBJECT, PREPARE_SKIP_BAD_CONVERSATIONS,
                                  PREPARE_SKIP_BAD_IMAGE_FIELD, PREPARE_SKIP_BAD_STRING, PREPARE_SKIP_TOO_LONG};
        _Static_assert(sizeof map / sizeof *map == LLAVA_SKIP_TOO_LONG + 1, "a PREPARE_SKIP_* for every LLAVA_SKIP_*");
        SKIP(map[s->skip], "%s", s->why);
    }
    size_t id_len = strlen(s->id);
    if (id_len > SHARDS_MAX_ID_BYTES)  // shards_record_parse would refuse the record
        SKIP(PREPARE_SKIP_ID_TOO_LONG, "its id has %zu bytes (at most %u)", id_len, SHARDS_MAX_ID_BYTES);
    int nph = count_placeholders(s);
    if (s->n_images > nph)
        SKIP(PREPARE_SKIP_IMAGE_NO_PLACEHOLDER, "has %d image%s (\"%s\"...) but %d <image> in its text", s->n_images,
             s->n_images > 1 ? "s" : "", s->image, nph);
    if (nph > s->n_images)
        SKIP(PREPARE_SKIP_PLACEHOLDER_NO_IMAGE, "has %d <image> in its text but %d image%s", nph, s->n_images,
             s->n_images == 1 ? "" : "s");
    int image_pos[SHARDS_MAX_IMAGES], n_pos = 0;
    char err[200];
    int n = template_encode_images(p->tmpl, s->turns, s->n_turns, &ids, &mask, image_pos,
                                   spec->max_images > 0 ? spec->max_images : SHARDS_MAX_IMAGES, &n_pos, err, sizeof err);
    if (n < 0) {
        ids = NULL, mask = NULL;
        SKIP(template_reason(n), "%s", err);
    }
    if (n_pos != s->n_images) SKIP(PREPARE_SKIP_IMAGE_NO_PLACEHOLDER, "the template placed %d image slots for %d images", n_pos,
                                   s->n_images);
    ShardRecord rec = {.n_images = s->n_images};
    int slot = 0;  // positions of all the expanded slots
    for (int k = 0; k < s->n_images; k++) {
        const char *name = s->images[k];
        // prepare_run checks this on its thread before handing the sample out (a worker never
        // calls fatal()); counted here only in case that check is ever bypassed
        if (!p->image_folder) SKIP(PREPARE_SKIP_IMAGE_MISSING, "no image folder given for image %.200s", name);
        if (!spec->allow_outside_images && !image_name_inside(name))
            SKIP(PREPARE_SKIP_IMAGE_OUTSIDE, "image \"%.200s\" leaves the image folder (an absolute path or ../); "
                 "allow_outside_images = true (./prepare --allow-outside-images) reads such paths", name);
        char path[PATH_MAX];
        // as os.path.join: an absolute image path is taken as it is
        if ((size_t)(name[0] == '/' ? snprintf(path, sizeof path, "%s", name)
                                    : snprintf(path, sizeof path, "%s/%s", p->image_folder, name)) >= sizeof path)
            SKIP(PREPARE_SKIP_IMAGE_MISSING, "image path too long: %s", name);
        struct stat st;
        if (stat(path, &st) != 0) {
            if (errno == ENOENT || errno == ENOTDIR) SKIP(PREPARE_SKIP_IMAGE_MISSING, "image %.200s not found", path);
            SKIP(PREPARE_SKIP_IMAGE_UNREADABLE, "image %.200s: %s", path, strerror(errno));
        }
        if (!S_ISREG(st.st_mode)) SKIP(PREPARE_SKIP_IMAGE_UNREADABLE, "image %.200s is not a regular file", path);
        if (st.st_size > MAX_IMAGE_FILE)
            SKIP(PREPARE_SKIP_IMAGE_TOO_LARGE, "image %.200s has %lld bytes (limit %lld)", path, (long long)st.st_size, MAX_IMAGE_FILE);
        size_t img_len = 0;
        uint8_t *bytes = (uint8_t *)file_read_all(path, &img_len);
        if (!bytes) SKIP(PREPARE_SKIP_IMAGE_UNREADABLE, "image %.200s: %s", path, strerror(errno));
        imgs[k] = bytes;
        Image im;
        char ierr[200];
        int rc = image_decode(bytes, img_len, &im, ierr, sizeof ierr);
        if (rc != 0) SKIP(image_reason(rc), "image %.200s: %s", path, ierr);
        // the grid comes from the size alone (data/tiling.h)
        ImageGrid g = p->prep ? image_grid(p->prep, im.w, im.h) : (ImageGrid){1, 1, 0};
        image_free(&im);
        rec.images[k] = (ShardImage){.pos = image_pos[k], .rows = g.rows, .cols = g.cols, .thumb = g.thumb, .name = name,
                                     .name_len = (uint32_t)strlen(name), .bytes = bytes, .len = (uint32_t)img_len};
        slot += image_slot_len(p->slot, g);
        r->n_tiles += image_grid_tiles(g);
        r->image_bytes += (int64_t)img_len;
    }
    if (n + slot > spec->max_seq_len) {
        if (spec->overlong_skip)
            SKIP(PREPARE_SKIP_OVERLONG, "%d tokens%s over max_seq_len %d", n + slot, slot ? " with the image slots" : "",
                 spec->max_seq_len);
        int keep = spec->max_seq_len - slot;
        if (keep < 1 || (s->n_images && keep < image_pos[s->n_images - 1]))
            SKIP(PREPARE_SKIP_OVERLONG, "%d tokens: the image slots do not fit in max_seq_len %d", n + slot, spec->max_seq_len);
        n = keep;
        r->truncated = 1;
    }
    int labelled = 0;
    for (int i = 0; i < n; i++)
        if (mask[i] && (i > 0 || (s->n_images && image_pos[0] == 0))) labelled++;
    if (labelled == 0) {
        if (r->truncated) SKIP(PREPARE_SKIP_OVERLONG, "no labelled token left after cutting to max_seq_len %d", spec->max_seq_len);
        SKIP(PREPARE_SKIP_EMPTY, "no token carries loss");
    }
    rec.n_tokens = n;
    rec.ids = (const int32_t *)ids;
    rec.mask = mask;
    rec.id = s->id;
    rec.id_len = (uint32_t)id_len;
    size_t raw_len;
    uint8_t *raw = shards_record_pack(&rec, &raw_len);
    r->frame = shards_compress(cctx, raw, raw_len, &r->frame_len);
    free(raw);
    r->e.flags = s->n_images ? SHARDS_FLAG_IMAGE | (uint32_t)s->n_images << 8 : 0;
    r->e.n_tokens = (uint32_t)n;
    r->e.n_labelled = (uint32_t)labelled;
    r->e.n_slot = (uint32_t)slot;
    r->n_images = s->n_images;
out:
    free(ids);
    free(mask);
    for (int k = 0; k < SHARDS_MAX_IMAGES; k++) free(imgs[k]);
}

static void *worker(void *arg) {
    Pool *p = arg;
    void *cctx = shards_cctx_new(p->spec->level ? p->spec->level : 3);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->next_todo) pthread_cond_wait(&p->cv_work, &p->mu);
        if (!p->next_todo) break;
        Chunk *c = p->next_todo;
        p->next_todo = c->next;
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < c->n; i++) {
            process(p, cctx, &c->s[i], &c->r[i]);
            llava_sample_free(&c->s[i]);
        }
        pthread_mutex_lock(&p->mu);
        c->done = 1;
        pthread_cond_broadcast(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    shards_cctx_free(cctx);
    return NULL;
}

// Stops the workers and waits for them: each finishes the chunk it holds, chunks nobody has taken
// are dropped (the normal end has none left). Called before a fatal() on the main thread too, so
// that the process exits with no worker running.
static void pool_stop(Pool *p, pthread_t *th, int nthreads) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    p->next_todo = NULL;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
}

// ---------------------------------------------------------------- progress

typedef struct {
    int quiet, tty, printed;
    double t0, last;
    int64_t total;  // samples in a JSONL file, else -1
} Progress;

static void fmt_eta(char *b, size_t cap, double s) {
    if (!(s >= 0) || s > 1e7) { snprintf(b, cap, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(b, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(b, cap, "%ld:%02ld", t / 60, t % 60);
}

static void progress(Progress *pg, const LlavaReader *rd, int64_t done, int final) {
    if (pg->quiet) return;
    double now = time_now();
    if (!final && now - pg->last < (pg->tty ? 0.25 : 5.0)) return;
    if (final && !pg->printed) return;
    pg->last = now;
    double el = now - pg->t0, rate = el > 0 ? done / el : 0;
    double frac;
    char count[64], eta[32];
    if (pg->total >= 0) {
        frac = pg->total ? (double)done / pg->total : 1;
        snprintf(count, sizeof count, "%" PRId64 "/%" PRId64 " samples", done, pg->total);
    } else {
        int64_t fs = llava_file_size(rd);
        frac = fs ? (double)llava_bytes_read(rd) / fs : 1;
        snprintf(count, sizeof count, "%" PRId64 " samples", done);
    }
    fmt_eta(eta, sizeof eta, frac > 0 ? el * (1 - frac) / frac : -1);
    fprintf(stderr, "%sprepare: %s (%.1f%%), %.0f samples/s, ETA %s%s", pg->tty ? "\r" : "", count, 100 * frac, rate, eta,
            pg->tty ? "\033[K" : "\n");
    if (final && pg->tty) fputc('\n', stderr);
    fflush(stderr);
    pg->printed = 1;
}

// ---------------------------------------------------------------- meta.json

static void add_num(cJSON *o, const char *k, double v) { cJSON_AddItemToObject(o, k, cJSON_CreateNumber(v)); }

static const char *format_of(const PrepareSpec *s) { return s->image_format && s->image_format[0] ? s->image_format : "llava"; }

void prepare_tiling_text(const ImagePrep *p, char *dst, size_t cap) {
    if (!p || !image_prep_tiles(p)) snprintf(dst, cap, "none");
    else snprintf(dst, cap, "%s size %d longest_edge %d max_tiles %d", image_prep_family_name(p->family), p->size,
                  p->family == IMAGE_PREP_IDEFICS3 ? p->longest_edge : 0, p->max_tiles);
}

static void tiling_text(const PrepareSpec *s, char *dst, size_t cap) { prepare_tiling_text(s->prep, dst, cap); }

static char *meta_text(const PrepareSpec *spec, const Inputs *in, const char *tmpl_name, int jsonl,
                       const PrepareSummary *s, uint64_t index_hash) {
    cJSON *m = cJSON_CreateObject();
    char hex[24];
    cJSON_AddStringToObject(m, "format", "svlm-shards");
    add_num(m, "version", SHARDS_VERSION);
    add_num(m, "samples", (double)s->samples);
    add_num(m, "shards", s->shards);
    add_num(m, "tokens", (double)s->tokens);
    add_num(m, "labelled_tokens", (double)s->labelled);
    add_num(m, "images", (double)s->images);
    add_num(m, "image_bytes", (double)s->image_bytes);
    add_num(m, "compressed_bytes", (double)s->shard_bytes);
    add_num(m, "truncated", (double)s->truncated);
    cJSON *src = cJSON_AddObjectToObject(m, "source");
    cJSON_AddStringToObject(src, "path", in->data_real);
    cJSON_AddStringToObject(src, "format", jsonl ? "jsonl" : "json");
    add_num(src, "size", (double)in->data_size);
    add_num(src, "mtime_s", (double)in->mtime_s);
    add_num(src, "mtime_ns", (double)in->mtime_ns);
    add_num(src, "samples_read", (double)s->samples_read);
    if (in->image_real[0]) cJSON_AddStringToObject(m, "image_folder", in->image_real);
    else cJSON_AddNullToObject(m, "image_folder");
    cJSON_AddBoolToObject(m, "allow_outside_images", spec->allow_outside_images != 0);
    cJSON *tk = cJSON_AddObjectToObject(m, "tokenizer");
    cJSON_AddStringToObject(tk, "path", in->tok_path);
    snprintf(hex, sizeof hex, "%016" PRIx64, in->tok_hash);
    cJSON_AddStringToObject(tk, "fnv1a64", hex);
    cJSON_AddStringToObject(m, "template", tmpl_name);
    if (spec->system) cJSON_AddStringToObject(m, "system", spec->system);
    else cJSON_AddNullToObject(m, "system");
    add_num(m, "eos_id", s->eos_id);
    add_num(m, "max_seq_len", spec->max_seq_len);
    add_num(m, "image_tokens", spec->image_tokens);
    cJSON_AddStringToObject(m, "image_format", format_of(spec));
    add_num(m, "max_images", spec->max_images > 0 ? spec->max_images : SHARDS_MAX_IMAGES);
    char tiling[160];
    tiling_text(spec, tiling, sizeof tiling);
    cJSON_AddStringToObject(m, "tiling", tiling);
    cJSON_AddStringToObject(m, "overlong", spec->overlong_skip ? "skip" : "truncate");
    cJSON *sk = cJSON_AddObjectToObject(m, "skipped");
    for (int i = 0; i < PREPARE_SKIP_COUNT; i++) add_num(sk, skip_names[i], (double)s->skipped[i]);
    add_num(m, "skipped_total", (double)s->skipped_total);
    snprintf(hex, sizeof hex, "%016" PRIx64, index_hash);
    cJSON_AddStringToObject(m, "index_fnv1a64", hex);
    char *t = cJSON_Print(m);
    cJSON_Delete(m);
    return t;
}

static void write_file_or_die(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot create: %s; the unfinished output is removed", path, strerror(errno));
    size_t n = strlen(text);
    if (fwrite(text, 1, n, f) != n || fputc('\n', f) == EOF || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        int e = errno;
        fclose(f);
        fatal("%s: write failed: %s; the unfinished output is removed", path, strerror(e ? e : EIO));
    }
    if (fclose(f) != 0) fatal("%s: write failed: %s; the unfinished output is removed", path, strerror(errno));
}

// ---------------------------------------------------------------- the run

static int looks_prepared_or_empty(const char *dir) {
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/meta.json", dir);
    if (file_exists(p)) return 1;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

void prepare_run(const PrepareSpec *spec_in, PrepareSummary *out) {
    PrepareSpec spec = *spec_in;
    if (!spec.level) spec.level = 3;
    check_spec(&spec);
    char out_dir[PATH_MAX];  // without trailing slashes, so that "<out>.tmp-HOST-PID" is a sibling
    snprintf(out_dir, sizeof out_dir, "%s", spec.out_dir);
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/'; n--) out_dir[n - 1] = 0;
    spec.out_dir = out_dir;
    double t0 = time_now();
    TemplateKind kind = template_parse(spec.template_name);
    Inputs in;
    resolve_inputs(&spec, &in);
    if (file_exists(spec.out_dir)) fatal("%s: exists and is a file, not a directory", spec.out_dir);
    if (dir_exists(spec.out_dir) && !looks_prepared_or_empty(spec.out_dir))
        fatal("%s: exists and is not a prepared data directory; choose another --out", spec.out_dir);

    Tokenizer *tok = tokenizer_load(in.tok_path);
    PrepareSummary S;
    memset(&S, 0, sizeof S);
    S.eos_id = prepare_eos_id(spec.llm_dir, tok);
    Template *tmpl = template_new(kind, tok, spec.system, S.eos_id);
    ImageSlot slot;
    const ImagePrep *tp = spec.prep && image_prep_tiles(spec.prep) ? spec.prep : NULL;
    image_slot_init(&slot, (ImageFormat)image_format_parse(spec.image_format && spec.image_format[0] ? spec.image_format : "llava"),
                    spec.image_tokens, tp ? image_grid_max_side(tp) : 1, tok, in.tok_path);

    LlavaReader *rd = llava_open(spec.data);
    int jsonl = llava_is_jsonl(rd);
    remove_stale_tmp(spec.out_dir);
    char tmp[PATH_MAX];
    char host[80];
    prepare_host_tag(host, sizeof host);
    snprintf(tmp, sizeof tmp, "%s.tmp-%s-%d", spec.out_dir, host, (int)getpid());
    remove_prepared(tmp);
    if (mkdir(tmp, 0755) != 0) fatal("%s: cannot create: %s", tmp, strerror(errno));
    snprintf(g_tmp_dir, sizeof g_tmp_dir, "%s", tmp);
    if (!g_atexit) {
        atexit(cleanup_at_exit);
        g_atexit = 1;
    }
    ShardWriter *w = shard_writer_open(tmp, spec.shard_bytes);

    int nthreads = spec.threads;
    if (nthreads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = c > 0 ? (int)c : 1;
    }
    Pool pool = {.spec = &spec, .tmpl = tmpl, .slot = &slot, .prep = tp, .image_folder = in.image_real[0] ? in.image_real : NULL};
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv_work, NULL);
    pthread_cond_init(&pool.cv_done, NULL);
    pthread_t *th = xmalloc((size_t)nthreads * sizeof *th);
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, worker, &pool) != 0) fatal("prepare: cannot start a worker thread");

    Progress pg = {.quiet = spec.quiet, .tty = isatty(2), .t0 = t0, .last = t0,
                   .total = jsonl ? llava_count_samples(spec.data) : -1};
    int max_inflight = 3 * nthreads + 2, inflight = 0, eof = 0, warned = 0;
    int64_t done = 0, inflight_bytes = 0;
    for (;;) {
        // samples in flight are held parsed: their JSON is bounded too, so that memory stays a
        // small multiple of the largest sample whatever the thread count
        while (!eof && inflight < max_inflight && inflight_bytes < INFLIGHT_BYTES) {
            Chunk *c = xcalloc(1, sizeof *c);
            while (c->n < CHUNK && c->bytes < INFLIGHT_BYTES && llava_next(rd, &c->s[c->n])) {
                if (c->s[c->n].skip != LLAVA_SKIP_TOO_LONG) c->bytes += c->s[c->n].bytes;  // what is held parsed
                const LlavaSample *ls = &c->s[c->n];
                if (!ls->skip && ls->image && !pool.image_folder) {
                    // checked here, on the reading thread, so that no worker ever calls fatal()
                    pool_stop(&pool, th, nthreads);
                    fatal("%s: sample %" PRId64 " (line %" PRId64 ") has an image (\"%.200s\") but no image folder was given "
                          "(--image-folder DIR)",
                          spec.data, ls->index, ls->line, ls->image);
                }
                c->n++;
            }
            if (c->n < CHUNK && c->bytes < INFLIGHT_BYTES) eof = 1;
            if (c->n == 0) { free(c); break; }
            S.samples_read += c->n;
            pthread_mutex_lock(&pool.mu);
            if (pool.tail) pool.tail->next = c;
            else pool.head = c;
            pool.tail = c;
            if (!pool.next_todo) pool.next_todo = c;
            pthread_cond_signal(&pool.cv_work);
            pthread_mutex_unlock(&pool.mu);
            inflight++;
            inflight_bytes += c->bytes;
        }
        if (inflight == 0) break;
        pthread_mutex_lock(&pool.mu);
        Chunk *c = pool.head;
        while (!c->done) pthread_cond_wait(&pool.cv_done, &pool.mu);
        pool.head = c->next;
        if (!pool.head) pool.tail = NULL;
        pthread_mutex_unlock(&pool.mu);
        inflight--;
        inflight_bytes -= c->bytes;
        for (int i = 0; i < c->n; i++) {
            Result *r = &c->r[i];
            if (r->skip >= 0) {
                S.skipped[r->skip]++;
                S.skipped_total++;
                if (!spec.quiet && warned < MAX_WARNINGS) {
                    warn("%s: sample %" PRId64 " (line %" PRId64 ") skipped (%s): %s%s", spec.data, r->index, r->line,
                         skip_names[r->skip], r->why,
                         ++warned == MAX_WARNINGS ? " [further skips are counted, not shown]" : "");
                }
                continue;
            }
            shard_writer_add(w, r->frame, r->frame_len, &r->e);
            free(r->frame);
            S.samples++;
            S.tokens += r->e.n_tokens;
            S.labelled += r->e.n_labelled;
            S.images += r->n_images;
            S.tiles += r->n_tiles;
            S.image_bytes += r->image_bytes;
            S.truncated += r->truncated;
        }
        done += c->n;
        free(c);
        progress(&pg, rd, done, 0);
    }
    progress(&pg, rd, done, 1);
    pool_stop(&pool, th, nthreads);
    free(th);
    pthread_mutex_destroy(&pool.mu);
    pthread_cond_destroy(&pool.cv_work);
    pthread_cond_destroy(&pool.cv_done);
    llava_close(rd);

    if (S.samples == 0)
        fatal("%s: no usable sample (%" PRId64 " read, %" PRId64 " skipped): nothing written", spec.data, S.samples_read,
              S.skipped_total);
    S.shard_bytes = shard_writer_bytes(w);
    uint64_t ih;
    S.shards = (int)shard_writer_finish(w, &ih);
    char *meta = meta_text(&spec, &in, template_name(kind), jsonl, &S, ih);
    char mp[PATH_MAX + 16];
    snprintf(mp, sizeof mp, "%s/meta.json", tmp);
    write_file_or_die(mp, meta);
    free(meta);

    // into place: an old prepared directory is moved aside first, then removed
    if (dir_exists(spec.out_dir)) {
        char old[PATH_MAX + 128];
        snprintf(old, sizeof old, "%s.old-%s-%d", spec.out_dir, host, (int)getpid());
        if (rename(spec.out_dir, old) != 0) fatal("%s: cannot replace: %s", spec.out_dir, strerror(errno));
        if (rename(tmp, spec.out_dir) != 0) {
            int e = errno;
            rename(old, spec.out_dir);
            fatal("%s: cannot rename %s into place: %s", spec.out_dir, tmp, strerror(e));
        }
        if (remove_prepared(old) != 0) warn("%s: could not remove the previous output", old);
    } else if (rename(tmp, spec.out_dir) != 0) {
        fatal("%s: cannot rename %s into place: %s", spec.out_dir, tmp, strerror(errno));
    }
    g_tmp_dir[0] = 0;
    template_free(tmpl);
    image_slot_free(&slot);
    tokenizer_free(tok);
    S.seconds = time_now() - t0;
    *out = S;
}

static void human_bytes(char *b, size_t cap, double n) {
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (n >= 1000 && i < 4) n /= 1000, i++;
    snprintf(b, cap, i ? "%.1f %s" : "%.0f %s", n, u[i]);
}

void prepare_print_summary(const PrepareSpec *spec, const PrepareSummary *s, FILE *f) {
    char b1[32], b2[32];
    human_bytes(b1, sizeof b1, (double)s->shard_bytes);
    human_bytes(b2, sizeof b2, (double)s->image_bytes);
    fprintf(f, "prepare: wrote %" PRId64 " of %" PRId64 " samples to %s (%d shard%s, %s)\n", s->samples, s->samples_read,
            spec->out_dir, s->shards, s->shards == 1 ? "" : "s", b1);
    fprintf(f, "  tokens: %" PRId64 " (labelled %" PRId64 "), truncated samples: %" PRId64 "\n", s->tokens, s->labelled,
            s->truncated);
    fprintf(f, "  images: %" PRId64 " (%" PRId64 " tiles, %.2f per image; %s of image data)\n", s->images, s->tiles,
            s->images ? (double)s->tiles / s->images : 0.0, b2);
    fprintf(f, "  skipped: %" PRId64, s->skipped_total);
    int first = 1;
    for (int i = 0; i < PREPARE_SKIP_COUNT; i++)
        if (s->skipped[i]) {
            fprintf(f, "%s%s %" PRId64, first ? " (" : ", ", skip_names[i], s->skipped[i]);
            first = 0;
        }
    fprintf(f, "%s\n", first ? "" : ")");
    fprintf(f, "  elapsed: %.2f s (%.0f samples/s)\n", s->seconds, s->seconds > 0 ? s->samples_read / s->seconds : 0.0);
}

// ---------------------------------------------------------------- reuse

#define NOT_CURRENT(...) do { if (why) snprintf(why, whylen, __VA_ARGS__); cJSON_Delete(m); return 0; } while (0)

int prepare_is_current(const char *out_dir, const PrepareSpec *spec, char *why, size_t whylen) {
    cJSON *m = NULL;
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/meta.json", out_dir);
    size_t len;
    char *text = file_read_all(p, &len);
    if (!text) NOT_CURRENT("%s: no meta.json", out_dir);
    char err[512];
    m = json_parse(text, len, p, err, sizeof err);
    free(text);
    if (!m) NOT_CURRENT("%s", err);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, "version");
    if (!cJSON_IsNumber(v) || v->valueint != SHARDS_VERSION) NOT_CURRENT("%s: another shard format version", p);
    Inputs in;
    resolve_inputs(spec, &in);
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(m, "source");
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(src, "path");
    if (!cJSON_IsString(sp) || strcmp(sp->valuestring, in.data_real)) NOT_CURRENT("made from another data file");
#define NUM(o, k) (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, k)) ? cJSON_GetObjectItemCaseSensitive(o, k)->valuedouble : -1.0)
    if (NUM(src, "size") != (double)in.data_size || NUM(src, "mtime_s") != (double)in.mtime_s ||
        NUM(src, "mtime_ns") != (double)in.mtime_ns)
        NOT_CURRENT("%s changed since it was prepared (size or modification time)", spec->data);
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(m, "tokenizer");
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(tk, "fnv1a64");
    char hex[24];
    snprintf(hex, sizeof hex, "%016" PRIx64, in.tok_hash);
    if (!cJSON_IsString(th) || strcmp(th->valuestring, hex)) NOT_CURRENT("%s differs from the one prepared with", in.tok_path);
    const cJSON *tn = cJSON_GetObjectItemCaseSensitive(m, "template");
    if (!cJSON_IsString(tn) || strcmp(tn->valuestring, template_name(template_parse(spec->template_name))))
        NOT_CURRENT("prepared with template %s", cJSON_IsString(tn) ? tn->valuestring : "?");
    const cJSON *sy = cJSON_GetObjectItemCaseSensitive(m, "system");
    if (spec->system ? !(cJSON_IsString(sy) && !strcmp(sy->valuestring, spec->system)) : !cJSON_IsNull(sy))
        NOT_CURRENT("prepared with another system prompt");
    if (NUM(m, "max_seq_len") != spec->max_seq_len) NOT_CURRENT("prepared with max_seq_len %g", NUM(m, "max_seq_len"));
    if (NUM(m, "image_tokens") != spec->image_tokens) NOT_CURRENT("prepared with image_tokens %g", NUM(m, "image_tokens"));
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(m, "image_format"), *tl = cJSON_GetObjectItemCaseSensitive(m, "tiling");
    if (!cJSON_IsString(fm) || strcmp(fm->valuestring, format_of(spec))) NOT_CURRENT("prepared with another image_format");
    if (NUM(m, "max_images") != (spec->max_images > 0 ? spec->max_images : SHARDS_MAX_IMAGES))
        NOT_CURRENT("prepared with max_images %g", NUM(m, "max_images"));
    char tiling[160];
    tiling_text(spec, tiling, sizeof tiling);
    if (!cJSON_IsString(tl) || strcmp(tl->valuestring, tiling)) NOT_CURRENT("prepared with other tiling (%s)", cJSON_IsString(tl) ? tl->valuestring : "?");
    const cJSON *ol = cJSON_GetObjectItemCaseSensitive(m, "overlong");
    if (!cJSON_IsString(ol) || strcmp(ol->valuestring, spec->overlong_skip ? "skip" : "truncate"))
        NOT_CURRENT("prepared with another --overlong mode");
    const cJSON *imf = cJSON_GetObjectItemCaseSensitive(m, "image_folder");
    if (in.image_real[0] ? !(cJSON_IsString(imf) && !strcmp(imf->valuestring, in.image_real)) : !cJSON_IsNull(imf))
        NOT_CURRENT("prepared with another image folder");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "allow_outside_images")) != (spec->allow_outside_images != 0))
        NOT_CURRENT("prepared with allow_outside_images = %s", spec->allow_outside_images ? "false" : "true");
    int eos = prepare_eos_id(spec->llm_dir, NULL);
    if (eos >= 0 && NUM(m, "eos_id") != eos) NOT_CURRENT("prepared with eos id %g", NUM(m, "eos_id"));
    snprintf(p, sizeof p, "%s/index.bin", out_dir);
    if (!file_exists(p)) NOT_CURRENT("%s missing", p);
    int64_t ns;
    if (!json_is_i64(cJSON_GetObjectItemCaseSensitive(m, "shards"), 1, 1 << 20, &ns)) NOT_CURRENT("%s: bad shard count", p);
    for (int i = 0; i < ns; i++) {
        shards_shard_name(p, sizeof p, out_dir, (uint32_t)i);
        if (!file_exists(p)) NOT_CURRENT("%s missing", p);
    }
#undef NUM
    cJSON_Delete(m);
    return 1;
}
