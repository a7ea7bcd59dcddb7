"""A saved FlowCut folder must work as Hub remote code on its own, and fall back to stock LLaVA without it."""

from __future__ import annotations

from PIL import Image

from conftest import PROMPT, TARGET_NUM, greedy, run_clean_python

LOAD_AND_GENERATE = """
import importlib, json
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, image_path, trust = FOLDER, IMAGE, TRUST
try:
    importlib.import_module("flowcut_hf")
    importable = True
except ModuleNotFoundError:
    importable = False
model, info = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=trust, output_loading_info=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust)
inputs = processor(images=Image.open(image_path), text=PROMPT, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, suppress_tokens=[model.config.image_token_id])
print(json.dumps({
    "flowcut_hf_importable": importable,
    "model_class": type(model).__name__,
    "processor_class": type(processor).__name__,
    "missing": sorted(info["missing_keys"]),
    "unexpected": sorted(info["unexpected_keys"]),
    "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
    "tokens": out[0, inputs["input_ids"].shape[1]:].tolist(),
}))
"""


def snippet(folder, image, trust: bool) -> str:
    header = f"FOLDER = {str(folder)!r}\nIMAGE = {str(image)!r}\nTRUST = {trust!r}\nPROMPT = {PROMPT!r}\n"
    return header + LOAD_AND_GENERATE


def test_saved_folder_loads_as_remote_code_in_a_clean_process(saved_flowcut_folder, image_files, tiny_flowcut, tmp_path):
    model, processor = tiny_flowcut
    result = run_clean_python(snippet(saved_flowcut_folder, image_files[0], True), tmp_path)

    assert result["flowcut_hf_importable"] is False
    assert result["model_class"] == "FlowCutLlavaForConditionalGeneration"
    assert result["processor_class"] == "FlowCutLlavaProcessor"
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["placeholders"] == TARGET_NUM

    inputs = processor(images=Image.open(image_files[0]), text=PROMPT, return_tensors="pt")
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
