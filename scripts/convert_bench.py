#!/usr/bin/env python3
"""Convert public benchmark files to the JSONL ./evaluate reads (README, section ./evaluate).

    python3 scripts/convert_bench.py mmbench   MMBench_DEV_EN.tsv  out/mmbench.jsonl  --image-dir out/mmbench_images
    python3 scripts/convert_bench.py seedbench SEED-Bench.json     out/seed.jsonl     [--image-prefix SEED-Bench-image/]
    python3 scripts/convert_bench.py textvqa   TextVQA_0.5.1_val.json out/textvqa.jsonl [--image-prefix train_images/]
    python3 scripts/convert_bench.py coco      captions_val2014.json out/coco.jsonl  [--image-prefix val2014/]
    python3 scripts/convert_bench.py coco      dataset_coco.json   out/coco_test.jsonl --split test   (Karpathy split)
    python3 scripts/convert_bench.py --self-test

Formats read:
  mmbench    MMBench-style TSV (MMBench, and the Korean K-MMBench / K-SEED / K-MMStar /
             K-DTCBench exports that share it): columns index, question, hint, A, B, C, D, ...,
             answer, category, image (base64 PNG/JPEG). Empty or "nan" options end the list;
             each image is written to --image-dir as <index>.png/.jpg and referenced relative to
             the output file's folder.
  seedbench  SEED-Bench JSON: {"questions": [{question_id, question, choice_a..choice_d, answer,
             data_id, data_type, question_type_id}], "question_type": {name: id}}; image items only
             (video items are counted and left out).
  textvqa    TextVQA JSON: {"data": [{question_id, question, image_id, answers: [10]}]}.
  coco       COCO caption annotations {"images": [{id, file_name}], "annotations": [{image_id,
             caption}]}, or Karpathy's dataset_coco.json {"images": [{filepath, filename, cocoid,
             split, sentences: [{raw}]}]} with --split.
Every problem stops with one line naming the file and the row or item.
"""
import argparse
import base64
import csv
import json
import os
import sys
import tempfile


def die(msg):
    print("convert_bench: error: " + msg, file=sys.stderr)
    sys.exit(1)


def is_empty(v):
    return v is None or (isinstance(v, str) and (v.strip() == "" or v.strip().lower() == "nan"))


def write_jsonl(path, items):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


def image_ext(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    return None


def convert_mmbench(src, out, image_dir):
    csv.field_size_limit(sys.maxsize)
    out_dir = os.path.dirname(os.path.abspath(out))
    image_dir = image_dir or os.path.join(out_dir, os.path.splitext(os.path.basename(out))[0] + "_images")
    os.makedirs(image_dir, exist_ok=True)
    items = []
    with open(src, encoding="utf-8", newline="") as f:
        rd = csv.DictReader(f, delimiter="\t")
        need = {"index", "question", "A", "B", "answer"}
        if not rd.fieldnames or not need <= set(rd.fieldnames):
            die("%s: not an MMBench-style TSV: columns %s lack %s" % (src, rd.fieldnames, sorted(need - set(rd.fieldnames or []))))
        for row in rd:
            line = rd.line_num
            where = "%s:%d (index %s)" % (src, line, row.get("index"))
            opts = []
            for L in "ABCDEFGHI":
                if L not in row or is_empty(row[L]):
                    break
                opts.append(row[L])
            if len(opts) < 2:
                die("%s: fewer than 2 options" % where)
            ans = (row.get("answer") or "").strip()
            if len(ans) != 1 or not ("A" <= ans < chr(ord("A") + len(opts))):
                die("%s: answer %r is not a letter of the %d options" % (where, ans, len(opts)))
            it = {"id": str(row["index"]), "question": row["question"]}
            for i, o in enumerate(opts):
                it["ABCDEFGHI"[i]] = o
            it["answer"] = ans
            if not is_empty(row.get("hint")):
                it["hint"] = row["hint"]
            if not is_empty(row.get("category")):
                it["category"] = row["category"]
            img = row.get("image")
            if not is_empty(img):
                try:
                    data = base64.b64decode(img, validate=False)
                except Exception as e:  # noqa: BLE001
                    die("%s: image is not base64: %s" % (where, e))
                ext = image_ext(data)
                if not ext:
                    die("%s: image is neither PNG nor JPEG" % where)
                p = os.path.join(image_dir, str(row["index"]) + ext)
                with open(p, "wb") as g:
                    g.write(data)
                it["image"] = os.path.relpath(p, out_dir)
            items.append(it)
    write_jsonl(out, items)
    return len(items), 0


def load_json(src):
    try:
        with open(src, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die("%s: %s" % (src, e))


def convert_seedbench(src, out, prefix):
    d = load_json(src)
    if not isinstance(d, dict) or "questions" not in d:
        die("%s: not SEED-Bench JSON (no \"questions\")" % src)
    names = {v: k for k, v in d.get("question_type", {}).items()}
    items, videos = [], 0
    for i, q in enumerate(d["questions"]):
        if q.get("data_type", "image") != "image":
            videos += 1
            continue
        for k in ("question", "choice_a", "choice_b", "answer", "data_id"):
            if k not in q:
                die("%s: question %d (id %s): no \"%s\"" % (src, i, q.get("question_id"), k))
        opts = [q[k] for k in ("choice_a", "choice_b", "choice_c", "choice_d") if not is_empty(q.get(k))]
        it = {"id": str(q.get("question_id", i)), "image": prefix + q["data_id"], "question": q["question"]}
        for j, o in enumerate(opts):
            it["ABCD"[j]] = o
        it["answer"] = q["answer"]
        if q.get("question_type_id") in names:
            it["category"] = names[q["question_type_id"]]
        items.append(it)
    write_jsonl(out, items)
    return len(items), videos


def convert_textvqa(src, out, prefix):
    d = load_json(src)
    if not isinstance(d, dict) or not isinstance(d.get("data"), list):
        die("%s: not TextVQA JSON (no \"data\" list)" % src)
    items = []
    for i, q in enumerate(d["data"]):
        for k in ("question", "image_id", "answers"):
            if k not in q:
                die("%s: item %d (question_id %s): no \"%s\" (the test split has no answers)" % (src, i, q.get("question_id"), k))
        items.append({"id": str(q.get("question_id", i)), "image": prefix + q["image_id"] + ".jpg",
                      "question": q["question"], "answers": list(q["answers"])})
    write_jsonl(out, items)
    return len(items), 0


def convert_coco(src, out, prefix, split):
    d = load_json(src)
    items = []
    if isinstance(d, dict) and "annotations" in d:
        caps = {}
        for a in d["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"].strip())
        for im in d["images"]:
            if im["id"] not in caps:
                continue
            items.append({"id": str(im["id"]), "image": prefix + im["file_name"], "captions": caps[im["id"]]})
    elif isinstance(d, dict) and isinstance(d.get("images"), list) and d["images"] and "sentences" in d["images"][0]:
        if not split:
            die("%s: a Karpathy split file: --split test|val|train|restval names the part" % src)
        for im in d["images"]:
            if im.get("split") != split:
                continue
            path = (im.get("filepath", "") + "/" if im.get("filepath") else "") + im["filename"]
            items.append({"id": str(im.get("cocoid", im.get("imgid"))), "image": prefix + path,
                          "captions": [s["raw"].strip() for s in im["sentences"]]})
    else:
        die("%s: neither COCO caption annotations nor Karpathy's dataset_coco.json" % src)
    if not items:
        die("%s: no images with captions%s" % (src, " in split " + split if split else ""))
    write_jsonl(out, items)
    return len(items), 0


# ---------------------------------------------------------------- self-test

PNG_1x1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def self_test():
    tmp = tempfile.mkdtemp(prefix="convert_bench_")
    img = base64.b64encode(PNG_1x1).decode()
    tsv = os.path.join(tmp, "mmb.tsv")
    with open(tsv, "w", encoding="utf-8") as f:
        f.write("index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n")
        f.write("0\tWhat is it?\tnan\tcat\tdog\tnan\tnan\tB\tobject\t%s\n" % img)
        f.write("1\t무엇입니까?\t힌트\t사과\t배\t감\t귤\tD\t인식\t%s\n" % img)
    n, _ = convert_mmbench(tsv, os.path.join(tmp, "mmb.jsonl"), None)
    rows = [json.loads(x) for x in open(os.path.join(tmp, "mmb.jsonl"), encoding="utf-8")]
    assert n == 2 and rows[0]["B"] == "dog" and "C" not in rows[0] and "hint" not in rows[0], rows[0]
    assert rows[1]["answer"] == "D" and rows[1]["hint"] == "힌트" and rows[1]["D"] == "귤", rows[1]
    assert os.path.exists(os.path.join(tmp, rows[0]["image"])) and rows[0]["image"].endswith(".png")
    seed = os.path.join(tmp, "seed.json")
    json.dump({"question_type": {"Scene Understanding": 1}, "questions": [
        {"question_id": "q1", "question": "Q?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
         "answer": "C", "data_id": "1.jpg", "data_type": "image", "question_type_id": 1},
        {"question_id": "q2", "question": "V?", "choice_a": "a", "choice_b": "b", "answer": "A", "data_id": "v.mp4",
         "data_type": "video", "question_type_id": 1}]}, open(seed, "w"))
    n, videos = convert_seedbench(seed, os.path.join(tmp, "seed.jsonl"), "img/")
    r = json.loads(open(os.path.join(tmp, "seed.jsonl")).readline())
    assert n == 1 and videos == 1 and r["image"] == "img/1.jpg" and r["category"] == "Scene Understanding" and r["C"] == "c"
    tv = os.path.join(tmp, "tv.json")
    json.dump({"data": [{"question_id": 5, "question": "What brand?", "image_id": "abc", "answers": ["nokia"] * 10}]}, open(tv, "w"))
    n, _ = convert_textvqa(tv, os.path.join(tmp, "tv.jsonl"), "train_images/")
    r = json.loads(open(os.path.join(tmp, "tv.jsonl")).readline())
    assert r == {"id": "5", "image": "train_images/abc.jpg", "question": "What brand?", "answers": ["nokia"] * 10}, r
    coco = os.path.join(tmp, "coco.json")
    json.dump({"images": [{"id": 9, "file_name": "x.jpg"}, {"id": 10, "file_name": "y.jpg"}],
               "annotations": [{"image_id": 9, "caption": "A cat. "}, {"image_id": 9, "caption": "a kitten"}]}, open(coco, "w"))
    n, _ = convert_coco(coco, os.path.join(tmp, "coco.jsonl"), "val2014/", None)
    r = json.loads(open(os.path.join(tmp, "coco.jsonl")).readline())
    assert n == 1 and r == {"id": "9", "image": "val2014/x.jpg", "captions": ["A cat.", "a kitten"]}, r
    kp = os.path.join(tmp, "dataset_coco.json")
    json.dump({"images": [{"filepath": "val2014", "filename": "z.jpg", "cocoid": 3, "split": "test", "sentences": [{"raw": "Dog."}]},
                          {"filepath": "val2014", "filename": "w.jpg", "cocoid": 4, "split": "val", "sentences": [{"raw": "x"}]}]}, open(kp, "w"))
    n, _ = convert_coco(kp, os.path.join(tmp, "kp.jsonl"), "", "test")
    r = json.loads(open(os.path.join(tmp, "kp.jsonl")).readline())
    assert n == 1 and r == {"id": "3", "image": "val2014/z.jpg", "captions": ["Dog."]}, r
    print("convert_bench: self-test passed (MMBench TSV with base64 images and Korean text, SEED-Bench, TextVQA, "
          "COCO annotations, Karpathy split) in %s" % tmp)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--self-test":
        self_test()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("format", choices=["mmbench", "seedbench", "textvqa", "coco"])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--image-dir", help="mmbench: where the decoded images go (default OUT's name + _images)")
    ap.add_argument("--image-prefix", default="", help="put before every image file name (relative to ./evaluate's --image-folder)")
    ap.add_argument("--split", help="coco with Karpathy's dataset_coco.json: test, val, train or restval")
    a = ap.parse_args()
    if a.format == "mmbench":
        n, left = convert_mmbench(a.src, a.out, a.image_dir)
    elif a.format == "seedbench":
        n, left = convert_seedbench(a.src, a.out, a.image_prefix)
    elif a.format == "textvqa":
        n, left = convert_textvqa(a.src, a.out, a.image_prefix)
    else:
        n, left = convert_coco(a.src, a.out, a.image_prefix, a.split)
    print("convert_bench: %s -> %s: %d items%s" % (a.src, a.out, n, ", %d video items left out" % left if left else ""))


if __name__ == "__main__":
    main()
