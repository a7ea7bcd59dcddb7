"""An original-LLaVA-format copy of an HF-format LLaVA-1.5 folder, for measuring the converting export.

    python docs/make_original_llava_copy.py llava-preset-fp16 llava-preset-original clip-config

writes the weights under the original names (one shard at a time), an original config, a 32000-token LLaMA
tokenizer (placeholder vocabulary) and a CLIP config folder to pass as ``--vision-tower``.
"""
import json, sys
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaTokenizer

source, out, clip = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True); clip.mkdir(parents=True)
hf = json.loads((source / "config.json").read_text())
text, vision = hf["text_config"], hf["vision_config"]
VOCAB = 32000

def original_name(key):
    if key.startswith("language_model.model."):
        return "model." + key[len("language_model.model."):]
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    if key.startswith("multi_modal_projector.linear_"):
        number, rest = key[len("multi_modal_projector.linear_"):].split(".", 1)
        return f"model.mm_projector.{0 if number == '1' else 2}.{rest}"
    if key.startswith("vision_tower."):
        return "model.vision_tower.vision_tower.vision_model." + key[len("vision_tower."):].removeprefix("vision_model.")
    raise KeyError(key)

weight_map = {}
for shard in sorted(source.glob("*.safetensors")):  # one shard in memory at a time
    with safe_open(str(shard), framework="pt") as handle:
        tensors = {}
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            name = original_name(key)
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                tensor = tensor[:VOCAB].clone()
            tensors[name] = tensor
    save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, shard.name))
    del tensors
(out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
config = {
    "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
    "hidden_size": text["hidden_size"], "intermediate_size": text["intermediate_size"],
    "num_hidden_layers": text["num_hidden_layers"], "num_attention_heads": text["num_attention_heads"],
    "num_key_value_heads": text["num_key_value_heads"], "hidden_act": "silu", "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    "tie_word_embeddings": False, "torch_dtype": "float16", "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "mm_hidden_size": vision["hidden_size"], "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "mm_projector_type": "mlp2x_gelu", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat", "use_mm_proj": True,
}
(out / "config.json").write_text(json.dumps(config))
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:\n▁":
    vocab[char] = len(vocab)
for i in range(VOCAB - len(vocab)):
    vocab[f"▁filler{i}"] = len(vocab)
LlamaTokenizer(vocab=vocab, merges=[]).save_pretrained(out)
CLIPVisionConfig(**{k: v for k, v in vision.items() if k in ("hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "image_size", "patch_size", "projection_dim", "hidden_act", "layer_norm_eps")}).save_pretrained(clip)
(clip / "preprocessor_config.json").write_text(json.dumps({
    "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336}))
print("ok", len(weight_map))
