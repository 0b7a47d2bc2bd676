// shards.c: reading and writing prepared shard directories (see shards.h for the format).
#include "data/shards.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "common/json.h"
#include "common/util.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the shard format is little-endian; add byte swaps");

#define SKIPPABLE_MAGIC 0x184D2A50u
#define RECORD_MAGIC 0x43525653u  // "SVRC"

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

uint64_t shards_fnv1a64(const void *data, size_t n, uint64_t h) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int shards_hash_file(const char *path, uint64_t *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint64_t h = SHARDS_FNV_INIT;
    uint8_t *buf = xmalloc(1 << 20);
    size_t n;
    while ((n = fread(buf, 1, 1 << 20, f)) > 0) h = shards_fnv1a64(buf, n, h);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad) { errno = EIO; return 0; }
    *out = h;
    return 1;
}

void shards_shard_name(char *dst, size_t cap, const char *dir, uint32_t shard) {
    char name[32];
    snprintf(name, sizeof name, "shard-%05u.zst", shard);
    path_join(dst, cap, dir, name);
}

// ---------------------------------------------------------------- records

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

uint8_t *shards_record_pack(const ShardRecord *r, size_t *len) {
    CHECK(r->n_images >= 0 && r->n_images <= SHARDS_MAX_IMAGES, "record with %d images", r->n_images);
    size_t n = (size_t)r->n_tokens, head = SHARDS_RECORD_HEADER_BYTES + (size_t)r->n_images * SHARDS_IMAGE_HEADER_BYTES;
    size_t total = head + n * 5 + r->id_len;
    for (int i = 0; i < r->n_images; i++) total += r->images[i].name_len + (size_t)r->images[i].len;
    uint8_t *b = xmalloc(total), *p = b;
    put32(p, RECORD_MAGIC);
    put32(p + 4, (uint32_t)r->n_tokens);
    put32(p + 8, (uint32_t)r->n_images);
    put32(p + 12, r->id_len);
    p += SHARDS_RECORD_HEADER_BYTES;
    for (int i = 0; i < r->n_images; i++, p += SHARDS_IMAGE_HEADER_BYTES) {
        const ShardImage *im = &r->images[i];
        put32(p, (uint32_t)im->pos);
        put16(p + 4, (uint16_t)im->rows);
        put16(p + 6, (uint16_t)im->cols);
        put32(p + 8, (uint32_t)im->thumb);
        put32(p + 12, im->name_len);
        put32(p + 16, im->len);
    }
    memcpy(p, r->ids, n * 4), p += n * 4;
    memcpy(p, r->mask, n), p += n;
    if (r->id_len) memcpy(p, r->id, r->id_len), p += r->id_len;
    for (int i = 0; i < r->n_images; i++) {
        const ShardImage *im = &r->images[i];
        if (im->name_len) memcpy(p, im->name, im->name_len), p += im->name_len;
        if (im->len) memcpy(p, im->bytes, im->len), p += im->len;
    }
    *len = total;
    return b;
}

int shards_record_parse(const uint8_t *buf, size_t len, ShardRecord *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    if (len < SHARDS_RECORD_HEADER_BYTES || get32(buf) != RECORD_MAGIC) {
        snprintf(err, errlen, "not a record (bad magic or %zu bytes)", len);
        return -1;
    }
    uint32_t n = get32(buf + 4), ni = get32(buf + 8), id_len = get32(buf + 12);
    if (n == 0 || n > SHARDS_MAX_TOKENS || ni > SHARDS_MAX_IMAGES || id_len > SHARDS_MAX_ID_BYTES) {
        snprintf(err, errlen, "record header out of range (tokens %u, images %u, id %u bytes)", n, ni, id_len);
        return -1;
    }
    uint64_t want = (uint64_t)SHARDS_RECORD_HEADER_BYTES + (uint64_t)ni * SHARDS_IMAGE_HEADER_BYTES;
    if (len < want) {
        snprintf(err, errlen, "record of %zu bytes is shorter than its %u image headers", len, ni);
        return -1;
    }
    const uint8_t *h = buf + SHARDS_RECORD_HEADER_BYTES;
    int last = 0;
    for (uint32_t i = 0; i < ni; i++, h += SHARDS_IMAGE_HEADER_BYTES) {
        ShardImage *im = &r->images[i];
        int32_t pos = (int32_t)get32(h);
        uint32_t thumb = get32(h + 8);
        im->rows = get16(h + 4);
        im->cols = get16(h + 6);
        im->name_len = get32(h + 12);
        im->len = get32(h + 16);
        if (pos < last || pos > (int64_t)n || im->rows < 1 || im->cols < 1 || thumb > 1 || (thumb != (im->rows * im->cols > 1)) ||
            im->name_len > SHARDS_MAX_NAME_BYTES || im->len == 0 || im->len > SHARDS_MAX_IMAGE_BYTES) {
            snprintf(err, errlen, "record image %u out of range (position %d of %u tokens, grid %dx%d+%u, name %u bytes, "
                     "image %u bytes)", i, pos, n, im->rows, im->cols, thumb, im->name_len, im->len);
            return -1;
        }
        im->pos = last = pos;
        im->thumb = (int)thumb;
        want += im->name_len + (uint64_t)im->len;
    }
    want += (uint64_t)n * 5 + id_len;
    if (want != len) {
        snprintf(err, errlen, "record length %zu differs from its header's %" PRIu64, len, want);
        return -1;
    }
    const uint8_t *p = h;
    r->n_tokens = (int)n;
    r->n_images = (int)ni;
    r->ids = (const int32_t *)p;
    p += (size_t)n * 4;
    r->mask = p;
    for (uint32_t i = 0; i < n; i++)
        if (r->ids[i] < 0 || r->mask[i] > 1) {
            snprintf(err, errlen, "record token %u has id %d mask %u", i, r->ids[i], r->mask[i]);
            return -1;
        }
    p += n;
    r->id = (const char *)p, r->id_len = id_len, p += id_len;
    for (uint32_t i = 0; i < ni; i++) {
        ShardImage *im = &r->images[i];
        im->name = (const char *)p, p += im->name_len;
        im->bytes = p, p += im->len;
    }
    return 0;
}

// ---------------------------------------------------------------- compression

void *shards_cctx_new(int level) {
    ZSTD_CCtx *c = ZSTD_createCCtx();
    if (!c) fatal("out of memory creating a zstd context");
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
    return c;
}

void shards_cctx_free(void *cctx) { ZSTD_freeCCtx(cctx); }

uint8_t *shards_compress(void *cctx, const uint8_t *raw, size_t n, size_t *out_len) {
    size_t cap = ZSTD_compressBound(n);
    uint8_t *out = xmalloc(cap);
    size_t r = ZSTD_compress2(cctx, out, cap, raw, n);
    CHECK(!ZSTD_isError(r), "zstd compression failed: %s", ZSTD_getErrorName(r));
    *out_len = r;
    return out;
}

// ---------------------------------------------------------------- writer

struct ShardWriter {
    char *dir;
    int64_t shard_bytes;
    FILE *f;
    char path[4096];
    uint32_t shard;
    uint64_t size;  // of the current shard
    uint64_t *sizes;
    ShardEntry *entries;
    int64_t n, cap;
    int64_t total;
};

static void write_or_die(const void *p, size_t n, FILE *f, const char *path) {
    if (n && fwrite(p, 1, n, f) != n)
        fatal("%s: write failed: %s; the unfinished output is removed", path, strerror(errno ? errno : EIO));
}

static void close_or_die(FILE *f, const char *path) {
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        int e = errno;
        fclose(f);
        fatal("%s: write failed: %s; the unfinished output is removed", path, strerror(e));
    }
    if (fclose(f) != 0) fatal("%s: write failed: %s; the unfinished output is removed", path, strerror(errno));
}

static void start_shard(ShardWriter *w) {
    shards_shard_name(w->path, sizeof w->path, w->dir, w->shard);
    w->f = fopen(w->path, "wb");
    if (!w->f) fatal("%s: cannot create: %s", w->path, strerror(errno));
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    uint8_t h[SHARDS_HEADER_BYTES];
    put32(h, SKIPPABLE_MAGIC);
    put32(h + 4, 16);
    memcpy(h + 8, "SVLMSHRD", 8);
    put32(h + 16, SHARDS_VERSION);
    put32(h + 20, w->shard);
    write_or_die(h, sizeof h, w->f, w->path);
    w->size = SHARDS_HEADER_BYTES;
    w->sizes = xrealloc(w->sizes, (w->shard + 1) * sizeof *w->sizes);
}

ShardWriter *shard_writer_open(const char *dir, int64_t shard_bytes) {
    ShardWriter *w = xcalloc(1, sizeof *w);
    w->dir = xstrdup(dir);
    w->shard_bytes = shard_bytes > 0 ? shard_bytes : ((int64_t)512 << 20);
    start_shard(w);
    return w;
}

int64_t shard_writer_add(ShardWriter *w, const uint8_t *frame, size_t n, const ShardEntry *e) {
    CHECK(n > 0 && n <= UINT32_MAX, "frame of %zu bytes", n);
    if (w->size > SHARDS_HEADER_BYTES && (int64_t)(w->size + n) > w->shard_bytes) {
        w->sizes[w->shard] = w->size;
        close_or_die(w->f, w->path);
        w->shard++;
        start_shard(w);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1024;
        w->entries = xrealloc(w->entries, (size_t)w->cap * sizeof *w->entries);
    }
    ShardEntry x = *e;
    x.shard = w->shard;
    x.offset = w->size;
    x.csize = (uint32_t)n;
    w->entries[w->n] = x;
    write_or_die(frame, n, w->f, w->path);
    w->size += n;
    w->total += n;
    return w->n++;
}

int64_t shard_writer_bytes(const ShardWriter *w) { return w->total; }

uint32_t shard_writer_finish(ShardWriter *w, uint64_t *index_hash) {
    w->sizes[w->shard] = w->size;
    close_or_die(w->f, w->path);
    w->f = NULL;
    uint32_t ns = w->shard + 1;
    size_t len = SHARDS_INDEX_HEADER_BYTES + (size_t)ns * 8 + (size_t)w->n * SHARDS_ENTRY_BYTES + 8;
    uint8_t *b = xcalloc(1, len), *p = b;
    memcpy(p, "SVLMIDX1", 8);
    put32(p + 8, SHARDS_VERSION);
    put32(p + 12, ns);
    put64(p + 16, (uint64_t)w->n);
    put32(p + 24, SHARDS_ENTRY_BYTES);
    p += SHARDS_INDEX_HEADER_BYTES;
    for (uint32_t s = 0; s < ns; s++, p += 8) put64(p, w->sizes[s]);
    for (int64_t i = 0; i < w->n; i++, p += SHARDS_ENTRY_BYTES) {
        const ShardEntry *e = &w->entries[i];
        put32(p, e->shard);
        put32(p + 4, e->flags);
        put64(p + 8, e->offset);
        put32(p + 16, e->csize);
        put32(p + 20, e->n_tokens);
        put32(p + 24, e->n_labelled);
        put32(p + 28, e->n_slot);
    }
    uint64_t h = shards_fnv1a64(b, len - 8, SHARDS_FNV_INIT);
    put64(p, h);
    char path[4096];
    path_join(path, sizeof path, w->dir, "index.bin");
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    write_or_die(b, len, f, path);
    close_or_die(f, path);
    free(b);
    if (index_hash) *index_hash = h;
    free(w->sizes);
    free(w->entries);
    free(w->dir);
    free(w);
    return ns;
}

void shard_writer_abort(ShardWriter *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    free(w->sizes);
    free(w->entries);
    free(w->dir);
    free(w);
}

// ---------------------------------------------------------------- reader

struct Shards {
    char *dir;
    cJSON *meta;
    int64_t n;
    uint32_t n_shards;
    ShardEntry *entries;
    uint64_t *sizes;  // of the shard files
    int *fds;
    char **names;  // shard file paths, for messages
};

#define RERUN "re-run ./prepare to rebuild it"

Shards *shards_open(const char *dir) {
    if (!dir_exists(dir)) fatal("%s: not a directory (prepared data: run ./prepare --out %s first)", dir, dir);
    Shards *s = xcalloc(1, sizeof *s);
    s->dir = xstrdup(dir);
    char path[4096], err[1024];
    path_join(path, sizeof path, dir, "meta.json");
    size_t len;
    char *text = file_read_all(path, &len);
    if (!text) fatal("%s: cannot read: %s (not a prepared data directory? run ./prepare)", path, strerror(errno));
    s->meta = json_parse(text, len, path, err, sizeof err);
    free(text);
    if (!s->meta) fatal("%s; " RERUN, err);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s->meta, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "svlm-shards") != 0)
        fatal("%s: not an svlm shard directory (format is not \"svlm-shards\"); " RERUN, path);
    int ver = json_get_int(s->meta, "version", path);
    if (ver != SHARDS_VERSION)
        fatal("%s: shard format version %d, this build reads version %d; " RERUN, path, ver, SHARDS_VERSION);
    // the same bounds index.bin is held to below (an unchecked cast of 1e300 is undefined)
    int64_t meta_n = json_get_i64(s->meta, "samples", 0, (int64_t)1 << 40, path);
    int64_t meta_ns = json_get_i64(s->meta, "shards", 1, 1 << 20, path);

    path_join(path, sizeof path, dir, "index.bin");
    uint8_t *ix = (uint8_t *)file_read_all(path, &len);
    if (!ix) fatal("%s: cannot read: %s; " RERUN, path, strerror(errno));
    if (len < SHARDS_INDEX_HEADER_BYTES + 8 || memcmp(ix, "SVLMIDX1", 8) != 0)
        fatal("%s: not an svlm index (bad magic or %zu bytes); " RERUN, path, len);
    if (get32(ix + 8) != SHARDS_VERSION)
        fatal("%s: index version %u, this build reads version %d; " RERUN, path, get32(ix + 8), SHARDS_VERSION);
    uint32_t ns = get32(ix + 12);
    uint64_t n = get64(ix + 16);
    if (get32(ix + 24) != SHARDS_ENTRY_BYTES || ns == 0 || ns > (1u << 20) || n > ((uint64_t)1 << 40) ||
        len != SHARDS_INDEX_HEADER_BYTES + (uint64_t)ns * 8 + n * SHARDS_ENTRY_BYTES + 8)
        fatal("%s: truncated or inconsistent index (%zu bytes for %" PRIu64 " samples in %u shards); " RERUN, path,
              len, n, ns);
    if (get64(ix + len - 8) != shards_fnv1a64(ix, len - 8, SHARDS_FNV_INIT))
        fatal("%s: index checksum mismatch (the file is damaged); " RERUN, path);
    if ((int64_t)n != meta_n || (int64_t)ns != meta_ns)
        fatal("%s: holds %" PRIu64 " samples in %u shards but meta.json says %" PRId64 " in %" PRId64 "; " RERUN, path,
              n, ns, meta_n, meta_ns);
    s->n = (int64_t)n;
    s->n_shards = ns;
    const uint8_t *p = ix + SHARDS_INDEX_HEADER_BYTES;
    uint64_t *sizes = s->sizes = xmalloc(ns * sizeof *sizes);
    for (uint32_t i = 0; i < ns; i++, p += 8) sizes[i] = get64(p);

    s->fds = xmalloc(ns * sizeof *s->fds);
    s->names = xcalloc(ns, sizeof *s->names);
    for (uint32_t i = 0; i < ns; i++) s->fds[i] = -1;
    for (uint32_t i = 0; i < ns; i++) {
        char sp[4096];
        shards_shard_name(sp, sizeof sp, dir, i);
        s->names[i] = xstrdup(sp);
        struct stat st;
        if (stat(sp, &st) != 0) fatal("%s: missing shard file (%s); " RERUN, sp, strerror(errno));
        if ((uint64_t)st.st_size != sizes[i])
            fatal("%s: %s (%lld bytes, the index expects %" PRIu64 "); " RERUN, sp,
                  (uint64_t)st.st_size < sizes[i] ? "truncated" : "wrong size", (long long)st.st_size, sizes[i]);
        int fd = open(sp, O_RDONLY);
        if (fd < 0) fatal("%s: cannot open: %s", sp, strerror(errno));
        uint8_t h[SHARDS_HEADER_BYTES];
        if (pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h || get32(h) != SKIPPABLE_MAGIC ||
            memcmp(h + 8, "SVLMSHRD", 8) != 0 || get32(h + 16) != SHARDS_VERSION || get32(h + 20) != i)
            fatal("%s: bad shard header (not shard %u of this format); " RERUN, sp, i);
        s->fds[i] = fd;
    }

    s->entries = xmalloc((size_t)(n ? n : 1) * sizeof *s->entries);
    for (uint64_t i = 0; i < n; i++, p += SHARDS_ENTRY_BYTES) {
        ShardEntry *e = &s->entries[i];
        e->shard = get32(p);
        e->flags = get32(p + 4);
        e->offset = get64(p + 8);
        e->csize = get32(p + 16);
        e->n_tokens = get32(p + 20);
        e->n_labelled = get32(p + 24);
        e->n_slot = get32(p + 28);
        if (e->shard >= ns)
            fatal("%s: entry %" PRIu64 " names shard %u of %u; " RERUN, path, i, e->shard, ns);
        if (e->offset < SHARDS_HEADER_BYTES || e->csize == 0 || e->offset + e->csize > sizes[e->shard])
            fatal("%s: entry %" PRIu64 " (offset %" PRIu64 ", %u bytes) lies beyond the end of %s (%" PRIu64
                  " bytes); " RERUN,
                  path, i, e->offset, e->csize, s->names[e->shard], sizes[e->shard]);
        int has_img = (e->flags & SHARDS_FLAG_IMAGE) != 0, ni = SHARDS_ENTRY_IMAGES(e);
        if (e->n_tokens == 0 || e->n_tokens > SHARDS_MAX_TOKENS || (e->flags & ~(SHARDS_FLAG_IMAGE | 0xff00u)) ||
            has_img != (ni > 0) || ni > SHARDS_MAX_IMAGES || has_img != (e->n_slot > 0) || e->n_slot > SHARDS_MAX_TOKENS)
            fatal("%s: entry %" PRIu64 " is inconsistent (%u tokens, %d images, slots of %u, flags %u); " RERUN, path, i,
                  e->n_tokens, ni, e->n_slot, e->flags);
    }
    free(ix);
    return s;
}

void shards_close(Shards *s) {
    if (!s) return;
    for (uint32_t i = 0; i < s->n_shards; i++) {
        if (s->fds[i] >= 0) close(s->fds[i]);
        free(s->names[i]);
    }
    free(s->fds);
    free(s->names);
    free(s->entries);
    free(s->sizes);
    cJSON_Delete(s->meta);
    free(s->dir);
    free(s);
}

int64_t shards_count(const Shards *s) { return s->n; }
uint32_t shards_n_shards(const Shards *s) { return s->n_shards; }
const ShardEntry *shards_entry(const Shards *s, int64_t i) {
    CHECK(i >= 0 && i < s->n, "sample %lld of %lld", (long long)i, (long long)s->n);
    return &s->entries[i];
}
const cJSON *shards_meta(const Shards *s) { return s->meta; }
const char *shards_dir(const Shards *s) { return s->dir; }

void shard_readbuf_free(ShardReadBuf *b) {
    if (b->dctx) ZSTD_freeDCtx(b->dctx);
    free(b->cbuf);
    free(b->rbuf);
    memset(b, 0, sizeof *b);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int shards_read(const Shards *s, int64_t i, ShardReadBuf *b, ShardRecord *rec, char *err, size_t errlen) {
    const ShardEntry *e = shards_entry(s, i);
    const char *sn = base_name(s->names[e->shard]);
    if (!b->dctx) {
        b->dctx = ZSTD_createDCtx();
        if (!b->dctx) fatal("out of memory creating a zstd context");
    }
    if (b->ccap < e->csize) {
        free(b->cbuf);
        b->ccap = e->csize;
        b->cbuf = xmalloc(b->ccap);
    }
    size_t got = 0;
    while (got < e->csize) {
        ssize_t r = pread(s->fds[e->shard], b->cbuf + got, e->csize - got, (off_t)(e->offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            snprintf(err, errlen, "%s: cannot read sample %lld: %s", sn, (long long)i, r < 0 ? strerror(errno) : "end of file");
            return -1;
        }
        got += (size_t)r;
    }
    unsigned long long cs = ZSTD_getFrameContentSize(b->cbuf, e->csize);
    size_t fsz = ZSTD_findFrameCompressedSize(b->cbuf, e->csize);
    uint64_t maxlen = SHARDS_RECORD_HEADER_BYTES + (uint64_t)e->n_tokens * 5 + SHARDS_MAX_ID_BYTES + SHARDS_MAX_NAME_BYTES +
                      SHARDS_MAX_IMAGE_BYTES;
    if (cs == ZSTD_CONTENTSIZE_ERROR || cs == ZSTD_CONTENTSIZE_UNKNOWN || cs > maxlen || ZSTD_isError(fsz) ||
        fsz != e->csize) {
        snprintf(err, errlen, "%s: sample %lld: corrupt zstd frame header", sn, (long long)i);
        return -1;
    }
    if (b->rcap < cs || !b->rbuf) {
        free(b->rbuf);
        b->rcap = cs ? cs : 1;
        b->rbuf = xmalloc(b->rcap);
    }
    size_t r = ZSTD_decompressDCtx(b->dctx, b->rbuf, b->rcap, b->cbuf, e->csize);
    if (ZSTD_isError(r) || r != cs) {
        snprintf(err, errlen, "%s: sample %lld: %s", sn, (long long)i,
                 ZSTD_isError(r) ? ZSTD_getErrorName(r) : "record shorter than its frame says");
        return -1;
    }
    char why[256];
    if (shards_record_parse(b->rbuf, r, rec, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s: sample %lld: %s", sn, (long long)i, why);
        return -1;
    }
    if ((uint32_t)rec->n_tokens != e->n_tokens || rec->n_images != SHARDS_ENTRY_IMAGES(e)) {
        snprintf(err, errlen, "%s: sample %lld: record (%d tokens, %d images) disagrees with the index (%u, %d)", sn,
                 (long long)i, rec->n_tokens, rec->n_images, e->n_tokens, SHARDS_ENTRY_IMAGES(e));
        return -1;
    }
    return 0;
}
