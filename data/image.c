// image.c: PNG (libpng) and JPEG (libjpeg-turbo) decoding from memory into 8-bit RGB with
// Pillow's Image.open(f).convert("RGB") semantics (see image.h for the rules).
// Every libpng / libjpeg error is caught with setjmp/longjmp and returned as a code and a reason;
// image dimensions are checked against the limits before anything proportional to them is
// allocated, by us or by the libraries.
#include "data/image.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>  // before jpeglib.h, which uses FILE
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "common/util.h"

void image_free(Image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int check_dims(uint64_t w, uint64_t h, const ImageDecodeOptions *o, char *err, size_t errlen) {
    int64_t max_pixels = o->max_pixels > 0 ? o->max_pixels : IMAGE_MAX_PIXELS_DEFAULT;
    uint64_t max_side = o->max_side > 0 ? (uint64_t)o->max_side : UINT64_MAX;
    if (w == 0 || h == 0) {
        set_err(err, errlen, "image has zero size (%llux%llu)", (unsigned long long)w, (unsigned long long)h);
        return IMAGE_ERR_CORRUPT;
    }
    if (w > max_side || h > max_side) {
        set_err(err, errlen, "image too large: %llux%llu, a side exceeds %llu", (unsigned long long)w,
                (unsigned long long)h, (unsigned long long)max_side);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (w * h > (uint64_t)max_pixels) {
        set_err(err, errlen, "image too large: %llux%llu = %llu pixels exceeds %lld", (unsigned long long)w,
                (unsigned long long)h, (unsigned long long)(w * h), (long long)max_pixels);
        return IMAGE_ERR_TOO_LARGE;
    }
    return 0;
}

// Pillow's alpha_composite of src (alpha a) over an opaque background d (exact integer formula)
static inline uint8_t composite(uint32_t s, uint32_t a, uint32_t d) {
    if (a == 0) return (uint8_t)d;
    uint32_t t = s * a * 128 + d * (255 - a) * 128 + (0x80 << 7);
    return (uint8_t)(((((t >> 8) + t) >> 8)) >> 7);
}

// ---------------------------------------------------------------- PNG

typedef struct {
    const uint8_t *data;
    size_t n, pos;
    char msg[200];
    int truncated;
} PngSrc;

static void png_read_cb(png_structp png, png_bytep dst, size_t len) {
    PngSrc *s = (PngSrc *)png_get_io_ptr(png);
    if (len > s->n - s->pos) {
        s->truncated = 1;
        png_error(png, "data ends before the image does");
    }
    memcpy(dst, s->data + s->pos, len);
    s->pos += len;
}

static void png_error_cb(png_structp png, png_const_charp msg) {
    PngSrc *s = (PngSrc *)png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

typedef struct {
    int color_type, depth, channels, w;
    int grey16;           // 16-bit grey in the file (alpha, if any, from tRNS): Pillow's I;16
    uint8_t pal[256][4];  // palette RGBA, zero (black) past the PLTE entries, alpha from tRNS
    const ImageDecodeOptions *opt;
} PngFmt;

// one row after libpng's transforms (packing to 1 byte per sample, gray 1/2/4 -> 8, optional
// tRNS -> alpha) into RGB
static void png_convert_row(const PngFmt *f, const uint8_t *src, uint8_t *dst) {
    const int w = f->w, comp = f->opt->composite_alpha;
    const uint8_t *bg = f->opt->bg;
    if (f->color_type == PNG_COLOR_TYPE_PALETTE) {
        for (int x = 0; x < w; x++) {
            const uint8_t *p = f->pal[src[x]];
            for (int c = 0; c < 3; c++) dst[3 * x + c] = comp ? composite(p[c], p[3], bg[c]) : p[c];
        }
        return;
    }
    const int bps = f->depth == 16 ? 2 : 1;  // bytes per sample; 16-bit samples are big-endian
    const int ch = f->channels;
    for (int x = 0; x < w; x++) {
        const uint8_t *p = src + (size_t)x * ch * bps;
        uint8_t v[4];
        if (ch <= 2) {
            // grey: 8-bit as is; 16-bit clipped to 255 as Pillow's I;16 -> RGB (min(v, 255));
            // 16-bit grey+alpha is opened by Pillow as RGBA from the high bytes (LA;16B)
            uint8_t g = bps == 1 ? p[0] : (f->grey16 ? (p[0] ? 255 : p[1]) : p[0]);
            v[0] = v[1] = v[2] = g;
            v[3] = ch == 2 ? p[bps] : 255;
        } else {
            for (int c = 0; c < ch; c++) v[c] = p[c * bps];  // 16-bit: the high byte (RGB;16B)
            if (ch == 3) v[3] = 255;
        }
        if (comp && (ch == 2 || ch == 4)) {
            for (int c = 0; c < 3; c++) dst[3 * x + c] = composite(v[c], v[3], bg[c]);
        } else {
            dst[3 * x + 0] = v[0];
            dst[3 * x + 1] = v[1];
            dst[3 * x + 2] = v[2];
        }
    }
}

static int decode_png(const uint8_t *bytes, size_t n, const ImageDecodeOptions *opt, Image *out, char *err,
                      size_t errlen) {
    // the IHDR dimensions, checked before libpng sees them (it has its own 1e6 limit)
    if (n >= 24 && memcmp(bytes + 12, "IHDR", 4) == 0) {
        uint64_t w = (uint64_t)bytes[16] << 24 | bytes[17] << 16 | bytes[18] << 8 | bytes[19];
        uint64_t h = (uint64_t)bytes[20] << 24 | bytes[21] << 16 | bytes[22] << 8 | bytes[23];
        int rc = check_dims(w, h, opt, err, errlen);
        if (rc) return rc;
    }
    PngSrc src = {.data = bytes, .n = n, .pos = 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_error_cb, png_warning_cb);
    if (!png) { set_err(err, errlen, "png: out of memory"); return IMAGE_ERR_NOMEM; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        set_err(err, errlen, "png: out of memory");
        return IMAGE_ERR_NOMEM;
    }
    // volatile: modified between setjmp and a possible longjmp
    uint8_t *volatile pixels = NULL;     // the RGB result
    uint8_t *volatile rowbuf = NULL;     // one decoded row (non-interlaced) or the whole image
    png_bytep *volatile rows = NULL;     // row pointers into rowbuf (interlaced)
    volatile int rc = 0;
    PngFmt *volatile fmt = NULL;
    if (setjmp(png_jmpbuf(png))) {
        if (!rc) {
            rc = src.truncated ? IMAGE_ERR_TRUNCATED : IMAGE_ERR_CORRUPT;
            set_err(err, errlen, "png: %s", src.msg);
        }
        free(pixels);
        free(rowbuf);
        free(rows);
        free(fmt);
        png_destroy_read_struct(&png, &info, NULL);
        return rc;
    }
    png_set_read_fn(png, &src, png_read_cb);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // our check_dims decides
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color_type, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color_type, &interlace, NULL, NULL);
    if ((rc = check_dims(w, h, opt, err, errlen)) != 0) png_longjmp(png, 1);

    fmt = calloc(1, sizeof *fmt);
    if (!fmt) { rc = IMAGE_ERR_NOMEM; set_err(err, errlen, "png: out of memory"); png_longjmp(png, 1); }
    fmt->opt = opt;
    fmt->w = (int)w;
    fmt->grey16 = color_type == PNG_COLOR_TYPE_GRAY && depth == 16;
    int has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte = NULL;
        int nplte = 0;
        if (!png_get_PLTE(png, info, &plte, &nplte)) {
            rc = IMAGE_ERR_CORRUPT;
            set_err(err, errlen, "png: palette image without PLTE");
            png_longjmp(png, 1);
        }
        for (int i = 0; i < 256; i++) fmt->pal[i][3] = 255;
        for (int i = 0; i < nplte && i < 256; i++) {
            fmt->pal[i][0] = plte[i].red;
            fmt->pal[i][1] = plte[i].green;
            fmt->pal[i][2] = plte[i].blue;
        }
        if (has_trns) {
            png_bytep ta = NULL;
            int nt = 0;
            png_color_16p tc = NULL;
            if (png_get_tRNS(png, info, &ta, &nt, &tc) && ta)
                for (int i = 0; i < nt && i < 256; i++) fmt->pal[i][3] = ta[i];
        }
        if (depth < 8) png_set_packing(png);
    } else {
        if (depth < 8) png_set_expand_gray_1_2_4_to_8(png);
        if (has_trns && opt->composite_alpha) png_set_tRNS_to_alpha(png);
    }
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    fmt->color_type = png_get_color_type(png, info);
    fmt->depth = png_get_bit_depth(png, info);
    fmt->channels = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (fmt->color_type == PNG_COLOR_TYPE_PALETTE ? (fmt->depth != 8 || fmt->channels != 1)
                                                  : (fmt->depth != 8 && fmt->depth != 16)) {
        rc = IMAGE_ERR_UNSUPPORTED;
        set_err(err, errlen, "png: unexpected layout after transforms (depth %d, %d channels)", fmt->depth,
                fmt->channels);
        png_longjmp(png, 1);
    }
    size_t need = (size_t)w * (size_t)fmt->channels * (fmt->depth == 16 ? 2 : 1);
    if (rowbytes < need) {
        rc = IMAGE_ERR_CORRUPT;
        set_err(err, errlen, "png: row size %zu smaller than expected %zu", rowbytes, need);
        png_longjmp(png, 1);
    }

    pixels = malloc((size_t)w * h * 3);
    if (!pixels) { rc = IMAGE_ERR_NOMEM; set_err(err, errlen, "png: out of memory for %ux%u", w, h); png_longjmp(png, 1); }
    if (passes == 1) {
        rowbuf = malloc(rowbytes);
        if (!rowbuf) { rc = IMAGE_ERR_NOMEM; set_err(err, errlen, "png: out of memory"); png_longjmp(png, 1); }
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(png, rowbuf, NULL);
            png_convert_row(fmt, rowbuf, pixels + (size_t)y * w * 3);
        }
    } else {
        rowbuf = malloc(rowbytes * h);
        rows = malloc(sizeof(png_bytep) * h);
        if (!rowbuf || !rows) { rc = IMAGE_ERR_NOMEM; set_err(err, errlen, "png: out of memory"); png_longjmp(png, 1); }
        for (png_uint_32 y = 0; y < h; y++) rows[y] = rowbuf + (size_t)y * rowbytes;
        png_read_image(png, rows);
        for (png_uint_32 y = 0; y < h; y++) png_convert_row(fmt, rows[y], pixels + (size_t)y * w * 3);
    }
    // like Pillow, chunks after the image data (and their absence) do not matter: no png_read_end
    free(rowbuf);
    free(rows);
    free(fmt);
    png_destroy_read_struct(&png, &info, NULL);
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = pixels;
    return 0;
}

// ---------------------------------------------------------------- JPEG

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    int truncated;
} JpegErr;

static void jpeg_error_exit_cb(j_common_ptr c) { longjmp(((JpegErr *)c->err)->jb, 1); }
static void jpeg_output_message_cb(j_common_ptr c) { (void)c; }  // warnings stay silent, as in Pillow

static void jsrc_init(j_decompress_ptr c) { (void)c; }
static void jsrc_term(j_decompress_ptr c) { (void)c; }
// the whole input is in the buffer from the start: being asked for more means it is truncated
static boolean jsrc_fill(j_decompress_ptr c) {
    ((JpegErr *)c->err)->truncated = 1;
    ERREXIT(c, JERR_INPUT_EOF);
    return FALSE;
}
static void jsrc_skip(j_decompress_ptr c, long nbytes) {
    if (nbytes <= 0) return;
    if ((size_t)nbytes > c->src->bytes_in_buffer) jsrc_fill(c);
    c->src->next_input_byte += nbytes;
    c->src->bytes_in_buffer -= (size_t)nbytes;
}

// a progressive JPEG can hold any number of scans; real ones have fewer than 20
#define JPEG_MAX_SCANS 1000
static void jpeg_progress_cb(j_common_ptr c) {
    if (c->is_decompressor && ((j_decompress_ptr)c)->input_scan_number > JPEG_MAX_SCANS) {
        longjmp(((JpegErr *)c->err)->jb, 2);
    }
}

static int decode_jpeg(const uint8_t *bytes, size_t n, const ImageDecodeOptions *opt, Image *out, char *err,
                       size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    JpegErr jerr;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr progress;
    memset(&jerr, 0, sizeof jerr);
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = jpeg_error_exit_cb;
    jerr.pub.output_message = jpeg_output_message_cb;
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile cmyk = NULL;
    volatile int rc = 0;
    volatile int created = 0;
    int jmp = setjmp(jerr.jb);
    if (jmp) {
        if (!rc) {
            if (jmp == 2) {
                rc = IMAGE_ERR_UNSUPPORTED;
                set_err(err, errlen, "jpeg: more than %d scans", JPEG_MAX_SCANS);
            } else {
                char msg[JMSG_LENGTH_MAX];
                jerr.pub.format_message((j_common_ptr)&cinfo, msg);
                rc = jerr.truncated ? IMAGE_ERR_TRUNCATED : IMAGE_ERR_CORRUPT;
                if (jerr.pub.msg_code == JERR_BAD_PRECISION || jerr.pub.msg_code == JERR_CONVERSION_NOTIMPL)
                    rc = IMAGE_ERR_UNSUPPORTED;
                set_err(err, errlen, "jpeg: %s", msg);
            }
        }
        free(pixels);
        free(cmyk);
        if (created) jpeg_destroy_decompress(&cinfo);
        return rc;
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    src.next_input_byte = bytes;
    src.bytes_in_buffer = n;
    src.init_source = jsrc_init;
    src.fill_input_buffer = jsrc_fill;
    src.skip_input_data = jsrc_skip;
    src.resync_to_restart = jpeg_resync_to_restart;
    src.term_source = jsrc_term;
    cinfo.src = &src;
    progress.progress_monitor = jpeg_progress_cb;
    cinfo.progress = &progress;
    // bound libjpeg's own allocations too (progressive coefficient buffers): it errors instead
    cinfo.mem->max_memory_to_use = 2000L * 1000 * 1000;

    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) {
        rc = IMAGE_ERR_CORRUPT;
        set_err(err, errlen, "jpeg: no image in the stream");
        longjmp(jerr.jb, 1);
    }
    if ((rc = check_dims(cinfo.image_width, cinfo.image_height, opt, err, errlen)) != 0) longjmp(jerr.jb, 1);
    int nc = cinfo.num_components;
    if (nc == 1 || nc == 3) {
        cinfo.out_color_space = JCS_RGB;  // grey is replicated, as Pillow's L -> RGB
    } else if (nc == 4) {
        cinfo.out_color_space = JCS_CMYK;  // YCCK is converted to CMYK by libjpeg, as in Pillow
    } else {
        rc = IMAGE_ERR_UNSUPPORTED;
        set_err(err, errlen, "jpeg: cannot handle %d-component images", nc);
        longjmp(jerr.jb, 1);
    }
    // libjpeg defaults as Pillow uses them: islow DCT, fancy upsampling, no scaling
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.scale_num = cinfo.scale_denom = 1;
    jpeg_start_decompress(&cinfo);
    const size_t w = cinfo.output_width, h = cinfo.output_height;
    if ((rc = check_dims(w, h, opt, err, errlen)) != 0) longjmp(jerr.jb, 1);
    pixels = malloc(w * h * 3);
    if (nc == 4) cmyk = malloc(w * 4);
    if (!pixels || (nc == 4 && !cmyk)) {
        rc = IMAGE_ERR_NOMEM;
        set_err(err, errlen, "jpeg: out of memory for %zux%zu", w, h);
        longjmp(jerr.jb, 1);
    }
    while (cinfo.output_scanline < h) {
        uint8_t *dst = pixels + (size_t)cinfo.output_scanline * w * 3;
        JSAMPROW row = nc == 4 ? cmyk : dst;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            rc = IMAGE_ERR_CORRUPT;
            set_err(err, errlen, "jpeg: no scanline returned");
            longjmp(jerr.jb, 1);
        }
        if (nc == 4) {
            // Pillow reads 4-component JPEGs as Adobe inverted CMYK ("CMYK;I": C = 255 - raw),
            // then cmyk2rgb: R = (255 - K) - MULDIV255(C, 255 - K), so with raw samples
            // (rc, rk): R = rk - MULDIV255(255 - rc, rk)
            for (size_t x = 0; x < w; x++) {
                const uint8_t *p = cmyk + 4 * x;
                int nk = p[3];
                for (int c = 0; c < 3; c++) {
                    int t = (255 - p[c]) * nk + 128;
                    dst[3 * x + c] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
                }
            }
        }
    }
    // like Pillow: what follows the last scanline (EOI, trailing data) is not read
    jpeg_destroy_decompress(&cinfo);
    free(cmyk);
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = pixels;
    return 0;
}

// ---------------------------------------------------------------- dispatch

int image_decode_ex(const uint8_t *bytes, size_t n, const ImageDecodeOptions *opt, Image *out, char *err,
                    size_t errlen) {
    static const ImageDecodeOptions defaults = {0};
    if (!opt) opt = &defaults;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (err && errlen) err[0] = 0;
    if (!bytes || n == 0) {
        set_err(err, errlen, "empty image data");
        return IMAGE_ERR_FORMAT;
    }
    if (n >= 8 && memcmp(bytes, "\x89PNG\r\n\x1a\n", 8) == 0) return decode_png(bytes, n, opt, out, err, errlen);
    if (n >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF)
        return decode_jpeg(bytes, n, opt, out, err, errlen);
    const char *what = NULL;
    if (n >= 6 && (memcmp(bytes, "GIF87a", 6) == 0 || memcmp(bytes, "GIF89a", 6) == 0)) what = "GIF";
    else if (n >= 12 && memcmp(bytes, "RIFF", 4) == 0 && memcmp(bytes + 8, "WEBP", 4) == 0) what = "WebP";
    else if (n >= 2 && memcmp(bytes, "BM", 2) == 0) what = "BMP";
    else if (n >= 4 && (memcmp(bytes, "II*\0", 4) == 0 || memcmp(bytes, "MM\0*", 4) == 0)) what = "TIFF";
    else if (n >= 12 && memcmp(bytes + 4, "ftyp", 4) == 0) what = "HEIF/AVIF";
    if (what) {
        set_err(err, errlen, "unsupported image format %s (only PNG and JPEG)", what);
        return IMAGE_ERR_UNSUPPORTED;
    }
    // the file's bytes are never shown: an image path may name any file (a key, /etc/shadow),
    // and this message goes to logs
    set_err(err, errlen, "not a PNG or JPEG image (%zu bytes, no known image signature)", n);
    return IMAGE_ERR_FORMAT;
}

int image_decode(const uint8_t *bytes, size_t n, Image *out, char *err, size_t errlen) {
    return image_decode_ex(bytes, n, NULL, out, err, errlen);
}

// ---- writing (synthetic data, benchmarks) ----

typedef struct {
    struct jpeg_error_mgr mgr;
    const char *path;
} JpegWriteErr;

static void jpeg_write_error(j_common_ptr c) {
    char msg[JMSG_LENGTH_MAX];
    c->err->format_message(c, msg);
    fatal("%s: libjpeg: %s", ((JpegWriteErr *)c->err)->path, msg);
}

void image_write_jpeg(const char *path, const uint8_t *rgb, int w, int h, int quality, int full_chroma) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    struct jpeg_compress_struct c;
    JpegWriteErr e;
    c.err = jpeg_std_error(&e.mgr);
    e.mgr.error_exit = jpeg_write_error;
    e.path = path;
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    if (full_chroma) c.comp_info[0].h_samp_factor = c.comp_info[0].v_samp_factor = 1;
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)3 * w * c.next_scanline);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) fatal("%s: write failed: %s", path, strerror(errno));
}
