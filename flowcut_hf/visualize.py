"""``flowcut-hf visualize``: which image patches FlowCut keeps, and how many tokens each encoder layer processed.

Usage::

    flowcut-hf visualize MODEL IMAGE --target-num 64 --out kept.png

``MODEL`` is ``builtin`` (random weights, no download), ``tiny``, a local folder or a Hub repo id (a stock model or a
FlowCut export; ``--family llava-next`` / ``qwen2-vl`` / ``qwen2.5-vl`` picks that family's ``builtin``/``tiny``). For
LLaVA-1.5 the PNG shows, on the
left, the image exactly as the processor hands it to the model (resized and centre-cropped to 336 px, de-normalised),
with the kept patches left clear and the pruned ones dimmed and hatched; on the right, the number of tokens (CLS
included) each vision-encoder layer processed, against the unpruned encoder. For LLaVA-NeXT it shows the base crop
and the whole high-resolution anyres grid (padding removed), once with the tokens kept by the vision stage and once
with those that survive the LLM stage. For Qwen2-VL / Qwen2.5-VL it shows the resized image in 2x2 merge units (one
LLM token each), kept by the vision stage and after the LLM stage.

From Python::

    from flowcut_hf.visualize import visualize_kept_tokens
    picture = visualize_kept_tokens(model, processor, image, target_num=64)   # a PIL.Image
    picture.save("kept.png")

Drawn with PIL only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .bench import ModelModes, BenchRow, checkpoint_config, example_image_path, load_model
from .cli import (
    BUILTIN_MODEL, TINY_MODEL, add_family_option, builtin_model_name, plain_help, retain_ratio_argument, target_num_argument,
)

__all__ = [
    "FigureLayout",
    "KeptTokens",
    "figure_layout",
    "kept_tokens",
    "make_example_image",
    "processor_view",
    "render_kept_tokens",
    "visualize_kept_tokens",
    "register_cli",
]

DEFAULT_TARGET_NUM = 64
DEFAULT_SCALE = 2

# Look.
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (120, 120, 120)
GRID = (225, 225, 225)
ACCENT = (214, 69, 65)
STOCK = (90, 120, 200)
DIM_TO = (24, 24, 24)
DIM_KEEP = 0.3  # pruned pixels keep 30% of their colour
HATCH = (235, 235, 235)
HATCH_PERIOD = 7

MARGIN = 20
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


def denormalised(pixels: torch.Tensor, image_processor) -> Image.Image:
    """One processed image ``[3, H, W]`` back to RGB, undoing the processor's normalisation and rescaling."""
    array = pixels.float()
    if getattr(image_processor, "do_normalize", True):
        mean = torch.tensor(image_processor.image_mean).view(-1, 1, 1)
        std = torch.tensor(image_processor.image_std).view(-1, 1, 1)
        array = array * std + mean
    if getattr(image_processor, "do_rescale", True):
        array = array / float(getattr(image_processor, "rescale_factor", 1 / 255)) / 255.0
    array = (array.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def processor_view(processor, image: Image.Image) -> tuple[Image.Image, torch.Tensor]:
    """The image as the model sees it (after the processor's resize / crop, de-normalised) and its pixel values."""
    image_processor = getattr(processor, "image_processor", processor)
    pixel_values = image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
    return denormalised(pixel_values[0], image_processor), pixel_values


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


def label_font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def dim_and_hatch(cell: Image.Image) -> Image.Image:
    """How a pruned patch is drawn: its colours dimmed, with a light diagonal hatch."""
    array = np.asarray(cell, dtype=np.float32)
    dimmed = array * DIM_KEEP + np.asarray(DIM_TO, dtype=np.float32) * (1 - DIM_KEEP)
    height, width = dimmed.shape[:2]
    y, x = np.mgrid[0:height, 0:width]
    dimmed[(x + y) % HATCH_PERIOD == 0] = HATCH
    return Image.fromarray(dimmed.round().astype(np.uint8), "RGB")


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


def visualize_kept_tokens(
    model, processor, image: Image.Image | str | Path, target_num: int | None = None, *, scale: int | None = None,
    title: str | None = None, retain_ratio: float | None = None,
) -> Image.Image:
    """The kept-token picture for ``image`` as a PIL image (``model`` is left as it was).

    LLaVA-1.5: the processor's 336 px view with the kept patches, beside the tokens per encoder layer. LLaVA-NeXT:
    the kept tokens over the whole high-resolution image (the base crop and the unpadded anyres grid), after the
    vision stage and after the LLM stage (see :mod:`flowcut_hf.visualize_next`). Qwen2-VL / Qwen2.5-VL: the kept 2x2
    merge units over the resized image, after each stage (``retain_ratio`` or ``target_num``; see
    :mod:`flowcut_hf.visualize_qwen`).
    """
    from .registry import family_for_model

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    family = family_for_model(model)
    if "flowcut" not in family.methods:
        raise ValueError(f"visualize draws FlowCut's kept tokens; {family.display_name} runs {list(family.methods)} only so far.")
    if family.default_retain_ratio is not None:
        from .visualize_qwen import kept_tokens_qwen, render_kept_tokens_qwen

        info = kept_tokens_qwen(model, processor, image, retain_ratio=retain_ratio, target_num=target_num)
        return render_kept_tokens_qwen(info, scale=1 if scale is None else scale, title=title)
    if retain_ratio is not None:
        raise ValueError(f"{family.display_name} keeps a count per image: pass target_num, not retain_ratio")
    if family.llm_stage:
        from .visualize_next import kept_tokens_next, render_kept_tokens_next

        info = kept_tokens_next(model, processor, image, target_num)
        return render_kept_tokens_next(info, scale=1 if scale is None else scale, title=title)
    info = kept_tokens(model, processor, image, target_num)
    return render_kept_tokens(info, scale=DEFAULT_SCALE if scale is None else scale, title=title)


def make_example_image(size: tuple[int, int] = (448, 336)) -> Image.Image:
    """The packaged example picture (``flowcut_hf/assets/example.png``): a house, a tree, hills, sun and a cloud."""
    width, height = size
    sx, sy = width / 448, height / 336
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    sky = np.stack([110 + 90 * y, 160 + 70 * y, 235 - 20 * y], -1) * np.ones((1, width, 1), np.float32)
    image = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)

    def box(x0, y0, x1, y1):
        return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]

    def poly(points):
        return [(x * sx, y * sy) for x, y in points]

    draw.ellipse(box(330, 30, 400, 100), fill=(255, 214, 70))
    draw.ellipse(box(200, 40, 290, 70), fill=(245, 248, 252))
    draw.ellipse(box(230, 28, 280, 62), fill=(245, 248, 252))
    draw.polygon(poly([(0, 240), (90, 170), (200, 235), (300, 160), (448, 230), (448, 336), (0, 336)]), fill=(86, 150, 70))
    draw.rectangle(box(0, 270, 448, 336), fill=(70, 125, 58))
    draw.rectangle(box(90, 190, 190, 280), fill=(205, 92, 72))
    draw.polygon(poly([(80, 192), (140, 140), (200, 192)]), fill=(120, 60, 50))
    draw.rectangle(box(125, 235, 150, 280), fill=(80, 50, 35))
    draw.rectangle(box(100, 205, 120, 225), fill=(230, 240, 250))
    draw.rectangle(box(160, 205, 180, 225), fill=(230, 240, 250))
    draw.rectangle(box(300, 200, 314, 285), fill=(100, 70, 40))
    draw.ellipse(box(270, 140, 345, 215), fill=(40, 110, 45))
    for x, colour in ((70, (230, 60, 60)), (92, (250, 200, 60)), (340, (200, 90, 200)), (362, (250, 250, 250))):
        draw.ellipse(box(x, 295, x + 14, 309), fill=colour)
    return image


OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
"""``--out`` extensions and the format each is written in."""


def output_format(out: Path) -> str:
    """The image format ``--out``'s extension names; a ValueError naming the accepted ones otherwise."""
    image_format = OUTPUT_FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise ValueError(f"--out {out} must end in {', '.join(OUTPUT_FORMATS)}, the formats visualize writes")
    return image_format


def check_image_file(path: Path) -> None:
    """Refuses, by name, a file that is missing or that PIL cannot read as an image (before any model loads)."""
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path} is not an image PIL can read ({type(error).__name__}: {error}); give a PNG, JPEG or WebP file") from None


def save_picture(picture: Image.Image, out: Path) -> None:
    image_format = output_format(out)
    if image_format == "JPEG":
        picture.convert("RGB").save(out, format="JPEG", quality=95)
    elif image_format == "WEBP":
        picture.save(out, format="WEBP", lossless=True)
    else:
        picture.save(out, format="PNG", optimize=True)


def check_amounts(args: argparse.Namespace, config: dict) -> None:
    """``--target-num`` and ``--retain-ratio`` are refused as ``flowcut-hf export`` refuses them (one that prunes
    nothing, a ratio on a family that keeps a count), in the same words."""
    from .amounts import validate_targets
    from .registry import family_for_config

    if args.target_num is not None or args.retain_ratio is not None:
        validate_targets(family_for_config(config), config, [args.target_num] if args.target_num is not None else [],
                         [args.retain_ratio] if args.retain_ratio is not None else [])


def _cli(args: argparse.Namespace) -> int:
    check_image_file(args.image)
    output_format(args.out)
    if args.out.parent and not args.out.parent.exists():
        raise FileNotFoundError(f"the folder of --out {args.out} does not exist")
    args.model = builtin_model_name(args.model)
    if args.model not in (BUILTIN_MODEL, TINY_MODEL):  # a checkpoint's amounts are refused before it loads
        check_amounts(args, checkpoint_config(args.model))
    model, processor = load_model(args.model, family=args.family, device=args.device, dtype=args.dtype)
    check_amounts(args, model.config.to_dict())
    picture = visualize_kept_tokens(
        model, processor, args.image, args.target_num, scale=args.scale, retain_ratio=args.retain_ratio
    )
    save_picture(picture, args.out)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {output_format(args.out)})")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "visualize",
        help="draw which image patches FlowCut keeps and the tokens per encoder layer (PNG, JPEG or WebP)",
        description=plain_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", help="'builtin' (the --family's 7B geometry at 1/4 width, random weights), 'tiny', a folder or a repo "
        "id (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or Qwen2.5-VL)"
    )
    add_family_option(
        parser, choices=("llava", "llava-next", "qwen2-vl", "qwen2.5-vl"), default="llava",
        help="family of 'builtin' and 'tiny' (default llava)",
    )
    parser.add_argument(
        "image", type=Path, nargs="?", default=example_image_path(),
        help="image file (default: the packaged example image)",
    )
    parser.add_argument(
        "--target-num", type=target_num_argument, default=None, help="visual tokens kept (default: the model's, or the family's paper default)"
    )
    parser.add_argument(
        "--retain-ratio", type=retain_ratio_argument, default=None,
        help="Qwen2-VL / Qwen2.5-VL: share of the image's tokens kept (default: the model's, or 0.111)",
    )
    parser.add_argument("--out", type=Path, default=Path("kept.png"), help="output image: .png, .jpg, .jpeg or .webp (default kept.png)")
    parser.add_argument(
        "--scale", type=int, default=None, help="pixels per input pixel (default 2 for LLaVA-1.5, 1 for the others)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="auto: float32 on cpu, bfloat16 on cuda")
    parser.set_defaults(func=_cli)
