#!/usr/bin/env python3
"""Reference numbers for svlm's metric code (eval/): tests/fixtures/eval/metrics.json, checked by
tests/test_eval_metrics.c to 1e-6.

    pip install pycocoevalcap anls    # pure Python (numpy); no Java needed for these scorers
    python3 scripts/make_eval_fixtures.py --out tests/fixtures/eval/metrics.json

Sources of truth:
  - BLEU-1..4, CIDEr-D, ROUGE-L: pycocoevalcap's Bleu, Cider and Rouge scorers themselves, on text
    already tokenised (tokens joined by spaces). Their PTBTokenizer (Stanford CoreNLP, Java,
    English) is not used: svlm tokenises with the Unicode rules of eval/text.h, whose reference
    is caption_tokenize() below.
  - VQA answer normalisation: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py
    (github.com/GT-Vision-Lab/VQA, commit 07aecec) is Python 2 and not on PyPI; VqaNorm below
    copies its tables (contractions, manualMap, articles, punct, the two regexes) and its
    processPunctuation / processDigitArticle bodies unchanged, run by Python 3 as the
    LLaVA / lmms-eval copies run it. The accuracy is its evaluate() loop: each annotator left
    out in turn, min(1, matches among the others / 3), averaged; the references go through the
    same normalisation (as LLaVA's m4c evaluator does).
  - ANLS: the anls package (anls_score, threshold 0.5).
"""
import argparse
import json
import os
import random
import re
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import require  # noqa: E402


class VqaNorm:
    """vqaEval.py's normalisation, its code and tables as they are (only the class around them)."""

    def __init__(self):
        self.contractions = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't", \
            "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve", "didnt": "didn’t", "doesnt": "doesn’t", "dont": "don’t", "hadnt": "hadn’t", \
            "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve", "hasnt": "hasn’t", "havent": "haven’t", "hed": "he’d", "hed’ve": "he’d’ve", \
            "he’dve": "he’d’ve", "hes": "he’s", "howd": "how’d", "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve", "I’dve": "I’d’ve", \
            "Im": "I’m", "Ive": "I’ve", "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve", "it’dve": "it’d’ve", "itll": "it’ll", "let’s": "let’s", \
            "maam": "ma’am", "mightnt": "mightn’t", "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve", "mightve": "might’ve", \
            "mustnt": "mustn’t", "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve", "oclock": "o’clock", "oughtnt": "oughtn’t", \
            "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at", "’ow’sat": "’ow’s’at", "shant": "shan’t", "shed’ve": "she’d’ve", "she’dve": "she’d’ve", \
            "she’s": "she’s", "shouldve": "should’ve", "shouldnt": "shouldn’t", "shouldnt’ve": "shouldn’t’ve", "shouldn’tve": "shouldn’t’ve", \
            "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve", "somebody’dve": "somebody’d’ve", "somebodyll": "somebody’ll", \
            "somebodys": "somebody’s", "someoned": "someone’d", "someoned’ve": "someone’d’ve", "someone’dve": "someone’d’ve", \
            "someonell": "someone’ll", "someones": "someone’s", "somethingd": "something’d", "somethingd’ve": "something’d’ve", \
            "something’dve": "something’d’ve", "somethingll": "something’ll", "thats": "that’s", "thered": "there’d", "thered’ve": "there’d’ve", \
            "there’dve": "there’d’ve", "therere": "there’re", "theres": "there’s", "theyd": "they’d", "theyd’ve": "they’d’ve", \
            "they’dve": "they’d’ve", "theyll": "they’ll", "theyre": "they’re", "theyve": "they’ve", "twas": "’twas", "wasnt": "wasn’t", \
            "wed’ve": "we’d’ve", "we’dve": "we’d’ve", "weve": "we've", "werent": "weren’t", "whatll": "what’ll", "whatre": "what’re", \
            "whats": "what’s", "whatve": "what’ve", "whens": "when’s", "whered": "where’d", "wheres": "where's", "whereve": "where’ve", \
            "whod": "who’d", "whod’ve": "who’d’ve", "who’dve": "who’d’ve", "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll", \
            "whyre": "why’re", "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t", "wouldnt’ve": "wouldn’t’ve", \
            "wouldn’tve": "wouldn’t’ve", "yall": "y’all", "yall’ll": "y’all’ll", "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve", \
            "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve", "youd": "you’d", "youd’ve": "you’d’ve", "you’dve": "you’d’ve", \
            "youll": "you’ll", "youre": "you’re", "youve": "you’ve"}
        self.manualMap = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5',
                          'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
        self.articles = ['a', 'an', 'the']
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [';', ':', r"/", r"'", '[', ']', '"', '(', ')', '=', '+', '\\', '_', '>', '<', '@', '`', ',', '?']

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, '')
            else:
                outText = outText.replace(p, ' ')
        outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = ' '.join(outText)
        return outText

    def normalize(self, ans):  # evaluate()'s steps for resAns
        ans = ans.replace('\n', ' ').replace('\t', ' ').strip()
        return self.processDigitArticle(self.processPunctuation(ans))

    def accuracy(self, pred, answers):  # evaluate()'s loop over annotators
        res = self.normalize(pred)
        gts = [{"answer": self.normalize(a), "answer_id": i} for i, a in enumerate(answers)]
        if len(gts) == 1:  # svlm's rule for a single reference (eval/vqa_metrics.h)
            return float(gts[0]["answer"] == res)
        accs = []
        for g in gts:
            other = [item for item in gts if item != g]
            matching = [item for item in other if item['answer'] == res]
            accs.append(min(1, float(len(matching)) / 3))
        return float(sum(accs)) / len(accs)


def caption_tokenize(s):
    """eval/text.h's tokenisation, the reference for text_tokenize."""
    s = unicodedata.normalize("NFC", s)
    # Final_Sigma is not applied in C: lower per code point
    s = "".join(c.lower() for c in s)
    toks, cur = [], []
    for i, c in enumerate(s):
        cat = unicodedata.category(c)
        sep = c.isspace() or cat.startswith("P")
        if c in ".," and 0 < i < len(s) - 1 and unicodedata.category(s[i - 1]) == "Nd" and unicodedata.category(s[i + 1]) == "Nd":
            sep = False
        if sep:
            if cur:
                toks.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if cur:
        toks.append("".join(cur))
    return " ".join(toks)


# ---------------------------------------------------------------- cases

# (rule, raw answer): each exercises one step of vqaEval.py's normalisation
VQA_NORM_CASES = [
    ("strip whitespace", "  yes \n"),
    ("newline and tab become spaces", "red\nand\tblue"),
    ("punctuation next to a space is deleted", "yes , it is"),
    ("punctuation inside a word becomes a space", "black/white"),
    ("apostrophe inside a word becomes a space", "man's hat"),
    ("apostrophe next to a space is deleted", "the dogs' bowl"),
    ("digit comma digit deletes every mark", "1,000 (approx)"),
    ("question mark", "what?"),
    ("brackets and quotes", "[\"hello\"]"),
    ("every listed mark", "a;b:c/d'e[f]g\"h(i)j=k+l\\m_n>o<p@q`r,s?t"),
    ("period at the end is deleted", "yes."),
    ("period before a digit stays", "3.5"),
    ("period after a digit before a letter is deleted", "3.a"),
    ("only 32 periods are deleted (re.sub count = re.UNICODE)", "." * 40 + "x"),
    ("ellipsis", "wait... what"),
    ("lowercase", "YES"),
    ("number words become digits", "Two"),
    ("none becomes 0", "none"),
    ("ten becomes 10, eleven stays", "ten eleven"),
    ("articles are dropped", "a dog and the cat and an owl"),
    ("only whole-word articles", "theater anthem"),
    ("contraction restored with a curly apostrophe", "dont"),
    ("contraction after punctuation removal", "isn't"),
    ("contraction table entry with ASCII apostrophe value", "cant"),
    ("capitalised table keys never match after lowering", "Im"),
    ("several spaces collapse", "two   red    cars"),
    ("empty answer", ""),
    ("only punctuation", "?!."),
    ("exclamation mark is not in the list", "yes!"),
    ("hyphen is not in the list", "t-shirt"),
    ("unicode digit comma digit", "\u0661,\u0662 items"),
    ("unicode digit keeps the period", "\u0663.\u0664"),
    ("Korean answer", "빨간색 사과입니다."),
    ("Vietnamese answer", "Màu Đỏ, phải không?"),
    ("German sharp s and capital I with dot", "STRAßE İstanbul"),
    ("non-breaking space is whitespace", "two\u00a0dogs"),
]

VQA_ACC_CASES = [
    ("ten annotators, all agree", "two", ["2"] * 10),
    ("ten annotators, 3 match", "yes", ["yes"] * 3 + ["no"] * 7),
    ("ten annotators, 2 match", "yes", ["yes"] * 2 + ["no"] * 8),
    ("ten annotators, 1 match", "Yes.", ["yes"] + ["no"] * 9),
    ("ten annotators, 4 match", "the red one", ["red one"] * 4 + ["blue"] * 6),
    ("no match", "cat", ["dog"] * 10),
    ("normalised references", "don't know", ["dont know", "do not know", "don't know", "idk"] + ["no"] * 6),
    ("three annotators", "blue", ["blue", "blue", "navy"]),
    ("single reference equal", "A Dog.", ["dog"]),
    ("single reference different", "cat", ["dog"]),
    ("korean", "사과", ["사과", "사과", "사과", "배"]),
    ("number word vs digit", "three", ["3", "3", "three", "3 "] + ["4"] * 6),
]

ANLS_CASES = [
    ("exact", "hello world", ["hello world"]),
    ("case and spaces ignored", "  Hello   World ", ["hello world"]),
    ("one edit", "helo world", ["hello world"]),
    ("below threshold", "abc", ["xyz"]),
    ("best reference", "total 1,000", ["1000", "total 1,000", "sum"]),
    ("empty prediction", "", ["abc"]),
    ("both empty", "", [""]),
    ("just under threshold", "abcdef", ["abcxyz"]),
    ("korean", "서울특별시", ["서울시", "서울특별시청"]),
    ("vietnamese", "thành phố Hồ Chí Minh", ["Thành phố Hồ Chí Minh", "TP HCM"]),
    ("upper length of sharp s", "straße", ["strasse"]),
]

EM_CASES = [
    ("equal after compaction", " The  Dog ", ["the dog"]),
    ("punctuation matters", "dog.", ["dog"]),
    ("second reference", "b", ["a", "B"]),
    ("no match", "a", ["b", "c"]),
]

TOKENIZE_CASES = [
    "A man riding a horse.",
    "Two dogs, playing in the park!",
    "It's 3.5 km away; about 1,000 people.",
    "  multiple   spaces\tand\nnewlines ",
    "\"Quoted\" (parenthetical) [brackets] {braces}",
    "Một người đàn ông đang cưỡi ngựa.",
    "Mo\u0323\u0302t ngu\u031bo\u031b\u0300i",  # Vietnamese typed with combining marks
    "한 남자가 말을 타고 있다.",
    "\u1112\u1161\u11ab \u1102\u1161\u11b7\u110c\u1161",  # Korean as conjoining jamo
    "「日本語」の文、テスト。",
    "ÉCOLE Ǆ İstanbul ΣΟΦΟΣ",
    "price $5 + tax = 6€ 😀",
    "end-of-line... ok?!",
    "",
    "...",
]


def random_corpus(rng, n_images, vocab, max_len, max_refs, empty_ok=False):
    def sent(lo):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, max_len)))
    out = []
    for i in range(n_images):
        hyp = sent(0 if empty_ok else 1)
        refs = [sent(1) for _ in range(rng.randint(1, max_refs))]
        if rng.random() < 0.3:  # share some n-grams with the hypothesis
            w = hyp.split()
            refs[0] = " ".join(w[: rng.randint(0, len(w))] + refs[0].split())
        out.append((hyp, refs))
    return out


def caption_scores(corpus):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    gts = {i: refs for i, (_, refs) in enumerate(corpus)}
    res = {i: [hyp] for i, (hyp, _) in enumerate(corpus)}
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per = Cider().compute_score(gts, res)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    return {"bleu": [float(b) for b in bleu], "cider": float(cider), "cider_per_image": [float(x) for x in cider_per],
            "rouge_l": float(rouge), "rouge_per_image": [float(x) for x in rouge_per]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/eval/metrics.json")
    ap.add_argument("--check-deps", action="store_true")
    a = ap.parse_args()
    require("pycocoevalcap", "anls", "numpy")
    if a.check_deps:
        return
    from anls import anls_score
    v = VqaNorm()
    fx = {"vqa_normalize": [], "vqa_accuracy": [], "anls": [], "exact_match": [], "tokenize": [], "caption": []}
    for rule, ans in VQA_NORM_CASES:
        fx["vqa_normalize"].append({"rule": rule, "answer": ans, "normalized": v.normalize(ans)})
    for rule, pred, refs in VQA_ACC_CASES:
        fx["vqa_accuracy"].append({"rule": rule, "prediction": pred, "answers": refs, "score": v.accuracy(pred, refs)})
    for rule, pred, refs in ANLS_CASES:
        fx["anls"].append({"rule": rule, "prediction": pred, "answers": refs, "score": float(anls_score(pred, refs, 0.5))})
    for rule, pred, refs in EM_CASES:
        c = lambda s: " ".join(s.strip().lower().split())  # noqa: E731
        fx["exact_match"].append({"rule": rule, "prediction": pred, "answers": refs,
                                  "score": float(any(c(pred) == c(r) for r in refs))})
    for s in TOKENIZE_CASES:
        fx["tokenize"].append({"text": s, "tokens": caption_tokenize(s)})

    rng = random.Random(15)
    en = "a man woman dog cat riding sitting on the of in with red blue big small horse table street two".split()
    corpora = [
        ("hand-made", [("a man riding a horse", ["a man rides a horse", "a person on a horse", "man riding horse on a beach"]),
                       ("two dogs playing", ["two dogs play in the park", "dogs playing together"]),
                       ("a cat", ["a cat sitting on a table", "a black cat on a wooden table", "cat on table",
                                  "a small cat sits on the table", "the cat is on a table"])]),
        ("one image", [("the red car is parked", ["a red car parked on the street"])]),
        ("random english", random_corpus(rng, 40, en, 14, 5)),
        ("random with empty hypotheses", random_corpus(rng, 12, en[:6], 6, 3, empty_ok=True)),
        ("korean and vietnamese tokenised", [
            (caption_tokenize("한 남자가 말을 타고 있다."), [caption_tokenize(x) for x in ["남자가 말을 타고 있다.", "한 사람이 말을 탄다."]]),
            (caption_tokenize("Một người đàn ông đang cưỡi ngựa."),
             [caption_tokenize(x) for x in ["Người đàn ông cưỡi ngựa.", "Một người đang cưỡi một con ngựa trên bãi biển."]]),
            (caption_tokenize("고양이가 탁자 위에 앉아 있다"), [caption_tokenize("탁자 위의 고양이"), caption_tokenize("고양이 한 마리가 탁자 위에 있다")]),
        ]),
    ]
    for name, corpus in corpora:
        fx["caption"].append({"name": name, "hyp": [h for h, _ in corpus], "refs": [r for _, r in corpus], **caption_scores(corpus)})
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(fx, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d normalisation, %d VQA accuracy, %d ANLS, %d exact match, %d tokenisation cases, %d caption sets"
          % (a.out, len(fx["vqa_normalize"]), len(fx["vqa_accuracy"]), len(fx["anls"]), len(fx["exact_match"]),
             len(fx["tokenize"]), len(fx["caption"])))


if __name__ == "__main__":
    main()
