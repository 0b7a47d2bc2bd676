// text.h: Unicode text handling for the metrics: code point arrays, the character classes and
// case mapping of Python's str methods (str.isspace, re's \d, str.lower, len(str.upper())) from
// generated tables (eval/text_tables.c), and the caption tokeniser.
//
// Caption tokenisation (text_tokenize): the text is decoded as UTF-8 (invalid bytes become
// U+FFFD), NFC-normalised (so Vietnamese typed with combining diacritics and Korean typed as
// conjoining jamo compare equal to their precomposed forms), lowercased as Python's str.lower()
// (without the Final_Sigma rule: a capital sigma always lowers to U+03C3), then cut into tokens
// at whitespace (str.isspace) and at punctuation (Unicode general category P*: ASCII .,!?;:'"()-
// as well as 。、「」《》…, which are dropped), except that '.' and ',' between two decimal digits
// stay inside the token ("3.5", "1,000"). Symbols (S*: $ + = emoji) and letters of every script
// stay in tokens: Korean eojeol and Vietnamese syllables are the space-separated units. The
// tokens joined by single spaces are the "tokenised text" that pycocoevalcap's scorers take.
#pragma once
#include <stddef.h>
#include <stdint.h>

enum { TEXT_OTHER = 0, TEXT_SPACE = 1, TEXT_DIGIT = 2, TEXT_PUNCT = 3 };

// code points of UTF-8 text (n bytes; invalid subparts become U+FFFD); *count gets the length;
// malloc'd (never NULL)
uint32_t *text_decode(const char *s, size_t n, int *count);
// UTF-8 of cp[0..n) into a new NUL-terminated buffer
char *text_encode(const uint32_t *cp, int n);
int text_class(uint32_t cp);  // TEXT_*
// Python's str.lower() of one code point (without Final_Sigma) into out; returns how many code
// points (1 or 2)
int text_lower_cp(uint32_t cp, uint32_t out[2]);
// str.lower() of a code point array; malloc'd, *out_n gets the length
uint32_t *text_lower(const uint32_t *cp, int n, int *out_n);
int text_upper_len(uint32_t cp);  // len(chr(cp).upper())

// Caption tokens of s (see the top): the tokens joined by single spaces, NUL-terminated, malloc'd;
// "" when s has none. *n_tokens gets the count when not NULL.
char *text_tokenize(const char *s, int *n_tokens);
