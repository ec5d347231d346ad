"""Bad input and faults, tried as a new user meets them: each is one clear line, never a
traceback or a half-written file, and a run resumes once the cause is gone.

* ``--out`` naming an existing file, ``--checkpoint`` naming a folder;
* numbers in scientific notation (YAML 1.1 reads ``1e6`` as a string);
* a corrupt, truncated or foreign checkpoint: training starts over and says why;
* a full disk (a small tmpfs the tests mount; needs root, so skipped without it unless
  ``EQP_REQUIRE_ROOT_TESTS=1``, as in CI, where that is a failure).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from workflow_helpers import (
    REPO,
    SNAKEMAKE,
    checkpoint_epoch,
    comparable,
    complete,
    copy_workflow,
    write_config,
)

from eqp import cli, pipeline
from eqp.config.settings import SettingsError, load_settings_yaml, load_yaml, parse_override
from eqp.training.run import run_trial
from eqp.training.trainer import Trainer

PAPER = str(REPO / "config" / "paper.yaml")
WINE = ("train", PAPER, "--trial", "wine_5layer_swni", "--no-progress")
QUICK = ("--set", "epochs=1", "--set", "free_iterations=20", "--set", "weakly_clamped_iterations=4")
DISK_FULL = "error: no space left on the device holding"
EPOCHS = 60  # of the slow full-disk pipeline run


def one_error_line(err: str) -> str:
    """The one error line of a failed command (after any progress lines), with no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


# -- output paths that cannot be written -----------------------------------------------------


def test_out_naming_an_existing_file_is_one_clear_error(tmp_path: Path, capsys) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    assert cli.main([*WINE, *QUICK, "--out", str(existing)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"the output folder {existing} is an existing file" in line and "folder path" in line
    assert existing.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]  # nothing half-written


def test_out_below_a_file_and_a_folder_as_checkpoint_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    assert cli.main([*WINE, *QUICK, "--out", str(tmp_path / "file" / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'file'} is a file, not a folder" in line
    folder = tmp_path / "ckpt"
    folder.mkdir()
    out = tmp_path / "run"
    assert cli.main([*WINE, *QUICK, "--out", str(out), "--checkpoint", str(folder)]) == 2
    assert "is an existing folder; give a file path" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


# -- numbers in scientific notation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e6", 1e6), ("1E-5", 1e-5), ("1.5e+3", 1500.0), ("2.5e3", 2500.0), ("-3e-2", -0.03),
     (".5e1", 5.0), ("0.01", 0.01), ("7", 7), ("'1e6'", "1e6"), ("1e", "1e"), ("e5", "e5")],
)  # fmt: skip
def test_yaml_reads_scientific_notation_as_numbers(text: str, value) -> None:
    parsed = load_settings_yaml(text)
    assert parsed == value and type(parsed) is type(value)


def test_set_accepts_scientific_notation(paper_trials, tmp_path: Path, capsys) -> None:
    assert parse_override("learning_rate=1e6") == ("learning_rate", 1e6)
    assert parse_override("learning_rate=[1e-2, 5E-3, 1e-3, 1e-3, 1e-3, 1e-3]")[1][1] == 0.005
    out = tmp_path / "run"
    args = [*WINE, *QUICK, "--set", "learning_rate=1e6", "--set", "epsilon=5e-1"]
    assert cli.main([*args, "--out", str(out)]) == 0
    capsys.readouterr()  # the run's progress lines
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["learning_rate"] == 1e6 and settings["epsilon"] == 0.5
    # a wrong value is now judged as the number it is, not refused as a string
    assert cli.main([*WINE, "--set", "learning_rate=-1e6", "--out", str(tmp_path / "x")]) == 2
    assert "learning_rate = -1000000.0 is invalid; it must be a finite number > 0" in (
        one_error_line(capsys.readouterr().err)
    )
    with pytest.raises(SettingsError, match="not valid YAML"):
        parse_override("layer_sizes=[1, 2")


def test_config_files_read_scientific_notation(tmp_path: Path, capsys) -> None:
    config = load_yaml(PAPER)
    config["trials"]["wine_5layer_swni"]["learning_rate"] = "LR"
    text = yaml.safe_dump(config, sort_keys=False)
    text = text.replace("learning_rate: LR", "learning_rate: 2e-2")
    path = tmp_path / "sci.yaml"
    path.write_text(text)
    assert load_yaml(path)["trials"]["wine_5layer_swni"]["learning_rate"] == 0.02
    assert cli.main(["trials", str(path)]) == 0  # every trial of the file validates
    assert "wine_5layer_swni" in capsys.readouterr().out
    # the pipeline reads trials_file through the same loader
    plan_config = load_yaml(REPO / "config" / "tiny.yaml")
    plan_config["trials_file"] = str(path)
    plan = pipeline.Plan.from_config(plan_config, REPO)
    assert plan.trial_settings("wine_5layer_swni", 0).learning_rate == 0.02


# -- checkpoints that cannot be resumed ---------------------------------------------------------


def _quick(paper_trials, **changes):
    return paper_trials["wine_5layer_swni"].with_overrides(
        {"epochs": 2, "free_iterations": 20, "weakly_clamped_iterations": 4, **changes}
    )


def _saved_checkpoint(settings, path: Path) -> Path:
    trainer = Trainer.build(settings)
    trainer.history.rows.append({"epoch": 0})
    trainer.save_checkpoint(path)
    return path


def _train_logging(settings, out: Path, checkpoint: Path) -> list[str]:
    lines: list[str] = []
    run_trial(settings, out, checkpoint=checkpoint, log=lines.append, threads=1)
    assert (out / "summary.json").is_file() and not checkpoint.exists()
    return lines


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoint_starts_over_with_one_log_line(paper_trials, tmp_path, damage) -> None:
    settings = _quick(paper_trials)
    checkpoint = _saved_checkpoint(settings, tmp_path / "state.safetensors")
    blob = checkpoint.read_bytes()
    checkpoint.write_bytes(
        {"truncated": blob[: len(blob) // 2], "garbage": b"\x00junk" * 50, "empty": b""}[damage]
    )
    lines = _train_logging(settings, tmp_path / "out", checkpoint)
    notes = [line for line in lines if "checkpoint" in line]
    assert len(notes) == 1, lines
    assert notes[0].startswith(f"ignored the checkpoint {checkpoint}: it is corrupt or truncated (")
    assert notes[0].endswith("); starting over")
    assert "\n" not in notes[0]


def test_checkpoint_of_other_settings_starts_over_saying_so(paper_trials, tmp_path) -> None:
    checkpoint = _saved_checkpoint(
        _quick(paper_trials, learning_rate=0.02), tmp_path / "state.safetensors"
    )
    lines = _train_logging(_quick(paper_trials), tmp_path / "out", checkpoint)
    assert [line for line in lines if "checkpoint" in line] == [
        f"ignored the checkpoint {checkpoint}: it was made with other settings, another engine "
        "or another weight layout; starting over"
    ]


# -- a full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block, always unmounted after."""
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root"
    else:
        path.mkdir(parents=True, exist_ok=True)
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        if mount.returncode != 0:
            reason = f"cannot mount a tmpfs: {mount.stderr.strip()}"
    if reason:
        if os.environ.get("EQP_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail(f"{reason} (EQP_REQUIRE_ROOT_TESTS=1)")
        pytest.skip(f"{reason}; run as root (CI sets EQP_REQUIRE_ROOT_TESTS=1)")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Grow ``path`` until its filesystem has no byte left."""
    with open(path, "ab", buffering=0) as handle:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while handle.write(b"\0" * chunk):
                    pass


class KeepFull(threading.Thread):
    """Keeps a filesystem full while a run goes on: space a run frees is taken back at once."""

    def __init__(self, filler: Path) -> None:
        super().__init__(daemon=True)
        self.filler, self.stop = filler, threading.Event()
        self.full = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            fill(self.filler)
            self.full.set()
            time.sleep(0.002)


def leftovers(folder: Path, filler: Path) -> tuple[list[str], list[str]]:
    """Temporary files left behind, and files that do not read back whole."""
    files = [p for p in folder.rglob("*") if p.is_file() and p != filler]
    temporary = [str(p) for p in files if p.name.endswith(".tmp")]
    broken = [str(p) for p in files if not p.name.endswith(".tmp") and not complete(p)]
    return temporary, broken


def test_full_disk_is_one_line_and_the_run_completes_once_space_is_back(
    paper_trials, tmp_path: Path, capsys
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        filler = disk / "filler"
        fill(filler)
        out, checkpoint = disk / "run", disk / "state.safetensors"
        args = [*WINE, *QUICK, "--out", str(out), "--checkpoint", str(checkpoint)]
        assert cli.main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line == (
            f"{DISK_FULL} {out}: free space there, then run again (a training job resumes "
            "after its last finished epoch)"
        )
        assert leftovers(disk, filler) == ([], [])
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]

        filler.unlink()
        assert cli.main(args) == 0
        assert (out / "summary.json").is_file()
        assert leftovers(disk, filler) == ([], [])


@pytest.mark.slow
def test_pipeline_on_a_full_disk_fails_cleanly_and_resumes(paper_trials, tmp_path: Path) -> None:
    """The results folder is a small tmpfs that fills up mid-training: the job fails with one
    line, leaves only complete files, and resumes after its last epoch once space is back."""
    trial = "wine_5layer_swni"
    root = tmp_path / "work"
    copy_workflow(root)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    # long enough (a few seconds) that the disk fills up mid-training, not after it
    config["trial_overrides"] = {trial: {"epochs": EPOCHS, "free_iterations": 1000}}
    configfile = write_config(root / "config" / "disk.yaml", config)
    plan = pipeline.Plan.from_config(config, root)
    target = f"{plan.trial_folder(trial, 0)}/summary.json"
    checkpoint = root / plan.trial_checkpoint(trial, 0)
    command = [str(SNAKEMAKE), target, "--cores", "1", "--configfile", str(configfile)]

    with small_disk(root / plan.results_dir) as disk:
        filler = disk / ".filler"
        with open(tmp_path / "snakemake.log", "w") as handle:
            job = subprocess.Popen(command, cwd=root, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while checkpoint_epoch(checkpoint) < 2 and job.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after epoch 2 in time"
            time.sleep(0.02)
        keeper = KeepFull(filler)
        keeper.start()
        try:
            job.wait(timeout=300)
        finally:
            keeper.stop.set()
            keeper.join()
        output = (tmp_path / "snakemake.log").read_text()
        assert keeper.full.is_set()
        assert job.returncode != 0, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith(DISK_FULL)]
        assert errors == [
            f"{DISK_FULL} {plan.trial_folder(trial, 0)}: free space there, then run again "
            "(a training job resumes after its last finished epoch)"
        ], output[-3000:]
        assert "Traceback" not in output
        log = (root / "logs" / "trials" / trial / "seed0.log").read_text()
        assert log.strip().splitlines()[-1] == errors[0]
        assert leftovers(disk, filler) == ([], [])
        assert not (root / target).exists()
        saved = checkpoint_epoch(checkpoint)
        assert 2 <= saved < EPOCHS

        filler.unlink()
        rerun = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        log = (root / "logs" / "trials" / trial / "seed0.log").read_text()
        assert re.search(rf"resumed from the checkpoint after epoch {saved}\b", log), log
        assert leftovers(disk, filler) == ([], [])
        assert not checkpoint.exists()
        resumed = root / plan.trial_folder(trial, 0)
        uninterrupted = run_trial(
            plan.trial_settings(trial, 0), tmp_path / "uninterrupted", log=lambda _: None,
            threads=plan.threads_per_job,
        ).folder  # fmt: skip
        for name in pipeline.TRIAL_FILES[:-1]:
            assert comparable(resumed / name) == comparable(uninterrupted / name), name


def test_disk_full_message_names_the_file_or_each_filesystem(tmp_path: Path) -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.npz"))
    assert f"holding {tmp_path / 'a.npz'}:" in str(pipeline.disk_full_error(exc, ()))
    bare = OSError(errno.ENOSPC, "No space left on device")
    same_device = pipeline.disk_full_error(bare, (tmp_path / "out", tmp_path / "c.safetensors"))
    assert f"holding {tmp_path / 'out'}: free space there" in str(same_device)
    two = pipeline.disk_full_error(bare, (tmp_path / "out", "/proc/x"))
    assert f"holding {tmp_path / 'out'} and /proc/x:" in str(two)
