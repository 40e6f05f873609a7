"""The benchmark folders users have, as the Hugging Face hub publishes them, read offline with `datasets`: parquet
shards with the Image feature (one folder per subset, a split per file name), and folders written by
`datasets.save_to_disk` (a Dataset, or a DatasetDict whose split --split picks)."""
import io
import json

import datasets
import pytest
from PIL import Image

from lostattn.cli import main as cli
from lostattn.tasks.loaders import load_benchmark
from lostattn.tasks.types import BenchmarkDataError


def _png(colour) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


POPE_FEATURES = datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                   "answer": datasets.Value("string"), "image": datasets.Image(),
                                   "image_source": datasets.Value("string"), "category": datasets.Value("string")})


def _pope_split(category, rows):
    return datasets.Dataset.from_dict(
        {"question_id": [f"{category}-{i}" for i in range(len(rows))], "question": [q for q, _, _ in rows],
         "answer": [a for _, a, _ in rows], "image": [_png(c) for _, _, c in rows],
         "image_source": [f"COCO_{i}" for i in range(len(rows))], "category": [category] * len(rows)},
        features=POPE_FEATURES)


@pytest.fixture
def pope_hub(tmp_path):
    """lmms-lab/POPE as the hub serves it: Full/<subset>-00000-of-00001.parquet, the Image feature inside."""
    folder = tmp_path / "POPE"
    (folder / "Full").mkdir(parents=True)
    for cat, rows in {"random": [("Is there a dog?", "no", "red"), ("Is there a cat?", "yes", "blue")],
                      "popular": [("Is there a car?", "yes", "green")],
                      "adversarial": [("Is there a man?", "no", "white")]}.items():
        _pope_split(cat, rows).to_parquet(str(folder / "Full" / f"{cat}-00000-of-00001.parquet"))
    return folder


def test_parquet_shards_with_the_image_feature(pope_hub):
    both = load_benchmark("pope", pope_hub)  # --split test: POPE's three subsets
    assert sorted(s.family for s in both) == ["pope_adversarial", "pope_popular", "pope_random", "pope_random"]
    assert len({s.id for s in both}) == 4 and all("/" in s.id for s in both)  # split-prefixed ids never collide
    img = next(s for s in both if s.meta == {} and s.family == "pope_random").load_image()
    assert img.size == (24, 24) and img.getpixel((0, 0)) in ((255, 0, 0), (0, 0, 255))
    one = load_benchmark("pope", pope_hub, split="random")
    assert [s.answer for s in one] == ["no", "yes"] and not any("/" in s.id for s in one)
    assert len(load_benchmark("pope", pope_hub, split="random+popular")) == 3
    with pytest.raises(BenchmarkDataError, match=r"has no split 'validation'; its splits are adversarial, popular, "
                                                 r"random"):
        load_benchmark("pope", pope_hub, split="validation")


def test_save_to_disk_dataset_dict_and_dataset(tmp_path):
    feats = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                               "options": datasets.Value("string"), "answer": datasets.Value("string"),
                               "image_1": datasets.Image(), "question_type": datasets.Value("string"),
                               "subfield": datasets.Value("string")})

    def mmmu(prefix, answers):
        return datasets.Dataset.from_dict(
            {"id": [f"{prefix}_{i}" for i in range(len(answers))], "question": ["<image 1> Which colour?"] * len(answers),
             "options": ["['red', 'blue']"] * len(answers), "answer": answers,
             "image_1": [_png("red")] * len(answers), "question_type": ["multiple-choice"] * len(answers),
             "subfield": ["Art"] * len(answers)}, features=feats)

    dd = datasets.DatasetDict({"validation": mmmu("validation", ["A", "B"]), "test": mmmu("test", ["?", "?"])})
    dd.save_to_disk(str(tmp_path / "mmmu"))
    got = load_benchmark("mmmu", tmp_path / "mmmu", split="validation")
    assert [(s.id, s.answer, s.kind) for s in got] == [("validation_0", "A", "mc"), ("validation_1", "B", "mc")]
    assert got[0].load_image().getpixel((3, 3)) == (255, 0, 0) and "<image" not in got[0].question
    with pytest.raises(BenchmarkDataError, match="publishes answers for its 'validation' split only"):
        load_benchmark("mmmu", tmp_path / "mmmu", split="test")
    mmmu("validation", ["A"]).save_to_disk(str(tmp_path / "one"))  # a single Dataset
    assert [s.id for s in load_benchmark("mmmu", tmp_path / "one")] == ["validation_0"]


def test_per_subject_parquet_folders_join_on_the_split(tmp_path):
    """MMMU/MMMU keeps one folder per subject, each with its own validation shard."""
    feats = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                               "options": datasets.Value("string"), "answer": datasets.Value("string"),
                               "image_1": datasets.Image(), "subfield": datasets.Value("string")})
    for subject in ("Art", "Math"):
        (tmp_path / "MMMU" / subject).mkdir(parents=True)
        datasets.Dataset.from_dict({"id": [f"validation_{subject}_1"], "question": ["Which?"],
                                    "options": ["['x', 'y', 'z']"], "answer": ["C"], "image_1": [_png("blue")],
                                    "subfield": [subject]}, features=feats) \
            .to_parquet(str(tmp_path / "MMMU" / subject / "validation-00000-of-00001.parquet"))
    got = load_benchmark("mmmu", tmp_path / "MMMU", split="validation")
    assert sorted(s.family for s in got) == ["Art", "Math"] and all(s.answer == "C" for s in got)


def test_hallusionbench_test_split_reads_its_image_and_non_image_splits(tmp_path):
    feats = datasets.Features({k: datasets.Value("string") for k in ("category", "subcategory", "set_id",
                                                                    "figure_id", "question_id", "question",
                                                                    "gt_answer", "visual_input")}
                              | {"image": datasets.Image()})
    rows = {"category": ["VD"], "subcategory": ["illusion"], "set_id": ["0"], "figure_id": ["0"], "question_id": ["0"],
            "question": ["Is it red?"], "gt_answer": ["1"], "visual_input": ["1"], "image": [_png("red")]}
    text = {**rows, "question": ["Is 2 < 1?"], "gt_answer": ["0"], "visual_input": ["0"], "image": [None],
            "category": ["VS"]}
    datasets.DatasetDict({"image": datasets.Dataset.from_dict(rows, features=feats),
                          "non_image": datasets.Dataset.from_dict(text, features=feats)}) \
        .save_to_disk(str(tmp_path / "hb"))
    got = load_benchmark("hallusionbench", tmp_path / "hb")
    assert [(s.answer, s.image is None) for s in got] == [("yes", False), ("no", True)]


def test_eval_reads_a_dataset_folder_from_the_command_line(pope_hub, tmp_path, capsys):
    out = tmp_path / "pope.jsonl"
    assert cli(["eval", "--benchmark", "pope", "--data", str(pope_hub), "--split", "random", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["run"]["data"].startswith("POPE:") and head["run"]["split"] == "random" and len(lines) == 3
    assert "pope_random" in capsys.readouterr().out
