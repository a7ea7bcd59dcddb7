"""LLaVA-NeXT in vLLM: stock checkpoints as vLLM serves them; FlowCut and VFlowOpt variants refused at load (both prune
inside the language model, which vLLM cannot run; see :mod:`flowcut_hf.vllm_support`)."""

from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration

from ...vllm_support import checked_stock_model

FlowCutCheckedLlavaNext = checked_stock_model(LlavaNextForConditionalGeneration)
