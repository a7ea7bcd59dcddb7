"""The family adapters: one package per model family, holding everything family-specific outside the remote code.

Each package's ``adapter`` module defines a :class:`flowcut_hf.family.FlowCutFamily` subclass, which
:data:`flowcut_hf.registry.REGISTRY` names; the package's other modules hold the larger hooks (the bench rows, the
kept-token picture, a converter). See the README's "Adding a family".
"""
