// unicode.c: UTF-8 helpers, White_Space, and NFC normalisation (decompose, canonical order,
// compose, with Hangul handled algorithmically) over the generated tables in unicode_tables.c.
#include "data/unicode.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "data/unicode_tables.h"

// ---------------------------------------------------------------- UTF-8

// Well-formed sequences (Unicode Table 3-7): the lead byte decides the length and the range of
// the second byte; later bytes are 80..BF.
static int lead_info(unsigned char b, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b == 0xE0) { *lo = 0xA0; return 3; }
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return 3;
    if (b == 0xED) { *hi = 0x9F; return 3; }
    if (b == 0xF0) { *lo = 0x90; return 4; }
    if (b >= 0xF1 && b <= 0xF3) return 4;
    if (b == 0xF4) { *hi = 0x8F; return 4; }
    return 0;
}

int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned char b = s[0];
    if (b < 0x80) { *cp = b; return 1; }
    unsigned char lo, hi;
    int len = lead_info(b, &lo, &hi);
    if (len == 0 || (size_t)len > n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    uint32_t c;
    if (len == 2) c = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
    else if (len == 3) c = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    else c = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    *cp = c;
    return len;
}

int utf8_invalid_len(const unsigned char *s, size_t n) {
    unsigned char lo, hi;
    int len = lead_info(s[0], &lo, &hi);
    if (len == 0 || n < 2 || s[1] < lo || s[1] > hi) return 1;
    int i = 2;
    while (i < len && (size_t)i < n && (s[i] & 0xC0) == 0x80) i++;
    return i;  // the well-formed prefix that was cut short
}

int utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F);
    o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

size_t utf8_valid_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        // skip ASCII eight bytes at a time
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        if (s[i] < 0x80) { i++; continue; }
        uint32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        if (l == 0) return i;
        i += (size_t)l;
    }
    return n;
}

char *utf8_lossy(const char *str, size_t n, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)str;
    // each invalid byte grows to at most 3 bytes
    size_t cap = n + 1, len = 0;
    size_t bad = 0;
    for (size_t i = utf8_valid_prefix(str, n); i < n;) {
        uint32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        if (l == 0) { bad++; l = utf8_invalid_len(s + i, n - i); }
        i += (size_t)l;
    }
    cap += 2 * bad;
    char *out = xmalloc(cap);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        if (l > 0) {
            memcpy(out + len, s + i, (size_t)l);
            len += (size_t)l;
        } else {
            l = utf8_invalid_len(s + i, n - i);
            memcpy(out + len, "\xEF\xBF\xBD", 3);
            len += 3;
        }
        i += (size_t)l;
    }
    out[len] = 0;
    if (out_len) *out_len = len;
    return out;
}

// ---------------------------------------------------------------- properties

int unicode_is_whitespace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

int unicode_ccc(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    return unicode_ccc_blocks[unicode_ccc_index[cp >> 8]][cp & 0xFF];
}

static int nfc_flag(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    return unicode_nfc_flag_blocks[unicode_nfc_flag_index[cp >> 8]][cp & 0xFF];
}

// ---------------------------------------------------------------- NFC

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
       L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT };

int unicode_nfc_quick(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        // every code point below U+0300 is NFC-stable with class 0: lead bytes below 0xCC
        if (s[i] < 0xCC) { i++; continue; }
        uint32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        if (l == 0) { i++; continue; }  // not ours to judge: callers pass valid UTF-8
        if (nfc_flag(cp)) return 0;
        i += (size_t)l;
    }
    return 1;
}

static const uint32_t *find_decomp(uint32_t cp, int *len) {
    int lo = 0, hi = unicode_decomp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t k = unicode_decomp_index[mid][0];
        if (k == cp) {
            *len = (int)unicode_decomp_index[mid][2];
            return unicode_decomp_pool + unicode_decomp_index[mid][1];
        }
        if (k < cp) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

// composite of the pair, or 0 when it has none
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    uint64_t key = ((uint64_t)a << 21) | b;
    int lo = 0, hi = unicode_comp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint64_t k = unicode_comp_key[mid];
        if (k == key) return unicode_comp_value[mid];
        if (k < key) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

typedef struct { uint32_t *cp; size_t n, cap; } CpVec;

static void cp_push(CpVec *v, uint32_t c) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->cp = xrealloc(v->cp, v->cap * sizeof *v->cp);
    }
    v->cp[v->n++] = c;
}

static void decompose_into(CpVec *v, uint32_t c) {
    if (c >= S_BASE && c < S_BASE + S_COUNT) {
        uint32_t si = c - S_BASE;
        cp_push(v, L_BASE + si / N_COUNT);
        cp_push(v, V_BASE + (si % N_COUNT) / T_COUNT);
        if (si % T_COUNT) cp_push(v, T_BASE + si % T_COUNT);
        return;
    }
    int len;
    const uint32_t *d = c >= 0xC0 ? find_decomp(c, &len) : NULL;
    if (!d) { cp_push(v, c); return; }
    for (int i = 0; i < len; i++) cp_push(v, d[i]);
}

// NFC of one segment s[0..n) appended at *buf + at
static size_t nfc_segment(const char *str, size_t n, char **buf, size_t *cap, size_t at) {
    const unsigned char *s = (const unsigned char *)str;
    // a code point decomposes into at most 4, so short inputs fit on the stack and never grow
    uint32_t stack_cp[256];
    CpVec v = {0};
    if (n < 64) { v.cp = stack_cp; v.cap = 256; }
    // 1. full canonical decomposition
    for (size_t i = 0; i < n;) {
        uint32_t c;
        int l = utf8_decode(s + i, n - i, &c);
        if (l == 0) { c = 0xFFFD; l = 1; }
        decompose_into(&v, c);
        i += (size_t)l;
    }
    uint32_t *cp = v.cp;
    size_t m = v.n;
    // 2. canonical ordering: stable sort of every run of non-starters by combining class
    //    (insertion sort for short runs, a counting sort for long ones so Zalgo text stays linear)
    for (size_t i = 0; i < m;) {
        if (unicode_ccc(cp[i]) == 0) { i++; continue; }
        size_t a = i;
        while (i < m && unicode_ccc(cp[i]) != 0) i++;
        size_t len = i - a;
        if (len < 2) continue;
        if (len <= 32) {
            for (size_t k = a + 1; k < i; k++) {
                uint32_t x = cp[k];
                int cx = unicode_ccc(x);
                size_t j = k;
                while (j > a && unicode_ccc(cp[j - 1]) > cx) { cp[j] = cp[j - 1]; j--; }
                cp[j] = x;
            }
        } else {
            size_t count[257] = {0};
            uint32_t *tmp = xmalloc(len * sizeof *tmp);
            for (size_t k = a; k < i; k++) count[unicode_ccc(cp[k]) + 1]++;
            for (int c = 1; c <= 256; c++) count[c] += count[c - 1];
            for (size_t k = a; k < i; k++) tmp[count[unicode_ccc(cp[k])]++] = cp[k];
            memcpy(cp + a, tmp, len * sizeof *tmp);
            free(tmp);
        }
    }
    // 3. canonical composition
    if (m > 0) {
        size_t starter = 0, out = 1;
        int last_class = unicode_ccc(cp[0]);
        if (last_class != 0) last_class = 256;  // no starter yet: nothing may combine with it
        for (size_t i = 1; i < m; i++) {
            uint32_t c = cp[i];
            int cc = unicode_ccc(c);
            uint32_t comp = last_class == 256 ? 0 : compose_pair(cp[starter], c);
            if (comp && (last_class < cc || last_class == 0)) {
                cp[starter] = comp;
                continue;
            }
            if (cc == 0) starter = out;
            last_class = cc;
            cp[out++] = c;
        }
        m = out;
    }
    // 4. encode
    size_t need = at + m * 4 + 1;
    if (*cap < need) {
        *cap = need * 2;
        *buf = xrealloc(*buf, *cap);
    }
    size_t len = at;
    for (size_t i = 0; i < m; i++) len += (size_t)utf8_encode(cp[i], *buf + len);
    if (v.cp != stack_cp) free(v.cp);
    return len;
}

// Only the segments around code points that may change are normalised: a code point whose flag is
// 0 (NFC_QC = Yes and class 0) never combines with what precedes it, so the text can be cut
// before it, and runs of such code points are copied as they are.
size_t unicode_nfc(const char *str, size_t n, char **buf, size_t *cap) {
    const unsigned char *s = (const unsigned char *)str;
    if (*cap < n + 1) {
        *cap = n + 1;
        *buf = xrealloc(*buf, *cap);
    }
    size_t len = 0;     // output length
    size_t copied = 0;  // input consumed so far
    size_t safe = 0;    // start of the last code point before i that is a safe cut
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) { safe = i; i++; continue; }
        uint32_t cp;
        int l = utf8_decode(s + i, n - i, &cp);
        if (l == 0) { safe = i; i++; continue; }
        if (cp < 0x300 || !nfc_flag(cp)) { safe = i; i += (size_t)l; continue; }
        // a segment from the last safe cut to the next one
        size_t end = i + (size_t)l;
        while (end < n) {
            if (s[end] < 0xCC) break;  // below U+0300 (s[end] starts a code point)
            int l2 = utf8_decode(s + end, n - end, &cp);
            if (l2 == 0 || !nfc_flag(cp)) break;
            end += (size_t)l2;
        }
        size_t start = safe < copied ? copied : safe;
        if (*cap < len + (start - copied) + 1) {
            *cap = (len + (start - copied) + 1) * 2;
            *buf = xrealloc(*buf, *cap);
        }
        memcpy(*buf + len, s + copied, start - copied);
        len += start - copied;
        len = nfc_segment(str + start, end - start, buf, cap, len);
        copied = end;
        safe = end;
        i = end;
    }
    if (*cap < len + (n - copied) + 1) {
        *cap = len + (n - copied) + 1;
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf + len, s + copied, n - copied);
    len += n - copied;
    return len;
}
