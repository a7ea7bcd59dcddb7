"""The kept-token picture of a LLaVA-NeXT model: the whole high-resolution image, after each FlowCut stage.

Two rows: the tokens kept by the vision stage (``target_num // 2`` patches of every crop) and the tokens that survive
the LLM stage (``target_num`` per image). Each row holds the base crop (the whole image resized to one crop) and the
anyres grid (the grid crops tiled as the processor cut them, with LLaVA's padding rows or columns removed, as FlowCut
lays the tokens out). Kept patches are clear, the others dimmed and hatched, as in the LLaVA-1.5 picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from ...modeling.modeling_flowcut_llava_next import AnyresGeometry, stock_token_count, unpadded_window
from ...drawing import BACKGROUND, INK, MARGIN, MUTED, denormalised, dim_and_hatch, label_font

DEFAULT_PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
HEADER = 44
ROW_LABEL = 26
CAPTION = 28


@dataclass
class NextKeptTokens:
    """What FlowCut did to one image on LLaVA-NeXT, in patch coordinates.

    ``base_kept`` / ``grid_kept``: base-crop patch indices and full-grid ``(row, column)`` cells whose tokens entered
    the LLM; ``base_after_llm`` / ``grid_after_llm``: those the layers after the LLM stage still see.
    """

    base_view: Image.Image
    grid_view: Image.Image
    window: tuple[int, int, int, int]  # (top, bottom, left, right) in patches, LLaVA's unpadding
    side: int
    patch_size: int
    crops: int
    stock_tokens: int
    target_num: int
    base_kept: set[int]
    grid_kept: set[tuple[int, int]]
    base_after_llm: set[int]
    grid_after_llm: set[tuple[int, int]]


def kept_tokens_next(model, processor, image: Image.Image, target_num: int | None = None, prompt: str = DEFAULT_PROMPT) -> NextKeptTokens:
    """Runs FlowCut (both stages) on ``image`` and returns what each stage kept; ``model`` is left as it was."""
    from .bench import NextModelModes, NextRow

    image = image.convert("RGB")
    if target_num is None:
        target_num = int(getattr(model.config, "flowcut_target_num", 160))
    parameter = next(model.parameters())
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    inputs = {k: v.to(parameter.device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(parameter.dtype)
    modes = NextModelModes(model)
    try:
        with torch.inference_mode(), modes.mode(NextRow("flowcut", "flowcut", target_num)):
            features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
            llm_keep = model(**inputs).llm_keep_indices[0].tolist()
    finally:
        modes.restore()

    config = model.config
    size = (image.height, image.width)
    geometry = AnyresGeometry.of(config, size)
    image_processor = processor.image_processor
    crops = [denormalised(crop, image_processor) for crop in inputs["pixel_values"][0, : geometry.num_crops].cpu()]
    crop_px = crops[0].width
    grid_view = Image.new("RGB", (geometry.grid_cols * crop_px, geometry.grid_rows * crop_px))
    for index, crop in enumerate(crops[1:]):
        row, column = divmod(index, geometry.grid_cols)
        grid_view.paste(crop, (column * crop_px, row * crop_px))
    window = unpadded_window(
        geometry.grid_rows * geometry.side, geometry.grid_cols * geometry.side, *size, round_like_transformers=False
    )

    def split(sources) -> tuple[set[int], set[tuple[int, int]]]:
        base, grid = set(), set()
        for crop, patch in sources:
            if crop == 0:
                base.add(patch)
            elif crop > 0:  # -1 marks a newline token, which has no place on the image
                grid.add(tuple(int(v) for v in geometry.grid_coordinates(torch.tensor(crop), torch.tensor(patch))))
        return base, grid

    sources = features.token_sources[0].tolist()
    base_kept, grid_kept = split(sources)
    base_after, grid_after = split([sources[i] for i in llm_keep])
    return NextKeptTokens(
        base_view=crops[0], grid_view=grid_view, window=window, side=geometry.side,
        patch_size=config.vision_config.patch_size, crops=geometry.num_crops,
        stock_tokens=stock_token_count(config, size), target_num=target_num,
        base_kept=base_kept, grid_kept=grid_kept, base_after_llm=base_after, grid_after_llm=grid_after,
    )


@dataclass(frozen=True)
class NextFigureLayout:
    """Where things are (pixels): per row (vision stage, LLM stage), the base and grid boxes ``(l, t, r, b)``."""

    width: int
    height: int
    base_boxes: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]
    grid_boxes: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]
    cell: int


def next_figure_layout(info: NextKeptTokens, scale: int = 1) -> NextFigureLayout:
    cell = info.patch_size * scale
    base_side = info.side * cell
    top, bottom, left, right = info.window
    grid_width, grid_height = (right - left) * cell, (bottom - top) * cell
    row_height = ROW_LABEL + max(base_side, grid_height) + CAPTION
    base_boxes, grid_boxes = [], []
    for row in range(2):
        y = MARGIN + HEADER + row * row_height + ROW_LABEL
        base_boxes.append((MARGIN, y, MARGIN + base_side, y + base_side))
        grid_left = MARGIN + base_side + MARGIN
        grid_boxes.append((grid_left, y, grid_left + grid_width, y + grid_height))
    width = grid_boxes[0][2] + MARGIN
    return NextFigureLayout(width, MARGIN + HEADER + 2 * row_height + MARGIN, tuple(base_boxes), tuple(grid_boxes), cell)


def draw_patches(view: Image.Image, kept: set, cells, cell: int) -> Image.Image:
    """``view`` scaled to ``cell`` px per patch, with every cell of ``cells`` not in ``kept`` dimmed and hatched.

    ``cells`` yields ``(key, row, column)``: the key ``kept`` is matched against, and where the cell is drawn.
    """
    picture = view.copy()
    for key, row, column in cells:
        if key not in kept:
            box = (column * cell, row * cell, (column + 1) * cell, (row + 1) * cell)
            picture.paste(dim_and_hatch(picture.crop(box)), box[:2])
    return picture


def render_kept_tokens_next(info: NextKeptTokens, *, scale: int = 1, title: str | None = None) -> Image.Image:
    """Draws the two-stage picture for ``info`` (see :func:`next_figure_layout` for where things are)."""
    layout = next_figure_layout(info, scale)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    cell = layout.cell
    top, bottom, left, right = info.window
    base_view = info.base_view.resize((info.side * cell,) * 2, Image.Resampling.NEAREST)
    pixels_per_patch = info.patch_size
    grid_view = info.grid_view.crop((left * pixels_per_patch, top * pixels_per_patch, right * pixels_per_patch, bottom * pixels_per_patch))
    grid_view = grid_view.resize(((right - left) * cell, (bottom - top) * cell), Image.Resampling.NEAREST)
    base_cells = [(index, *divmod(index, info.side)) for index in range(info.side * info.side)]
    grid_cells = [((row, column), row - top, column - left) for row in range(top, bottom) for column in range(left, right)]

    title = title or (
        f"FlowCut, LLaVA-NeXT: {info.stock_tokens} visual tokens ({info.crops} crops) -> "
        f"{len(info.base_kept) + len(info.grid_kept)} -> {len(info.base_after_llm) + len(info.grid_after_llm)}"
    )
    draw.text((MARGIN, MARGIN), title, fill=INK, font=label_font(18))
    stages = (
        (f"vision stage: {info.target_num // 2} patches kept per crop", info.base_kept, info.grid_kept),
        (f"LLM stage: {info.target_num} tokens per image after the prune layer", info.base_after_llm, info.grid_after_llm),
    )
    for row, (label, base_kept, grid_kept) in enumerate(stages):
        base_box, grid_box = layout.base_boxes[row], layout.grid_boxes[row]
        draw.text((MARGIN, base_box[1] - ROW_LABEL + 4), label, fill=INK, font=label_font(15))
        canvas.paste(draw_patches(base_view, base_kept, base_cells, cell), base_box[:2])
        canvas.paste(draw_patches(grid_view, grid_kept, grid_cells, cell), grid_box[:2])
        for box in (base_box, grid_box):
            draw.rectangle([box[0] - 1, box[1] - 1, box[2], box[3]], outline=INK)
        draw.text((base_box[0], base_box[3] + 6), f"base crop: {len(base_kept)} kept", fill=MUTED, font=label_font(13))
        draw.text(
            (grid_box[0], grid_box[3] + 6),
            f"anyres grid, padding removed: {len(grid_kept)} kept of {len(grid_cells)}",
            fill=MUTED, font=label_font(13),
        )
    return canvas


__all__ = ["NextFigureLayout", "NextKeptTokens", "kept_tokens_next", "next_figure_layout", "render_kept_tokens_next"]
