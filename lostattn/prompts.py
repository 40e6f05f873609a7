"""Turning a question into the model's prompt, through the processor's own chat template."""
from __future__ import annotations


def chat_prompt(processor, question: str, with_image: bool = True) -> str:
    """The generation prompt for one question: the image placeholder (when there is an image), then the text."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prepare_inputs(lm, samples, blind: bool = False):
    """Processor inputs for a batch of samples (left-padded), on the model's device; images dropped when `blind`."""
    proc = lm.processor
    images = None if blind else [s.load_image() for s in samples]
    has_img = images is not None and all(im is not None for im in images)
    kw = dict(text=[chat_prompt(proc, s.question, with_image=has_img) for s in samples], padding=True,
              return_tensors="pt")
    if has_img:
        kw["images"] = images
    inputs = proc(**kw).to(lm.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.model.dtype)
    return inputs
