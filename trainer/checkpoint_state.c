// checkpoint_state.c: state.json of a checkpoint, written and read back with every number
// range-checked (see checkpoint.h). A damaged state.json must be refused before resume acts on
// it: its step decides which later checkpoints are set aside, its metrics_bytes how much of
// metrics.jsonl is kept, so a wrong value there would cost the user good files.
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"
#include "trainer/checkpoint.h"

char *checkpoint_state_text(const TrainState *st, const char *signature) {
    cJSON *j = cJSON_CreateObject();
    char buf[32];
    cJSON_AddStringToObject(j, "format", "svlm-checkpoint-1");
    cJSON_AddNumberToObject(j, "step", (double)st->step);
    cJSON_AddNumberToObject(j, "total_steps", (double)st->total_steps);
    cJSON_AddNumberToObject(j, "data_epoch", (double)st->data.epoch);
    cJSON_AddNumberToObject(j, "data_index", (double)st->data.index);
    cJSON *rng = cJSON_AddArrayToObject(j, "rng");
    for (int i = 0; i < 4; i++) {  // as strings: JSON numbers lose bits above 2^53
        snprintf(buf, sizeof buf, "%" PRIu64, st->rng.s[i]);
        cJSON_AddItemToArray(rng, cJSON_CreateString(buf));
    }
    cJSON_AddNumberToObject(j, "world_size", st->world);
    cJSON_AddNumberToObject(j, "metrics_bytes", (double)st->metrics_bytes);
    cJSON_AddNumberToObject(j, "skipped_steps", (double)st->skipped_steps);
    cJSON_AddNumberToObject(j, "tokens", (double)st->tokens);
    cJSON_AddStringToObject(j, "data", st->data_desc);
    cJSON *sig = cJSON_Parse(signature);
    CHECK(sig, "signature is not JSON: %s", signature);
    cJSON_AddItemToObject(j, "model", sig);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}

// one line listing the top-level (and one level down) differences of two signatures
static void describe_diff(const cJSON *a, const cJSON *b, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (const cJSON *x = a->child; x && o < cap; x = x->next) {
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
        if (y && cJSON_Compare(x, y, 1)) continue;
        if (y && cJSON_IsObject(x) && cJSON_IsObject(y)) {
            for (const cJSON *xx = x->child; xx && o < cap; xx = xx->next) {
                const cJSON *yy = cJSON_GetObjectItemCaseSensitive(y, xx->string);
                if (yy && cJSON_Compare(xx, yy, 1)) continue;
                char *sx = cJSON_PrintUnformatted(xx), *sy = yy ? cJSON_PrintUnformatted(yy) : xstrdup("absent");
                o += snprintf(out + o, cap - o, "%s%s.%s: checkpoint %.60s, this run %.60s", o ? "; " : "", x->string,
                              xx->string, sx, sy);
                free(sx);
                free(sy);
            }
            continue;
        }
        if (cJSON_IsArray(x)) {
            o += snprintf(out + o, cap - o, "%s%s differ", o ? "; " : "", x->string);
            continue;
        }
        char *sx = cJSON_PrintUnformatted(x), *sy = y ? cJSON_PrintUnformatted(y) : xstrdup("absent");
        o += snprintf(out + o, cap - o, "%s%s: checkpoint %.60s, this run %.60s", o ? "; " : "", x->string, sx, sy);
        free(sx);
        free(sy);
    }
    if (!out[0]) snprintf(out, cap, "the model descriptions differ");
}

// the step of a directory named step_NNNNNNNN (its last path component), -1 for other names
static int64_t dir_step(const char *dir) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    const char *b = dir + n;
    while (b > dir && b[-1] != '/') b--;
    if (dir + n - b != 13 || strncmp(b, "step_", 5) != 0) return -1;
    int64_t s = 0;
    for (int i = 5; i < 13; i++) {
        if (b[i] < '0' || b[i] > '9') return -1;
        s = s * 10 + (b[i] - '0');
    }
    return s;
}

void checkpoint_read_state(const char *dir, TrainState *st, const char *signature) {
    char path[2100];
    snprintf(path, sizeof path, "%s/state.json", dir);
    if (!file_exists(path)) fatal("%s: not a checkpoint (no state.json)", dir);
    cJSON *j = json_load_file(path);
    if (!cJSON_IsObject(j)) fatal("%s: not a checkpoint state (the top level is not an object)", path);
    const char *format = json_get_str(j, "format", path);
    if (strcmp(format, "svlm-checkpoint-1") != 0) fatal("%s: unknown checkpoint format \"%.100s\"", path, format);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!cJSON_IsObject(model)) fatal("%s: missing \"model\" description", path);
    cJSON *mine = cJSON_Parse(signature);
    CHECK(mine, "signature is not JSON");
    if (!cJSON_Compare(model, mine, 1)) {
        char diff[1500];
        describe_diff(model, mine, diff, sizeof diff);
        fatal("%s: checkpoint is from another configuration (%s); use another out_dir or resume = never", dir, diff);
    }
    cJSON_Delete(mine);
    memset(st, 0, sizeof *st);
    // every count below is used as one (steps to run, a file length to keep, a sample to seek
    // to): each must be an exact integer in its range, or the checkpoint is refused here, before
    // resume moves or truncates anything
    const int64_t M = JSON_INT_MAX;
    st->total_steps = json_get_i64(j, "total_steps", 1, M, path);
    st->step = json_get_i64(j, "step", 0, st->total_steps, path);
    st->data.epoch = json_get_i64(j, "data_epoch", 0, M, path);
    st->data.index = json_get_i64(j, "data_index", 0, M, path);
    st->world = (int)json_get_i64(j, "world_size", 1, 1 << 20, path);
    st->metrics_bytes = json_get_i64(j, "metrics_bytes", 0, M, path);
    st->skipped_steps = json_get_i64(j, "skipped_steps", 0, st->step, path);
    st->tokens = json_get_i64(j, "tokens", 0, M, path);
    int64_t named = dir_step(dir);
    if (named >= 0 && named != st->step)
        fatal("%s: key \"step\" is %" PRId64 " but the directory is step_%08" PRId64, path, st->step, named);
    snprintf(st->data_desc, sizeof st->data_desc, "%s", json_get_str_opt(j, "data", "", path));
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(j, "rng");
    if (!cJSON_IsArray(rng) || cJSON_GetArraySize(rng) != 4) fatal("%s: \"rng\" must hold 4 values", path);
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_GetArrayItem(rng, i);
        char *end;
        if (!cJSON_IsString(e)) fatal("%s: \"rng\" values must be strings", path);
        errno = 0;
        st->rng.s[i] = strtoull(e->valuestring, &end, 10);
        if (!e->valuestring[0] || e->valuestring[0] == '-' || *end || errno)
            fatal("%s: bad rng value \"%.40s\"", path, e->valuestring);
    }
    cJSON_Delete(j);
}
