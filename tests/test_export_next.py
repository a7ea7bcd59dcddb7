"""Exporting LLaVA-NeXT: a FlowCut NeXT variant is written, verified, carded and pushed like a LLaVA-1.5 one."""

from __future__ import annotations

import filecmp
import json
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from conftest import PROMPT, greedy, run_clean_python, staged_env
from flowcut_hf import flowcut
from flowcut_hf.export.pipeline import ExportOptions, export
from flowcut_hf.registry import family_named
from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
from flowcut_hf.tiny import synthetic_image
from hub_server import local_hub  # noqa: F401  (pytest fixture)
from test_export import cli

BASE_ID = "llava-hf/llava-v1.6-mistral-7b-hf"
TARGET = 32


@pytest.fixture(scope="module")
def next_base(tmp_path_factory) -> Path:
    """A tiny llava-hf-format LLaVA-NeXT checkpoint, saved as stock transformers saves it."""
    folder = tmp_path_factory.mktemp("next_base") / "llava-next-tiny-hf"
    model, processor = build_tiny_llava_next(seed=7)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny NeXT base\n")
    return folder


@pytest.fixture(scope="module")
def next_export(next_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("next_exported")
    results = export(next_base, ExportOptions(target_nums=[TARGET], out=out, base_model=BASE_ID), log=lambda _: None)
    return results[0]


def test_next_variant_folder_holds_weights_config_code_processor_and_card(next_export, next_base):
    folder = next_export.plan.folder
    assert filecmp.cmp(folder / "model.safetensors", next_base / "model.safetensors", shallow=False)
    code_files = family_named("llava_next").remote_code_files()
    assert {p.name for p in folder.glob("*.py")} == {p.name for p in code_files}
    assert not (folder / "processing_flowcut_llava.py").exists() and not (folder / "modeling_flowcut_llava.py").exists()
    for code_file in code_files:
        assert (folder / code_file.name).read_bytes() == code_file.read_bytes()

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert config["flowcut_target_num"] == TARGET and config["flowcut_llm_prune_layer"] == 1
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith("FlowCutLlavaNextForConditionalGeneration")
    # The stock processor, unchanged: no remote code for it, the stock placeholder count.
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert "auto_map" not in processor_config and "flowcut_target_num" not in processor_config

    # Verification ran the remote code: 16 patches per crop of the 5-crop check image, 32 tokens after the LLM stage.
    assert next_export.verification["kept_per_crop"] == [[5, TARGET // 2]]
    assert next_export.verification["llm_kept"] == [TARGET]

    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == BASE_ID and card.data.license == "apache-2.0"
    assert "llava_next" in card.data.tags and card.data.flowcut["flowcut_llm_prune_layer"] == 1
    assert f"up to 2928 → {TARGET}" in card.text
    assert f"{TARGET // 2} patches of every anyres crop" in card.text and "stock `LlavaNextProcessor`" in card.text
    assert "Prefill FLOPs" in card.text and "5 anyres crops" in card.text


def test_next_variant_generates_as_remote_code_and_falls_back_to_stock(next_export, next_base, tmp_path):
    folder = next_export.plan.folder
    image_path = tmp_path / "wide.png"
    synthetic_image(3, size=(600, 800)).save(image_path)
    load = """
    import json, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    out = {}
    for trust in (True, False):
        model, info = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=trust, output_loading_info=True)
        processor = AutoProcessor.from_pretrained(FOLDER, trust_remote_code=trust)
        inputs = processor(images=Image.open(IMAGE), text=PROMPT, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[model.config.image_token_id])
        out[str(trust)] = {"class": type(model).__name__, "processor": type(processor).__name__,
                           "keys_ok": not info["missing_keys"] and not info["unexpected_keys"],
                           "tokens": generated[0, inputs["input_ids"].shape[1]:].tolist()}
    print(json.dumps(out))
    """
    header = f"FOLDER = {str(folder)!r}\nIMAGE = {str(image_path)!r}\nPROMPT = {PROMPT!r}\n"
    loaded = run_clean_python(header + textwrap.dedent(load), tmp_path)

    stock, processor = build_tiny_llava_next(seed=7)
    inputs = processor(images=Image.open(image_path), text=PROMPT, return_tensors="pt")
    stock_tokens = greedy(stock, inputs, max_new_tokens=4)[0, inputs["input_ids"].shape[1] :].tolist()
    pruned_tokens = greedy(flowcut(stock, target_num=TARGET), inputs, max_new_tokens=4)[0, inputs["input_ids"].shape[1] :].tolist()
    assert loaded["True"] == {"class": "FlowCutLlavaNextForConditionalGeneration", "processor": "LlavaNextProcessor",
                              "keys_ok": True, "tokens": pruned_tokens}
    assert loaded["False"] == {"class": "LlavaNextForConditionalGeneration", "processor": "LlavaNextProcessor",
                               "keys_ok": True, "tokens": stock_tokens}


def test_next_push_round_trip_through_the_hub(next_export, next_base, local_hub, tmp_path):  # noqa: F811
    env = local_hub.client_env(tmp_path / "hf_home")
    repo_id = "local-user/llava-next-tiny-flowcut32"
    result = cli("export", str(next_base), "--target-num", str(TARGET), "--out", str(next_export.plan.folder.parent),
                 "--push", repo_id, "--base-model", BASE_ID, env=env)
    assert result.returncode == 0, result.stderr
    assert "reusing it" in result.stdout, "the verified folder of the same source and settings is reused"
    assert local_hub.file_bytes(repo_id, "model.safetensors") == (next_base / "model.safetensors").read_bytes()
    load = """
    import json, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(REPO, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True)
    inputs = processor(images=Image.open(IMAGE), text=PROMPT, return_tensors="pt")
    output = model(**inputs)
    print(json.dumps({"class": type(model).__name__, "llm_kept": [len(k) for k in output.llm_keep_indices]}))
    """
    image_path = tmp_path / "wide.png"
    synthetic_image(4, size=(600, 800)).save(image_path)
    header = f"REPO = {repo_id!r}\nIMAGE = {str(image_path)!r}\nPROMPT = {PROMPT!r}\n"
    loaded = run_clean_python(header + textwrap.dedent(load), tmp_path, extra_env={**env, "HF_HUB_OFFLINE": "0"})
    assert loaded == {"class": "FlowCutLlavaNextForConditionalGeneration", "llm_kept": [TARGET]}


def test_next_dry_run_names_the_next_files(next_base, tmp_path):
    result = cli("export", str(next_base), "--target-num", "160", "--out", str(tmp_path / "out"), "--dry-run",
                 "--base-model", BASE_ID)
    assert result.returncode == 0, result.stderr
    assert "LLaVA-NeXT" in result.stdout and "modeling_flowcut_llava_next.py" in result.stdout
    assert "processing_flowcut_llava.py" not in result.stdout and "model.safetensors" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "target, message", [(1, "must be >= 2"), (2928, "prunes nothing"), (4000, "at most 2928 visual tokens")]
)
def test_next_targets_that_cannot_work_are_refused_up_front(next_base, tmp_path, target, message):
    with pytest.raises(ValueError, match=message):
        export(next_base, ExportOptions(target_nums=[target], out=tmp_path / "out", base_model=BASE_ID), log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_original_format_next_checkpoint_is_refused_with_the_hf_copy_named(tmp_path):
    source = tmp_path / "llava-v1.6-vicuna-7b"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "image_aspect_ratio": "anyres",
        "mm_patch_merge_type": "spatial_unpad", "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    }))
    with pytest.raises(ValueError, match="llava-hf/llava-v1.6"):
        export(source, ExportOptions(target_nums=[160], out=tmp_path / "out", base_model=BASE_ID), log=lambda _: None)


def test_export_with_relative_paths_from_another_folder(next_base, tmp_path):
    """Verification runs in subprocesses with their own working folder; relative paths must still reach the variant."""
    import shutil

    workdir = tmp_path / "user"
    shutil.copytree(next_base, workdir / "base")
    result = cli("export", "base", "--target-num", str(TARGET), "--out", "variants", "--base-model", BASE_ID, cwd=workdir,
                 env=staged_env())  # as users run it: the workers and the checks each start from the user's folder
    assert result.returncode == 0, result.stderr
    assert (workdir / "variants" / f"base-flowcut{TARGET}" / "model.safetensors").is_file()
