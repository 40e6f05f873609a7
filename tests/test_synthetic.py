"""The synthetic benchmark: determinism, split disjointness, question correctness against the scene."""
import dataclasses
import hashlib

import numpy as np
import pytest

from lostattn.tasks.glyphs import CHARACTERS, glyph_mask
from lostattn.tasks.synthetic import (AUX_QUESTION_FAMILIES, COLOURS, QUESTION_FAMILIES, SPLITS, SyntheticBenchmark, SyntheticConfig,
                                      render)

SMALL = SyntheticConfig(images={"train": 60, "validation": 20, "test": 40})


def _digest(bench):
    h = hashlib.sha256()
    for split in SPLITS:
        for i in range(len(bench.scenes[split])):
            h.update(np.asarray(bench.image(split, i)).tobytes())
        for s in bench.samples(split, families=QUESTION_FAMILIES + AUX_QUESTION_FAMILIES):
            h.update(f"{s.id}|{s.question}|{s.answer}".encode())
    return h.hexdigest()


def test_same_seed_same_bytes():
    assert _digest(SyntheticBenchmark(SMALL)) == _digest(SyntheticBenchmark(SMALL))


def test_other_seed_other_bytes():
    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    assert _digest(SyntheticBenchmark(SMALL)) != _digest(SyntheticBenchmark(other))


def test_committed_definition_loads_and_rejects_unknown_fields(tmp_path):
    cfg = SyntheticConfig.from_file()
    assert cfg.images["test"] > 0
    bad = tmp_path / "b.json"
    bad.write_text('{"seed": 1, "colour_count": 3}')
    with pytest.raises(ValueError, match="colour_count"):
        SyntheticConfig.from_file(bad)
    with pytest.raises(FileNotFoundError):
        SyntheticConfig.from_file(tmp_path / "missing.json")


def test_splits_never_share_a_scene():
    b = SyntheticBenchmark(SMALL)
    keys = {split: {s.key() for s in b.scenes[split]} for split in SPLITS}
    assert all(len(keys[s]) == SMALL.images[s] for s in SPLITS)
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]


def test_answers_follow_from_the_scene():
    b = SyntheticBenchmark(SMALL)
    for s in b.samples("test"):
        scene = b.scenes["test"][s.meta["image_index"]]
        names = {o.name for o in scene.objects}
        if s.family == "exist":
            obj = s.question.split("Is there a ")[1].split(" in the image")[0]
            assert (obj in names) == (s.answer == "yes")
        elif s.family == "ocr":
            assert s.answer == scene.char
        elif s.family == "count" and s.meta["subtype"] == "objects":
            assert s.answer == str(len(scene.objects))
        elif s.family == "mc":
            assert s.options[s.answer] in names or s.options[s.answer] == str(len(scene.objects))
            assert sorted(s.options) == list("ABCD")


def test_each_family_present_and_exist_balanced():
    samples = SyntheticBenchmark(SMALL).samples("test")
    fams = {s.family for s in samples}
    assert fams == set(QUESTION_FAMILIES)
    exist = [s.answer for s in samples if s.family == "exist"]
    assert exist.count("yes") == exist.count("no")
    subtypes = {s.meta["subtype"] for s in samples if s.family == "exist"}
    assert subtypes == {"random", "popular", "adversarial"}


def test_limit_per_family_and_bad_names():
    b = SyntheticBenchmark(SMALL)
    s = b.samples("test", limit_per_family=3)
    assert len(s) == 3 * len(QUESTION_FAMILIES)
    with pytest.raises(ValueError, match="unknown split"):
        b.samples("dev")
    with pytest.raises(ValueError, match="unknown synthetic families"):
        b.samples("test", families=["color"])


def test_render_draws_objects_in_their_cells_and_the_glyph():
    b = SyntheticBenchmark(SMALL)
    scene = b.scenes["test"][0]
    img = np.asarray(render(scene, SMALL)).astype(int)
    cell = SMALL.cell
    for o in scene.objects:
        block = img[o.row * cell:(o.row + 1) * cell, o.col * cell:(o.col + 1) * cell]
        assert (np.abs(block - np.array(COLOURS[o.colour])).sum(-1) == 0).any()
    r, c = scene.char_cell
    block = img[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
    assert ((block == 245).all(-1)).sum() == glyph_mask(scene.char).sum()


def test_glyphs_are_distinct():
    masks = {c: glyph_mask(c).tobytes() for c in CHARACTERS}
    assert len(set(masks.values())) == len(CHARACTERS)
    with pytest.raises(KeyError, match="supported"):
        glyph_mask("?")


def test_locate_answers_follow_from_the_scene_and_leave_the_scored_families_alone():
    b = SyntheticBenchmark(SMALL)
    scored = [(s.id, s.question, s.answer) for s in b.samples("train")]
    with_aux = b.samples("train", families=QUESTION_FAMILIES + AUX_QUESTION_FAMILIES)
    assert [(s.id, s.question, s.answer) for s in with_aux if s.family in QUESTION_FAMILIES] == scored
    rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")
    locate = [s for s in with_aux if s.family == "locate"]
    assert len(locate) == 2 * SMALL.images["train"]
    for s in locate:
        scene = b.scenes["train"][s.meta["image_index"]]
        name = s.question.split("Where is the ")[1].rstrip("?")
        at = [f"{rows[o.row]} {cols[o.col]}" for o in scene.objects if o.name == name]
        assert s.answer == (at[0] if at else "nowhere")
    assert {s.answer == "nowhere" for s in locate} == {True, False}


def test_letter_lookup_answers_name_the_option_asked_for():
    b = SyntheticBenchmark(SMALL)
    letter = b.samples("train", families=("letter",))
    assert len(letter) == SMALL.images["train"]
    for s in letter:
        asked = s.question.split("Which option is ")[1].split("?")[0]
        assert s.options[s.answer] == asked and sorted(s.options) == list("ABCD")
        assert len(set(s.options.values())) == 4
