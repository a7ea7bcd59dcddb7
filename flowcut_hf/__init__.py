"""flowcut-hf: FlowCut visual-token pruning for Hugging Face vision-language models."""

from .api import flowcut, flowcut_processor
from .modeling.configuration_flowcut_llava import FlowCutLlavaConfig
from .modeling.modeling_flowcut_llava import (
    FlowCutImageFeaturesOutput,
    FlowCutLlavaForConditionalGeneration,
    FlowCutLlavaModel,
)
from .modeling.processing_flowcut_llava import FlowCutLlavaProcessor

__version__ = "0.1.0"

__all__ = [
    "flowcut",
    "flowcut_processor",
    "FlowCutLlavaConfig",
    "FlowCutLlavaForConditionalGeneration",
    "FlowCutLlavaModel",
    "FlowCutLlavaProcessor",
    "FlowCutImageFeaturesOutput",
]
