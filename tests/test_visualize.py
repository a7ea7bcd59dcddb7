"""Tests for ``flowcut-hf visualize``: a valid PNG of the expected size whose clear patches are exactly the kept ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from flowcut_hf import cli, flowcut
from flowcut_hf.bench import example_image_path
from flowcut_hf.tiny import build_tiny_llava
from flowcut_hf.visualize import figure_layout, kept_tokens, make_example_image, visualize_kept_tokens

TARGET = 64
GRID, PATCH, SIDE = 24, 14, 336


def reference_view(processor, image: Image.Image) -> np.ndarray:
    """The processor's 336 px input de-normalised to uint8, computed here independently of the module."""
    image_processor = processor.image_processor
    pixels = image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return ((pixels * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def clear_patches(picture: Image.Image, view: np.ndarray, scale: int) -> set[int]:
    """Indices (row-major) of the patches drawn undimmed, found by comparing the picture with the input."""
    layout = figure_layout(SIDE, PATCH, scale)
    left, top, right, bottom = layout.image_box
    panel = np.asarray(picture.convert("RGB"), dtype=np.int16)[top:bottom, left:right]
    expected = np.repeat(np.repeat(view.astype(np.int16), scale, axis=0), scale, axis=1)
    assert panel.shape == expected.shape
    cell = layout.cell
    clear = set()
    for index in range(GRID * GRID):
        row, column = divmod(index, GRID)
        window = np.s_[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell]
        if np.abs(panel[window] - expected[window]).mean() < 2.0:
            clear.add(index)
    return clear


@pytest.fixture(scope="module")
def example():
    return Image.open(example_image_path()).convert("RGB")


def test_example_asset_is_small_and_structured(example):
    path = example_image_path()
    assert path.stat().st_size < 100_000
    assert example.size == (448, 336)  # not square, so the processor's resize + centre crop shows
    assert len(np.unique(np.asarray(example).reshape(-1, 3), axis=0)) > 20
    assert make_example_image().size == example.size


def test_python_api_returns_pil_image_with_kept_patches_clear(example):
    model, processor = build_tiny_llava(seed=0)
    picture = visualize_kept_tokens(model, processor, example, target_num=TARGET)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    layout = figure_layout(SIDE, PATCH, 2)
    assert picture.size == (layout.width, layout.height)
    assert type(model) is LlavaForConditionalGeneration  # the stock model is left as it was

    info = kept_tokens(model, processor, example, target_num=TARGET)
    assert len(info.keep_indices) == TARGET
    assert info.token_schedule[-1] == TARGET + 1 and len(info.token_schedule) == 23
    assert clear_patches(picture, reference_view(processor, example), scale=2) == set(info.keep_indices)


def test_cli_writes_valid_png_matching_keep_indices(tmp_path, example, capsys):
    out = tmp_path / "kept.png"
    image_path = tmp_path / "input.png"
    example.save(image_path)
    assert cli.main(["visualize", "tiny", str(image_path), "--target-num", str(TARGET), "--out", str(out), "--scale", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as png:
        png.verify()
    picture = Image.open(out)
    assert picture.format == "PNG"
    layout = figure_layout(SIDE, PATCH, 1)
    assert picture.size == (layout.width, layout.height)

    # The same model the CLI built ("tiny" = build_tiny_llava(seed=0)), asked directly for its keep_indices.
    model, processor = build_tiny_llava(seed=0)
    flowcut(model, target_num=TARGET)
    with torch.inference_mode():
        pixels = processor.image_processor(images=example, return_tensors="pt")["pixel_values"]
        keep = model.model.get_image_features(pixel_values=pixels).keep_indices[0]
    clear = clear_patches(picture, reference_view(processor, example), scale=1)
    assert len(clear) == len(keep) == TARGET
    assert clear == set(keep.tolist())


def test_flowcut_model_default_target_and_nothing_pruned(example):
    model, processor = build_tiny_llava(seed=0)
    flowcut(model, target_num=32)
    info = kept_tokens(model, processor, example)  # defaults to the model's own target
    assert len(info.keep_indices) == 32 and model.config.flowcut_target_num == 32
    picture = visualize_kept_tokens(model, processor, example, target_num=576, scale=1)
    assert len(clear_patches(picture, reference_view(processor, example), scale=1)) == GRID * GRID
