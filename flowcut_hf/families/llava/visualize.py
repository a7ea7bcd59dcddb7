"""``flowcut-hf visualize`` on LLaVA-1.5: the processor's 336 px view of the image with the kept patches left clear
and the pruned ones dimmed and hatched, beside the number of tokens (CLS included) each vision-encoder layer
processed, against the unpruned encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from ...benchmark import BenchRow
from ...drawing import (
    ACCENT, BACKGROUND, GRID, INK, MARGIN, MUTED, STOCK, dim_and_hatch, label_font, processor_view,
)
from .bench import ModelModes

DEFAULT_TARGET_NUM = 64
DEFAULT_SCALE = 2
HEADER = 44
FOOTER = 34
PLOT_WIDTH = 520


@dataclass(frozen=True)
class FigureLayout:
    """Where things are in the picture (pixels). ``image_box`` is ``(left, top, right, bottom)``."""

    width: int
    height: int
    image_box: tuple[int, int, int, int]
    plot_box: tuple[int, int, int, int]
    cell: int


def figure_layout(image_size: int = 336, patch_size: int = 14, scale: int = DEFAULT_SCALE) -> FigureLayout:
    """The layout of a picture for a ``image_size`` px model input with ``patch_size`` px patches."""
    side = image_size * scale
    left, top = MARGIN, MARGIN + HEADER
    image_box = (left, top, left + side, top + side)
    plot_box = (image_box[2] + MARGIN, top, image_box[2] + MARGIN + PLOT_WIDTH, top + side)
    return FigureLayout(
        width=plot_box[2] + MARGIN,
        height=top + side + FOOTER + MARGIN,
        image_box=image_box,
        plot_box=plot_box,
        cell=patch_size * scale,
    )


@dataclass
class KeptTokens:
    """What FlowCut did to one image: the processor's view of it, the kept patches and the encoder schedule."""

    view: Image.Image
    keep_indices: list[int]
    token_schedule: list[int]
    target_num: int
    grid: int
    patch_size: int
    num_layers: int
    feature_layer_runs: int


def kept_tokens(model, processor, image: Image.Image, target_num: int | None = None) -> KeptTokens:
    """Runs FlowCut's vision encoder on ``image`` and returns what it kept.

    ``model`` may be a stock LLaVA-1.5 or a FlowCut model; it is switched to FlowCut at ``target_num`` for the call
    and restored afterwards. ``target_num`` defaults to the model's own setting (FlowCut models) or 64.
    """
    if target_num is None:
        target_num = int(getattr(model.config, "flowcut_target_num", DEFAULT_TARGET_NUM))
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    view, pixel_values = processor_view(processor, image)
    parameter = next(model.parameters())
    pixel_values = pixel_values.to(parameter.device, parameter.dtype)
    full = grid * grid
    modes = ModelModes(model, full)
    try:
        with torch.inference_mode(), modes.mode(BenchRow("flowcut", "flowcut", target_num, min(target_num, full))):
            features = model.model.get_image_features(pixel_values=pixel_values)
    finally:
        modes.restore()
    keep = [int(i) for i in features.keep_indices[0].tolist()]
    schedule = [int(n) for n in features.token_schedule]
    return KeptTokens(
        view=view,
        keep_indices=keep,
        token_schedule=schedule,
        target_num=target_num,
        grid=grid,
        patch_size=vision.patch_size,
        num_layers=vision.num_hidden_layers,
        feature_layer_runs=len(schedule),
    )


def _tick_step(y_max: int) -> int:
    for step in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if y_max / step <= 8:
            return step
    return 10000


def _draw_plot(draw: ImageDraw.ImageDraw, box, info: KeptTokens) -> None:
    left, top, right, bottom = box
    small, normal = label_font(12), label_font(14)
    # Axes area inside the panel.
    ax_left, ax_top, ax_right, ax_bottom = left + 56, top + 34, right - 12, bottom - 52
    full = info.grid * info.grid + 1
    y_max = max(100, -(-int(full * 1.08) // 100) * 100)  # headroom above the stock line for the legend
    layers = info.num_layers

    def x_of(layer: int) -> float:  # layer is 1-based
        return ax_left + (layer - 0.5) / layers * (ax_right - ax_left)

    def y_of(tokens: float) -> float:
        return ax_bottom - tokens / y_max * (ax_bottom - ax_top)

    draw.text((left + 4, top), "tokens per vision-encoder layer (CLS included)", fill=INK, font=normal)
    # Layers that never ran (after the feature layer).
    if info.feature_layer_runs < layers:
        shade_left = ax_left + info.feature_layer_runs / layers * (ax_right - ax_left)
        draw.rectangle([shade_left, ax_top, ax_right, ax_bottom], fill=(242, 242, 242))
        draw.text((shade_left + 3, ax_top + 4), "not run", fill=MUTED, font=small)
    # Grid and y ticks.
    for tick in range(0, y_max + 1, _tick_step(y_max)):
        y = y_of(tick)
        draw.line([ax_left, y, ax_right, y], fill=GRID)
        label = str(tick)
        width = draw.textlength(label, font=small)
        draw.text((ax_left - 6 - width, y - 7), label, fill=MUTED, font=small)
    # x ticks.
    for layer in range(1, layers + 1):
        if layer == 1 or layer % 4 == 0 or layer == layers:
            x = x_of(layer)
            draw.line([x, ax_bottom, x, ax_bottom + 4], fill=INK)
            label = str(layer)
            draw.text((x - draw.textlength(label, font=small) / 2, ax_bottom + 6), label, fill=MUTED, font=small)
    draw.text(((ax_left + ax_right) / 2 - 40, ax_bottom + 24), "encoder layer", fill=INK, font=small)
    draw.line([ax_left, ax_top, ax_left, ax_bottom, ax_right, ax_bottom], fill=INK, width=1)
    # Stock reference: every layer runs on all tokens.
    for layer in range(1, layers + 1):
        x0, x1 = x_of(layer) - 5, x_of(layer) + 5
        draw.line([x0, y_of(full), x1, y_of(full)], fill=STOCK, width=2)
    # Target line.
    target_tokens = min(info.target_num, full - 1) + 1
    y_target = y_of(target_tokens)
    for x in range(int(ax_left), int(ax_right), 8):
        draw.line([x, y_target, min(x + 4, ax_right), y_target], fill=MUTED)
    # FlowCut schedule as steps with dots.
    points = [(x_of(i + 1), y_of(n)) for i, n in enumerate(info.token_schedule)]
    if len(points) > 1:
        draw.line(points, fill=ACCENT, width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=ACCENT)
    # Legend.
    legend_y = top + 18
    draw.line([ax_left, legend_y + 7, ax_left + 16, legend_y + 7], fill=ACCENT, width=2)
    draw.text((ax_left + 20, legend_y), "FlowCut", fill=INK, font=small)
    draw.line([ax_left + 90, legend_y + 7, ax_left + 106, legend_y + 7], fill=STOCK, width=2)
    draw.text((ax_left + 110, legend_y), f"stock ({full})", fill=INK, font=small)
    draw.line([ax_left + 200, legend_y + 7, ax_left + 216, legend_y + 7], fill=MUTED)
    draw.text((ax_left + 220, legend_y), f"target ({target_tokens})", fill=INK, font=small)


def render_kept_tokens(info: KeptTokens, *, scale: int = DEFAULT_SCALE, title: str | None = None) -> Image.Image:
    """Draws the picture for ``info`` (see :func:`figure_layout` for where things are)."""
    side = info.grid * info.patch_size
    layout = figure_layout(side, info.patch_size, scale)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    view = info.view.convert("RGB").resize((side * scale, side * scale), Image.Resampling.NEAREST)
    kept = set(info.keep_indices)
    cell = layout.cell
    for index in range(info.grid * info.grid):
        if index in kept:
            continue
        row, column = divmod(index, info.grid)
        box = (column * cell, row * cell, (column + 1) * cell, (row + 1) * cell)
        view.paste(dim_and_hatch(view.crop(box)), box[:2])
    canvas.paste(view, layout.image_box[:2])

    draw = ImageDraw.Draw(canvas)
    full = info.grid * info.grid
    title = title or f"FlowCut keeps {len(kept)} of {full} patches"
    draw.text((MARGIN, MARGIN), title, fill=INK, font=label_font(20))
    left, _, right, bottom = layout.image_box
    draw.rectangle([left - 1, layout.image_box[1] - 1, right, bottom], outline=INK)
    caption = (
        f"clear: kept ({len(kept)}), dimmed + hatched: pruned ({full - len(kept)}); "
        f"image as the processor sees it ({side} px)"
    )
    draw.text((left, bottom + 8), caption, fill=MUTED, font=label_font(13))
    _draw_plot(draw, layout.plot_box, info)
    schedule_note = f"{len(info.token_schedule)} of {info.num_layers} layers ran; LLM gets {len(kept)} image tokens"
    draw.text((layout.plot_box[0] + 56, bottom + 8), schedule_note, fill=MUTED, font=label_font(13))
    return canvas
