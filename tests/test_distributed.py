"""Data parallel under a launcher: `torchrun --standalone --nproc_per_node 2 -m lostattn eval` on the CPU (gloo)
splits the samples over both ranks, writes each sample once, gives the replies of one process, and resumes per
rank after a kill."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd

from lostattn.harness import runner



def _torchrun(args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lostattn",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _single(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "lostattn", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _records(path):
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), pd.DataFrame([json.loads(x) for x in lines[1:]])


EVAL = ["eval", "--limit", "3", "--sap-mode", "gaussian_noise", "--max-new-tokens", "4", "--batch-size", "4"]


def test_two_ranks_write_each_sample_once_with_the_replies_of_one_process(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    r = _single([*EVAL, "--out", str(one)], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _torchrun([*EVAL, "--out", str(two)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merged from 2 ranks" in r.stdout
    head1, a = _records(one)
    head2, b = _records(two)
    assert head1["run"] == head2["run"]
    assert len(b) == 18 and b["id"].is_unique and list(b["id"]) == list(a["id"])  # every sample once, in order
    assert sorted(b["process_rank"].unique()) == [0, 1] and (a["process_rank"] == 0).all()
    assert b["reply"].tolist() == a["reply"].tolist()
    assert not list(tmp_path.glob("two.rank*"))  # the part files were merged and removed


def test_a_killed_distributed_run_resumes_per_rank(tmp_path):
    """Rank 1's part file holds two finished records (one marked, to see it is kept rather than redone) and a line
    cut short, as a killed run leaves it; the rerun redoes only what is missing."""
    ref = tmp_path / "ref.jsonl"
    assert _torchrun([*EVAL, "--out", str(ref)], tmp_path).returncode == 0
    head, recs = _records(ref)
    rank1 = recs[recs["process_rank"] == 1]
    out = tmp_path / "run.jsonl"
    part = runner.part_path(out, 1)
    kept = [dict(rank1.iloc[0]), dict(rank1.iloc[1])]
    kept[0]["reply"] = "KEPT FROM THE KILLED RUN"
    part.write_text(json.dumps(head) + "\n" + "".join(json.dumps(r, default=int) + "\n" for r in kept)
                    + '{"id": "cut sh')
    r = _torchrun([*EVAL, "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _, got = _records(out)
    assert len(got) == 18 and got["id"].is_unique
    assert got.set_index("id").loc[kept[0]["id"], "reply"] == "KEPT FROM THE KILLED RUN"
    other = got[got["id"] != kept[0]["id"]].set_index("id")["reply"]
    assert other.to_dict() == recs[recs["id"] != kept[0]["id"]].set_index("id")["reply"].to_dict()


def test_a_single_process_rerun_takes_over_the_part_files_of_a_killed_distributed_run(tmp_path):
    ref = tmp_path / "ref.jsonl"
    assert _single([*EVAL, "--out", str(ref)], tmp_path).returncode == 0
    head, recs = _records(ref)
    out = tmp_path / "run.jsonl"
    runner.part_path(out, 0).write_text(json.dumps(head) + "\n" + json.dumps(
        {**dict(recs.iloc[0]), "reply": "FROM RANK 0"}, default=int) + "\n")
    assert _single([*EVAL, "--out", str(out)], tmp_path).returncode == 0
    _, got = _records(out)
    assert len(got) == 18 and got["id"].is_unique
    assert got.set_index("id").loc[recs.iloc[0]["id"], "reply"] == "FROM RANK 0"
    assert not list(tmp_path.glob("run.rank*"))


def test_analyze_over_two_ranks_matches_one_process(tmp_path):
    args = ["analyze", "--limit", "1", "--batch-size", "2"]
    r = _single([*args, "--out", str(tmp_path / "one")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = pd.read_csv(tmp_path / "one" / "residual_metrics.csv")
    b = pd.read_csv(tmp_path / "two" / "residual_metrics.csv")
    keys = ["sample", "layer", "condition", "module", "scope"]
    assert len(a) == len(b) and not b.duplicated(keys).any()
    assert sorted(b["process_rank"].unique()) == [0, 1] and (a["process_rank"] == 0).all()
    # the projector rank r of P_C, P_R survives beside the process rank: at least 1, the same in both runs
    assert (a["projector_rank"] >= 1).all() and (b["projector_rank"] >= 1).all()
    m = a.merge(b, on=keys, suffixes=("_1", "_2"))
    assert len(m) == len(a)
    for col in ("rid", "dS", "dD", "mixig", "projector_rank"):
        assert (m[f"{col}_1"] - m[f"{col}_2"]).abs().max() < 1e-5, col
    _, recs = _records(tmp_path / "two" / "records.jsonl")
    assert recs["id"].is_unique and len(recs) == 6
