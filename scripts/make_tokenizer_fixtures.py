#!/usr/bin/env python3
"""Generate the tokenizer parity fixtures that tests/test_tokenizer.c checks data/tokenizer.c against.

    python3 scripts/make_tokenizer_fixtures.py [--out tests/fixtures/tokenizer] [--corpus data/corpus]

Needs only the Hugging Face `tokenizers` package (tested with 0.23). Trains two byte-level BPE
tokenizers on the multilingual corpus that svlm ships in data/corpus/ and derives two more from
them by swapping the pipeline around the same vocab, then writes each as a tokenizer.json:

  qwen2.json  NFC + Sequence[Split(Qwen2 regex, Isolated), ByteLevel(no prefix, no regex)],
              merges in the legacy "a b" spelling, post_processor ByteLevel; added tokens: the
              specials <|endoftext|> <|im_start|> <|im_end|> <|endofturn|> <image>, the
              non-special <tool_call> (matched on raw text) and café (normalized: matched after NFC)
  cl100k.json no normalizer, Split(cl100k regex, Isolated) + ByteLevel(no regex), merges as
              ["a", "b"] pairs, ignore_merges true (as Llama 3); added tokens: the specials,
              <mask> (lstrip + rstrip) and [WORD] (single_word)
  gpt2.json   cl100k's vocab with GPT-2's pipeline: ByteLevel(add_prefix_space, use_regex)
  mixed.json  qwen2's vocab with Sequence[NFC] and a pre-tokenizer that exercises every Split
              behavior, invert, a String pattern, Digits, and the regex escapes where Oniguruma
              and PCRE2 differ (\s \w \W \h \p{Hangul} \p{Letter}), ending in
              ByteLevel(add_prefix_space)

and expected.json with what `tokenizers` itself returns for them:
  texts          held-out texts (not in the corpus): Korean and Vietnamese in NFC and NFD, odd
                 whitespace, emoji, code, numbers, specials embedded and half-written, ...
  random_texts   seeded random strings drawn from a pool of troublesome characters
  per tokenizer: ids with specials recognised and with encode_special_tokens (plain), decode of
                 those ids with and without skip_special_tokens, whether decode(encode(text))
                 gives the text back (NFC'd where the tokenizer normalises); FNV-1a 64 hashes (over the ids as little-endian uint32)
                 of the random texts and of every corpus file encoded whole; decode of arbitrary
                 id sequences, including ones that are invalid UTF-8 and ids that are no token
                 (decoded strings holding a NUL byte come with a *_hex copy for C readers).

Rerunning rewrites the same files (training and everything else is deterministic).
"""
import argparse
import glob
import json
import os
import random
import unicodedata

from pyreq import require  # noqa: E402

require("tokenizers")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CL100K_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|endofturn|>", "<image>"]
VOCAB = 3000


def nfd(s):
    return unicodedata.normalize("NFD", s)


# Held-out texts: none of these sentences is in data/corpus.
TEXTS = [
    "",
    " ",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "I'd've thought y'all'd know. DON'T SHOUT, it'S fine; WE'LL go. she'll, they've, I'M",
    "it'ſ a long s, and the Kelvin sign: 'K 'k",
    "Prices rose 12.5% to $1,234,567.89 on 2031-12-24; call +1 (800) 555-0100 x1234.",
    "99999999999999999999999999999999 digits, 0.000000001 and 6.674e-11 and 1e100",
    "서울의 가을 하늘은 높고 맑다. 우리는 한강 공원에서 자전거를 탔다.",
    nfd("서울의 가을 하늘은 높고 맑다. 조합형 자모로 적은 문장입니다."),
    "\u1112\u1161\u11ab\u1100\u1173\u11af jamo spelled out, and an old one: \u1113\u1161 \u1100\u1161\u11a8 \ua960\u1161",
    "Mùa thu Hà Nội trời trong xanh, lá vàng rơi trên phố cổ.",
    nfd("Mùa thu Hà Nội trời trong xanh, viết ở dạng tổ hợp."),
    "a\u0323\u0302 a\u0302\u0323 e\u0301\u0302 o\u031b\u0303 u\u031b\u0300 \u1ead\u1ec7",  # marks in either order
    "Zoë and Chloë ate crème brûlée at the café in Köln; ﬁ ligature, Å vs \u212b, \u2126 ohm",
    "cafe\u0301 and café and CAFÉ and cafés",
    "emoji 🧑🏾‍💻 coding, 👨‍👩‍👧 family, 🏳️‍⚧️ flag, 👍🏻👍🏼👍🏽👍🏾👍🏿 and 🤷‍♀️🤷🏽‍♂️",
    "tabs\tand\t\tmore\ttabs\t",
    "line one\r\nline two\r\n\r\n\r\nafter blank\n\n\nunix blanks\r\rold mac",
    "nbsp\u00a0\u00a0here, ideographic\u3000\u3000there, thin\u2009and\u202fnarrow, ogham\u1680mark",
    "mongolian vowel separator\u180ehere and next line\u0085and zero width\u200bspace\ufeffbom",
    "    \n\t\n   \t   ",
    "def f(x):\n\treturn {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    "int main(void) { for (int i = 0; i < 10; ++i) printf(\"%d\\n\", i); return 0; }",
    "中文也会出现：你好，世界！ العربية: مرحبا بالعالم हिन्दी: नमस्ते दुनिया ไทย: สวัสดี",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n이 사진에 무엇이 있나요?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>x<|endofturn|> y <|im_end|>",
    "half specials: <|im_start| <|im_end <im_end|> <|endoftext|x <image <|<|im_end|>|>",
    "user typed <|im_end|> inside their message <image> too",
    "<tool_call>{\"name\": \"search\"}</tool_call> and <tool_call><tool_call>",
    "a <mask> b  <mask>  c<mask>d \n<mask>\n",
    "[WORD] x[WORD] [WORD]y _[WORD] -[WORD]- é[WORD] [WORD]\u0301 ²[WORD]",
    "hyphen-ated words - and -- dashes, numbers 1-2-3 and 2024-05-09.",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "가나다라마바사아자차카타파하" * 20,
    "!!!???...,,,;;;:::''''\"\"\"```~~~@@@###$$$%%%^^^&&&***((()))[[[]]]{{{}}}|||\\\\\\///",
    "x" + " " * 40 + "y" + "\n" * 5 + "z",
    "Đây là câu hỏi: bạn có biết 한국어 không? I'm learning both 🇰🇷 and 🇻🇳!",
    "word classes: x²y x³ ¼ ½ ①② Ⓐⓑ Ⅻ 、。「한」 deadBEEF 漢字かな",
]

# characters the random strings are drawn from
POOL = (list("abcxyzABCXYZ019 '\"-_.,!?<>|/\\\t\n\r") + ["  ", "\r\n", "'s", "'LL", "<|im", "_end|>", "<image>", "<|im_end|>",
        "<tool_call>", "<mask>", "[WORD]", "café"] +
        list("가각힣한국어요") + ["\u1100", "\u1161", "\u11a8", "\u1112\u1161\u11ab"] +
        list("ăâđêôơưàảãạấầẩẫậ") + ["\u0300", "\u0301", "\u0303", "\u0309", "\u0323", "\u031b", "\u0302", "\u0306"] +
        ["\u00a0", "\u3000", "\u2009", "\u180e", "\u0085", "\u200b", "\u200d", "\ufeff", "\u2028"] +
        ["😀", "👍", "🏽", "👩", "💻", "🇰", "🇷", "\ufe0f", "2\ufe0f\u20e3"] + list("中文ñßøΩЖя²½Ⅻ٣Ⓐ①、¼ᆨ"))


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in (i & 0xFFFFFFFF).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def read_corpus(corpus_dir):
    files = sorted(glob.glob(os.path.join(corpus_dir, "*.txt")))
    assert files, "no corpus files in " + corpus_dir
    return [(f, open(f, encoding="utf-8", newline="").read()) for f in files]


def training_lines(corpus):
    for _, text in corpus:
        yield from text.splitlines(keepends=True)


def train(corpus, pre_tokenizer, normalizer):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(training_lines(corpus)), trainer)
    # specials go after the vocab, as in Qwen2 and HyperCLOVAX
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def save(tok_json, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False, separators=(",", ":"))
    return Tokenizer.from_file(path)


def expectations(name, tok, texts, random_texts, corpus, lossless, rng):
    has_nfc = json.loads(tok.to_str())["normalizer"] is not None
    norm = (lambda s: unicodedata.normalize("NFC", s)) if has_nfc else (lambda s: s)
    plain = Tokenizer.from_str(tok.to_str())
    plain.encode_special_tokens = True
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        ids_plain = plain.encode(t, add_special_tokens=False).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        dec_skip = tok.decode(ids, skip_special_tokens=True)
        rt = dec == norm(t) and tok.decode(ids_plain, skip_special_tokens=False) == norm(t)
        cases.append({"ids": ids, "ids_plain": ids_plain, "decoded": dec, "decoded_skip": dec_skip, "roundtrip": rt})
        # exceptions: <mask> strips the spaces around it, and the added token café decodes
        # through the ByteLevel decoder as bytes 63 61 66 E9 (é is the stand-in of byte E9): U+FFFD
        if lossless and "<mask>" not in t and "café" not in unicodedata.normalize("NFC", t):
            assert rt, (name, t, dec)
    rand = []
    for t in random_texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        ids_plain = plain.encode(t, add_special_tokens=False).ids
        rand.append([len(ids), fnv1a64(ids), len(ids_plain), fnv1a64(ids_plain)])
    corp = []
    for path, text in corpus:
        ids = tok.encode(text, add_special_tokens=False).ids
        corp.append({"file": path, "n": len(ids), "hash": fnv1a64(ids)})
    # decode: arbitrary id sequences
    size = tok.get_vocab_size(with_added_tokens=True)
    byte_id = {}
    for b, ch in enumerate(bytes_to_unicode()):
        byte_id[b] = tok.token_to_id(ch)
    seqs = [
        [byte_id[0xE0]], [byte_id[0xE0], byte_id[0x80]], [byte_id[0xF0], byte_id[0x9F], byte_id[0x98]],
        [byte_id[0xED], byte_id[0xA0], byte_id[0x80]], [byte_id[0xC0], byte_id[0xAF]], [byte_id[0xF4], byte_id[0x90], byte_id[0x80], byte_id[0x80]],
        [byte_id[0xFF], byte_id[0xFE]], [byte_id[0x80], byte_id[0xBF], byte_id[0x41]],
        [byte_id[0xE2], byte_id[0x82], byte_id[0x41], byte_id[0xE2], byte_id[0x82], byte_id[0xAC]],
        [byte_id[0xF1], byte_id[0x80], byte_id[0x80], byte_id[0xE1], byte_id[0x80], byte_id[0xC2], byte_id[0x41]],
        [byte_id[0xC2]], [byte_id[0xEF], byte_id[0xBF], byte_id[0xBD]], [byte_id[0xF8], byte_id[0x88], byte_id[0x80], byte_id[0x80], byte_id[0x80]],
        [size, size + 5, byte_id[0x41], 10**6],
        [tok.token_to_id("<|im_start|>"), byte_id[0xEA], tok.token_to_id("<|im_end|>"), byte_id[0xB0], byte_id[0x80]],
        [],
    ]
    for _ in range(40):
        n = rng.randint(1, 24)
        seqs.append([rng.randrange(size) for _ in range(n)])
    dec = []
    for s in seqs:
        d = {"ids": s, "decoded": tok.decode(s, skip_special_tokens=False), "decoded_skip": tok.decode(s, skip_special_tokens=True)}
        for k in ["decoded", "decoded_skip"]:
            if "\0" in d[k]:  # C JSON readers stop at NUL: give the bytes as hex too
                d[k + "_hex"] = d[k].encode("utf-8").hex()
        dec.append(d)
    checks = [[s, tok.token_to_id(s)] for s in SPECIALS + ["<tool_call>", "<mask>", "Ġthe", "the", "Ċ", "Ā", "ĠĠ"]]
    checks = [[s, -1 if i is None else i] for s, i in checks]
    checks.append(["no such token, surely", -1])
    special_ids = [tok.token_to_id(s) for s in SPECIALS]
    return {"nfc": has_nfc, "cases": cases, "random": rand, "corpus": corp, "decode": dec, "token_ids": checks,
            "special_ids": special_ids, "vocab_size": size}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    m = dict(zip(bs, cs))
    return [chr(m[b]) for b in range(256)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    ap.add_argument("--corpus", default="data/corpus")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    corpus = read_corpus(args.corpus)
    for t in TEXTS:
        for _, c in corpus:
            assert len(t) < 12 or t not in c, "held-out text found in the corpus: " + t[:40]

    # --- qwen2: NFC + Split(Qwen2) + ByteLevel, legacy merges
    qwen = train(corpus, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), normalizers.NFC())
    qwen.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                     AddedToken("café", special=False, normalized=True)])
    qwen.post_processor = processors.ByteLevel(trim_offsets=False)
    qj = json.loads(qwen.to_str())
    assert all(isinstance(m, list) for m in qj["model"]["merges"])
    assert not any(" " in a or " " in b for a, b in qj["model"]["merges"])
    qj["model"]["merges"] = [a + " " + b for a, b in qj["model"]["merges"]]
    qwen = save(qj, os.path.join(args.out, "qwen2.json"))

    # --- cl100k: Split(cl100k) + ByteLevel, pair merges, ignore_merges
    cl = train(corpus, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), None)
    cl.add_tokens([AddedToken("<mask>", special=False, normalized=False, lstrip=True, rstrip=True),
                   AddedToken("[WORD]", special=False, normalized=False, single_word=True)])
    cj = json.loads(cl.to_str())
    cj["model"]["ignore_merges"] = True
    cl = save(cj, os.path.join(args.out, "cl100k.json"))

    # --- gpt2: cl100k's vocab, ByteLevel(add_prefix_space, use_regex)
    gj = json.loads(json.dumps(cj))
    gj["model"]["ignore_merges"] = False
    gj["added_tokens"] = [a for a in gj["added_tokens"] if a["special"]]
    gj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    gpt2 = save(gj, os.path.join(args.out, "gpt2.json"))

    # --- mixed: qwen2's vocab, every Split behavior
    mt = Tokenizer.from_str(qwen.to_str())
    mt.normalizer = normalizers.Sequence([normalizers.NFC()])
    mt.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex(r"\w+"), behavior="contiguous", invert=True),
        pre_tokenizers.Split(Regex(r"[,.]"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\p{Hangul}"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[\p{Han}\h]+|\p{Letter}{5}|\W\W"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    mj = json.loads(mt.to_str())
    mixed = save(mj, os.path.join(args.out, "mixed.json"))

    rng = random.Random(1234)
    random_texts = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    out = {"texts": TEXTS, "random_texts": random_texts, "tokenizers": []}
    for name, tok, lossless in [("qwen2", qwen, True), ("cl100k", cl, True), ("gpt2", gpt2, False), ("mixed", mixed, False)]:
        e = expectations(name, tok, TEXTS, random_texts, corpus, lossless, rng)
        pp = json.loads(tok.to_str())["post_processor"]
        e.update({"name": name, "file": name + ".json", "post_processor": pp["type"] if pp else "none"})
        out["tokenizers"].append(e)
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    for f in sorted(os.listdir(args.out)):
        print("%-16s %8d bytes" % (f, os.path.getsize(os.path.join(args.out, f))))


if __name__ == "__main__":
    main()
