"""flowcut-hf as an lmms-eval model: ``lmms-eval --model flowcut --model_args pretrained=...``.

lmms-eval (0.7+) finds external models through the Python entry-point group ``lmms_eval.models``; flowcut-hf's
``pyproject.toml`` registers :func:`model_manifest` there, so installing both is all it takes. The model is any
flowcut-hf model:

- a variant (an exported folder or Hub repo): ``pretrained=my-org/llava-1.5-7b-flowcut64``; its remote code prunes;
- a stock checkpoint plus a method: ``pretrained=llava-hf/llava-1.5-7b-hf,method=flowcut,target_num=64``, or
  ``method=vflowopt,preset=10%``, or ``method=flowcut,retain_ratio=0.111`` (Qwen2-VL): :func:`flowcut_hf.prune` is
  applied to the loaded model, and :func:`flowcut_hf.flowcut_processor` gives the processor it needs.

Everything family-specific goes through the registry (``AutoModelForImageTextToText``, ``AutoProcessor``, ``prune``),
so a family added to flowcut-hf is evaluated without changes here. Requests are batched (``--batch_size``, left
padding); images go through the model's own processor and chat template. The module imports nothing of torchvision.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

MODEL_ID = "flowcut"


def model_manifest():
    """The entry point lmms-eval loads from the ``lmms_eval.models`` group: a ``ModelManifest`` naming
    :class:`FlowCutLMMS` by path.

    It is defined before this module imports lmms-eval, and imports lmms-eval's registry only when called: importing
    this module first imports ``lmms_eval.models``, which loads the entry points, which come back here while this
    module is still half-imported. So the plug-in registers whichever is imported first.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.FlowCutLMMS", aliases=("flowcut_hf",))


import torch  # noqa: E402  (after model_manifest, see its docstring)
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402
from PIL import Image  # noqa: E402


class FlowCutLMMS(lmms):
    """A flowcut-hf model for lmms-eval's ``generate_until`` and ``loglikelihood`` tasks.

    Args:
        pretrained: a flowcut-hf variant, or a stock checkpoint of a supported family (folder or Hub repo id).
        method: ``flowcut`` or ``vflowopt`` to prune a stock checkpoint (or re-prune a variant); None runs the model
            as its config says.
        target_num / retain_ratio: FlowCut's visual tokens per image / share per image (Qwen2-VL).
        preset: VFlowOpt's released preset (``10%``, ``25%``, ``50%``).
        batch_size: requests per forward pass.
        device: ``cuda``, ``cuda:1``, ``cpu`` (default: cuda when available); ``device_map=auto`` spreads the model.
        dtype: ``auto`` (the checkpoint's), ``float16``, ``bfloat16`` or ``float32``.
        attn_implementation: ``eager``, ``sdpa`` or ``flash_attention_2``.
        revision: the Hub revision of ``pretrained``.
        max_new_tokens: the default when a task sets none.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        method: str | None = None,
        target_num: int | None = None,
        retain_ratio: float | None = None,
        preset: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        device_map: str | None = None,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        revision: str | None = None,
        max_new_tokens: int = 128,
        **unused: Any,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from .api import flowcut_processor, prune

        unknown = sorted(key for key, value in unused.items() if value is not None and key != "max_batch_size")
        if unknown:
            raise ValueError(
                f"unknown model_args {unknown} for --model {MODEL_ID}; known: pretrained, method, target_num, "
                "retain_ratio, preset, batch_size, device, device_map, dtype, attn_implementation, revision, max_new_tokens"
            )
        if method is None and (target_num is not None or retain_ratio is not None or preset is not None):
            raise ValueError("target_num, retain_ratio and preset need method=flowcut or method=vflowopt in model_args")
        if str(batch_size).startswith("auto"):
            raise ValueError(f"--model {MODEL_ID} takes a fixed --batch_size, e.g. 8, not {batch_size!r}")
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        load = {"revision": revision, "trust_remote_code": True}
        model_kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
        if attn_implementation:
            model_kwargs["attn_implementation"] = attn_implementation
        if device_map:
            model_kwargs["device_map"] = device_map
        model = AutoModelForImageTextToText.from_pretrained(pretrained, **load, **model_kwargs)
        processor = AutoProcessor.from_pretrained(pretrained, **load)
        if method is not None:
            settings = {k: v for k, v in {"target_num": target_num, "retain_ratio": retain_ratio}.items() if v is not None}
            prune(model, method, preset=preset, **settings)
            if method == "flowcut" and target_num is not None:
                processor = flowcut_processor(processor, target_num)
            elif method == "flowcut":
                processor = flowcut_processor(processor)
        if not device_map:
            model.to(self._device)
        self.model = model.eval()
        self.processor = processor
        # Generation continues each row from its last token, so the padding goes on the left.
        self.processor.tokenizer.padding_side = "left"
        self.image_token = getattr(processor, "image_token", "<image>")

    # ------------------------------------------------------------------ lmms-eval's interface

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        # Requests with the same generation settings share batches.
        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = [requests[i] for i in indices[start : start + self.batch_size]]
                for i, answer in zip(indices[start : start + self.batch_size], self._generate(batch)):
                    answers[i] = answer
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        scores = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in (request.args for request in requests):
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            images = self._images(doc_to_visual(doc))
            prompt = self._prompt(context, len(images))
            whole = self._inputs([prompt + continuation], images)
            continuation_length = whole["input_ids"].shape[1] - self._inputs([prompt], images)["input_ids"].shape[1]
            # Counted from the end: a model that prunes inside the language model returns fewer positions.
            with torch.no_grad():
                logits = self.model(**whole).logits[0, -continuation_length - 1 : -1].float()
            targets = whole["input_ids"][0, -continuation_length:]
            log_probs = torch.log_softmax(logits, dim=-1)
            scores.append((float(log_probs.gather(1, targets[:, None]).sum()), bool((logits.argmax(-1) == targets).all())))
        return scores

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(f"--model {MODEL_ID} runs single-round tasks (generate_until, loglikelihood)")

    # ------------------------------------------------------------------ helpers

    def _generate(self, batch: list[Instance]) -> list[str]:
        settings = dict(batch[0].args[1])
        until = settings.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(settings.pop("temperature", 0) or 0)
        generate = {
            "max_new_tokens": int(settings.pop("max_new_tokens", self.max_new_tokens)),
            "do_sample": temperature > 0,
            "num_beams": int(settings.pop("num_beams", 1) or 1),
        }
        if temperature > 0:
            generate.update(temperature=temperature, top_p=float(settings.pop("top_p", 1.0) or 1.0))
        prompts, images = [], []
        for request in batch:
            context, _, doc_to_visual, doc_id, task, split = request.args
            doc_images = self._images(doc_to_visual(self.task_dict[task][split][doc_id]))
            prompts.append(self._prompt(context, len(doc_images)))
            images.extend(doc_images)
        inputs = self._inputs(prompts, images)
        with torch.no_grad():
            output = self.model.generate(**inputs, **generate, pad_token_id=self.processor.tokenizer.pad_token_id)
        texts = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers = []
        for request, text in zip(batch, texts):
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (request.args[0], batch[0].args[1]), text)
            answers.append(text)
        return answers

    def _images(self, visuals: Any) -> list[Image.Image]:
        flat = []
        for visual in visuals or []:
            flat.extend(visual if isinstance(visual, (list, tuple)) else [visual])
        for visual in flat:
            if not isinstance(visual, Image.Image):
                raise NotImplementedError(
                    f"--model {MODEL_ID} takes image tasks; this task gives {type(visual).__name__} (video or audio)"
                )
        return [image.convert("RGB") for image in flat]

    def _prompt(self, context: str, image_count: int) -> str:
        """The model's chat prompt for ``context`` with ``image_count`` images before the text."""
        text = context.replace(self.image_token, "").strip() if image_count else context
        content = [{"type": "image"}] * image_count + [{"type": "text", "text": text}]
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return f"USER: {self.image_token * image_count}\n{text} ASSISTANT:"

    def _inputs(self, prompts: list[str], images: list[Image.Image]) -> dict:
        inputs = self.processor(images=images or None, text=prompts, padding=True, return_tensors="pt")
        inputs = {key: value.to(self.model.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs
