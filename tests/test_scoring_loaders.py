"""Scoring on hand-made replies, and every real-benchmark loader on a tiny fixture in its public format."""
import base64
import io
import json

import pandas as pd
import pytest
from PIL import Image

from lostattn.tasks.loaders import BENCHMARKS, load_benchmark
from lostattn.tasks.scoring import extract, extract_letter, is_correct, summarize, yesno_stats


# ---- scoring ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,expected", [("Yes", "yes"), ("no.", "no"), ("I think yes, there is", "yes"),
                                            ("Nope", ""), ("", "")])
def test_extract_yesno(reply, expected):
    assert extract("yesno", reply) == expected


@pytest.mark.parametrize("reply,expected", [("B", "B"), ("(C) a cat", "C"), ("D.", "D"), ("Answer: A", "A"),
                                            ("The answer is (b)", "B"), ("red circle", "A"), ("none", "")])
def test_extract_letter(reply, expected):
    assert extract_letter(reply, {"A": "red circle", "B": "blue square", "C": "x", "D": "y"}) == expected


def test_short_and_numeric_answers():
    assert extract("short", " Red.\nmore") == "red"
    assert is_correct("short", extract("short", "Left"), "left")
    assert not is_correct("short", "right", "left")
    assert is_correct("numeric", extract("numeric", "about 3.50 cm"), "3.5")
    assert not is_correct("numeric", "3.6", "3.5")
    assert is_correct("mc", "b", "B")


def test_yesno_stats_hand_computed():
    # tp=2, fp=1, fn=1, tn=1
    st = yesno_stats(["yes", "yes", "yes", "no", "no"], ["yes", "yes", "no", "yes", "no"])
    assert st["accuracy"] == pytest.approx(3 / 5)
    assert st["precision"] == pytest.approx(2 / 3)
    assert st["recall"] == pytest.approx(2 / 3)
    assert st["f1"] == pytest.approx(2 / 3)
    assert st["yes_ratio"] == pytest.approx(3 / 5)


def test_summarize_per_family():
    recs = [{"family": "exist", "kind": "yesno", "prediction": p, "answer": a, "correct": p == a}
            for p, a in [("yes", "yes"), ("no", "yes"), ("no", "no"), ("yes", "no")]]
    recs += [{"family": "ocr", "kind": "short", "prediction": "7", "answer": "7", "correct": True}]
    t = summarize(recs).set_index("family")
    assert t.loc["exist", "accuracy"] == 50.0 and t.loc["exist", "f1"] == 50.0
    assert t.loc["ocr", "accuracy"] == 100.0 and pd.isna(t.loc["ocr", "f1"])


# ---- loaders ---------------------------------------------------------------------------------------------------
def _png(tmp_path, name="img.png"):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / name)
    return name


def _b64():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode() * 1 + ""


def test_pope_official_jsonl(tmp_path):
    img = _png(tmp_path)
    f = tmp_path / "coco_pope_adversarial.json"
    f.write_text("\n".join(json.dumps({"question_id": i, "image": img, "text": "Is there a dog in the image?",
                                       "label": lab}) for i, lab in enumerate(["yes", "no"])))
    f = f.rename(tmp_path / "coco_pope_adversarial.jsonl")
    s = load_benchmark("pope", f)
    assert [x.answer for x in s] == ["yes", "no"] and s[0].family == "pope_adversarial"
    assert s[0].load_image().size == (8, 8)


def test_vmcbench_and_3dsrbench_tsv_with_base64_images(tmp_path):
    rows = [{"index": 0, "question": "What is it?", "A": "cat", "B": "dog", "C": "cow", "D": "pig", "answer": "B",
             "category": "general", "image": _b64() * 10}]
    for name in ("vmcbench", "3dsrbench"):
        f = tmp_path / f"{name}.tsv"
        pd.DataFrame(rows).to_csv(f, sep="\t", index=False)
        s = load_benchmark(name, f)
        assert s[0].kind == "mc" and s[0].answer == "B" and "B. dog" in s[0].question
        assert "Answer ONLY option's letter" in s[0].question
        assert s[0].load_image().getpixel((0, 0)) == (10, 200, 10)


def test_mmmu_mathvista_realworldqa_hallusion(tmp_path):
    img = _png(tmp_path)
    mm = tmp_path / "mmmu.json"
    mm.write_text(json.dumps([{"id": "val_1", "question": "<image 1> Which?", "options": "['x', 'y']",
                               "answer": "B", "image_1": img, "question_type": "multiple-choice",
                               "subfield": "Art"}]))
    s = load_benchmark("mmmu", mm)
    assert s[0].options == {"A": "x", "B": "y"} and "<image" not in s[0].question and s[0].family == "Art"
    mv = tmp_path / "testmini.json"
    mv.write_text(json.dumps({"1": {"question": "How many?", "image": img, "answer": "3",
                                    "question_type": "free_form", "answer_type": "integer"},
                              "2": {"question": "Which?", "image": img, "answer": "big", "choices": ["small", "big"],
                                    "question_type": "multi_choice", "answer_type": "text"}}))
    s = load_benchmark("mathvista", mv)
    assert s[0].kind == "numeric" and s[1].kind == "mc" and s[1].answer == "B"
    rw = tmp_path / "rwqa.jsonl"
    rw.write_text(json.dumps({"question": "Where?\nA. left\nB. middle\nC. right\nAnswer with the letter.",
                              "answer": "(C)", "image": img}) + "\n"
                  + json.dumps({"question": "What does the sign say?", "answer": "C", "image": img}))
    got = load_benchmark("realworldqa", rw)
    assert [(x.kind, x.answer) for x in got] == [("mc", "C"), ("short", "C")]
    assert got[0].options == {"A": "left", "B": "middle", "C": "right"}
    hb = tmp_path / "HallusionBench.json"
    hb.write_text(json.dumps([{"category": "VD", "subcategory": "illusion", "set_id": "0", "figure_id": "0",
                               "question_id": "0", "question": "Is it red?", "gt_answer": "1", "filename": img,
                               "visual_input": "1"},
                              {"category": "VS", "subcategory": "chart", "set_id": "1", "figure_id": "0",
                               "question_id": "0", "question": "Is 2 > 1?", "gt_answer": "0", "filename": None,
                               "visual_input": "0"}]))
    s = load_benchmark("hallusionbench", hb)
    assert [x.answer for x in s] == ["yes", "no"] and s[1].image is None


def test_loader_errors_name_file_and_field(tmp_path):
    f = tmp_path / "vmc.jsonl"
    f.write_text(json.dumps({"question": "q", "A": "a", "B": "b", "image": "x.png"}))
    with pytest.raises(ValueError, match=r"vmc.jsonl: record 0 \(line 1\): no field 'answer'"):
        load_benchmark("vmcbench", f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark("pope", tmp_path / "nope.json")
    bad = tmp_path / "pope.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON: .* at line 1, column 2"):
        load_benchmark("pope", bad)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("gqa", f)
    with pytest.raises(ValueError, match="needs its local file"):
        load_benchmark("pope")
    assert "synthetic" in BENCHMARKS


def test_missing_image_file_is_named(tmp_path):
    f = tmp_path / "coco_pope_random.jsonl"
    f.write_text(json.dumps({"image": "gone.jpg", "text": "Is there a cat?", "label": "no"}))
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_benchmark("pope", f)[0].load_image()
