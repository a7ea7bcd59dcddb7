"""Qwen2-VL and Qwen2.5-VL (one remote-code file pair): FlowCut on whole 2x2 merge units in the ViT, then inside the
language model, with the true M-RoPE positions; the amount is a share of each image's tokens or a count. The stock
processor, unchanged."""

from __future__ import annotations

from transformers import (
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
    Qwen2VLProcessor,
)

from ...amounts import RetainedAmount
from ...benchmark import open_image
from ...family import FlowCutFamily
from ...modeling import configuration_flowcut_qwen2_vl as qwen_config
from ...modeling import modeling_flowcut_qwen2_vl as qwen_modeling
from . import builtin, card
from .accounting import qwen_prefill_flops
from .check import CHECK_SCRIPT


class Qwen2VLFamily(FlowCutFamily):
    stock_model_class = Qwen2VLForConditionalGeneration
    stock_inner_class = Qwen2VLModel
    stock_config_class = Qwen2VLConfig
    stock_processor_class = Qwen2VLProcessor
    model_class = qwen_modeling.FlowCutQwen2VLForConditionalGeneration
    inner_model_class = qwen_modeling.FlowCutQwen2VLModel
    config_class = qwen_config.FlowCutQwen2VLConfig
    auto_map = qwen_modeling.AUTO_MAP_QWEN2_VL
    remote_code_entry_files = qwen_modeling.REMOTE_CODE_ENTRY_FILES
    processor_class_name = "Qwen2VLProcessor"
    field_validators = qwen_config.QWEN_FIELD_VALIDATORS
    default_retain_ratio = qwen_config.DEFAULT_QWEN_RETAIN_RATIO
    llm_stage = True
    copies_processor_files = True
    version = "2"

    def unpruned_image_tokens(self, config: PretrainedConfig) -> int:
        """The most merge units the stock processor gives an image (its default max_pixels, 12845056 px, in
        28 x 28 px units)."""
        merge_pixels = (config.vision_config.patch_size * config.vision_config.spatial_merge_size) ** 2
        return 12845056 // merge_pixels

    def builtin_model(self, size: str = "builtin", seed: int = 0):
        return builtin.builtin_model(self.version, size, seed)

    def check_script(self) -> str:
        return CHECK_SCRIPT

    def expected_check_counts(self, config: PretrainedConfig, amount, image_size: tuple[int, int], report: dict) -> dict:
        """One placeholder per 2x2 unit of the grid the processor gave the image, twice the image's amount out of the
        ViT in whole units, the amount after the LLM stage."""
        t, h, w = report["grid_thw"]
        units = t * h * w // 4
        target = amount.retained(units)
        return {"placeholders": units, "kept": [min(2 * target, units)], "llm_kept": [target]}

    def card_prefill_flops(self, config: PretrainedConfig, variant_config: dict, verification: dict | None, prompt_tokens: int,
                           image_size: tuple[int, int]):
        target_num = variant_config["flowcut_target_num"]
        amount = RetainedAmount(target_num, None if target_num is not None else variant_config["flowcut_retain_ratio"])
        return qwen_prefill_flops(config, amount, variant_config["flowcut_llm_prune_layer"], verification, prompt_tokens, image_size)

    bench_rows = ("one 1288x980 image (1610 stock visual tokens): stock vs FlowCut vs oracle at each --retain-ratio "
                  "(default 0.333, 0.222, 0.111; qwen2.5-vl: 'tiny' only)")

    def run_bench(self, model, processor, options):
        from .bench import DEFAULT_RATIOS, run_qwen_bench

        if options.target_nums:
            raise ValueError(f"{self.display_name} rows are set by --retain-ratio, not --target-num")
        image = {"image": open_image(options.image)} if options.image is not None else {}
        return run_qwen_bench(
            model, processor, retain_ratios=options.retain_ratios or DEFAULT_RATIOS, repeats=options.repeats,
            warmup=options.warmup, progress=options.progress, spec=options.spec, **image,
        )

    def format_bench(self, report: dict) -> str:
        from .bench import format_qwen_table

        return format_qwen_table(report)

    def kept_tokens_picture(self, model, processor, image, target_num, retain_ratio, *, scale=None, title=None):
        from .visualize import kept_tokens_qwen, render_kept_tokens_qwen

        info = kept_tokens_qwen(model, processor, image, retain_ratio=retain_ratio, target_num=target_num)
        return render_kept_tokens_qwen(info, scale=1 if scale is None else scale, title=title)

    def card_text(self) -> dict[str, str]:
        return card.card_text()

    def demo(self, target_num: int | None, repeats: int, max_new_tokens: int, seed: int = 0) -> dict:
        from .demo import run_qwen_demo

        return run_qwen_demo(target_num, repeats, max_new_tokens, seed, version=self.version)



class Qwen2_5VLFamily(Qwen2VLFamily):
    stock_model_class = Qwen2_5_VLForConditionalGeneration
    stock_inner_class = Qwen2_5_VLModel
    stock_config_class = Qwen2_5_VLConfig
    stock_processor_class = Qwen2_5_VLProcessor
    model_class = qwen_modeling.FlowCutQwen2_5_VLForConditionalGeneration
    inner_model_class = qwen_modeling.FlowCutQwen2_5_VLModel
    config_class = qwen_config.FlowCutQwen2_5_VLConfig
    auto_map = qwen_modeling.AUTO_MAP_QWEN2_5_VL
    processor_class_name = "Qwen2_5_VLProcessor"
    version = "2.5"
    has_demo = True
