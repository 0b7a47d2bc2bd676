// mc.c: multiple-choice prompts, rotations and answer parsing (eval/mc.h).
#include "eval/mc.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"
#include "eval/vqa_metrics.h"

char *mc_prompt(const char *hint, const char *question, char *const *options, const int *order, int n,
                const char *instruction) {
    size_t len = (hint ? strlen(hint) + 1 : 0) + strlen(question) + (instruction ? strlen(instruction) + 1 : 0) + 1;
    for (int i = 0; i < n; i++) len += strlen(options[order[i]]) + 5;
    char *p = xmalloc(len), *o = p;
    if (hint) o += sprintf(o, "%s\n", hint);
    o += sprintf(o, "%s", question);
    for (int i = 0; i < n; i++) o += sprintf(o, "\n%c. %s", 'A' + i, options[order[i]]);
    if (instruction) sprintf(o, "\n%s", instruction);
    return p;
}

void mc_rotation(int *order, int n, int r) {
    for (int i = 0; i < n; i++) order[i] = (i + r) % n;
}

static int is_alpha(char c) { return isalpha((unsigned char)c) || (unsigned char)c >= 0x80; }

// case-insensitive search for needle in hay (ASCII case only; both compacted)
static const char *find_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    if (!n) return NULL;
    for (const char *h = hay; *h; h++)
        if (!strncasecmp(h, needle, n)) return h;
    return NULL;
}

int mc_parse_answer(const char *text, char *const *options, const int *order, int n) {
    const char *s = text;
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '(' || *s == '*') s++;
    const char *prefixes[] = {"answer:", "answer is", "answer", "option"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (!strncasecmp(s, prefixes[i], strlen(prefixes[i]))) {
            s += strlen(prefixes[i]);
            while (*s == ' ' || *s == ':' || *s == '(') s++;
            break;
        }
    // option letters standing alone anywhere in the text
    int found = -1, several = 0;
    for (const char *p = text; *p; p++)
        if (*p >= 'A' && *p < 'A' + n && (p == text || !is_alpha(p[-1])) && !is_alpha(p[1])) {
            if (found >= 0 && found != *p - 'A') several = 1;
            found = *p - 'A';
        }
    // 1. a leading letter, unless another letter stands alone too ("A or B")
    if (*s >= 'A' && *s < 'A' + n && !is_alpha(s[1])) return several ? -1 : *s - 'A';
    // 2. exactly one standalone letter of the options
    if (found >= 0) return several ? -1 : found;
    // 3. one option's text
    char *t = answer_compact(text);
    int hit = -1, hits = 0;
    for (int i = 0; i < n; i++) {
        char *o = answer_compact(options[order[i]]);
        if (!strcmp(t, o)) {
            free(o);
            free(t);
            return i;
        }
        if (find_ci(t, o)) {
            hit = i;
            hits++;
        }
        free(o);
    }
    free(t);
    return hits == 1 ? hit : -1;
}
