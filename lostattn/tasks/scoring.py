"""Answer extraction and scoring, per answer kind, as the real benchmarks score them.

- yesno (POPE, HallusionBench, synthetic exist): the first "yes"/"no" in the reply; accuracy, and precision, recall,
  F1 with "yes" as the positive class, and the yes-ratio (POPE's report).
- mc (VMCBench, 3DSRBench, MMMU multiple choice, synthetic mc): the option letter, read as a standalone letter
  ("B", "(B)", "B.", "Answer: B") or, failing that, from the option text quoted in the reply; accuracy.
- short (synthetic words, RealWorldQA open answers): normalised exact match on the first word(s); accuracy.
- numeric (MathVista free-form): numbers compared with a relative tolerance, else normalised exact match.
"""
from __future__ import annotations

import re
import string

import pandas as pd

_PUNCT = str.maketrans("", "", string.punctuation.replace(".", "").replace("-", ""))


def normalize(text: str) -> str:
    t = text.strip().lower().translate(_PUNCT)
    t = re.sub(r"\s+", " ", t)
    return t.strip(" .")


def extract_yesno(text: str) -> str:
    m = re.search(r"\b(yes|no)\b", text.lower())
    return m.group(1) if m else ""


def extract_letter(text: str, options: dict[str, str] | None = None) -> str:
    letters = "".join(options) if options else "ABCDEFGHIJ"
    t = text.strip()
    m = re.match(rf"^\(?([{letters}])(?:[\).:,\s]|$)", t)
    if m:
        return m.group(1)
    m = re.search(rf"(?:answer|option)\s*(?:is)?\s*:?\s*\(?([{letters}])\b", t, flags=re.I)
    if m:
        return m.group(1).upper()
    m = re.search(rf"\b([{letters}])\b", t)
    if m:
        return m.group(1)
    if options:
        low = normalize(t)
        hits = [k for k, v in options.items() if normalize(str(v)) and normalize(str(v)) in low]
        if len(hits) == 1:
            return hits[0]
    return ""


def _to_number(text: str) -> float | None:
    m = re.search(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text)
    return float(m.group(0).replace(",", "")) if m else None


def extract(kind: str, text: str, options: dict[str, str] | None = None) -> str:
    """The answer a reply gives, in the form the answer key uses."""
    if kind == "yesno":
        return extract_yesno(text)
    if kind == "mc":
        return extract_letter(text, options)
    if kind == "numeric":
        n = _to_number(text)
        return normalize(text) if n is None else f"{n:g}"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return normalize(first_line)


def is_correct(kind: str, prediction: str, answer: str, rel_tol: float = 1e-6) -> bool:
    if kind == "numeric":
        p, a = _to_number(prediction), _to_number(str(answer))
        if p is not None and a is not None:
            return abs(p - a) <= rel_tol * max(1.0, abs(a))
        return normalize(prediction) == normalize(str(answer))
    if kind == "short":
        a = normalize(str(answer))
        p = normalize(prediction)
        return p == a or p.split(" ")[:len(a.split(" "))] == a.split(" ")
    return prediction.strip().lower() == str(answer).strip().lower()


def yesno_stats(predictions: list[str], answers: list[str]) -> dict[str, float]:
    """POPE's numbers: accuracy, precision, recall and F1 for "yes", and the share of "yes" replies."""
    tp = sum(p == "yes" and a == "yes" for p, a in zip(predictions, answers))
    fp = sum(p == "yes" and a == "no" for p, a in zip(predictions, answers))
    fn = sum(p != "yes" and a == "yes" for p, a in zip(predictions, answers))
    n = len(answers)
    acc = sum(p == a for p, a in zip(predictions, answers)) / n if n else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    yes = sum(p == "yes" for p in predictions) / n if n else float("nan")
    return {"accuracy": acc, "precision": prec, "recall": rec, "f1": f1, "yes_ratio": yes}


def summarize(records: pd.DataFrame | list[dict], by: tuple[str, ...] = ("family",)) -> pd.DataFrame:
    """Scores per group of per-sample records (columns: family, kind, prediction, answer, correct).

    `accuracy` is in percent; yes/no groups also get `f1` (percent) and `yes_ratio`.
    """
    df = pd.DataFrame(records)
    rows = []
    for key, g in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n"] = len(g)
        row["accuracy"] = 100.0 * g["correct"].mean()
        if (g["kind"] == "yesno").all():
            st = yesno_stats(g["prediction"].tolist(), g["answer"].astype(str).str.lower().tolist())
            row["f1"] = 100.0 * st["f1"]
            row["yes_ratio"] = st["yes_ratio"]
        rows.append(row)
    return pd.DataFrame(rows)
