"""Loaders for the synthetic suite and the paper's seven benchmarks, from local files in their public formats.

| benchmark      | file                                   | fields used                                              |
|----------------|----------------------------------------|----------------------------------------------------------|
| pope           | .json/.jsonl (official or lmms-eval)   | question or text, answer or label, image, category*      |
| 3dsrbench      | .tsv (VLMEvalKit) or .json/.jsonl      | question, A, B, C*, D*, answer, category*, image         |
| realworldqa    | .json/.jsonl/.tsv (lmms-eval)          | question, answer, image                                  |
| mmmu           | .json/.jsonl/.tsv (lmms-eval)          | id, question, options, answer, image_1, question_type*   |
| vmcbench       | .tsv/.json/.jsonl                      | question, A, B, C, D, answer, category*, image           |
| mathvista      | .json (testmini, keyed by pid)         | question or query, image, answer, question_type, choices*|
| hallusionbench | .json (HallusionBench.json)            | question, gt_answer, category, filename*, visual_input*  |

(* optional). `image` fields hold a path (relative to the file's folder or to `image_root`) or a base64 string.
POPE's category defaults to the subset named in the file name (coco_pope_random.json -> random).
Prompts are fixed per benchmark: the official VMCBench wording for every option-letter question, lmms-eval's
short-answer suffix elsewhere.
"""
from __future__ import annotations

import ast
import base64
import io
import json
import re
from pathlib import Path

import pandas as pd
from PIL import Image

from .synthetic import MC_SUFFIX, SyntheticBenchmark, SyntheticConfig
from .types import VQASample

SHORT = "Answer the question using a single word or phrase."
BENCHMARKS = ("synthetic", "pope", "3dsrbench", "realworldqa", "mmmu", "vmcbench", "mathvista", "hallusionbench")


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    suf = path.suffix.lower()
    try:
        if suf == ".jsonl":
            return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        if suf == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):  # MathVista: {pid: record}
                return [{"pid": k, **v} for k, v in data.items()]
            return data
        if suf in (".tsv", ".csv"):
            return pd.read_csv(path, sep="\t" if suf == ".tsv" else ",", dtype=str, keep_default_na=False
                               ).to_dict("records")
    except (json.JSONDecodeError, pd.errors.ParserError) as e:
        raise ValueError(f"{path} is not valid {suf[1:]}: {e}") from e
    raise ValueError(f"{path}: unsupported file type {suf!r} (use .json, .jsonl, .tsv or .csv)")


class _Fields:
    """Field access that names the file, record and field when something is missing."""

    def __init__(self, path: Path, bench: str):
        self.path, self.bench = path, bench

    def get(self, rec: dict, i: int, *names: str, required: bool = True, default=None):
        for n in names:
            v = rec.get(n)
            if v is not None and not (isinstance(v, float) and pd.isna(v)) and v != "":
                return v
        if required:
            raise ValueError(f"{self.path}: record {i} has no field {' or '.join(repr(n) for n in names)} "
                             f"(needed by {self.bench}); fields present: {sorted(rec)}")
        return default


class _B64Image:
    def __init__(self, data: str):
        self.data = data

    def __call__(self) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(self.data))).convert("RGB")


def _image(value, path: Path, image_root: str | Path | None):
    if value is None:
        return None
    if isinstance(value, dict) and "bytes" in value:  # datasets' Image feature exported to JSON
        return _B64Image(value["bytes"]) if isinstance(value["bytes"], str) else None
    s = str(value)
    if len(s) > 256 and "/" not in s[:64] and "." not in s[-8:]:
        return _B64Image(s)
    root = Path(image_root) if image_root else path.parent
    return root / s


def _mc_question(question: str, options: dict[str, str], suffix: str = MC_SUFFIX) -> str:
    body = "\n".join(f"{k}. {v}" for k, v in options.items())
    return f"Question: {question}\nOptions:\n{body}\n{suffix}"


def _letter_options(rec: dict) -> dict[str, str]:
    return {k: str(rec[k]) for k in "ABCDEFGH" if k in rec and str(rec[k]).strip() not in ("", "nan")}


def _limit(samples: list[VQASample], limit_per_family: int | None) -> list[VQASample]:
    if limit_per_family is None:
        return samples
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        if seen.get(s.family, 0) < limit_per_family:
            seen[s.family] = seen.get(s.family, 0) + 1
            out.append(s)
    return out


def load_pope(path, image_root=None) -> list[VQASample]:
    path, f = Path(path), _Fields(Path(path), "pope")
    m = re.search(r"(random|popular|adversarial)", path.name)
    out = []
    for i, r in enumerate(_read_records(path)):
        q = f.get(r, i, "question", "text")
        a = str(f.get(r, i, "answer", "label")).strip().lower()
        if a not in ("yes", "no"):
            raise ValueError(f"{path}: record {i} field 'answer' is {a!r}, expected yes or no")
        cat = f.get(r, i, "category", required=False, default=m.group(1) if m else "pope")
        out.append(VQASample(id=str(f.get(r, i, "question_id", "id", required=False, default=i)),
                             question=f"{q}\n{SHORT}", answer=a, family=f"pope_{cat}", kind="yesno",
                             benchmark="pope", image=_image(f.get(r, i, "image", "image_source"), path, image_root)))
    return out


def _load_letter_mc(path, bench: str, image_root=None, family_field="category") -> list[VQASample]:
    path, f = Path(path), _Fields(Path(path), bench)
    out = []
    for i, r in enumerate(_read_records(path)):
        opts = _letter_options(r)
        if len(opts) < 2:
            raise ValueError(f"{path}: record {i} has fewer than two option fields A, B, ... (needed by {bench})")
        ans = str(f.get(r, i, "answer")).strip()
        if ans not in opts:
            raise ValueError(f"{path}: record {i} answer {ans!r} is not one of its options {list(opts)}")
        out.append(VQASample(id=str(f.get(r, i, "index", "id", required=False, default=i)),
                             question=_mc_question(str(f.get(r, i, "question")), opts), answer=ans,
                             family=str(f.get(r, i, family_field, required=False, default=bench)), kind="mc",
                             benchmark=bench, options=opts,
                             image=_image(f.get(r, i, "image", "image_path"), path, image_root)))
    return out


def load_3dsrbench(path, image_root=None):
    return _load_letter_mc(path, "3dsrbench", image_root)


def load_vmcbench(path, image_root=None):
    return _load_letter_mc(path, "vmcbench", image_root)


def load_realworldqa(path, image_root=None) -> list[VQASample]:
    path, f = Path(path), _Fields(Path(path), "realworldqa")
    out = []
    for i, r in enumerate(_read_records(path)):
        ans = str(f.get(r, i, "answer")).strip()
        kind = "mc" if re.fullmatch(r"[A-F]", ans) else "short"
        out.append(VQASample(id=str(f.get(r, i, "index", "id", required=False, default=i)),
                             question=str(f.get(r, i, "question")), answer=ans, family="realworldqa", kind=kind,
                             benchmark="realworldqa", image=_image(f.get(r, i, "image"), path, image_root)))
    return out


def load_mmmu(path, image_root=None) -> list[VQASample]:
    path, f = Path(path), _Fields(Path(path), "mmmu")
    out = []
    for i, r in enumerate(_read_records(path)):
        q = re.sub(r"<image \d+>", "", str(f.get(r, i, "question"))).strip()
        qtype = f.get(r, i, "question_type", required=False, default="multiple-choice")
        ans = str(f.get(r, i, "answer")).strip()
        if qtype == "multiple-choice":
            raw = f.get(r, i, "options")
            try:
                opts_list = raw if isinstance(raw, list) else ast.literal_eval(raw)
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{path}: record {i} field 'options' is not a list: {raw!r}") from e
            opts = {chr(65 + j): str(o) for j, o in enumerate(opts_list)}
            question = _mc_question(q, opts, "Answer with the option's letter from the given choices directly.")
            kind = "mc"
        else:
            opts, question, kind = None, f"{q}\n{SHORT}", "short"
        out.append(VQASample(id=str(f.get(r, i, "id")), question=question, answer=ans,
                             family=str(f.get(r, i, "subfield", "subject", required=False, default="mmmu")),
                             kind=kind, benchmark="mmmu", options=opts,
                             image=_image(f.get(r, i, "image_1", "image"), path, image_root)))
    return out


def load_mathvista(path, image_root=None) -> list[VQASample]:
    path, f = Path(path), _Fields(Path(path), "mathvista")
    out = []
    for i, r in enumerate(_read_records(path)):
        qtype = f.get(r, i, "question_type")
        ans = str(f.get(r, i, "answer")).strip()
        prompt = str(f.get(r, i, "query", "question"))
        opts = None
        if qtype == "multi_choice":
            choices = f.get(r, i, "choices")
            opts = {chr(65 + j): str(c) for j, c in enumerate(choices)}
            letter = next((k for k, v in opts.items() if v.strip() == ans), None)
            if letter is None:
                raise ValueError(f"{path}: record {i} answer {ans!r} is not among its choices {choices}")
            ans, kind = letter, "mc"
            if "query" not in r:
                prompt = _mc_question(prompt, opts)
        else:
            kind = "numeric" if f.get(r, i, "answer_type", required=False, default="") in ("integer", "float") \
                else "short"
        out.append(VQASample(id=str(f.get(r, i, "pid", "id", required=False, default=i)), question=prompt,
                             answer=ans, family=f"mathvista_{qtype}", kind=kind, benchmark="mathvista", options=opts,
                             image=_image(f.get(r, i, "image"), path, image_root)))
    return out


def load_hallusionbench(path, image_root=None) -> list[VQASample]:
    path, f = Path(path), _Fields(Path(path), "hallusionbench")
    out = []
    for i, r in enumerate(_read_records(path)):
        gt = str(f.get(r, i, "gt_answer")).strip()
        if gt not in ("0", "1"):
            raise ValueError(f"{path}: record {i} field 'gt_answer' is {gt!r}, expected '0' or '1'")
        visual = str(f.get(r, i, "visual_input", required=False, default="1")) != "0"
        fname = f.get(r, i, "filename", required=visual)
        sid = "_".join(str(r.get(k, "")) for k in ("category", "subcategory", "set_id", "figure_id", "question_id"))
        out.append(VQASample(id=sid if sid.strip("_") else str(i),
                             question=f"{f.get(r, i, 'question')}\nAnswer yes or no.",
                             answer="yes" if gt == "1" else "no", family=f"hallusion_{f.get(r, i, 'category')}",
                             kind="yesno", benchmark="hallusionbench",
                             image=_image(fname, path, image_root) if visual else None))
    return out


_LOADERS = {"pope": load_pope, "3dsrbench": load_3dsrbench, "realworldqa": load_realworldqa, "mmmu": load_mmmu,
            "vmcbench": load_vmcbench, "mathvista": load_mathvista, "hallusionbench": load_hallusionbench}


def load_benchmark(name: str, path: str | Path | None = None, split: str = "test",
                   limit_per_family: int | None = None, image_root: str | Path | None = None) -> list[VQASample]:
    """Samples of a benchmark: 'synthetic' (path: an optional definition file) or a real one from `path`."""
    if name == "synthetic":
        cfg = SyntheticConfig.from_file(path) if path else None
        return SyntheticBenchmark(cfg).samples(split, limit_per_family=limit_per_family)
    if name not in _LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHMARKS}")
    if path is None:
        raise ValueError(f"benchmark {name!r} needs its local file (--data PATH); nothing is downloaded")
    return _limit(_LOADERS[name](path, image_root), limit_per_family)
