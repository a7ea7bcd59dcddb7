"""The exporter, offline: folders, original-LLaVA sources, bad input, and full Hub round trips on a local server."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from huggingface_hub import ModelCard

from conftest import PROMPT, run_clean_python, staged_env
from flowcut_hf import cli as flowcut_cli
from flowcut_hf.amounts import RetainedAmount
from flowcut_hf.export import check_scripts, checks, pipeline, write
from flowcut_hf.export.resolve import resolve
from flowcut_hf.export.checks import memory_plan
from flowcut_hf.export.options import parse_memory_size
from flowcut_hf.export.pipeline import ExportOptions, VerificationError, export
from flowcut_hf.modeling.flowcut_remote_code import remote_code_files
from flowcut_hf.registry import family_named
from flowcut_hf.families.llava.builtin import build_tiny_llava
from hub_server import local_hub  # noqa: F401  (pytest fixture)

BASE_ID = "llava-hf/llava-1.5-7b-hf"


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory) -> Path:
    """A tiny llava-hf-format checkpoint, saved as stock transformers saves it."""
    folder = tmp_path_factory.mktemp("base") / "llava-tiny-hf"
    model, processor = build_tiny_llava(seed=7)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: llama2\n---\n# tiny base\n")
    return folder


@pytest.fixture(scope="module")
def exported(hf_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    results = export(hf_base, ExportOptions(target_nums=[64, 128], out=out, base_model=BASE_ID), log=lambda _: None)
    assert [r.plan.name for r in results] == ["llava-tiny-hf-flowcut64", "llava-tiny-hf-flowcut128"]
    return out


def refusal(capsys, *args: str) -> tuple[int, str]:
    """The exit code and stderr of `flowcut-hf ARGS`, run through the command's entry point in this process (for
    refusals, which happen before any stage: the same code as a subprocess, without an interpreter start)."""
    try:
        code = flowcut_cli.main(list(args))
    except SystemExit as exited:  # argparse's usage errors
        code = exited.code
    return code, capsys.readouterr().err


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowcut_hf.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_each_variant_is_a_complete_folder(exported, hf_base):
    for target in (64, 128):
        folder = exported / f"llava-tiny-hf-flowcut{target}"
        # Weights byte-identical, remote code verbatim.
        assert filecmp.cmp(folder / "model.safetensors", hf_base / "model.safetensors", shallow=False)
        # Remote code verbatim: exactly the files the LLaVA-1.5 classes import, no other family's.
        code_files = remote_code_files(family_named("llava").remote_code_entry_files)
        assert {p.name for p in folder.glob("*.py")} == {p.name for p in code_files}
        for code_file in code_files:
            assert (folder / code_file.name).read_bytes() == code_file.read_bytes()
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "llava" and config["flowcut_target_num"] == target
        assert config["auto_map"]["AutoModelForImageTextToText"].endswith("FlowCutLlavaForConditionalGeneration")
        processor_config = json.loads((folder / "processor_config.json").read_text())
        assert processor_config["flowcut_target_num"] == target
        assert processor_config["auto_map"]["AutoProcessor"].endswith("FlowCutLlavaProcessor")
        assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"} <= {
            p.name for p in folder.iterdir()
        }
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == BASE_ID and card.data.license == "llama2"
        assert card.data.flowcut["flowcut_target_num"] == target
        assert f"576 → {target}" in card.text
    assert not [p for p in exported.iterdir() if p.name.startswith(".flowcut-export-")], "staging folders must go"


def test_exported_folder_generates_as_remote_code(exported, tmp_path):
    folder = exported / "llava-tiny-hf-flowcut64"
    result = run_clean_python(
        f"""
        import json, torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from PIL import Image
        model, info = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True, output_loading_info=True)
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        inputs = processor(images=Image.new("RGB", (336, 336), (10, 200, 30)), text={PROMPT!r}, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[model.config.image_token_id])
        print(json.dumps({{"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                           "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
                           "new": out.shape[1] - inputs["input_ids"].shape[1]}}))
        """,
        tmp_path,
    )
    assert result == {"missing": [], "unexpected": [], "placeholders": 64, "new": 4}


def test_write_stage_never_loads_weights(hf_base, tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("the write stage must copy weight files, not load tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    resolved = resolve(hf_base)
    pipeline.write_variant(resolved, 64, tmp_path / "variant", allow_pickle=False)
    assert filecmp.cmp(tmp_path / "variant" / "model.safetensors", hf_base / "model.safetensors", shallow=False)


def test_original_llava_source_is_converted_and_verified(tmp_path):
    import sentencepiece
    import test_convert as tc
    from PIL import Image
    from transformers import AutoProcessor

    clip_dir = tmp_path / "clip"
    tc._write_clip(clip_dir, seed=1)
    source = tmp_path / "llava-v1.5-tiny-flowcut192"
    tc._write_checkpoint(source, tc._original_tensors(seed=2))
    sentencepiece_model = tc.write_sentencepiece_tokenizer(source)  # liuhaotian's layout: tokenizer.model only
    logs = []
    results = export(
        source,
        ExportOptions(target_nums=[32], out=tmp_path / "out", vision_tower=clip_dir, base_model="JosephTong/llava-v1.5-7b-flowcut192"),
        log=logs.append,
    )
    folder = results[0].plan.folder
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["flowcut_target_num"] == 32
    assert results[0].token_schedule[-1] == 33, "verification ran the remote code and pruned to the target"
    assert not (tmp_path / "out" / "converted").exists()
    assert any(f"vision tower: {clip_dir}" in line for line in logs), "the log names the tower --vision-tower gave"
    assert (folder / "tokenizer.model").read_bytes() == sentencepiece_model

    # The ids the model was trained on: LLaVA's tokenizer_image_token encodes the text around <image> piece by piece,
    # so SentencePiece starts the text after the image with its prefix "▁".
    reference = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.new("RGB", (40, 30), "white")
    for before, after in (("USER: ", "\nWhat is this? ASSISTANT:"), ("", "What is this?")):
        ids = processor(images=image, text=f"{before}<image>{after}", return_tensors="pt").input_ids[0].tolist()
        assert ids == [1, *reference.encode(before), *[tc.IMAGE_ID] * 32, *reference.encode(after)]
    batch = processor(images=[image, image], text=["USER: <image>\nWhat is this?", "<image>What?"], padding=True, return_tensors="pt")
    assert batch.input_ids.shape == batch.attention_mask.shape and batch.attention_mask[1].sum() < batch.input_ids.shape[1]
    assert batch.input_ids[0].tolist() == processor(images=image, text="USER: <image>\nWhat is this?").input_ids[0]


@pytest.mark.parametrize(
    "source, options, message",
    [
        ("missing-folder/nowhere/really", {}, "neither an existing folder"),
        ("NOT_LLAVA", {}, r"not a checkpoint of a FlowCut family .* LLaVA-1\.5 .* LLaVA-NeXT"),
        ("BASE", {"target_nums": [0]}, "--target-num must be a whole number"),
        ("BASE", {"target_nums": [577]}, "choose a value below 576"),
        ("BASE", {"target_nums": [576]}, "prunes nothing"),
        ("BASE", {"name_pattern": "{base}"}, "overlaps"),
        ("BASE", {"name_pattern": "../x{n}"}, "not a plain folder name"),
        ("BASE", {"push": "org/one-repo", "target_nums": [32, 64]}, "names one repo but 2 variants"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(hf_base, tmp_path, source, options, message):
    if source == "NOT_LLAVA":
        source = tmp_path / "bert"
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    elif source == "BASE":
        source = hf_base
    out = hf_base.parent if options.get("name_pattern") == "{base}" else tmp_path / "out"
    before = sorted(p.name for p in hf_base.iterdir())
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        export(source, ExportOptions(**{"target_nums": [64], "out": out, "base_model": BASE_ID, **options}),
               log=lambda _: None)
    assert out == hf_base.parent or not out.exists()
    assert sorted(p.name for p in hf_base.iterdir()) == before, "the source must stay untouched"


def test_existing_output_needs_overwrite_and_pickle_needs_a_flag(exported, hf_base, tmp_path, capsys):
    folder = exported / "llava-tiny-hf-flowcut64"
    (folder / "user-notes.txt").write_text("mine")
    args = ["export", str(hf_base), "--target-num", "64", "--out", str(exported), "--base-model", BASE_ID]
    # The dry run says what the real run then does: reuse the finished folder.
    assert flowcut_cli.main([*args, "--dry-run"]) == 0
    assert "the real run reuses it" in capsys.readouterr().out
    result = cli("export", str(hf_base), "--target-num", "64", "--out", str(exported), "--base-model", BASE_ID)
    # Same source and settings as the finished export: it is reused, not rebuilt and not destroyed.
    assert result.returncode == 0, result.stderr
    assert "reusing it" in result.stdout and (folder / "user-notes.txt").exists()

    (hf_base / "README.md").touch()  # the source changed: the old folder no longer matches

    os.utime(hf_base / "config.json", None)
    result = cli("export", str(hf_base), "--target-num", "64", "--out", str(exported), "--base-model", BASE_ID)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (folder / "user-notes.txt").exists(), "a refused export must not touch the existing folder"
    assert flowcut_cli.main([*args, "--dry-run"]) == 2, "the dry run refuses what the real run refuses"
    assert "--overwrite" in capsys.readouterr().err
    assert flowcut_cli.main([*args, "--dry-run", "--overwrite"]) == 0
    assert f"would replace {folder}" in capsys.readouterr().out

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    import torch
    from safetensors.torch import load_file

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        (pickled / name).write_bytes((hf_base / name).read_bytes())
    torch.save(load_file(hf_base / "model.safetensors"), pickled / "pytorch_model.bin")
    result = cli("export", str(pickled), "--target-num", "16", "--out", str(tmp_path / "o"), "--base-model", BASE_ID)
    assert result.returncode == 2 and "--allow-pickle" in result.stderr
    assert not (tmp_path / "o" / "pickled-flowcut16").exists()
    result = cli("export", str(pickled), "--target-num", "16", "--out", str(tmp_path / "o"), "--base-model", BASE_ID, "--allow-pickle")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "pickled-flowcut16" / "model.safetensors").is_file()


def test_failed_verification_stops_before_push_and_leaves_no_folder(hf_base, tmp_path, monkeypatch):
    original = write.flowcut_config

    def wrong_count(config, amount):  # a config that disagrees with its processor
        return original(config, RetainedAmount(target_num=amount.target_num + 1))

    monkeypatch.setattr(write, "flowcut_config", wrong_count)
    pushed = []
    monkeypatch.setattr(pipeline, "push_variant", lambda *a, **k: pushed.append(a))
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match=r"kept \[65\] tokens, expected \[64\]"):
        export(hf_base, ExportOptions(target_nums=[64], out=out, push="org/x", base_model=BASE_ID), log=lambda _: None)
    assert pushed == []
    assert not (out / "llava-tiny-hf-flowcut64").exists()


CLI_IN_THIS_PROCESS = """
import json, sys
from flowcut_hf.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_the_command_holds_no_libraries_beside_the_model_while_it_verifies(hf_base, hub, tmp_path):
    # The memory promise of the README: while the check holds the model, the command's own process has imported
    # neither torch nor transformers (its workers did, and exited; the last one pushed).
    out = tmp_path / "out"
    repo_id = "local-user/staged-flowcut64"
    args = ["export", str(hf_base), "--target-num", "64", "--out", str(out), "--base-model", BASE_ID, "--push", repo_id]
    result = subprocess.run([sys.executable, "-c", CLI_IN_THIS_PROCESS, *args], capture_output=True, text=True, timeout=600,
                            env=staged_env(hub.client_env(tmp_path / "hf_home")))
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status == {"code": 0, "torch": False, "transformers": False}, result.stderr
    assert "verify in a clean subprocess" in result.stdout
    assert (out / "llava-tiny-hf-flowcut64" / "README.md").is_file()
    assert json.loads((out / ".flowcut-export.json").read_text())["variants"]["llava-tiny-hf-flowcut64"]["verified"]
    assert sorted(p.name for p in out.iterdir()) == [".flowcut-export.json", "llava-tiny-hf-flowcut64"], "no work folder left"
    assert hub.file_bytes(repo_id, "model.safetensors") == (hf_base / "model.safetensors").read_bytes()

    # A variant that fails its check is judged by the last worker: exit code 1, no folder, no work folder left.
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(hf_base, broken)
    weights = load_file(broken / "model.safetensors")
    weights.pop(next(key for key in weights if key.endswith("multi_modal_projector.linear_1.bias")))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    result = cli("export", str(broken), "--target-num", "64", "--out", str(out), "--base-model", BASE_ID, env=staged_env())
    assert result.returncode == 1 and "verification failed, nothing was pushed" in result.stderr
    assert "missing keys" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".flowcut-export.json", "llava-tiny-hf-flowcut64"]


def test_the_base_model_is_read_from_the_folder_or_left_out_with_a_warning(hf_base, tmp_path, capsys):
    def copy_of_base(name: str, readme: str | None = None, name_or_path: str | None = None) -> Path:
        folder = tmp_path / name
        shutil.copytree(hf_base, folder)
        if readme is not None:
            (folder / "README.md").write_text(readme)
        if name_or_path is not None:
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": name_or_path}))
        return folder

    def dry_run(folder: Path, *flags: str) -> str:
        assert flowcut_cli.main(["export", str(folder), "--target-num", "64", "--out", str(tmp_path / "dry"), "--dry-run", *flags]) == 0
        return capsys.readouterr().out

    from_config = copy_of_base("from-config", name_or_path="llava-hf/llava-1.5-7b-hf")
    assert "base model: llava-hf/llava-1.5-7b-hf (from the config's _name_or_path" in dry_run(from_config)
    assert "base model: org/chosen (from --base-model)" in dry_run(from_config, "--base-model", "org/chosen")
    from_card = copy_of_base("from-card", readme="---\nlicense: llama2\nbase_model: org/from-card\n---\n# a copy\n")
    assert "base model: org/from-card (from the base_model of the folder's model card" in dry_run(from_card)

    # Nothing names it: `hf download --local-dir` left its metadata, which records the commit but not the repo.
    unknown = copy_of_base("downloaded", readme="---\nlicense: llama2\n---\n# no base named\n")
    commit = "a" * 40
    metadata = unknown / ".cache" / "huggingface" / "download" / "config.json.metadata"
    metadata.parent.mkdir(parents=True)
    metadata.write_text(f"{commit}\n{'b' * 40}\n{time.time() + 5}\n")
    out = tmp_path / "out"
    result = cli("export", str(unknown), "--target-num", "64", "--out", str(out), "--skip-verify")
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if line.startswith("flowcut-hf export: warning:"))
    assert "cannot tell which Hub model" in warning and "--base-model OWNER/NAME" in warning and commit in warning
    card = ModelCard.load(out / "downloaded-flowcut64" / "README.md")
    assert card.data.base_model is None and card.data.license == "llama2"
    assert "its Hub id was not given when this variant was exported" in card.text


def test_dry_run_writes_and_pushes_nothing(hf_base, tmp_path):
    out = tmp_path / "out"
    result = cli("export", str(hf_base), "--target-num", "64", "--target-num", "32", "--out", str(out),
                 "--push", "org", "--dry-run", "--create-pr", "--commit-message", "hello", "--base-model", BASE_ID)
    assert result.returncode == 0, result.stderr
    assert "would open a pull request on org/llava-tiny-hf-flowcut64" in result.stdout
    assert "org/llava-tiny-hf-flowcut32" in result.stdout and "'hello'" in result.stdout
    assert " -> org/" not in result.stdout, "a dry run must not print the lines of variants it exported and pushed"
    assert not out.exists()


# ------------------------------------------------------------------------------------------ Hub round trips


@pytest.fixture()
def hub(local_hub):
    return local_hub


def test_push_round_trip_latest_and_pinned_revision(hf_base, hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    out = tmp_path / "out"
    repo_id = "local-user/llava-tiny-flowcut64"
    result = cli("export", str(hf_base), "--target-num", "64", "--out", str(out), "--push", repo_id,
                 "--base-model", BASE_ID, env=env)
    assert result.returncode == 0, result.stderr
    assert env["HF_TOKEN"] not in result.stdout + result.stderr, "the token must never be printed"
    assert hub.repo_exists(repo_id)
    first_commit = hub.head(repo_id)
    assert hub.file_bytes(repo_id, "model.safetensors") == (hf_base / "model.safetensors").read_bytes()

    # Nothing changed: no new commit and no weight bytes sent again.
    uploaded = hub.lfs_bytes_uploaded
    commits = hub.commit_count(repo_id)
    result = cli("export", str(hf_base), "--target-num", "64", "--out", str(out), "--push", repo_id,
                 "--base-model", BASE_ID, "--overwrite", env=env)
    assert result.returncode == 0, result.stderr
    assert hub.commit_count(repo_id) == commits and hub.lfs_bytes_uploaded == uploaded

    # A later commit moves main; a pinned revision still loads the first one.
    hub.commit_files(repo_id, {"NOTES.md": b"later commit"})
    load = """
    import json, torch, os
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from PIL import Image
    out = {}
    for revision in (None, PINNED):
        model = AutoModelForImageTextToText.from_pretrained(REPO, revision=revision, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(REPO, revision=revision, trust_remote_code=True)
        inputs = processor(images=Image.new("RGB", (336, 336), (200, 30, 30)), text=PROMPT, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[model.config.image_token_id])
        out[str(revision)] = {"class": type(model).__name__, "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
                              "new": generated.shape[1] - inputs["input_ids"].shape[1]}
    print(json.dumps(out))
    """
    header = f"REPO = {repo_id!r}\nPINNED = {first_commit!r}\nPROMPT = {PROMPT!r}\n"
    loaded = run_clean_python(header + textwrap.dedent(load), tmp_path, extra_env={**env, "HF_HUB_OFFLINE": "0"})
    for revision in ("None", first_commit):
        assert loaded[revision] == {"class": "FlowCutLlavaForConditionalGeneration", "placeholders": 64, "new": 3}


def test_failed_upload_is_completed_by_a_rerun_and_source_repo_is_refused(hf_base, hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    out = tmp_path / "out"
    repo_id = "local-user/retry-flowcut32"
    args = ["export", str(hf_base), "--target-num", "32", "--out", str(out), "--push", repo_id, "--base-model", BASE_ID]
    hub.fail_next_lfs_put = True
    failed = cli(*args, env=env)
    assert failed.returncode == 1 and "re-run the same command" in failed.stderr
    assert "model.safetensors" not in hub.files(repo_id)

    rerun = cli(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "reusing it" in rerun.stdout
    assert hub.file_bytes(repo_id, "model.safetensors") == (hf_base / "model.safetensors").read_bytes()

    # Exporting from a Hub repo into that same repo is refused before anything is written there.
    commits = hub.commit_count(repo_id)
    refused = cli("export", repo_id, "--target-num", "16", "--out", str(tmp_path / "o2"), "--push", repo_id, env=env)
    assert refused.returncode == 2 and "source repo" in refused.stderr
    assert hub.commit_count(repo_id) == commits


def test_create_pr_and_private_repo(hf_base, hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    repo_id = "local-user/pr-flowcut48"
    hub.create_repo(repo_id)
    result = cli("export", str(hf_base), "--target-num", "48", "--out", str(tmp_path / "out"), "--push", repo_id,
                 "--create-pr", "--commit-message", "FlowCut 48", "--base-model", BASE_ID, env=env)
    assert result.returncode == 0, result.stderr
    assert "model.safetensors" not in hub.files(repo_id), "a pull request must not touch main"
    assert "model.safetensors" in hub.files(repo_id, revision="refs/pr/1")
    assert hub.commits(repo_id, revision="refs/pr/1")[0]["title"] == "FlowCut 48"

    private_id = "local-user/private-flowcut24"
    result = cli("export", str(hf_base), "--target-num", "24", "--out", str(tmp_path / "out"), "--push", private_id,
                 "--private", "--base-model", BASE_ID, env=env)
    assert result.returncode == 0, result.stderr
    assert hub.is_private(private_id)


def test_private_makes_an_existing_public_repo_private_and_a_private_repo_stays_private(hf_base, hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    public_id, private_id, new_id = "local-user/was-public-16", "local-user/stays-private-16", "local-user/new-16"
    hub.create_repo(public_id, private=False)
    hub.create_repo(private_id, private=True)
    flags = ["--target-num", "16", "--base-model", BASE_ID, "--skip-verify"]

    def export_to(repo_id: str, *extra: str) -> subprocess.CompletedProcess:
        result = cli("export", str(hf_base), *flags, "--out", str(tmp_path / repo_id.split("/")[1]), "--push", repo_id,
                     *extra, env=env)
        assert result.returncode == 0, result.stderr
        return result

    planned = export_to(public_id, "--private", "--dry-run").stdout
    assert "an existing public repo, made private before the upload (--private)" in planned
    assert "a new private repo" in export_to(new_id, "--private", "--dry-run").stdout
    assert "an existing private repo, which stays private" in export_to(private_id, "--dry-run").stdout
    assert hub.files(public_id) == {".gitattributes": hub.files(public_id)[".gitattributes"]}, "a dry run pushes nothing"

    pushed = export_to(public_id, "--private").stdout
    assert "making it private before the upload" in pushed
    assert hub.is_private(public_id) and "model.safetensors" in hub.files(public_id)
    # The dry run announced the commit message the real run used (a local source, named by --base-model).
    announced = next(line for line in planned.splitlines() if "with message" in line).split("with message ")[1]
    assert announced == repr(hub.commits(public_id)[0]["title"]) == repr(f"Add FlowCut variant of {BASE_ID}")

    export_to(private_id)  # no --private: an existing private repo is never made public
    assert hub.is_private(private_id) and "model.safetensors" in hub.files(private_id)


@pytest.mark.parametrize("dry_run", [True, False])
def test_arguments_are_checked_before_any_stage_runs(hf_base, tmp_path, capsys, dry_run):
    out = tmp_path / "out"
    base = ["export", str(hf_base), "--target-num", "16", "--out", str(out), "--base-model", BASE_ID, *(["--dry-run"] * dry_run)]
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"results": [{"dataset_name": "POPE"}]}))
    cases = [
        (["--eval-results", str(tmp_path / "missing.json")], "missing.json"),
        (["--eval-results", str(tmp_path / "broken.json")], "broken.json: not valid JSON"),
        (["--eval-results", str(tmp_path / "wrong.json")], "results[0].task_type is required"),
        (["--push", "org/bad name"], "--push 'org/bad name' is not a repo id"),
        (["--push", "org/{model}-x"], "--push 'org/{model}-x' has the unknown placeholder {model}; the valid ones are {n} and {base}"),
        (["--push", "org", "--name-pattern", "{model}-x"], "--name-pattern '{model}-x' has the unknown placeholder {model}"),
        (["--name-pattern", "{base}-{n}-{"], "--name-pattern '{base}-{n}-{' is not a valid pattern"),
        (["--push", "org/x--y-{n}"], "--push gives 'org/x--y-16', which is not a valid Hub repo id"),
        (["--push", BASE_ID], f"--push {BASE_ID} is the base model the variant is made from"),
    ]
    for extra, message in cases:  # the command's own entry point, in this process (the same code, faster)
        assert flowcut_cli.main([*base, *extra]) == 2, extra
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (extra, error)
        assert not out.exists(), extra
    if not dry_run:  # and once as users run it: the three-process command refuses before its first worker writes
        result = cli(*base, "--eval-results", str(tmp_path / "wrong.json"), env=staged_env())
        assert result.returncode == 2 and "results[0].task_type is required" in result.stderr and not out.exists()
    with pytest.raises(SystemExit) as refused:
        flowcut_cli.main(["export", str(hf_base), "--target-num", "0", "--out", str(out), "--base-model", BASE_ID])
    error = capsys.readouterr().err
    assert refused.value.code == 2 and "--target-num: must be a whole number of visual tokens" in error
    assert "flowcut_enabled" not in error and "flowcut_target_num" not in error


def test_a_damaged_source_is_named_while_resolving(hf_base, tmp_path, capsys):
    def export_error(source: Path, *flags: str) -> str:
        args = ["export", str(source), "--target-num", "16", "--out", str(tmp_path / "out"), "--base-model", BASE_ID]
        assert flowcut_cli.main([*args, *flags]) == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "verif" not in captured.out + captured.err
        assert not (tmp_path / "out").exists()
        return captured.err

    damaged = tmp_path / "damaged"
    shutil.copytree(hf_base, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # an interrupted download
    for flags in ([], ["--dry-run"]):
        error = export_error(damaged, *flags)
        assert f"{weights} is damaged" in error and "where its header describes" in error
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}...")
    assert "is damaged (its header is not valid JSON" in export_error(damaged)

    sharded = tmp_path / "sharded"
    shutil.copytree(hf_base, sharded)
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model.safetensors"')
    assert "model.safetensors.index.json is damaged" in export_error(sharded)


def test_hub_source_at_a_pinned_revision_with_eval_results(hf_base, hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    source_id = "local-user/llava-tiny-base"
    hub.create_repo(source_id)
    files = {p.name: p.read_bytes() for p in hf_base.iterdir() if p.is_file()}
    pinned = hub.commit_files(source_id, files)
    hub.commit_files(source_id, {"config.json": b"{\"model_type\": \"bert\"}"})  # main moves on to a non-LLaVA
    eval_file = tmp_path / "eval.json"
    eval_file.write_text(json.dumps({"results": [{"task_type": "image-text-to-text", "dataset_type": "lmms-lab/POPE",
                                                  "dataset_name": "POPE", "metric_type": "f1", "metric_value": 80.2}]}))
    out = tmp_path / "out"
    result = cli("export", source_id, "--revision", pinned, "--target-num", "16", "--out", str(out),
                 "--eval-results", str(eval_file), env=env)
    assert result.returncode == 0, result.stderr
    folder = out / "llava-tiny-base-flowcut16"
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == source_id and card.data.license == "llama2"
    assert card.data.eval_results[0].metric_value == 80.2 and card.data.eval_results[0].dataset_name == "POPE"
    # Provenance: base_model holds only the repo id, so the commit goes into the body and the flowcut: block.
    assert card.data.flowcut["base_revision"] == pinned
    assert f"at commit `{pinned}`" in card.text and "current `main` may differ" in card.text


def test_full_strategy_model_exports_and_verifies(tmp_path):
    """With strategy "full" the CLS token is one of the kept features, so 64 features hold 63 patches."""
    source = tmp_path / "llava-full"
    model, processor = build_tiny_llava(seed=8, vision_feature_select_strategy="full")
    model.save_pretrained(source)
    processor.save_pretrained(source)
    results = export(source, ExportOptions(target_nums=[64], out=tmp_path / "out", base_model=BASE_ID), log=lambda _: None)
    assert results[0].token_schedule[-1] == 64


def test_reused_folder_gets_the_card_of_the_new_push(hf_base, hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    out = tmp_path / "out"
    args = ["export", str(hf_base), "--target-num", "40", "--out", str(out), "--base-model", BASE_ID]
    assert cli(*args, env=env).returncode == 0
    assert "your-namespace/llava-tiny-hf-flowcut40" in (out / "llava-tiny-hf-flowcut40" / "README.md").read_text()

    eval_file = tmp_path / "eval.json"
    eval_file.write_text(json.dumps({"results": [{"task_type": "image-text-to-text", "dataset_type": "lmms-lab/GQA",
                                                  "dataset_name": "GQA", "metric_type": "accuracy", "metric_value": 55.6}]}))
    repo_id = "local-user/reused-flowcut40"
    result = cli(*args, "--push", repo_id, "--eval-results", str(eval_file), env=env)
    assert result.returncode == 0, result.stderr
    assert "reusing it" in result.stdout
    pushed_card = hub.file_bytes(repo_id, "README.md").decode()
    assert repo_id in pushed_card and "your-namespace" not in pushed_card and "GQA" in pushed_card


def test_verification_compares_the_remote_code_with_the_library_on_the_same_loaded_weights(hf_base, tmp_path, monkeypatch):
    original = write.copy_remote_code_files

    def skewed_remote_code(destination, entry_files):  # remote code that drifted from the library's
        names = original(destination, entry_files)
        modeling = Path(destination) / "modeling_flowcut_llava.py"
        modeling.write_text(modeling.read_text() + textwrap.dedent("""
            _forward = FlowCutLlavaForConditionalGeneration.forward
            def _skewed(self, *args, **kwargs):
                output = _forward(self, *args, **kwargs)
                output.logits = output.logits + 1.0
                return output
            FlowCutLlavaForConditionalGeneration.forward = _skewed
        """))
        return names

    monkeypatch.setattr(write, "copy_remote_code_files", skewed_remote_code)
    with pytest.raises(VerificationError, match="differs from the library's on the same weights"):
        export(hf_base, ExportOptions(target_nums=[64], out=tmp_path / "out", base_model=BASE_ID), log=lambda _: None)


def load_kwargs_of_the_check_run(plan: dict, monkeypatch, gpu_free_bytes: int | None = None) -> dict:
    """How the check process loads a variant under ``plan`` (see checks.memory_plan), with or without a GPU."""
    monkeypatch.setenv("FLOWCUT_VERIFY_MEMORY", json.dumps(plan))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_free_bytes is not None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (gpu_free_bytes, 2 * gpu_free_bytes))
    namespace = {"json": json}
    exec(check_scripts.LOAD_ONE_COPY, namespace)
    return namespace["LOAD_KWARGS"]


def test_the_check_run_loads_plainly_when_the_model_fits_and_puts_a_gpu_first(hf_base, tmp_path, monkeypatch):
    weights = sum(p.stat().st_size for p in hf_base.glob("*.safetensors"))
    plan = memory_plan(hf_base, 10 * weights, tmp_path / "offload")
    assert plan["weights"] == weights and plan["cap"] == 10 * weights
    assert load_kwargs_of_the_check_run(plan, monkeypatch) == {"dtype": "auto"}, "a model that fits loads plainly"
    small = memory_plan(hf_base, weights // 4, tmp_path / "offload")
    assert load_kwargs_of_the_check_run(small, monkeypatch) == {
        "dtype": "auto", "device_map": "auto", "max_memory": {"cpu": weights // 4}, "offload_folder": str(tmp_path / "offload"),
    }, "a model larger than the cap is placed by accelerate and the rest offloaded"
    on_gpu = load_kwargs_of_the_check_run(plan, monkeypatch, gpu_free_bytes=10**9)
    assert on_gpu["device_map"] == "auto" and on_gpu["max_memory"] == {0: 9 * 10**8, "cpu": 10 * weights}, (
        "a GPU takes what it can first, even when the model would fit in RAM"
    )
    monkeypatch.setattr(checks, "free_memory_bytes", lambda: 8 * 2**30)
    assert memory_plan(hf_base, None, tmp_path)["cap"] == 4 * 2**30, "default: half the free memory"


def test_a_memory_cap_below_the_weights_offloads_and_still_verifies(hf_base, tmp_path):
    weights = sum(p.stat().st_size for p in hf_base.glob("*.safetensors"))
    options = ExportOptions(target_nums=[64], out=tmp_path / "out", base_model=BASE_ID, max_memory=weights // 4)
    (result,) = export(hf_base, options, log=lambda _: None)
    assert result.verification["memory_cap"] == {"cpu": weights // 4}, "verification ran under the cap, offloading"
    assert parse_memory_size("2.5GB") == 2_500_000_000 and parse_memory_size("500MiB") == 500 * 2**20
    result = cli("export", str(hf_base), "--target-num", "64", "--out", str(tmp_path / "o"), "--max-memory", "lots")
    assert result.returncode == 2 and "--max-memory takes a size such as 8GB" in result.stderr


def interrupted_export(args: list[str], when: Callable[[str], bool], env: dict) -> subprocess.CompletedProcess:
    """Runs `flowcut-hf ARGS` as users run it (three processes, in its own process group, as a terminal starts it) and
    presses Ctrl-C, signalling the whole group as a terminal does, once ``when`` accepts a line it printed."""
    process = subprocess.Popen([sys.executable, "-m", "flowcut_hf.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    printed = []
    for line in process.stdout:
        printed.append(line)
        if when(line):
            os.killpg(process.pid, signal.SIGINT)
            break
    rest, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(printed) + rest, stderr)


@pytest.mark.parametrize("stage", ["write", "verify"])
def test_ctrl_c_says_one_line_leaves_nothing_and_the_rerun_works(hf_base, tmp_path, stage):
    out = tmp_path / "out"
    args = ["export", str(hf_base), "--target-num", "32", "--out", str(out), "--base-model", BASE_ID]
    env = staged_env()
    # "write" is printed by the first worker, "verify" by the command's own process while a check runs.
    stopped = interrupted_export(args, lambda line: f": {stage}" in line, env)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines() == ["flowcut-hf export: interrupted; nothing was written"]
    assert not out.exists() or not [p for p in out.iterdir()], "nothing, not even a staging folder, is left"
    again = cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert (out / "llava-tiny-hf-flowcut32" / "model.safetensors").is_file()


def test_ctrl_c_during_the_push_says_the_folders_are_complete(hf_base, hub, tmp_path):
    env = staged_env(hub.client_env(tmp_path / "hf_home"))
    out = tmp_path / "out"
    repo_id = "local-user/interrupted-flowcut32"
    args = ["export", str(hf_base), "--target-num", "32", "--out", str(out), "--push", repo_id, "--base-model", BASE_ID]
    hub.lfs_put_started.clear()
    hub.lfs_put_delay = 60.0
    try:
        stopped = interrupted_export(args, lambda line: "push to" in line and hub.lfs_put_started.wait(60), env)
    finally:
        hub.lfs_put_delay = 0.0
    assert stopped.returncode == 130, stopped.stderr
    (message,) = stopped.stderr.strip().splitlines()
    assert message.startswith("flowcut-hf export: interrupted during the push;") and "re-run the same command" in message
    assert (out / "llava-tiny-hf-flowcut32" / "model.safetensors").is_file(), "the folder was complete and stays"
    again = cli(*args, env=env)
    assert again.returncode == 0 and "reusing it" in again.stdout, again.stderr
    assert hub.file_bytes(repo_id, "model.safetensors") == (hf_base / "model.safetensors").read_bytes()


def test_a_saved_builtin_model_is_a_complete_source_and_a_folder_without_a_processor_is_refused(tmp_path, capsys):
    from flowcut_hf.builtin import save_builtin_model

    source = save_builtin_model(tmp_path / "llava-builtin", "llava", "tiny", dtype=torch.float16)
    assert flowcut_cli.main(["export", str(source), "--target-num", "64", "--out", str(tmp_path / "out"), "--dry-run",
                             "--base-model", BASE_ID]) == 0
    assert "llava-builtin-flowcut64: would write" in capsys.readouterr().out

    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(source / name, weights_only / name)
    for extra in ([], ["--dry-run"]):
        code, error = refusal(capsys, "export", str(weights_only), "--target-num", "64", "--out", str(tmp_path / "out"), *extra)
        assert code == 2 and len(error.strip().splitlines()) == 1 and "Traceback" not in error
        assert "has no image processor" in error and "no tokenizer (tokenizer.json or tokenizer.model)" in error
        assert "processor.save_pretrained" in error
    assert not (tmp_path / "out").exists()
