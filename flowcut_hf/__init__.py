"""flowcut-hf: FlowCut visual-token pruning for Hugging Face vision-language models."""

from .api import flowcut, flowcut_processor, prune
from .modeling.configuration_flowcut_llava import FlowCutLlavaConfig
from .modeling.configuration_flowcut_llava_next import FlowCutLlavaNextConfig
from .modeling.modeling_flowcut_llava import (
    FlowCutImageFeaturesOutput,
    FlowCutLlavaForConditionalGeneration,
    FlowCutLlavaModel,
)
from .modeling.modeling_flowcut_llava_next import (
    FlowCutLlavaNextForConditionalGeneration,
    FlowCutLlavaNextModel,
    FlowCutNextImageFeaturesOutput,
)
from .modeling.modeling_flowcut_llava_onevision import (
    FlowCutLlavaOnevisionForConditionalGeneration,
    FlowCutLlavaOnevisionModel,
)
from .modeling.modeling_flowcut_qwen2_vl import (
    FlowCutQwen2_5_VLForConditionalGeneration,
    FlowCutQwen2VLForConditionalGeneration,
)
from .modeling.processing_flowcut_llava import FlowCutLlavaProcessor
from .registry import FAMILIES, FlowCutFamily, family_for_config, family_for_model

__version__ = "0.1.0"

__all__ = [
    "flowcut",
    "flowcut_processor",
    "prune",
    "FAMILIES",
    "FlowCutFamily",
    "family_for_config",
    "family_for_model",
    "FlowCutLlavaConfig",
    "FlowCutLlavaForConditionalGeneration",
    "FlowCutLlavaModel",
    "FlowCutLlavaProcessor",
    "FlowCutImageFeaturesOutput",
    "FlowCutLlavaNextConfig",
    "FlowCutLlavaNextForConditionalGeneration",
    "FlowCutLlavaNextModel",
    "FlowCutNextImageFeaturesOutput",
    "FlowCutLlavaOnevisionForConditionalGeneration",
    "FlowCutLlavaOnevisionModel",
    "FlowCutQwen2VLForConditionalGeneration",
    "FlowCutQwen2_5_VLForConditionalGeneration",
]
