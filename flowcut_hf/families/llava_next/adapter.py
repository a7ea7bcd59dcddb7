"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): FlowCut in the CLIP tower on every anyres crop, then inside the
language model after decoder layer ``flowcut_llm_prune_layer``; VFlowOpt too. The stock processor, unchanged."""

from __future__ import annotations

from dataclasses import replace

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextModel, LlavaNextProcessor, PretrainedConfig

from ...accounting import AnyresImageTokens, next_prefill_account
from ...export import check_scripts
from ...benchmark import open_image
from ...family import FlowCutFamily
from ...modeling import configuration_flowcut_llava_next as next_config
from ...modeling import modeling_flowcut_llava_next as next_modeling
from ...modeling.flowcut_clip import check_clip_vision_tower
from . import builtin, card


class LlavaNextFamily(FlowCutFamily):
    stock_model_class = LlavaNextForConditionalGeneration
    stock_inner_class = LlavaNextModel
    stock_config_class = LlavaNextConfig
    stock_processor_class = LlavaNextProcessor
    model_class = next_modeling.FlowCutLlavaNextForConditionalGeneration
    inner_model_class = next_modeling.FlowCutLlavaNextModel
    config_class = next_config.FlowCutLlavaNextConfig
    auto_map = next_modeling.AUTO_MAP
    remote_code_entry_files = next_modeling.REMOTE_CODE_ENTRY_FILES
    processor_class_name = "LlavaNextProcessor"
    field_validators = next_config.NEXT_CONFIG_VALIDATORS
    default_target_num = next_config.DEFAULT_NEXT_TARGET_NUM
    llm_stage = True

    def unpruned_image_tokens(self, config: PretrainedConfig) -> int:
        """The largest stock count any image can have, reached by an image that fills a grid pinpoint exactly (2928
        for the standard pinpoints: 576 base + 48x48 grid + 48 newlines)."""
        return max(next_modeling.stock_token_count(config, pinpoint) for pinpoint in config.image_grid_pinpoints)

    def check_vision_tower(self, vision_config: PretrainedConfig) -> None:
        check_clip_vision_tower(vision_config)

    def builtin_model(self, size: str = "builtin", seed: int = 0):
        return builtin.builtin_model(size, seed)

    def stock_image_tokens(self, config: PretrainedConfig, image_size: tuple[int, int]) -> int:
        return next_modeling.stock_token_count(config, image_size)

    def image_crops(self, config: PretrainedConfig, image_size: tuple[int, int]) -> int:
        return next_modeling.AnyresGeometry.of(config, image_size).num_crops

    def check_script(self) -> str:
        return check_scripts.FLOWCUT_KEEP_INDICES

    def expected_check_counts(self, config: PretrainedConfig, amount, image_size: tuple[int, int], report: dict) -> dict:
        """The stock placeholders, half the target per crop out of the vision tower, the target after the LLM stage."""
        return {
            "placeholders": self.stock_image_tokens(config, image_size),
            "kept_per_crop": [[self.image_crops(config, image_size), amount.target_num // 2]],
            "llm_kept": [amount.target_num],
        }

    def card_prefill_flops(self, config: PretrainedConfig, variant_config: dict, verification: dict | None, prompt_tokens: int,
                           image_size: tuple[int, int]):
        image_size = tuple(verification["image_size"]) if verification else image_size
        stock = AnyresImageTokens.stock(config, image_size)
        if verification:
            pruned_image = AnyresImageTokens(
                crops=verification["kept_per_crop"][0][0],
                vision_schedule=tuple(verification["token_schedule"][0]),
                tokens_into_llm=verification["kept"][0],
                tokens_after_llm_stage=verification["llm_kept"][0],
            )
        else:
            pruned_image = replace(stock, tokens_after_llm_stage=variant_config["flowcut_target_num"])
        unpruned = next_prefill_account(config, prompt_tokens, [stock])
        pruned = next_prefill_account(config, prompt_tokens, [pruned_image], llm_prune_layer=variant_config["flowcut_llm_prune_layer"])
        what = (
            f"vision encoder, projector and LLM, for one {image_size[1]}x{image_size[0]} image ({stock.crops} anyres crops, "
            f"{stock.tokens_into_llm} stock visual tokens) and a {prompt_tokens}-token text prompt; "
        )
        return unpruned, pruned, what

    bench_rows = ("one 672x672 image (5 crops, 2928 stock visual tokens): stock vs FlowCut vs oracle at each "
                  "--target-num (default 160, 320, 640)")

    def run_bench(self, model, processor, options):
        from .bench import DEFAULT_TARGETS, run_next_bench

        image = {"image": open_image(options.image)} if options.image is not None else {}
        return run_next_bench(
            model, processor, target_nums=options.target_nums or DEFAULT_TARGETS, repeats=options.repeats,
            warmup=options.warmup, progress=options.progress, spec=options.spec, **image,
        )

    def format_bench(self, report: dict) -> str:
        from .bench import format_next_table

        return format_next_table(report)

    def kept_tokens_picture(self, model, processor, image, target_num, retain_ratio, *, scale=None, title=None):
        from .visualize import kept_tokens_next, render_kept_tokens_next

        info = kept_tokens_next(model, processor, image, target_num)
        return render_kept_tokens_next(info, scale=1 if scale is None else scale, title=title)

    def card_text(self) -> dict[str, str]:
        return card.card_text()

    has_demo = True

    def demo(self, target_num: int | None, repeats: int, max_new_tokens: int, seed: int = 0) -> dict:
        from .demo import run_next_demo

        return run_next_demo(target_num or self.default_target_num, repeats, max_new_tokens, seed)
