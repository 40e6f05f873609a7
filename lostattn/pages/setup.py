"""What every notebook does around its analysis: set up a run, stamp figures, save tables with provenance, and
check figure data against the stored reference (tiny profile)."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

# tqdm.auto warns in a kernel without ipywidgets when the package loads; the pages show no progress bars
warnings.filterwarnings("ignore", message="IProgress not found")

import numpy as np
import pandas as pd
import torch

from lostattn.tasks.loaders import load_benchmark
from lostattn.models.loader import load_model
from lostattn.provenance import REPO_ROOT, provenance, writing

REFERENCE_DIR = REPO_ROOT / "tests" / "reference"


@dataclass
class Run:
    lm: object
    samples: list
    out_dir: Path
    meta: dict
    extra_keys: tuple = ()
    figures: int = 0  # figures shown so far on the page: the next one is "Figure figures + 1"

    def stamp(self, fig, extra: str = "") -> None:
        """Footer naming the profile, model, commit and seed that produced the figure."""
        m = self.meta
        text = (f"profile={m['profile']} · model={m['model_label']} · benchmark={m['benchmark']} · "
                f"commit={m['git_commit'][:12]} · seed={m['seed']}" + (f" · {extra}" if extra else ""))
        fig_stamp(fig, text)

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        """CSV under out_dir plus a JSON sidecar with provenance."""
        path = self.out_dir / f"{name}.csv"
        with writing(path):
            df.to_csv(path, index=False)
        with writing(path.with_suffix(".meta.json")):
            path.with_suffix(".meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        return path

    def save_figure(self, fig, name: str) -> Path:
        path = self.out_dir / f"{name}.png"
        save_png(fig, path)
        return path

    def show_figure(self, fig, name: str, caption: str, alt: str, extra: str = "") -> None:
        """Stamp the provenance footer, save `<name>.png` under out_dir, close the figure and display it as the
        page's next numbered figure, "Figure N: `caption`", with `alt` as its alternative text."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.stamp(fig, extra)
        path = self.save_figure(fig, name)
        plt.close(fig)
        self.figures += 1
        display(NumberedFigure(path, self.figures, caption, alt))
        display(FigureCaption(self.figures, caption))

    def check(self, df: pd.DataFrame, name: str, keys: list[str], atol: dict[str, float]) -> None:
        """The reference check (tiny profile): silent when `df` is within tolerance, AssertionError otherwise."""
        check_reference(df, name, keys, atol)

    def summary(self):
        """The run's parameters in a collapsed box (paths shown without the machine's folders)."""
        from IPython.display import Markdown

        from lostattn.pages.display import run_summary_markdown

        m = self.meta
        keys = ["profile", "model", "benchmark", "split", "samples", "device", "dtype", "seed", *self.extra_keys]
        params = {k: m[k] for k in keys if k in m}
        return Markdown(run_summary_markdown(params, f"Run: {m['model_label']} on {m['benchmark']} "
                                                     f"({m['samples']} samples)"))


# The parameters every results page has (its cell tagged `parameters`), read by `open_page`
PAGE_PARAMETERS = ("profile", "model", "device", "dtype", "benchmark", "data", "split", "samples_per_family", "seed",
                   "out_dir")


def open_page(namespace: dict, *extra: str) -> Run:
    """A results page's whole set-up in one call: the notebook's parameters read from `namespace` (its globals:
    `PAGE_PARAMETERS`, `model_name`, and the `extra` names recorded in the run's provenance), matplotlib set to draw
    off screen, warnings silenced, the model and samples loaded (`start`)."""
    import matplotlib

    matplotlib.use("Agg")
    missing = [k for k in PAGE_PARAMETERS if k not in namespace]
    if missing:
        raise ValueError(f"the page's parameters cell lacks {missing}; add them to the cell tagged 'parameters'")
    args = {k: namespace[k] for k in PAGE_PARAMETERS}
    return start(**args, model_name=namespace.get("model_name"), **{k: namespace[k] for k in extra})


def start(profile: str, model: str, device: str, dtype: str, benchmark: str, data, split: str,
          samples_per_family, seed: int, out_dir: str, **extra) -> Run:
    """Quiet, deterministic set-up: load the model and the samples, create the output folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = Path(out_dir)
    if os.environ.get("LOSTATTN_OUT_ROOT"):  # test runs (nbval) write to a fresh folder
        out = Path(os.environ["LOSTATTN_OUT_ROOT"]) / out.name
    elif not out.is_absolute():
        out = REPO_ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(model, device=device, dtype=dtype)
    samples = load_benchmark(benchmark, data, split=split, limit_per_family=samples_per_family)
    meta = provenance(seed=seed, profile=profile, model=model, benchmark=benchmark, device=device, dtype=dtype,
                      samples=len(samples), split=split, data=str(data) if data else None,
                      model_label=model_label(model, extra.pop("model_name", None)), **extra)
    return Run(lm, samples, out, meta, tuple(extra))


DPI = 130


def save_png(fig, path) -> None:
    """The figure as the book shows it: 130 dpi, cropped to its content, the provenance footer included."""
    with writing(path):
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1)


def fig_stamp(fig, text: str) -> None:
    """A provenance footer under everything in `fig`. A figure whose legend sits below the panels
    (`display.legend_below`) gets it as that legend's last line, so the layout keeps room for both; any other
    figure gets it under its panels."""
    style = {"fontsize": 7, "color": "0.35"}
    leg = fig.legends[-1] if fig.legends else None
    if leg is not None and not leg.get_title().get_text():
        leg.set_title(text, prop={"size": style["fontsize"]})
        leg.get_title().set_color(style["color"])
        box = getattr(leg, "_legend_box", None)  # a title sits above the entries; move it below them
        if box is not None and len(getattr(box, "_children", ())) == 2:
            box._children = box._children[::-1]
        return
    fig.text(0.5, -0.02, text, ha="center", va="top", **style)


def model_label(model: str, model_name: str | None = None) -> str:
    """How pages name a model: the name given (the paper's spelling, e.g. Qwen2.5-VL-3B-Instruct), else the
    checkpoint folder's name."""
    return model_name or Path(str(model)).name


class NumberedFigure:
    """A saved figure as the page shows it: the PNG with its alternative text (output metadata, which myst-nb puts
    on the image), the plain-text form its number and caption."""

    def __init__(self, path, number: int, caption: str, alt: str):
        self.path, self.number, self.caption, self.alt = Path(path), number, caption, alt

    def _repr_mimebundle_(self, include=None, exclude=None):
        import base64

        data = {"image/png": base64.b64encode(self.path.read_bytes()).decode(), "text/plain": repr(self)}
        return data, {"image/png": {"alt": self.alt}}

    def __repr__(self) -> str:
        return f"Figure {self.number}: {self.caption}"


class FigureCaption:
    """The caption under a figure: "**Figure N:** …" (markdown in the book, plain text in a terminal)."""

    def __init__(self, number: int, caption: str):
        self.number, self.caption = number, caption

    def _repr_markdown_(self) -> str:
        return f"**Figure {self.number}:** {self.caption}"

    def __repr__(self) -> str:
        return f"Figure {self.number}: {self.caption}"


def check_reference(df: pd.DataFrame, name: str, keys: list[str], atol: dict[str, float]) -> str:
    """Compare `df` with tests/reference/<name>.csv: same key rows, numeric columns within `atol` (per column).

    Raises AssertionError naming the first column and row out of tolerance. With LOSTATTN_WRITE_REFERENCE=1 the
    reference is (re)written instead.
    """
    path = REFERENCE_DIR / f"{name}.csv"
    cols = list(atol)
    if os.environ.get("LOSTATTN_WRITE_REFERENCE") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        df[keys + cols].to_csv(path, index=False)
        return f"reference written: {path.relative_to(REPO_ROOT)}"
    if not path.is_file():
        raise AssertionError(f"no reference {path}; write it with LOSTATTN_WRITE_REFERENCE=1")
    ref = pd.read_csv(path)
    got = df[keys + cols].copy()
    for k in keys:
        ref[k], got[k] = ref[k].astype(str), got[k].astype(str)
    merged = ref.merge(got, on=keys, how="outer", suffixes=("_ref", "_run"), indicator=True)
    missing = merged[merged["_merge"] != "both"]
    if len(missing):
        raise AssertionError(f"{name}: rows differ from the reference:\n{missing[keys + ['_merge']]}")
    for c in cols:
        diff = (merged[f"{c}_ref"] - merged[f"{c}_run"]).abs()
        bad = merged[diff > atol[c]]
        if len(bad):
            row = bad.iloc[0]
            raise AssertionError(f"{name}: {c} differs from the reference by {diff[bad.index[0]]:.3g} "
                                 f"(> {atol[c]}) at {dict(row[keys])}: ref {row[f'{c}_ref']}, run {row[f'{c}_run']}")
    return f"{name}: {len(merged)} rows x {len(cols)} columns within tolerance {atol} of the reference"
