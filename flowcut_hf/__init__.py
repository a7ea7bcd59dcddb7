"""flowcut-hf: FlowCut visual-token pruning for Hugging Face vision-language models.

The public names load on first use, so that ``flowcut-hf export``'s parent process (and anything else that only needs
a light part of the package) never imports torch: see ``flowcut_hf.export_cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC_NAMES = {
    ".api": ("flowcut", "flowcut_processor", "prune"),
    ".registry": ("FAMILIES", "family_for_config", "family_for_model"),
    ".family": ("FlowCutFamily",),
    ".modeling.configuration_flowcut_llava": ("FlowCutLlavaConfig",),
    ".modeling.configuration_flowcut_llava_next": ("FlowCutLlavaNextConfig",),
    ".modeling.modeling_flowcut_llava": (
        "FlowCutImageFeaturesOutput", "FlowCutLlavaForConditionalGeneration", "FlowCutLlavaModel",
    ),
    ".modeling.modeling_flowcut_llava_next": (
        "FlowCutLlavaNextForConditionalGeneration", "FlowCutLlavaNextModel", "FlowCutNextImageFeaturesOutput",
    ),
    ".modeling.modeling_flowcut_llava_onevision": (
        "FlowCutLlavaOnevisionForConditionalGeneration", "FlowCutLlavaOnevisionModel",
    ),
    ".modeling.modeling_flowcut_qwen2_vl": (
        "FlowCutQwen2_5_VLForConditionalGeneration", "FlowCutQwen2VLForConditionalGeneration",
    ),
    ".modeling.processing_flowcut_llava": ("FlowCutLlavaProcessor",),
}
_MODULE_OF = {name: module for module, names in _PUBLIC_NAMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcut_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
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
    from .family import FlowCutFamily
    from .registry import FAMILIES, family_for_config, family_for_model
