// prompt_file.h: the input of `./generate --batch FILE`: JSONL, one request per line,
//   {"prompt": "text", "image": "path" (optional; absent, null or "": text only), "id": any (optional)}
// Blank lines are ignored. A line that is not a JSON object, lacks "prompt", or has a field of the
// wrong type is a one-line fatal() naming FILE:LINE. Relative image paths are joined to
// image_folder when it is not NULL; whether the image exists is checked when it is read.
#pragma once

typedef struct {
    char *prompt;
    char *image;  // NULL: text only
    char *id;     // the "id" field as JSON text (a string keeps its quotes); NULL when absent
    int line;     // 1-based line of the file
} PromptItem;

typedef struct {
    PromptItem *items;
    int n;
} PromptFile;

void prompt_file_load(PromptFile *f, const char *path, const char *image_folder);
void prompt_file_free(PromptFile *f);
