"""Every supported family, from a local checkpoint folder in both file layouts, with no torchvision: load, generate,
and the visual-token span checked against where the model actually places the image features."""
import importlib.util

import pytest
import torch

from lostattn.models.loader import load_model
from lostattn.prompts import prepare_inputs
from lostattn.tasks.synthetic import SyntheticBenchmark

from conftest import FAMILIES


@pytest.fixture(scope="module")
def few():
    return SyntheticBenchmark().samples("test", limit_per_family=1)[:3]


def test_torchvision_is_absent():
    """The project's environment has no torchvision (there is no CPU build); the families below load without it."""
    assert importlib.util.find_spec("torchvision") is None


@pytest.mark.parametrize("layout", ["hub", "single"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_generates(family, layout, checkpoints, few):
    lm = load_model(checkpoints(family, layout))
    assert lm.adapter.family == family
    assert lm.model.config.text_config._attn_implementation == "sdpa"
    assert not hasattr(lm.processor, "video_processor")
    inputs = prepare_inputs(lm, few)
    with torch.no_grad():
        out = lm.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == len(few) and out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_span_is_where_the_model_places_image_features(family, family_lm, few):
    """Record the decoder's input embeddings: exactly the positions of `visual_mask` differ from the token embedding
    table (they hold image features: patches, and the image-newline tokens of the any-resolution families); every
    other position, Qwen's <|vision_start|>/<|vision_end|> included, is a plain token embedding."""
    lm = family_lm(family)
    inputs = prepare_inputs(lm, few)
    seen = {}
    def grab(module, args, kwargs):
        seen.setdefault("emb", kwargs["inputs_embeds"])

    h = lm.adapter.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        h.remove()
    table = lm.model.get_input_embeddings()(inputs["input_ids"])
    replaced = (seen["emb"] - table).abs().amax(-1) > 0
    vis = lm.adapter.visual_mask(inputs["input_ids"])
    assert torch.equal(replaced, vis)
    assert vis.sum(1).min() > 0
