"""Resumable, sharded runs over a benchmark's samples: the one mechanism behind `lostattn eval` and
`lostattn analyze`.

A run is a results file (`lostattn.harness.records`: a header naming the run, one record per finished sample) and a
function that turns a batch of samples into their records. `run` skips the samples the file (or, after a
distributed run, its rank part files) already holds, appends the others batch by batch, and returns every record
of the run. Under a launcher (`lostattn.harness.distributed`: torchrun, accelerate launch) each rank takes its shard and
writes its own part file `<stem>.rank<R><suffix>` under its own lock, so a killed run resumes per rank; rank 0 then
merges the parts into the results file, each sample id once, in the order of the samples, and removes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from lostattn.harness import distributed

from lostattn.harness import records


def part_path(path: Path, rank: int) -> Path:
    """The file rank `rank` writes under a launcher; merged into `path` by rank 0."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def parts(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))


def refuse_repeated_ids(ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen and i not in dup:
                dup.append(i)
            seen.add(i)
        raise ValueError(f"sample ids repeat ({dup[:5]}{' ...' if len(dup) > 5 else ''}): each record is kept per id, "
                         f"so a repeated id would be computed once and counted twice")


def run(path: str | Path, key: dict, samples: Sequence, work: Callable[[list], list[dict]], provenance: dict,
        batch_size: int, world: distributed.World | None = None, progress: bool = True, desc: str = "run",
        check: Callable[[Path, dict[str, dict]], None] | None = None) -> dict[str, dict]:
    """Records of every sample (by id, in the order of `samples`) of the run `key` in `path`.

    `work(batch)` returns one record (a dict with the sample's "id") per sample of the batch; the runner adds the
    "process_rank" that produced it. `check(path, done)` may refuse finished records (e.g. made from other inputs)."""
    path = Path(path)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    ids = [s.id for s in samples]
    refuse_repeated_ids(ids)
    world = world or distributed.current()
    mine = world.shard(list(samples))
    own = part_path(path, world.rank) if world.active else path
    with records.locked(own):
        done = records.read(own, key)  # repairs a cut-short tail of this rank's own file
        # what the results file and the other part files already hold is not redone (a killed run, any launcher)
        for other in [path] + [p for p in parts(path) if p != own]:
            if other != own:
                done = {**records.read(other, key, repair=False), **done}
        if check is not None:
            check(path, done)
        todo = [s for s in mine if s.id not in done]
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress,
                   desc=desc + (f" rank {world.rank}" if world.active else ""))
        with records.Writer(own, key, provenance) as out:
            for a in range(0, len(todo), batch_size):
                batch = todo[a:a + batch_size]
                recs = work(batch)
                out.append([{**r, "process_rank": world.rank} for r in recs])
                bar.update(len(batch))
        bar.close()
    world.barrier()
    if world.is_main and parts(path):
        merge_parts(path, key, ids, provenance)
    world.barrier()
    final = records.read(path, key, repair=False)
    return {i: final[i] for i in ids if i in final}


def merge_parts(path: Path, key: dict, order: list[str], provenance: dict) -> int:
    """Append the records of the rank part files to `path` (each sample id once, in `order`, then any other), then
    remove the parts. Returns the number of records added."""
    with records.locked(path):
        have = records.read(path, key)
        new: dict[str, dict] = {}
        found = parts(path)
        for p in found:
            with records.locked(p):
                for sid, rec in records.read(p, key).items():
                    # a record computed again (its inputs changed) replaces the file's: read back, the later wins
                    if sid not in have or rec.get("inputs") != have[sid].get("inputs"):
                        new.setdefault(sid, rec)
        rank_of = {i: n for n, i in enumerate(order)}
        recs = sorted(new.values(), key=lambda r: (rank_of.get(r["id"], len(order)), str(r["id"])))
        with records.Writer(path, key, provenance) as out:
            out.append(recs)
        for p in found:
            p.unlink()
            records.lock_path(p).unlink(missing_ok=True)
    return len(recs)
