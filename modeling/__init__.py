"""Remote-code files for FlowCut models.

Every other ``.py`` file in this folder is copied verbatim into exported Hub repos, so those files import only
torch, transformers (with huggingface_hub, which transformers itself requires), the standard library and each
other (``from .module import name``). This ``__init__`` is
the one file that is not copied.
"""
