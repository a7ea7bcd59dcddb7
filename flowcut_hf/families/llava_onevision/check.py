"""The LLaVA-OneVision part of the export's check run for FlowCut (see :mod:`flowcut_hf.export.check_scripts`; a
VFlowOpt variant runs the generic VFlowOpt check)."""

from __future__ import annotations

from ...export.check_scripts import CHAT_PROMPT, COMMON_REPORT, FEATURES_AND_LAYER_LENGTHS, PROCESSOR_OR_IMAGE_ONLY

# The stock processor's prompt; each crop's kept patches out of SigLIP, and the tokens the layers after the LLM stage
# cache (the model output has no per-image list: the last layer's KV length minus the text).
CHECK_SCRIPT = PROCESSOR_OR_IMAGE_ONLY + CHAT_PROMPT + FEATURES_AND_LAYER_LENGTHS + r'''
text_tokens = int((inputs["input_ids"] != model.config.image_token_id).sum())
report = {
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "kept_per_crop": [list(k.shape) for k in features.keep_indices],
    "llm_kept": [lengths[-1] - text_tokens] if lengths else None,
    "layer_lengths": lengths,
    "token_schedule": features.token_schedule,
}
''' + COMMON_REPORT
