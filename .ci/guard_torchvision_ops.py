"""Lets PyPI's torchvision import beside a CPU-only torch (used by .ci/vllm-env).

PyPI's torchvision for torch 2.13 is a CUDA build: its C++ ops cannot load next to the CPU torch, which torchvision
tolerates (``torchvision.extension._has_ops()`` is then False and ``register_meta`` skips every op), except for two
``torch.library.register_fake("torchvision::nms" / "::qnms")`` decorators that run regardless and fail with "operator
torchvision::nms does not exist". This makes those two conditional on the ops having loaded, like the others. It edits
only the torchvision of the interpreter that runs it, and does nothing if already done.
"""

import importlib.util
import re
from pathlib import Path

spec = importlib.util.find_spec("torchvision")
path = Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
source = path.read_text()
pattern = re.compile(r'^@torch\.library\.register_fake\("(torchvision::\w+)"\)$', re.MULTILINE)
guarded = pattern.sub(r'@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda fn: fn))', source)
if guarded != source:
    path.write_text(guarded)
print(f"torchvision: {len(pattern.findall(source))} fake-kernel registrations guarded in {path}")
