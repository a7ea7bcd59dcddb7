"""The original-LLaVA -> HF converter, on a tiny checkpoint built here (real architectures, real 336/14 geometry)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoProcessor,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

import flowcut_hf.families.llava.original as convert
from flowcut_hf.export import weights
from flowcut_hf.families.llava.original import convert_original_llava, is_hf_llava, is_original_llava

VOCAB = 100  # -> 102 with <image> and <pad> -> 128 rows after padding to a multiple of 64
IMAGE_ID = VOCAB
CLIP_REPO = "openai/clip-vit-large-patch14-336"
PROMPT_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
]
TEXT = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VISION = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=336,
    patch_size=14,
    projection_dim=16,
)


# --------------------------------------------------------------------------------------------- builders


def _tokenizer(pad: bool) -> LlamaTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:\n▁":
        vocab[char] = len(vocab)
    merges = []
    for word in ("▁USER", "▁ASSISTANT", "▁What", "▁is", "▁this"):
        current = word[0]
        for char in word[1:]:
            merges.append((current, char))
            current += char
            vocab.setdefault(current, len(vocab))
    for i in range(VOCAB - len(vocab)):
        vocab[f"▁filler{i}"] = len(vocab)
    assert len(vocab) == VOCAB
    # LLaVA-1.5's own tokenizer sets pad = <unk>; vicuna's has none. Both must convert.
    return LlamaTokenizer(vocab=vocab, merges=merges, **({"pad_token": "<unk>"} if pad else {}))


def _perturb(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random values everywhere (norms included), so a swapped or missing tensor changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in state.items()}


def _write_clip(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """A full CLIPModel folder (text tower too) with an old-style preprocessor_config.json. Returns its tensors."""
    torch.manual_seed(seed)
    text = dict(
        hidden_size=16,
        intermediate_size=20,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        max_position_embeddings=16,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
    model.save_pretrained(folder)
    state = _perturb(model.state_dict(), seed)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": 336,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3,
                "size": 336,
            }
        )
    )
    return state


def _original_config(**overrides) -> dict:
    config = {
        "_name_or_path": "./checkpoints/vicuna-7b-v1-5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        **TEXT,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "pretraining_tp": 1,
        "transformers_version": "4.31.0",
        "initializer_range": 0.02,
        "max_length": 4096,
        "mm_vision_tower": CLIP_REPO,
        "mm_hidden_size": VISION["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "mm_projector_lr": None,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
    }
    config.update(overrides)
    return config


def _original_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Original LLaVA names: LlamaForCausalLM's (model.*, lm_head.*) plus model.mm_projector.{0,2}.*."""
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(**TEXT, vocab_size=VOCAB, rms_norm_eps=1e-5))
    state = _perturb(llama.state_dict(), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    hidden, mm_hidden = TEXT["hidden_size"], VISION["hidden_size"]
    for name, shape in {
        "0.weight": (hidden, mm_hidden),
        "0.bias": (hidden,),
        "2.weight": (hidden, hidden),
        "2.bias": (hidden,),
    }.items():
        state[f"model.mm_projector.{name}"] = 0.2 * torch.randn(shape, generator=gen)
    return state


def _write_checkpoint(
    folder: Path, tensors: dict[str, torch.Tensor], *, pad: bool = False, fmt: str = "sharded", **config_overrides
) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_original_config(**config_overrides)))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 4096})
    )
    _tokenizer(pad).save_pretrained(folder)
    if fmt == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
        return
    keys = list(tensors)
    # Old checkpoints carry this buffer; it must be dropped, not reported as unknown.
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(6)}
    halves = {
        "model-00001-of-00002.safetensors": {k: tensors[k] for k in keys[: len(keys) // 2]},
        "model-00002-of-00002.safetensors": {**{k: tensors[k] for k in keys[len(keys) // 2 :]}, **extra},
    }
    weight_map = {}
    for name, part in halves.items():
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return tensors


def _grown(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([weight, weight.mean(0, keepdim=True).expand(rows - weight.shape[0], -1)])


def _native_llava(
    llava: dict[str, torch.Tensor], clip: dict[str, torch.Tensor], clip_dir: Path, rows: int
) -> LlavaForConditionalGeneration:
    """The HF model built directly from the same weights, by hand, independent of the converter."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig.from_pretrained(clip_dir),
        text_config=LlamaConfig(**TEXT, vocab_size=rows, rms_norm_eps=1e-5),
        image_token_index=IMAGE_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    state = {}
    for key, value in llava.items():
        if key.startswith("model.mm_projector."):
            layer = {"0": "linear_1", "2": "linear_2"}[key.split(".")[2]]
            state[f"model.multi_modal_projector.{layer}.{key.split('.')[3]}"] = value
        elif key == "lm_head.weight":
            state[key] = _grown(value, rows)
        elif key == "model.embed_tokens.weight":
            state["model.language_model.embed_tokens.weight"] = _grown(value, rows)
        else:
            state["model.language_model." + key[len("model.") :]] = value
    wants_prefix = any(k.startswith("model.vision_tower.vision_model.") for k in model.state_dict())
    for key, value in clip.items():
        if key.startswith("vision_model.") and not key.endswith("position_ids"):
            state["model.vision_tower." + (key if wants_prefix else key[len("vision_model.") :])] = value
    model.load_state_dict(state, strict=True)
    return model


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    clip_dir = root / "clip"
    clip = _write_clip(clip_dir, seed=1)
    llava = _original_tensors(seed=2)
    source = root / "llava-v1.5-tiny"
    _write_checkpoint(source, llava)
    out = root / "out" / "hf"
    # A tiny shard limit forces several output shards and the index file.
    report = convert_original_llava(source, out, vision_tower_dir=clip_dir, max_shard_size="100KB")
    return {
        "root": root,
        "clip_dir": clip_dir,
        "clip": clip,
        "llava": llava,
        "source": source,
        "out": out,
        "report": report,
    }


@pytest.fixture()
def image() -> Image.Image:
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (150, 220, 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


# --------------------------------------------------------------------------------------------- tests


def test_output_loads_without_missing_or_unexpected_keys(world, tmp_path):
    out, report = world["out"], world["report"]
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and not info["error_msgs"]
    assert len(report.shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert report.dropped_keys == ("model.layers.0.self_attn.rotary_emb.inv_freq",)
    # The written layout is the one transformers writes back for a model loaded from it.
    model.save_pretrained(tmp_path / "resaved")
    assert set(_load_folder(tmp_path / "resaved")) == set(_load_folder(out))
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    assert config["projector_hidden_act"] == "gelu" and config["image_seq_length"] == 576
    assert config["text_config"]["rms_norm_eps"] == 1e-5 and config["text_config"]["num_key_value_heads"] == 2
    assert config["vision_config"]["hidden_size"] == VISION["hidden_size"]
    assert "max_length" not in config["text_config"]
    assert not any(k.startswith("text_model") or "projection" in k for k in _load_folder(out))


def test_logits_match_hf_model_built_from_the_same_weights(world, image):
    out = world["out"]
    converted = LlavaForConditionalGeneration.from_pretrained(out).eval()
    native = _native_llava(world["llava"], world["clip"], world["clip_dir"], rows=128)
    processor = AutoProcessor.from_pretrained(out)
    prompt = processor.apply_chat_template(PROMPT_MESSAGES, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == 576
    with torch.no_grad():
        got = converted(**inputs).logits
        want = native(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_vocabulary_grows_to_multiple_of_64_with_mean_rows(world):
    out, report, llava = world["out"], world["report"], world["llava"]
    tensors = _load_folder(out)
    for name, original in (
        ("language_model.model.embed_tokens.weight", llava["model.embed_tokens.weight"]),
        ("language_model.lm_head.weight", llava["lm_head.weight"]),
    ):
        grown = tensors[name]
        assert grown.shape == (128, TEXT["hidden_size"])
        torch.testing.assert_close(grown[:VOCAB], original, atol=0, rtol=0)
        torch.testing.assert_close(grown[VOCAB:], original.mean(0).expand(128 - VOCAB, -1), atol=1e-6, rtol=0)
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == VOCAB + 2 and report.added_tokens == ("<image>", "<pad>")
    assert tokenizer.convert_tokens_to_ids("<image>") == IMAGE_ID == report.image_token_index
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == VOCAB + 1 == report.pad_token_id
    assert tokenizer("<image>", add_special_tokens=False).input_ids == [IMAGE_ID]
    config = json.loads((out / "config.json").read_text())
    assert config["image_token_index"] == IMAGE_ID and config["text_config"]["vocab_size"] == 128
    assert config["text_config"]["pad_token_id"] == VOCAB + 1
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["pad_token_id"] == VOCAB + 1 and generation["eos_token_id"] == 2


def test_processor_chat_template_and_mean_colour_padding(world):
    processor = AutoProcessor.from_pretrained(world["out"])
    assert processor.apply_chat_template(PROMPT_MESSAGES, add_generation_prompt=True) == (
        "USER: <image>\nWhat is this? ASSISTANT:"
    )
    turns = [
        {"role": "system", "content": "Be brief."},
        *PROMPT_MESSAGES,
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": "And this?"},
    ]
    assert processor.apply_chat_template(turns, add_generation_prompt=True) == (
        "Be brief. USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: And this? ASSISTANT:"
    )
    # A wide white image: LLaVA's 'pad' puts mean-colour bars above and below, i.e. ~0 after normalising.
    pixels = processor.image_processor(Image.new("RGB", (336, 168), "white"), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 336, 336)
    assert pixels[0, :, :70].abs().max() < 0.02
    assert pixels[0, :, 120:200].min() > 1.5
    assert processor.patch_size == 14 and processor.num_additional_image_tokens == 1


def write_sentencepiece_tokenizer(source: Path) -> bytes:
    """Gives the checkpoint in ``source`` liuhaotian's tokenizer layout: ``tokenizer.model`` (a SentencePiece model
    trained here, LLaMA-style: BPE, a dummy prefix, whitespace kept) and a LlamaTokenizer config, no tokenizer.json.
    Returns the model's bytes."""
    spm = pytest.importorskip("sentencepiece")
    # LLaMA's model has every byte; this tiny one needs the newline of LLaVA's prompt in its corpus.
    corpus = ["USER: What is this? ASSISTANT: A cat sitting on a mat.", "The quick brown fox jumps over the dog.",
              "USER: <image>\nWhat is this?\nA cat."]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 50),
        model_writer=model,
        vocab_size=VOCAB,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink(missing_ok=True)
    (source / "tokenizer.model").write_bytes(model.getvalue())
    (source / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
                "model_max_length": 2048,
            }
        )
    )
    return model.getvalue()


def test_sentencepiece_only_tokenizer_keeps_its_tokenisation(world, tmp_path):
    """liuhaotian's repos ship tokenizer.model only; the converted tokenizer must split text as SentencePiece does."""
    spm = pytest.importorskip("sentencepiece")
    source = tmp_path / "spm-ckpt"
    _write_checkpoint(source, world["llava"])
    model_bytes = write_sentencepiece_tokenizer(source)
    reference = spm.SentencePieceProcessor(model_proto=model_bytes)
    assert reference.get_piece_size() == VOCAB

    out = tmp_path / "out"
    convert_original_llava(source, out, vision_tower_dir=world["clip_dir"])
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    text = "USER: What is this? ASSISTANT:"
    assert tokenizer(text).input_ids == [1, *reference.encode(text)]
    assert tokenizer(f"USER: <image>\n{text}").input_ids.count(IMAGE_ID) == 1
    assert (out / "tokenizer.model").read_bytes() == model_bytes


def test_pickle_weights_refused_unless_allowed_then_identical(world):
    root = world["root"]
    source = root / "bin-ckpt"
    _write_checkpoint(source, world["llava"], fmt="bin")
    # The vision tower as a bare CLIPVisionModel folder (the layout transformers 5 saves from scratch).
    bare = root / "clip-vision-bare"
    bare.mkdir()
    save_file(
        {k[len("vision_model.") :]: v for k, v in world["clip"].items() if k.startswith("vision_model.")},
        str(bare / "model.safetensors"),
        metadata={"format": "pt"},
    )
    CLIPVisionConfig(**VISION).save_pretrained(bare)
    shutil.copy(world["clip_dir"] / "preprocessor_config.json", bare)

    out = root / "bin-out"
    with pytest.raises(ValueError, match=r"allow_pickle=True.*--allow-pickle"):
        convert_original_llava(source, out, vision_tower_dir=bare)
    assert _leftovers(root, out.name) == []

    report = convert_original_llava(source, out, vision_tower_dir=bare, allow_pickle=True)
    assert report.shards == ("model.safetensors",)
    got, want = _load_folder(out), _load_folder(world["out"])
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)


def test_checkpoint_vision_tower_wins_and_config_mapping(world, tmp_path):
    """A fine-tuned tower inside the checkpoint; cls_patch / layer -1 / square; tokenizer that already pads."""
    other_clip = tmp_path / "other-clip"
    _write_clip(other_clip, seed=7)  # different weights: must not end up in the output
    tower = {
        f"model.vision_tower.vision_tower.{k}": v for k, v in world["clip"].items() if k.startswith("vision_model.")
    }
    source = tmp_path / "ckpt"
    _write_checkpoint(
        source,
        {**world["llava"], **tower},
        pad=True,
        mm_vision_select_layer=-1,
        mm_vision_select_feature="cls_patch",
        image_aspect_ratio="square",
    )
    out = tmp_path / "out"
    report = convert_original_llava(source, out, vision_tower_dir=other_clip)
    assert report.vision_tower_source == "checkpoint"
    got = _load_folder(out)
    for key, value in world["clip"].items():
        if key.startswith("vision_model."):
            torch.testing.assert_close(got["vision_tower." + key], value, atol=0, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_layer"] == -1 and config["vision_feature_select_strategy"] == "full"
    assert config["image_seq_length"] == 577
    assert report.added_tokens == ("<image>",) and report.pad_token_id == 0 and report.new_vocab_rows == 128
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad is False
    inputs = processor(images=Image.new("RGB", (200, 100)), text="USER: <image>\nHi ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == 577
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()


def test_vision_tower_fetched_from_hub_endpoint(world, tmp_path):
    """No vision_tower_dir: mm_vision_tower is downloaded through HF_ENDPOINT (a local stand-in Hub)."""
    from hub_server import HubClient, LocalHubServer

    files = {
        name: (world["clip_dir"] / name).read_bytes()
        for name in ("config.json", "preprocessor_config.json", "model.safetensors")
    }
    out = tmp_path / "out"
    with LocalHubServer() as hub:
        hub.commit_files(CLIP_REPO, files)
        result = HubClient(hub, hf_home=tmp_path / "hf_home").run_json(
            """
            from flowcut_hf.families.llava.original import convert_original_llava
            report = convert_original_llava(SOURCE, OUT)
            emit(report.vision_tower_source)
            """,
            SOURCE=str(world["source"]),
            OUT=str(out),
            timeout=240,
        )
        fetched = sorted({path for repo, _, path in hub.downloads if repo == CLIP_REPO})
        hub.assert_no_internal_errors()
    assert result == CLIP_REPO
    assert fetched == ["config.json", "model.safetensors", "preprocessor_config.json"]
    got, want = _load_folder(out), _load_folder(world["out"])
    assert got.keys() == want.keys()
    assert all(torch.equal(got[key], want[key]) for key in want)


def test_bad_inputs_raise_clearly_and_leave_nothing(world, tmp_path, monkeypatch):
    source, clip_dir = world["source"], world["clip_dir"]
    out = tmp_path / "out"

    def variant(name: str, **overrides) -> Path:
        folder = tmp_path / name
        shutil.copytree(source, folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(overrides)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
        return folder

    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_original_llava(tmp_path / "nope", out, vision_tower_dir=clip_dir)
    with pytest.raises(ValueError, match="not an original LLaVA checkpoint"):
        convert_original_llava(
            variant(
                "llama",
                architectures=["LlamaForCausalLM"],
                model_type="llama",
                mm_vision_tower=None,
                mm_hidden_size=None,
            ),
            out,
            vision_tower_dir=clip_dir,
        )
    with pytest.raises(ValueError, match="needs no conversion"):
        convert_original_llava(
            variant(
                "hf",
                architectures=["LlavaForConditionalGeneration"],
                text_config={},
                mm_vision_tower=None,
                mm_hidden_size=None,
            ),
            out,
            vision_tower_dir=clip_dir,
        )
    with pytest.raises(ValueError, match="mm_projector_type 'linear'"):
        convert_original_llava(variant("linear", mm_projector_type="linear"), out, vision_tower_dir=clip_dir)
    with pytest.raises(FileNotFoundError, match=r"vision_tower_dir .* is not a folder"):
        convert_original_llava(source, out, vision_tower_dir=tmp_path / "no-clip")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(convert, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=f"{CLIP_REPO}.*pass vision_tower_dir"):
        convert_original_llava(source, out)

    broken = variant("broken")
    tensors = _load_folder(broken)  # drops the index: the plain *.safetensors glob must still work
    del tensors["model.layers.1.mlp.up_proj.weight"]
    for path in broken.glob("model*"):
        path.unlink()
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 tensors missing .*layers\.1\.mlp\.up_proj"):
        convert_original_llava(broken, out, vision_tower_dir=clip_dir)
    assert _leftovers(tmp_path, out.name) == []

    # A failure while writing (disk full, say) removes the half-written temporary folder.
    calls = []

    def failing_write(writer, name, tensor):
        calls.append(name)
        raise OSError("disk full")

    monkeypatch.setattr(weights.ShardWriter, "add", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert_original_llava(source, out, vision_tower_dir=clip_dir)
    assert calls and _leftovers(tmp_path, out.name) == []


def test_existing_output_needs_overwrite(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_original_llava(world["source"], out, vision_tower_dir=world["clip_dir"])
    assert (out / "stale.txt").exists()
    report = convert_original_llava(
        world["source"], out, vision_tower_dir=world["clip_dir"], overwrite=True, dtype="bfloat16"
    )
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert report.dtype == "bfloat16" and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in _load_folder(out).values()} == {torch.bfloat16}
    assert _leftovers(tmp_path, out.name) == ["out"]


def test_config_predicates():
    original = _original_config()
    assert is_original_llava(original) and not is_hf_llava(original)
    assert is_original_llava({"model_type": "llava_llama"})
    hf = LlavaConfig().to_dict()
    hf["architectures"] = ["LlavaForConditionalGeneration"]
    assert is_hf_llava(hf) and not is_original_llava(hf)
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    assert not is_original_llava(llama) and not is_hf_llava(llama)
    mistral = {"architectures": ["LlavaMistralForCausalLM"], "model_type": "llava_mistral"}
    assert not is_original_llava(mistral) and not is_hf_llava(mistral)


def test_a_plain_install_can_read_a_sentencepiece_only_tokenizer():
    """liuhaotian's checkpoints have only tokenizer.model; reading it must not need an extra."""
    import importlib.metadata

    plain = [r for r in importlib.metadata.requires("flowcut-hf") if "extra ==" not in r]
    assert {"sentencepiece", "protobuf"} <= {re.split(r"[<>=!~; ]", r)[0] for r in plain}


def test_the_convert_command_finds_the_family_of_an_original_checkpoint(world, tmp_path, capsys):
    """``python -m flowcut_hf.export.convert`` asks the families which original layout a folder is in."""
    from flowcut_hf.export.convert import main as convert_main

    out = tmp_path / "hf"
    assert convert_main([str(world["source"]), str(out), "--vision-tower", str(world["clip_dir"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vision_tower_source"] == str(world["clip_dir"]) and (out / "config.json").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    with pytest.raises(SystemExit) as refused:
        convert_main([str(out), str(tmp_path / "again")])
    assert refused.value.code == 2 and "not in an original layout" in capsys.readouterr().err
