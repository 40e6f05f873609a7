"""When can a small decoder trained from scratch learn to look an option up? A text-only probe.

    python experiments/lookup_from_scratch.py                      # all four conditions, 3000 steps each (~17 min)
    python experiments/lookup_from_scratch.py --init-std 0.02      # the same at the transformers default init
    python experiments/lookup_from_scratch.py --conditions key-first --steps 500

A decoder of the embedded model's size (lostattn.models.embedded.EmbeddedArch: a Llama, 6 layers, width 128),
trained from scratch on one task: four options, then a question naming one of them, answered with its letter.
Only the order of the prompt changes between conditions:

- key-first:   "red circle = A"    the content, then its letter (the order in which induction heads copy);
- letter-first: "A . red circle"   VMCBench's and the synthetic multiple-choice family's order;
- letter-first, question-first: the same options after the question, as in the multiple-choice prompt;
- copy (the control): eight distinct option words, then the first few again; answer with the word that came next
  (an induction head's task, with the query at the answer position itself).

Options are colour-shape pairs or digits, as in the benchmark. Accuracy is measured on 1,024 fresh questions after
training (chance 25%, 12.5% for copy). The decoder's initial weight scale (`--init-std`, by default the embedded
model's) decides whether any lookup is learned in this budget. The book's Choices page reports the numbers; the
result file records seeds and versions.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lostattn.tasks.synthetic import COLOURS, SHAPES  # noqa: E402
from lostattn.models.embedded import EmbeddedArch  # noqa: E402
from lostattn.provenance import provenance  # noqa: E402

CONDITIONS = ("copy", "key-first", "letter-first", "letter-first-question-first")
LETTERS = "ABCD"
CONTENTS = [f"{c} {s}" for c in COLOURS for s in SHAPES] + [str(v) for v in range(1, 7)]
WORDS = ["<pad>", "Options", ":", "Question", "Which", "option", "is", "?", "Answer", ".", "="] + list(LETTERS)
WORDS += sorted({w for c in CONTENTS for w in c.split()})
VOCAB = {w: i for i, w in enumerate(WORDS)}


def question(condition: str, rng: random.Random) -> tuple[list[int], int]:
    """Token ids of one question and the id of its answer."""
    if condition == "copy":
        words = rng.sample(sorted({w for c in CONTENTS for w in c.split()}), 8)
        j = rng.randrange(1, 8)
        return [VOCAB[w] for w in words + words[:j]], VOCAB[words[j]]
    pool = CONTENTS[:12] if rng.random() < 0.5 else CONTENTS[12:]
    opts = rng.sample(pool, 4)
    k = rng.randrange(4)
    if condition == "key-first":
        body = " ".join(f"{o} = {letter}" for letter, o in zip(LETTERS, opts))
    else:
        body = " ".join(f"{letter} . {o}" for letter, o in zip(LETTERS, opts))
    ask = f"Question : Which option is {opts[k]} ?"
    text = f"{ask} Options : {body} Answer :" if condition.endswith("question-first") else \
        f"Options : {body} {ask} Answer :"
    return [VOCAB[w] for w in text.split()], VOCAB[LETTERS[k]]


def batch(condition: str, rng: random.Random, size: int):
    qs = [question(condition, rng) for _ in range(size)]
    length = max(len(q) for q, _ in qs)
    ids = torch.zeros(size, length, dtype=torch.long)
    mask = torch.zeros(size, length, dtype=torch.long)
    for i, (q, _) in enumerate(qs):  # left padding: the answer position is the last one
        ids[i, length - len(q):] = torch.tensor(q)
        mask[i, length - len(q):] = 1
    return ids, mask, torch.tensor([a for _, a in qs])


def logits_last(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, -1]


def run(condition: str, steps: int, lr: float, seed: int, init_std: float | None = None) -> dict:
    arch = EmbeddedArch()
    init_std = arch.text_init_std if init_std is None else init_std
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=arch.text_hidden, intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads, num_key_value_heads=arch.text_kv_heads,
        max_position_embeddings=arch.max_positions, tie_word_embeddings=True, pad_token_id=0,
        initializer_range=init_std))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(seed)
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100)
        ids, mask, y = batch(condition, rng, 32)
        loss = torch.nn.functional.cross_entropy(logits_last(model, ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 250 == 0:
            curve.append({"step": step + 1, "loss": round(loss.item(), 4)})
            print(f"{condition:>28}  step {step + 1:5d}  loss {loss.item():.3f}", flush=True)
    model.eval()
    test_rng = random.Random(seed + 10_000)
    with torch.no_grad():
        correct = sum((logits_last(model, *b[:2]).argmax(-1) == b[2]).sum().item()
                      for b in (batch(condition, test_rng, 256) for _ in range(4)))
    return {"condition": condition, "steps": steps, "lr": lr, "seed": seed, "init_std": init_std, "accuracy": 100 * correct / 1024,
            "seconds": round(time.perf_counter() - t0, 1), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-std", type=float, default=None,
                    help="initial weight scale of the decoder (default: the embedded model's, EmbeddedArch.text_init_std)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/lookup_from_scratch.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(c, args.steps, args.lr, args.seed, args.init_std) for c in args.conditions]
    for r in rows:
        chance = 12.5 if r["condition"] == "copy" else 25
        print(f"{r['condition']:>28}: {r['accuracy']:.1f}% after {r['steps']} steps "
              f"({r['seconds']} s; chance {chance}%)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": provenance(seed=args.seed), "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
