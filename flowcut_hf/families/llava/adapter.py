"""LLaVA-1.5 (``LlavaForConditionalGeneration``): FlowCut in the CLIP vision tower to a fixed count per image, which
its processor emits as placeholders; VFlowOpt with the stock processor."""

from __future__ import annotations

from pathlib import Path

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaModel, LlavaProcessor, PretrainedConfig, ProcessorMixin

from ...accounting import prefill_account
from ...export import check_scripts
from ...family import FlowCutFamily
from ...modeling import configuration_flowcut_llava as llava_config
from ...modeling import modeling_flowcut_llava as llava_modeling
from ...modeling.flowcut_clip import check_clip_vision_tower
from ...modeling.processing_flowcut_llava import FlowCutLlavaProcessor
from . import builtin, card
from .original import convert_original_llava
from .original_config import is_original_llava


class LlavaFamily(FlowCutFamily):
    stock_model_class = LlavaForConditionalGeneration
    stock_inner_class = LlavaModel
    stock_config_class = LlavaConfig
    stock_processor_class = LlavaProcessor
    model_class = llava_modeling.FlowCutLlavaForConditionalGeneration
    inner_model_class = llava_modeling.FlowCutLlavaModel
    config_class = llava_config.FlowCutLlavaConfig
    auto_map = llava_modeling.AUTO_MAP
    remote_code_entry_files = llava_modeling.REMOTE_CODE_ENTRY_FILES
    processor_class_name = "FlowCutLlavaProcessor"
    field_validators = {k: v for k, v in llava_config.LLAVA_CONFIG_VALIDATORS.items() if k != "flowcut_llm_prune_layer"}
    default_target_num = llava_config.DEFAULT_TARGET_NUM

    def processor_for(
        self, processor: ProcessorMixin, target_num: int | None, enabled: bool = True, from_original_checkpoint: bool = False
    ) -> ProcessorMixin:
        """A processor that emits ``target_num`` placeholders per image, since the model keeps that many
        (``from_original_checkpoint``: for a model converted from the original LLaVA format, one that tokenizes as
        the original code did, see :class:`FlowCutLlavaProcessor`)."""
        if not isinstance(processor, LlavaProcessor):
            raise TypeError(f"a FlowCut LLaVA model takes a LlavaProcessor, got {type(processor).__name__}.")
        return FlowCutLlavaProcessor(
            image_processor=processor.image_processor,
            tokenizer=processor.tokenizer,
            patch_size=processor.patch_size,
            vision_feature_select_strategy=processor.vision_feature_select_strategy,
            chat_template=processor.chat_template,
            image_token=processor.image_token,
            num_additional_image_tokens=processor.num_additional_image_tokens,
            flowcut_target_num=target_num,
            flowcut_enabled=enabled,
            original_llava_tokenization=from_original_checkpoint,
        )

    def unpruned_image_tokens(self, config: PretrainedConfig) -> int:
        """Every image gives the encoder's patch count (576 at 336 px / 14 px), plus CLS with "full"."""
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (getattr(config, "vision_feature_select_strategy", "default") == "full")

    def check_vision_tower(self, vision_config: PretrainedConfig) -> None:
        check_clip_vision_tower(vision_config)

    def builtin_model(self, size: str = "builtin", seed: int = 0):
        return builtin.builtin_model(size, seed)

    def is_original_checkpoint(self, config: dict, source: str) -> bool:
        if not is_original_llava(config):
            return False
        if config.get("image_aspect_ratio") == "anyres" or str(config.get("mm_patch_merge_type", "")).startswith("spatial"):
            name = str(source).rstrip("/").rsplit("/", 1)[-1]
            raise ValueError(
                f"{source} is an original-format anyres (LLaVA-1.6) checkpoint, which the exporter does not convert; "
                f"export its HF-format copy instead (llava-hf publishes one for each released model: llava-hf/{name}-hf)."
            )
        return True

    def original_hf_config(self, config: dict) -> dict:
        """Its tower is the CLIP-L/336 of every LLaVA-1.5, which the stock config's defaults describe; the depth is the
        original's own (its config is the language model's), so that VFlowOpt presets are fitted to it."""
        text_config = {"model_type": "llama", "num_hidden_layers": config.get("num_hidden_layers", 32)}
        return {"model_type": self.model_type, "vision_feature_select_strategy": "default", "text_config": text_config}

    def original_source_note(self, config: dict, vision_tower: Path | None) -> str:
        return f"vision tower: {vision_tower or config.get('mm_vision_tower')}"

    def convert_original(self, source: Path, out: Path, *, vision_tower: Path | None, allow_pickle: bool, **options):
        return convert_original_llava(source, out, vision_tower_dir=vision_tower, allow_pickle=allow_pickle, **options)

    def check_script(self) -> str:
        return check_scripts.FLOWCUT_KEEP_INDICES

    def expected_check_counts(self, config: PretrainedConfig, amount, image_size: tuple[int, int], report: dict) -> dict:
        """The processor emits the kept count, and every image keeps it."""
        return {"placeholders": amount.target_num, "kept": [amount.target_num]}

    def card_prefill_flops(self, config: PretrainedConfig, variant_config: dict, verification: dict | None, prompt_tokens: int,
                           image_size: tuple[int, int]):
        target_num = variant_config["flowcut_target_num"]
        schedule = verification["token_schedule"] if verification else None
        unpruned = prefill_account(config, prompt_tokens)
        pruned = prefill_account(config, prompt_tokens, token_schedule=schedule, num_image_tokens=target_num)
        return unpruned, pruned, f"vision encoder, projector and LLM, for one image and a {prompt_tokens}-token text prompt; "

    bench_rows = "stock vs FlowCut vs oracle at each --target-num (default 64; N >= 576 is the row that prunes nothing)"

    def run_bench(self, model, processor, options):
        from .bench import TARGET_N, run_llava_bench

        return run_llava_bench(
            model, processor, target_nums=options.target_nums or [TARGET_N], repeats=options.repeats,
            warmup=options.warmup, batch_size=options.batch_size, prompt=options.prompt, image=options.image,
            passthrough=options.passthrough, scoring_runs=options.scoring_runs, progress=options.progress,
            spec=options.spec,
        )

    def vllm_bench_plan(self, folder: Path, spec: str, target_nums, requests: int):
        from .vllm_bench import vllm_bench_plan

        return vllm_bench_plan(self, folder, spec, target_nums, requests)

    def format_bench(self, report: dict) -> str:
        from .bench import format_table

        return format_table(report)

    def kept_tokens_picture(self, model, processor, image, target_num, retain_ratio, *, scale=None, title=None):
        from .visualize import DEFAULT_SCALE, kept_tokens, render_kept_tokens

        info = kept_tokens(model, processor, image, target_num)
        return render_kept_tokens(info, scale=DEFAULT_SCALE if scale is None else scale, title=title)

    card_name = "LLaVA"

    def card_text(self) -> dict[str, str]:
        return card.card_text()
