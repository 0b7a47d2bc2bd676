// tokenizer.h: byte-level BPE tokenizer read from a Hugging Face tokenizer.json, encoding and
// decoding exactly as the `tokenizers` library does (Qwen2, HyperCLOVAX, GPT-2, cl100k-style).
//
// Pipeline of tokenizer_encode, as in tokenizers' Tokenizer::encode:
//   1. added tokens with "normalized": false are found in the raw text (leftmost-longest match,
//      honouring single_word / lstrip / rstrip); special ones only when allow_special is set
//   2. each remaining piece is normalised (NFC or none) and searched for the added tokens with
//      "normalized": true
//   3. pre-tokenizer: Sequence of Split (regex or string, any behavior, invert), Digits and
//      ByteLevel (add_prefix_space, use_regex; must come last)
//   4. model BPE: merges applied lowest rank first, per-word results cached
// Supported in tokenizer.json: normalizer null | NFC | Sequence of NFC; pre_tokenizer null |
// Split | Digits | ByteLevel | Sequence of those; model BPE (vocab + merges as "a b" strings or
// ["a", "b"] pairs, ignore_merges, unk_token, fuse_unk, byte_fallback,
// continuing_subword_prefix, end_of_word_suffix); decoder null | ByteLevel; post_processor is
// read and reported only (chat templates add special tokens explicitly). Anything else is a
// fatal() error naming the file and the unsupported feature. Added tokens are numbered as
// tokenizers numbers them (list order after the model vocab, ignoring the ids the file gives,
// with a warning when those differ). Split regexes run on PCRE2 (UTF + UCP + JIT), rewritten
// where Oniguruma, which tokenizers uses, means something else (\s \w \h \p{Script}); Unicode
// data is 14.0 (PCRE2 10.42, Python 3.11's unicodedata), tokenizers' Oniguruma is newer: code
// points assigned after Unicode 14 may be split differently.
//
// Thread safety: after tokenizer_load returns, every function may be called concurrently from
// any number of threads on the same Tokenizer (the word cache inside is sharded and locked).
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Tokenizer Tokenizer;

// Reads path (a tokenizer.json). Any problem (missing file, bad JSON with its byte offset,
// missing model, unsupported model type or component, merge naming an unknown token...) is a
// fatal() with one line naming the file.
Tokenizer *tokenizer_load(const char *path);
void tokenizer_free(Tokenizer *t);

// Encodes text (len bytes; need not be NUL-terminated). Invalid UTF-8 is first replaced by
// U+FFFD (one per maximal invalid subpart). allow_special = 0 treats special added tokens
// (e.g. "<|im_end|>" typed by a user) as plain text, like tokenizers' encode_special_tokens;
// non-special added tokens are matched either way. The post-processor adds nothing.
// *ids_out gets a malloc'd array (free it; never NULL) and the count is returned.
// A text the pre-tokenizer regex cannot match within PCRE2's match and heap limits (possible for
// hostile text and some patterns) is a fatal() naming the tokenizer.
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids_out);
// The same, for callers that skip such a text instead (./prepare: one sample's failure is a
// counted skip): returns -1 with *ids_out NULL and the reason in err.
int tokenizer_encode_checked(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids_out,
                             char *err, size_t errlen);

// Decodes ids to a malloc'd NUL-terminated UTF-8 string (free it); *len_out (may be NULL) gets
// its length, which can be less than strlen's answer if a token decodes to a NUL byte. With the
// ByteLevel decoder, bytes that are not valid UTF-8 become U+FFFD exactly as tokenizers'
// String::from_utf8_lossy. Ids that are no token are skipped (as tokenizers does); skip_special
// drops special added tokens.
char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, int skip_special, size_t *len_out);

// id of a token (added tokens first, then the model vocab), or -1
int tokenizer_token_id(const Tokenizer *t, const char *token);
// token string of an id, or NULL (valid until tokenizer_free)
const char *tokenizer_id_to_token(const Tokenizer *t, int id);
// 1 if id is a special added token
int tokenizer_is_special(const Tokenizer *t, int id);
// one more than the largest id in the vocab and added tokens (rows the embedding must have at
// least; tokenizers' get_vocab_size counts entries instead, the same for every real tokenizer)
int tokenizer_vocab_size(const Tokenizer *t);
// "type" of the post_processor in the file ("none" when null); reported, never applied
const char *tokenizer_post_processor(const Tokenizer *t);

#ifdef __cplusplus
}
#endif
