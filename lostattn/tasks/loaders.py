"""The synthetic suite and the paper's seven benchmarks, declared as entries of one registry, read from local files.

| benchmark      | paper name     | answer kinds       | files                                                     |
|----------------|----------------|--------------------|-----------------------------------------------------------|
| synthetic      | Synthetic      | yesno, short, mc   | generated (optional definition .json)                     |
| pope           | POPE           | yesno              | official .json/.jsonl; lmms-lab/POPE folder               |
| 3dsrbench      | 3DSRBench      | mc                 | VLMEvalKit .tsv; .json/.jsonl; parquet folder             |
| realworldqa    | RealWorldQA    | mc, short          | lmms-lab/RealWorldQA folder; .json/.jsonl/.tsv            |
| mmmu           | MMMU           | mc, short          | MMMU/MMMU folder (per-subject parquet); .json/.jsonl/.tsv |
| vmcbench       | VMCBench       | mc                 | suyc21/VMCBench folder; VLMEvalKit .tsv; .json/.jsonl     |
| mathvista      | MathVista      | mc, numeric, short | AI4Math/MathVista folder; testmini .json keyed by pid     |
| hallusionbench | HallusionBench | yesno              | lmms-lab/HallusionBench folder; HallusionBench.json       |

| benchmark      | fields read besides the id (* optional; a/b: the first present)                    |
|----------------|------------------------------------------------------------------------------------|
| synthetic      | -                                                                                  |
| pope           | question/text, answer/label, image/image_source, category*                         |
| 3dsrbench      | question, A, B, C*, D*, answer, image/image_path, category*                        |
| realworldqa    | question, answer, image                                                            |
| mmmu           | question, options, answer, image_1, question_type*, subfield*                      |
| vmcbench       | question, A, B, C, D, answer, image, category*                                     |
| mathvista      | question_type, answer, query/question, decoded_image/image, choices*, answer_type* |
| hallusionbench | question, gt_answer, category, image/filename*, visual_input*                      |

| benchmark      | record id: the first field present (a+b: joined with '_'), else the row number |
|----------------|--------------------------------------------------------------------------------|
| synthetic      | generated                                                                      |
| pope           | id or question_id                                                              |
| 3dsrbench      | index or id                                                                    |
| realworldqa    | index or id                                                                    |
| mmmu           | id                                                                             |
| vmcbench       | index or id                                                                    |
| mathvista      | pid or id                                                                      |
| hallusionbench | category+subcategory+set_id+figure_id+question_id                              |

| benchmark      | prompt                                                                                        |
|----------------|-----------------------------------------------------------------------------------------------|
| synthetic      | each family's question and instruction (lostattn.tasks.synthetic)                             |
| pope           | question, then "Answer the question using a single word or phrase."                           |
| 3dsrbench      | VMCBench's: Question, Options (A. …), "Answer ONLY option's letter from the given choices."   |
| realworldqa    | the question as published (it lists its options and says how to answer)                       |
| mmmu           | Question, Options (A. …), then lmms-eval's MMMU letter instruction; open questions as POPE's  |
| vmcbench       | the official: Question, Options (A. …), "Answer ONLY option's letter from the given choices." |
| mathvista      | the published query (hint, question, choices); multi_choice without a query: VMCBench's       |
| hallusionbench | question, then "Answer yes or no."                                                            |

A folder is a Hugging Face dataset as the hub serves it (parquet files, `--split` picks the split) or as
`datasets.save_to_disk` writes it (a Dataset, or a DatasetDict whose split `--split` picks); see
`lostattn.tasks.sources` for every input form and `lostattn.tasks.images` for image fields (paths relative to the
file's folder or to `image_root`, base64, the `datasets` Image feature). HallusionBench's `--split test` reads its
image + non_image splits, POPE's `Full` folder its three subsets. POPE's category defaults to the subset named in
the file name (coco_pope_random.json -> random).

What the loaders refuse (each error names the input, the record and the field, and the fix): two records with one
id; a yes/no answer that is neither; a multiple-choice answer that is not one of the record's options (MMMU,
VMCBench, 3DSRBench, MathVista, RealWorldQA); an empty answer (MMMU's and MathVista's test splits publish none); an
image field holding something that is not an image; an image file that does not exist.

RealWorldQA, decided where the data are ambiguous: a question that lists options (lines "A. text", "A) text" or
"(A) text", running A, B, ...) is multiple choice, whatever the form of its answer; the answer "C", "(C)", "C." or
"C)" is read as the letter C, an answer equal to one option's text as that option's letter, and anything else, or a
letter the question does not list, is refused. A question that lists no options is a short answer, scored on its
text as given (normalised matching ignores brackets and dots), so a letter read off a sign stays a short answer.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

from lostattn.tasks.registry import REGISTRY, Benchmark, SourceRecord, display_name, formats_table, get_benchmark, register
from lostattn.tasks.scoring import normalize
from lostattn.tasks.synthetic import MC_SUFFIX, SyntheticBenchmark, SyntheticConfig
from lostattn.tasks.types import VQASample

SHORT = "Answer the question using a single word or phrase."
MMMU_MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def mc_question(question: str, options: dict[str, str], suffix: str = MC_SUFFIX) -> str:
    """The multiple-choice prompt of the official VMCBench code: question, lettered options, instruction."""
    body = "\n".join(f"{k}. {v}" for k, v in options.items())
    return f"Question: {question}\nOptions:\n{body}\n{suffix}"


def _letter(answer: str) -> str | None:
    """'C', '(C)', 'C.', 'C)' -> 'C'; anything else -> None."""
    m = re.fullmatch(r"\(?([A-Z])\)?\.?", answer.strip())
    return m.group(1) if m else None


# ---- synthetic -------------------------------------------------------------------------------------------------
def _synthetic(path, split: str, limit_per_family: int | None) -> list[VQASample]:
    cfg = SyntheticConfig.from_file(path) if path else None
    return SyntheticBenchmark(cfg).samples(split, limit_per_family=limit_per_family)


register(Benchmark(
    name="synthetic", display_name="Synthetic", kinds=("yesno", "short", "mc"),
    files="generated (optional definition .json)", fields="-",
    prompt="each family's question and instruction (lostattn.tasks.synthetic)", load=_synthetic,
    analogues={"exist": "POPE", "spatial": "3DSRBench", "mc": "VMCBench", "attribute": "RealWorldQA"}))


# ---- POPE ------------------------------------------------------------------------------------------------------
def _pope(r: SourceRecord) -> VQASample:
    answer = r.text("answer", "label").lower()
    if answer not in ("yes", "no"):
        raise r.fail(f"field 'answer' is {answer!r}; POPE answers are 'yes' or 'no': fix the record")
    subset = re.search(r"(random|popular|adversarial)", Path(r.table.source).name)
    category = r.get("category", default=subset.group(1) if subset else "pope")
    if r.has("image"):
        image = r.image("image")
    else:  # lmms-lab's image_source names the COCO file without its extension
        src = r.text("image", "image_source")
        image = r.image_file(src if Path(src).suffix else f"{src}.jpg", "image_source")
    return r.sample(question=f"{r.text('question', 'text')}\n{SHORT}", answer=answer, family=f"pope_{category}",
                    kind="yesno", image=image)


register(Benchmark(
    name="pope", display_name="POPE", kinds=("yesno",),
    files="official .json/.jsonl; lmms-lab/POPE folder",
    fields="question/text, answer/label, image/image_source, category*",
    prompt=f'question, then "{SHORT}"', to_sample=_pope, id_fields=("id", "question_id"),
    test_splits=("adversarial", "popular", "random")))


# ---- option-letter benchmarks (VLMEvalKit layout) --------------------------------------------------------------
def _letter_mc(r: SourceRecord) -> VQASample:
    options = {k: str(r.row[k]).strip() for k in "ABCDEFGHIJ" if r.has(k)}
    if len(options) < 2:
        raise r.fail(f"fewer than two option fields A, B, ... (needed by {r.bench.display_name}); fields "
                     f"present: {sorted(r.row)}")
    answer = r.text("answer")
    letter = _letter(answer)
    if letter not in options:
        raise r.fail(f"answer {answer!r} is not one of its options {list(options)}: fix the answer or the options")
    return r.sample(question=mc_question(r.text("question"), options), answer=letter,
                    family=r.get("category", default=r.bench.name), kind="mc", options=options,
                    image=r.image("image", "image_path"))


_LETTER_FIELDS = "question, A, B, C*, D*, answer, image/image_path, category*"
register(Benchmark(
    name="3dsrbench", display_name="3DSRBench", kinds=("mc",),
    files="VLMEvalKit .tsv; .json/.jsonl; parquet folder", fields=_LETTER_FIELDS,
    prompt=f'VMCBench\'s: Question, Options (A. …), "{MC_SUFFIX}"', to_sample=_letter_mc,
    id_fields=("index", "id")))


# ---- RealWorldQA -----------------------------------------------------------------------------------------------
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.)])\s+(\S.*?)\s*$")


def listed_options(question: str) -> dict[str, str]:
    """The options a question lists one per line ("A. text", "A) text", "(A) text"), as the run A, B, C, ... that
    starts at A; {} when it lists fewer than two."""
    found: dict[str, str] = {}
    for line in question.splitlines():
        m = _OPTION_LINE.match(line)
        if not m:
            continue
        letter = m.group(1) or m.group(2)
        if letter == chr(ord("A") + len(found)):
            found[letter] = m.group(3)
        elif letter == "A":  # a second list starts: the options are the last complete run
            found = {"A": m.group(3)}
    return found if len(found) >= 2 else {}


def _realworldqa(r: SourceRecord) -> VQASample:
    question, answer = r.text("question"), r.text("answer")
    options = listed_options(question)
    image = r.image("image")
    if not options:
        return r.sample(question=question, answer=answer, family="realworldqa", kind="short", image=image)
    letter = _letter(answer)
    if letter is None:
        by_text = [k for k, v in options.items() if normalize(v) == normalize(answer)]
        letter = by_text[0] if len(by_text) == 1 else None
        if letter is None:
            raise r.fail(f"answer {answer!r} is neither an option letter nor the text of one of the options "
                         f"{list(options)} the question lists: fix the answer")
    elif letter not in options:
        raise r.fail(f"answer {answer!r} names option {letter}, but the question lists options {list(options)} "
                     f"only: fix the answer or the question's option lines")
    return r.sample(question=question, answer=letter, family="realworldqa", kind="mc", options=options, image=image)


register(Benchmark(
    name="realworldqa", display_name="RealWorldQA", kinds=("mc", "short"),
    files="lmms-lab/RealWorldQA folder; .json/.jsonl/.tsv", fields="question, answer, image",
    prompt="the question as published (it lists its options and says how to answer)", to_sample=_realworldqa,
    id_fields=("index", "id")))


# ---- MMMU ------------------------------------------------------------------------------------------------------
def _mmmu(r: SourceRecord) -> VQASample:
    question = re.sub(r"<image \d+>", "", r.text("question")).strip()
    answer = r.text("answer", default="")
    if answer in ("", "?"):
        raise r.fail(f"no answer (field 'answer' is {answer!r}); {r.no_answer_hint()}")
    family = r.get("subfield", "subject", default="mmmu")
    image = r.image("image_1", "image")
    if r.get("question_type", default="multiple-choice") != "multiple-choice":
        return r.sample(question=f"{question}\n{SHORT}", answer=answer, family=family, kind="short", image=image)
    raw = r.get("options")
    try:
        listed = raw if isinstance(raw, list) else ast.literal_eval(str(raw))
    except (ValueError, SyntaxError):
        listed = None
    if not isinstance(listed, (list, tuple)) or len(listed) < 2:
        raise r.fail(f"field 'options' is {raw!r}; a multiple-choice question needs a list of at least two options, "
                     f"e.g. \"['red', 'blue']\"")
    options = {chr(65 + j): str(o) for j, o in enumerate(listed)}
    letter = _letter(answer)
    if letter not in options:
        raise r.fail(f"answer {answer!r} is not one of its options {list(options)} (field 'options' has "
                     f"{len(options)} entries): fix the answer or the options")
    return r.sample(question=mc_question(question, options, MMMU_MC_SUFFIX), answer=letter, family=family,
                    kind="mc", options=options, image=image)


register(Benchmark(
    name="mmmu", display_name="MMMU", kinds=("mc", "short"),
    files="MMMU/MMMU folder (per-subject parquet); .json/.jsonl/.tsv",
    fields="question, options, answer, image_1, question_type*, subfield*",
    prompt="Question, Options (A. …), then lmms-eval's MMMU letter instruction; open questions as POPE's",
    to_sample=_mmmu,
    id_fields=("id",), answered_split="validation"))


# ---- VMCBench (the option-letter layout of 3DSRBench above) ----------------------------------------------------
register(Benchmark(
    name="vmcbench", display_name="VMCBench", kinds=("mc",),
    files="suyc21/VMCBench folder; VLMEvalKit .tsv; .json/.jsonl",
    fields="question, A, B, C, D, answer, image, category*",
    prompt=f'the official: Question, Options (A. …), "{MC_SUFFIX}"', to_sample=_letter_mc,
    id_fields=("index", "id")))


# ---- MathVista -------------------------------------------------------------------------------------------------
def _mathvista(r: SourceRecord) -> VQASample:
    qtype = r.text("question_type")
    answer = r.text("answer", default="")
    if not answer:
        raise r.fail(f"no answer (field 'answer' is empty); {r.no_answer_hint()}")
    prompt = r.text("query", "question")
    image = r.image("decoded_image", "image")
    if qtype != "multi_choice":
        kind = "numeric" if r.get("answer_type", default="") in ("integer", "float") else "short"
        return r.sample(question=prompt, answer=answer, family=f"mathvista_{qtype}", kind=kind, image=image)
    choices = r.get("choices")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise r.fail(f"field 'choices' is {choices!r}; a multi_choice question needs a list of at least two")
    options = {chr(65 + j): str(c) for j, c in enumerate(choices)}
    letter = next((k for k, v in options.items() if v.strip() == answer), None)
    if letter is None:
        raise r.fail(f"answer {answer!r} is not among its choices {list(choices)}: fix the answer or the choices")
    if not r.has("query"):
        prompt = mc_question(prompt, options)
    return r.sample(question=prompt, answer=letter, family=f"mathvista_{qtype}", kind="mc", options=options,
                    image=image)


register(Benchmark(
    name="mathvista", display_name="MathVista", kinds=("mc", "numeric", "short"),
    files="AI4Math/MathVista folder; testmini .json keyed by pid",
    fields="question_type, answer, query/question, decoded_image/image, choices*, answer_type*",
    prompt="the published query (hint, question, choices); multi_choice without a query: VMCBench's",
    to_sample=_mathvista,
    id_fields=("pid", "id"), keyed_by="pid", answered_split="testmini"))


# ---- HallusionBench --------------------------------------------------------------------------------------------
def _hallusionbench(r: SourceRecord) -> VQASample:
    gt = r.text("gt_answer")
    if gt not in ("0", "1"):
        raise r.fail(f"field 'gt_answer' is {gt!r}; HallusionBench answers are '1' (yes) or '0' (no): fix the record")
    visual = str(r.get("visual_input", default="1")).strip() != "0"
    image = r.image("image", "filename") if visual else None
    if visual and image is None:
        raise r.fail("visual_input is 1 but there is no image (fields 'image' or 'filename'): give the record its image, "
                     "or set visual_input to 0 for a question without one")
    return r.sample(question=f"{r.text('question')}\nAnswer yes or no.", answer="yes" if gt == "1" else "no",
                    family=f"hallusion_{r.text('category')}", kind="yesno", image=image)


register(Benchmark(
    name="hallusionbench", display_name="HallusionBench", kinds=("yesno",),
    files="lmms-lab/HallusionBench folder; HallusionBench.json",
    fields="question, gt_answer, category, image/filename*, visual_input*",
    prompt='question, then "Answer yes or no."', to_sample=_hallusionbench,
    id_fields=("category+subcategory+set_id+figure_id+question_id",), test_splits=("image", "non_image")))


BENCHMARKS = tuple(REGISTRY)


def load_benchmark(name: str, path=None, split: str = "test", limit_per_family: int | None = None,
                   image_root: str | Path | None = None) -> list[VQASample]:
    """Samples of a registered benchmark: 'synthetic' (path: an optional definition file) or one of the seven read
    from `path` (a file, a Hugging Face dataset folder, or a `datasets` Dataset/DatasetDict).

    `split` picks a dataset folder's split (a single file is one split); `limit_per_family` keeps the first N
    samples of each family; `image_root` is where relative image paths resolve (default: the file's folder).
    """
    return get_benchmark(name).samples(path, split=split, limit_per_family=limit_per_family, image_root=image_root)


def benchmark_fingerprint(name: str, path, split: str = "test", image_root: str | Path | None = None) -> str:
    """What identifies a benchmark input's content, for a cell's cache key: the SHA-256 over every sample's id,
    question, answer and options and its image's `lostattn.tasks.images.image_fingerprint` (an image file's bytes,
    an Arrow or base64 image's bytes), so an image overwritten under the same name changes it. An input that cannot
    be read gives the error's text (the cell then runs, and fails with it)."""
    from lostattn.tasks.images import image_fingerprint

    h = hashlib.sha256()
    try:
        samples = load_benchmark(name, path, split=split, image_root=image_root)
    except (ValueError, OSError) as e:
        return "unreadable:" + hashlib.sha256(str(e).encode()).hexdigest()[:16]
    seen: dict[str, str] = {}  # an image file several samples share (POPE's COCO images) is read once
    for s in samples:
        img = s.image
        ref = str(getattr(img, "path", "")) or (str(img) if isinstance(img, (str, Path)) else "")
        if ref and ref in seen:
            fp = seen[ref]
        else:
            fp = image_fingerprint(img)
            if ref:
                seen[ref] = fp
        h.update(json.dumps([s.id, s.question, s.answer, s.options, fp], sort_keys=True).encode())
    return h.hexdigest()[:16]


__all__ = ["BENCHMARKS", "REGISTRY", "Benchmark", "display_name", "formats_table", "get_benchmark",
           "listed_options", "load_benchmark", "mc_question", "benchmark_fingerprint"]
