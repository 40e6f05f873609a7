"""Profiles: what a reproduction runs. A profile file (profiles/<name>.yaml, or any file given with --config) lists
the models, the benchmarks, the SAP conditions and per-notebook settings (`lostattn.pipeline.reproduce` documents the
format); `load_profile` reads it and refuses, with the file, the key and the fix named, anything it cannot run as
written: malformed YAML, an unknown key (checked against each notebook's own parameters cell, with the closest
parameter suggested), a profile name that is not a plain name.
"""
from __future__ import annotations

import ast
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lostattn.provenance import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = REPO_ROOT / "profiles"
RESULTS_DIR = REPO_ROOT / "results"
# In reading order; each one's outputs go to results/<profile>/<name>/ (the book's cell).
NOTEBOOKS = (
    "01_embedded_model",
    "10_table1_rid_mixig",
    "11_layer_curves",
    "12_token_scope",
    "20_table2_sap",
    "21_sap_sweeps",
    "30_paper_tables",
)
AXES = ("model", "benchmark")
# Parameters reproduce sets itself, for the notebooks that declare them (model_name: the model's name in the profile).
CONTEXT = ("profile", "out_dir", "config", "results", "model_name")
PROFILE_KEYS = ("common", "models", "benchmarks", "conditions", "notebooks", "run", "book")
SECTION_KEYS = ("over", "book")
# Model entries may always carry these; they reach the notebooks that take them.
MODEL_FLAGS = ("reasoning",)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "_"


# ---- notebooks' parameters ---------------------------------------------------------------------------------------
_PARAM_CACHE: dict[tuple[str, float], tuple[str, ...]] = {}


def notebook_parameters(name: str) -> tuple[str, ...]:
    """The parameters a notebook's `parameters` cell declares, as papermill reads them (plus names assigned as a
    tuple, `a, b = 1, 2`, which papermill injects but does not list)."""
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {path}")
    ck = (str(path), path.stat().st_mtime)
    if ck not in _PARAM_CACHE:
        import papermill as pm

        names = list(pm.inspect_notebook(str(path)))
        nb = json.loads(path.read_text())
        cell = next((c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), None)
        if cell is not None:
            try:
                tree = ast.parse("".join(cell["source"]))
            except SyntaxError:
                tree = ast.Module(body=[], type_ignores=[])
            for node in tree.body:
                for t in getattr(node, "targets", []):
                    for e in getattr(t, "elts", []):
                        if isinstance(e, ast.Name) and e.id not in names:
                            names.append(e.id)
        _PARAM_CACHE[ck] = tuple(names)
    return _PARAM_CACHE[ck]


# ---- profiles ------------------------------------------------------------------------------------------------------
@dataclass
class Profile:
    name: str
    path: Path
    common: dict
    models: list[dict]  # each {name, path, **parameters}
    benchmarks: list[dict]  # each {name, **parameters}
    conditions: list | None
    sections: dict[str, dict]  # notebook -> its section (parameters, over, book)
    run: tuple[str, ...]
    book: dict
    explicit_config: bool = False
    warnings: list[str] = field(default_factory=list)


def check_profile_name(profile: str) -> str:
    """`profile` when it is a plain name (results go to results/<profile>/); else a ValueError."""
    if not isinstance(profile, str) or not _PLAIN_NAME.fullmatch(profile):
        raise ValueError(f"profile name {profile!r} is not a plain name (letters, digits, '-', '_', '.', not starting "
                         f"with '.'): results go to results/<profile>/, and a name holding '/' or '..' would write "
                         f"outside it. Give a plain name, e.g. --profile my_paper --config path/to/my_paper.yaml")
    return profile


def _closest(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ValueError(f"profile file {path}: not valid YAML at {where}: {what}; fix the file there "
                         f"(indentation, a missing ':' or an unclosed quote or bracket)") from None
    except yaml.YAMLError as e:
        raise ValueError(f"profile file {path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None


def _mapping(value, where: str, path: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"profile file {path}: {where} must be a mapping of keys to values, got "
                         f"{type(value).__name__} {value!r}")
    return dict(value)


def _entries(value, kind: str, path: Path) -> list[dict]:
    """A list of model or benchmark entries; a bare string stands for {name: ...}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"profile file {path}: {kind} must be a list (one '- name: ...' per {kind[:-1]}), got "
                         f"{type(value).__name__}")
    out = []
    for i, e in enumerate(value):
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict):
            raise ValueError(f"profile file {path}: {kind}[{i}] must be a name or a mapping, got {e!r}")
        out.append(dict(e))
    return out


def load_profile(profile: str = "tiny", config: str | Path | None = None) -> Profile:
    """The profile `profile` (profiles/<profile>.yaml, or the file `config`), checked against the notebooks'
    parameters: unknown keys, notebooks, models and benchmarks are refused with the closest known name."""
    check_profile_name(profile)
    path = Path(config).expanduser().resolve() if config else PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile file {path}; known profiles: {known}")
    data = _read_yaml(path)
    data = _mapping(data, "the file", path)
    for k in data:
        if k not in PROFILE_KEYS:
            raise ValueError(f"profile file {path}: unknown top-level key {k!r}{_closest(k, PROFILE_KEYS)} "
                             f"(known: {', '.join(PROFILE_KEYS)})")
    common = _mapping(data.get("common"), "common", path)
    sections = {}
    for nb, sec in _mapping(data.get("notebooks"), "notebooks", path).items():
        if nb not in NOTEBOOKS:
            raise ValueError(f"profile file {path}: notebooks: unknown notebook {nb!r}{_closest(nb, NOTEBOOKS)} "
                             f"(known: {', '.join(NOTEBOOKS)})")
        sections[nb] = _mapping(sec, f"notebooks.{nb}", path)
    run = data.get("run", NOTEBOOKS)
    if isinstance(run, str):
        run = [r.strip() for r in run.split(",") if r.strip()]
    for nb in run:
        if nb not in NOTEBOOKS:
            raise ValueError(f"profile file {path}: run: unknown notebook {nb!r}{_closest(nb, NOTEBOOKS)} "
                             f"(known: {', '.join(NOTEBOOKS)})")
    run = tuple(n for n in NOTEBOOKS if n in run)
    conditions = data.get("conditions")
    if conditions is not None and not (isinstance(conditions, list) and all(isinstance(c, str) for c in conditions)):
        raise ValueError(f"profile file {path}: conditions must be a list of SAP modes, e.g. [gaussian_noise, "
                         f"uniform], got {conditions!r}")

    # A profile without a models (benchmarks) list runs one, named in common (the earlier single-model layout).
    for axis, kind in (("model", "models"), ("benchmark", "benchmarks")):
        if data.get(kind) is not None and axis in common:
            raise ValueError(f"profile file {path}: common.{axis} and a {kind} list both name {kind}; keep the list")
    models = _entries(data.get("models"), "models", path) or \
        [{"path": str(common.pop("model"))} if "model" in common else {"name": "embedded"}]
    benchmarks = _entries(data.get("benchmarks"), "benchmarks", path) or \
        [{"name": common.pop("benchmark", "synthetic")}]
    prof = Profile(profile, path, common, models, benchmarks, conditions, sections, run,
                   _mapping(data.get("book"), "book", path), explicit_config=config is not None)
    _normalise_entries(prof)
    _check_keys(prof)
    check_values(prof)
    return prof


def _normalise_entries(prof: Profile) -> None:
    from lostattn.tasks import loaders  # noqa: F401 - registers the benchmarks
    from lostattn.tasks.registry import get_benchmark

    names = set()
    for i, m in enumerate(prof.models):
        if "name" not in m and "path" not in m:
            raise ValueError(f"profile file {prof.path}: models[{i}] has neither name nor path; give both, e.g. "
                             f"'- {{name: Qwen2.5-VL-3B-Instruct, path: /models/Qwen2.5-VL-3B-Instruct}}'")
        m.setdefault("path", m.get("name"))
        m.setdefault("name", Path(str(m["path"])).name)
        m["name"], m["path"] = str(m["name"]), str(m["path"])
        if _slug(m["name"]) in names:
            raise ValueError(f"profile file {prof.path}: model {m['name']!r} is listed twice (names must differ)")
        names.add(_slug(m["name"]))
    names = set()
    for i, b in enumerate(prof.benchmarks):
        if "name" not in b:
            raise ValueError(f"profile file {prof.path}: benchmarks[{i}] has no name; give the registry's name, e.g. "
                             f"'- {{name: pope, data: /data/pope/coco_pope_random.jsonl}}'")
        try:
            b["name"] = get_benchmark(str(b["name"])).name
        except ValueError as e:
            raise ValueError(f"profile file {prof.path}: benchmarks[{i}]: {e}") from None
        if b["name"] in names:
            raise ValueError(f"profile file {prof.path}: benchmark {b['name']!r} is listed twice; list each once")
        names.add(b["name"])
    for nb, sec in prof.sections.items():
        if "benchmark" in sec:
            try:
                sec["benchmark"] = get_benchmark(str(sec["benchmark"])).name
            except ValueError as e:
                raise ValueError(f"profile file {prof.path}: notebooks.{nb}.benchmark: {e}") from None
    for where, spec in [("book", prof.book)] + [(f"notebooks.{n}.book", s.get("book")) for n, s in
                                                 prof.sections.items() if s.get("book") is not None]:
        spec = _mapping(spec, where, prof.path)
        for k, v in spec.items():
            if k not in AXES:
                raise ValueError(f"profile file {prof.path}: {where}: unknown key {k!r}; it names a cell by "
                                 f"'model' and 'benchmark'")
            pool = [m["name"] for m in prof.models] if k == "model" else [b["name"] for b in prof.benchmarks]
            if k == "benchmark" and v not in pool:
                try:
                    v = spec[k] = get_benchmark(str(v)).name
                except ValueError:
                    pass
            if v not in pool:
                raise ValueError(f"profile file {prof.path}: {where}: {k} {v!r} is not in the profile's {k}s "
                                 f"{pool}{_closest(v, pool)}")


def _check_keys(prof: Profile) -> None:
    """Refuse keys that no notebook takes: a misspelled parameter would otherwise leave its notebook's default."""
    params = {n: notebook_parameters(n) for n in prof.run}
    everyone = sorted({p for ps in params.values() for p in ps} - set(CONTEXT))
    reserved = set(CONTEXT) | set(AXES)

    def check(key, where, allowed, owner):
        if key in CONTEXT:
            raise ValueError(f"profile file {prof.path}: {where}: {key!r} is set by reproduce (from --profile, "
                             f"--config and the cell); remove it" + ("" if key != "out_dir" else
                                                                     ", or set it per notebook under notebooks:"))
        if key not in allowed:
            raise ValueError(f"profile file {prof.path}: {where}: unknown key {key!r}: {owner}"
                             f"{_closest(key, allowed)}")

    for k in prof.common:
        check(k, "common", [p for p in everyone if p not in AXES],
              f"no notebook of the profile ({', '.join(prof.run)}) has a parameter of that name")
    for i, m in enumerate(prof.models):
        for k in m:
            if k not in ("name", "path") + MODEL_FLAGS:
                check(k, f"models[{i}] ({m['name']})", [p for p in everyone if p not in reserved] + list(MODEL_FLAGS),
                      "not a notebook parameter (a model entry takes name, path and notebook parameters)")
    for i, b in enumerate(prof.benchmarks):
        for k in b:
            if k != "name":
                check(k, f"benchmarks[{i}] ({b['name']})", [p for p in everyone if p not in reserved],
                      "not a notebook parameter (a benchmark entry takes name, data, split, samples_per_family "
                      "and other notebook parameters)")
    for nb, sec in prof.sections.items():
        declared = notebook_parameters(nb)
        for k in sec:
            if k in SECTION_KEYS:
                continue
            if k == "out_dir":
                continue
            check(k, f"notebooks.{nb}", [p for p in declared if p not in CONTEXT] + list(SECTION_KEYS),
                  f"not a parameter of notebooks/{nb}.ipynb (its parameters: {', '.join(declared)})")
        over = sec.get("over")
        if over is not None:
            _over(nb, sec, prof.path)
    if prof.conditions is not None and not any("modes" in ps for ps in params.values()):
        prof.warnings.append("conditions are listed but no notebook of the profile takes a 'modes' parameter")
    for m in prof.models:
        if m.get("reasoning") and not any("reasoning" in ps for ps in params.values()):
            prof.warnings.append(f"{m['name']} is marked reasoning: true, but no notebook of the profile takes a "
                                 f"'reasoning' parameter, so its replies are read as any model's")


def _over(nb: str, sec: dict, path: Path | None = None) -> tuple[str, ...]:
    """The axes notebook `nb` runs over: its section's `over`, else every axis it has a parameter for, except an
    axis its section pins (a section's `model` or `benchmark`)."""
    declared = notebook_parameters(nb)
    over = sec.get("over")
    if over is None:
        axes = tuple(a for a in AXES if a in declared and a not in sec)
    else:
        items = [over] if isinstance(over, str) else list(over)
        items = [] if items in (["once"], ["none"]) else items
        bad = [a for a in items if a not in AXES or a not in declared]
        if bad:
            raise ValueError(f"profile file {path}: notebooks.{nb}.over: {bad} is not an axis of {nb} (choose from "
                             f"{[a for a in AXES if a in declared]}, or 'once')")
        axes = tuple(a for a in AXES if a in items)
    return axes


# ---- values -----------------------------------------------------------------------------------------------------
# Each notebook parameter a profile may set, with what a value must be; a value is checked wherever it is written
# (common, a model's or benchmark's entry, a notebook's section), so that a bad one is named before any cell runs
# rather than after minutes of work, in Python's words.
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _number_fix(v) -> str:
    """The fix for a number YAML read as text (`1e-3`: YAML 1.1 needs a dot and a signed exponent)."""
    try:
        float(v)
    except (TypeError, ValueError):
        return "give a number"
    return f"YAML reads {v} as text: write it with a dot and a signed exponent (e.g. 1.0e-3) or as a decimal"


def _known(kind: str) -> tuple[str, ...]:
    """The names a parameter of kind `kind` may take, read from where they are defined."""
    if kind == "sap_mode":
        from lostattn.sap.distributions import MODES

        return MODES
    if kind == "metric_spec":
        from lostattn.residual.metrics import SPEC_NAMES

        return SPEC_NAMES
    if kind == "rank_rule":
        from lostattn.residual.metrics import RANK_RULES

        return RANK_RULES
    if kind == "protocol":
        from lostattn.inference.protocols import PROTOCOLS

        return PROTOCOLS
    if kind == "dtype":
        return ("float32", "float16", "bfloat16")
    raise KeyError(kind)


_DEVICE = re.compile(r"cpu|auto|mps|cuda(:\d+)?")


def _problem(key: str, v) -> str | None:
    """What is wrong with value `v` of parameter `key` (with the fix), or None when it can be run."""
    def count(minimum: int, optional: bool) -> str | None:
        if v is None and optional:
            return None
        if _is_int(v) and v >= minimum:
            return None
        what = f"a whole number of at least {minimum}" + (" (or null for all)" if optional else "")
        if isinstance(v, str):
            return f"{v!r} is text; give {what}, without quotes"
        return f"{v!r} is not {what}"

    def name(kind: str, value) -> str | None:
        known = _known(kind)
        if isinstance(value, str) and value in known:
            return None
        return f"{value!r} is not one of {', '.join(known)}{_closest(str(value), known)}"

    if key == "samples_per_family":
        return count(1, optional=True)
    if key in ("batch_size", "window"):
        return count(1, optional=False)
    if key == "max_new_tokens":
        return count(1, optional=True)
    if key == "seed":
        return count(0, optional=False)
    if key == "device":
        if isinstance(v, str) and _DEVICE.fullmatch(v):
            return None
        return f"{v!r} is not a device; give cpu, cuda, cuda:N (e.g. cuda:0), mps or auto (spread over the GPUs)"
    if key == "dtype":
        return name("dtype", v)
    if key == "protocol":
        return name("protocol", v)
    if key == "metric_spec":
        return name("metric_spec", v)
    if key == "rank_rule":
        return None if v is None else name("rank_rule", v)
    if key == "mode":
        return name("sap_mode", v)
    if key == "modes":
        if not isinstance(v, list) or not v:
            return f"{v!r} is not a list of SAP modes; write e.g. [gaussian_noise, uniform]"
        bad = next((m for m in v if name("sap_mode", m)), None)
        return None if bad is None else name("sap_mode", bad)
    if key in ("lam", "rank_value"):
        if _is_number(v) and v >= 0:
            return None
        return f"{v!r} is not a number of at least 0; {_number_fix(v)}" if isinstance(v, str) else \
            f"{v!r} is not a number of at least 0"
    if key == "lams":
        if not isinstance(v, list) or not v:
            return f"{v!r} is not a list of λ values; write a list, e.g. [0.0, 0.5, 1.0]"
        bad = next((x for x in v if not (_is_number(x) and x >= 0)), None)
        if bad is None:
            return None
        return f"{bad!r} in the list is not a number of at least 0" + (f"; {_number_fix(bad)}"
                                                                       if isinstance(bad, str) else "")
    if key in ("check_reference", "compare_protocols", "compare_specs", "reasoning"):
        return None if isinstance(v, bool) else f"{v!r} is not true or false"
    if key in ("split", "model", "data", "benchmark", "scope"):
        return None if v is None or isinstance(v, str) else f"{v!r} is not text; give a name or a path"
    return None


def check_values(prof: Profile) -> None:
    """Refuse a value that cannot be run: one line naming the profile file, where the key is, the value and the
    fix (types, ranges, known names: SAP modes, metric specs, protocols, dtypes, devices)."""
    places = [("common", prof.common)]
    places += [(f"models[{i}] ({m.get('name')})", m) for i, m in enumerate(prof.models)]
    places += [(f"benchmarks[{i}] ({b.get('name')})", b) for i, b in enumerate(prof.benchmarks)]
    places += [(f"notebooks.{nb}", sec) for nb, sec in prof.sections.items()]
    if prof.conditions is not None:
        places.append(("conditions", {"modes": prof.conditions}))
    for where, entries in places:
        for key, value in entries.items():
            if key in ("name", "path") and where.startswith(("models", "benchmarks")):
                continue
            problem = _problem(key, value)
            if problem:
                shown = "conditions" if where == "conditions" else f"{where}.{key}"
                raise ValueError(f"profile file {prof.path}: {shown}: {problem}")


def check_inputs(prof: Profile, devices: bool = True) -> None:
    """Refuse, before any cell runs (and for --plan), a model path or benchmark data path that does not exist,
    and with `devices` a CUDA device this machine does not have."""
    from lostattn.pipeline.plan import _local

    for i, m in enumerate(prof.models):
        _check_model(prof, i, m, _local)
    for where, entry in ([(f"benchmarks[{i}] ({b['name']})", b) for i, b in enumerate(prof.benchmarks)]
                         + [("common", prof.common)] + [(f"notebooks.{n}", s) for n, s in prof.sections.items()]):
        data = entry.get("data")
        if data and not _local(str(data)).exists():
            raise FileNotFoundError(f"profile file {prof.path}: {where}.data: {data} does not exist (read as "
                                    f"{_local(str(data))}); give the benchmark's file or dataset folder")
    if devices:
        import torch

        for where, entry in [("common", prof.common)] + [(f"models[{i}] ({m['name']})", m)
                                                          for i, m in enumerate(prof.models)]:
            dev = entry.get("device")
            if not isinstance(dev, str) or not dev.startswith("cuda"):
                continue
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(dev.split(":")[1]) if ":" in dev else 0
            if index >= have:
                raise ValueError(f"profile file {prof.path}: {where}.device: {dev!r}, but this machine has "
                                 f"{have} CUDA device(s); give cpu" + (f" or cuda:0 to cuda:{have - 1}" if have
                                                                         else ", or run on a GPU machine"))


def _check_model(prof: Profile, i: int, m: dict, local) -> None:
    path = str(m["path"])
    if path == "embedded":
        return
    p = local(path)
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"profile file {prof.path}: models[{i}] ({m['name']}).path: {p} has no "
                                    f"config.json: not a checkpoint folder; give the model's folder")
        return
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):  # a hub id: it must be in the local cache
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return
        raise FileNotFoundError(f"profile file {prof.path}: models[{i}] ({m['name']}).path: {path} is neither a "
                                f"folder nor a hub id in the local cache (nothing is downloaded); give the "
                                f"checkpoint's local folder")
    raise FileNotFoundError(f"profile file {prof.path}: models[{i}] ({m['name']}).path: {path} does not exist (read "
                            f"as {p}); give the checkpoint's folder")
