// shards.h: the on-disk format that ./prepare writes and the loader reads: zstd-compressed
// records of tokenised samples (token ids, loss mask, image slot, sample id, image file name and
// the image's original bytes) in shard files, an index for random access by sample, and meta.json.
//
// A prepared directory holds:
//   meta.json        format version, counts, the settings that shaped the tokens, skip counts
//   index.bin        one entry per sample: shard, offset, compressed size, token counts, flags
//   shard-NNNNN.zst  a 24-byte header (a zstd skippable frame, so `zstd -dc` reads the file)
//                    followed by one zstd frame per record, each with its content checksum
//
// index.bin (little-endian):
//   header  32 bytes: "SVLMIDX1", u32 version, u32 n_shards, u64 n_samples, u32 entry_size (32),
//           u32 reserved (0)
//   u64 size of each shard file, n_shards of them
//   entries n_samples x 32 bytes: u32 shard, u32 flags (bit 0: has images; bits 8-15: their
//           number), u64 offset, u32 compressed size, u32 n_tokens (text tokens, slots not
//           counted), u32 n_labelled (positions with a target once the slots are expanded),
//           u32 n_slot (the positions the expanded image slots take, all images together)
//   trailer u64 FNV-1a 64 of every byte before it
// Record (the decompressed content of one frame, little-endian):
//   "SVRC", u32 n_tokens, u32 n_images, u32 id_len, then per image 20 bytes: i32 pos, u16 rows,
//   u16 cols, u32 thumb (0 or 1), u32 name_len, u32 image_len; then i32 ids[n_tokens],
//   u8 mask[n_tokens], id bytes, then per image its name bytes and its file's bytes
// The ids never hold a token for an image slot: an image's pos is the index in ids before which
// the loader inserts its slot (data/image_slot.h), for the grid (rows x cols tiles + thumbnail,
// data/tiling.h) ./prepare computed from the image's size; positions never decrease.
// Version 1 (one image_pos per record) is refused with a line saying to re-run ./prepare.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#define SHARDS_VERSION 2
#define SHARDS_HEADER_BYTES 24         // shard file header (skippable frame)
#define SHARDS_INDEX_HEADER_BYTES 32
#define SHARDS_ENTRY_BYTES 32
#define SHARDS_RECORD_HEADER_BYTES 16  // then 20 bytes per image
#define SHARDS_IMAGE_HEADER_BYTES 20
#define SHARDS_MAX_IMAGES 16            // per sample
// Bounds on one record, shared by the writer (./prepare skips a sample over them) and the reader
// (shards_record_parse refuses a record over them)
#define SHARDS_MAX_TOKENS (1 << 24)
#define SHARDS_MAX_IMAGE_BYTES (256u << 20)
#define SHARDS_MAX_ID_BYTES (1u << 20)    // the sample id
#define SHARDS_MAX_NAME_BYTES (1u << 20)  // the image file name

typedef struct {
    uint32_t shard;
    uint32_t flags;  // SHARDS_FLAG_IMAGE
    uint64_t offset;
    uint32_t csize;
    uint32_t n_tokens;
    uint32_t n_labelled;
    uint32_t n_slot;
} ShardEntry;

#define SHARDS_FLAG_IMAGE 1u
#define SHARDS_ENTRY_IMAGES(e) ((int)(((e)->flags >> 8) & 0xffu))  // the sample's images

// one image of a record
typedef struct {
    int pos;              // index in ids before which its slot goes
    int rows, cols, thumb;  // its grid (data/tiling.h ImageGrid)
    const char *name;     // not NUL-terminated: name_len bytes
    uint32_t name_len;
    const uint8_t *bytes; // the image file
    uint32_t len;
} ShardImage;

// one decoded record; pointers refer to the buffer it was decoded from
typedef struct {
    int n_tokens;
    int n_images;
    ShardImage images[SHARDS_MAX_IMAGES];
    const int32_t *ids;  // 4-byte aligned when the record buffer is (shards_read's is)
    const uint8_t *mask;
    const char *id;  // not NUL-terminated: id_len bytes
    uint32_t id_len;
} ShardRecord;

uint64_t shards_fnv1a64(const void *data, size_t n, uint64_t h);  // h: SHARDS_FNV_INIT to start
#define SHARDS_FNV_INIT 0xcbf29ce484222325ULL
// FNV-1a 64 of a whole file's bytes; 0 with errno set when it cannot be read
int shards_hash_file(const char *path, uint64_t *out);
void shards_shard_name(char *dst, size_t cap, const char *dir, uint32_t shard);

// ---- records ----

// Serialises rec (the fields above, ids and mask of n_tokens) into a malloc'd buffer.
uint8_t *shards_record_pack(const ShardRecord *rec, size_t *len);
// Checks and decodes a record buffer (as produced by shards_record_pack). Returns 0, or -1 with
// a reason in err. rec points into buf (ids are 4-byte aligned when buf is).
int shards_record_parse(const uint8_t *buf, size_t len, ShardRecord *rec, char *err, size_t errlen);

// ---- writing ----

typedef struct ShardWriter ShardWriter;
// Creates the first shard in dir (which must exist). A new shard starts when the current one
// would pass shard_bytes. Write errors are fatal() with the file name and the system's reason.
ShardWriter *shard_writer_open(const char *dir, int64_t shard_bytes);
// Appends one compressed frame (from shards_compress) with its entry (shard and offset are
// filled in here). Returns the sample's index.
int64_t shard_writer_add(ShardWriter *w, const uint8_t *frame, size_t n, const ShardEntry *entry);
// Closes the last shard (fsync) and writes index.bin. Returns the number of shards.
uint32_t shard_writer_finish(ShardWriter *w, uint64_t *index_hash);
void shard_writer_abort(ShardWriter *w);  // closes files without writing the index
int64_t shard_writer_bytes(const ShardWriter *w);  // bytes written to shards so far

// Compresses a record into one zstd frame with its content checksum. cctx: a ZSTD_CCtx* owned
// by the calling thread (shards_cctx_new), so several threads compress at once.
void *shards_cctx_new(int level);
void shards_cctx_free(void *cctx);
uint8_t *shards_compress(void *cctx, const uint8_t *raw, size_t n, size_t *out_len);

// ---- reading ----

typedef struct Shards Shards;
// Opens a prepared directory: reads meta.json and index.bin and validates them (magic, version,
// hash, every entry inside its shard file, shard files present with the recorded sizes).
// Anything wrong is a one-line fatal() naming the file and saying to re-run prepare.
Shards *shards_open(const char *dir);
void shards_close(Shards *s);
int64_t shards_count(const Shards *s);
uint32_t shards_n_shards(const Shards *s);
const ShardEntry *shards_entry(const Shards *s, int64_t i);
const cJSON *shards_meta(const Shards *s);  // the parsed meta.json
const char *shards_dir(const Shards *s);

// A per-thread read buffer (compressed bytes and the decompressed record).
typedef struct {
    void *dctx;  // ZSTD_DCtx*
    uint8_t *cbuf, *rbuf;
    size_t ccap, rcap;
} ShardReadBuf;
void shard_readbuf_free(ShardReadBuf *b);
// Reads, decompresses (checksum verified) and parses record i into *rec (pointing into buf).
// Returns 0, or -1 with a one-line reason in err (I/O error, corrupt frame, checksum mismatch,
// record inconsistent with the index): the caller counts and skips the sample. Thread-safe
// (pread) with one ShardReadBuf per thread.
int shards_read(const Shards *s, int64_t i, ShardReadBuf *buf, ShardRecord *rec, char *err, size_t errlen);
