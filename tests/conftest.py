"""Shared fixtures: tiny random LLaVA-1.5-shaped models (real architectures and geometry) and clean subprocesses."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

# Before transformers is imported: remote code loaded in-process goes to a throwaway module cache, and nothing
# here may reach the real Hub.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="flowcut-hf-modules-")
# A test run leaves nothing behind in the temporary folder (pytest's own tmp_path folders are pytest's to rotate).
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `flowcut-hf export` runs in one process here, as the Python API does, which saves two interpreter starts per export;
# the tests of the three-process command (its memory promise, failures, push, relative paths) use staged_env().
os.environ.setdefault("FLOWCUT_EXPORT_ONE_PROCESS", "1")
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flowcut_hf import flowcut, flowcut_processor
from flowcut_hf.families.llava.builtin import build_tiny_llava
from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
from flowcut_hf.tiny import synthetic_image

TARGET_NUM = 64


def staged_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a `flowcut-hf export` that runs as users run it, in three processes."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k != "FLOWCUT_EXPORT_ONE_PROCESS"}

PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"

# Makes `import flowcut_hf` fail inside a subprocess, so remote code that leans on the installed package is caught.
BLOCK_FLOWCUT_HF = textwrap.dedent(
    """
    import importlib.abc, sys
    class _BlockFlowcutHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "flowcut_hf" or name.startswith("flowcut_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, _BlockFlowcutHf())
    """
)


@pytest.fixture(scope="session")
def tiny_stock():
    """(stock model, stock processor); treat as read-only."""
    return build_tiny_llava(seed=0)


def fresh_flowcut_model(target_num: int = TARGET_NUM, seed: int = 0):
    model, processor = build_tiny_llava(seed=seed)
    return flowcut(model, target_num=target_num), flowcut_processor(processor, target_num=target_num)


@pytest.fixture(scope="session")
def tiny_flowcut():
    return fresh_flowcut_model()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for seed in range(2):
        path = folder / f"image{seed}.png"
        synthetic_image(seed, size=(300 + 20 * seed, 336)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def saved_flowcut_folder(tiny_flowcut, tmp_path_factory):
    model, processor = tiny_flowcut
    folder = tmp_path_factory.mktemp("flowcut64")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


NEXT_TARGET_NUM = 32
# (height, width): a 2x2 grid with padding rows, a 3x1 grid, and a portrait 1x2 grid.
NEXT_IMAGE_SIZES = [(600, 800), (330, 1000), (500, 300)]


def next_images() -> list:
    return [synthetic_image(seed, size=size) for seed, size in enumerate(NEXT_IMAGE_SIZES)]


def fresh_flowcut_next_model(target_num: int = NEXT_TARGET_NUM, seed: int = 0, **settings):
    model, processor = build_tiny_llava_next(seed=seed)
    return flowcut(model, target_num=target_num, **settings), processor


@pytest.fixture(scope="session")
def tiny_next_stock():
    """(stock LLaVA-NeXT model, stock processor); treat as read-only."""
    return build_tiny_llava_next(seed=0)


@pytest.fixture(scope="session")
def tiny_next_flowcut():
    """(FlowCut LLaVA-NeXT model at NEXT_TARGET_NUM, the stock processor); same weights as tiny_next_stock."""
    return fresh_flowcut_next_model()


@pytest.fixture(scope="session")
def saved_next_folder(tiny_next_flowcut, tmp_path_factory):
    model, processor = tiny_next_flowcut
    folder = tmp_path_factory.mktemp("flowcut_next32")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def weightless_attention():
    """Registers an attention backend that, like flash attention, never returns attention weights.

    Yields ``(name, query_lengths)``: the name to set as ``_attn_implementation`` and the query length of every call.
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    query_lengths: list[int] = []

    def attention(module, query, key, value, attention_mask, **kwargs):
        query_lengths.append(query.shape[2])
        output, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
        return output, None

    AttentionInterface.register("flowcut_test_weightless", attention)
    return "flowcut_test_weightless", query_lengths


def assert_one_trainer_step_changes_the_projector(model, example: dict, tmp_path) -> None:
    """One ``Trainer`` step on a batch of two copies of ``example`` (unbatched tensors, labels included) runs, gives a
    finite loss and moves the projector's weights."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class TwoExamples(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return example

    projector = model.model.multi_modal_projector.linear_1.weight
    before = projector.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False)
    result = Trainer(model=model, args=args, train_dataset=TwoExamples()).train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, before)


def run_clean_python(code: str, tmp_path: Path, extra_env: dict | None = None, timeout: int = 300) -> dict:
    """Runs ``code`` with ``python -P`` from an unrelated folder, an empty module cache and flowcut_hf blocked.

    The code must print one JSON object on its last stdout line; it is returned.
    """
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(
        HF_MODULES_CACHE=str(tmp_path / "modules_cache"),
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"),
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra_env or {})
    script = BLOCK_FLOWCUT_HF + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-P", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stderr[-6000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


LOAD_SAVED_FOLDER = """
import json, torch
from transformers import AutoModelForImageTextToText
model, info = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=TRUST, output_loading_info=True)
inputs = torch.load(FOLDER + "/inputs.pt")
with torch.no_grad():
    logits = model(**inputs).logits
torch.save(logits, FOLDER + f"/logits_{TRUST}.pt")
print(json.dumps({"class": type(model).__name__, "method": getattr(model.config, "pruning_method", None),
                  "keys_ok": not info["missing_keys"] and not info["unexpected_keys"], "length": logits.shape[1]}))
"""


def load_saved_folder(folder: Path, inputs: dict, trust: bool, tmp_path: Path) -> tuple[dict, torch.Tensor]:
    """Loads a saved folder with the Auto class in a clean process (``trust_remote_code=trust``) and runs ``inputs``;
    returns what it loaded (class, pruning method, whether every key matched, logits length) and the logits."""
    torch.save(dict(inputs), folder / "inputs.pt")
    result = run_clean_python(f"FOLDER = {str(folder)!r}\nTRUST = {trust!r}\n" + LOAD_SAVED_FOLDER, tmp_path)
    return result, torch.load(folder / f"logits_{trust}.pt")


def greedy(model, inputs, max_new_tokens: int = 6, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            suppress_tokens=[model.config.image_token_id],
            **kwargs,
        )


# What CI also runs in vLLM's environment, on the transformers vLLM pins (5.19, flowcut-hf's oldest supported release):
# the remote code (every family's model tests and the authors' reference cases), the exporter, and vLLM itself.
# `pytest -m oldest_transformers` selects them (README: "Serving with vLLM").
OLDEST_TRANSFORMERS_MODULES = {
    "test_vllm", "test_remote_code", "test_reference", "test_next_reference", "test_flowcut_model", "test_next_model",
    "test_qwen_model", "test_onevision_model", "test_vflowopt_llava", "test_vflowopt_llm_stage", "test_core",
    "test_export_next", "test_export_qwen", "test_export_onevision", "test_export_vflowopt", "test_convert",
}
# From test_export.py, whose other tests exercise the Hub client and the command line more than transformers.
OLDEST_TRANSFORMERS_EXPORT_TESTS = {
    "test_each_variant_is_a_complete_folder", "test_exported_folder_generates_as_remote_code",
    "test_original_llava_source_is_converted_and_verified", "test_failed_verification_stops_before_push_and_leaves_no_folder",
    "test_dry_run_writes_and_pushes_nothing", "test_full_strategy_model_exports_and_verifies",
    "test_verification_compares_the_remote_code_with_the_library_on_the_same_loaded_weights",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__
        if module in OLDEST_TRANSFORMERS_MODULES or (module == "test_export" and item.originalname in OLDEST_TRANSFORMERS_EXPORT_TESTS):
            item.add_marker(pytest.mark.oldest_transformers)
