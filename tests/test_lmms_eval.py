"""lmms-eval runs flowcut-hf models through the `lmms_eval.models` entry point, and its results file becomes the
card's model-index. Offline: a tiny random model and a tiny local task (four images and questions in a JSON file)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from flowcut_hf.families.llava.builtin import build_tiny_llava

from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next

from flowcut_hf.tiny import synthetic_image

try:
    import lmms_eval  # noqa: F401  (only its presence is checked here)
except ImportError as error:  # the test setup installs it (README, .ci/run); a missing install must fail loudly
    raise ImportError('lmms-eval is not installed: pip install -e ".[test]" && pip install --no-deps "lmms-eval>=0.7,<0.8"') from error

from lmms_eval.api.instance import Instance  # noqa: E402

from flowcut_hf.lmms_eval_plugin import FlowCutLMMS  # noqa: E402

BIN = Path(sys.executable).parent
TASK_UTILS = '''
from PIL import Image
def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
def doc_to_text(doc):
    return doc["question"]
def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
'''


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A local lmms-eval task: images of two sizes, questions, answers; loaded with the datasets "json" builder."""
    folder = tmp_path_factory.mktemp("task")
    docs = []
    for index in range(4):
        image = folder / f"image{index}.png"
        synthetic_image(index, size=(48, 64) if index % 2 else (80, 60)).save(image)
        docs.append({"id": index, "image": str(image), "question": f"What is in picture {index}?", "answer": "a cat"})
    (folder / "data.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (folder / "utils.py").write_text(TASK_UTILS)
    (folder / "flowcut_tiny.yaml").write_text(textwrap.dedent(f"""\
        task: flowcut_tiny
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / "data.jsonl"}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 4
        process_results: !function utils.process_results
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
        """))
    return folder, docs


def test_lmms_eval_runs_a_flowcut_model_and_its_results_become_the_card(tiny_task, tmp_path):
    task_folder, docs = tiny_task
    base = tmp_path / "llava-tiny"
    model, processor = build_tiny_llava(seed=0)
    model.save_pretrained(base)
    processor.save_pretrained(base)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "lmms-out"
    run = subprocess.run(
        [str(BIN / "lmms-eval"), "--model", "flowcut", "--model_args", f"pretrained={base},method=flowcut,target_num=32",
         "--tasks", "flowcut_tiny", "--include_path", str(task_folder), "--batch_size", "2", "--device", "cpu",
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results_file,) = out.glob("*/*_results.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model_backend"].startswith("flowcut_hf.lmms_eval_plugin.FlowCutLMMS")
    assert results["n-samples"]["flowcut_tiny"]["effective"] == len(docs)
    (samples_file,) = out.glob("*/*_samples_flowcut_tiny.jsonl")
    assert len(samples_file.read_text().splitlines()) == len(docs)

    # The results files of two runs (the second stands for another task's run into the same folder) go straight into
    # the exporter, as the README's *_results.json glob gives them, and become one model-index in the card.
    second = json.loads(json.dumps(results).replace("flowcut_tiny", "flowcut_tiny_again"))
    (results_file.parent / "20260101_000000_results.json").write_text(json.dumps(second))
    export_out = tmp_path / "variants"
    exported = subprocess.run(
        [str(BIN / "flowcut-hf"), "export", str(base), "--target-num", "32", "--out", str(export_out), "--skip-verify",
         "--base-model", "org/llava-tiny", "--eval-results", *map(str, sorted(out.glob("*/*_results.json")))],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert exported.returncode == 0, exported.stderr
    card = ModelCard.load(export_out / "llava-tiny-flowcut32" / "README.md")
    assert sorted(result.task_name for result in card.data.eval_results) == ["flowcut_tiny", "flowcut_tiny_again"]
    result = next(result for result in card.data.eval_results if result.task_name == "flowcut_tiny")
    assert (result.task_name, result.dataset_name, result.dataset_split) == ("flowcut_tiny", "flowcut_tiny", "test")
    assert result.metric_type == "exact_match" and result.metric_value == results["results"]["flowcut_tiny"]["exact_match,none"]
    assert result.source_url == "https://github.com/EvolvingLMMs-Lab/lmms-eval"
    # A local task has no Hub dataset page: the card names it without a (dead) link.
    assert "huggingface.co/datasets/flowcut_tiny" not in card.text


def requests_for(docs: list[dict], task: str = "flowcut_tiny") -> list[Instance]:
    from PIL import Image

    def doc_to_visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]

    settings = {"max_new_tokens": 4, "until": ["\n\n"]}
    return [
        Instance("generate_until", (doc["question"], dict(settings), doc_to_visual, index, task, "test"), index,
                 metadata={"task": task, "doc_id": index, "repeats": 1})
        for index, doc in enumerate(docs)
    ]


@pytest.mark.parametrize("family, settings", [
    ("llava", {"method": "vflowopt", "preset": "10%"}),
    ("llava_next", {"method": "flowcut", "target_num": 24}),
])
def test_batches_answer_as_single_requests_do_for_every_family(family, settings, tiny_task, tmp_path):
    """Left-padded batches of images of different sizes give the answers of one request at a time; the wrapper has
    nothing family-specific. (FlowCut on LLaVA-1.5 shares each layer's prune count across a batch, as the authors'
    code does, so there a batch can change which tokens an image keeps: see the README.)"""
    _, docs = tiny_task
    build = build_tiny_llava if family == "llava" else build_tiny_llava_next
    folder = tmp_path / family
    model, processor = build(seed=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    answers = {}
    for batch_size in (1, 3):
        lmm = FlowCutLMMS(pretrained=str(folder), **settings, batch_size=batch_size, device="cpu", dtype="float32")
        assert type(lmm.model).__name__.startswith("FlowCut")
        lmm.task_dict = {"flowcut_tiny": {"test": docs}}
        answers[batch_size] = lmm.generate_until(requests_for(docs))
        question, _, doc_to_visual, *_ = requests_for(docs)[0].args
        (score,) = lmm.loglikelihood([
            Instance("loglikelihood", (question, " a cat", doc_to_visual, 0, "flowcut_tiny", "test"), 0,
                     metadata={"task": "flowcut_tiny", "doc_id": 0, "repeats": 1})
        ])
        assert score[0] < 0 and math.isfinite(score[0])
    assert len(answers[1]) == len(docs) and all(isinstance(answer, str) for answer in answers[1])
    assert answers[3] == answers[1]


def test_model_args_are_checked(tmp_path):
    with pytest.raises(ValueError, match="need method=flowcut or method=vflowopt"):
        FlowCutLMMS(pretrained=str(tmp_path), target_num=64)
    with pytest.raises(ValueError, match=r"unknown model_args \['target'\]"):
        FlowCutLMMS(pretrained=str(tmp_path), method="flowcut", target=64)


@pytest.mark.parametrize("first_import", ["flowcut_hf.lmms_eval_plugin", "lmms_eval.models"])
def test_the_plugin_registers_whatever_is_imported_first(first_import, tmp_path):
    """Importing the plug-in module first makes lmms-eval load its entry points while the module is half-imported;
    the model must still be found."""
    code = f"import {first_import}\nfrom lmms_eval.models import get_model\nprint(get_model('flowcut').__name__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-1] == "FlowCutLMMS"
    assert "circular import" not in run.stderr
