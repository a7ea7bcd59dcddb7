"""LLaVA processor that emits as many ``<image>`` placeholders as a FlowCut model keeps per image."""

from __future__ import annotations

from transformers import LlavaProcessor

from .configuration_flowcut_llava import DEFAULT_TARGET_NUM, validate_target_num


class FlowCutLlavaProcessor(LlavaProcessor):
    r"""A [`LlavaProcessor`] for FlowCut models.

    Args:
        flowcut_target_num (`int`, defaults to 64):
            Visual tokens the model keeps per image; must equal the model's `config.flowcut_target_num`.
        flowcut_enabled (`bool`, defaults to `True`):
            Must equal the model's `config.flowcut_enabled`; when False, the stock count is emitted.
    """

    _auto_class = "AutoProcessor"

    # Every parent parameter is re-declared by name: ProcessorMixin serialises only the named ones.
    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        num_additional_image_tokens=0,
        flowcut_target_num: int = DEFAULT_TARGET_NUM,
        flowcut_enabled: bool = True,
        **kwargs,
    ):
        self.flowcut_target_num = validate_target_num(flowcut_target_num)
        self.flowcut_enabled = bool(flowcut_enabled)
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            num_additional_image_tokens=num_additional_image_tokens,
            **kwargs,
        )

    def to_dict(self) -> dict:
        data = super().to_dict()
        # Name the stock class here (auto_map still points at this one): without trust_remote_code, AutoProcessor
        # then falls back to the stock LlavaProcessor, which matches the stock model it loads, instead of failing.
        data["processor_class"] = "LlavaProcessor"
        return data

    def _retained_count(self, unpruned_count: int) -> int:
        if not self.flowcut_enabled:
            return unpruned_count
        return min(validate_target_num(self.flowcut_target_num), unpruned_count)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        unpruned = len(super().replace_image_token(image_inputs, image_idx, **kwargs)) // len(self.image_token)
        return self.image_token * self._retained_count(unpruned)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        data = super()._get_num_multimodal_tokens(image_sizes=image_sizes, **kwargs)
        if image_sizes is not None:
            data.num_image_tokens = [self._retained_count(count) for count in data.num_image_tokens]
        return data


__all__ = ["FlowCutLlavaProcessor"]
