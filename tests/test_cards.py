"""Model cards of exported variants: what the Hub and a reader see in README.md."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard

from flowcut_hf.hub_cards import FLOWCUT_BIBTEX, VariantCardInfo, load_eval_results, render_variant_card

REPO = "acme/llava-1.5-7b-hf-flowcut64"
BASE = "llava-hf/llava-1.5-7b-hf"
SHA = "3f1c2a9be0d47e1a8c5b6d7e8f90123456789abc"
SETTINGS = {"flowcut_target_num": 64, "flowcut_enabled": True, "flowcut_prune_every": 2, "flowcut_ema": [0.5, 0.5]}


def make_info(**overrides) -> VariantCardInfo:
    fields = dict(
        repo_id=REPO,
        base_model=BASE,
        base_license="llama2",
        target_num=64,
        image_tokens=576,
        settings=SETTINGS,
        revision=SHA,
        prefill_flops_unpruned=8.82e12,
        prefill_flops_pruned=1.95e12,
    )
    fields.update(overrides)
    return VariantCardInfo(**fields)


EVAL = {
    "results": [
        {
            "task_type": "image-text-to-text",
            "dataset_type": "lmms-lab/POPE",
            "dataset_name": "POPE",
            "dataset_split": "test",
            "metric_type": "f1",
            "metric_name": "POPE F1",
            "metric_value": 85.2,
            "source_name": "flowcut-hf eval",
            "source_url": "https://example.org/eval",
        },
        {
            "task_type": "image-text-to-text",
            "dataset_type": "lmms-lab/GQA",
            "dataset_name": "GQA",
            "metric_type": "accuracy",
            "metric_value": "58.5 ± 0.3",
        },
        # Same dataset entry as the first one, listed after another dataset: must join its group in model-index.
        {
            "task_type": "image-text-to-text",
            "dataset_type": "lmms-lab/POPE",
            "dataset_name": "POPE",
            "dataset_split": "test",
            "metric_type": "accuracy",
            "metric_value": 86.1,
            "source_name": "flowcut-hf eval",
            "source_url": "https://example.org/eval",
        },
    ]
}


def write_json(tmp_path: Path, data, name: str = "eval.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def front_matter(text: str) -> dict:
    """The YAML block exactly as the Hub parses it, independent of huggingface_hub's CardData."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "card does not start with a YAML front-matter block"
    return yaml.safe_load(match.group(1))


def python_snippet(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, f"expected one python code block, found {len(blocks)}"
    return blocks[0]


# --- round trip -------------------------------------------------------------------------------------------------


def test_saved_card_loads_back_with_all_metadata(tmp_path):
    card = render_variant_card(make_info(), write_json(tmp_path, EVAL))
    card.save(tmp_path / "README.md")

    loaded = ModelCard.load(tmp_path / "README.md")
    reparsed = ModelCard(str(card))

    for other in (loaded, reparsed):
        assert other.data.to_dict() == card.data.to_dict()
        assert other.data.flowcut == SETTINGS
        assert other.data.eval_results == card.data.eval_results
        assert other.data.model_name == card.data.model_name
        assert other.text == card.text
    assert len(loaded.data.eval_results) == 3
    assert str(loaded) == str(card)


def test_round_trip_keeps_json_types_in_flowcut_block(tmp_path):
    common = {"flowcut_target_num": 64, "flowcut_off": None, "flowcut_ratio": 0.5, "flowcut_mode": "on"}
    card = render_variant_card(make_info(settings={**common, "flowcut_layers": (1, 3)}))
    card.save(tmp_path / "README.md")

    block = ModelCard.load(tmp_path / "README.md").data.flowcut
    # "on" would read back as True if YAML left it unquoted; the tuple is written as the list config.json has.
    assert block == {**common, "flowcut_layers": [1, 3]}


# --- front matter -----------------------------------------------------------------------------------------------


def test_front_matter_fields():
    meta = front_matter(str(render_variant_card(make_info())))

    assert meta["base_model"] == BASE
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["tags"] == ["flowcut", "visual-token-pruning", "llava", "image-text-to-text"]
    assert meta["flowcut"] == SETTINGS
    assert "base_model_relation" not in meta
    assert "model-index" not in meta


def test_flowcut_block_gains_target_num_when_settings_omit_it():
    meta = front_matter(str(render_variant_card(make_info(settings={"flowcut_enabled": True}))))
    assert meta["flowcut"] == {"flowcut_enabled": True, "flowcut_target_num": 64}


def test_settings_disagreeing_with_target_num_are_rejected():
    with pytest.raises(ValueError, match="flowcut_target_num"):
        make_info(settings={"flowcut_target_num": 128})


def test_settings_that_are_not_json_are_rejected():
    with pytest.raises(ValueError, match="flowcut_bad"):
        make_info(settings={"flowcut_target_num": 64, "flowcut_bad": {1, 2}})
    with pytest.raises(ValueError, match="flowcut_nan"):
        make_info(settings={"flowcut_nan": float("nan")})


# --- license ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("license_id", ["apache-2.0", "llama2", "cc-by-nc-4.0"])
def test_license_is_copied_from_base(license_id):
    text = str(render_variant_card(make_info(base_license=license_id)))
    assert front_matter(text)["license"] == license_id
    assert f"keep its license, `{license_id}`" in text


def test_unknown_license_is_omitted_not_invented():
    text = str(render_variant_card(make_info(base_license=None)))
    meta = front_matter(text)
    assert "license" not in meta and "license_name" not in meta
    assert "license was not recorded" in text


def test_other_license_carries_name_and_absolute_link():
    info = make_info(base_license="other", base_license_name="yi-license", base_license_link="LICENSE")
    text = str(render_variant_card(info))
    meta = front_matter(text)
    assert meta["license"] == "other"
    assert meta["license_name"] == "yi-license"
    # The variant repo need not hold the LICENSE file, so the link must point into the base repo.
    assert meta["license_link"] == f"https://huggingface.co/{BASE}/blob/main/LICENSE"
    assert f"({meta['license_link']})" in text

    absolute = "https://example.org/LICENSE.txt"
    info = make_info(base_license="other", base_license_link=absolute)
    assert front_matter(str(render_variant_card(info)))["license_link"] == absolute


def test_license_name_without_other_is_rejected():
    with pytest.raises(ValueError, match="base_license_name is only valid with base_license='other'"):
        make_info(base_license="mit", base_license_name="mine")


def test_malformed_license_id_is_rejected():
    with pytest.raises(ValueError, match="base_license"):
        make_info(base_license="Apache 2.0")


# --- body -------------------------------------------------------------------------------------------------------


def test_snippet_uses_repo_id_and_pinned_revision():
    text = str(render_variant_card(make_info()))
    tree = ast.parse(python_snippet(text))  # must at least be valid Python

    constants = {
        node.targets[0].id: node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    assert constants["repo_id"] == REPO
    assert constants["revision"] == SHA

    loads = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"
    ]
    assert {call.func.value.id for call in loads} == {"AutoModelForImageTextToText", "AutoProcessor"}
    for call in loads:
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        assert isinstance(kwargs["revision"], ast.Name) and kwargs["revision"].id == "revision"
        assert isinstance(kwargs["trust_remote_code"], ast.Constant) and kwargs["trust_remote_code"].value is True
        assert isinstance(call.args[0], ast.Name) and call.args[0].id == "repo_id"


def test_unpinned_snippet_says_how_to_pin():
    snippet = python_snippet(str(render_variant_card(make_info(revision=None))))
    assert 'revision = "main"' in snippet
    assert "commit hash" in snippet


def test_revision_that_would_break_the_snippet_is_rejected():
    with pytest.raises(ValueError, match="revision"):
        make_info(revision='main" ; import os')


def test_body_states_token_counts_fallback_and_flops():
    text = str(render_variant_card(make_info()))
    assert "576 → 64" in text
    assert "Weights: unchanged" in text
    # The fallback without trust_remote_code is the stock model at full token count.
    fallback = text[text.index("Without `trust_remote_code=True`") :]
    assert "stock, unpruned" in fallback[:200] and "576 visual tokens" in fallback[:300]
    assert "8.82 TFLOPs" in text and "1.95 TFLOPs" in text
    assert "**77.9%**" in text  # 1 - 1.95 / 8.82
    for name, value in SETTINGS.items():
        assert f"| `{name}` | `{json.dumps(value)}` |" in text


def test_precomputed_flops_reduction_is_shown():
    info = make_info(prefill_flops_unpruned=None, prefill_flops_pruned=None, prefill_flops_reduction=0.75)
    text = str(render_variant_card(info))
    assert "**75.0%** (4.00× fewer)" in text
    assert "TFLOPs" not in text


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(prefill_flops_unpruned=None, prefill_flops_pruned=None), "prefill_flops"),
        (dict(prefill_flops_pruned=None), "prefill_flops_pruned"),
        (dict(prefill_flops_pruned=9e12), "prefill_flops_pruned"),
        (dict(prefill_flops_reduction=0.5), "prefill_flops_reduction"),
        (dict(target_num=576), "target_num"),
        (dict(family="idefics3"), "family"),
        (dict(retain_ratio=0.2), "exactly one of target_num and retain_ratio"),
        (dict(target_num=None, retain_ratio=0.2), "retain_ratio applies"),
        (dict(target_num=None, retain_ratio=1.0, family="qwen2_vl"), "retain_ratio must be a share"),
        (dict(repo_id="no-namespace"), "repo_id"),
        (dict(repo_id=BASE), "repo_id"),
        (dict(base_citation="not bibtex"), "base_citation"),
    ],
)
def test_invalid_card_info_is_rejected(overrides, field):
    with pytest.raises(ValueError, match=field):
        make_info(**overrides)


def test_citations():
    base_bib = "@article{liu2023visual,\n  title={Visual Instruction Tuning},\n  year={2023}\n}"
    text = str(render_variant_card(make_info(base_citation=base_bib)))
    assert FLOWCUT_BIBTEX in text
    assert "Rethinking Redundancy via Information Flow" in text and "2505.19536" in text
    assert base_bib in text

    assert "@article{liu2023visual" not in str(render_variant_card(make_info()))


# --- evaluation results -----------------------------------------------------------------------------------------


def test_eval_json_becomes_model_index(tmp_path):
    text = str(render_variant_card(make_info(), write_json(tmp_path, EVAL)))
    index = front_matter(text)["model-index"]

    assert index[0]["name"] == "llava-1.5-7b-hf-flowcut64"
    pope, gqa = index[0]["results"]
    assert pope["task"] == {"type": "image-text-to-text"}
    assert pope["dataset"] == {"name": "POPE", "type": "lmms-lab/POPE", "split": "test"}
    assert pope["metrics"] == [
        {"type": "f1", "value": 85.2, "name": "POPE F1"},
        {"type": "accuracy", "value": 86.1},
    ]
    assert pope["source"] == {"name": "flowcut-hf eval", "url": "https://example.org/eval"}
    assert gqa["metrics"] == [{"type": "accuracy", "value": "58.5 ± 0.3"}]

    assert "| [POPE](https://huggingface.co/datasets/lmms-lab/POPE) | test | POPE F1 | 85.2 |" in text


def test_eval_json_model_name_overrides_default(tmp_path):
    data = dict(EVAL, model_name="LLaVA-1.5-7B FlowCut-64")
    card = render_variant_card(make_info(), write_json(tmp_path, data))
    assert front_matter(str(card))["model-index"][0]["name"] == "LLaVA-1.5-7B FlowCut-64"


def test_load_eval_results_orders_like_model_index(tmp_path):
    name, results = load_eval_results(write_json(tmp_path, EVAL), default_model_name="x")
    assert name == "x"
    order = [(r.dataset_name, r.metric_type) for r in results]
    assert order == [("POPE", "f1"), ("POPE", "accuracy"), ("GQA", "accuracy")]
    assert all(isinstance(r, EvalResult) for r in results)


def _entry(**changes):
    entry = dict(EVAL["results"][1])
    for key, value in changes.items():
        if value is _DROP:
            entry.pop(key)
        else:
            entry[key] = value
    return entry


_DROP = object()


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "not valid JSON"),
        ([], "top level must be a JSON object"),
        ({"results": []}, "results must be a non-empty list"),
        ({"result": [_entry()]}, r"unknown top-level key\(s\) \['result'\]"),
        (
            {"results": [_entry(), _entry(metric_value=_DROP, dataset_name="X")]},
            r"results\[1\]\.metric_value is required",
        ),
        ({"results": [_entry(dataset_name="")]}, r"results\[0\]\.dataset_name must be a non-empty string"),
        ({"results": [_entry(metric_value=True)]}, r"results\[0\]\.metric_value must be a finite number"),
        ({"results": [_entry(metric_value=None)]}, r"results\[0\]\.metric_value must be a finite number"),
        (
            '{"results": [{"task_type": "t", "dataset_type": "d", "dataset_name": "D",'
            ' "metric_type": "m", "metric_value": NaN}]}',
            "NaN",
        ),
        ({"results": [_entry(metirc_name="typo")]}, r"results\[0\]: unknown key\(s\) \['metirc_name'\]"),
        ({"results": [_entry(verified=True)]}, r"unknown key\(s\) \['verified'\]"),
        ({"results": [_entry(dataset_args=[1])]}, r"results\[0\]\.dataset_args must be a JSON object"),
        ({"results": [_entry(source_name="me")]}, r"results\[0\]\.source_url is required"),
        ({"results": [_entry(), _entry(metric_type="f1", dataset_name="GQA-2")]}, r"results\[1\]\.dataset_name"),
        ({"results": [_entry(), _entry(metric_value=1.0)]}, r"results\[1\] repeats the metric of results\[0\]"),
        ({"model_name": "", "results": [_entry()]}, "model_name must be a non-empty string"),
    ],
)
def test_bad_eval_json_names_the_problem(tmp_path, data, message):
    path = write_json(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        render_variant_card(make_info(), path)
    assert str(path) in str(err.value)


def test_missing_eval_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        render_variant_card(make_info(), tmp_path / "absent.json")


def test_info_is_not_affected_by_later_changes_to_settings():
    settings = dict(SETTINGS)
    info = make_info(settings=settings)
    settings["flowcut_target_num"] = 1
    assert front_matter(str(render_variant_card(info)))["flowcut"]["flowcut_target_num"] == 64


def test_several_eval_files_are_merged_into_one_model_index(tmp_path):
    """The results of separate runs (one file per task or per run) become one model-index; a metric reported twice
    for the same dataset is refused naming both files, since one of the two values would be lost."""
    first = write_json(tmp_path, {"results": EVAL["results"][:1]}, "run1_results.json")
    second = write_json(tmp_path, {"results": EVAL["results"][1:]}, "run2_results.json")
    name, merged = load_eval_results([first, second], default_model_name="x")
    _, together = load_eval_results(write_json(tmp_path, EVAL), default_model_name="x")
    assert name == "x" and merged == together
    card = render_variant_card(make_info(), [first, second])
    assert {entry["dataset"]["name"] for entry in front_matter(str(card))["model-index"][0]["results"]} == {"POPE", "GQA"}

    with pytest.raises(ValueError, match="repeats the metric") as err:
        load_eval_results([first, write_json(tmp_path, {"results": EVAL["results"][:1]}, "again.json")], default_model_name="x")
    assert str(first) in str(err.value) and str(tmp_path / "again.json") in str(err.value)
    with pytest.raises(ValueError, match="names the model"):
        load_eval_results([write_json(tmp_path, dict(EVAL, model_name="one"), "one.json"),
                           write_json(tmp_path, {"model_name": "two", "results": [_entry(dataset_name="Other", dataset_type="o/x")]}, "two.json")],
                          default_model_name="x")


def test_only_hub_datasets_are_linked(tmp_path):
    """A bare dataset name (a local lmms-eval task) has no Hub page, so the card names it without a link."""
    local = _entry(dataset_type="my_local_task", dataset_name="my_local_task")
    card = str(render_variant_card(make_info(), write_json(tmp_path, {"results": [local, EVAL["results"][0]]})))
    assert "| my_local_task |" in card and "datasets/my_local_task" not in card
    assert "[POPE](https://huggingface.co/datasets/lmms-lab/POPE)" in card


def engines_row(text: str, engine: str) -> str:
    section = text[text.index("## Engines"):text.index("## Settings")]
    return next(line for line in section.splitlines() if line.startswith(f"| {engine}"))


def test_the_card_says_which_engines_prune_the_variant_and_how():
    text = str(render_variant_card(make_info()))
    assert "`trust_remote_code=True`" in engines_row(text, "transformers") and engines_row(text, "transformers").endswith("| pruned |")
    vllm = engines_row(text, "vLLM")
    assert f"`vllm serve {REPO}`" in vllm and "flowcut-hf installed beside vLLM" in vllm
    assert "pruned: 64 visual tokens per image" in vllm
    assert "Without flowcut-hf installed, vLLM serves this repo as the stock" in text
    # A family whose pruning runs inside the language model is refused by the plug-in, and the card says so.
    next_card = str(render_variant_card(make_info(family="llava_next", target_num=320, image_tokens=2928, settings={})))
    refused = engines_row(next_card, "vLLM")
    assert "refused at load: FlowCut on LLaVA-NeXT also prunes inside the language model" in refused
    assert f"[`{BASE}`]" in refused and "pruned:" not in refused
    # Qwen2-VL: vLLM serves the vision stage alone, with the override the card spells out.
    qwen_card = str(render_variant_card(make_info(family="qwen2_vl", target_num=None, retain_ratio=0.111, image_tokens=16384, settings={})))
    qwen = engines_row(qwen_card, "vLLM")
    assert f"""`vllm serve {REPO} --hf-overrides '{{"flowcut_llm_stage": false}}'`""" in qwen
    assert "hf_overrides={'flowcut_llm_stage': False}" in qwen and "from_pretrained(..., flowcut_llm_stage=False)" in qwen
    assert "the vision stage alone: 11.1% of each image's visual tokens kept in the vision encoder" in qwen
