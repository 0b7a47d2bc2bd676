// lora.c: LoRA settings: scaling, target lists, and peft's adapter_config.json.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/json.h"
#include "common/util.h"
#include "model/llm.h"

float lora_scaling(const LoraConfig *l) {
    if (l->r <= 0) return 0.0f;
    return l->rslora ? l->alpha / sqrtf((float)l->r) : l->alpha / (float)l->r;
}

unsigned lora_targets_parse(const char *list) {
    if (strcmp(list, "all") == 0) return (1u << N_PROJ) - 1;
    unsigned t = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && *p == ' ') p++, n--;
        while (n && p[n - 1] == ' ') n--;
        int found = -1;
        for (int i = 0; i < N_PROJ; i++) {
            size_t short_len = strlen(proj_names[i]) - 5;  // "q" of "q_proj"
            if ((n == strlen(proj_names[i]) && strncmp(p, proj_names[i], n) == 0) ||
                (n == short_len && strncmp(p, proj_names[i], n) == 0))
                found = i;
        }
        if (found < 0) fatal("lora_targets: \"%.*s\" is not one of q,k,v,o,gate,up,down", (int)n, p);
        t |= 1u << found;
        if (!e) break;
        p = e + 1;
    }
    if (!t) fatal("lora_targets: empty list");
    return t;
}

void lora_config_load_peft(LoraConfig *l, const char *dir) {
    char path[2048];
    path_join(path, sizeof path, dir, "adapter_config.json");
    if (!file_exists(path)) fatal("%s: missing (a peft adapter directory needs adapter_config.json)", path);
    cJSON *root = json_load_file(path);
    memset(l, 0, sizeof *l);
    l->r = json_get_int(root, "r", path);
    double alpha = json_get_num(root, "lora_alpha", path), dropout = json_get_num_opt(root, "lora_dropout", 0.0, path);
    if (!(alpha > -1e30 && alpha < 1e30)) fatal("%s: key \"lora_alpha\" must be a finite number, got %g", path, alpha);
    if (!(dropout >= 0 && dropout < 1)) fatal("%s: key \"lora_dropout\" must be in [0, 1), got %g", path, dropout);
    l->alpha = (float)alpha;
    l->rslora = json_get_bool_opt(root, "use_rslora", 0, path);
    l->dropout = (float)dropout;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (cJSON_IsString(t)) {
        l->targets = lora_targets_parse(t->valuestring);
    } else if (cJSON_IsArray(t)) {
        for (const cJSON *e = t->child; e; e = e->next) {
            if (!cJSON_IsString(e)) fatal("%s: target_modules must hold strings", path);
            l->targets |= lora_targets_parse(e->valuestring);
        }
    } else {
        fatal("%s: target_modules must be a list of module names", path);
    }
    if (l->r <= 0) fatal("%s: r must be positive", path);
    const char *bias = json_get_str_opt(root, "bias", "none", path);
    if (strcmp(bias, "none") != 0) fatal("%s: bias = \"%s\" is not supported (none)", path, bias);
    cJSON_Delete(root);
}
