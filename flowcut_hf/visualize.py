"""``flowcut-hf visualize``: which image patches FlowCut keeps, and how many tokens each encoder layer processed.

Usage::

    flowcut-hf visualize MODEL IMAGE --target-num 64 --out kept.png

``MODEL`` is ``builtin`` (random weights, no download), ``tiny``, a local folder or a Hub repo id (a stock model or a
variant; ``--family`` picks the family of ``builtin``/``tiny``). The picture shows the image as the model sees it with
the tokens each stage kept left clear and the pruned ones dimmed and hatched; what else it shows is the family's
(its visualize module, ``flowcut_hf/families/<family>/visualize.py``): the tokens per vision-encoder layer, the
anyres crops and the grid, the merge units, the tokens left after the LLM stage.

From Python::

    from flowcut_hf.visualize import visualize_kept_tokens
    picture = visualize_kept_tokens(model, processor, image, target_num=64)   # a PIL.Image
    picture.save("kept.png")

Drawn with PIL only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .bench import checkpoint_config, load_model
from .benchmark import example_image_path
from .cli import (
    BUILTIN_MODEL, TINY_MODEL, add_family_option, builtin_model_name, plain_help, retain_ratio_argument, target_num_argument,
)
from .registry import cli_names

__all__ = ["make_example_image", "visualize_kept_tokens", "register_cli"]


def visualize_kept_tokens(
    model, processor, image: Image.Image | str | Path, target_num: int | None = None, *, scale: int | None = None,
    title: str | None = None, retain_ratio: float | None = None,
) -> Image.Image:
    """The kept-token picture for ``image`` as a PIL image (``model`` is left as it was): the one its family draws
    (:meth:`flowcut_hf.family.FlowCutFamily.kept_tokens_picture`), at ``target_num`` or ``retain_ratio`` (the model's
    own setting, or the family's default, if neither is given)."""
    from .amounts import ratio_refusal
    from .registry import family_for_model

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    family = family_for_model(model)
    if "flowcut" not in family.methods:
        raise ValueError(f"visualize draws FlowCut's kept tokens; {family.display_name} runs {list(family.methods)} only so far.")
    if retain_ratio is not None and "retain_ratio" not in family.amount_kinds:
        raise ratio_refusal(family)
    return family.kept_tokens_picture(model, processor, image, target_num, retain_ratio, scale=scale, title=title)


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
        "id of a supported family"
    )
    add_family_option(
        parser, choices=cli_names("flowcut"), default=cli_names()[0],
        help=f"family of 'builtin' and 'tiny' (default {cli_names()[0]})",
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
        help="share of the image's tokens kept, for families whose token count follows the image size (default: the "
        "model's, or the family's)",
    )
    parser.add_argument("--out", type=Path, default=Path("kept.png"), help="output image: .png, .jpg, .jpeg or .webp (default kept.png)")
    parser.add_argument(
        "--scale", type=int, default=None, help="pixels per input pixel (default: the family's, 1 or 2)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="auto: float32 on cpu, bfloat16 on cuda")
    parser.set_defaults(func=_cli)
