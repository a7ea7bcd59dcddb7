"""The kept-token picture of a Qwen2-VL / Qwen2.5-VL model: the image as the processor resized it, in 2x2 merge units.

Two panels: the units the vision stage kept (twice the image's target) and the units the layers after the LLM stage
still see (the target). A unit is one LLM token, the 2x2 patches (28 x 28 px) the PatchMerger fuses; kept units are
clear and outlined, with their four patches marked, dropped ones dimmed and hatched. FlowCut never splits a unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from ...drawing import ACCENT, BACKGROUND, INK, MARGIN, MUTED, dim_and_hatch, label_font

DEFAULT_QUESTION = "What is shown in this image?"
HEADER = 44
CAPTION = 28


@dataclass
class QwenKeptTokens:
    """What FlowCut did to one image on Qwen-VL, over its grid of merge units (``rows x columns``, raster order)."""

    view: Image.Image  # the image resized as the processor resized it (patch grid x 14 px)
    display_name: str
    rows: int
    columns: int
    unit_pixels: int
    retain_ratio: float | None
    target: int
    vision_kept: set[int]
    llm_kept: set[int]


@contextmanager
def flowcut_mode(model, retain_ratio: float | None, target_num: int | None) -> Iterator[None]:
    """``model`` switched to FlowCut (per instance) with the given amount for the block, then put back as it was."""
    from ...api import flowcut
    from ...benchmark import instance_snapshot, restore_instance

    original = instance_snapshot(model)
    try:
        if target_num is not None:
            flowcut(model, target_num=target_num)
        elif retain_ratio is not None or not hasattr(model.config, "flowcut_retain_ratio"):
            flowcut(model, retain_ratio=retain_ratio)
        yield
    finally:
        restore_instance(model, original)


def kept_tokens_qwen(
    model, processor, image: Image.Image, retain_ratio: float | None = None, target_num: int | None = None,
    question: str = DEFAULT_QUESTION,
) -> QwenKeptTokens:
    """Runs FlowCut (both stages) on ``image`` and returns the units each stage kept; ``model`` is left as it was."""
    from ...registry import family_for_model

    image = image.convert("RGB")
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True
    )
    inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
    parameter = next(model.parameters())
    inputs = {k: v.to(parameter.device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(parameter.dtype)
    with torch.inference_mode(), flowcut_mode(model, retain_ratio, target_num):
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        output = model(**inputs)
        settings = model.model.flowcut_settings()
    _, height, width = (int(n) for n in inputs["image_grid_thw"][0])
    vision = model.config.vision_config
    merge = vision.spatial_merge_size
    return QwenKeptTokens(
        view=image.resize((width * vision.patch_size, height * vision.patch_size), Image.Resampling.BICUBIC),
        display_name=family_for_model(model).display_name,
        rows=height // merge,
        columns=width // merge,
        unit_pixels=vision.patch_size * merge,
        retain_ratio=settings.retain_ratio if settings.target_num is None else None,
        target=features.llm_targets[0],
        vision_kept={int(u) for u in features.kept_units[0]},
        llm_kept={int(u) for u in output.image_kept_units[0]},
    )


def draw_units(view: Image.Image, kept: set[int], rows: int, columns: int, cell: int) -> Image.Image:
    """``view`` (``columns x rows`` cells of ``cell`` px) with dropped units dimmed and hatched and kept ones
    outlined, their 2x2 patches marked."""
    picture = view.copy()
    draw = ImageDraw.Draw(picture)
    for unit in range(rows * columns):
        row, column = divmod(unit, columns)
        box = (column * cell, row * cell, (column + 1) * cell, (row + 1) * cell)
        if unit not in kept:
            picture.paste(dim_and_hatch(picture.crop(box)), box[:2])
    for unit in kept:
        row, column = divmod(unit, columns)
        left, top = column * cell, row * cell
        half = cell // 2
        draw.line([(left + half, top + 2), (left + half, top + cell - 3)], fill=(255, 255, 255))
        draw.line([(left + 2, top + half), (left + cell - 3, top + half)], fill=(255, 255, 255))
        draw.rectangle([left, top, left + cell - 1, top + cell - 1], outline=ACCENT)
    return picture


def render_kept_tokens_qwen(info: QwenKeptTokens, *, scale: int = 1, title: str | None = None) -> Image.Image:
    cell = info.unit_pixels * scale
    view = info.view.resize((info.columns * cell, info.rows * cell), Image.Resampling.NEAREST)
    panel_width, panel_height = view.size
    width = MARGIN + 2 * panel_width + MARGIN + MARGIN
    height = MARGIN + HEADER + panel_height + CAPTION + MARGIN
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    units = info.rows * info.columns
    amount = f"retain ratio {info.retain_ratio:g}" if info.retain_ratio is not None else f"target {info.target}"
    title = title or (
        f"FlowCut, {info.display_name} ({amount}): {units} visual tokens -> {len(info.vision_kept)} -> "
        f"{len(info.llm_kept)}"
    )
    draw.text((MARGIN, MARGIN), title, fill=INK, font=label_font(18))
    top = MARGIN + HEADER
    panels = (
        (f"vision stage: {len(info.vision_kept)} of {units} 2x2 units", info.vision_kept),
        (f"after the LLM stage: {len(info.llm_kept)} units", info.llm_kept),
    )
    for index, (label, kept) in enumerate(panels):
        left = MARGIN + index * (panel_width + MARGIN)
        canvas.paste(draw_units(view, kept, info.rows, info.columns, cell), (left, top))
        draw.rectangle([left - 1, top - 1, left + panel_width, top + panel_height], outline=INK)
        draw.text((left, top + panel_height + 6), label, fill=MUTED, font=label_font(13))
    return canvas


__all__ = ["QwenKeptTokens", "draw_units", "flowcut_mode", "kept_tokens_qwen", "render_kept_tokens_qwen"]
