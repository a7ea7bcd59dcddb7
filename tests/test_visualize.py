"""Tests for ``flowcut-hf visualize``: a valid PNG of the expected size whose clear patches are exactly the kept ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from flowcut_hf import cli, flowcut
from flowcut_hf.benchmark import example_image_path
from flowcut_hf.families.llava.builtin import build_tiny_llava
from flowcut_hf.families.llava.visualize import figure_layout, kept_tokens
from flowcut_hf.visualize import make_example_image, visualize_kept_tokens

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


# ----------------------------------------------------------------------------- LLaVA-NeXT


def next_reference_views(processor, image: Image.Image, geometry) -> tuple[np.ndarray, np.ndarray]:
    """The base crop and the tiled anyres grid as uint8 arrays, de-normalised here independently of the module."""
    image_processor = processor.image_processor
    pixels = processor(images=image, text="<image>", return_tensors="pt")["pixel_values"][0]
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    crops = [((c * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy() for c in pixels]
    rows = [np.concatenate(crops[1 + r * geometry.grid_cols : 1 + (r + 1) * geometry.grid_cols], axis=1) for r in range(geometry.grid_rows)]
    return crops[0], np.concatenate(rows, axis=0)


def clear_cells(picture: Image.Image, box, expected: np.ndarray, cell: int) -> set[tuple[int, int]]:
    left, top, right, bottom = box
    panel = np.asarray(picture.convert("RGB"), dtype=np.int16)[top:bottom, left:right]
    assert panel.shape == expected.shape
    clear = set()
    for row in range(panel.shape[0] // cell):
        for column in range(panel.shape[1] // cell):
            window = np.s_[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell]
            if np.abs(panel[window] - expected[window].astype(np.int16)).mean() < 2.0:
                clear.add((row, column))
    return clear


def test_next_picture_shows_the_tokens_each_stage_keeps_over_the_whole_image(tmp_path):
    from flowcut_hf.modeling.modeling_flowcut_llava_next import AnyresGeometry, unpadded_window
    from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
    from flowcut_hf.families.llava_next.visualize import kept_tokens_next, next_figure_layout

    wide = Image.open(example_image_path()).convert("RGB").resize((800, 450))
    image_path = tmp_path / "wide.png"
    wide.save(image_path)
    out = tmp_path / "next.png"
    assert cli.main(["visualize", "tiny", str(image_path), "--family", "llava-next", "--target-num", "40", "--out", str(out)]) == 0
    picture = Image.open(out)
    picture.verify()
    picture = Image.open(out)

    # The same model the CLI built, run directly: which (crop, patch) tokens entered the LLM and which survived it.
    model, processor = build_tiny_llava_next(seed=0)
    flowcut(model, target_num=40)
    inputs = processor(images=wide, text="USER: <image>\nWhat is shown in this image? ASSISTANT:", return_tensors="pt")
    with torch.inference_mode():
        sources = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]).token_sources[0]
        survivors = sources[model(**inputs).llm_keep_indices[0]]
    geometry = AnyresGeometry.of(model.config, (450, 800))
    top, bottom, left, right = unpadded_window(geometry.grid_rows * 24, geometry.grid_cols * 24, 450, 800, round_like_transformers=False)
    assert bottom - top < geometry.grid_rows * 24, "the wide image must leave padding rows to remove"

    def expected_cells(tokens):
        base = {divmod(int(p), 24) for c, p in tokens.tolist() if c == 0}
        grid = set()
        for c, p in tokens.tolist():
            if c > 0:
                row, column = geometry.grid_coordinates(torch.tensor(c), torch.tensor(p))
                grid.add((int(row) - top, int(column) - left))
        return base, grid

    base_view, grid_view = next_reference_views(processor, wide, geometry)
    grid_view = grid_view[top * 14 : bottom * 14, left * 14 : right * 14]
    layout = next_figure_layout(kept_tokens_next(model, processor, wide, 40), scale=1)
    assert picture.size == (layout.width, layout.height)
    for row, tokens in enumerate((sources, survivors)):
        base, grid = expected_cells(tokens)
        assert clear_cells(picture, layout.base_boxes[row], base_view, 14) == base
        assert clear_cells(picture, layout.grid_boxes[row], grid_view, 14) == grid
    assert len(expected_cells(survivors)[0]) + len(expected_cells(survivors)[1]) == 40
    assert type(model).__name__ == "FlowCutLlavaNextForConditionalGeneration" and model.config.flowcut_target_num == 40



def test_cli_writes_the_format_out_names_and_refuses_what_it_cannot_read_or_write(tmp_path, example, capsys):
    image_path = tmp_path / "input.png"
    example.save(image_path)
    for name, image_format in (("kept.jpg", "JPEG"), ("kept.webp", "WEBP")):
        out = tmp_path / name
        assert cli.main(["visualize", "tiny", str(image_path), "--target-num", str(TARGET), "--out", str(out)]) == 0
        with Image.open(out) as written:
            assert written.format == image_format, f"{name} must hold {image_format} bytes"

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels")
    assert cli.main(["visualize", "tiny", str(not_an_image), "--out", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert f"{not_an_image} is not an image PIL can read" in error and "Traceback" not in error
    assert cli.main(["visualize", "tiny", str(image_path), "--out", str(tmp_path / "kept.gif")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "kept.gif").exists()
