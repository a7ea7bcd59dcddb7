"""LLaVA-OneVision in vLLM: stock checkpoints as vLLM serves them; VFlowOpt and FlowCut variants refused at load (both
prune inside the language model, which vLLM cannot run; see :mod:`flowcut_hf.vllm_support`)."""

from vllm.model_executor.models.llava_onevision import LlavaOnevisionForConditionalGeneration

from ...vllm_support import checked_stock_model

FlowCutCheckedLlavaOnevision = checked_stock_model(LlavaOnevisionForConditionalGeneration)
