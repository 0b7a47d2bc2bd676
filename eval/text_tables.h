// text_tables.h: declarations of the tables scripts/gen_text_tables.py generates into
// eval/text_tables.c (used by eval/text.c only).
#pragma once
#include <stdint.h>

extern const char text_tables_version[];
extern const int text_class_count;
extern const uint32_t text_class_ranges[][3];  // {first, last, class}, sorted, disjoint
extern const int text_lower_count;
extern const uint32_t text_lower_keys[];         // sorted
extern const char text_lower_utf8[][8];        // str.lower() of text_lower_cp[i], NUL-terminated
extern const int text_upper_len_count;
extern const uint32_t text_upper_len_table[][2];     // {code point, len(str.upper())}, sorted
