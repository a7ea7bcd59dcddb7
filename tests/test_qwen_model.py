"""What a user of FlowCut on Qwen2-VL / Qwen2.5-VL relies on: stock equivalence, intact 2x2 merge units, batches
with images, videos and text, generate and caches, attention backends, loading and training."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration, pipeline
from transformers.vision_utils import get_vision_position_ids

from conftest import run_clean_python
from flowcut_hf.modeling.flowcut_compat import cache_of
from flowcut_hf import flowcut, flowcut_processor
from flowcut_hf.families.qwen2_vl.builtin import build_tiny_qwen_vl
from flowcut_hf.tiny import synthetic_image

VERSIONS = ["2", "2.5"]
RATIO = 0.25
IMAGE_SIZES = [(448, 392), (168, 224), (224, 140)]  # (height, width): 56 (resized), 48 and 40 merge units
VIDEO_GRID = (2, 8, 8)  # 2 temporal patches (4 frames) of 8 x 8 patches: 32 merge units
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"


def chat(content: str) -> str:
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


ONE_IMAGE = chat(IMAGE_BLOCK + "What is in the picture?")
TWO_IMAGES = chat(IMAGE_BLOCK + IMAGE_BLOCK + "What differs?")
ONE_VIDEO = chat(VIDEO_BLOCK + "What happens?")
TEXT_ONLY = chat("Tell me a joke about cats.")


def images(*indices: int) -> list:
    return [synthetic_image(index, size=IMAGE_SIZES[index]) for index in indices]


def video_pixels(seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened video patches as the stock video processor emits them, and their (t, h, w) grid."""
    t, h, w = VIDEO_GRID
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator), torch.tensor([VIDEO_GRID])


def encode_row(processor, prompt: str, row_images=None, video: bool = False) -> dict:
    """One prompt's inputs. The tiny processor has no video processor (it needs torchvision), so a video row is
    tokenised here exactly as the stock processor would expand it."""
    if not video:
        return dict(processor(text=[prompt], images=row_images, return_tensors="pt"))
    pixels, grid = video_pixels()
    units = int(grid.prod()) // 4
    input_ids = processor.tokenizer(prompt.replace("<|video_pad|>", "<|video_pad|>" * units), return_tensors="pt")["input_ids"]
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == video_id).int() * 2,
        pixel_values_videos=pixels,
        video_grid_thw=grid,
    )


def collate(rows: list[dict], pad_id: int) -> dict:
    """Left-pads the rows into one batch, as the stock processor does with padding_side='left'."""
    width = max(row["input_ids"].shape[1] for row in rows)
    batch: dict = {}
    for name, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        batch[name] = torch.cat(
            [torch.nn.functional.pad(row[name], (width - row[name].shape[1], 0), value=fill) for row in rows]
        )
    for name in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        parts = [row[name] for row in rows if name in row]
        if parts:
            batch[name] = torch.cat(parts)
    return batch


BATCH_ROWS = [(ONE_IMAGE, (0,), False), (TWO_IMAGES, (1, 2), False), (ONE_VIDEO, None, True), (TEXT_ONLY, None, False)]


def batch_rows(processor) -> list[dict]:
    return [encode_row(processor, prompt, images(*idx) if idx else None, video) for prompt, idx, video in BATCH_ROWS]


def fresh(version: str, seed: int = 0, **settings):
    model, processor = build_tiny_qwen_vl(version, seed=seed)
    return flowcut(model, **(settings or {"retain_ratio": RATIO})), processor


@pytest.fixture(scope="module", params=VERSIONS)
def qwen(request):
    """(FlowCut model at RATIO, stock model with the same weights, processor, version)."""
    model, processor = fresh(request.param)
    stock, _ = build_tiny_qwen_vl(request.param, seed=0)
    return model, stock, processor, request.param


def greedy(model, inputs, max_new_tokens: int = 5, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("settings", [dict(enabled=False), dict(retain_ratio=1.0), dict(target_num=64)])
def test_pruning_off_or_keeping_every_unit_equals_stock(version, settings):
    stock, processor = build_tiny_qwen_vl(version, seed=1)
    pruning, _ = fresh(version, seed=1, **settings)
    inputs = collate(batch_rows(processor), processor.tokenizer.pad_token_id)
    torch.testing.assert_close(logits(pruning, inputs), logits(stock, inputs), rtol=0, atol=0)


def test_vision_stage_keeps_twice_the_target_in_whole_units_and_llm_stage_the_target(qwen):
    model, _, processor, _ = qwen
    inputs = encode_row(processor, ONE_IMAGE, images(0))
    units = int(inputs["image_grid_thw"].prod()) // 4
    target = round(RATIO * units)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        output = model(**inputs)
    kept = features.kept_units[0]
    assert features.placeholder_counts == [units] and features.llm_targets == [target]
    assert len(kept) == len(features.pooler_output[0]) == 2 * target
    assert torch.equal(kept, kept.sort().values) and int(kept.max()) < units
    schedule = features.token_schedule[0]
    assert len(schedule) == 32 and schedule[0] == 4 * units and all(count % 4 == 0 for count in schedule)
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))
    final = output.image_kept_units[0]
    assert len(final) == target and set(final.tolist()) <= set(kept.tolist())
    assert output.logits.shape[1] == inputs["input_ids"].shape[1] - units + target


def test_every_kept_token_is_one_intact_2x2_block_at_its_true_position(qwen):
    """The merger's input for each kept token is the four patches of one unit, in the ViT's own 2x2 order, and the
    token enters the LLM at its unit's stock (t, h, w) M-RoPE position."""
    model, stock, processor, _ = qwen
    inputs = encode_row(processor, ONE_IMAGE, images(0))
    grid = inputs["image_grid_thw"]
    visual = model.model.visual
    seen = {}
    hooks = [
        visual.blocks[-1].register_forward_pre_hook(
            lambda _m, args, kwargs: seen.update(cos=kwargs["position_embeddings"][0]), with_kwargs=True
        ),
        visual.blocks[-1].register_forward_hook(lambda _m, _a, output: seen.update(last=output)),
        visual.merger.register_forward_pre_hook(lambda _m, args: seen.update(merged=args[0])),
    ]
    try:
        with torch.no_grad():
            features = model.model.get_image_features(inputs["pixel_values"], grid)
    finally:
        for hook in hooks:
            hook.remove()
    # Find each merger row among the last block's output rows: a pure gather, so rows match exactly.
    rows = [int((seen["last"] == row).all(-1).nonzero()[0]) for row in seen["merged"]]
    merged_cos = seen["cos"][rows]
    stock_cos, _ = visual.rotary_pos_emb(seen["last"], get_vision_position_ids(grid, 2))  # raster unit order
    units = []
    for group in merged_cos.split(4):
        unit = int((stock_cos == group[0]).all(-1).nonzero()[0]) // 4
        assert torch.equal(group, stock_cos[4 * unit : 4 * unit + 4]), "a merged token mixes patches of several units"
        units.append(unit)
    assert sorted(units) == features.kept_units[0].tolist()

    with torch.no_grad():
        positions, _ = stock.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=grid
        )
    captured = []
    hook = model.model.language_model.rotary_emb.register_forward_hook(
        lambda _m, _args, kwargs, _out: captured.append(kwargs["position_ids"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    image_columns = (inputs["mm_token_type_ids"][0] == 1).nonzero().squeeze(-1)
    text_columns = (inputs["mm_token_type_ids"][0] == 0).nonzero().squeeze(-1)
    seen_columns = torch.cat([text_columns, image_columns[features.kept_units[0]]]).sort().values
    # The layers before the LLM stage see the text and the vision stage's units, each at its stock position.
    assert torch.equal(captured[0][:, 0], positions[:, 0, seen_columns])


def test_batch_rows_decode_as_alone_and_cached_equals_uncached(qwen):
    """Left padding, images of different sizes, two images in one prompt, a video, and a text-only prompt."""
    model, _, processor, _ = qwen
    pad = processor.tokenizer.pad_token_id
    rows = batch_rows(processor)
    inputs = collate(rows, pad)
    assert not bool(inputs["attention_mask"][3].all())
    width = inputs["input_ids"].shape[1]
    cached = greedy(model, inputs)
    assert torch.equal(cached, greedy(model, inputs, use_cache=False))
    for index, row in enumerate(rows):
        alone = greedy(model, collate([row], pad))[0, row["input_ids"].shape[1] :]
        assert torch.equal(cached[index, width:], alone), f"row {index} differs from its run alone"
    with torch.no_grad():
        output = model(**inputs)
    assert [len(k) for k in output.image_kept_units] == [14, 12, 10]
    assert [len(k) for k in output.video_kept_units] == [8]


def test_manual_decoding_loop_without_position_ids_matches_generate(qwen):
    model, _, processor, _ = qwen
    inputs = encode_row(processor, ONE_IMAGE, images(0))
    expected = greedy(model, inputs, max_new_tokens=3)[0, inputs["input_ids"].shape[1] :].tolist()
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
        attention_mask = inputs["attention_mask"]
        tokens = []
        for _ in range(3):
            token = output.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
            attention_mask = torch.cat([attention_mask, torch.ones_like(token)], dim=1)
            output = model(input_ids=token, attention_mask=attention_mask, cache=cache_of(output),
                           flowcut_state=output.flowcut_state)
    assert tokens == expected


def test_attention_backends_select_the_same_units_and_half_precision_stays_finite(weightless_attention):
    weightless, query_lengths = weightless_attention
    for version in VERSIONS:
        selections = {}
        for implementation in ("eager", "sdpa", weightless):
            model, processor = fresh(version, seed=3)
            model.config.vision_config._attn_implementation = implementation
            model.config.text_config._attn_implementation = implementation
            inputs = encode_row(processor, ONE_IMAGE, images(0))
            query_lengths.clear()
            with torch.no_grad():
                features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
                output = model(**inputs)
            selections[implementation] = (features.kept_units[0], output.image_kept_units[0])
        assert output.logits.shape[1] in query_lengths, "the stand-in must run the layers after the LLM stage"
        for implementation in ("sdpa", weightless):
            for expected, actual in zip(selections["eager"], selections[implementation]):
                assert torch.equal(expected, actual), (version, implementation)
        for dtype in (torch.float16, torch.bfloat16):
            model, processor = fresh(version, seed=3)
            model.to(dtype)
            inputs = encode_row(processor, ONE_IMAGE, images(0))
            with torch.no_grad():
                output = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)})
            assert torch.isfinite(output.logits).all() and len(output.image_kept_units[0]) == 14


@pytest.mark.parametrize("version", VERSIONS)
def test_without_the_llm_stage_the_vision_encoder_keeps_the_target_and_every_layer_sees_it(version):
    """flowcut_llm_stage=False, the schedule vLLM serves: the ViT cuts straight to the target, in whole units, and
    every decoder layer sees the text and those units at their stock positions; batches and the cache still hold."""
    model, processor = fresh(version, retain_ratio=RATIO, llm_stage=False)
    stock, _ = build_tiny_qwen_vl(version, seed=0)
    inputs = encode_row(processor, ONE_IMAGE, images(0))
    units = int(inputs["image_grid_thw"].prod()) // 4
    target = round(RATIO * units)
    captured = []
    hook = model.model.language_model.rotary_emb.register_forward_hook(
        lambda _m, _args, kwargs, _out: captured.append(kwargs["position_ids"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            output = model(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    kept = features.kept_units[0]
    assert len(kept) == len(features.pooler_output[0]) == target and torch.equal(output.image_kept_units[0], kept)
    length = inputs["input_ids"].shape[1] - units + target
    assert output.logits.shape[1] == length and {h.shape[1] for h in output.hidden_states} == {length}
    with torch.no_grad():
        positions, _ = stock.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
        )
    image_columns = (inputs["mm_token_type_ids"][0] == 1).nonzero().squeeze(-1)
    text_columns = (inputs["mm_token_type_ids"][0] == 0).nonzero().squeeze(-1)
    seen_columns = torch.cat([text_columns, image_columns[kept]]).sort().values
    assert len(captured) == 1 and torch.equal(captured[0][:, 0], positions[:, 0, seen_columns])

    pad = processor.tokenizer.pad_token_id
    rows = batch_rows(processor)
    batch = collate(rows, pad)
    cached = greedy(model, batch)
    assert torch.equal(cached, greedy(model, batch, use_cache=False))
    width = batch["input_ids"].shape[1]
    for index, row in enumerate(rows):
        assert torch.equal(cached[index, width:], greedy(model, collate([row], pad))[0, row["input_ids"].shape[1] :])
    with pytest.raises(ValueError, match="flowcut_llm_stage must be True .* or False"):
        model.configure_flowcut(llm_stage="off")
    model.configure_flowcut(llm_stage=True)
    with torch.no_grad():
        assert len(model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).kept_units[0]) == 2 * target


def test_retained_amount_is_a_ratio_or_a_count_and_bad_values_name_the_fix():
    model, processor = build_tiny_qwen_vl("2", seed=0)
    with pytest.raises(ValueError, match="flowcut_retain_ratio"):
        flowcut(model, retain_ratio=1.5)
    with pytest.raises(ValueError, match="not both"):
        flowcut(model, target_num=8, retain_ratio=0.5)
    assert type(model) is Qwen2VLForConditionalGeneration, "a rejected call must leave the model untouched"
    flowcut(model, target_num=10)
    inputs = encode_row(processor, ONE_IMAGE, images(0))
    with torch.no_grad():
        assert len(model(**inputs).image_kept_units[0]) == 10
        model.configure_flowcut(retain_ratio=0.5)
        assert model.config.flowcut_target_num is None
        assert len(model(**inputs).image_kept_units[0]) == 28
    model.configure_flowcut(llm_prune_layer=3)
    with pytest.raises(ValueError, match="choose 0 to 2"):
        model(**inputs)
    model.configure_flowcut(llm_prune_layer=1)
    with pytest.raises(ValueError, match="placeholder"):
        model(**{**inputs, "input_ids": inputs["input_ids"][:, 20:], "attention_mask": inputs["attention_mask"][:, 20:],
                 "mm_token_type_ids": inputs["mm_token_type_ids"][:, 20:]})
    with pytest.raises(ValueError, match="prefill_chunk_size=None"):
        greedy(model, inputs, max_new_tokens=2, prefill_chunk_size=16)


@pytest.fixture(scope="module")
def saved_qwen_folders(tmp_path_factory):
    folders = {}
    for version in VERSIONS:
        model, processor = fresh(version)
        folder = tmp_path_factory.mktemp(f"qwen{version}")
        model.save_pretrained(folder)
        processor.tokenizer.save_pretrained(folder)
        inputs = encode_row(processor, ONE_IMAGE, images(0))
        torch.save(inputs, folder / "inputs.pt")
        with torch.no_grad():
            folders[version] = (folder, processor, model(**inputs).image_kept_units[0].tolist(), logits(model, inputs))
    return folders


LOAD_IN_CLEAN_PROCESS = """
import json, torch
from transformers import AutoModelForImageTextToText
model, info = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=TRUST, output_loading_info=True)
inputs = torch.load(FOLDER + "/inputs.pt")
with torch.no_grad():
    output = model(**inputs)
    tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(json.dumps({
    "model_class": type(model).__name__,
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
    "kept": output.image_kept_units[0].tolist() if hasattr(output, "image_kept_units") else None,
    "length": output.logits.shape[1], "generated": tokens.shape[1] - inputs["input_ids"].shape[1],
}))
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_saved_folder_loads_as_remote_code_in_a_clean_process_and_as_stock_without(saved_qwen_folders, version, tmp_path):
    folder, _, kept, reference_logits = saved_qwen_folders[version]
    names = sorted(path.name for path in folder.glob("*.py"))
    assert names == [
        "configuration_flowcut_qwen2_vl.py", "flowcut_compat.py", "flowcut_core.py", "flowcut_llm_stage.py", "flowcut_qwen_vision.py",
        "flowcut_remote_code.py", "flowcut_settings.py", "modeling_flowcut_qwen2_vl.py",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == ("qwen2_vl" if version == "2" else "qwen2_5_vl")
    stem = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    for trust, expected_class, expected_kept in ((True, f"FlowCut{stem}ForConditionalGeneration", kept),
                                                 (False, f"{stem}ForConditionalGeneration", None)):
        result = run_clean_python(f"FOLDER = {str(folder)!r}\nTRUST = {trust!r}\n" + LOAD_IN_CLEAN_PROCESS, tmp_path)
        assert result["model_class"] == expected_class and not result["missing"] and not result["unexpected"]
        assert result["kept"] == expected_kept and result["generated"] == 4
        assert result["length"] == (reference_logits.shape[1] if trust else torch.load(folder / "inputs.pt")["input_ids"].shape[1])


def test_pipeline_bfloat16_and_device_map_auto(saved_qwen_folders, tmp_path):
    folder, processor, kept, reference_logits = saved_qwen_folders["2.5"]
    generator = pipeline("image-text-to-text", model=str(folder), processor=processor, trust_remote_code=True)
    assert type(generator.model).__name__ == "FlowCutQwen2_5_VLForConditionalGeneration"
    result = generator(images=images(0)[0], text=ONE_IMAGE, max_new_tokens=3)
    assert isinstance(result[0]["generated_text"], str) and result[0]["generated_text"].startswith(ONE_IMAGE)

    inputs = torch.load(folder / "inputs.pt")
    half = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16)
    with torch.no_grad():
        output = half(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)})
    assert torch.isfinite(output.logits).all() and len(output.image_kept_units[0]) == len(kept)
    mapped = AutoModelForImageTextToText.from_pretrained(
        folder, trust_remote_code=True, device_map="auto", max_memory={"cpu": "300KB"}, offload_folder=tmp_path / "off"
    )
    assert "disk" in set(mapped.hf_device_map.values())
    with torch.no_grad():
        output = mapped(**inputs)
    assert output.image_kept_units[0].tolist() == kept
    torch.testing.assert_close(output.logits, reference_logits)


@pytest.mark.parametrize("version", VERSIONS)
def test_training_step_with_pruning_in_the_loop(version, tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    model, processor = fresh(version, seed=4)
    model.train()
    inputs = encode_row(processor, ONE_IMAGE + "a red cat", images(0))
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, -8:] = inputs["input_ids"][0, -8:]
    output = model(**inputs, labels=labels)
    positions = output.input_positions[0].tolist()
    answer = list(range(inputs["input_ids"].shape[1] - 8, inputs["input_ids"].shape[1]))
    predicted_at = [positions.index(column) - 1 for column in answer]
    expected = torch.nn.functional.cross_entropy(output.logits[0, predicted_at].float(), labels[0, answer])
    torch.testing.assert_close(output.loss, expected)

    example = {**{k: v[0] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")},
               "pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"][0], "labels": labels[0]}

    class OneExample(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return example

    def collate_one(batch):
        item = batch[0]
        return {k: (v if k == "pixel_values" else v[None]) for k, v in item.items()}

    merger = model.model.visual.merger.mlp[0].weight
    before = merger.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=1, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False)
    result = Trainer(model=model, args=args, train_dataset=OneExample(), data_collator=collate_one).train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(model.model.visual.merger.mlp[0].weight, before)


def test_flowcut_accepts_both_stock_classes_and_changes_only_that_instance():
    for version, stock_class in (("2", Qwen2VLForConditionalGeneration), ("2.5", Qwen2_5_VLForConditionalGeneration)):
        first, processor = build_tiny_qwen_vl(version, seed=2)
        second, _ = build_tiny_qwen_vl(version, seed=2)
        flowcut(first)
        assert type(first).__name__.startswith("FlowCut") and first.config.flowcut_retain_ratio == 0.111
        assert isinstance(first, stock_class) and type(second) is stock_class
        assert flowcut_processor(processor) is processor, "Qwen keeps its stock processor"


def test_qwen2_5_attention_never_crosses_a_window_or_an_image_after_pruning():
    """The attention segments each ViT block gets (cu_seqlens) split at the image boundary, full-attention blocks get
    one segment per image, and every window segment holds patches of one 112 px window only, while windows shrink."""
    model, processor = fresh("2.5", seed=5)
    inputs = encode_row(processor, TWO_IMAGES, images(1, 2))
    grid = inputs["image_grid_thw"]
    visual = model.model.visual
    calls = []
    hooks = [
        block.register_forward_pre_hook(
            lambda _m, args, kwargs, index=index: calls.append((index, kwargs["cu_seqlens"].tolist(), kwargs["position_embeddings"][0])),
            with_kwargs=True,
        )
        for index, block in enumerate(visual.blocks)
    ]
    try:
        with torch.no_grad():
            features = model.model.get_image_features(inputs["pixel_values"], grid)
    finally:
        for hook in hooks:
            hook.remove()
    assert [len(k) for k in features.kept_units] == [24, 20]
    _, height, width = grid[0].tolist()
    first_cos, _ = visual.rotary_pos_emb(calls[0][2], get_vision_position_ids(grid[:1], 2))
    window_of_patch = {}
    for patch, row in enumerate(first_cos):
        unit_row, unit_column = divmod(patch // 4, width // 2)
        window_of_patch[tuple(row.tolist())] = (unit_row // 4, unit_column // 4)  # 112 px / 28 px = 4 units
    shrunk = False
    for index, bounds, cos in calls:
        first_image = features.token_schedule[0][index]
        second_image = features.token_schedule[1][index]
        assert first_image in bounds and bounds[-1] == first_image + second_image, f"block {index} crosses images"
        if index in visual.fullatt_block_indexes:
            assert bounds == [0, first_image, first_image + second_image]
            continue
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end > first_image:
                break
            windows = {window_of_patch[tuple(row.tolist())] for row in cos[start:end]}
            assert len(windows) == 1, f"block {index} attends across windows {windows}"
            shrunk |= end - start < 4 * 16 and index > 0
    assert shrunk, "pruning must have shrunk some window"


def test_beam_search_and_several_returned_sequences_expand_each_prompts_images(qwen):
    model, _, processor, _ = qwen
    pad = processor.tokenizer.pad_token_id
    inputs = collate([encode_row(processor, TWO_IMAGES, images(1, 2)), encode_row(processor, ONE_IMAGE, images(0))], pad)
    beams = greedy(model, inputs, max_new_tokens=4, num_beams=3)
    assert torch.equal(beams, greedy(model, inputs, max_new_tokens=4, num_beams=3, use_cache=False))
    several = greedy(model, inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2)
    assert several.shape[0] == 4 and torch.equal(several[0::2, :-3], inputs["input_ids"])
