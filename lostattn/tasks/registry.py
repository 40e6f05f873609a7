"""The benchmark registry: a benchmark is data + prompt + scorer, declared once and looked up by name.

A `Benchmark` says which records it reads and how one record becomes a `VQASample` (the prompt shown, the answer key
and its kind, which selects the scorer in `lostattn.tasks.scoring`). Reading the files, naming records in errors,
refusing duplicate ids, limiting per family and checking that image files exist are the same for every benchmark
and live here, so a declaration holds only what is particular to its benchmark, and the harness runs any of them
through `load_benchmark` without knowing which it is.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from lostattn.tasks.images import FileImage, file_image, resolve_image
from lostattn.tasks.sources import SourceTable, read_table
from lostattn.tasks.types import ANSWER_KINDS, BenchmarkDataError, MissingImageError, VQASample

_MISSING = object()


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its names, what it reads, how a record becomes a sample.

    Either `to_sample` (one record -> one sample, for file-based benchmarks) or `load` (the whole benchmark, for the
    synthetic one, which is generated) is given.
    """

    name: str  # the registry key: --benchmark, profiles, per-sample records
    display_name: str  # the paper's name (data/paper/table2.csv), on which results are joined
    kinds: tuple[str, ...]  # the answer kinds its samples take (ANSWER_KINDS): they pick the scorer
    files: str  # the inputs it reads (documentation)
    fields: str  # the record fields it reads, * optional, a/b the first present (documentation)
    prompt: str  # how a question is shown to the model (documentation)
    to_sample: Callable[["SourceRecord"], VQASample] | None = None
    load: Callable[..., list[VQASample]] | None = None  # (path, split, limit_per_family) -> samples
    # where a record's id comes from: the first field present ("a+b" joins fields with "_"), else its row number
    id_fields: tuple[str, ...] = ("id",)
    keyed_by: str | None = None  # a JSON object of records keyed by this field is accepted (MathVista's pid)
    test_splits: tuple[str, ...] = ()  # read for split "test" when a dataset has no split of that name
    answered_split: str | None = None  # the split with public answers, named when a record has none
    analogues: Mapping[str, str] = field(default_factory=dict)  # synthetic family -> paper benchmark it stands for

    def __post_init__(self):
        if (self.to_sample is None) == (self.load is None):
            raise TypeError(f"benchmark {self.name}: give exactly one of to_sample and load")
        bad = set(self.kinds) - set(ANSWER_KINDS)
        if bad:
            raise TypeError(f"benchmark {self.name}: kinds {sorted(bad)} are not in {ANSWER_KINDS}")

    def samples(self, path=None, split: str = "test", limit_per_family: int | None = None,
                image_root: str | Path | None = None) -> list[VQASample]:
        """The benchmark's samples, in file order, at most `limit_per_family` per family."""
        if limit_per_family is not None and (isinstance(limit_per_family, bool) or
                                             not isinstance(limit_per_family, int) or limit_per_family < 1):
            raise ValueError(f"limit_per_family (--limit) must be a whole number of samples per family of at least "
                             f"1, or None for all; got {limit_per_family!r}")
        if self.load is not None:
            return self.load(path, split, limit_per_family)
        if path is None:
            raise ValueError(f"benchmark {self.name!r} needs its local file or dataset folder (--data PATH); "
                             f"nothing is downloaded")
        table = read_table(path, split, keyed_by=self.keyed_by, test_splits=self.test_splits, bench=self.display_name)
        records = [SourceRecord(self, table, i, image_root) for i in range(len(table.rows))]
        samples = [self.to_sample(r) for r in records]
        _refuse_duplicate_ids(samples, records, table)
        samples = limit(samples, limit_per_family)
        _refuse_missing_images(samples, table)
        return samples


class SourceRecord:
    """One record of a benchmark input, with accessors whose errors name the input, the record and the field."""

    def __init__(self, bench: Benchmark, table: SourceTable, index: int, image_root):
        self.bench, self.table, self.index, self.image_root = bench, table, index, image_root
        self.row = table.rows[index]
        self.id_field = next((f for f in bench.id_fields if all(_present(self.row.get(p)) for p in f.split("+"))),
                             None)
        own = "_".join(str(self.row[p]) for p in self.id_field.split("+")) if self.id_field else str(index)
        prefix = table.id_prefixes[index] + "/" if table.id_prefixes else ""
        self.id = prefix + own

    @property
    def where(self) -> str:
        """The input and the record, as error messages name them."""
        return f"{self.table.source}: {self.table.where(self.index)}" + \
            (f", id {self.id!r}" if self.id_field else "")

    def fail(self, problem: str) -> BenchmarkDataError:
        """An error for this record; `problem` says what is wrong and what would fix it."""
        return BenchmarkDataError(f"{self.where}: {problem}")

    def has(self, name: str) -> bool:
        return _present(self.row.get(name))

    def get(self, *names: str, default=_MISSING):
        """The first of `names` the record holds (empty strings and nulls count as absent); an error naming the
        record and the fields when none is there and no default is given."""
        for n in names:
            v = self.row.get(n)
            if _present(v):
                return v
        if default is not _MISSING:
            return default
        raise self.fail(f"no field {' or '.join(repr(n) for n in names)} (needed by {self.bench.display_name}); "
                        f"fields present: {sorted(k for k, v in self.row.items() if _present(v))}")

    def text(self, *names: str, default=_MISSING) -> str:
        v = self.get(*names, default=default)
        return v if v is None else str(v).strip()

    def image(self, *names: str):
        """The image of the first of `names` the record holds (lazily decoded), or None when it holds none."""
        for n in names:
            if self.has(n):
                return resolve_image(self.row[n], f"{self.where}, field {n!r}", self.table.base_dir, self.image_root)
        return None

    def image_file(self, path: str, field_name: str):
        """An image named by a file name built from a field (e.g. POPE's image_source plus '.jpg')."""
        return file_image(path, f"{self.where}, field {field_name!r}", self.table.base_dir, self.image_root)

    def no_answer_hint(self) -> str:
        """Why a record may have no usable answer: the split the benchmark publishes answers for."""
        if not self.bench.answered_split:
            return "give the file that holds the answers"
        return (f"{self.bench.display_name} publishes answers for its {self.bench.answered_split!r} split only: use "
                f"--split {self.bench.answered_split} (or that split's file)")

    def sample(self, *, question: str, answer: str, family: str, kind: str, options=None, image=None,
               meta=None) -> VQASample:
        return VQASample(id=self.id, question=question, answer=answer, family=str(family), kind=kind,
                         benchmark=self.bench.name, options=options, image=image, meta=meta or {})


def _present(v) -> bool:
    if v is None or (isinstance(v, str) and not v.strip()):
        return False
    return not (isinstance(v, float) and v != v)  # NaN from pandas


def limit(samples: list[VQASample], limit_per_family: int | None) -> list[VQASample]:
    """The first `limit_per_family` samples of each family, in order (all when None)."""
    if limit_per_family is None:
        return samples
    seen: Counter = Counter()
    out = []
    for s in samples:
        if seen[s.family] < limit_per_family:
            seen[s.family] += 1
            out.append(s)
    return out


def _refuse_duplicate_ids(samples: list[VQASample], records: list[SourceRecord], table: SourceTable) -> None:
    counts = Counter(s.id for s in samples)
    dups = [k for k, c in counts.items() if c > 1]
    if not dups:
        return
    at: dict[str, list[int]] = {d: [] for d in dups[:5]}
    for i, s in enumerate(samples):
        if s.id in at:
            at[s.id].append(i)
    shown = "; ".join(f"{d!r} (records {', '.join(map(str, idx[:4]))}{', …' if len(idx) > 4 else ''})"
                      for d, idx in at.items())
    more = f"; and {len(dups) - 5} more" if len(dups) > 5 else ""
    fields = sorted({r.id_field for r in records if r.id_field}) or list(records[0].bench.id_fields)
    raise BenchmarkDataError(
        f"{table.source}: {len(dups)} id{'s are' if len(dups) > 1 else ' is'} used by more than one record: "
        f"{shown}{more}. Scores count each record once per id, so the file must give each record its own id "
        f"(field {' / '.join(repr(f) for f in fields)}): remove the repeated records or give them distinct ids")


def _refuse_missing_images(samples: list[VQASample], table: SourceTable) -> None:
    missing = [s for s in samples if isinstance(s.image, FileImage) and not s.image.path.is_file()]
    if not missing:
        return
    shown = "; ".join(f"sample {s.id!r} -> {s.image.path}" for s in missing[:5])
    more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise MissingImageError(f"{table.source}: {len(missing)} of {len(samples)} samples name image files that do not "
                            f"exist: {shown}{more}{missing[0].image.hint}")


REGISTRY: dict[str, Benchmark] = {}


def register(bench: Benchmark) -> Benchmark:
    """Add a benchmark under its name (a second one under the same name is an error)."""
    if bench.name in REGISTRY:
        raise ValueError(f"benchmark {bench.name!r} is already registered")
    REGISTRY[bench.name] = bench
    return bench


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as `name` (also found by its paper name, in any case)."""
    if name in REGISTRY:
        return REGISTRY[name]
    by_display = {b.display_name.lower(): b for b in REGISTRY.values()}
    if str(name).lower() in by_display:
        return by_display[str(name).lower()]
    raise ValueError(f"unknown benchmark {name!r}; choose one of {tuple(REGISTRY)}")


def display_name(name: str) -> str:
    """The paper's name of a registered benchmark ('pope' -> 'POPE'), as data/paper/table2.csv writes it."""
    return get_benchmark(name).display_name


def _markdown(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[j]) for r in rows + [head]) for j in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def formats_table() -> str:
    """Markdown tables of the registered benchmarks: names, answer kinds and inputs; fields read; record ids;
    prompts."""
    benches = list(REGISTRY.values())
    return "\n\n".join([
        _markdown(("benchmark", "paper name", "answer kinds", "files"),
                  [(b.name, b.display_name, ", ".join(b.kinds), b.files) for b in benches]),
        _markdown(("benchmark", "fields read besides the id (* optional; a/b: the first present)"),
                  [(b.name, b.fields) for b in benches]),
        _markdown(("benchmark", "record id: the first field present (a+b: joined with '_'), else the row number"),
                  [(b.name, " or ".join(b.id_fields) if b.load is None else "generated") for b in benches]),
        _markdown(("benchmark", "prompt"), [(b.name, b.prompt) for b in benches])])
