"""Replies never depend on batch companions: mixed batches (with and without an image), SAP per sample."""
import dataclasses

import pytest

from lostattn.inference.generation import generate_replies
from lostattn.inference.protocols import get_protocol
from lostattn.sap.replace import SAPConfig
from lostattn.tasks.synthetic import SyntheticBenchmark


@pytest.mark.parametrize("family", ["embedded", "qwen2_5_vl"])
def test_mixed_batch_keeps_images_and_sap(family, lm, family_lm):
    model = lm if family == "embedded" else family_lm(family)
    base = SyntheticBenchmark().samples("test", limit_per_family=2)
    # two samples whose replies SAP changes on the embedded model (second ocr and mc questions), two text-only ones
    samples = [base[10], dataclasses.replace(base[1], id="blind-1", image=None), base[11],
               dataclasses.replace(base[3], id="blind-3", image=None)]
    p = get_protocol(model, "controlled", max_new_tokens=4)
    cfg = SAPConfig(mode="gaussian_noise")
    mixed = generate_replies(model, samples, p, cfg)
    alone = [generate_replies(model, [s], p, cfg)[0] for s in samples]
    assert mixed == alone
    # the image samples did get SAP (in the mixed batch as alone), the text-only ones ran vanilla
    vanilla = generate_replies(model, samples, p)
    assert [mixed[i] for i in (1, 3)] == [vanilla[i] for i in (1, 3)]
    if family == "embedded":  # SAP was applied to the image samples inside the mixed batch
        assert [mixed[i] for i in (0, 2)] != [vanilla[i] for i in (0, 2)]
