"""The benchmark harness: batched generation over a benchmark under a protocol, vanilla or with SAP, resumable,
data parallel.

Each finished sample is appended at once to a JSON-lines results file (`lostattn.harness.records`) whose first line names
the run: `EvalSettings.key()`, every input that changes a record. Rerunning with the same file skips the finished
samples; a file written by a different run is refused rather than mixed; each record carries the digest of its own
inputs (prompt as rendered, image, answer), checked again on resume. A record never depends on the other samples of
its batch: samples with and without an image are generated in separate groups. Under torchrun / accelerate each
rank writes its own part file and rank 0 merges them (`lostattn.harness.distributed`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lostattn.harness import distributed

from lostattn.harness import runner
from lostattn.inference.generation import generate_replies
from lostattn.models.prompts import chat_prompt
from lostattn.inference.protocols import Protocol, get_protocol
from lostattn.provenance import provenance
from lostattn.sap.replace import SAPConfig
from lostattn.tasks.images import image_fingerprint
from lostattn.tasks.scoring import extract, is_correct, summarize
from lostattn.tasks.types import VQASample


@dataclass(frozen=True)
class EvalSettings:
    """What identifies a run: two runs with equal keys can share a results file.

    `protocol` names how the model is prompted and decodes (`lostattn.inference.protocols`: "controlled" or "official");
    `max_new_tokens` None takes the protocol's. `data` identifies the benchmark file (`provenance.data_identity`);
    `dtype`, `device`, `weights` and the resolved protocol are read from the loaded model by `bound`."""

    model: str
    benchmark: str
    sap: dict | None = None
    blind: bool = False
    max_new_tokens: int | None = None
    seed: int = 42
    data: str | None = None
    split: str = "test"
    protocol: str = "controlled"
    reasoning: bool = False
    dtype: str | None = None
    device: str | None = None
    weights: str | None = None
    decoding: dict | None = None  # the resolved protocol's key (prompt order, image size, decoding), set by `bound`

    def resolve(self, lm) -> Protocol:
        """The protocol this run uses on the loaded model `lm`."""
        return get_protocol(lm, self.protocol, reasoning=self.reasoning, max_new_tokens=self.max_new_tokens,
                            seed=self.seed)

    def key(self) -> dict:
        """Every input that changes a record; the one place a new such input is added."""
        return {"model": self.model, "weights": self.weights, "dtype": self.dtype, "device": self.device,
                "benchmark": self.benchmark, "data": self.data, "split": self.split, "sap": self.sap,
                "blind": self.blind, "protocol": self.decoding, "seed": self.seed}

    def bound(self, lm) -> "EvalSettings":
        """This spec with dtype, device (its type: cpu, cuda), weights and the resolved protocol read from `lm`."""
        found = {**lm.identity(), "decoding": self.resolve(lm).key()}
        for name, value in found.items():
            given = getattr(self, name)
            if given is not None and given != value:
                raise ValueError(f"EvalSettings {name}={given!r} but the loaded model has {name} {value!r}")
        return dataclasses.replace(self, **found)

    def digest(self) -> str:
        """8 hex digits of the key: different runs get different default file names."""
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:8]


def input_digest(lm, sample: VQASample, blind: bool = False, protocol: Protocol | None = None) -> str:
    """16 hex digits of what a record is made from: the prompt as rendered, the image's content
    (`lostattn.tasks.images.image_fingerprint`: its bytes, not its name), the answer and options."""
    with_image = sample.image is not None and not blind
    question = protocol.question_text(sample.question) if protocol is not None else sample.question
    parts = [chat_prompt(lm.processor, question, with_image=with_image, protocol=protocol),
             image_fingerprint(sample.image) if with_image else "none", sample.answer, sample.kind,
             json.dumps(sample.options, sort_keys=True)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def generate_batch(lm, samples: list[VQASample], max_new_tokens: int = 8, sap_cfg: SAPConfig | None = None,
                   blind: bool = False) -> list[str]:
    """Replies for a batch under the controlled protocol (greedy, `max_new_tokens`), vanilla or with SAP; see
    `lostattn.inference.generation.generate_replies` for any protocol."""
    return generate_replies(lm, samples, get_protocol(lm, "controlled", max_new_tokens=max_new_tokens), sap_cfg,
                            blind)


def _record(s: VQASample, reply: str, answer_text: str, digest: str, with_image: bool) -> dict:
    pred = extract(s.kind, answer_text, s.options)
    return {"id": s.id, "benchmark": s.benchmark, "family": s.family, "kind": s.kind,
            "subtype": s.meta.get("subtype", ""), "answer": s.answer, "reply": reply, "prediction": pred,
            "correct": bool(is_correct(s.kind, pred, s.answer)), "with_image": with_image, "inputs": digest}


def _inputs_checker(digests: dict[str, str]):
    """A check for `runner.run` that drops the finished records made from other inputs than this run's (an image
    overwritten, an edited question or answer): their samples are computed again, and the new record, appended
    later, is the one read back."""
    def check(path: Path, done: dict[str, dict]) -> None:
        stale = [sid for sid, rec in done.items() if sid in digests and rec.get("inputs") != digests[sid]]
        for sid in stale:
            del done[sid]
        if stale:
            shown = ", ".join(map(str, stale[:5])) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            print(f"{path}: {len(stale)} finished record(s) were made from other inputs (image, prompt, options or "
                  f"answer changed since): computed again: {shown}", flush=True)
    return check


def evaluate(lm, samples: list[VQASample], out_file: str | Path, spec: EvalSettings, batch_size: int = 16,
             sap_cfg: SAPConfig | None = None, progress: bool = True,
             world: distributed.World | None = None) -> pd.DataFrame:
    """Score `samples`, appending per-sample records to `out_file`; returns all records of the run, in the order of
    `samples`. Under a launcher (`world` with several ranks) each rank scores its shard and every rank returns the
    merged records (`lostattn.harness.runner`)."""
    if (sap_cfg.to_dict() if sap_cfg else None) != spec.sap:
        raise ValueError("spec.sap must equal sap_cfg.to_dict() (or both be None)")
    runner.refuse_repeated_ids([s.id for s in samples])
    spec = spec.bound(lm)
    protocol = spec.resolve(lm)
    digests = {s.id: input_digest(lm, s, spec.blind, protocol) for s in samples}
    torch.manual_seed(spec.seed)

    def work(batch: list[VQASample]) -> list[dict]:
        replies = generate_replies(lm, batch, protocol, sap_cfg, spec.blind)
        return [_record(s, r, protocol.answer_text(r), digests[s.id], s.image is not None and not spec.blind)
                for s, r in zip(batch, replies)]

    done = runner.run(out_file, spec.key(), samples, work, provenance(seed=spec.seed), batch_size, world, progress,
                      desc=f"eval {spec.benchmark}", check=_inputs_checker(digests))
    return pd.DataFrame(list(done.values()))


def throughput(lm, samples: list[VQASample], batch_size: int, max_new_tokens: int = 8, repeats: int = 1) -> dict:
    """Samples per second of batched vs one-at-a-time generation over the same samples, measured together."""
    def run(bs: int) -> float:
        t = time.perf_counter()
        for _ in range(repeats):
            for a in range(0, len(samples), bs):
                generate_batch(lm, samples[a:a + bs], max_new_tokens)
        return repeats * len(samples) / (time.perf_counter() - t)

    run(batch_size)  # warm-up
    batched, single = run(batch_size), run(1)
    return {"batched_samples_per_s": batched, "unbatched_samples_per_s": single, "speedup": batched / single,
            "batch_size": batch_size, "n": len(samples)}


__all__ = ["EvalSettings", "evaluate", "generate_batch", "input_digest", "summarize", "throughput"]
