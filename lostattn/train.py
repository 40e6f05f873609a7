"""Training the embedded model on the synthetic train split, on CPU, deterministically for a given seed.

The loss is next-token cross-entropy on the answer tokens (and the closing `</s>`) only. The run writes the
checkpoint (`save_pretrained`), `training_curve.csv` (step, loss, learning rate, seconds) and `train_meta.json`
(definition, sizes, seed, versions, commit) into the output folder.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .bench.synthetic import AUX_FAMILIES, FAMILIES, SyntheticBenchmark, SyntheticConfig
from .models.embedded import EmbeddedArch, build_embedded
from .prompts import chat_prompt
from .provenance import provenance


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    threads: int = 2
    log_every: int = 25


def encode_split(bench: SyntheticBenchmark, processor, split: str, chunk: int = 1024,
                 families: tuple[str, ...] = FAMILIES + AUX_FAMILIES):
    """Token ids of prompt+answer+eos, the index where the answer starts, and pixel values per unique image."""
    samples = bench.samples(split, families=families)
    tok = processor.tokenizer
    n_img = len(bench.scenes[split])
    pixels = torch.cat([
        processor.image_processor(images=[bench.image(split, i) for i in range(a, min(a + chunk, n_img))],
                                  return_tensors="pt")["pixel_values"]
        for a in range(0, n_img, chunk)
    ])
    # One image placeholder expands to the same number of tokens for every image: ask the processor once.
    prompts = [chat_prompt(processor, s.question) for s in samples]
    ids: list[list[int]] = []
    starts: list[int] = []
    for a in range(0, len(samples), chunk):
        part = samples[a : a + chunk]
        enc = processor(text=prompts[a : a + chunk], images=[bench.image(split, 0)] * len(part),
                        padding=False, return_tensors=None)
        ans = tok([" " + s.answer for s in part], add_special_tokens=False)["input_ids"]
        for p, q in zip(enc["input_ids"], ans):
            starts.append(len(p))
            ids.append(list(p) + list(q) + [tok.eos_token_id])
    image_index = torch.tensor([s.meta["image_index"] for s in samples])
    return ids, starts, pixels, image_index


def _collate(ids, starts, rows, pad_id):
    """Right-padded batch with labels only on the answer span."""
    L = max(len(ids[r]) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), L), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        seq = torch.tensor(ids[r])
        input_ids[b, : len(seq)] = seq
        mask[b, : len(seq)] = 1
        labels[b, starts[r] : len(seq)] = seq[starts[r] :]
    return input_ids, labels, mask


def train_embedded(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), arch: EmbeddedArch = EmbeddedArch(),
                   bench_cfg: SyntheticConfig | None = None, progress: bool = True) -> Path:
    """Train the embedded model and save it to `out_dir`; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    bench = SyntheticBenchmark(bench_cfg)
    model, processor = build_embedded(bench, arch, seed=cfg.seed)
    ids, starts, pixels, image_index = encode_split(bench, processor, "train")
    pad = processor.tokenizer.pad_token_id
    n = len(ids)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))

    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    curve = []
    t0 = time.perf_counter()
    step = 0
    running = None
    bar = tqdm(total=total, desc="train embedded", disable=not progress)
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for a in range(0, n, cfg.batch_size):
            rows = order[a : a + cfg.batch_size]
            input_ids, labels, mask = _collate(ids, starts, rows, pad)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels,
                         pixel_values=pixels[image_index[rows]]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                curve.append({"step": step, "epoch": epoch, "loss": round(running, 5), "lr": lr_at(step - 1),
                              "seconds": round(time.perf_counter() - t0, 2)})
                bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    with open(out / "training_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curve[0]))
        w.writeheader()
        w.writerows(curve)
    meta = provenance(seed=cfg.seed, train=asdict(cfg), arch=arch.to_dict(), benchmark=bench.cfg.to_dict(),
                      train_samples=n, steps=total, train_seconds=round(time.perf_counter() - t0, 1),
                      parameters=sum(p.numel() for p in model.parameters()))
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
