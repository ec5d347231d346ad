"""A trial run end to end: its folder, determinism, kill-and-resume, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from eqp.outputs import records
from eqp.training.run import run_trial
from eqp.training.trainer import DeviceError, Trainer, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def _small(paper_trials, **change):
    base = {"epochs": 3, "free_iterations": 100, "weakly_clamped_iterations": 4}
    return paper_trials["wine_5layer_swni"].with_overrides({**base, **change})


def _comparable(folder: Path) -> dict:
    metrics = records.read_metrics(folder)
    metrics.pop("seconds")
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("seconds", "versions"):
        summary.pop(key)
    return {
        # NaN marks an empty cell (no training phase at epoch 0); None compares equal to itself
        "metrics": {k: [None if x != x else x for x in v.tolist()] for k, v in metrics.items()},
        "summary": summary,
        "model": {k: v.tolist() for k, v in load_file(folder / "model.safetensors").items()},
        "rates": records.TrialRecord.open(folder).layer_rates.tolist(),
        "mean_dw": records.TrialRecord.open(folder).mean_dw.tolist(),
    }


def test_trial_folder_holds_every_output(paper_trials, tmp_path):
    settings = _small(paper_trials)
    outcome = run_trial(settings, tmp_path / "out", log=lambda _: None, preset="demo")
    folder = outcome.folder
    for name in records.FILES:
        assert (folder / name).stat().st_size > 0, name
    metrics = records.read_metrics(folder)
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    assert metrics["train_error"][0] == metrics["test_error"][0]
    record = records.TrialRecord.open(folder)
    assert record.layer_rates.shape == (3, 30, 6)
    assert record.learning_rates.tolist() == [0.01] * 6
    initial = record.initial
    assert initial["W"].dtype == np.float32 and initial["mask"].shape == (66, 66)
    mean_dw = record.mean_dw
    assert np.array_equal(mean_dw, mean_dw.T)
    assert not mean_dw[initial["mask"] == 0].any()
    summary = outcome.summary
    assert summary["preset"] == "demo"
    assert summary["realised_p"] == pytest.approx(0.1)
    assert summary["test_error"] == metrics["test_error"][-1]
    assert np.isfinite(summary["log_spread"])
    assert not list(folder.glob(".*.tmp"))


def test_same_config_and_seed_give_identical_results(paper_trials, tmp_path):
    settings = _small(paper_trials)
    first = run_trial(settings, tmp_path / "a", log=lambda _: None).folder
    second = run_trial(settings, tmp_path / "b", log=lambda _: None).folder
    assert _comparable(first) == _comparable(second)


def test_different_seeds_give_different_networks(paper_trials, tmp_path):
    a = Trainer.build(_small(paper_trials, seed=0))
    b = Trainer.build(_small(paper_trials, seed=1))
    assert not torch.equal(a.net.weights, b.net.weights)


def test_checkpoint_resume_equals_an_uninterrupted_run(paper_trials, tmp_path):
    settings = _small(paper_trials)
    straight = Trainer.build(settings)
    straight.evaluate()
    expected = [straight.train_epoch()[0] for _ in range(3)]
    expected_test = straight.evaluate().error

    checkpoint = tmp_path / "state.safetensors"
    first = Trainer.build(settings)
    first.evaluate()
    got = [first.train_epoch()[0] for _ in range(2)]
    first.history.rows.append({"epoch": 2})
    first.save_checkpoint(checkpoint)
    second = Trainer.build(settings)
    assert second.load_checkpoint(checkpoint)
    assert second.epoch == 2
    got.append(second.train_epoch()[0])
    assert got == expected
    assert second.evaluate().error == expected_test
    assert torch.equal(second.net.weights, straight.net.weights)


def _train_command(out: Path, checkpoint: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "eqp",
        "train",
        str(ROOT / "config" / "paper.yaml"),
        "--trial",
        "wine_5layer_swni",
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--set",
        "free_iterations=300",
        "--checkpoint",
        str(checkpoint),
        "--no-progress",
    ]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_outputs(tmp_path):
    epochs = 6
    reference = tmp_path / "reference"
    subprocess.run(
        _train_command(reference, tmp_path / "unused.safetensors", epochs),
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    out = tmp_path / "killed"
    checkpoint = tmp_path / "state.safetensors"
    process = subprocess.Popen(
        _train_command(out, checkpoint, epochs),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    epoch_seen = -1
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            from safetensors import safe_open

            try:
                with safe_open(str(checkpoint), framework="np") as handle:
                    epoch_seen = json.loads(handle.metadata()["state"])["epoch"]
            except Exception:
                epoch_seen = -1
            if epoch_seen >= 2:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists()
    resumed = subprocess.run(
        _train_command(out, checkpoint, epochs), capture_output=True, text=True, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint after epoch {epoch_seen}" in resumed.stderr
    assert _comparable(out) == _comparable(reference)
    assert not checkpoint.exists()


def test_checkpoint_of_other_settings_is_not_resumed(paper_trials, tmp_path):
    checkpoint = tmp_path / "state.safetensors"
    first = Trainer.build(_small(paper_trials))
    first.history.rows.append({"epoch": 0})
    first.save_checkpoint(checkpoint)
    assert Trainer.build(_small(paper_trials)).load_checkpoint(checkpoint)
    assert not Trainer.build(_small(paper_trials, learning_rate=0.02)).load_checkpoint(checkpoint)
    assert not Trainer.build(_small(paper_trials), layout="blocked").load_checkpoint(checkpoint)
    checkpoint.write_bytes(b"truncated")
    assert not Trainer.build(_small(paper_trials)).load_checkpoint(checkpoint)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_clear_error(paper_trials):
    with pytest.raises(DeviceError, match="device 'cuda' was requested but this machine has no"):
        resolve_device("cuda")
    with pytest.raises(DeviceError):
        Trainer.build(_small(paper_trials, device="cuda"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eqp", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_help_documents_every_command():
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("train", "bench", "trials"):
        assert command in result.stdout
        sub = _cli(command, "--help")
        assert sub.returncode == 0 and "usage" in sub.stdout


def _bad_input_cases(tmp_path: Path) -> list[tuple[tuple[str, ...], str]]:
    paper = str(ROOT / "config" / "paper.yaml")
    out = str(tmp_path)
    wine = ("train", paper, "--trial", "wine_5layer_swni", "--out", out)
    return [
        (("train", paper, "--trial", "nope", "--out", out), "unknown trial 'nope'"),
        ((*wine, "--set", "bypass_p=2"), "bypass_p = 2 is invalid"),
        (("train", str(tmp_path / "missing.yaml"), "--trial", "x", "--out", "o"), "does not exist"),
        (("bench", "--trial", "nope"), "unknown trial 'nope'"),
        ((*wine, "--engine", "dense", "--layout", "fused"), "applies to the fast engine only"),
        ((*wine, "--layout", "fused"), "layout 'fused' is not available: not built (test)"),
    ]


def test_cli_bad_input_is_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    """In process for speed; the subprocess test below checks the same from the shell."""
    from eqp import cli
    from eqp.engines.backends import c_kernel

    monkeypatch.setattr(c_kernel, "unavailable_reason", lambda: "not built (test)")
    for args, message in _bad_input_cases(tmp_path):
        assert cli.main(list(args)) == 2
        err = capsys.readouterr().err
        assert message in err
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


def test_cli_bad_input_from_the_shell_exits_2_with_one_line(tmp_path):
    args, message = _bad_input_cases(tmp_path)[1]
    result = _cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bench_prints_seconds_per_batch_for_each_engine():
    result = _cli("bench", "--trial", "wine_5layer_mlff", "--batches", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "s/batch=" in line]
    assert len(lines) == 2
    assert "engine=dense" in lines[0] and "engine=fast" in lines[1]
    assert "speedup(dense/fast)=" in result.stdout
    from eqp.engines.backends import c_kernel

    built = c_kernel.unavailable_reason() is None
    first = result.stdout.splitlines()[0]
    assert first.startswith("fused CPU kernel: ")
    assert (f"{c_kernel.instruction_set()} arithmetic" in first) if built else ("not used" in first)


def test_cli_bench_times_settle_methods_and_thread_counts_from_one_warm_state():
    result = _cli(
        "bench",
        "--trial",
        "wine_5layer_mlff",
        "--settle",
        "euler",
        "--settle",
        "sor",
        "--threads",
        "1",
        "--threads",
        "2",
        "--batches",
        "2",
        "--warm-batches",
        "5",
    )
    assert result.returncode == 0, result.stderr
    timings = [line for line in result.stdout.splitlines() if "s/train_batch=" in line]
    from eqp.engines.backends import c_kernel

    after = "update=native" if c_kernel.update_available() else "update=torch"
    expected = [
        (f"settle={method}", f"threads={count}", update)
        for method in ("euler", "sor")
        for count in (1, 2)
        for update in dict.fromkeys(["update=torch", after])
    ]
    assert [tuple(t.split()[1:4]) for t in timings] == expected
    assert "train mean 1000.0" in timings[0]  # the Euler phase costs its fixed steps
    assert "settle euler->sor: train batch" in result.stdout
    assert "threads 1->2: train batch" in result.stdout
    assert "weight update alone" in result.stdout


def _bench_checkpoint(tmp_path: Path, epochs: int, **change) -> Path:
    """A training checkpoint of wine_5layer_mlff as config/config.yaml describes it (with
    ``change``d settings), after ``epochs`` epochs."""
    from eqp.config.settings import load_yaml, select_trial, trials_from_config

    trials = trials_from_config(load_yaml(ROOT / "config" / "config.yaml"))
    trainer = Trainer.build(select_trial(trials, "wine_5layer_mlff").with_overrides(change))
    for _ in range(epochs):
        trainer.train_epoch()
    path = tmp_path / "wine.safetensors"
    trainer.save_checkpoint(path)
    return path


BENCH_WINE = ("bench", "--trial", "wine_5layer_mlff", "--settle", "euler", "--repeats", "1")


def test_cli_bench_refuses_a_checkpoint_of_other_settings_in_one_line(tmp_path):
    # trained with 50 free steps: not the trial the config describes
    checkpoint = _bench_checkpoint(tmp_path, 1, free_iterations=50)
    result = _cli(*BENCH_WINE, "--batches", "2", "--checkpoint", str(checkpoint))
    assert result.returncode == 2, result.stdout
    assert "cannot resume wine_5layer_mlff as --config describes it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_cli_bench_from_a_checkpoint_resumes_its_state_without_a_warm_up(tmp_path):
    checkpoint = _bench_checkpoint(tmp_path, 2)
    result = _cli(*BENCH_WINE, "--batches", "2", "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert f"from {checkpoint}: the state after epoch 2" in result.stdout
    assert "warm-up" not in result.stdout
    timings = [line for line in result.stdout.splitlines() if "s/train_batch=" in line]
    assert timings and all("settle=euler" in line for line in timings)
    many = _cli(*BENCH_WINE, "--batches", "100000", "--checkpoint", str(checkpoint))
    assert many.returncode == 2 and "--batches = 100000 is more than the" in many.stderr
    two = _cli(*BENCH_WINE, "--trial", "wine_5layer_swni", "--checkpoint", str(checkpoint))
    assert two.returncode == 2 and "name it with one --trial" in two.stderr
    missing = _cli(*BENCH_WINE, "--checkpoint", str(tmp_path / "no"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize("correct", [False, True])
def test_per_layer_rates_scale_blocks_and_bias_as_configured(paper_trials, correct):
    rates = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]
    settings = _small(
        paper_trials, network_type="MLFF", learning_rate=rates, correct_bias_quirk=correct
    )
    from eqp.data.datasets import synthetic_dataset

    trainer = Trainer.build(settings, data=synthetic_dataset(settings, 1))
    w0, b0 = trainer.net.weights.clone(), trainer.net.biases.clone()
    x = trainer.data.train.x[0]
    free = trainer.engine.free(x, trainer.train_particles[0], settings.free_iterations)
    nudged = trainer.engine.nudged(x, free, trainer.data.train.y[0], 1.0, 4)
    trainer.weight_update.apply(x, free, nudged, 1.0)
    inputs = x.float()
    r_free, r_nudged = torch.cat([inputs, free], 1), torch.cat([inputs, nudged], 1)
    d_w = (r_nudged.T @ r_nudged - r_free.T @ r_free) / x.shape[0] * trainer.net.mask
    d_b = (r_nudged - r_free).mean(0)
    offsets = trainer.net.offsets
    for k, rate in enumerate(rates):
        rows, cols = slice(offsets[k], offsets[k + 1]), slice(offsets[k + 1], offsets[k + 2])
        step = trainer.net.weights[rows, cols] - w0[rows, cols]
        assert torch.allclose(step, rate * d_w[rows, cols], atol=1e-6)
        bias_step = trainer.net.biases[cols] - b0[cols]
        expected = rate * d_b[cols] if correct else d_b[cols]
        assert torch.allclose(bias_step, expected, atol=1e-6)
    assert torch.equal(trainer.net.weights, trainer.net.weights.T)


def test_a_rerun_clears_the_temporaries_a_killed_writer_left(paper_trials, tmp_path):
    out, checkpoint = tmp_path / "out", tmp_path / "ckpt" / "seed0.safetensors"
    out.mkdir()
    checkpoint.parent.mkdir()
    left = out / ".model.safetensors.h0oact38.tmp"
    ours = checkpoint.parent / ".seed0.safetensors.x1y2z3.tmp"
    another_seed = checkpoint.parent / ".seed1.safetensors.x1y2z3.tmp"
    for path in (left, ours, another_seed):
        path.write_bytes(b"half")
    run_trial(_small(paper_trials, epochs=1), out, checkpoint=checkpoint, log=lambda _: None)
    assert not left.exists() and not ours.exists()
    assert another_seed.exists()  # another job's write in progress: not ours to remove
    assert not list(out.glob("*.tmp"))
