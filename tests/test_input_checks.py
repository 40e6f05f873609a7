"""Benchmark inputs that used to be read wrongly without a word: each is now read correctly or refused in one line
naming the input and the fix."""
from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from lostattn.tasks.loaders import load_benchmark
from lostattn.tasks.types import BenchmarkDataError


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---- 2: a TSV whose rows end in a tab ----------------------------------------------------------------------------
VMC_HEADER = ["index", "question", "A", "B", "C", "D", "answer", "image", "category"]


def _vmc_rows(tmp_path) -> list[list[str]]:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    return [["7", "Which colour?", "red", "blue", "green", "white", "A", "a.png", "colour"],
            ["8", "Which shape?", "dot", "box", "ring", "line", "C", "a.png", "shape"]]


def test_tsv_rows_ending_in_a_tab_keep_their_columns(tmp_path):
    rows = _vmc_rows(tmp_path)
    plain, tabbed = tmp_path / "plain.tsv", tmp_path / "tabbed.tsv"
    plain.write_text("\n".join("\t".join(r) for r in [VMC_HEADER] + rows) + "\n")
    tabbed.write_text("\t".join(VMC_HEADER) + "\n" + "".join("\t".join(r) + "\t\n" for r in rows))
    want = load_benchmark("vmcbench", plain)
    got = load_benchmark("vmcbench", tabbed)
    assert [(s.id, s.answer, s.family, s.options) for s in got] == [(s.id, s.answer, s.family, s.options)
                                                                      for s in want]
    assert [s.answer for s in got] == ["A", "C"] and got[0].options["A"] == "red"


@pytest.mark.parametrize("stray_rows", [(0, 1), (1,)])
def test_tsv_row_with_a_value_beyond_the_header_is_refused(tmp_path, stray_rows):
    rows = _vmc_rows(tmp_path)
    rows = [r + ["stray"] if i in stray_rows else r for i, r in enumerate(rows)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join("\t".join(r) for r in [VMC_HEADER] + rows) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"bad.tsv.*line [23]") as err:
        load_benchmark("vmcbench", bad)
    assert "\n" not in str(err.value)


# ---- 3: a hub parquet folder missing a shard -----------------------------------------------------------------------
def _pope_shard(folder, index: int, total: int, n: int = 2) -> None:
    feats = datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                               "answer": datasets.Value("string"), "image": datasets.Image()})
    img = {"bytes": _png_bytes(Image.new("RGB", (8, 8), "blue")), "path": None}
    datasets.Dataset.from_dict({"question_id": [f"{index}-{i}" for i in range(n)],
                                "question": ["Is there a dog?"] * n, "answer": ["no"] * n, "image": [img] * n},
                               features=feats).to_parquet(str(folder / f"test-{index:05d}-of-{total:05d}.parquet"))


def test_parquet_folder_missing_a_shard_is_refused(tmp_path):
    folder = tmp_path / "POPE" / "data"
    folder.mkdir(parents=True)
    for i in (0, 2):
        _pope_shard(folder, i, 3)
    with pytest.raises(BenchmarkDataError, match=r"shard data/test-00001-of-00003.parquet is missing \(2 of the 3"):
        load_benchmark("pope", tmp_path / "POPE")
    _pope_shard(folder, 1, 3)
    assert len(load_benchmark("pope", tmp_path / "POPE")) == 6


# ---- 4: a 16-bit PNG ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_images_reach_the_model_with_their_values(tmp_path, mode):
    ramp = np.linspace(0, 1, 64 * 32).reshape(32, 64)  # dark to bright, left to right
    if mode == "F":
        src = Image.fromarray(ramp.astype(np.float32), "F")
        path = tmp_path / "ramp.tiff"
    else:
        src = Image.fromarray((ramp * 65535).astype(np.uint16 if mode == "I;16" else np.int32))
        assert src.mode == mode
        path = tmp_path / ("ramp.png" if mode == "I;16" else "ramp.tiff")
    src.save(path)
    (tmp_path / "rwqa.jsonl").write_text(json.dumps({"id": "q1", "question": "Bright?", "answer": "yes",
                                                     "image": path.name}) + "\n")
    (s,) = load_benchmark("realworldqa", tmp_path / "rwqa.jsonl")
    got = np.asarray(s.load_image(), dtype=np.float64)[..., 0]
    np.testing.assert_allclose(got, ramp * 255, atol=1.01)  # the real values, not 99.6% white
    assert got.mean() == pytest.approx(127.5, abs=1.0)


# ---- 11: a decompression bomb ------------------------------------------------------------------------------------
def test_an_image_over_the_pixel_limit_is_one_line_naming_file_and_sample(tmp_path, monkeypatch):
    Image.new("L", (300, 300)).save(tmp_path / "huge.png")  # 90000 pixels, over the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # the limit Pillow applies: > 2x it is a bomb
    (tmp_path / "rwqa.jsonl").write_text(json.dumps({"id": "q7", "question": "What?", "answer": "a",
                                                     "image": "huge.png"}) + "\n")
    (s,) = load_benchmark("realworldqa", tmp_path / "rwqa.jsonl")
    with pytest.raises(BenchmarkDataError) as err:
        s.load_image()
    msg = str(err.value)
    assert "\n" not in msg and "sample q7" in msg and "huge.png" in msg and "too large to decode" in msg
