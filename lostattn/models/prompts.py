"""Turning a question into the model's prompt: through the processor's own chat template, with the image and the text
in the order the protocol gives (or a prompt typed out by the official script, for LLaVA-1.5)."""
from __future__ import annotations


def chat_prompt(processor, question: str, with_image: bool = True, protocol=None) -> str:
    """The generation prompt for one question. Without a protocol: the image placeholder first, then the text."""
    order = protocol.content_order if protocol is not None else ("image", "text")
    if protocol is not None and protocol.literal_prompt is not None:
        template = protocol.literal_prompt if with_image else protocol.literal_prompt.replace("<image>\n", "")
        return template.format(text=question)
    parts = {"image": {"type": "image"}, "text": {"type": "text", "text": question}}
    content = [parts[p] for p in order if with_image or p != "image"]
    messages = [{"role": "user", "content": content}]
    return _without_second_bos(processor, processor.apply_chat_template(messages, add_generation_prompt=True,
                                                                        tokenize=False))


def _without_second_bos(processor, text: str) -> str:
    """`text` without the BOS its template typed in when the tokenizer adds one itself on encoding (Gemma 3,
    Mistral 3): the prompt then starts with one BOS, as the model was trained, not two."""
    tok = getattr(processor, "tokenizer", processor)
    bos = getattr(tok, "bos_token", None)
    if not bos or not text.startswith(bos):
        return text
    adds_bos = tok("x")["input_ids"][:1] == [tok.bos_token_id]
    return text[len(bos):] if adds_bos else text


def load_images(samples, blind: bool = False, protocol=None) -> list | None:
    """Each sample's image as the protocol hands it to the processor, or None for a text-only batch."""
    if blind:
        return None
    images = [s.load_image() for s in samples]
    if any(im is None for im in images):
        if not all(im is None for im in images):
            raise ValueError("a batch mixes samples with and without an image; batch them separately "
                             "(lostattn.harness.evaluate groups samples by image presence)")
        return None
    return [protocol.prepare_image(im) for im in images] if protocol is not None else images


def prepare_inputs(lm, samples, blind: bool = False, protocol=None, images=None):
    """Processor inputs for a batch of samples (left-padded), on the model's device; images dropped when `blind`.
    `images` may be given when already loaded (`load_images`)."""
    proc = lm.processor
    if images is None:
        images = load_images(samples, blind, protocol)
    has_img = images is not None
    text = [chat_prompt(proc, protocol.question_text(s.question) if protocol is not None else s.question,
                        with_image=has_img, protocol=protocol) for s in samples]
    kw = dict(text=text, padding=True, return_tensors="pt")
    if has_img:
        kw["images"] = [[im] for im in images] if lm.adapter.spec.images_per_prompt else images
    inputs = proc(**kw).to(lm.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.model.dtype)
    return inputs


def refuse_overlong(lm, samples, inputs, reply: bool = True) -> None:
    """Refuse, naming the sample, a prompt (image tokens included) longer than the model's context: its positions
    beyond the context were never trained (or are cut), and its reply or its residual stream would be read as if
    nothing were wrong. `reply`: the prompt must leave room for at least one generated token (a reply is not counted
    against the context beyond that: generation stops at the end-of-text token long before most limits)."""
    limit = getattr(lm.adapter.text_config, "max_position_embeddings", None)
    if not limit or "attention_mask" not in inputs:
        return
    for s, n in zip(samples, inputs["attention_mask"].sum(1).tolist()):
        if n > limit - int(reply):
            room = "leaves room for" if reply else "holds"
            raise ValueError(f"sample {s.id}: its prompt is {n} tokens (the image's included), more than the "
                             f"model's context of {limit} tokens {room}; shorten the question, give the model a "
                             f"smaller image (the processor's max_pixels / image size) or leave the sample out")
