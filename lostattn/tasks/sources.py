"""Reading a benchmark's records from the files users have, offline.

| input                                   | read with                   | one record is                              |
|-----------------------------------------|-----------------------------|--------------------------------------------|
| `.json`                                 | json                        | an object of the top-level list (MathVista: |
|                                         |                             | a value of the top-level object, keyed by pid)|
| `.json` holding one object per line, `.jsonl` | json, line by line    | one line                                   |
| `.tsv`, `.csv`                          | pandas (every field a str)  | one row                                    |
| `.parquet`                              | pyarrow                     | one row                                    |
| a folder of parquet files               | pyarrow, `datasets` features| one row of the files of the asked split    |
| a folder written by `save_to_disk`      | `datasets.load_from_disk`   | one row of the Dataset, or of the asked    |
|                                         |                             | split of the DatasetDict                   |
| a `datasets.Dataset` / `DatasetDict`    | its Arrow table             | one row                                    |

A folder of parquet files is what the Hugging Face hub serves for a dataset (`data/test-00000-of-00003.parquet`,
one folder per subset such as MMMU's subjects or POPE's `Full/`, or the converter's `default/test/0000.parquet`):
a file's split is the part of its name before `-NNNNN-of-NNNNN` (or its folder, for `0000.parquet`), and `--split`
picks the files of that split across all subfolders. `a+b` joins splits; sample ids are then prefixed `a/`, `b/`,
so that two splits' records never share an id.

Image columns (the `datasets` Image feature, struct<bytes, path>) are not copied into the records: each record holds
a reference to its cell, read when the sample's image is asked for. Nothing here touches the network: parquet is
read with pyarrow, and `datasets` only reads the schema and folders written by `save_to_disk`.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lostattn.tasks.images import ArrowCell
from lostattn.tasks.types import BenchmarkDataError

_SHARD = re.compile(r"^(?P<split>.+?)(?:-\d{5}-of-\d{5}(?:-[0-9a-f]+)?)?\.parquet$")
_TEXT_SUFFIXES = (".json", ".jsonl", ".tsv", ".csv")


@dataclass
class SourceTable:
    """The records of one benchmark input, with what error messages need to name them."""

    source: str  # names the input: a file, or a folder with the split read
    base_dir: Path  # where relative image paths resolve (unless image_root is given)
    rows: list[dict]
    locate: Callable[[int], str] = lambda i: ""  # extra words naming row i: "line 7", "row 3 of data/x.parquet"
    id_prefixes: list[str] | None = None  # per row, when several splits are joined
    meta: dict = field(default_factory=dict)

    def where(self, i: int) -> str:
        extra = self.locate(i)
        return f"record {i}" + (f" ({extra})" if extra else "")


def read_table(path, split: str = "test", *, keyed_by: str | None = None, test_splits: tuple[str, ...] = (),
               bench: str = "the benchmark") -> SourceTable:
    """The records of `path`: a file, a dataset folder, or a `datasets` Dataset/DatasetDict object.

    `split` applies to folders and DatasetDicts (a single file is one split). `keyed_by` names the field a JSON
    object of objects is keyed by (MathVista's pid); without it such a file is refused. `test_splits` are read when
    `split` is "test" and the input has no split of that name (HallusionBench's image + non_image).
    """
    if _is_datasets_object(path):
        return _from_datasets_object(path, split, test_splits, source=f"the {type(path).__name__} passed in",
                                     base_dir=Path.cwd())
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"benchmark file {path} does not exist; give the {bench} file or dataset folder "
                                f"(--data PATH)")
    if path.is_dir():
        return _read_folder(path, split, test_splits, bench)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _from_arrow(_read_parquet(path), source=str(path), base_dir=path.parent)
    if suffix not in _TEXT_SUFFIXES:
        raise BenchmarkDataError(f"{path}: unsupported file type {suffix!r}; give a .json, .jsonl, .tsv, .csv or "
                                 f".parquet file, or a Hugging Face dataset folder")
    if path.stat().st_size == 0:
        raise BenchmarkDataError(f"benchmark file {path} is empty (0 bytes); it should hold the {bench} records: "
                                 f"download or export it again")
    if suffix in (".tsv", ".csv"):
        return _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    text = _read_text(path)
    if not text.strip():
        raise BenchmarkDataError(f"benchmark file {path} holds only whitespace; it should hold the {bench} records: "
                                 f"download or export it again")
    if suffix == ".jsonl":
        return _json_lines(text, path)
    return _json(text, path, keyed_by)


# ---- text files ------------------------------------------------------------------------------------------------
def _not_utf8(path: Path) -> BenchmarkDataError:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        at = "somewhere"  # pandas reads in chunks; the byte was found by the reader, not here
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        at = f"at byte {e.start} (line {line}: {raw[e.start:e.start + 1]!r})"
    return BenchmarkDataError(f"benchmark file {path} is not UTF-8 text (an invalid byte {at}); save it as UTF-8, "
                              f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _json(text: str, path: Path, keyed_by: str | None) -> SourceTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):  # official POPE: JSON lines in a .json file
            return _json_lines(text, path)
        raise BenchmarkDataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; fix "
                                 f"the file or export it again") from None
    if isinstance(data, dict):
        if keyed_by is None:
            raise BenchmarkDataError(
                f"{path} holds a JSON object (keys {_preview(list(data))}); this benchmark expects a list of records, "
                f"[{{...}}, {{...}}]: give the file that holds the records as a list")
        bad = next((k for k, v in data.items() if not isinstance(v, dict)), None)
        if bad is not None:
            raise BenchmarkDataError(f"{path}: the value under {bad!r} is a {_kind(data[bad])}, not an object; the "
                                     f"file must map each {keyed_by} to its record ({{\"1\": {{...}}, ...}})")
        keys = list(data)
        rows = [{keyed_by: k, **v} for k, v in data.items()]
        return _checked(SourceTable(str(path), path.parent, rows, locate=lambda i: f"{keyed_by} {keys[i]!r}"), path)
    if not isinstance(data, list):
        raise BenchmarkDataError(f"{path} holds a JSON {_kind(data)}; expected a list of records (objects), "
                                 f"[{{...}}, {{...}}]")
    bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
    if bad is not None:
        raise BenchmarkDataError(f"{path}: record {bad} is a JSON {_kind(data[bad])}, not an object; the file must "
                                 f"hold a list of records, [{{...}}, {{...}}]")
    return _checked(SourceTable(str(path), path.parent, data), path)


def _json_lines(text: str, path: Path) -> SourceTable:
    rows, lines = [], []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); each line "
                                     f"must hold one JSON object: fix or remove that line") from None
        if not isinstance(rec, dict):
            raise BenchmarkDataError(f"{path}, line {n}: holds a JSON {_kind(rec)}, not an object; each line must "
                                     f"hold one record, {{...}}")
        rows.append(rec)
        lines.append(n)
    return _checked(SourceTable(str(path), path.parent, rows, locate=lambda i: f"line {lines[i]}"), path)


def _read_delimited(path: Path, sep: str) -> SourceTable:
    import pandas as pd

    kind = "TSV" if sep == "\t" else "CSV"
    try:
        # index_col=False: rows ending in a separator (one more, empty field than the header) would otherwise turn
        # the first column into the index and shift every other column by one.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False)
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
            _refuse_extra_fields(path, sep, len(df.columns), kind)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except pd.errors.EmptyDataError:
        raise BenchmarkDataError(f"benchmark file {path} is empty (no header, no records); it should hold a header "
                                 f"line and one {kind} row per record: download or export it again") from None
    except pd.errors.ParserError as e:
        raise BenchmarkDataError(f"{path} is not valid {kind}: {' '.join(str(e).split())}; fix the file or "
                                 f"export it again") from None
    if df.empty:
        raise BenchmarkDataError(f"benchmark file {path} has a header ({_preview(list(df.columns))}) but no records; "
                                 f"download or export it again")
    rows = df.to_dict("records")
    _dereference_images(rows)
    return SourceTable(str(path), path.parent, rows, locate=lambda i: f"line {i + 2}")


def _refuse_extra_fields(path: Path, sep: str, width: int, kind: str) -> None:
    """Refuse a row holding a non-empty value beyond the header's columns (pandas would drop it); rows that only end
    in a separator (an empty extra field, as some exporters write) are read as they are."""
    import csv

    with path.open(encoding="utf-8-sig", newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter=sep), start=1):
            if n > 1 and any(v.strip() for v in row[width:]):
                raise BenchmarkDataError(f"{path}, line {n}: {len(row)} fields but the header names {width} columns; "
                                         f"the row holds a value beyond the last column ({row[width][:40]!r}): fix "
                                         f"that line (a stray {kind} separator?) or export the file again")


def _dereference_images(rows: list[dict]) -> None:
    """VLMEvalKit stores a repeated image once: another row's `image` holds that row's `index` (64 chars or fewer)."""
    if not rows or "image" not in rows[0] or "index" not in rows[0]:
        return
    by_index = {r["index"]: r["image"] for r in rows if len(r["image"]) > 64}
    for r in rows:
        img = r["image"]
        if img and len(img) <= 64 and img in by_index:
            r["image"] = by_index[img]


def _checked(t: SourceTable, path: Path) -> SourceTable:
    if not t.rows:
        raise BenchmarkDataError(f"benchmark file {path} holds no records; download or export it again")
    return t


def _kind(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def _preview(items: list, n: int = 6) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


# ---- parquet and dataset folders -------------------------------------------------------------------------------
def _offline() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BenchmarkDataError(f"{path} is not a readable parquet file ({e}); download it again") from None


def _read_folder(path: Path, split: str, test_splits: tuple[str, ...], bench: str) -> SourceTable:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        _offline()
        import datasets

        try:
            obj = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise BenchmarkDataError(f"{path}: the dataset saved there cannot be read ({e}); save it again with "
                                     f"datasets' save_to_disk") from None
        return _from_datasets_object(obj, split, test_splits, source=str(path), base_dir=path)
    shards: dict[str, list[Path]] = {}
    for f in sorted(path.rglob("*.parquet")):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):  # e.g. the hub client's .cache/
            continue
        name = _SHARD.match(f.name).group("split")
        shards.setdefault(f.parent.name if name.isdigit() else name, []).append(f)
    if not shards:
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _TEXT_SUFFIXES)
        hint = f"; it holds {_preview(found)}: pass that file" if found else ""
        raise BenchmarkDataError(
            f"{path} is a folder without parquet files (data/<split>-00000-of-00001.parquet) or a dataset saved with "
            f"save_to_disk (dataset_dict.json, state.json){hint}; give the {bench} file or its dataset folder")
    names = _pick_splits(sorted(shards), split, test_splits, str(path))
    for name in names:
        _refuse_missing_shards(path, shards[name])
    import pyarrow as pa

    tables, spans, prefixes = [], [], []
    for name in names:
        for f in shards[name]:
            t = _read_parquet(f)
            spans.append((sum(len(x) for x in tables), str(f.relative_to(path))))
            tables.append(t)
            prefixes += [name] * len(t)
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BenchmarkDataError(f"{path}: the parquet files of split {split!r} have different columns ({e}); keep "
                                 f"only one dataset's files in the folder") from None

    def locate(i: int) -> str:
        start, name = next(s for s in reversed(spans) if s[0] <= i)
        return f"row {i - start} of {name}"

    t = _from_arrow(table, source=f"{path} (split {'+'.join(names)})", base_dir=path, locate=locate)
    t.id_prefixes = prefixes if len(names) > 1 else None
    return t


_OF = re.compile(r"^(?P<stem>.+?)-(?P<index>\d{5})-of-(?P<total>\d{5})(?:-[0-9a-f]+)?\.parquet$")


def _refuse_missing_shards(root: Path, files: list[Path]) -> None:
    """Refuse a split whose numbered shards (`test-00001-of-00003.parquet`) are not all there: the hub names each
    shard with the count of them, so a missing one is known, and reading the others would score a part silently."""
    groups: dict[tuple[Path, str, int], set[int]] = {}
    for f in files:
        m = _OF.match(f.name)
        if m:
            groups.setdefault((f.parent, m["stem"], int(m["total"])), set()).add(int(m["index"]))
    for (folder, stem, total), have in sorted(groups.items()):
        missing = [f"{stem}-{i:05d}-of-{total:05d}.parquet" for i in range(total) if i not in have]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            where = folder.relative_to(root)
            raise BenchmarkDataError(f"{root}: shard {where / missing[0]} is missing ({len(have)} of the {total} "
                                     f"shards of {where / stem} are there; missing: {shown}); download the missing "
                                     f"shard(s) again, or the split would be scored in part")


def _pick_splits(available: list[str], split: str, test_splits: tuple[str, ...], source: str) -> list[str]:
    asked = [s for s in split.split("+") if s]
    if asked == ["test"] and "test" not in available and test_splits and set(test_splits) <= set(available):
        return list(test_splits)
    missing = [s for s in asked if s not in available]
    if missing or not asked:
        raise BenchmarkDataError(
            f"{source} has no split {'+'.join(missing) or split!r}; its splits are {', '.join(available)}: pick one "
            f"with --split (split=...), or join several with '+' (e.g. {'+'.join(available[:2])})")
    return asked


def _is_datasets_object(obj) -> bool:
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in ("Dataset", "DatasetDict")


def _from_datasets_object(obj, split: str, test_splits: tuple[str, ...], source: str, base_dir: Path) -> SourceTable:
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        names = _pick_splits(sorted(obj), split, test_splits, source)
        parts = [obj[n] for n in names]
        prefixes = [n for n, d in zip(names, parts) for _ in range(len(d))] if len(names) > 1 else None
        source = f"{source} (split {'+'.join(names)})"
    elif isinstance(obj, datasets.Dataset):
        parts, prefixes = [obj], None
    else:
        raise BenchmarkDataError(f"{source} is a {type(obj).__name__}; give a Dataset or a DatasetDict")
    import pyarrow as pa

    tables = [d.with_format("arrow")[:] for d in parts]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    t = _from_arrow(table, source=source, base_dir=base_dir, features=parts[0].features)
    t.id_prefixes = prefixes
    return t


def _image_columns(table, features) -> list[str]:
    import pyarrow as pa

    if features is None:
        import datasets

        try:
            features = datasets.Features.from_arrow_schema(table.schema)
        except Exception:  # a schema `datasets` cannot map is read from its Arrow types alone
            features = {}
    cols = []
    for name in table.column_names:
        typ = table.schema.field(name).type
        feat = features.get(name) if hasattr(features, "get") else None
        is_struct_image = pa.types.is_struct(typ) and {typ.field(j).name for j in range(typ.num_fields)} == \
            {"bytes", "path"}
        if type(feat).__name__ == "Image" or is_struct_image or pa.types.is_binary(typ) or \
                pa.types.is_large_binary(typ):
            cols.append(name)
    return cols


def _from_arrow(table, source: str, base_dir: Path, locate: Callable[[int], str] | None = None,
                features=None) -> SourceTable:
    """Rows of an Arrow table; image cells stay in the table (ArrowCell), paths-only images become their path."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        raise BenchmarkDataError(f"{source} holds no records; download or export it again")
    images = _image_columns(table, features)
    rows = table.drop_columns(images).to_pylist()
    for name in images:
        col = table.column(name)
        valid = col.is_valid().to_pylist()
        if pa.types.is_struct(col.type):
            data = pc.struct_field(col, "bytes")
            paths = pc.struct_field(col, "path").to_pylist()
        else:
            data, paths = col, [None] * len(col)
        heads = pc.binary_slice(data, 0, 16).to_pylist()  # the first bytes only: images stay in the table
        for i, row in enumerate(rows):
            if not valid[i]:
                row[name] = None
            elif heads[i]:
                row[name] = ArrowCell(col, i, heads[i])
            else:
                row[name] = paths[i]  # the Image feature without bytes: a path (or None)
    return SourceTable(source, base_dir, rows, locate=locate or (lambda i: ""))
