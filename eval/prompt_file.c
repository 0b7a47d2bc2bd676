// prompt_file.c: reads `./generate --batch FILE` (see prompt_file.h).
#include "eval/prompt_file.h"

#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"

static char *image_path(const char *image, const char *folder) {
    if (!folder || image[0] == '/') return xstrdup(image);
    size_t cap = strlen(folder) + strlen(image) + 2;
    char *p = xmalloc(cap);
    path_join(p, cap, folder, image);
    return p;
}

void prompt_file_load(PromptFile *f, const char *path, const char *image_folder) {
    memset(f, 0, sizeof *f);
    size_t len;
    char *text = file_read_all(path, &len);
    if (!text) fatal("%s: cannot read the prompt file", path);
    int line = 0;
    for (char *s = text; s && *s;) {
        char *e = strchr(s, '\n');
        if (e) *e = 0;
        line++;
        char *p = s;
        s = e ? e + 1 : NULL;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (!*p) continue;  // blank line
        char err[256];
        cJSON *o = json_parse(p, strlen(p), "line", err, sizeof err);
        if (!o) fatal("%s:%d: %s", path, line, err);
        if (!cJSON_IsObject(o)) fatal("%s:%d: want a JSON object {\"prompt\": ..., \"image\": ...}", path, line);
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt");
        const cJSON *im = cJSON_GetObjectItemCaseSensitive(o, "image");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        if (!cJSON_IsString(pr)) fatal("%s:%d: \"prompt\" %s", path, line, pr ? "must be a string" : "is missing");
        if (im && !cJSON_IsNull(im) && !cJSON_IsString(im)) fatal("%s:%d: \"image\" must be a string (a path)", path, line);
        f->items = xrealloc(f->items, (size_t)(f->n + 1) * sizeof(PromptItem));
        PromptItem *it = &f->items[f->n++];
        it->prompt = xstrdup(pr->valuestring);
        it->image = cJSON_IsString(im) && im->valuestring[0] ? image_path(im->valuestring, image_folder) : NULL;
        it->id = id ? cJSON_PrintUnformatted(id) : NULL;
        it->line = line;
        cJSON_Delete(o);
    }
    free(text);
    if (f->n == 0) fatal("%s: no requests (want one JSON object per line)", path);
}

void prompt_file_free(PromptFile *f) {
    for (int i = 0; i < f->n; i++) {
        free(f->items[i].prompt);
        free(f->items[i].image);
        free(f->items[i].id);  // cJSON_PrintUnformatted allocates with malloc
    }
    free(f->items);
    memset(f, 0, sizeof *f);
}
