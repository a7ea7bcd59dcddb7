"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): VFlowOpt, the paper's model, and FlowCut on SigLIP
crops (no CLS: the mean query) with the LLM stage. The stock processor, unchanged."""

from __future__ import annotations

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionProcessor,
    PretrainedConfig,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from ...accounting import PrefillFlops, layers_run, llm_prefill_flops, num_patches, projector_flops, vision_encoder_flops
from ...benchmark import open_image
from ...family import FlowCutFamily
from ...modeling import configuration_flowcut_llava_onevision as onevision_config
from ...modeling import modeling_flowcut_llava_onevision as onevision_modeling
from . import builtin, card
from .check import CHECK_SCRIPT


class LlavaOnevisionFamily(FlowCutFamily):
    stock_model_class = LlavaOnevisionForConditionalGeneration
    stock_inner_class = LlavaOnevisionModel
    stock_config_class = LlavaOnevisionConfig
    stock_processor_class = LlavaOnevisionProcessor
    model_class = onevision_modeling.FlowCutLlavaOnevisionForConditionalGeneration
    inner_model_class = onevision_modeling.FlowCutLlavaOnevisionModel
    config_class = onevision_config.FlowCutLlavaOnevisionConfig
    auto_map = onevision_modeling.AUTO_MAP
    remote_code_entry_files = onevision_modeling.REMOTE_CODE_ENTRY_FILES
    processor_class_name = "LlavaOnevisionProcessor"
    field_validators = onevision_config.ONEVISION_FIELD_VALIDATORS
    default_target_num = onevision_config.DEFAULT_ONEVISION_TARGET_NUM
    llm_stage = True
    copies_processor_files = True

    def unpruned_image_tokens(self, config: PretrainedConfig) -> int:
        """The packed tokens of a square image on the 2x2 grid (3699 at 384 px: the base crop's 729 plus 54 rows of
        54 tokens and a newline), the spec's reference image."""
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side * side + 2 * side * (2 * side + 1)

    def builtin_model(self, size: str = "builtin", seed: int = 0):
        return builtin.builtin_model(size, seed)

    def image_crops(self, config: PretrainedConfig, image_size: tuple[int, int]) -> int:
        return image_size_to_num_patches(image_size, config.image_grid_pinpoints, config.vision_config.image_size)

    def check_script(self) -> str:
        return CHECK_SCRIPT

    def expected_check_counts(self, config: PretrainedConfig, amount, image_size: tuple[int, int], report: dict) -> dict:
        """Half the target per crop out of SigLIP, the target after the LLM stage (the check image has more tokens
        than any target, so it is pruned)."""
        return {"kept_per_crop": [[self.image_crops(config, image_size), amount.target_num // 2]], "llm_kept": [amount.target_num]}

    def card_prefill_flops(self, config: PretrainedConfig, variant_config: dict, verification: dict | None, prompt_tokens: int,
                           image_size: tuple[int, int]):
        """SigLIP on every crop (the layers up to the feature layer), the projector on each crop's tokens, and the
        LLM with the image's tokens up to the LLM stage and the target after it."""
        target, prune_layer = variant_config["flowcut_target_num"], variant_config["flowcut_llm_prune_layer"]
        vision, text = config.vision_config, config.text_config
        patches = num_patches(vision)
        full = [patches] * layers_run(vision.num_hidden_layers, config.vision_feature_layer)
        if verification:
            image_size = tuple(verification["image_size"])
            crops, stock = verification["kept_per_crop"][0][0], verification["placeholders"]
            schedule, into_llm, after = verification["token_schedule"][0], verification["kept"][0], verification["llm_kept"][0]
        else:  # an upper bound: the vision tower unpruned
            crops, stock = self.image_crops(config, image_size), self.unpruned_image_tokens(config)
            schedule, into_llm, after = full, crops * (target // 2), target
        layers = text.num_hidden_layers

        def prefill(vision_schedule, into, kept) -> int:
            lengths = [prompt_tokens + into] * (prune_layer + 1) + [prompt_tokens + kept] * (layers - prune_layer - 1)
            return (vision_encoder_flops(config, vision_schedule, crops) + projector_flops(config, vision_schedule[-1], crops)
                    + llm_prefill_flops(text, lengths))

        what = (
            f"vision encoder, projector and LLM, for one {image_size[1]}x{image_size[0]} image ({crops} anyres crops, "
            f"{stock} stock visual tokens) and a {prompt_tokens}-token text prompt; "
        )
        return PrefillFlops(prefill(full, stock, stock)), PrefillFlops(prefill(schedule, into_llm, after)), what

    bench_rows = ("one 768x768 image (3699 stock visual tokens): stock vs VFlowOpt's 10/25/50% presets, FlowCut at the "
                  "same counts and the oracle")

    def run_bench(self, model, processor, options):
        from .bench import run_onevision_bench

        if options.target_nums or options.retain_ratios:
            raise ValueError(f"{self.display_name} rows are VFlowOpt's released presets; --target-num and --retain-ratio do not apply")
        image = {"image": open_image(options.image)} if options.image is not None else {}
        return run_onevision_bench(
            model, processor, repeats=options.repeats, warmup=options.warmup, progress=options.progress,
            spec=options.spec, **image,
        )

    def format_bench(self, report: dict) -> str:
        from .bench import format_onevision_table

        return format_onevision_table(report)

    def card_text(self) -> dict[str, str]:
        return card.card_text()
