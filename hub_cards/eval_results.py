"""Evaluation results for a variant's model card, read from a small JSON file.

Schema (UTF-8 JSON object)::

    {
      "model_name": "llava-1.5-7b-flowcut64",        # optional; default: the repo name
      "results": [                                    # required, non-empty
        {
          "task_type": "image-text-to-text",          # required, non-empty string
          "dataset_type": "lmms-lab/POPE",            # required: a Hub dataset id
          "dataset_name": "POPE",                     # required: a display name
          "metric_type": "f1",                        # required: a metric id
          "metric_value": 85.2,                       # required: finite number or non-empty string ("85.2 ± 0.3")

          "task_name": "...",                         # optional strings
          "dataset_config": "...", "dataset_split": "test", "dataset_revision": "<sha>",
          "metric_name": "POPE F1", "metric_config": "...",
          "source_name": "...", "source_url": "https://...",   # source_name needs source_url
          "dataset_args": {...}, "metric_args": {...}           # optional JSON objects
        }
      ]
    }

Keys are the field names of :class:`huggingface_hub.EvalResult`, except ``verified`` and ``verify_token``, which
only Hugging Face's evaluation service may set. Unknown keys are rejected so that a typo cannot silently drop a
field. Every problem raises :class:`ValueError` naming the file and the offending field, e.g.
``results[2].metric_value``.

The results file that lmms-eval writes (``<output_path>/<model>/<date>_results.json``: ``results`` maps each task to
``"metric,filter": value``) is read as well, through :func:`from_lmms_eval`: one result per task and metric, with the
task's dataset (its Hub id when ``dataset_path`` is one, else the task name, which the card does not link: a local
task has no Hub page) and split, and lmms-eval as the source. Several files, for example the results of separate
lmms-eval runs, are merged into one ``model-index``; the same metric on the same dataset in two files is an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

_REQUIRED = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")
_OPTIONAL_STR = (
    "task_name",
    "dataset_config",
    "dataset_split",
    "dataset_revision",
    "metric_name",
    "metric_config",
    "source_name",
    "source_url",
)
_OPTIONAL_OBJ = ("dataset_args", "metric_args")
_ALLOWED = frozenset(_REQUIRED + _OPTIONAL_STR + _OPTIONAL_OBJ)
_TOP_LEVEL = frozenset({"model_name", "results"})

# model-index stores one task/dataset header per group of metrics, taken from the group's first result. Results in a
# group that disagree on these would lose their own values when the card is written, so they must agree.
_GROUP_SHARED = ("task_name", "dataset_name", "dataset_args", "source_name", "source_url")


def load_eval_results(
    paths: str | Path | Sequence[str | Path], *, default_model_name: str
) -> tuple[str, list[EvalResult]]:
    """Read, validate and merge evaluation-results JSON files (schema in this module's docstring).

    Args:
        paths: one JSON file, or several (for example the results files of separate lmms-eval runs); their results
            are merged into one ``model-index``.
        default_model_name: the ``model-index`` name used when no file has a ``model_name``.

    Returns:
        ``(model_name, results)``. ``results`` is ordered the way ``model-index`` groups them (by task, dataset,
        config, split and revision, in order of first appearance), so it compares equal to the list read back from
        the written card.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is not JSON or breaks the schema (the message names the file and the field); two files
            give the same metric on the same dataset, or different model names.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("no evaluation-results file given")
    model_names: dict[str, Path] = {}
    results: list[EvalResult] = []
    labels: list[str] = []
    for path in paths:
        raw = _read_json(path)
        if is_lmms_eval_results(raw):
            raw = from_lmms_eval(raw, source=str(path))
        model_name, file_results = parse_eval_results(raw, default_model_name=default_model_name, source=str(path))
        if isinstance(raw, dict) and "model_name" in raw:
            model_names.setdefault(model_name, path)
        results += file_results
        labels += [f"{path}: results[{index}]" if len(paths) > 1 else f"results[{index}]" for index in range(len(file_results))]
    if len(model_names) > 1:
        (first, first_path), (second, second_path) = list(model_names.items())[:2]
        raise ValueError(f"{first_path} names the model {first!r} but {second_path} names it {second!r}; give files of one model")
    model_name = next(iter(model_names), default_model_name)
    if len(paths) == 1:
        return model_name, results
    return model_name, _group_like_model_index(results, labels, lambda msg: ValueError(msg))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    except _NonFiniteError as err:
        raise ValueError(f"{path}: {err}") from None


LMMS_EVAL_URL = "https://github.com/EvolvingLMMs-Lab/lmms-eval"


def is_lmms_eval_results(raw: Any) -> bool:
    """Whether ``raw`` is a results file written by lmms-eval (its ``results`` is a task -> metrics object)."""
    return isinstance(raw, dict) and isinstance(raw.get("results"), dict) and "configs" in raw


def from_lmms_eval(raw: dict[str, Any], *, source: str = "lmms-eval results") -> dict[str, Any]:
    """An lmms-eval results file in this module's schema: every numeric ``metric,filter`` value of every task, except
    the standard errors (``*_stderr*``); non-numeric ones ("N/A") are left out."""
    version = raw.get("lmms_eval_version")
    # A source checkout records "branch@commit" of whatever git repository it ran in; only a release number says
    # which lmms-eval it was.
    is_release = isinstance(version, str) and re.fullmatch(r"\d+(\.\d+)+\S*", version)
    source_name = f"lmms-eval {version}" if is_release else "lmms-eval"
    results = []
    for task, metrics in raw["results"].items():
        if not isinstance(metrics, dict):
            raise ValueError(f"{source}: results.{task} must be an object of metric values, got {type(metrics).__name__}")
        config = raw["configs"].get(task) or {}
        dataset_path = config.get("dataset_path")
        dataset = dataset_path if isinstance(dataset_path, str) and _is_hub_dataset_id(dataset_path) else task
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric:
                continue  # "alias", and the standard errors of the metrics kept
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            entry = {
                "task_type": "image-text-to-text",
                "task_name": task,
                "dataset_type": dataset,
                "dataset_name": metrics.get("alias", task).strip() or task,
                "metric_type": metric,
                "metric_value": value,
                "source_name": source_name,
                "source_url": LMMS_EVAL_URL,
            }
            if filter_name != "none":
                entry["metric_config"] = filter_name
            if isinstance(config.get("test_split"), str):
                entry["dataset_split"] = config["test_split"]
            results.append(entry)
    if not results:
        raise ValueError(f"{source}: the lmms-eval results hold no numeric metric")
    return {"results": results}


def _is_hub_dataset_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "/")) and " " not in value


def parse_eval_results(
    raw: Any, *, default_model_name: str, source: str = "eval results"
) -> tuple[str, list[EvalResult]]:
    """Validate already-decoded evaluation results; see :func:`load_eval_results`.

    ``source`` prefixes every error message (the file name, when called from :func:`load_eval_results`).
    """

    def fail(msg: str) -> ValueError:
        return ValueError(f"{source}: {msg}")

    if not isinstance(raw, dict):
        raise fail(f"top level must be a JSON object with a 'results' list, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise fail(f"unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_LEVEL)}")

    model_name = raw.get("model_name", default_model_name)
    if not _is_nonempty_str(model_name):
        raise fail(f"model_name must be a non-empty string, got {model_name!r}")

    if "results" not in raw:
        raise fail("missing required key 'results'")
    entries = raw["results"]
    if not isinstance(entries, list) or not entries:
        raise fail(f"results must be a non-empty list, got {entries!r}")

    results = [_parse_entry(entry, f"results[{i}]", fail) for i, entry in enumerate(entries)]
    return model_name, _group_like_model_index(results, [f"results[{i}]" for i in range(len(results))], fail)


def _parse_entry(entry: Any, where: str, fail) -> EvalResult:
    if not isinstance(entry, dict):
        raise fail(f"{where} must be a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _ALLOWED)
    if unknown:
        raise fail(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    for key in _REQUIRED:
        if key not in entry:
            raise fail(f"{where}.{key} is required")
    for key in _REQUIRED[:-1] + _OPTIONAL_STR:
        if key in entry and not _is_nonempty_str(entry[key]):
            raise fail(f"{where}.{key} must be a non-empty string, got {entry[key]!r}")
    for key in _OPTIONAL_OBJ:
        if key in entry and not isinstance(entry[key], dict):
            raise fail(f"{where}.{key} must be a JSON object, got {entry[key]!r}")

    value = entry["metric_value"]
    # bool is an int subclass, and NaN/inf cannot be written to the card's YAML and read back as the same value.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number or _is_nonempty_str(value)):
        raise fail(f"{where}.metric_value must be a finite number or a non-empty string, got {value!r}")
    if "source_name" in entry and "source_url" not in entry:
        raise fail(f"{where}.source_url is required when source_name is given")
    return EvalResult(**entry)


def _group_like_model_index(results: list[EvalResult], labels: list[str], fail) -> list[EvalResult]:
    """``results`` grouped as ``model-index`` stores them; ``labels`` names each result in error messages."""
    groups: dict[tuple, list[tuple[int, EvalResult]]] = {}
    for i, result in enumerate(results):
        groups.setdefault(result.unique_identifier, []).append((i, result))

    ordered: list[EvalResult] = []
    for members in groups.values():
        first_i, first = members[0]
        seen_metrics: dict[str, int] = {}
        for i, result in members:
            for key in _GROUP_SHARED:
                if getattr(result, key) != getattr(first, key):
                    raise fail(
                        f"{labels[i]}.{key} is {getattr(result, key)!r} but {labels[first_i]} (same task, dataset,"
                        f" config, split and revision) has {getattr(first, key)!r}; model-index stores one value"
                        " per dataset entry"
                    )
            metric_key = json.dumps(
                [result.metric_type, result.metric_name, result.metric_config, result.metric_args], sort_keys=True
            )
            if metric_key in seen_metrics:
                first_seen = seen_metrics[metric_key]
                raise fail(f"{labels[i]} repeats the metric of {labels[first_seen]} on the same dataset")
            seen_metrics[metric_key] = i
            ordered.append(result)
    return ordered


class _NonFiniteError(Exception):
    pass


def _reject_constant(name: str):
    # Python's json accepts NaN/Infinity, but they are not JSON and NaN never compares equal after the card is
    # read back, so a result holding one could not be checked.
    raise _NonFiniteError(f"{name} is not a valid JSON value; use a finite number")


def _is_nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""
