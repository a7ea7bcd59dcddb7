"""The text of the export's check runs: Python code executed in a clean process, in which flowcut_hf cannot be
imported, against one variant folder. :mod:`flowcut_hf.export.verify` assembles a check from these parts and the
family's own part (:meth:`flowcut_hf.family.FlowCutFamily.check_script`); the family's adapter builds its part from
the fragments here. Standard library only: these are strings.

A check's family part runs after the variant is loaded (``model``, ``info``, ``folder``, ``image_path``,
``out_path``, ``LOAD_KWARGS``, ``MEMORY_CAP`` are defined), builds the inputs of one image, runs
``get_image_features`` and a forward pass (saving the last logits to ``out_path``; a failure is recorded as
``forward_error``), and leaves ``report``: ``forward_error``, ``model_class``, ``processor_class``, ``missing``,
``unexpected``, ``prompt``, ``image_size``, ``placeholders``, ``text_tokens``, ``kept`` and ``input_ids``, and what the
family's :meth:`~flowcut_hf.family.FlowCutFamily.expected_check_counts` compares (``kept_per_crop``, ``llm_kept``,
``grid_thw``, ``layer_lengths``, ``token_schedule``...).
"""

# Verification must prove the variant works without flowcut-hf: the remote-code runs cannot import it.
BLOCK_FLOWCUT_HF = r'''
import importlib.abc, json, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "flowcut_hf" or name.startswith("flowcut_hf."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _Block())
'''

# One copy of the weights, in the checkpoint's own dtype. FLOWCUT_VERIFY_MEMORY (see checks.memory_plan) is the
# budget: the variant loads plainly when it fits with room to spare and there is no GPU; otherwise accelerate places
# it under the cap, a GPU first, and offloads the rest to disk.
LOAD_ONE_COPY = r'''
import os
import torch
LOAD_KWARGS = {"dtype": "auto"}
MEMORY_CAP = None
_plan = json.loads(os.environ.get("FLOWCUT_VERIFY_MEMORY", "null"))
if _plan is not None and _plan["cap"] is not None:
    _gpu = torch.cuda.is_available()
    if _gpu or _plan["weights"] * _plan["room"] > _plan["cap"]:
        MEMORY_CAP = {"cpu": _plan["cap"]}
        if _gpu:
            MEMORY_CAP = {0: int(torch.cuda.mem_get_info()[0] * 0.9), "cpu": _plan["cap"]}
        LOAD_KWARGS.update(device_map="auto", max_memory=MEMORY_CAP, offload_folder=_plan["offload_folder"])
'''

# After the remote-code run, the same instance gets the library's classes (flowcut_hf is importable again) and runs
# the same inputs: the remote code is compared with flowcut-hf on one copy of the weights.
LIBRARY_ON_SAME_INSTANCE = r'''
if forward_error is None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Block)]
    from flowcut_hf.api import install_family_classes
    from flowcut_hf.registry import family_for_model
    install_family_classes(model, family_for_model(model))
    report["library_class"] = type(model).__name__
    with torch.no_grad():
        torch.save(model(**inputs).logits[0, -1].float(), os.path.splitext(out_path)[0] + "_library.pt")
report["memory_cap"] = MEMORY_CAP and {str(device): size for device, size in MEMORY_CAP.items()}
print(json.dumps(report))
'''


# The variant, loaded as remote code, and the check image (the same for every family).
LOAD_VARIANT = r'''
import torch
from PIL import Image
import transformers
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
folder, image_path, out_path = sys.argv[1:4]
model, info = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, output_loading_info=True, **LOAD_KWARGS)
image = Image.open(image_path)
'''

# The processor of the variant, or, where loading it needs torchvision (the stock processors with a video processor),
# the same class without its video processor: sets ``processor`` and ``processor_class``.
PROCESSOR_OR_IMAGE_ONLY = r'''
try:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
except ImportError:
    with open(f"{folder}/processor_config.json") as handle:
        settings = json.load(handle)
    stock = getattr(transformers, settings.pop("processor_class"))
    class ImageOnly(stock):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kept = {k: v for k, v in settings.items() if k in ("num_image_tokens", "vision_feature_select_strategy")}
    processor = ImageOnly(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
                          video_processor=None, chat_template=tokenizer.chat_template, **kept)
    processor_class = stock.__name__
else:
    processor_class = type(processor).__name__
'''

# The fields every report has, from ``inputs``, ``prompt`` and ``processor_class``.
COMMON_REPORT = r'''
report.update({
    "forward_error": forward_error,
    "model_class": type(model).__name__, "processor_class": processor_class,
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
    "prompt": prompt, "image_size": [image.height, image.width],
    "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
    "text_tokens": int((inputs["input_ids"] != model.config.image_token_id).sum()),
    "input_ids": inputs["input_ids"][0].tolist(),
})
'''

# FlowCut on a fixed-count or anyres CLIP family: the processor's own prompt, ``keep_indices`` per crop, the kept
# tokens after the LLM stage where the model prunes there.
FLOWCUT_KEEP_INDICES = r'''
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
processor_class = type(processor).__name__
question = "Describe the image."
if getattr(processor, "chat_template", None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
else:
    prompt = f"USER: {processor.image_token}\n{question} ASSISTANT:"
inputs = processor(images=image, text=prompt, return_tensors="pt")
image_inputs = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
image_inputs["pixel_values"] = image_inputs["pixel_values"].to(model.dtype)
forward_error, llm_kept = None, None
with torch.no_grad():
    features = model.model.get_image_features(**image_inputs)
    try:
        output = model(**inputs)
        torch.save(output.logits[0, -1].float(), out_path)
        kept = getattr(output, "llm_keep_indices", None)
        llm_kept = [int(k.numel()) for k in kept] if kept is not None else None
    except Exception as error:
        forward_error = f"{type(error).__name__}: {error}"
report = {
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "kept_per_crop": [list(k.shape) for k in features.keep_indices],
    "llm_kept": llm_kept,
    "token_schedule": features.token_schedule,
}
''' + COMMON_REPORT

# The stock processor's prompt for one image, from its chat template: sets ``messages``, ``prompt`` and ``inputs``.
CHAT_PROMPT = r'''
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
'''

# ``features`` of the image, and a cached forward pass: ``lengths`` is the KV length of every decoder layer (what the
# LLM stages kept), None if the forward pass failed (``forward_error``).
FEATURES_AND_LAYER_LENGTHS = r'''
forward_error, lengths = None, None
with torch.no_grad():
    sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}  # a fixed-size family has none
    features = model.model.get_image_features(inputs["pixel_values"].to(model.dtype), **sizes)
    try:
        output = model(**inputs, use_cache=True)
        torch.save(output.logits[0, -1].float(), out_path)
        cache = output.cache if hasattr(output, "cache") else output.past_key_values  # transformers < 5.25
        lengths = [cache.get_seq_length(layer) for layer in range(len(cache.layers))]
    except Exception as error:
        forward_error = f"{type(error).__name__}: {error}"
'''

# VFlowOpt, on any family that runs it: the stock processor's prompt, stage 0's kept and recycled tokens, and the KV
# length of every decoder layer (the LLM stages).
VFLOWOPT = PROCESSOR_OR_IMAGE_ONLY + CHAT_PROMPT + FEATURES_AND_LAYER_LENGTHS + r'''
report = {
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "recycled": [int(r.numel()) for r in features.recycled_positions],
    "layer_lengths": lengths,
    "token_schedule": None,
}
''' + COMMON_REPORT
