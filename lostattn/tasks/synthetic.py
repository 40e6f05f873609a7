"""A deterministic synthetic visual question-answering benchmark.

Each image is a small scene on a 3x3 grid: one to five coloured shapes (circle, square, triangle; small or large)
and one rendered character. Six question families stand for the kinds of real benchmark the paper uses:

| family    | stands for                  | answer        | scored by            |
|-----------|-----------------------------|---------------|----------------------|
| exist     | POPE (random/popular/adv.)  | yes / no      | accuracy, F1 on yes  |
| attribute | colour / shape / size query | a word        | accuracy             |
| count     | counting                    | a digit       | accuracy             |
| spatial   | 3DSRBench-like relations    | left/right/above/below | accuracy    |
| ocr       | reading a character         | the character | accuracy             |
| mc        | VMCBench (A-D options)      | a letter      | accuracy             |

Everything follows from one seed: the same definition gives the same bytes on every machine. The three splits are
drawn from independent streams and never share a scene.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from lostattn.tasks.glyphs import CHARACTERS, glyph_mask
from lostattn.tasks.types import VQASample

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (50, 190, 70),
    "blue": (60, 100, 235),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
QUESTION_FAMILIES = ("exist", "attribute", "count", "spatial", "ocr", "mc")
# Training-only auxiliary families, not scored: "describe" (the whole scene, object by object: reading every cell)
# and "locate" (where a named colour-shape pair is, or "nowhere": finding a cell by a two-word key, the step that
# existence, spatial and multiple-choice questions all start with, with nine answers instead of two) and "letter"
# (the multiple-choice format with the answer named in the question: finding an option by its text and answering
# with its letter, the step a multiple-choice question ends with).
AUX_QUESTION_FAMILIES = ("describe", "locate", "letter")
# Accuracy (%) of guessing uniformly among the answers a question of the family admits (attribute mixes colour
# 1/4, shape 1/3 and size 1/2 questions; count answers range over 0-5; ocr over the glyph set).
CHANCE = {"exist": 50.0, "attribute": 100 / 3, "count": 100 / 6, "spatial": 50.0, "ocr": 100 / 17, "mc": 25.0}
ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "center", "right")
SPLITS = ("train", "validation", "test")
EXIST_NEGATIVES = ("random", "popular", "adversarial")
MC_SUFFIX = "Answer ONLY option's letter from the given choices."
YESNO_SUFFIX = "Answer yes or no."
SHORT_SUFFIX = "Answer with one word."

DEFAULT_DEFINITION = Path(__file__).resolve().parents[2] / "data" / "synthetic" / "benchmark.json"


@dataclass(frozen=True)
class SyntheticConfig:
    """The benchmark's definition; `data/synthetic/benchmark.json` holds the committed one."""

    seed: int = 1234
    image_size: int = 48
    grid: int = 3
    min_objects: int = 1
    max_objects: int = 5
    images: dict[str, int] = field(default_factory=lambda: {"train": 6000, "validation": 200, "test": 400})
    # Object (colour, shape) frequencies are skewed so that POPE's "popular" negatives mean something: the first
    # combinations in COLOURS x SHAPES order are drawn more often.
    popularity_decay: float = 0.85
    background_noise: int = 12

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_DEFINITION) -> "SyntheticConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"synthetic benchmark definition {path} does not exist")
        data = json.loads(path.read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cell(self) -> int:
        return self.image_size // self.grid


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    char: str
    char_cell: tuple[int, int]
    noise_seed: int

    def key(self) -> tuple:
        """What makes two scenes the same picture (the noise aside)."""
        return (tuple((o.colour, o.shape, o.size, o.row, o.col) for o in self.objects), self.char, self.char_cell)


def _combos() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def render(scene: Scene, cfg: SyntheticConfig) -> Image.Image:
    """Draw a scene as an RGB image (uint8), deterministically."""
    n, cell = cfg.image_size, cfg.cell
    rng = np.random.default_rng(scene.noise_seed)
    img = np.full((n, n, 3), 40, dtype=np.int16)
    img += rng.integers(-cfg.background_noise, cfg.background_noise + 1, size=(n, n, 1), dtype=np.int16)
    yy, xx = np.mgrid[0:cell, 0:cell] + 0.5
    c0 = cell / 2
    for o in scene.objects:
        r = cell * (0.22 if o.size == "small" else 0.42)
        if o.shape == "circle":
            mask = (yy - c0) ** 2 + (xx - c0) ** 2 <= r**2
        elif o.shape == "square":
            mask = (np.abs(yy - c0) <= r * 0.85) & (np.abs(xx - c0) <= r * 0.85)
        else:  # triangle, apex up
            top, bottom = c0 - r, c0 + r * 0.8
            half = (yy - top) / (bottom - top) * r
            mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - c0) <= half)
        y0, x0 = o.row * cell, o.col * cell
        img[y0 : y0 + cell, x0 : x0 + cell][mask] = COLOURS[o.colour]
    g = glyph_mask(scene.char, scale=2)
    gy, gx = g.shape
    y0 = scene.char_cell[0] * cell + (cell - gy) // 2
    x0 = scene.char_cell[1] * cell + (cell - gx) // 2
    img[y0 : y0 + gy, x0 : x0 + gx][g] = (245, 245, 245)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")


_LETTERS = "ABCD"


def _ocr(scene: Scene) -> dict:
    """ocr: the character written in the scene."""
    return dict(family="ocr", subtype="char", kind="short", answer=scene.char,
                question=f"What character is written in the image? {SHORT_SUFFIX}")


def _mc(objs, pos, absent: list, rng: np.random.Generator) -> dict:
    """mc: which object is present (`pos` and three absent ones), or how many objects; options in a random order."""
    if rng.random() < 0.5:
        wrong = [absent[i] for i in rng.choice(len(absent), size=3, replace=False)]
        opts = [f"{c} {s}" for c, s in wrong] + [pos.name]
        stem, sub, correct = "Which object is in the image?", "object", pos.name
    else:
        n = len(objs)
        cands = [v for v in range(1, 7) if v != n]
        opts = [str(v) for v in rng.choice(cands, size=3, replace=False)] + [str(n)]
        stem, sub, correct = "How many objects are there?", "count", str(n)
    order = rng.permutation(4)
    opts = [opts[i] for i in order]
    options = dict(zip(_LETTERS, opts))
    body = "\n".join(f"{k}. {v}" for k, v in options.items())
    return dict(family="mc", subtype=sub, kind="mc", answer=_LETTERS[opts.index(correct)], options=options,
                question=f"Question: {stem}\nOptions:\n{body}\n{MC_SUFFIX}")


class SyntheticBenchmark:
    """Scenes and questions of one definition; `samples(split)` gives the VQASample list of a split."""

    def __init__(self, cfg: SyntheticConfig | None = None):
        self.cfg = cfg or SyntheticConfig.from_file()
        combos = _combos()
        weights = np.array([self.cfg.popularity_decay**i for i in range(len(combos))])
        self.combo_probs = weights / weights.sum()
        self.popular_order = combos  # most to least popular, by construction

    # ---- scenes ---------------------------------------------------------------------------------------------
    def _draw_scene(self, rng: np.random.Generator) -> Scene:
        cfg = self.cfg
        combos = _combos()
        k = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        idx = rng.choice(len(combos), size=k, replace=False, p=self.combo_probs)
        cells = rng.permutation(cfg.grid * cfg.grid)[: k + 1]
        objs = tuple(
            SceneObject(
                colour=combos[i][0], shape=combos[i][1], size=SIZES[int(rng.integers(2))],
                row=int(c // cfg.grid), col=int(c % cfg.grid),
            )
            for i, c in zip(idx, cells[:k])
        )
        char = CHARACTERS[int(rng.integers(len(CHARACTERS)))]
        cc = int(cells[k])
        return Scene(objs, char, (cc // cfg.grid, cc % cfg.grid), int(rng.integers(2**31)))

    @cached_property
    def scenes(self) -> dict[str, list[Scene]]:
        """Scenes per split. Test is drawn first, then validation, then train, each skipping scenes already used."""
        streams = dict(zip(SPLITS, np.random.SeedSequence(self.cfg.seed).spawn(len(SPLITS))))
        seen: set = set()
        out: dict[str, list[Scene]] = {}
        for split in ("test", "validation", "train"):
            rng = np.random.default_rng(streams[split])
            scenes: list[Scene] = []
            while len(scenes) < self.cfg.images[split]:
                s = self._draw_scene(rng)
                if s.key() in seen:
                    continue
                seen.add(s.key())
                scenes.append(s)
            out[split] = scenes
        return {s: out[s] for s in SPLITS}

    def image(self, split: str, index: int) -> Image.Image:
        return render(self.scenes[split][index], self.cfg)

    # ---- questions ------------------------------------------------------------------------------------------
    def _questions(self, scene: Scene, rng: np.random.Generator) -> list[dict]:
        """All questions of one scene: one per family, two for exist (one yes, one no), then the auxiliary ones.

        The scored families draw from `rng` in a fixed order (exist, attribute, count, spatial, mc; ocr draws
        nothing); the auxiliary ones from their own stream, so adding them changes no scored question."""
        objs = scene.objects
        present = {(o.colour, o.shape) for o in objs}
        absent = [c for c in _combos() if c not in present]
        exist, pos = self._exist(objs, present, absent, rng)
        qs = exist + [self._attribute(objs, rng), self._count(objs, rng), self._spatial(scene, rng), _ocr(scene),
                      _mc(objs, pos, absent, rng)]
        return qs + self._auxiliary(scene, absent)

    def _exist(self, objs, present: set, absent: list, rng: np.random.Generator) -> tuple[list[dict], "SceneObject"]:
        """exist: one positive, one negative of a sampling strategy chosen per scene (as POPE's three subsets);
        also the positive object, which the mc question reuses."""
        pos = objs[int(rng.integers(len(objs)))]
        strategy = EXIST_NEGATIVES[int(rng.integers(3))]
        if strategy == "random":
            neg = absent[int(rng.integers(len(absent)))]
        elif strategy == "popular":
            neg = next(c for c in self.popular_order if c not in present)
        else:  # adversarial: shares colour or shape with something present
            hard = [c for c in absent if any(c[0] == o.colour or c[1] == o.shape for o in objs)] or absent
            neg = hard[int(rng.integers(len(hard)))]
        qs = [dict(family="exist", subtype=strategy, kind="yesno", answer=ans,
                   question=f"Is there a {colour} {shape} in the image? {YESNO_SUFFIX}")
              for (colour, shape), ans in (((pos.colour, pos.shape), "yes"), (neg, "no"))]
        return qs, pos

    @staticmethod
    def _attribute(objs, rng: np.random.Generator) -> dict:
        """attribute: colour of a unique shape, shape of a unique colour, or size of a named object."""
        shape_counts = {s: sum(o.shape == s for o in objs) for s in SHAPES}
        colour_counts = {c: sum(o.colour == c for o in objs) for c in COLOURS}
        choice = int(rng.integers(3))
        o = objs[int(rng.integers(len(objs)))]
        if choice == 0 and shape_counts[o.shape] == 1:
            q, a, sub = f"What colour is the {o.shape}?", o.colour, "colour"
        elif choice <= 1 and colour_counts[o.colour] == 1:
            q, a, sub = f"What shape is the {o.colour} object?", o.shape, "shape"
        else:
            q, a, sub = f"What size is the {o.name}?", o.size, "size"
        return dict(family="attribute", subtype=sub, kind="short", answer=a, question=f"{q} {SHORT_SUFFIX}")

    @staticmethod
    def _count(objs, rng: np.random.Generator) -> dict:
        """count: all objects, or one shape (zero allowed)."""
        if rng.random() < 0.5:
            q, a, sub = "How many objects are there?", str(len(objs)), "objects"
        else:
            s = SHAPES[int(rng.integers(len(SHAPES)))]
            q, a, sub = f"How many {s}s are there?", str(sum(o.shape == s for o in objs)), "shape"
        return dict(family="count", subtype=sub, kind="short", answer=a, question=f"{q} {SHORT_SUFFIX}")

    @staticmethod
    def _spatial(scene: Scene, rng: np.random.Generator) -> dict:
        """spatial: a pair in different columns (left/right) or rows (above/below); a lone object is placed
        relative to the character."""
        objs = scene.objects
        pairs = [(a_, b_) for a_ in objs for b_ in objs if a_ is not b_]
        horiz = [(a_, b_) for a_, b_ in pairs if a_.col != b_.col]
        vert = [(a_, b_) for a_, b_ in pairs if a_.row != b_.row]
        use_h = bool(horiz) and (not vert or rng.random() < 0.5)
        if horiz or vert:
            a_, b_ = (horiz if use_h else vert)[int(rng.integers(len(horiz if use_h else vert)))]
            if use_h:
                q = f"Is the {a_.name} to the left or to the right of the {b_.name}?"
                ans, sub = ("left" if a_.col < b_.col else "right"), "horizontal"
            else:
                q = f"Is the {a_.name} above or below the {b_.name}?"
                ans, sub = ("above" if a_.row < b_.row else "below"), "vertical"
        else:
            a_ = objs[0]
            if a_.col != scene.char_cell[1]:
                q = f"Is the {a_.name} to the left or to the right of the character?"
                ans, sub = ("left" if a_.col < scene.char_cell[1] else "right"), "horizontal"
            else:
                q = f"Is the {a_.name} above or below the character?"
                ans, sub = ("above" if a_.row < scene.char_cell[0] else "below"), "vertical"
        return dict(family="spatial", subtype=sub, kind="short", answer=ans, question=f"{q} {SHORT_SUFFIX}")

    def _auxiliary(self, scene: Scene, absent: list) -> list[dict]:
        """The training-only families: describe (draws nothing), locate and letter (their own stream, seeded by the
        scene, so the scored families are the same with or without them)."""
        objs = scene.objects

        def where(r, c):
            return f"{ROW_NAMES[r] if self.cfg.grid == 3 else r} {COL_NAMES[c] if self.cfg.grid == 3 else c}"
        parts = [f"{o.size} {o.name} at {where(o.row, o.col)}" for o in sorted(objs, key=lambda o: (o.row, o.col))]
        parts.append(f"character {scene.char} at {where(*scene.char_cell)}")
        qs = [dict(family="describe", subtype="scene", kind="short", answer=" , ".join(parts),
                   question="Describe the image.")]

        aux = np.random.default_rng([scene.noise_seed, 11])
        o = objs[int(aux.integers(len(objs)))]
        gone = absent[int(aux.integers(len(absent)))]
        for (colour, shape), ans in (((o.colour, o.shape), where(o.row, o.col)), (gone, "nowhere")):
            qs.append(dict(family="locate", subtype="present" if ans != "nowhere" else "absent", kind="short",
                           answer=ans, question=f"Where is the {colour} {shape}?"))

        if aux.random() < 0.5:
            opts = [f"{c} {s}" for c, s in (_combos()[i] for i in aux.choice(len(_combos()), size=4, replace=False))]
        else:
            opts = [str(v) for v in aux.choice(range(1, 7), size=4, replace=False)]
        k = int(aux.integers(4))
        body = "\n".join(f"{letter}. {v}" for letter, v in zip(_LETTERS, opts))
        qs.append(dict(family="letter", subtype="lookup", kind="mc", answer=_LETTERS[k],
                       options=dict(zip(_LETTERS, opts)),
                       question=f"Question: Which option is {opts[k]}?\nOptions:\n{body}\n{MC_SUFFIX}"))
        return qs

    def samples(self, split: str, families: tuple[str, ...] | list[str] | None = None,
                limit_per_family: int | None = None) -> list[VQASample]:
        """The questions of a split, in a fixed order; `limit_per_family` keeps the first N of each family."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        families = tuple(families or QUESTION_FAMILIES)
        bad = set(families) - set(QUESTION_FAMILIES + AUX_QUESTION_FAMILIES)
        if bad:
            raise ValueError(f"unknown synthetic families {sorted(bad)}; choose from {QUESTION_FAMILIES + AUX_QUESTION_FAMILIES}")
        stream = np.random.SeedSequence([self.cfg.seed, SPLITS.index(split), 7])
        rng = np.random.default_rng(stream)
        out: list[VQASample] = []
        counts = {f: 0 for f in families}
        for i, scene in enumerate(self.scenes[split]):
            for j, q in enumerate(self._questions(scene, rng)):
                fam = q["family"]
                if fam not in counts or (limit_per_family is not None and counts[fam] >= limit_per_family):
                    continue
                counts[fam] += 1
                out.append(VQASample(
                    id=f"{split}-{i:05d}-{j}", question=q["question"], answer=q["answer"], family=fam,
                    kind=q["kind"], benchmark="synthetic", options=q.get("options"),
                    image=_ImageFactory(self, split, i), meta={"subtype": q["subtype"], "image_index": i},
                ))
            if limit_per_family is not None and all(c >= limit_per_family for c in counts.values()):
                break
        return out

    def fingerprint(self) -> str:
        """SHA-256 over the definition, every image's pixels and every question of every split."""
        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for split in SPLITS:
            for i in range(len(self.scenes[split])):
                h.update(np.asarray(self.image(split, i)).tobytes())
            for s in self.samples(split):
                h.update(f"{s.id}|{s.question}|{s.answer}".encode())
        return h.hexdigest()


class _ImageFactory:
    """A picklable, lazy image reference (renders on call)."""

    def __init__(self, bench: SyntheticBenchmark, split: str, index: int):
        self.bench, self.split, self.index = bench, split, index

    def fingerprint(self) -> str:
        """The definition, split and scene this image is drawn from (it is rendered from them alone)."""
        cfg = json.dumps(self.bench.cfg.to_dict(), sort_keys=True)
        scene = repr(self.bench.scenes[self.split][self.index].key())
        return "synthetic:" + hashlib.sha256(f"{cfg}|{self.split}|{self.index}|{scene}".encode()).hexdigest()[:16]

    def __call__(self) -> Image.Image:
        return self.bench.image(self.split, self.index)
