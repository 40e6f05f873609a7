"""The `lostattn` command: train, eval, analyze, reproduce, aggregate, book.

Errors a user can cause end in one line naming the input and the fix (exit status 2); set LOSTATTN_DEBUG=1 to get
the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


def _layers(text: str | None):
    from lostattn.sap.replace import parse_layers

    try:
        return parse_layers(text)
    except ValueError:
        raise ValueError(f"--layers takes 'all' or comma-separated integers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _broken_weight_file(folder: Path) -> str | None:
    """The first weight file of a checkpoint folder that safetensors cannot open, with the reason."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    st.get_slice(k)
        except Exception as e:  # noqa: BLE001 - any failure to read the file is the answer
            return f"{f}: {e}"
    return None


def load_model_for(a):
    """The model named by --model on --device in --dtype; a checkpoint that cannot be read is a one-line error."""
    from lostattn.models.loader import load_model, resolve

    try:
        return load_model(a.model, a.device, a.dtype)
    except (FileNotFoundError, ValueError, NotImplementedError):
        raise
    except Exception as e:  # noqa: BLE001 - transformers/safetensors raise many types for a damaged checkpoint
        folder = Path(resolve(a.model))
        broken = _broken_weight_file(folder) if folder.is_dir() else None
        if broken:
            raise ValueError(f"cannot read the weights of --model {a.model}: {broken}. The file is truncated or "
                             f"corrupt; copy or download the checkpoint again") from e
        raise ValueError(f"cannot load --model {a.model} on {a.device} ({a.dtype}): {type(e).__name__}: {e}") from e


def cmd_train(a) -> int:
    from lostattn.models.loader import EMBEDDED_DIR
    from lostattn.models.train import TrainConfig, train_embedded

    out = Path(a.out or EMBEDDED_DIR)
    given = {k: getattr(a, k) for k in ("seed", "epochs", "threads") if getattr(a, k) is not None}
    train_embedded(out, TrainConfig(**given))
    print(f"saved the embedded model to {out}")
    if not a.no_eval:
        from lostattn.models.loader import load_model
        from lostattn.paper.tables import embedded_test_report

        print(embedded_test_report(load_model(str(out)), out / "test_accuracy.csv").to_string(index=False))
    return 0


# SAP options and the cli's name of the SAPConfig field each sets; unset (None) options take the protocol's preset
SAP_OPTIONS = ("lam", "head_min", "head_max", "queries", "layers")


def _check_sap_options(a) -> None:
    """Refuse SAP options without --sap-mode, an unknown mode and an inverted head window, before anything loads."""
    from lostattn.sap.distributions import MODES

    given = [k for k in SAP_OPTIONS if getattr(a, k) is not None]
    if not a.sap_mode:
        if given:
            opts = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"{opts} only apply with --sap-mode ({', '.join(MODES)}); add --sap-mode or drop "
                             f"{opts}")
        return
    if a.sap_mode not in MODES:
        raise ValueError(f"--sap-mode {a.sap_mode!r} is not one of {', '.join(MODES)}")
    if (a.head_min is None) != (a.head_max is None):
        raise ValueError("--head-min and --head-max set the head window together; give both (e.g. --head-min 0.3 "
                         "--head-max 0.9) or neither (the protocol's window)")
    if a.head_min is not None and a.head_min > a.head_max:
        raise ValueError(f"--head-min {a.head_min} is above --head-max {a.head_max}: the head window is empty; give "
                         f"the lower percentile first (--head-min {a.head_max} --head-max {a.head_min})")


def _sap_config(a, protocol):
    """The protocol's SAP preset for --sap-mode with the SAP options that were given; None without --sap-mode."""
    if not a.sap_mode:
        return None
    return protocol.sap_config(a.sap_mode, lam=a.lam, seed=a.seed, queries=a.queries,
                               head_percentile=(a.head_min, a.head_max) if a.head_min is not None else None,
                               layers=(_layers(a.layers) or "all") if a.layers is not None else None)


def cmd_eval(a) -> int:
    from lostattn.harness import distributed
    from lostattn.harness.evaluate import EvalSettings, evaluate, summarize
    from lostattn.provenance import data_identity
    from lostattn.tasks.loaders import load_benchmark

    _check_sap_options(a)
    world = distributed.init(a.device)
    samples = load_benchmark(a.benchmark, a.data, split=a.split, limit_per_family=a.limit)
    lm = load_model_for(a)
    spec = EvalSettings(model=a.model, benchmark=a.benchmark, blind=a.blind, max_new_tokens=a.max_new_tokens,
                   seed=a.seed, data=data_identity(a.data), split=a.split, protocol=a.protocol,
                   reasoning=a.reasoning)
    sap_cfg = _sap_config(a, spec.resolve(lm))
    spec = dataclasses.replace(spec, sap=sap_cfg.to_dict() if sap_cfg else None).bound(lm)
    tag = sap_cfg.tag() if sap_cfg else ("blind" if a.blind else "vanilla")
    data = f"-{Path(a.data).stem}" if a.data else ""
    name = f"{Path(a.model).name}-{a.benchmark}{data}-{a.split}-{a.protocol}-{tag}-{spec.digest()}.jsonl"
    out = Path(a.out) if a.out else Path("results") / "eval" / name
    records = evaluate(lm, samples, out, spec, batch_size=a.batch_size, sap_cfg=sap_cfg, world=world,
                       progress=world.is_main)
    if not world.is_main:
        return 0
    from lostattn.paper.tables import with_accuracy_ci
    from lostattn.stats import accuracy_ci

    table = with_accuracy_ci(summarize(records), records)  # percent, 95% Wilson interval per family
    table.to_csv(out.with_suffix(".summary.csv"), index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    whole = accuracy_ci(records["correct"].astype(int))
    print(f"accuracy over all {whole.n} samples: {whole.text()} % (95% Wilson interval)")
    print(f"per-sample records: {out}" + (f" (merged from {world.size} ranks)" if world.active else ""))
    return 0


def cmd_analyze(a) -> int:
    from lostattn.harness import distributed
    from lostattn.residual.analysis import layer_curves
    from lostattn.harness.analyze import analyze_run
    from lostattn.residual.metrics import MetricSpec
    from lostattn.provenance import data_identity
    from lostattn.tasks.loaders import load_benchmark

    spec = MetricSpec.named(a.metric_spec, a.rank_rule, a.rank_value)
    scopes = tuple(x.strip() for x in a.scope.split(",") if x.strip())
    layers = _layers(a.layers)
    layers = None if layers in (None, "all") else list(layers)
    world = distributed.init(a.device)
    samples = load_benchmark(a.benchmark, a.data, split=a.split, limit_per_family=a.limit)
    lm = load_model_for(a)
    out = Path(a.out)
    metrics, eps = analyze_run(lm, samples, out / "records.jsonl", spec, scopes=scopes, layers=layers,
                               controls=a.controls, batch_size=a.batch_size, seed=a.seed, model=a.model,
                               benchmark=a.benchmark, data=data_identity(a.data), split=a.split, world=world,
                               progress=world.is_main)
    if not world.is_main:
        return 0
    metrics.to_csv(out / "residual_metrics.csv", index=False)
    layer_curves(metrics).to_csv(out / "layer_curves.csv", index=False)
    eps.to_csv(out / "eps_rope.csv", index=False)
    from lostattn.paper.tables import eps_interval, table1_intervals

    t1 = table1_intervals(metrics, scopes[0], a.seed)  # module means with 95% bootstrap intervals over samples
    t1.to_csv(out / "table1.csv", index=False)
    print(f"metric spec: {spec.describe()}")
    shown = t1[["module", "RID", "RID_ci_low", "RID_ci_high", "MixIG", "MixIG_ci_low", "MixIG_ci_high", "samples"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"eps_RoPE = {eps_interval(eps, scopes[0], a.seed).text()} (95% bootstrap interval over samples)")
    from lostattn.harness.costs import peak_memory_text

    print(peak_memory_text(lm.device))
    print(f"per-sample records: {out / 'records.jsonl'}; tables in {out}/"
          + (f" (merged from {world.size} ranks)" if world.active else ""))
    return 0


def cmd_reproduce(a) -> int:
    from lostattn.pipeline.reproduce import reproduce

    return reproduce(profile=a.profile, only=a.only, force=a.force, config=a.config, build_book=not a.no_book,
                     plan_only=a.plan, cell=a.cell, model=a.model, benchmark=a.benchmark)


def cmd_aggregate(a) -> int:
    from lostattn.paper.aggregate import print_tables

    return print_tables(a.profile, a.config, out_dir=a.out)


def cmd_book(a) -> int:
    from lostattn.pipeline.book import build_book

    return build_book(a.profile)


class UsageError(ValueError):
    """A command line argparse refuses (unknown option, bad value)."""


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as a UsageError, so that it ends in the same one line as every other error."""

    def error(self, message):
        raise UsageError(f"{message} (`{self.prog} --help` lists the options)")


def _model_args(sp) -> None:
    """The options of every command that loads a model and reads a benchmark (eval, analyze)."""
    sp.add_argument("--model", default="embedded", help="'embedded', a local checkpoint folder, or a cached hub id")
    sp.add_argument("--device", default="cpu",
                    help="cpu, cuda, cuda:N, or auto (under torchrun: one GPU per rank; alone: device_map='auto' "
                         "over the node's GPUs, for a model too large for one)")
    sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    sp.add_argument("--benchmark", default="synthetic")
    sp.add_argument("--data", default=None, help="benchmark file (real benchmarks)")
    sp.add_argument("--split", default="test")
    sp.add_argument("--limit", type=_positive_int, default=None, help="samples per family")
    sp.add_argument("--batch-size", type=_positive_int, default=16)
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--layers", default=None, help="'all' or e.g. 18,19,20")
    sp.add_argument("--threads", type=_positive_int, default=None,
                    help="CPU threads (default: min(2, cores); 1 per rank under torchrun / accelerate launch)")


def _train_parser(sub) -> None:
    """`lostattn train`: retrain the embedded model."""
    t = sub.add_parser("train", help="train the embedded model on the synthetic train split")
    t.add_argument("--out", default=None)
    t.add_argument("--seed", type=int, default=None, help="default: TrainConfig's (the committed model's)")
    t.add_argument("--epochs", type=_positive_int, default=None, help="default: TrainConfig's (the committed model's)")
    t.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: TrainConfig's)")
    t.add_argument("--no-eval", action="store_true")
    t.set_defaults(fn=cmd_train)


def _eval_parser(sub) -> None:
    """`lostattn eval`: score a model on a benchmark, vanilla or with SAP."""
    e = sub.add_parser("eval", help="score a model on a benchmark, vanilla or with SAP")
    _model_args(e)
    e.add_argument("--protocol", default="controlled", choices=["controlled", "official"],
                   help="controlled: one rule for every family (greedy, 8 tokens, all heads); official: what the "
                        "paper's scripts do for the model's family (prompt order, sampling, head and layer windows)")
    e.add_argument("--reasoning", action="store_true",
                   help="a reasoning model (e.g. Ocean-R1): the <think>/<answer> instruction, answer read from "
                        "<answer>")
    e.add_argument("--sap-mode", default=None,
                   help="SAP mode: gaussian_noise, uniform, key, vis_enc_attn or complexity")
    e.add_argument("--lam", type=float, default=None, help="SAP mixing weight (default 1: full replacement)")
    e.add_argument("--head-min", type=float, default=None,
                   help="SAP head window, lower percentile (default: the protocol's; controlled 0)")
    e.add_argument("--head-max", type=float, default=None,
                   help="SAP head window, upper percentile (default: the protocol's; controlled 1)")
    e.add_argument("--queries", default=None, choices=["last", "text"], help="SAP query rows (default: last)")
    e.add_argument("--blind", action="store_true", help="remove the image (text-only control)")
    e.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="default: the protocol's (controlled 8, official 1024)")
    e.add_argument("--out", default=None)
    e.set_defaults(fn=cmd_eval)


def _analyze_parser(sub) -> None:
    """`lostattn analyze`: the residual-stream metrics, their controls and eps_RoPE."""
    an = sub.add_parser("analyze", help="RID / MixIG per layer and module, controls, eps_RoPE")
    _model_args(an)
    an.add_argument("--scope", default="all", help="comma-separated: all,visual,text")
    an.add_argument("--metric-spec", default="official", choices=["official", "paper_text"],
                    help="official: the metrics as the paper's code computes them (sharpened, normalised TME of the "
                         "last token, l2 dD, numerical rank); paper_text: the formulas of the paper's text")
    an.add_argument("--controls", default=None, choices=["official", "decoder_layers"],
                    help="noise controls: official (every q/k/v or MLP module, vision tower included, seed 42 per "
                         "tensor) or decoder_layers (the analysed decoder layers); default: the metric spec's")
    an.add_argument("--rank-rule", default=None, choices=["energy", "tol", "fixed", "numerical"],
                    help="override the spec's rank rule for the projectors (official: numerical; paper_text: "
                         "energy 0.99)")
    an.add_argument("--rank-value", type=float, default=0.99)
    an.add_argument("--out", default="results/analyze")
    an.set_defaults(fn=cmd_analyze, limit=8, batch_size=8)


def _reproduce_parser(sub) -> None:
    """`lostattn reproduce`: a profile's notebooks with papermill, then the book."""
    r = sub.add_parser("reproduce", help="run every notebook of a profile with papermill and build the book")
    r.add_argument("--profile", default="tiny")
    r.add_argument("--only", default=None, help="notebooks to run (names without .ipynb, comma-separated)")
    r.add_argument("--force", action="store_true", help="rerun even when nothing changed")
    r.add_argument("--config", default=None, help="profile config file (YAML), e.g. a filled-in profiles/paper.yaml")
    r.add_argument("--no-book", action="store_true")
    r.add_argument("--plan", action="store_true",
                   help="print the numbered cells and the command that runs each (e.g. as a SLURM array); run nothing")
    r.add_argument("--cell", type=_positive_int, default=None, help="run one cell of the plan, by its number")
    r.add_argument("--model", default=None, help="only this model's cells (its name in the profile)")
    r.add_argument("--benchmark", default=None, help="only this benchmark's cells (registry or paper name)")
    r.set_defaults(fn=cmd_reproduce)


def _aggregate_parser(sub) -> None:
    """`lostattn aggregate`: the paper's tables over a profile's matrix."""
    g = sub.add_parser("aggregate", help="the paper's tables over a profile's whole matrix (the page 30_paper_tables)")
    g.add_argument("--profile", default="tiny")
    g.add_argument("--config", default=None, help="profile config file (YAML)")
    g.add_argument("--out", default=None, help="also write the tables as CSVs to this folder")
    g.set_defaults(fn=cmd_aggregate)


def _book_parser(sub) -> None:
    """`lostattn book`: the HTML book from executed notebooks."""
    b = sub.add_parser("book", help="build the HTML book from a profile's executed notebooks")
    b.add_argument("--profile", default="tiny")
    b.set_defaults(fn=cmd_book)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per step of the pipeline."""
    p = _Parser(prog="lostattn", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_train_parser, _eval_parser, _analyze_parser, _reproduce_parser, _aggregate_parser, _book_parser):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    try:
        a = p.parse_args(argv)
    except UsageError as err:
        cmd = next((w for w in (argv if argv is not None else sys.argv[1:]) if not w.startswith("-")), "")
        print(f"lostattn{' ' + cmd if cmd else ''}: error: {err}", file=sys.stderr)
        return 2
    try:
        _check_args(a)
        return _run(a)
    except KeyboardInterrupt:
        print(f"lostattn {a.cmd}: interrupted; run the same command again to resume from what was finished",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line ends in one line, never a traceback
        if os.environ.get("LOSTATTN_DEBUG") == "1":
            raise
        print(f"lostattn {a.cmd}: error: {_message(err)}", file=sys.stderr)
        if not isinstance(err, EXPECTED + (OSError,)):
            print("(an unexpected error; set LOSTATTN_DEBUG=1 to see where it happened, and report it with the "
                  "command you ran)", file=sys.stderr)
        return 2


EXPECTED = (FileNotFoundError, ValueError, NotImplementedError)  # raised with a message written for the user


def _message(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return text if isinstance(err, EXPECTED) else f"{type(err).__name__}: {text}"


def _check_args(a) -> None:
    """Option values argparse cannot check alone."""
    if getattr(a, "rank_rule", None) == "fixed" and not (a.rank_value >= 1 and float(a.rank_value).is_integer()):
        raise ValueError(f"--rank-rule fixed takes a rank, a whole number of at least 1, as --rank-value; got "
                         f"{a.rank_value:g}")
    if getattr(a, "rank_rule", None) == "energy" and not 0 < a.rank_value <= 1:
        raise ValueError(f"--rank-rule energy takes an energy fraction in (0, 1] as --rank-value; got "
                         f"{a.rank_value:g}")


def _run(a) -> int:
    """Run the command; eval and analyze first join the launcher's ranks (if any) and set their CPU threads."""
    if a.cmd not in ("eval", "analyze"):
        return a.fn(a)
    import torch

    from lostattn.harness import distributed

    world = distributed.init(a.device)
    a.device = world.device
    torch.set_num_threads(a.threads or distributed.default_threads(world.size))
    try:
        return a.fn(a)
    finally:
        distributed.close()


if __name__ == "__main__":
    sys.exit(main())
