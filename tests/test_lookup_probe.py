"""The option-lookup probe (experiments/lookup_from_scratch.py) asks what it says it asks."""
import importlib.util
import random
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "lookup_from_scratch.py"
_spec = importlib.util.spec_from_file_location("lookup_from_scratch", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)
WORD = {i: w for w, i in probe.VOCAB.items()}


@pytest.mark.parametrize("condition", [c for c in probe.CONDITIONS if c != "copy"])
def test_the_answer_is_the_letter_of_the_option_asked_for(condition):
    rng = random.Random(0)
    for _ in range(200):
        ids, answer = probe.question(condition, rng)
        text = " ".join(WORD[i] for i in ids)
        asked = text.split("Which option is ")[1].split(" ?")[0]
        body = text.split("Options : ")[1].split(" Answer")[0].split(" Question")[0]
        parts = body.split(" ")
        if condition == "key-first":  # "red circle = A blue square = B ..."
            eq = [i for i, w in enumerate(parts) if w == "="]
            options = {parts[i + 1]: " ".join(parts[a:i]) for a, i in zip([0] + [i + 2 for i in eq], eq)}
        else:  # "A . red circle B . blue square ..."
            starts = [i for i, w in enumerate(parts) if w in "ABCD" and i + 1 < len(parts) and parts[i + 1] == "."]
            options = {parts[s]: " ".join(parts[s + 2 : e]) for s, e in zip(starts, starts[1:] + [len(parts)])}
        assert sorted(options) == list("ABCD") and len(set(options.values())) == 4
        assert options[WORD[answer]] == asked
        assert text.startswith("Question") == condition.endswith("question-first")


def test_copy_answers_with_the_word_that_followed():
    rng = random.Random(0)
    for _ in range(200):
        ids, answer = probe.question("copy", rng)
        first, again = ids[:8], ids[8:]
        assert len(set(first)) == 8 and again == first[: len(again)] and answer == first[len(again)]
