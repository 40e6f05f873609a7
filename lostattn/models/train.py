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
from tqdm import tqdm

from lostattn.tasks.synthetic import AUX_QUESTION_FAMILIES, QUESTION_FAMILIES, SyntheticBenchmark, SyntheticConfig
from lostattn.models.embedded import EmbeddedArch, build_embedded
from lostattn.models.prompts import chat_prompt
from lostattn.provenance import provenance


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    # One thread (about 10 steps/s here): the model is small, one run leaves the other core free, and the thread
    # count is part of what makes a run bit-reproducible.
    threads: int = 1
    log_every: int = 50
    # Stage 1 (as LLaVA starts from a pretrained CLIP): the vision tower learns to name each cell's content
    # (colour, shape, size, colour-shape pair, character) from its patch token, with linear heads dropped after.
    vision_steps: int = 400
    vision_lr: float = 2e-3
    # Stage 2 keeps the vision tower frozen, as LLaVA keeps its CLIP encoder frozen; its features are then computed
    # once per image instead of once per question (the same numbers, a sixth of the work saved).
    freeze_vision: bool = True
    # The question families trained on: the scored ones plus training-only ones
    # (lostattn.tasks.synthetic.AUX_QUESTION_FAMILIES).
    families: tuple[str, ...] = QUESTION_FAMILIES
    aux_families: tuple[str, ...] = ("letter", "locate")
    # Batches are drawn from length-sorted pools of `bucket` batches, so that a long question (multiple choice) or
    # answer (describe) does not pad a whole batch; 1 turns this off.
    bucket: int = 64


def cell_labels(bench: SyntheticBenchmark, split: str) -> torch.Tensor:
    """(N, 5, cells) targets per patch token: colour, shape, size, colour-shape pair, character (0 = none)."""
    from lostattn.tasks.glyphs import CHARACTERS
    from lostattn.tasks.synthetic import COLOURS, SHAPES

    g = bench.cfg.grid
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    scenes = bench.scenes[split]
    lab = torch.zeros(len(scenes), 5, g * g, dtype=torch.long)
    for n, sc in enumerate(scenes):
        for o in sc.objects:
            cell = o.row * g + o.col
            lab[n, 0, cell] = 1 + list(COLOURS).index(o.colour)
            lab[n, 1, cell] = 1 + SHAPES.index(o.shape)
            lab[n, 2, cell] = 1 + (o.size == "large")
            lab[n, 3, cell] = 1 + combos.index((o.colour, o.shape))
        lab[n, 4, sc.char_cell[0] * g + sc.char_cell[1]] = 1 + CHARACTERS.index(sc.char)
    return lab


def pretrain_vision(model, pixels: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, progress: bool) -> list:
    """Stage 1: per-patch classification on the vision tower's feature-layer output."""
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    skip = 1 if model.config.vision_feature_select_strategy == "default" else 0
    n_classes = [int(labels[:, k].max()) + 1 for k in range(labels.shape[1])]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    heads = torch.nn.ModuleList(torch.nn.Linear(tower.config.hidden_size, k) for k in n_classes)
    opt = torch.optim.AdamW(list(tower.parameters()) + list(heads.parameters()), lr=cfg.vision_lr)
    curve = []
    t0 = time.perf_counter()
    tower.train()
    for step in tqdm(range(cfg.vision_steps), desc="stage 1: vision tower", disable=not progress):
        rows = torch.randint(len(pixels), (64,), generator=gen)
        h = tower(pixels[rows], output_hidden_states=True).hidden_states[layer][:, skip:]
        loss = sum(torch.nn.functional.cross_entropy(hd(h).flatten(0, 1), labels[rows, k].flatten())
                   for k, hd in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            curve.append({"stage": "vision", "step": step + 1, "loss": round(loss.item(), 5), "lr": cfg.vision_lr,
                          "seconds": round(time.perf_counter() - t0, 2)})
    return curve


def encode_split(bench: SyntheticBenchmark, processor, split: str, chunk: int = 1024,
                 families: tuple[str, ...] = QUESTION_FAMILIES + AUX_QUESTION_FAMILIES):
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


def batch_order(lengths: list[int], batch_size: int, bucket: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch's batches: a random permutation cut into pools of `bucket` batches, each pool sorted by length and
    cut into batches, the batches shuffled. Every sample appears exactly once."""
    n = len(lengths)
    order = torch.randperm(n, generator=gen).tolist()
    if bucket <= 1:
        return [order[a : a + batch_size] for a in range(0, n, batch_size)]
    batches = []
    pool = batch_size * bucket
    for a in range(0, n, pool):
        part = sorted(order[a : a + pool], key=lambda i: lengths[i])
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


@torch.no_grad()
def vision_features(model, pixels: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The vision tower's selected feature-layer output per image, before the projector (what LLaVA's forward
    computes from `pixel_values`)."""
    m = model.model
    layer, strategy = model.config.vision_feature_layer, model.config.vision_feature_select_strategy
    out = []
    for a in range(0, len(pixels), chunk):
        h = m.vision_tower(pixels[a : a + chunk], output_hidden_states=True).hidden_states[layer]
        out.append(h[:, 1:] if strategy == "default" else h)
    return torch.cat(out)


def embed_with_image(model, input_ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the projected image features scattered into the image placeholders, as
    `LlavaModel.forward` does from pixel values."""
    emb = model.get_input_embeddings()(input_ids)
    img = model.model.multi_modal_projector(feats).to(emb.dtype)
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1).expand_as(emb)
    return emb.masked_scatter(mask, img)


def train_embedded(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), arch: EmbeddedArch = EmbeddedArch(),
                   bench_cfg: SyntheticConfig | None = None, progress: bool = True) -> Path:
    """Train the embedded model and save it to `out_dir`; returns the folder."""
    if cfg.epochs < 1:  # zero epochs would save an untrained model, by default over the shipped one
        raise ValueError(f"epochs must be at least 1 (got {cfg.epochs}): zero epochs would save an untrained model "
                         f"to {out_dir}")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(Path(out_dir), cfg, arch, bench_cfg, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only (no decay on norms and biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))


def _lr_schedule(cfg: TrainConfig, total: int):
    """The learning rate at each step: linear warm-up, then a cosine decay to 0 over the remaining steps."""
    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    return lr_at


def _answer_loss(model, batch, pixels, feats, image_index) -> torch.Tensor:
    """The mean over questions of each answer's mean token cross-entropy (every question weighs the same, whatever
    its answer's length); images enter as pixels, or as precomputed features when the vision tower is frozen."""
    input_ids, labels, mask, rows = batch
    if feats is None:
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels[image_index[rows]]).logits[:, :-1]
    else:
        logits = model(inputs_embeds=embed_with_image(model, input_ids, feats[image_index[rows]]),
                       attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten(),
                                            reduction="none").view(target.shape)
    return (tok.sum(1) / (target != -100).sum(1)).mean()


def _instruction_tune(model, cfg: TrainConfig, ids, starts, pixels, feats, image_index, pad, curve: list,
                      t0: float, progress: bool) -> int:
    """Stage 2: every epoch over the train split in length buckets; appends the loss curve; returns the steps."""
    total = math.ceil(len(ids) / cfg.batch_size) * cfg.epochs
    opt, lr_at = _optimizer(model, cfg), _lr_schedule(cfg, total)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    if feats is not None:
        model.model.vision_tower.eval()
    lengths = [len(x) for x in ids]
    step, running = 0, None
    bar = tqdm(total=total, desc="stage 2: instruction tuning", disable=not progress)
    for _epoch in range(cfg.epochs):
        for rows in batch_order(lengths, cfg.batch_size, cfg.bucket, gen):
            input_ids, labels, mask = _collate(ids, starts, rows, pad)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = _answer_loss(model, (input_ids, labels, mask, rows), pixels, feats, image_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                curve.append({"stage": "instruct", "step": step, "loss": round(running, 5), "lr": lr_at(step - 1),
                              "seconds": round(time.perf_counter() - t0, 2)})
                bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    model.eval()
    return total


def _save(out: Path, model, processor, curve: list, meta: dict) -> None:
    """The model and processor, the training curve (CSV) and the training metadata (JSON)."""
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    with open(out / "training_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curve[0]))
        w.writeheader()
        w.writerows(curve)
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _train(out: Path, cfg: TrainConfig, arch: EmbeddedArch, bench_cfg: SyntheticConfig | None,
           progress: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    bench = SyntheticBenchmark(bench_cfg)
    started = provenance(seed=cfg.seed)  # the code state the model is trained from
    model, processor = build_embedded(bench, arch, seed=cfg.seed)
    ids, starts, pixels, image_index = encode_split(bench, processor, "train",
                                                    families=tuple(cfg.families) + tuple(cfg.aux_families))
    t0 = time.perf_counter()
    curve = pretrain_vision(model, pixels, cell_labels(bench, "train"), cfg, progress)
    feats = None
    if cfg.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
        model.model.vision_tower.eval()
        feats = vision_features(model, pixels)
    total = _instruction_tune(model, cfg, ids, starts, pixels, feats, image_index, processor.tokenizer.pad_token_id,
                              curve, t0, progress)
    meta = dict(started, train=asdict(cfg), arch=arch.to_dict(), benchmark=bench.cfg.to_dict(),
                train_samples=len(ids), steps=total, train_seconds=round(time.perf_counter() - t0, 1),
                parameters=sum(p.numel() for p in model.parameters()))
    _save(out, model, processor, curve, meta)
    return out
