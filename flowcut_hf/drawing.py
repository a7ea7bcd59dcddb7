"""The drawing toolkit of ``flowcut-hf visualize``: the look (colours, fonts, the dimmed and hatched pruned patch) and
the image as a processor hands it to a model. Each family draws its own picture with these
(:meth:`flowcut_hf.family.FlowCutFamily.kept_tokens_picture`, in ``flowcut_hf/families/*/visualize.py``)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFont

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
