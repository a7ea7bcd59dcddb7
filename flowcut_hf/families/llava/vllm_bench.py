"""LLaVA-1.5's checkpoints for ``flowcut-hf bench --engine vllm``: the stock model, its FlowCut variant at each amount
and the oracle at the same amount, as folders that share one copy of the weights (links), only their ``config.json``
differing. vLLM reads them without ``trust_remote_code``: the plug-in prunes from the config fields."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ...tiny import synthetic_image
from ...vllm_bench import VllmBenchPlan, VllmBenchRow
from . import builtin

QUESTION = "What is shown in this image? Answer in one sentence."
PRUNING_PREFIXES = ("flowcut_", "vflowopt_")


def stock_config(config: dict) -> dict:
    """``config`` without pruning fields and remote code: what vLLM serves as the stock model."""
    return {
        key: value for key, value in config.items()
        if not key.startswith(PRUNING_PREFIXES) and key not in ("pruning_method", "auto_map")
    }


def linked_checkpoint(source: Path, folder: Path, config: dict) -> Path:
    """``folder`` holding links to every file of ``source`` but ``config.json``, which is ``config``."""
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "config.json":
            os.symlink(path.resolve(), folder / path.name)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def vllm_bench_plan(family, folder: Path, spec: str, target_nums: Sequence[int], requests: int) -> VllmBenchPlan:
    """See :meth:`flowcut_hf.family.FlowCutFamily.vllm_bench_plan`."""
    if spec == "tiny":
        raise ValueError(
            "the tiny LLaVA has attention heads of 16, and vLLM's CPU attention needs 32 or more: bench 'builtin' "
            "(LLaVA-1.5-7B at 1/4 width) or a checkpoint"
        )
    if spec == "builtin":
        model, processor = family.builtin_model("builtin")
        source = builtin.save_in_hub_layout(model, processor, folder / "source")
        del model
        description = "LLaVA-1.5-7B geometry at 1/4 width (random weights)"
    else:
        source = Path(spec)
        if not source.is_dir():
            from huggingface_hub import snapshot_download

            source = Path(snapshot_download(spec))
        description = spec
    config = stock_config(json.loads((source / "config.json").read_text()))
    rows = [VllmBenchRow("stock", "stock", None, linked_checkpoint(source, folder / "stock", config))]
    oracle_architecture = family.entry.vllm_oracle_model.rpartition(":")[2]
    for target in target_nums:
        fields = family.flowcut_fields(target, enabled=True)
        rows.append(VllmBenchRow(
            f"flowcut@{target}", "flowcut", target,
            linked_checkpoint(source, folder / f"flowcut{target}", {**config, **fields}),
        ))
        rows.append(VllmBenchRow(
            f"oracle@{target}", "oracle", target,
            linked_checkpoint(source, folder / f"oracle{target}", {**config, **fields, "architectures": [oracle_architecture]}),
        ))
    prompt = f"USER: <image>\n{QUESTION} ASSISTANT:"
    return VllmBenchPlan(
        rows=rows,
        requests=[{"prompt": prompt, "multi_modal_data": {"image": synthetic_image(seed=i)}} for i in range(requests)],
        model={"spec": spec, "description": description, "family": family.name},
        text_config=family.config_from_dict(config).text_config,
    )
