"""Every notebook on every family, as a user runs them: `lostattn reproduce` over a profile whose models are the
families' random-weight checkpoints (a local path each), on the synthetic benchmark, with small sample counts: the
paper's five families through every notebook, the newer five through notebooks 10 (Table 1) and 20 (Table 2).
Each notebook must execute without an error and show its verdict box and its figure."""
import pytest
import json

import yaml

from lostattn.pipeline import plan as planning, profiles, reproduce as rp

from conftest import FAMILIES, PAPER_FAMILIES

NOTEBOOKS = ("01_embedded_model", "10_table1_rid_mixig", "11_layer_curves", "12_token_scope", "20_table2_sap",
             "21_sap_sweeps")


def _outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            yield out


NEWER_NOTEBOOKS = ("10_table1_rid_mixig", "20_table2_sap")


@pytest.mark.parametrize("families, notebooks", [
    (PAPER_FAMILIES, NOTEBOOKS),
    (tuple(f for f in FAMILIES if f not in PAPER_FAMILIES), NEWER_NOTEBOOKS),
], ids=["paper_families", "newer_families"])
def test_every_notebook_runs_on_every_family(families, notebooks, tmp_path, checkpoints, monkeypatch, capsys):
    profile = {
        "common": {"device": "cpu", "dtype": "float32", "seed": 0, "check_reference": False, "batch_size": 4},
        "models": [{"name": f"tiny-{f}", "path": checkpoints(f, "single" if f in ("qwen2_vl", "internvl") else "hub")}
                   for f in families],
        "benchmarks": [{"name": "synthetic", "samples_per_family": 1}],
        "run": list(notebooks),
        "notebooks": {
            "01_embedded_model": {"max_new_tokens": 2},
            "20_table2_sap": {"max_new_tokens": 2, "protocol": "official", "compare_protocols": True, "sap_seeds": 1,
                              "modes": ["gaussian_noise", "key", "uniform", "vis_enc_attn", "complexity"]},
            "21_sap_sweeps": {"max_new_tokens": 2, "lams": [0.0, 1.0], "window": 2},
        },
    }
    cfg = tmp_path / "families.yaml"
    cfg.write_text(yaml.safe_dump(profile, sort_keys=False))
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")
    rc = rp.reproduce("families", config=str(cfg), build_book=False)
    log = capsys.readouterr()
    assert rc == 0, log.out[-4000:] + log.err[-4000:]
    cells = planning.plan(profiles.load_profile("families", cfg))
    assert len(cells) == len(families) * len(notebooks)
    for c in cells:
        outs = list(_outputs(c.out_nb))
        assert not [o for o in outs if o["output_type"] == "error"], (c.model, c.notebook)
        markdown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outs)
        assert ":class: verdict" in markdown, (c.model, c.notebook)
        assert any("image/png" in o.get("data", {}) for o in outs), (c.model, c.notebook)
        assert any("text/html" in o.get("data", {}) and "lostattn-table" in "".join(o["data"]["text/html"])
                   for o in outs), (c.model, c.notebook)
    scores = [c for c in cells if c.notebook == "20_table2_sap"]
    for c in scores:
        import pandas as pd

        t = pd.read_csv(c.out_dir / "table2_scores.csv")
        assert set(t["protocol"]) == {"official", "controlled"}
        assert {"vanilla", "blind", "gaussian_noise", "key", "uniform", "vis_enc_attn", "complexity"} <= \
            set(t["condition"])
