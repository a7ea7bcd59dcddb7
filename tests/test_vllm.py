"""The vLLM plug-in: which variants it serves pruned, which it refuses, and (in vLLM's environment) a tiny LLaVA-1.5
variant served end to end: the prompt holds the variant processor's ids, the greedy tokens are the transformers
variant's, on one rank and two, in float32 and bfloat16, offline and through `vllm serve`.

The tests that run vLLM need it installed (CI builds that environment with .ci/vllm-env, see the README); elsewhere
they are skipped and say so. vLLM's CPU backend needs a text head size of 32 or more, and vLLM 0.32 loads a LLaVA
vision tower only under the Hub's key names (``vision_tower.vision_model.*``), which a from-scratch transformers 5
save does not write: the test checkpoints are saved as real Hub checkpoints are
(:func:`flowcut_hf.families.llava.builtin.save_in_hub_layout`).
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import torch

from flowcut_hf.export.pipeline import ExportOptions, export
from flowcut_hf.families.llava.builtin import build_random_llava, save_in_hub_layout, tiny_llava_config
from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
from flowcut_hf.families.qwen2_vl.builtin import (
    build_random_qwen_vl,
    build_tiny_qwen_processor,
    build_tiny_qwen_tokenizer,
    qwen_token_ids,
    tiny_qwen_vl_config,
)
from flowcut_hf.registry import REGISTRY
from flowcut_hf.tiny import build_tiny_tokenizer, synthetic_image
from flowcut_hf.vllm_support import NotServableError, refuse_unservable, requested_pruning

REPO = Path(__file__).resolve().parents[1]
CHECKS = Path(__file__).with_name("vllm_checks.py")
PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"  # as in vllm_checks.py
MAX_NEW_TOKENS = 8
TARGET = 64
QUESTION = "What is in the picture?"
CHAT_MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed here; CI runs these tests in the environment .ci/vllm-env builds (see the README)",
)


# ------------------------------------------------------------------------------------ what is served, what refused


def llava_variant_config(**fields) -> dict:
    config = tiny_llava_config().to_dict()
    config.update({"flowcut_target_num": TARGET, "flowcut_enabled": True}, **fields)
    return config


def test_stock_checkpoints_and_switched_off_variants_run_as_the_stock_model():
    assert requested_pruning(tiny_llava_config()) is None
    assert requested_pruning(tiny_llava_config().to_dict()) is None
    assert requested_pruning(llava_variant_config(flowcut_enabled=False)) is None
    assert refuse_unservable(tiny_llava_config()) is None


def test_a_llava_flowcut_variant_is_served_pruned():
    assert requested_pruning(llava_variant_config()) == "flowcut"
    assert refuse_unservable(llava_variant_config()) == "flowcut"


def test_variants_that_prune_inside_the_language_model_are_refused_with_what_works():
    next_config = build_tiny_llava_next()[0].config.to_dict()
    next_config.update(flowcut_target_num=TARGET, flowcut_enabled=True)
    with pytest.raises(NotServableError) as refused:
        refuse_unservable(next_config)
    message = str(refused.value)
    assert "LLaVA-NeXT" in message and "flowcut" in message
    assert "trust_remote_code=True" in message and "vLLM serves these pruned: LLaVA-1.5 (flowcut)" in message
    with pytest.raises(NotServableError, match="LLaVA-1.5 variant pruned with vflowopt"):
        refuse_unservable(llava_variant_config(pruning_method="vflowopt", vflowopt_enabled=True))


def qwen_variant_config(version: str = "2", **fields) -> dict:
    config = tiny_qwen_vl_config(version).to_dict()
    config.update({"flowcut_retain_ratio": 0.25, "flowcut_target_num": None, "flowcut_enabled": True}, **fields)
    return config


def test_a_qwen_variant_is_served_by_its_vision_stage_alone_when_its_config_says_so():
    assert refuse_unservable(qwen_variant_config(flowcut_llm_stage=False)) == "flowcut"
    assert refuse_unservable(tiny_qwen_vl_config("2")) is None
    with pytest.raises(NotServableError) as refused:  # the paper's schedule, as exported
        refuse_unservable(qwen_variant_config())
    message = str(refused.value)
    assert "Qwen2-VL variant pruned with flowcut in the vision encoder and again inside the language model" in message
    assert """--hf-overrides '{"flowcut_llm_stage": false}'""" in message
    assert "from_pretrained(..., trust_remote_code=True, flowcut_llm_stage=False)" in message
    assert refuse_unservable(qwen_variant_config("2.5", flowcut_llm_stage=False)) == "flowcut"
    with pytest.raises(NotServableError, match="Qwen2.5-VL variant pruned with flowcut in the vision encoder and again"):
        refuse_unservable(qwen_variant_config("2.5"))
    with pytest.raises(NotServableError, match=r"Qwen2-VL \(flowcut, vision stage only\), Qwen2\.5-VL \(flowcut, vision"):
        refuse_unservable(llava_variant_config(pruning_method="vflowopt", vflowopt_enabled=True))


def test_the_plugin_is_an_installed_vllm_general_plugin_covering_every_family():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["vllm.general_plugins"]
    assert declared == {"flowcut": "flowcut_hf.vllm_plugin:register"}
    installed = {e.name: e.value for e in importlib.metadata.entry_points(group="vllm.general_plugins")}
    assert installed.get("flowcut") == declared["flowcut"], "reinstall flowcut-hf (pip install -e .) to register it"
    for entry in REGISTRY:  # a family vLLM would otherwise serve silently unpruned
        assert entry.vllm_model, entry.name
        module, _, _ = entry.vllm_model.partition(":")
        assert importlib.util.find_spec(module.rpartition(".")[0]) is not None
        assert (REPO / (module.replace("flowcut_hf.", "flowcut_hf/", 1).replace(".", "/") + ".py")).is_file()
        assert set(entry.vllm_methods) <= set(entry.methods)


# ------------------------------------------------------------------------------------------------ vLLM end to end


@pytest.fixture(scope="module")
def vllm_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny LLaVA-1.5 base in the Hub layout with a text head size vLLM's CPU attention takes (32), its flowcut64
    variant, and two variants vLLM must refuse (FlowCut on LLaVA-NeXT, VFlowOpt on LLaVA-1.5)."""
    root = tmp_path_factory.mktemp("vllm")
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(vocab_size=len(tokenizer), image_token_index=len(tokenizer) - 1)
    config.text_config.num_attention_heads, config.text_config.num_key_value_heads = 2, 1
    config.text_config.head_dim = config.text_config.hidden_size // 2
    base = save_in_hub_layout(*build_random_llava(config, tokenizer, seed=0), root / "llava-tiny")
    quiet = {"log": lambda _: None}
    variant = export(base, ExportOptions(target_nums=[TARGET], out=root / "out", base_model="org/llava-tiny"), **quiet)
    vflowopt = export(base, ExportOptions(target_nums=[], vflowopt_presets=["10%"], out=root / "out", base_model="org/llava-tiny"), **quiet)
    next_base = root / "next-tiny"
    model, processor = build_tiny_llava_next(seed=0)
    model.save_pretrained(next_base)
    processor.save_pretrained(next_base)
    next_variant = export(next_base, ExportOptions(target_nums=[TARGET], out=root / "out", base_model="org/next"), **quiet)
    return {
        "base": base, "variant": variant[0].plan.folder, "vflowopt": vflowopt[0].plan.folder,
        "next_variant": next_variant[0].plan.folder,
    }


QWEN_PROMPT = (  # as in vllm_checks.py
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the picture?<|im_end|>\n<|im_start|>assistant\n"
)
VISION_STAGE_ONLY = {"flowcut_llm_stage": False}


def save_qwen_checkpoints(root: Path, version: str) -> dict[str, Path]:
    """A tiny Qwen2-VL (``version="2"``) or Qwen2.5-VL base with a text head size vLLM's CPU attention takes (32) and
    position-sensitive attention (its q/k scaled up, so that a token at a wrong M-RoPE position changes the
    log-probabilities), and its variant keeping 1/4 of each image's units, exported as the paper runs it (with the LLM
    stage)."""
    tokenizer = build_tiny_qwen_tokenizer()
    config = tiny_qwen_vl_config(version, vocab_size=len(tokenizer), **qwen_token_ids(tokenizer))
    config.text_config.num_attention_heads, config.text_config.num_key_value_heads = 2, 1
    config.text_config.head_dim = 32
    config.text_config.rope_parameters["mrope_section"] = [4, 6, 6]  # half the head size, split as Qwen splits it
    model = build_random_qwen_vl(config, tokenizer, seed=0)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    base = root / f"qwen{version}-vl-tiny"
    model.save_pretrained(base)
    processor = build_tiny_qwen_processor(tokenizer, version)
    processor.tokenizer.save_pretrained(base)
    processor.image_processor.save_pretrained(base)
    processor_class = "Qwen2VLProcessor" if version == "2" else "Qwen2_5_VLProcessor"
    (base / "processor_config.json").write_text(json.dumps({"processor_class": processor_class}) + "\n")
    options = ExportOptions(target_nums=[], retain_ratios=[0.25], out=root / "out", base_model=f"org/{base.name}")
    variant = export(base, options, log=lambda _: None)
    return {"base": base, "variant": variant[0].plan.folder}


@pytest.fixture(scope="module")
def qwen_checkpoints(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("vllm_qwen")
    return {version: save_qwen_checkpoints(root / version, version) for version in ("2", "2.5")}


def pruned_prompt(prompt_ids: list[int], image_token_id: int, kept: int) -> list[int]:
    """The prompt with its (one) image's placeholder run shortened to ``kept``."""
    first, units = prompt_ids.index(image_token_id), prompt_ids.count(image_token_id)
    return prompt_ids[: first + kept] + prompt_ids[first + units :]


def run_checks(*args: str, env: dict | None = None, timeout: int = 600) -> list[dict]:
    done = subprocess.run(
        [sys.executable, str(CHECKS), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]
    return [json.loads(line) for line in lines]


def transformers_greedy(
    folder: Path, dtype: torch.dtype = torch.float32, chat: bool = False, prompt: str = PROMPT, **settings
) -> dict:
    """What the checkpoint in ``folder`` gives through transformers (its remote code, if any, with config ``settings``):
    prompt ids, greedy tokens and their log-probabilities, for ``prompt`` or (``chat``) the chat template's prompt of
    :data:`CHAT_MESSAGES`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=dtype, **settings).eval()
    prompt = processor.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True) if chat else prompt
    inputs = processor(text=prompt, images=synthetic_image(seed=1), return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0,
            output_scores=True, return_dict_in_generate=True,
        )
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:]
    logprobs = [score[0].float().log_softmax(-1)[token].item() for score, token in zip(out.scores, tokens)]
    return {"prompt_token_ids": inputs["input_ids"][0].tolist(), "token_ids": tokens.tolist(), "logprobs": logprobs}


@needs_vllm
def test_flowcut_in_vllms_clip_selects_the_tokens_the_remote_code_selects():
    for result in run_checks("selection")[0]:
        assert result["same_kept"] and result["same_schedule"], result
        assert result["kept"] == result["target_num"] and result["schedule"][-1] == result["target_num"] + 1
        assert result["max_feature_difference"] < 1e-4


@needs_vllm
def test_vllm_serves_the_variant_pruned_as_transformers_runs_it_and_a_stock_checkpoint_unchanged(vllm_checkpoints):
    served = run_checks("generate", str(vllm_checkpoints["variant"]), str(vllm_checkpoints["base"]))
    variant, stock = served
    assert "error" not in variant and "error" not in stock, served
    expected = transformers_greedy(vllm_checkpoints["variant"])
    assert variant["prompt_token_ids"] == expected["prompt_token_ids"]
    image_token_id = json.loads((vllm_checkpoints["variant"] / "config.json").read_text())["image_token_index"]
    assert variant["prompt_token_ids"].count(image_token_id) == TARGET
    assert variant["token_ids"] == expected["token_ids"]
    assert variant["logprobs"] == pytest.approx(expected["logprobs"], abs=2e-3)

    unpruned = transformers_greedy(vllm_checkpoints["base"])
    assert stock["prompt_token_ids"] == unpruned["prompt_token_ids"]
    assert len(stock["prompt_token_ids"]) == len(variant["prompt_token_ids"]) + 576 - TARGET
    assert stock["token_ids"] == unpruned["token_ids"]
    assert stock["logprobs"] == pytest.approx(unpruned["logprobs"], abs=2e-3)
    # The two differ: were the variant served unpruned (or the stock pruned), the checks above would fail.
    assert variant["logprobs"] != pytest.approx(stock["logprobs"], abs=2e-3)


@needs_vllm
def test_vllm_refuses_at_load_a_variant_it_cannot_serve_pruned(vllm_checkpoints):
    refused = run_checks("generate", str(vllm_checkpoints["next_variant"]), str(vllm_checkpoints["vflowopt"]))
    assert [sorted(r) for r in refused] == [["error", "model"]] * 2, refused
    next_error, vflowopt_error = (r["error"] for r in refused)
    assert next_error.startswith("NotServableError: flowcut-hf: this checkpoint is a LLaVA-NeXT variant pruned with flowcut")
    assert "LLaVA-1.5 variant pruned with vflowopt" in vflowopt_error
    assert all("vLLM serves these pruned: LLaVA-1.5 (flowcut)" in e for e in (next_error, vflowopt_error))


@needs_vllm
def test_vllm_tensor_parallel_variant_gives_the_same_tokens(vllm_checkpoints):
    # Two CPU ranks, one core each (vLLM's CPU backend binds its OpenMP threads with this variable).
    served = run_checks("generate", str(vllm_checkpoints["variant"]), "--tp", "2", env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    expected = transformers_greedy(vllm_checkpoints["variant"])
    assert served[0]["prompt_token_ids"] == expected["prompt_token_ids"]
    assert served[0]["token_ids"] == expected["token_ids"]
    assert served[0]["logprobs"] == pytest.approx(expected["logprobs"], abs=2e-3)


@needs_vllm
def test_vllm_serves_the_variant_in_bfloat16(vllm_checkpoints):
    served = run_checks("generate", str(vllm_checkpoints["variant"]), "--dtype", "bfloat16")[0]
    expected = transformers_greedy(vllm_checkpoints["variant"], torch.bfloat16)
    assert served["prompt_token_ids"] == expected["prompt_token_ids"]
    assert len(served["token_ids"]) == MAX_NEW_TOKENS
    # bfloat16 kernels differ between the two engines, so the tokens may part after a while; the first agrees.
    assert served["token_ids"][0] == expected["token_ids"][0]


@needs_vllm
def test_vllm_serves_a_qwen2_vl_variants_vision_stage_as_transformers_runs_it(qwen_checkpoints):
    """The variant with --hf-overrides '{"flowcut_llm_stage": false}': the retained placeholders per image, each kept
    unit at its true M-RoPE position, the greedy tokens and log-probabilities of transformers with the same setting, on
    one rank and two; without the override it is refused, and the stock checkpoint runs unchanged."""
    folders = qwen_checkpoints["2"]
    variant, base = str(folders["variant"]), str(folders["base"])
    overrides = ("--family", "qwen2_vl", "--hf-overrides", json.dumps(VISION_STAGE_ONLY))
    served, = run_checks("generate", variant, *overrides)
    two_ranks, = run_checks("generate", variant, "--tp", "2", *overrides, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    refused, stock = run_checks("generate", variant, base, "--family", "qwen2_vl")
    expected = transformers_greedy(folders["variant"], prompt=QWEN_PROMPT, **VISION_STAGE_ONLY)
    image_pad = json.loads((folders["variant"] / "config.json").read_text())["image_token_id"]
    kept = round(0.25 * expected["prompt_token_ids"].count(image_pad))
    for result in (served, two_ranks):
        assert result["prompt_token_ids"] == pruned_prompt(expected["prompt_token_ids"], image_pad, kept)
        assert result["token_ids"] == expected["token_ids"]
        assert result["logprobs"] == pytest.approx(expected["logprobs"], abs=1e-4)
    assert refused["error"].startswith("NotServableError: flowcut-hf: this checkpoint is a Qwen2-VL variant")
    assert "--hf-overrides" in refused["error"]
    unpruned = transformers_greedy(folders["base"], prompt=QWEN_PROMPT)
    assert stock["prompt_token_ids"] == unpruned["prompt_token_ids"] and stock["token_ids"] == unpruned["token_ids"]
    assert stock["logprobs"] == pytest.approx(unpruned["logprobs"], abs=1e-4)


@needs_vllm
def test_vllm_serves_a_qwen2_5_vl_variants_vision_stage_across_windows_and_ranks(qwen_checkpoints):
    """Qwen2.5-VL: window attention recounted as units drop, and a q/k/v projection sharded by heads over two ranks."""
    folders = qwen_checkpoints["2.5"]
    overrides = ("--family", "qwen2_vl", "--hf-overrides", json.dumps(VISION_STAGE_ONLY))
    served, = run_checks("generate", str(folders["variant"]), "--tp", "2", *overrides, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    expected = transformers_greedy(folders["variant"], prompt=QWEN_PROMPT, **VISION_STAGE_ONLY)
    image_pad = json.loads((folders["variant"] / "config.json").read_text())["image_token_id"]
    kept = round(0.25 * expected["prompt_token_ids"].count(image_pad))
    assert served["prompt_token_ids"] == pruned_prompt(expected["prompt_token_ids"], image_pad, kept)
    assert served["token_ids"] == expected["token_ids"]
    assert served["logprobs"] == pytest.approx(expected["logprobs"], abs=1e-4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@needs_vllm
def test_vllm_serve_openai_server_prunes_the_variant(vllm_checkpoints, tmp_path):
    folder = vllm_checkpoints["variant"]
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    # `vllm serve` itself, as a module: vllm-cpu 0.32's `vllm` script asks for the version of a distribution named
    # "vllm" and fails under its own name, vllm-cpu (on a GPU, `vllm serve` runs this same server).
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--port", str(port), "--host", "127.0.0.1",
         "--max-model-len", "1024", "--enforce-eager", "--dtype", "float32", "--limit-mm-per-prompt", '{"image": 1}'],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "vllm serve did not come up"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        png = io.BytesIO()
        synthetic_image(seed=1).save(png, format="PNG")
        request = {
            "model": str(folder), "max_tokens": MAX_NEW_TOKENS, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}},
                {"type": "text", "text": QUESTION},
            ]}],
        }
        reply = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        ), timeout=300)
        answer = json.load(reply)
    finally:
        server.terminate()
        server.wait(timeout=60)
    expected = transformers_greedy(folder, chat=True)
    assert answer["prompt_token_ids"] == expected["prompt_token_ids"]  # the variant's 64 placeholders, not 576
    assert answer["usage"]["prompt_tokens"] == len(expected["prompt_token_ids"])
    assert answer["choices"][0]["token_ids"] == expected["token_ids"]


# ------------------------------------------------------------------------------------------ bench --engine vllm


def test_vllm_bench_refuses_what_vllm_does_not_serve_pruned_before_anything_loads():
    from flowcut_hf.bench import run_vllm_bench

    with pytest.raises(ValueError, match="vLLM does not serve LLaVA-NeXT pruned.*runs LLaVA-1.5"):
        run_vllm_bench("builtin", family="llava-next")
    with pytest.raises(ValueError, match="no oracle for Qwen2-VL yet.*runs LLaVA-1.5"):
        run_vllm_bench("builtin", family="qwen2-vl")


@needs_vllm
def test_vllm_bench_refuses_a_model_whose_heads_vllms_cpu_attention_cannot_take():
    from flowcut_hf.bench import run_vllm_bench

    with pytest.raises(ValueError, match="heads of 16.*vLLM's CPU attention needs 32"):
        run_vllm_bench("tiny", family="llava")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_bench_without_vllm_says_how_to_install_it_before_anything_loads():
    from flowcut_hf.bench import run_vllm_bench

    with pytest.raises(ValueError, match=r"needs vLLM installed beside flowcut-hf: pip install -e \"\.\[vllm\]\".*\.ci/vllm-env"):
        run_vllm_bench("builtin", family="llava")


def test_vllm_bench_checkpoints_share_the_weights_and_differ_only_in_their_config(tmp_path):
    from flowcut_hf.registry import family_named

    tokenizer = build_tiny_tokenizer()
    source = save_in_hub_layout(*build_random_llava(tiny_llava_config(vocab_size=len(tokenizer)), tokenizer), tmp_path / "src")
    plan = family_named("llava").vllm_bench_plan(tmp_path / "bench", str(source), [64, 128], requests=3)
    assert [row.name for row in plan.rows] == ["stock", "flowcut@64", "oracle@64", "flowcut@128", "oracle@128"]
    configs = {row.name: json.loads((row.folder / "config.json").read_text()) for row in plan.rows}
    assert requested_pruning(configs["stock"]) is None
    assert configs["flowcut@128"]["flowcut_target_num"] == 128 and configs["oracle@128"]["flowcut_target_num"] == 128
    assert configs["flowcut@64"]["architectures"] == ["LlavaForConditionalGeneration"]
    assert configs["oracle@64"]["architectures"] == ["UniformOracleLlavaForVllm"]
    for row in plan.rows:
        weights = row.folder / "model.safetensors"
        assert weights.is_symlink() and weights.resolve() == (source / "model.safetensors").resolve()
    assert len(plan.requests) == 3 and all(r["prompt"].count("<image>") == 1 for r in plan.requests)


@needs_vllm
def test_vllm_bench_serves_stock_variant_and_oracle_interleaved(vllm_checkpoints):
    from flowcut_hf.bench import run_vllm_bench
    from flowcut_hf.vllm_bench import format_vllm_table

    report = run_vllm_bench(
        str(vllm_checkpoints["base"]), target_nums=[TARGET], requests=2, repeats=1, warmup=0, max_tokens=2,
        dtype="float32", progress=False,
    )
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["stock", f"flowcut@{TARGET}", f"oracle@{TARGET}"]
    # The variant and the oracle send the LLM the same number of tokens per image: 576 - 64 fewer than the stock.
    assert rows[f"flowcut@{TARGET}"]["prompt_tokens"] == rows[f"oracle@{TARGET}"]["prompt_tokens"]
    assert rows["stock"]["prompt_tokens"] - rows[f"flowcut@{TARGET}"]["prompt_tokens"] == 576 - TARGET
    # The KV cache a request holds follows its prompt: float32 here, 2 x layers x KV heads x head size x 4 bytes a token.
    text = json.loads((vllm_checkpoints["base"] / "config.json").read_text())["text_config"]
    per_token = 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * text["head_dim"] * 4
    for row in rows.values():
        assert row["kv_mib_per_request"] * 2**20 == row["prompt_tokens"] * per_token
    for row in rows.values():
        assert row["requests_per_s"] > 0 and len(row["rps_samples"]) == 1
        assert row["ttft_ms"] > 0 and set(row["parts_ms"]) == {"ttft", "intake", "queue", "prefill", "decode"}
    assert report["targets"]["flowcut64_throughput_over_oracle64"]["value"] == rows[f"flowcut@{TARGET}"]["throughput_over_oracle"]
    assert "oracle@64" in format_vllm_table(report)
