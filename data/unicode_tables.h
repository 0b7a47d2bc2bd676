// unicode_tables.h: declarations of the tables that scripts/gen_unicode_tables.py generates into
// data/unicode_tables.c (used by data/unicode.c only).
#pragma once
#include <stdint.h>

extern const uint8_t unicode_ccc_index[0x1100];
extern const uint8_t unicode_ccc_blocks[][256];
extern const uint8_t unicode_nfc_flag_index[0x1100];
extern const uint8_t unicode_nfc_flag_blocks[][256];
extern const int unicode_decomp_count;
extern const uint32_t unicode_decomp_index[][3];
extern const uint32_t unicode_decomp_pool[];
extern const int unicode_comp_count;
extern const uint64_t unicode_comp_key[];
extern const uint32_t unicode_comp_value[];
