"""The family protocol: everything flowcut-hf knows about one model family, outside its remote code, in one place.

A family is one modeling file in ``modeling/`` (the remote code), one adapter in ``flowcut_hf/families/`` (a subclass
of :class:`FlowCutFamily`) and one entry in :data:`flowcut_hf.registry.REGISTRY`. The generic code (``flowcut()``,
``prune()``, the exporter, bench, visualize, the model card, the demo, search, the lmms-eval plug-in and the command
line) never names a family: it asks the family's adapter through the hooks below. An adapter imports only this module,
the toolkits it builds on (:mod:`flowcut_hf.tiny`, :mod:`flowcut_hf.accounting`, :mod:`flowcut_hf.benchmark`,
:mod:`flowcut_hf.drawing`) and its remote code; it never imports the registry, so nothing imports in a circle.

The hooks, grouped by who asks:

- **Identity and classes** (``flowcut()``, ``prune()``, loading, the exporter): the attributes documented on
  :class:`FlowCutFamily`, :meth:`~FlowCutFamily.processor_for`, :meth:`~FlowCutFamily.unpruned_image_tokens`,
  :meth:`~FlowCutFamily.check_vision_tower`.
- **Built-in models** (tests, the demo, bench, visualize, search): :meth:`~FlowCutFamily.builtin_model`.
- **Amounts** (every command): :attr:`~FlowCutFamily.amount_kinds` says which of ``--target-num``,
  ``--retain-ratio`` and ``--preset`` a family takes; the generic checks in :mod:`flowcut_hf.amounts` use it.
- **Export check** (the exporter's verify stage): :meth:`~FlowCutFamily.check_script`,
  :meth:`~FlowCutFamily.expected_check_counts`.
- **Accounting** (the card's FLOPs): :meth:`~FlowCutFamily.card_prefill_flops`.
- **Bench** (``flowcut-hf bench``): :meth:`~FlowCutFamily.run_bench`, :meth:`~FlowCutFamily.format_bench`.
- **Kept-token picture** (``flowcut-hf visualize``): :meth:`~FlowCutFamily.kept_tokens_picture`.
- **Card wording** (the model card): :meth:`~FlowCutFamily.card_text`.
- **Original checkpoints** (the exporter's convert stage): :meth:`~FlowCutFamily.is_original_checkpoint`,
  :meth:`~FlowCutFamily.convert_original`.
- **Demo** (``flowcut-hf demo``): :meth:`~FlowCutFamily.demo`.
- **vLLM** (the plug-in and ``flowcut-hf bench --engine vllm``): the registry entry's ``vllm_model``,
  ``vllm_methods`` and ``vllm_oracle_model``, and :meth:`~FlowCutFamily.vllm_bench_plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PretrainedConfig, ProcessorMixin

from .modeling.flowcut_remote_code import remote_code_files

if TYPE_CHECKING:
    from PIL import Image

    from .registry import FamilyEntry


class FlowCutFamily:
    """One model family. Subclasses set the class attributes and override the hooks their family supports; a hook left
    as it is here either has a generic default or says, in a ValueError, that the family does not support it.

    Attributes set from the registry entry (:class:`flowcut_hf.registry.FamilyEntry`):
        name: the id in configs, cards and the registry (``llava_next``).
        display_name: how tables, cards and messages name it (``LLaVA-NeXT``).
        cli_name: the command line's word for it (``--family llava-next``).
        model_type: the stock ``model_type``, which FlowCut configs keep so that loading without
            ``trust_remote_code`` falls back to the stock model.
        methods: the pruning methods the family's classes run (``flowcut``, ``vflowopt``), the main one first.
        amount_kinds: how a FlowCut amount is given: ``target_num`` (a count per image) and, for families whose token
            count follows the image size, ``retain_ratio`` too.

    Class attributes of the adapter:
        stock_model_class / stock_inner_class / stock_config_class / stock_processor_class: the stock classes.
        model_class / inner_model_class / config_class: the FlowCut subclasses.
        auto_map: the ``auto_map`` of a saved config.
        remote_code_entry_files: the modeling files a saved folder needs (their imports come along).
        processor_class_name: the class of the processor a saved folder loads as, with ``trust_remote_code``.
        field_validators: every pruning config field of the family (``flowcut_*``, ``pruning_method``,
            ``vflowopt_*``) and its validator.
        default_target_num: the paper's default count for the family; None for families that default to a ratio.
        default_retain_ratio: families with per-image token counts: the default share kept per image.
        llm_stage: whether FlowCut prunes inside the language model too (``flowcut_llm_prune_layer``).
        copies_processor_files: the exporter copies the stock processor's files byte for byte instead of loading
            and saving the processor (it stays the stock one, and loading it may need optional packages).
    """

    stock_model_class: type
    stock_inner_class: type
    stock_config_class: type
    stock_processor_class: type
    model_class: type
    inner_model_class: type
    config_class: type
    auto_map: Mapping[str, str]
    remote_code_entry_files: tuple[str, ...]
    processor_class_name: str
    field_validators: Mapping[str, Callable[[object], object]]
    default_target_num: int | None = None
    default_retain_ratio: float | None = None
    llm_stage: bool = False
    copies_processor_files: bool = False

    def __init__(self, entry: FamilyEntry) -> None:
        self.entry = entry
        self.name = entry.name
        self.display_name = entry.display_name
        self.cli_name = entry.cli_name
        self.model_type = entry.model_type
        self.methods = entry.methods
        self.amount_kinds = entry.amount_kinds

    def __repr__(self) -> str:
        return f"<FlowCutFamily {self.name}>"

    # ----------------------------------------------------------------------------------------- identity and classes

    def processor_for(
        self, processor: ProcessorMixin, target_num: int | None, enabled: bool = True, from_original_checkpoint: bool = False
    ) -> ProcessorMixin:
        """The processor a FlowCut model of this family needs, made from the stock ``processor`` (of a checkpoint
        converted from the family's original layout, if ``from_original_checkpoint``). By default the stock processor
        itself, unchanged: the model shortens the sequence itself."""
        if not isinstance(processor, self.stock_processor_class):
            raise TypeError(f"this FlowCut model takes a {self.stock_processor_class.__name__}, got {type(processor).__name__}.")
        return processor

    def unpruned_image_tokens(self, config: PretrainedConfig) -> int:
        """The visual tokens of an image without pruning (the most an image can have, for families whose count depends
        on the image size)."""
        raise NotImplementedError

    def check_vision_tower(self, vision_config: PretrainedConfig) -> None:
        """Raises a ValueError if the adapter cannot prune this vision tower (by default every tower of the family's
        own architecture is supported)."""

    def config_from_dict(self, data: Mapping[str, Any]) -> PretrainedConfig:
        """The stock config of a ``config.json`` dict (FlowCut fields and ``auto_map`` are kept as extra attributes)."""
        return self.stock_config_class.from_dict({k: v for k, v in data.items() if k != "auto_map"})

    def remote_code_files(self) -> list[Path]:
        """The remote-code files a saved folder of this family holds."""
        return remote_code_files(self.remote_code_entry_files)

    def flowcut_fields(self, target_num: int | None, **settings: Any) -> dict[str, Any]:
        """Validated ``flowcut_*`` config fields for ``target_num`` and the given settings (short names).

        For a family with a retain ratio, a count clears the ratio's effect (the count wins) and a ratio clears the
        count, so the fields always say one amount.
        """
        fields = {"flowcut_target_num": target_num, **{f"flowcut_{k}": v for k, v in settings.items() if v is not None}}
        if "flowcut_retain_ratio" in self.field_validators:
            if target_num is None:
                fields.setdefault("flowcut_retain_ratio", self.default_retain_ratio)
            elif fields.get("flowcut_retain_ratio") is not None:
                raise ValueError("give target_num or retain_ratio, not both: each sets how many tokens an image keeps")
        for name, value in fields.items():
            validator = self.field_validators.get(name)
            if validator is None:
                known = sorted(k.removeprefix("flowcut_") for k in self.field_validators if k.startswith("flowcut_"))
                raise ValueError(f"{name.removeprefix('flowcut_')} is not a FlowCut setting of {self.display_name}; known: {known}.")
            validator(value)
        return fields

    # ----------------------------------------------------------------------------------------------- built-in models

    def builtin_model(self, size: str = "builtin", seed: int = 0):
        """``(model, processor)``: a random stock model of this family with the real geometry and its stock processor,
        in eval mode, float32. ``size``: ``"builtin"`` (the family's 7B geometry at 1/4 width, what bench measures) or
        ``"tiny"`` (the real token geometry at tiny widths, what the tests and the demo use)."""
        raise ValueError(f"{self.display_name} has no built-in model")

    # ------------------------------------------------------------------------------------------------------ export

    def check_script(self, method: str) -> str:
        """The family's part of the export check: Python code run in the clean check process after the variant was
        loaded (``model``, ``info``, ``folder``, ``image_path``, ``out_path`` are defined there; flowcut_hf cannot be
        imported). It builds ``inputs`` from one image, runs ``model.model.get_image_features`` and the forward pass
        (saving the last logits to ``out_path``), and sets ``report`` (see :mod:`flowcut_hf.export.verify`)."""
        raise NotImplementedError

    def expected_check_counts(self, config: PretrainedConfig, amount: Any, image_size: tuple[int, int], report: dict) -> dict:
        """What a correct FlowCut variant shows on the check image of ``image_size`` (height, width): any of
        ``placeholders``, ``kept``, ``kept_per_crop`` and ``llm_kept``, compared with the check's ``report``."""
        raise NotImplementedError

    def card_prefill_flops(
        self, config: PretrainedConfig, variant_config: dict, verification: dict | None, prompt_tokens: int,
        image_size: tuple[int, int],
    ):
        """``(unpruned, pruned, what)``: the analytic prefill FLOPs (objects with ``total_flops``) of a FlowCut variant
        for its card, from what its check measured on the check image (or, without a check, an upper bound for an
        image of ``image_size``), and what they count, in words ("..., for one image and a 64-token text prompt; ")."""
        raise NotImplementedError

    def stock_image_tokens(self, config: PretrainedConfig, image_size: tuple[int, int]) -> int:
        """The visual tokens the stock processor gives an image of ``image_size`` (height, width)."""
        return self.unpruned_image_tokens(config)

    def image_crops(self, config: PretrainedConfig, image_size: tuple[int, int]) -> int:
        """The crops the vision tower encodes for an image of ``image_size`` (height, width): 1, or the anyres tiles."""
        return 1

    # ------------------------------------------------------------------------------------------------------- bench

    bench_rows: str = ""
    """What ``flowcut-hf bench`` compares on this family, in one line for its help."""

    def run_bench(self, model, processor, options: Any) -> dict:
        """``flowcut-hf bench`` on a loaded model of this family: stock vs the method's rows vs the oracle, interleaved;
        returns the report (the ``--json`` document). ``options`` is a :class:`flowcut_hf.benchmark.BenchOptions`."""
        raise ValueError(f"flowcut-hf bench does not support {self.display_name} yet")

    def format_bench(self, report: dict) -> str:
        """The table ``flowcut-hf bench`` prints for a report of :meth:`run_bench`."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------- visualize

    def kept_tokens_picture(self, model, processor, image: Image.Image, target_num: int | None, retain_ratio: float | None,
                            *, scale: int | None = None, title: str | None = None) -> Image.Image:
        """The picture ``flowcut-hf visualize`` draws: which tokens survive each stage, over the image as the model
        sees it."""
        raise ValueError(f"flowcut-hf visualize does not support {self.display_name} yet")

    # ------------------------------------------------------------------------------------------------------- card

    @property
    def card_name(self) -> str:
        """How the model card names the family's models (its display name by default)."""
        return self.display_name

    def card_text(self) -> dict[str, str]:
        """The family's wording in the model card of a FlowCut variant: Jinja fragments rendered with the card's
        template values (see :mod:`flowcut_hf.hub_cards.card`): ``intro`` (the opening and "What changed"),
        ``how_it_works``, ``unpruned_all`` (the stock model's visual tokens per image, in a sentence) and
        ``unpruned_cell`` (the same in the FLOPs table)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ original checkpoints

    def is_original_checkpoint(self, config: dict, source: str) -> bool:
        """Whether ``config`` (the ``config.json`` of ``source``) is this family's model in a non-transformers layout
        that :meth:`convert_original` turns into the HF layout; a ValueError for such a layout it cannot convert."""
        return False

    def original_hf_config(self, config: dict) -> dict:
        """What the HF config of an original-layout checkpoint will hold (what amounts are checked against), from its
        own ``config``, before the conversion."""
        raise NotImplementedError

    def original_source_note(self, config: dict, vision_tower: Path | None) -> str:
        """What a conversion of an original-layout checkpoint with ``config`` takes besides it, for the log (e.g.
        where its vision tower comes from)."""
        return "the checkpoint alone"

    def convert_original(self, source: Path, out: Path, *, vision_tower: Path | None, allow_pickle: bool, **options: Any) -> Any:
        """Converts an original-layout checkpoint (see :meth:`is_original_checkpoint`) into an HF-layout folder
        ``out`` and returns a report; ``vision_tower`` is a local folder for a tower the checkpoint only names."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- vLLM bench

    def vllm_bench_plan(self, folder: Path, spec: str, target_nums, requests: int):
        """The checkpoints and requests of ``flowcut-hf bench --engine vllm`` (a
        :class:`flowcut_hf.vllm_bench.VllmBenchPlan`), written under ``folder``: the stock model of ``spec`` (``builtin``,
        a folder or a repo id), its FlowCut variant and the oracle at each of ``target_nums``, and ``requests`` image
        requests. Only families that vLLM serves pruned (the registry entry's ``vllm_methods``) have one."""
        raise ValueError(f"flowcut-hf bench --engine vllm does not run {self.display_name}: vLLM does not serve it pruned")

    # ------------------------------------------------------------------------------------------------------- demo

    has_demo: bool = False
    """Whether ``flowcut-hf demo`` tours this family in process (:meth:`demo`)."""

    def demo(self, target_num: int | None, repeats: int, max_new_tokens: int, seed: int = 0) -> dict:
        """FlowCut in process on this family's tiny built-in model, printed for ``flowcut-hf demo``; returns the
        figures."""
        raise ValueError(f"flowcut-hf demo has no in-process tour of {self.display_name}")
