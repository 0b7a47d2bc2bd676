// safetensors.h: reading (mmap, fully validated header) and writing of the safetensors format:
// 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, ...,
// "__metadata__": {str: str}}, then the tensor bytes. Every file svlm reads or writes goes
// through here: Hugging Face weights, fixtures, checkpoints, exports.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_NDTYPES } StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;  // byte offsets inside the data section
} StTensor;

typedef struct {
    char *path;
    uint8_t *map;       // the whole file, read-only
    size_t size;
    size_t data_start;  // 8 + header length
    int n;
    StTensor *tensors;  // sorted by name
    int n_meta;
    char **meta_keys, **meta_vals;
} StFile;

const char *st_dtype_name(StDtype d);
size_t st_dtype_size(StDtype d);
int64_t st_numel(const StTensor *t);

// Opens and validates path. Returns 0, or -1 with one line in err naming the file and the
// problem (bad header length, malformed JSON with its byte offset, unknown dtype, offsets out of
// range, overlapping or leaving holes, sizes that disagree with dtype x shape, duplicate names).
int st_open(StFile *f, const char *path, char *err, size_t errlen);
void st_open_or_die(StFile *f, const char *path);  // fatal() with the same line
void st_close(StFile *f);

const StTensor *st_find(const StFile *f, const char *name);  // NULL when absent
const char *st_meta(const StFile *f, const char *key);      // NULL when absent
const void *st_data(const StFile *f, const StTensor *t);
// converts F64/F32/F16/BF16 into n = numel floats; fatal() for other dtypes
void st_read_f32(const StFile *f, const StTensor *t, float *dst);
// converts I64/I32/I16/I8/U8 into int32; fatal() for values outside int32 or float dtypes
void st_read_i32(const StFile *f, const StTensor *t, int32_t *dst);
// "[2, 3, 4]" into buf
const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);

// ---- writing ----
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
// data is referenced, not copied: it must stay valid until st_writer_save
void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape,
                   const void *data);
void st_writer_meta(StWriter *w, const char *key, const char *value);
// Writes the file and fsyncs it. Returns 0, or -1 with the reason in err (e.g. disk full); a
// failed write leaves a partial file that the caller removes (checkpoints write to a temporary
// name and rename only on success).
int st_writer_save(StWriter *w, const char *path, char *err, size_t errlen);
void st_writer_free(StWriter *w);
