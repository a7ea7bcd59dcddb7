"""``flowcut-hf search``: a short VFlowOpt search runs end to end, resumes after an interruption, improves on its
first trial, and writes a preset that meets the budget."""

from __future__ import annotations

import json

import pytest

from flowcut_hf.cli import main
from flowcut_hf.modeling.vflowopt_core import VFlowOptSettings, average_retention
from flowcut_hf.search import load_calibration, search_space, settings_for
from flowcut_hf.tiny import synthetic_image

BUDGET = 0.25


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    lines = []
    for index, size in enumerate([(384, 384), (400, 600), (500, 300)]):
        synthetic_image(index, size=size).save(folder / f"image{index}.png")
        lines.append(json.dumps({"image": f"image{index}.png", "prompt": f"Describe picture {index}."}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_search_resumes_improves_on_its_first_trial_and_writes_a_preset_within_budget(calibration, tmp_path, capsys):
    out = tmp_path / "preset.json"
    common = ["search", "tiny", "--method", "vflowopt", "--budget", str(BUDGET), "--calibration", str(calibration),
              "--out", str(out), "--no-progress", "--seed", "1"]
    assert main([*common, "--trials", "3"]) == 0
    first = json.loads(out.read_text())
    assert first["search"]["trials"] == 3
    # Interrupted after 3 trials: the same command with more trials continues the stored study.
    assert main([*common, "--trials", "8"]) == 0
    preset = json.loads(out.read_text())
    search = preset["search"]
    assert search["trials"] == 8 and search["first_value"] == first["search"]["first_value"], "resumed, not restarted"
    assert search["best_value"] > search["first_value"] and search["best_value"] <= 3.0 + 1e-6
    settings = VFlowOptSettings(**{
        "vision_keep": preset["settings"]["vflowopt_vision_keep"], "threshold": preset["settings"]["vflowopt_threshold"],
        "cell_side": preset["settings"]["vflowopt_cell_side"], "entropy_weight": preset["settings"]["vflowopt_entropy_weight"],
        "llm_layers": tuple(preset["settings"]["vflowopt_llm_layers"]), "llm_keeps": tuple(preset["settings"]["vflowopt_llm_keeps"]),
    })
    assert abs(average_retention(settings, 28) - BUDGET) < 1e-6, "the last stage's share is solved from the budget"
    assert search["samples"] == 3 and "cos" in search["objective"] and search["data"] == str(calibration)
    assert "best summed similarity" in capsys.readouterr().out


def test_budget_solving_and_bad_calibration_data_are_clear(tmp_path):
    space = search_space(0.25)
    assert space["vision_keep"] == (0.25, 0.375) and space["llm_keep_first"] == pytest.approx((0.2 / 0.375, 1.0))
    settings = settings_for({"vision_keep": 0.3, "llm_keep_first": 0.9, "threshold": 30.0, "cell_side": 12.0,
                             "entropy_weight": 0.0}, 0.25, (9, 18), 28)
    assert abs(average_retention(settings, 28) - 0.25) < 1e-9
    with pytest.raises(FileNotFoundError, match="data.jsonl"):
        load_calibration(str(tmp_path))
    assert main(["search", "tiny", "--budget", "1.5", "--calibration", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2


def test_search_finds_llava_settings_that_meet_the_budget_on_its_own_depth(calibration, tmp_path, capsys):
    out = tmp_path / "llava.json"
    assert main(["search", "tiny", "--family", "llava", "--budget", "0.10", "--calibration", str(calibration),
                 "--samples", "2", "--trials", "3", "--out", str(out), "--no-progress"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    preset = json.loads(out.read_text())
    settings = preset["settings"]
    assert settings["vflowopt_llm_layers"] == [1, 3], "the stage layers of the 10% preset, moved to 4 layers"
    kept = settings["vflowopt_vision_keep"]
    first, last = settings["vflowopt_llm_keeps"]
    assert abs((kept * 1 + kept * first * 2 + kept * first * last * 1) / 4 - 0.10) < 1e-6
    assert preset["search"]["trials"] == 3 and preset["search"]["samples"] == 2
