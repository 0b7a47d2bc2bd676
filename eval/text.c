// text.c: code points, Python's str character classes and case mapping, the caption tokeniser
// (eval/text.h).
#include "eval/text.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "data/unicode.h"
#include "eval/text_tables.h"

uint32_t *text_decode(const char *s, size_t n, int *count) {
    uint32_t *out = xmalloc((n + 1) * sizeof(uint32_t));
    int k = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int len = utf8_decode(p + i, n - i, &cp);
        if (len == 0) {
            cp = 0xFFFD;
            len = utf8_invalid_len(p + i, n - i);
        }
        out[k++] = cp;
        i += (size_t)len;
    }
    *count = k;
    return out;
}

char *text_encode(const uint32_t *cp, int n) {
    char *out = xmalloc((size_t)n * 4 + 1), *o = out;
    for (int i = 0; i < n; i++) o += utf8_encode(cp[i], o);
    *o = 0;
    return out;
}

int text_class(uint32_t cp) {
    int lo = 0, hi = text_class_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < text_class_ranges[mid][0]) hi = mid - 1;
        else if (cp > text_class_ranges[mid][1]) lo = mid + 1;
        else return (int)text_class_ranges[mid][2];
    }
    return TEXT_OTHER;
}

int text_lower_cp(uint32_t cp, uint32_t out[2]) {
    int lo = 0, hi = text_lower_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < text_lower_keys[mid]) hi = mid - 1;
        else if (cp > text_lower_keys[mid]) lo = mid + 1;
        else {
            const unsigned char *s = (const unsigned char *)text_lower_utf8[mid];
            size_t len = strlen((const char *)s);
            int k = 0;
            for (size_t i = 0; i < len && k < 2;) {
                int l = utf8_decode(s + i, len - i, &out[k]);
                CHECK(l > 0, "text_tables.c: bad UTF-8 in the lower table at U+%04X", cp);
                k++;
                i += (size_t)l;
            }
            return k;
        }
    }
    out[0] = cp;
    return 1;
}

uint32_t *text_lower(const uint32_t *cp, int n, int *out_n) {
    uint32_t *out = xmalloc(((size_t)n * 2 + 1) * sizeof(uint32_t));
    int k = 0;
    for (int i = 0; i < n; i++) k += text_lower_cp(cp[i], out + k);
    *out_n = k;
    return out;
}

int text_upper_len(uint32_t cp) {
    int lo = 0, hi = text_upper_len_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < text_upper_len_table[mid][0]) hi = mid - 1;
        else if (cp > text_upper_len_table[mid][0]) lo = mid + 1;
        else return (int)text_upper_len_table[mid][1];
    }
    return 1;
}

char *text_tokenize(const char *s, int *n_tokens) {
    // NFC on valid UTF-8 (invalid bytes are replaced first, as text_decode would)
    size_t len = strlen(s), vlen;
    char *valid = utf8_lossy(s, len, &vlen);
    char *nfc = NULL;
    size_t cap = 0, nlen = unicode_nfc(valid, vlen, &nfc, &cap);
    int n, m;
    uint32_t *cp = text_decode(nfc ? nfc : "", nlen, &n);
    uint32_t *lo = text_lower(cp, n, &m);
    // each kept code point is copied, each separator run becomes one space between tokens
    uint32_t *out = xmalloc(((size_t)m + 1) * sizeof(uint32_t));
    int k = 0, tokens = 0, in_token = 0;
    for (int i = 0; i < m; i++) {
        int c = text_class(lo[i]);
        int sep = c == TEXT_SPACE || c == TEXT_PUNCT;
        if (c == TEXT_PUNCT && (lo[i] == '.' || lo[i] == ',') && i > 0 && i + 1 < m &&
            text_class(lo[i - 1]) == TEXT_DIGIT && text_class(lo[i + 1]) == TEXT_DIGIT)
            sep = 0;  // a decimal point or thousands separator inside a number
        if (sep) {
            in_token = 0;
            continue;
        }
        if (!in_token) {
            if (tokens > 0) out[k++] = ' ';
            tokens++;
            in_token = 1;
        }
        out[k++] = lo[i];
    }
    char *res = text_encode(out, k);
    free(out);
    free(lo);
    free(cp);
    free(nfc);
    free(valid);
    if (n_tokens) *n_tokens = tokens;
    return res;
}
