"""The Qwen2-VL / Qwen2.5-VL part of the export's check run (see :mod:`flowcut_hf.export.check_scripts`)."""

from __future__ import annotations

from ...export.check_scripts import COMMON_REPORT

# The stock processor needs torchvision for its video processor; without it, the image inputs are built as the
# processor builds them: the image processor's patches, and one placeholder per 2x2 unit of its grid.
CHECK_SCRIPT = r'''
question = "Describe the image."
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
try:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processor_class = type(processor).__name__
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
except ImportError:
    with open(f"{folder}/processor_config.json") as handle:
        processor_class = json.load(handle).get("processor_class")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_inputs = AutoImageProcessor.from_pretrained(folder)(images=[image], return_tensors="pt")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    units = int(image_inputs["image_grid_thw"].prod()) // 4
    pad = tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    input_ids = tokenizer(prompt.replace(pad, pad * units), return_tensors="pt")["input_ids"]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "mm_token_type_ids": (input_ids == model.config.image_token_id).int(), **image_inputs}
forward_error, llm_kept = None, None
with torch.no_grad():
    features = model.model.get_image_features(inputs["pixel_values"].to(model.dtype), inputs["image_grid_thw"])
    try:
        output = model(**inputs)
        torch.save(output.logits[0, -1].float(), out_path)
        llm_kept = [int(k.numel()) for k in output.image_kept_units]
    except Exception as error:
        forward_error = f"{type(error).__name__}: {error}"
report = {
    "grid_thw": [int(n) for n in inputs["image_grid_thw"][0]],
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "llm_kept": llm_kept,
    "token_schedule": features.token_schedule,
}
''' + COMMON_REPORT
