"""The `lostattn` command: train, eval, analyze, reproduce, book."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _layers(text: str | None):
    if text is None or text == "all":
        return "all" if text == "all" else None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SystemExit(f"--layers takes 'all' or comma-separated integers, got {text!r}")


def cmd_train(a) -> int:
    from .models.loader import EMBEDDED_DIR
    from .train import TrainConfig, train_embedded

    out = Path(a.out or EMBEDDED_DIR)
    given = {k: getattr(a, k) for k in ("seed", "epochs", "threads") if getattr(a, k) is not None}
    train_embedded(out, TrainConfig(**given))
    print(f"saved the embedded model to {out}")
    if not a.no_eval:
        from .models.loader import load_model
        from .report import embedded_test_report

        print(embedded_test_report(load_model(str(out)), out / "test_accuracy.csv").to_string(index=False))
    return 0


def cmd_eval(a) -> int:
    from .tasks.loaders import load_benchmark
    from .evaluate import RunSpec, evaluate, summarize
    from .models.loader import load_model
    from .sap import SAPConfig

    lm = load_model(a.model, a.device, a.dtype)
    samples = load_benchmark(a.benchmark, a.data, split=a.split, limit_per_family=a.limit)
    sap_cfg = None
    if a.sap_mode:
        layers = _layers(a.layers) or "all"
        sap_cfg = SAPConfig(mode=a.sap_mode, lam=a.lam, layers=layers, seed=a.seed,
                            head_percentile=(a.head_min, a.head_max), queries=a.queries)
    spec = RunSpec(model=a.model, benchmark=a.benchmark, sap=sap_cfg.to_dict() if sap_cfg else None,
                   blind=a.blind, max_new_tokens=a.max_new_tokens, seed=a.seed)
    tag = sap_cfg.tag() if sap_cfg else ("blind" if a.blind else "vanilla")
    out = Path(a.out) if a.out else Path("results") / "eval" / f"{Path(a.model).name}-{a.benchmark}-{tag}.jsonl"
    records = evaluate(lm, samples, out, spec, batch_size=a.batch_size, sap_cfg=sap_cfg)
    table = summarize(records)
    table.to_csv(out.with_suffix(".summary.csv"), index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"per-sample records: {out}")
    return 0


def cmd_analyze(a) -> int:
    from .analysis import layer_curves, residual_metrics, rope_baseline, table1
    from .tasks.loaders import load_benchmark
    from .metrics import RankRule
    from .models.loader import load_model

    lm = load_model(a.model, a.device, a.dtype)
    samples = load_benchmark(a.benchmark, a.data, split=a.split, limit_per_family=a.limit)
    layers = _layers(a.layers)
    layers = None if layers in (None, "all") else list(layers)
    rule = RankRule(a.rank_rule, a.rank_value)
    scopes = tuple(a.scope.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df = residual_metrics(lm, samples, layers, scopes, rule, batch_size=a.batch_size, seed=a.seed)
    df.to_csv(out / "residual_metrics.csv", index=False)
    layer_curves(df).to_csv(out / "layer_curves.csv", index=False)
    eps = rope_baseline(lm, samples, layers, scopes, rule, batch_size=a.batch_size)
    eps.to_csv(out / "eps_rope.csv", index=False)
    t1 = table1(df, scopes[0])
    t1.to_csv(out / "table1.csv", index=False)
    print(t1.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"eps_RoPE = {eps[eps.scope == scopes[0]].rid.mean():.3f}")
    return 0


def cmd_reproduce(a) -> int:
    from .reproduce import reproduce

    return reproduce(profile=a.profile, only=a.only, force=a.force, config=a.config, build_book=not a.no_book)


def cmd_book(a) -> int:
    from .reproduce import build_book

    return build_book(a.profile)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lostattn", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_args(sp):
        sp.add_argument("--model", default="embedded", help="'embedded', a local checkpoint folder, or a cached hub id")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
        sp.add_argument("--benchmark", default="synthetic")
        sp.add_argument("--data", default=None, help="benchmark file (real benchmarks)")
        sp.add_argument("--split", default="test")
        sp.add_argument("--limit", type=int, default=None, help="samples per family")
        sp.add_argument("--batch-size", type=int, default=16)
        sp.add_argument("--seed", type=int, default=42)
        sp.add_argument("--layers", default=None, help="'all' or e.g. 18,19,20")

    t = sub.add_parser("train", help="train the embedded model on the synthetic train split")
    t.add_argument("--out", default=None)
    t.add_argument("--seed", type=int, default=None, help="default: TrainConfig's (the committed model's)")
    t.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's (the committed model's)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: TrainConfig's)")
    t.add_argument("--no-eval", action="store_true")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="score a model on a benchmark, vanilla or with SAP")
    model_args(e)
    e.add_argument("--sap-mode", default=None, choices=["gaussian_noise", "uniform", "vis_enc_attn", "complexity"])
    e.add_argument("--lam", type=float, default=1.0)
    e.add_argument("--head-min", type=float, default=0.0)
    e.add_argument("--head-max", type=float, default=1.0)
    e.add_argument("--queries", default="last", choices=["last", "text"])
    e.add_argument("--blind", action="store_true", help="remove the image (text-only control)")
    e.add_argument("--max-new-tokens", type=int, default=8)
    e.add_argument("--out", default=None)
    e.set_defaults(fn=cmd_eval)

    an = sub.add_parser("analyze", help="RID / MixIG per layer and module, controls, eps_RoPE")
    model_args(an)
    an.add_argument("--scope", default="all", help="comma-separated: all,visual,text")
    an.add_argument("--rank-rule", default="energy", choices=["energy", "tol", "fixed"])
    an.add_argument("--rank-value", type=float, default=0.99)
    an.add_argument("--out", default="results/analyze")
    an.set_defaults(fn=cmd_analyze, limit=8, batch_size=8)

    r = sub.add_parser("reproduce", help="run every notebook of a profile with papermill and build the book")
    r.add_argument("--profile", default="tiny")
    r.add_argument("--only", default=None, help="one notebook (name without .ipynb)")
    r.add_argument("--force", action="store_true", help="rerun even when nothing changed")
    r.add_argument("--config", default=None, help="profile config file (YAML) for the 'paper' profile")
    r.add_argument("--no-book", action="store_true")
    r.set_defaults(fn=cmd_reproduce)

    b = sub.add_parser("book", help="build the HTML book from a profile's executed notebooks")
    b.add_argument("--profile", default="tiny")
    b.set_defaults(fn=cmd_book)

    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except (FileNotFoundError, ValueError, NotImplementedError) as err:
        print(f"lostattn {a.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
