"""The verdict boxes follow the numbers: each claim holds or fails on constructed tables where the answer is known."""
import pandas as pd

from lostattn.paper.verdicts import (FAILS, HOLDS, UNTESTED, accuracy_claims, layer_claims, scope_claims, sweep_claims,
                               table1_claims, table2_claims, verdict_markdown)


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


def test_layer_scope_sweep_and_accuracy_claims():
    curves = pd.DataFrame({"condition": "vanilla", "scope": "all", "module": ["attention"] * 3 + ["ffn"] * 3,
                           "layer": [0, 1, 2] * 2, "rid": [0.1, 0.1, 0.5, 0.2, 0.2, 0.2],
                           "mixig": [0.3, 0.0, 0.0, 0.1, 0.1, 0.1]})
    c = layer_claims(curves)
    assert _outcomes(c) == [HOLDS, FAILS] and c[0].evidence == "in 2 of 3 layers"
    s = scope_claims({"visual": _t1(), "text": _t1(attn_rid=0.5)})
    assert _outcomes(s) == [HOLDS, FAILS]
    lam = pd.DataFrame({0.0: [80.0, 50.0], 1.0: [79.0, 40.0]}, index=["a", "b"])
    win = pd.DataFrame({"none": [80.0, 50.0], "1-2": [80.0, 49.0]}, index=["a", "b"])
    assert _outcomes(sweep_claims(lam, win)) == [FAILS, HOLDS]
    acc = pd.DataFrame({"family": ["x", "y"], "accuracy": [90.0, 30.0], "chance": [50.0, 25.0]})
    assert _outcomes(accuracy_claims(acc)) == [HOLDS]
    acc.loc[1, "accuracy"] = 20.0
    assert _outcomes(accuracy_claims(acc)) == [FAILS] and "-5.0" in accuracy_claims(acc)[0].evidence


def test_verdict_box_is_a_myst_admonition_with_the_verdict_class():
    md = verdict_markdown(table1_claims(_t1(), 0.05))
    lines = md.splitlines()
    assert lines[0].startswith(":::{admonition}") and lines[1] == ":class: verdict" and lines[-1] == ":::"
    assert "tested claims hold on this run" in md


def test_the_blind_control_quotes_one_number_when_every_cell_is_alike():
    one = pd.DataFrame({"vanilla": [83.0], "blind": [30.0], "gaussian_noise": [82.0]}, index=["embedded · Synthetic"])
    control = table2_claims(one, ["gaussian_noise"])[-1]
    assert control.evidence == "blind minus vanilla -53.0 points", control.evidence
    two = pd.DataFrame({"vanilla": [83.0, 90.0], "blind": [30.0, 40.0], "gaussian_noise": [82.0, 90.0]})
    assert table2_claims(two, ["gaussian_noise"])[-1].evidence == "blind minus vanilla from -53.0 to -50.0 points"
