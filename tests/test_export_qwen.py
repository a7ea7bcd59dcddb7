"""Exporting Qwen2-VL / Qwen2.5-VL: a variant set by a retain ratio (or a count) is written, verified, carded and
pushed; its processor files are the stock ones, byte for byte."""

from __future__ import annotations

import filecmp
import json
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import run_clean_python
from flowcut_hf.export.pipeline import ExportOptions, export
from flowcut_hf.registry import family_named
from flowcut_hf.families.qwen2_vl.builtin import build_tiny_qwen_vl
from hub_server import local_hub  # noqa: F401  (pytest fixture)
from test_export import cli, refusal

BASE_ID = "Qwen/Qwen2-VL-7B-Instruct"


def save_stock_qwen(folder: Path, version: str, seed: int) -> Path:
    """A tiny Qwen checkpoint laid out as the Hub repos are: weights, config, tokenizer, image processor, processor
    config (the tiny processor has no video processor, which needs torchvision, so its pieces are saved one by one)."""
    model, processor = build_tiny_qwen_vl(version, seed=seed)
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    stock_class = "Qwen2VLProcessor" if version == "2" else "Qwen2_5_VLProcessor"
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": stock_class}) + "\n")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny Qwen base\n")
    return folder


@pytest.fixture(scope="module")
def qwen_base(tmp_path_factory) -> Path:
    return save_stock_qwen(tmp_path_factory.mktemp("qwen_base") / "Qwen2-VL-tiny", "2", seed=7)


@pytest.fixture(scope="module")
def qwen_exports(qwen_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen_exported")
    options = ExportOptions(target_nums=[10], retain_ratios=[0.25], out=out, base_model=BASE_ID)
    return {result.plan.name: result for result in export(qwen_base, options, log=lambda _: None)}


def test_ratio_and_count_variants_hold_weights_config_code_stock_processor_and_card(qwen_exports, qwen_base):
    assert sorted(qwen_exports) == ["Qwen2-VL-tiny-flowcut0.25", "Qwen2-VL-tiny-flowcut10"]
    ratio, count = qwen_exports["Qwen2-VL-tiny-flowcut0.25"], qwen_exports["Qwen2-VL-tiny-flowcut10"]
    folder = ratio.plan.folder
    assert filecmp.cmp(folder / "model.safetensors", qwen_base / "model.safetensors", shallow=False)
    code_files = family_named("qwen2_vl").remote_code_files()
    assert {p.name for p in folder.glob("*.py")} == {p.name for p in code_files}
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        assert (folder / name).read_bytes() == (qwen_base / name).read_bytes(), name

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert config["flowcut_retain_ratio"] == 0.25 and config["flowcut_target_num"] is None
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith("FlowCutQwen2VLForConditionalGeneration")
    count_config = json.loads((count.plan.folder / "config.json").read_text())
    assert count_config["flowcut_target_num"] == 10

    # Verification ran the remote code on the check image and matched the library's model on the source weights.
    t, h, w = ratio.verification["grid_thw"]
    units = t * h * w // 4
    target = int(0.25 * units + 0.5)
    assert ratio.verification["llm_kept"] == [target] and ratio.verification["kept"] == [min(2 * target, units)]
    assert count.verification["llm_kept"] == [10] and count.verification["kept"] == [20]

    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == BASE_ID and card.data.license == "apache-2.0" and "qwen2_vl" in card.data.tags
    assert card.data.flowcut["flowcut_retain_ratio"] == 0.25
    assert "25.0% of its visual tokens" in card.text and "whole 2x2 merge units" in card.text
    assert "Prefill FLOPs" in card.text and "M-RoPE" in card.text
    count_card = ModelCard.load(count.plan.folder / "README.md")
    assert "**10 visual tokens**" in count_card.text


def test_qwen2_5_variant_pushes_and_loads_from_the_hub_as_remote_code(local_hub, tmp_path):  # noqa: F811
    base = save_stock_qwen(tmp_path / "Qwen2.5-VL-tiny", "2.5", seed=3)
    env = local_hub.client_env(tmp_path / "hf_home")
    repo_id = "local-user/qwen2.5-vl-tiny-flowcut0.111"
    result = cli("export", str(base), "--retain-ratio", "0.111", "--out", str(tmp_path / "out"), "--push", repo_id,
                 "--base-model", "Qwen/Qwen2.5-VL-7B-Instruct", env=env)
    assert result.returncode == 0, result.stderr
    assert local_hub.file_bytes(repo_id, "model.safetensors") == (base / "model.safetensors").read_bytes()
    load = """
    import json
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(REPO, trust_remote_code=True)
    print(json.dumps({"class": type(model).__name__, "ratio": model.config.flowcut_retain_ratio}))
    """
    loaded = run_clean_python(f"REPO = {repo_id!r}\n" + textwrap.dedent(load), tmp_path, extra_env={**env, "HF_HUB_OFFLINE": "0"})
    assert loaded == {"class": "FlowCutQwen2_5_VLForConditionalGeneration", "ratio": 0.111}


@pytest.mark.parametrize(
    "flags, message",
    [(["--retain-ratio", "1.0"], "prunes nothing"), (["--retain-ratio", "0"], "--retain-ratio: must be the share"),
     (["--retain-ratio", "0.2", "--retain-ratio", "0.2"], "given twice"), ([], "--target-num or --retain-ratio")],
)
def test_amounts_that_cannot_work_are_refused_up_front(qwen_base, tmp_path, capsys, flags, message):
    code, error = refusal(capsys, "export", str(qwen_base), *flags, "--out", str(tmp_path / "out"), "--base-model", BASE_ID)
    assert code == 2 and message in error
    assert not (tmp_path / "out").exists()


def test_a_ratio_is_refused_for_llava_families(tmp_path):
    from flowcut_hf.families.llava.builtin import build_tiny_llava

    model, processor = build_tiny_llava(seed=0)
    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    with pytest.raises(ValueError, match="use --target-num"):
        export(tmp_path / "llava", ExportOptions(target_nums=[], retain_ratios=[0.2], out=tmp_path / "out",
                                                 base_model="llava-hf/llava-1.5-7b-hf"), log=lambda _: None)


def test_dry_run_names_the_ratio_and_the_qwen_files(qwen_base, tmp_path):
    result = cli("export", str(qwen_base), "--retain-ratio", "0.111", "--out", str(tmp_path / "out"), "--dry-run",
                 "--base-model", BASE_ID)
    assert result.returncode == 0, result.stderr
    assert "Qwen2-VL" in result.stdout and "flowcut_retain_ratio=0.111" in result.stdout
    assert "modeling_flowcut_qwen2_vl.py" in result.stdout and "stock processor's files, copied" in result.stdout
    assert not (tmp_path / "out").exists()
