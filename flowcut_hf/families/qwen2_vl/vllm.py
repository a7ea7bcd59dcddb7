"""Qwen2-VL and Qwen2.5-VL in vLLM: stock checkpoints as vLLM serves them; FlowCut variants refused at load (they prune
inside the language model too, which vLLM cannot run; see :mod:`flowcut_hf.vllm_support`)."""

from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

from ...vllm_support import checked_stock_model

FlowCutCheckedQwen2VL = checked_stock_model(Qwen2VLForConditionalGeneration)
FlowCutCheckedQwen2_5_VL = checked_stock_model(Qwen2_5_VLForConditionalGeneration)
