"""What tests/test_vllm.py runs in vLLM's environment, each in a fresh interpreter (vLLM starts engine processes and
sets up torch.distributed, which a pytest process should not carry). Prints one JSON line per result.

    python tests/vllm_checks.py generate MODEL [MODEL ...] [--tp N] [--dtype D] [--family F] [--hf-overrides JSON]
                                                                                     greedy tokens, prompt ids, logprobs
    python tests/vllm_checks.py selection                                            FlowCut in vLLM's CLIP vs transformers'
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU backend needs it set

PROMPTS = {  # as in test_vllm.py
    "llava": "USER: <image>\nWhat is in the picture? ASSISTANT:",
    "qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the picture?<|im_end|>\n"
                "<|im_start|>assistant\n",
}
MEDIA_LIMITS = {"llava": {"image": 1}, "qwen2_vl": {"image": 1, "video": 0}}
MAX_NEW_TOKENS = 8


def generate(models: list[str], tensor_parallel_size: int, dtype: str, family: str, hf_overrides: dict | None) -> None:
    from vllm import LLM, SamplingParams

    from flowcut_hf.tiny import synthetic_image

    request = {"prompt": PROMPTS[family], "multi_modal_data": {"image": synthetic_image(seed=1)}}
    sampling = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0, logprobs=1, ignore_eos=True)
    for model in models:
        try:
            llm = LLM(
                model=model, max_model_len=1024, enforce_eager=True, dtype=dtype, seed=0,
                tensor_parallel_size=tensor_parallel_size, limit_mm_per_prompt=MEDIA_LIMITS[family],
                hf_overrides=hf_overrides,
            )
        except Exception as error:  # the test reads what a user would see
            print(json.dumps({"model": model, "error": f"{type(error).__name__}: {error}"}), flush=True)
            continue
        output = llm.generate(request, sampling)[0]
        completion = output.outputs[0]
        print(json.dumps({
            "model": model,
            "prompt_token_ids": list(output.prompt_token_ids),
            "token_ids": list(completion.token_ids),
            "logprobs": [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)],
        }), flush=True)
        del llm


def selection() -> None:
    """FlowCut on vLLM's CLIP tower (fused q/k/v, vLLM's kernels) selects the tokens transformers' CLIP selects."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.models.clip import CLIPVisionModel

    from flowcut_hf.families.llava.builtin import build_tiny_llava
    from flowcut_hf.families.llava.vllm import fused_clip_layer_with_signals, run_vllm_clip_layer
    from flowcut_hf.modeling.flowcut_clip import encode_clip_with_flowcut
    from flowcut_hf.modeling.flowcut_settings import FlowCutSettings

    model, _ = build_tiny_llava(seed=0)
    stock_tower = model.model.vision_tower
    feature_layer = model.config.vision_config.num_hidden_layers - 2  # vision_feature_layer=-2
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method="tcp://127.0.0.1:0", backend="gloo"
        )
        initialize_model_parallel(1)
        tower = CLIPVisionModel(
            model.config.vision_config, num_hidden_layers_override=feature_layer + 1, require_post_norm=False
        )
        tower.vision_model.load_weights(stock_tower.state_dict().items())
        for module in tower.modules():  # what vLLM's loader does after loading (CPU GEMM set-up)
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
        torch.manual_seed(0)
        results = []
        for target_num in (64, 128, 192):
            pixel_values = torch.randn(1, 3, 336, 336)
            settings = FlowCutSettings(enabled=True, target_num=target_num)
            with torch.no_grad():
                reference = encode_clip_with_flowcut(stock_tower, pixel_values, feature_layer, target_num + 1, settings)
                served = encode_clip_with_flowcut(
                    tower, pixel_values, feature_layer, target_num + 1, settings,
                    layer_with_signals=fused_clip_layer_with_signals, run_layer=run_vllm_clip_layer,
                )
            results.append({
                "target_num": target_num,
                "same_kept": torch.equal(reference[1], served[1]),
                "kept": served[1].shape[1],
                "same_schedule": reference[2] == served[2],
                "schedule": served[2],
                "max_feature_difference": (reference[0] - served[0]).abs().max().item(),
            })
    print(json.dumps(results), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("generate")
    run.add_argument("models", nargs="+")
    run.add_argument("--tp", type=int, default=1)
    run.add_argument("--dtype", default="float32")
    run.add_argument("--family", choices=sorted(PROMPTS), default="llava")
    run.add_argument("--hf-overrides", type=json.loads, default=None)
    commands.add_parser("selection")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.models, args.tp, args.dtype, args.family, args.hf_overrides)
    else:
        selection()


if __name__ == "__main__":
    main()
