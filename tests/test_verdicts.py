"""The verdict boxes follow the numbers: each claim holds, fails or stays inconclusive on constructed data where
the answer is known (a clear rise, a clear drop, a tie, an undersized sample), and the page writes verdicts.json in
the scorecard's format."""
import json

import numpy as np
import pytest
import pandas as pd

from lostattn.paper.tables import ALL, deltas, per_sample_means, sweep_deltas
from lostattn.paper.verdicts import (FAILS, HOLDS, INCONCLUSIVE, UNTESTED, accuracy_verdicts, layer_verdicts,
                                     sap_verdicts, scope_verdicts, sweep_verdicts, table1_claims, table1_verdicts,
                                     table2_claims, verdict, verdict_markdown)


def _t1(attn_rid=0.05, ffn_rid=0.2, attn_mix=0.5, ffn_mix=0.02, nd=(0.6, -0.8), nq=(0.4, -0.5)):
    return pd.DataFrame({"module": ["Noise Δ", "Noise QKV", "Attention", "FFN"],
                         "RID": [nd[0], nq[0], attn_rid, ffn_rid], "MixIG": [nd[1], nq[1], attn_mix, ffn_mix]})


def _outcomes(claims):
    return [c.outcome for c in claims]


def test_table1_claims_hold_on_the_papers_own_numbers_and_fail_when_the_ordering_flips():
    paper = _t1(0.06, 0.21, 0.61, 0.02, (0.61, -0.80), (0.44, -0.50))
    assert _outcomes(table1_claims(paper, 0.062, paper, 0.062)) == [HOLDS] * 5
    flipped = _t1(attn_rid=0.3, ffn_rid=0.2, attn_mix=-0.1, nd=(0.1, 0.2))
    got = _outcomes(table1_claims(flipped, 0.062))
    assert got == [FAILS, FAILS, FAILS, FAILS, HOLDS]
    # a row missing from this run leaves its claim untested rather than guessed
    assert table1_claims(flipped[flipped.module != "Noise QKV"], 0.062)[-1].outcome == UNTESTED
    c = table1_claims(paper, 0.062, paper, 0.062)[0]
    assert "0.060" in c.evidence and "paper 0.06" in c.evidence and "0.062" in c.evidence


def test_table2_claims_from_deltas():
    wide = pd.DataFrame({"vanilla": [80.0, 60.0], "gaussian_noise": [81.0, 59.0], "key": [79.5, 60.5],
                         "blind": [50.0, 30.0]}, index=["exist", "mc"])
    c = table2_claims(wide, ["gaussian_noise", "key"], {"POPE": 1.45})
    assert _outcomes(c) == [HOLDS, HOLDS, HOLDS]
    assert "+1.0" in c[0].evidence and "POPE +1.45" in c[0].evidence
    wide.loc["mc", "key"] = 40.0
    wide.loc["exist", ["gaussian_noise", "key"]] = [70.0, 75.0]
    wide.loc["mc", "gaussian_noise"] = 55.0
    c = table2_claims(wide, ["gaussian_noise", "key"])
    assert _outcomes(c)[:2] == [FAILS, FAILS] and "-20.0" in c[0].evidence and "(mc, key)" in c[0].evidence
    assert table2_claims(wide[["vanilla"]], ["gaussian_noise"])[0].outcome == UNTESTED


def test_verdict_box_is_a_myst_admonition_with_the_verdict_class():
    md = verdict_markdown(table1_claims(_t1(), 0.05))
    lines = md.splitlines()
    assert lines[0].startswith(":::{admonition}") and lines[1] == ":class: verdict" and lines[-1] == ":::"
    assert "tested claims hold on this run" in md


# ---- interval-based verdicts on constructed per-sample data ------------------------------------------------------
def _records(protocol, condition, correct, families=("exist", "mc")):
    n = len(correct)
    return pd.DataFrame({"protocol": protocol, "condition": condition, "seed": None, "id": [f"s{i}" for i in range(n)],
                         "family": [families[i % len(families)] for i in range(n)], "kind": "mc",
                         "correct": correct})


def _flip(base, k, to, rng):
    """`base` with `k` samples that have the other value set to `to` (paired changes)."""
    out = base.copy()
    idx = rng.choice(np.flatnonzero(base != to), size=k, replace=False)
    out[idx] = to
    return out


def test_sap_verdicts_rise_drop_tie_and_undersized():
    rng = np.random.default_rng(0)
    van = (rng.random(400) < 0.6).astype(int)
    recs = pd.concat([_records("official", "vanilla", van),
                      _records("official", "gaussian_noise", _flip(van, 2, 1, rng)),  # a tie: 2 of 400 change
                      _records("official", "key", _flip(van, 80, 1, rng)),  # a clear rise of 20 points
                      _records("official", "uniform", _flip(van, 80, 0, rng)),  # a clear drop of 20 points
                      _records("official", "blind", _flip(van, 120, 0, rng))])
    d = deltas(recs)
    claims = sap_verdicts(d, "official", ["gaussian_noise", "key", "uniform"], "official protocol, layers 1,2")
    by = {c.text.split(" with ")[1].split(" ")[0] if " with " in c.text else c.text: c for c in claims}
    assert by["gaussian_noise"].outcome == HOLDS and by["gaussian_noise"].n_needed is None
    assert by["key"].outcome == FAILS and by["uniform"].outcome == FAILS
    assert by["key"].estimate == pytest.approx(20.0) and by["key"].low > 3 and by["uniform"].high < -3
    rises = [c for c in claims if "sometimes scores higher" in c.text][0]
    assert rises.outcome == HOLDS
    blind = [c for c in claims if c.text.startswith("Control")][0]
    assert blind.outcome == HOLDS
    assert all(c.scope for c in claims) and "layers 1,2" in by["key"].scope
    # the same tie on 12 samples: the interval reaches past ±3 points, so it is inconclusive, with the n to decide
    small = pd.concat([_records("official", "vanilla", van[:12]),
                       _records("official", "gaussian_noise", van[:12])])
    c = sap_verdicts(deltas(small), "official", ["gaussian_noise"], "s")[0]
    assert c.outcome == INCONCLUSIVE and c.n_needed > 12 and "would decide it" in c.evidence


def test_deltas_are_paired_on_the_samples_with_the_whole_benchmark_row():
    rng = np.random.default_rng(1)
    van = (rng.random(100) < 0.5).astype(int)
    recs = pd.concat([_records("p", "vanilla", van), _records("p", "key", _flip(van, 10, 1, rng))])
    d = deltas(recs)
    whole = d[d["family"] == ALL].iloc[0]
    assert whole["delta"] == pytest.approx(10.0) and whole["n"] == 100 and whole["p_value"] < 0.01
    assert set(d["family"]) == {"exist", "mc", ALL}


def test_sweep_verdicts_use_page_20s_words():
    rng = np.random.default_rng(2)
    van = (rng.random(300) < 0.7).astype(int)
    lam = pd.concat([_records("c", "gaussian_noise", van).assign(lam=0.0),
                     _records("c", "gaussian_noise", _flip(van, 1, 0, rng)).assign(lam=0.5),
                     _records("c", "gaussian_noise", _flip(van, 90, 0, rng)).assign(lam=1.0)])
    win = pd.concat([_records("c", "vanilla", van).assign(window="none"),
                     _records("c", "gaussian_noise", _flip(van, 1, 1, rng)).assign(window="1-2")])
    c = sweep_verdicts(sweep_deltas(lam, "lam", 0.0), sweep_deltas(win, "window", "none"), "gaussian_noise", "c")
    assert [x.outcome for x in c] == [FAILS, HOLDS]
    assert c[0].text.startswith("Replacing learned attention over the image with gaussian_noise barely changes")


def _metrics(attn_rid, ffn_rid, attn_mix, ffn_mix, n=30, layers=3, sd=0.02, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n):
        for layer in range(layers):
            for module, rid, mix in (("attention", attn_rid, attn_mix), ("ffn", ffn_rid, ffn_mix)):
                rows.append({"sample": f"s{s}", "layer": layer, "condition": "vanilla", "module": module,
                             "scope": "all", "rid": rid + rng.normal(0, sd), "mixig": mix + rng.normal(0, sd),
                             "dS": 0.0, "dD": 0.0})
    return pd.DataFrame(rows)


def test_table1_layer_and_scope_verdicts_from_per_sample_values():
    m = _metrics(0.05, 0.3, 0.4, 0.01)
    eps = pd.Series(0.05, index=[f"s{i}" for i in range(30)])
    c = table1_verdicts(per_sample_means(m), eps)
    assert [x.outcome for x in c] == [HOLDS, HOLDS, HOLDS, HOLDS]
    # MixIG of 0.0004 with a tight interval: its sign is decided, and shown with the digits it needs
    tiny = table1_verdicts(per_sample_means(_metrics(0.05, 0.3, 0.0004, 0.0, sd=0.0001)), eps)[2]
    assert tiny.outcome == HOLDS and "0.000" not in tiny.evidence.split("[")[0][-6:] and "0.0004" in tiny.evidence
    # a sign that the sample cannot decide: inconclusive, with the n that would
    noisy = table1_verdicts(per_sample_means(_metrics(0.05, 0.3, 0.001, 0.0, n=6, sd=0.05)), eps)[2]
    assert noisy.outcome == INCONCLUSIVE and noisy.n_needed > 6
    assert [x.outcome for x in layer_verdicts(m)] == [HOLDS, HOLDS]
    assert [x.outcome for x in layer_verdicts(_metrics(0.3, 0.05, 0.0, 0.4))] == [FAILS, FAILS]
    s = scope_verdicts({"all": per_sample_means(m), "text": per_sample_means(_metrics(0.3, 0.05, 0.4, 0.0))})
    assert [x.outcome for x in s] == [HOLDS, FAILS]


def test_accuracy_verdicts_against_chance():
    recs = pd.DataFrame({"family": ["a"] * 100 + ["b"] * 100, "correct": [1] * 90 + [0] * 10 + [1] * 30 + [0] * 70})
    assert accuracy_verdicts(recs, {"a": 50.0, "b": 25.0})[0].outcome == INCONCLUSIVE
    assert accuracy_verdicts(recs, {"a": 50.0, "b": 10.0})[0].outcome == HOLDS
    assert accuracy_verdicts(recs, {"a": 50.0, "b": 60.0})[0].outcome == FAILS
    assert accuracy_verdicts(recs, None)[0].outcome == UNTESTED


def test_verdicts_json_has_the_scorecard_format(tmp_path):
    rng = np.random.default_rng(3)
    van = (rng.random(50) < 0.5).astype(int)
    d = deltas(pd.concat([_records("p", "vanilla", van), _records("p", "key", van)]))
    claims = sap_verdicts(d, "p", ["key"], "p protocol")
    out = tmp_path / "20_table2_sap"
    out.mkdir()
    md = verdict(claims, out)._repr_markdown_()
    rows = json.loads((out / "verdicts.json").read_text())
    assert rows and all(list(r) == ["page", "claim", "scope", "outcome", "estimate", "low", "high", "unit", "n",
                                    "n_needed"] for r in rows)
    assert rows[0]["page"] == "20_table2_sap" and rows[0]["outcome"] in (HOLDS, FAILS, INCONCLUSIVE)
    assert (rows[0]["n_needed"] is None) == (rows[0]["outcome"] != INCONCLUSIVE)
    assert "✅" not in md and "❌" not in md and "[INCONCLUSIVE]" in md


def test_scores_carry_wilson_intervals_and_the_random_modes_their_spread_across_seeds():
    from lostattn.paper.tables import first_seed, protocol_comparison, scores_of, seed_spread
    from lostattn.stats import accuracy_ci

    rng = np.random.default_rng(4)
    van = np.r_[np.ones(30), np.zeros(30)].astype(int)
    runs = [_records("official", "vanilla", van)]
    for s, k in ((42, 3), (43, 6), (44, 9)):
        runs.append(_records("official", "gaussian_noise", _flip(van, k, 1, rng)).assign(seed=s))
    runs.append(_records("controlled", "vanilla", van))
    runs.append(_records("controlled", "gaussian_noise", _flip(van, 30, 0, rng)).assign(seed=42))
    scores = scores_of(pd.concat(runs, ignore_index=True))
    row = scores[(scores["condition"] == "vanilla") & (scores["family"] == "exist")
                 & (scores["protocol"] == "official")].iloc[0]
    iv = accuracy_ci(van[::2])
    assert (row["accuracy"], row["ci_low"], row["ci_high"]) == pytest.approx((iv.estimate, iv.low, iv.high))
    assert len(first_seed(scores)) == len(scores) - 4  # seeds 43 and 44 of two families dropped
    spread = seed_spread(scores)
    whole = spread[(spread["protocol"] == "official") & (spread["family"] == ALL)].iloc[0]
    assert whole["seeds"] == 3
    assert whole["seed_mean"] == pytest.approx(100 * (van.sum() + 6) / 60)  # 3, 6, 9 more correct: mean 6
    assert whole["seed_sd"] == pytest.approx(100 * 3 / 60)
    both = protocol_comparison(scores, "official", "controlled")
    assert both.loc[ALL, "Δ official"] == pytest.approx(5.0) and both.loc[ALL, "Δ controlled"] == pytest.approx(-50.0)


def test_table1_intervals_bootstrap_over_samples():
    from lostattn.paper.tables import means_with_intervals, table1_intervals

    m = _metrics(0.05, 0.3, 0.4, 0.01, n=20)
    t1 = table1_intervals(m)
    att = t1.set_index("module").loc["Attention"]
    assert att["RID_ci_low"] < att["RID"] < att["RID_ci_high"] and att["samples"] == 20
    b = means_with_intervals(m, ["module", "layer"], ["rid"])
    assert len(b) == 6 and (b["rid_ci_low"] < b["rid"]).all() and (b["samples"] == 20).all()


def test_a_combined_claim_quotes_the_part_that_would_decide_it():
    from lostattn.paper.verdicts import every, judged, some
    from lostattn.stats import Interval

    def part(est, half, n=50):
        return judged("", Interval(est, est - half, est + half, n, "points"), above=0.0)

    leaning_up, leaning_down = part(2.0, 4.0), part(-1.0, 4.0)
    one = some("a cell rises", [("up", leaning_up), ("down", leaning_down)])
    assert one.outcome == INCONCLUSIVE and one.estimate == 2.0  # more samples would make "up" hold
    assert one.n_needed == leaning_up.n_needed
    assert some("a cell rises", [("down", leaning_down)]).n_needed == leaning_down.n_needed
    both = every("all rise", [("up", leaning_up), ("down", leaning_down)])
    assert both.outcome == INCONCLUSIVE and both.estimate == -1.0  # "down" would make it fail on its own
    held = every("all rise", [("far", part(10.0, 1.0)), ("near", part(1.5, 1.0))])
    assert held.outcome == HOLDS and held.estimate == 1.5 and held.n_needed is None


def test_the_blind_control_quotes_one_number_when_every_cell_is_alike():
    one = pd.DataFrame({"vanilla": [83.0], "blind": [30.0], "gaussian_noise": [82.0]}, index=["embedded · Synthetic"])
    control = table2_claims(one, ["gaussian_noise"])[-1]
    assert control.evidence == "blind minus vanilla -53.0 points", control.evidence
    two = pd.DataFrame({"vanilla": [83.0, 90.0], "blind": [30.0, 40.0], "gaussian_noise": [82.0, 90.0]})
    assert table2_claims(two, ["gaussian_noise"])[-1].evidence == "blind minus vanilla from -53.0 to -50.0 points"
