"""Generating replies for a batch of samples under a protocol, vanilla or with SAP.

A reply never depends on the samples it is batched with: samples with and without an image are run as separate
sub-batches (the image-less ones cannot take SAP, which needs visual tokens, and are run vanilla, as the record
says), the SAP draws are seeded per sample id, and sampling (when the protocol samples) draws from one random
stream per sample.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from lostattn.models.prompts import load_images, prepare_inputs, refuse_overlong
from lostattn.inference.protocols import Protocol, get_protocol


def _generate(lm, samples, protocol: Protocol, sap_cfg, blind: bool, images) -> list[str]:
    from lostattn.sap.replace import attention_arithmetic, sap

    inputs = prepare_inputs(lm, samples, blind, protocol, images=images)
    refuse_overlong(lm, samples, inputs)
    keys = [s.id for s in samples]
    ctx = sap(lm, sap_cfg, inputs, keys, images) if (sap_cfg is not None and images is not None) else nullcontext()
    # the protocol's arithmetic for every layer, vanilla runs and image-less samples included
    with torch.no_grad(), attention_arithmetic(lm, protocol.attention), ctx:
        out = lm.model.generate(**inputs, **protocol.generate_kwargs(keys))
    new = out[:, inputs["input_ids"].shape[1]:]
    return lm.processor.batch_decode(new, skip_special_tokens=True)


def generate_replies(lm, samples, protocol: Protocol | None = None, sap_cfg=None, blind: bool = False) -> list[str]:
    """The model's reply to each sample, in order (the protocol's decoding; controlled when none is given)."""
    protocol = protocol or get_protocol(lm, "controlled")
    with_img = [i for i, s in enumerate(samples) if not blind and s.image is not None]
    without = [i for i in range(len(samples)) if i not in set(with_img)]
    replies: list[str | None] = [None] * len(samples)
    for idx, has_image in ((with_img, True), (without, False)):
        if not idx:
            continue
        group = [samples[i] for i in idx]
        images = load_images(group, protocol=protocol) if has_image else None
        for i, r in zip(idx, _generate(lm, group, protocol, sap_cfg, blind or not has_image, images)):
            replies[i] = r
    return replies
