"""``flowcut-hf search``: find a model's VFlowOpt settings for a token budget, as the method prescribes.

Usage::

    flowcut-hf search MODEL --method vflowopt --budget 0.10 --calibration DATA --trials 300 --out preset.json

The objective, as the VFlowOpt paper defines it, is the cosine similarity between the pruned and the unpruned model's final hidden
state (after the last norm) of the last prompt token, summed over the calibration samples; the unpruned states are
computed once and cached. Five settings are searched (the stage-0 keep share, the threshold of the importance map,
the recycling cell side, the entropy weight and the first LLM stage's keep share); the last LLM stage's share is
solved from the budget, the share of visual tokens kept averaged over the decoder layers.

DATA is a folder holding ``data.jsonl`` (one ``{"image": "file.png", "prompt": "..."}`` per line, image paths
relative to the folder) or a Hub dataset id (``--image-column``, ``--prompt-column``, ``--split``; needs the
``datasets`` package). The search uses Optuna's seeded TPE sampler and an Optuna storage file beside ``--out``
(``--storage``), so an interrupted search continues where it stopped. The result is a preset JSON holding the settings
and how they were found.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .cli import deprecation_note, plain_help
from .registry import REGISTRY, cli_names, display_names

REGISTRY_METHODS = {entry.cli_name: entry.methods for entry in REGISTRY}

from .modeling.vflowopt_core import VFlowOptSettings, average_retention, solve_last_ratio

SEARCHED = ("vision_keep", "llm_keep_first", "threshold", "cell_side", "entropy_weight")
OBJECTIVE = "sum over samples of cos(final hidden state of the last prompt token, pruned vs unpruned)"


@dataclass(frozen=True)
class CalibrationSample:
    image: Image.Image
    prompt: str


def load_calibration(data: str, *, image_column: str = "image", prompt_column: str = "prompt", split: str = "train",
                     limit: int | None = None) -> list[CalibrationSample]:
    """The calibration samples of ``data``: a folder with ``data.jsonl``, or a Hub dataset id."""
    folder = Path(data)
    if folder.is_dir():
        listing = folder / "data.jsonl"
        if not listing.is_file():
            raise FileNotFoundError(f"{folder} has no data.jsonl (one {{\"image\": ..., \"prompt\": ...}} per line)")
        samples = []
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if image_column not in record or prompt_column not in record:
                raise ValueError(f"{listing} line {number} lacks {image_column!r} or {prompt_column!r}")
            samples.append(CalibrationSample(Image.open(folder / record[image_column]).convert("RGB"), str(record[prompt_column])))
    else:
        try:
            import datasets
        except ImportError as error:
            raise ValueError(f"{data} is not a folder; a Hub dataset needs `pip install datasets`") from error
        rows = datasets.load_dataset(data, split=split)
        samples = [CalibrationSample(row[image_column].convert("RGB"), str(row[prompt_column])) for row in rows]
    if not samples:
        raise ValueError(f"{data} holds no calibration samples")
    return samples[:limit] if limit else samples


def search_space(budget: float) -> dict[str, tuple[float, float]]:
    """The bounds of the searched settings for a ``budget``; the shipped bounds at 0.25, scaled with the budget."""
    return {
        "vision_keep": (budget, min(1.0, 1.5 * budget)),
        "llm_keep_first": (max(0.05, (budget - 0.05) / min(1.0, 1.5 * budget)), 1.0),
        "threshold": (0.0, 50.0),
        "cell_side": (3.0, 24.0),
        "entropy_weight": (-1.0, 1.0),
    }


def settings_for(values: dict[str, float], budget: float, llm_layers: tuple[int, ...], num_layers: int) -> VFlowOptSettings:
    """The full settings of a trial: the searched values, the last LLM stage's share solved from the budget."""
    earlier = [values["llm_keep_first"]] if len(llm_layers) > 1 else []
    last = solve_last_ratio(budget, values["vision_keep"], earlier, llm_layers, num_layers)
    if last <= 0:
        raise ValueError("the budget is spent before the last LLM stage")
    return VFlowOptSettings(values["vision_keep"], values["threshold"], values["cell_side"], values["entropy_weight"],
                            llm_layers, (*earlier, last))


class Objective:
    """Scores VFlowOpt settings on ``samples``: the summed cosine similarity of the last prompt token's final state."""

    def __init__(self, model, processor, samples: list[CalibrationSample]):
        from .modeling.vflowopt_core import vflowopt_fields

        self.model, self.vflowopt_fields = model, vflowopt_fields
        parameter = next(model.parameters())
        self.inputs = []
        for sample in samples:
            prompt = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.prompt}]}],
                add_generation_prompt=True,
            )
            inputs = {k: v.to(parameter.device) for k, v in processor(text=[prompt], images=[sample.image], return_tensors="pt").items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(parameter.dtype)
            self.inputs.append(inputs)
        model.configure_vflowopt(enabled=False)
        self.reference = [self.last_state(inputs) for inputs in self.inputs]  # computed once, reused by every trial
        model.configure_vflowopt(enabled=True)

    def last_state(self, inputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.model(**inputs, use_cache=False).last_hidden_state[0, -1].float()

    def __call__(self, settings: VFlowOptSettings) -> float:
        for name, value in self.vflowopt_fields(settings).items():
            setattr(self.model.config, name, value)
        total = 0.0
        for inputs, reference in zip(self.inputs, self.reference):
            similarity = float(torch.nn.functional.cosine_similarity(self.last_state(inputs), reference, dim=0))
            total += similarity if math.isfinite(similarity) else 0.0  # as the method counts a NaN
        return total


def run_search(
    model,
    processor,
    samples: list[CalibrationSample],
    *,
    budget: float,
    trials: int,
    storage: Path,
    seed: int = 0,
    study_name: str = "vflowopt",
    data_description: str = "",
    progress: bool = True,
) -> dict:
    """Runs (or continues) the search and returns the preset: ``{"method", "settings", "search"}``."""
    import optuna
    from tqdm.auto import tqdm

    from .api import prune
    from .modeling.vflowopt_core import vflowopt_fields

    if not 0 < budget < 1:
        raise ValueError(f"--budget is the share of visual tokens kept, in (0, 1), got {budget}")
    if trials < 1:
        raise ValueError("--trials must be at least 1")
    torch.manual_seed(seed)
    base = model.config.to_dict()
    prune(model, method="vflowopt")
    llm_layers = tuple(model.config.vflowopt_llm_layers)
    num_layers = model.config.text_config.num_hidden_layers
    objective = Objective(model, processor, samples)
    space = search_space(budget)
    if len(llm_layers) < 2:  # one LLM stage (a shallow model): its share is the solved one
        space.pop("llm_keep_first")

    def trial_value(trial: "optuna.Trial") -> float:
        values = {name: trial.suggest_float(name, low, high) for name, (low, high) in space.items()}
        try:
            settings = settings_for(values, budget, llm_layers, num_layers)
        except ValueError:
            return -float(len(samples))  # infeasible under the budget: the worst similarity there is
        return objective(settings)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=f"sqlite:///{storage}", direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, trials)),
    )
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    remaining = max(0, trials - done)
    bar = tqdm(total=trials, initial=done, disable=not progress, desc="search", unit="trial")
    if done:
        bar.set_postfix_str(f"best {study.best_value:.4f}")

    def report(study_, _trial):
        bar.update()
        bar.set_postfix_str(f"best {study_.best_value:.4f}")

    try:
        study.optimize(trial_value, n_trials=remaining, callbacks=[report])
    finally:
        bar.close()
    best = settings_for(study.best_params, budget, llm_layers, num_layers)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for name, value in base.items():  # the caller's own VFlowOpt settings, if it had any, come back
        if name.startswith("vflowopt_") or name == "pruning_method":
            setattr(model.config, name, value)
    return {
        "method": "vflowopt",
        "settings": vflowopt_fields(best),
        "search": {
            "budget": budget,
            "average_retention": average_retention(best, num_layers),
            "trials": len(completed),
            "data": data_description,
            "samples": len(samples),
            "objective": OBJECTIVE,
            "best_value": study.best_value,
            "first_value": completed[0].value,
            "sampler": "optuna TPESampler",
            "seed": seed,
        },
    }


def _cli(args: argparse.Namespace) -> int:
    from .bench import load_model

    if args.method != "vflowopt":
        raise ValueError("the search finds VFlowOpt settings: pass --method vflowopt")
    if args.out.parent and not args.out.parent.exists():
        raise FileNotFoundError(f"the folder of --out {args.out} does not exist")
    renamed = args.model.removeprefix("tiny-")
    if args.model.startswith("tiny-") and renamed in search_families():  # the old names of the tiny models
        deprecation_note(f"the model name {args.model!r}", f"'tiny' --family {renamed}")
        args.model, args.family = "tiny", renamed
    if args.model == "tiny":
        model, processor = build_tiny_model(args.family)
    else:
        model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    samples = load_calibration(args.calibration, image_column=args.image_column, prompt_column=args.prompt_column,
                               split=args.split, limit=args.samples)
    storage = args.storage or args.out.with_suffix(".optuna.db")
    preset = run_search(model, processor, samples, budget=args.budget, trials=args.trials, storage=storage,
                        seed=args.seed, data_description=args.calibration, progress=not args.no_progress)
    args.out.write_text(json.dumps(preset, indent=2) + "\n")
    search = preset["search"]
    print(f"best summed similarity {search['best_value']:.4f} over {search['samples']} samples after {search['trials']} "
          f"trials (first trial {search['first_value']:.4f}); wrote {args.out}")
    return 0


def search_families() -> tuple[str, ...]:
    """The families VFlowOpt runs on (command-line words), those whose main method it is first."""
    return tuple(sorted(cli_names("vflowopt"), key=lambda name: REGISTRY_METHODS[name][0] != "vflowopt"))


def build_tiny_model(family: str):
    """The tiny built-in random model of ``family`` (``--family``'s words) and its processor."""
    from .builtin import build_builtin_model

    return build_builtin_model(family, "tiny")


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="find VFlowOpt settings for a token budget (Bayesian search, resumable)",
        description=plain_help(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", help=f"a folder or a repo id ({display_names(lambda e: 'vflowopt' in e.methods)}), or 'tiny': a "
        "built-in random model of the --family"
    )
    parser.add_argument("--family", choices=search_families(), default=search_families()[0],
                        help=f"family of 'tiny' (default {search_families()[0]}, the method's own model)")
    parser.add_argument("--method", default="vflowopt", choices=("vflowopt",), help="the method whose settings are searched")
    parser.add_argument("--budget", type=float, required=True, help="share of visual tokens kept, averaged over the decoder layers (e.g. 0.10)")
    parser.add_argument("--calibration", required=True, help="folder with data.jsonl, or a Hub dataset id")
    parser.add_argument("--image-column", default="image", help="a Hub dataset's image column (default image)")
    parser.add_argument("--prompt-column", default="prompt", help="a Hub dataset's prompt column (default prompt)")
    parser.add_argument("--split", default="train", help="split of a Hub dataset (default train)")
    parser.add_argument("--samples", type=int, default=None, help="use the first N samples (the method used 30)")
    parser.add_argument("--trials", type=int, default=300, help="trials in all, counting those a resumed search has done")
    parser.add_argument("--out", type=Path, required=True, help="preset JSON to write")
    parser.add_argument("--storage", type=Path, default=None, help="Optuna storage file (default: OUT with .optuna.db)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0): the same seed, the same trials")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="auto: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(
        func=_cli, on_interrupt="interrupted; the finished trials are kept in the storage file: run the same command to go on"
    )


__all__ = ["CalibrationSample", "Objective", "load_calibration", "run_search", "search_space", "settings_for"]
