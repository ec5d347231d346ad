"""Ensembles: stacked trials give each member's separate results, on the CPU and on CUDA.

Device-aware: with EQP_TEST_DEVICE=cuda the members and their separate runs train on the GPU
(CUDA graphs on), else on the CPU. Batched and single products sum in different orders, so
weights agree to float rounding, classification errors (counts of examples) exactly and
Diabetes costs to 1e-5 relative, the fidelity tests' tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from eqp.outputs import records
from eqp.training.ensemble import Ensemble, EnsembleError, check_stackable, run_ensemble
from eqp.training.run import run_trial
from eqp.training.trainer import Trainer

# Parameters drift apart by float32 rounding only: measured 6e-8..1.2e-7 after 2 Wine epochs
# on the CPU, and up to 1.5e-5 (1.1e-4 relative) in Diabetes biases after 1 epoch on an H200.
WEIGHT_TOLERANCE = 1e-5
RELATIVE_TOLERANCE = 1e-3


def _history(trainer_errors):
    return [round(e, 9) for e in trainer_errors]


def _separate(settings, epochs, data_root=None):
    trainer = Trainer.build(settings, data_root, layout="dense")
    errors = [trainer.evaluate().error]
    for _ in range(epochs):
        error, rates = trainer.train_epoch()
        errors += [error, trainer.evaluate().error]
    return errors, trainer.net.weights.cpu(), trainer.net.biases.cpu(), rates


def _together(members, epochs, data_root=None, cuda_graphs=True):
    trainers = [Trainer.build(s, data_root, layout="dense") for s in members]
    ensemble = Ensemble(trainers, cuda_graphs=cuda_graphs)
    errors = [[e.error] for e in ensemble.evaluate()]
    for _ in range(epochs):
        trained = ensemble.train_epoch()
        tested = ensemble.evaluate()
        for i, ((error, _), evaluation) in enumerate(zip(trained, tested, strict=True)):
            errors[i] += [error, evaluation.error]
    last = [rates for _, rates in trained]
    return errors, trainers, last


def _assert_members_match(members, epochs, data_root=None):
    errors, trainers, rates = _together(members, epochs, data_root)
    for i, settings in enumerate(members):
        alone, weights, biases, alone_rates = _separate(settings, epochs, data_root)
        if settings.classification:
            assert _history(errors[i]) == _history(alone), settings.name
        else:
            assert errors[i] == pytest.approx(alone, rel=1e-5), settings.name
        for together, alone_values in (
            (trainers[i].net.weights, weights),
            (trainers[i].net.biases, biases),
        ):
            np.testing.assert_allclose(
                together.cpu(), alone_values, rtol=RELATIVE_TOLERANCE, atol=WEIGHT_TOLERANCE
            )
        # Rates of ~1e-8 (deep MLFF layers) are cancellation noise, as in test_fidelity; a
        # batch's rates follow the drifting parameters (measured up to 1.5e-3 relative on an H200).
        np.testing.assert_allclose(rates[i], alone_rates, rtol=5e-3, atol=1e-7)


def test_wine_sweep_points_and_seeds_match_their_separate_runs(paper_trials, test_device):
    base = paper_trials["wine_5layer_swni"].with_overrides({"epochs": 2, "device": test_device})
    members = [
        base.with_overrides({"bypass_p": p, "seed": seed})
        for p, seed in ((0.0, 0), (0.1, 0), (0.5, 1))
    ]
    _assert_members_match(members, 2)


def test_scalar_and_per_layer_learning_rates_mix_in_one_ensemble(paper_trials, test_device):
    base = paper_trials["diabetes_5layer_mlff"].with_overrides(
        {"epochs": 1, "device": test_device, "free_iterations": 200}
    )
    rates = [0.02, 0.01, 0.005, 0.004, 0.003, 0.002]
    members = [
        base,
        base.with_overrides({"learning_rate": rates}),
        base.with_overrides({"learning_rate": rates, "correct_bias_quirk": True}),
    ]
    _assert_members_match(members, 1)


def test_a_tiny_mnist_sweep_matches_its_separate_runs(paper_trials, mnist_root, test_device):
    base = paper_trials["mnist_5layer_swni"].with_overrides(
        {
            "epochs": 1,
            "device": test_device,
            "train_examples": 200,
            "test_examples": 100,
            "free_iterations": 60,
        }
    )
    members = [base.with_overrides({"bypass_p": p}) for p in (0.0, 0.01, 0.3)]
    _assert_members_match(members, 1, mnist_root)


def test_members_that_cannot_be_stacked_are_refused_by_name(paper_trials):
    wine5 = paper_trials["wine_5layer_swni"]
    with pytest.raises(EnsembleError, match="differ in layer_sizes"):
        check_stackable([wine5, paper_trials["wine_8layer_swni"]])
    with pytest.raises(EnsembleError, match="differ in free_iterations"):
        check_stackable([wine5, wine5.with_overrides({"free_iterations": 10})])
    with pytest.raises(EnsembleError, match="different numbers of batches"):
        check_stackable([wine5, wine5.with_overrides({"train_examples": 50})])
    with pytest.raises(EnsembleError, match="Euler phases only"):
        check_stackable([wine5.with_overrides({"settle": "sor"})])
    with pytest.raises(EnsembleError, match="at least one"):
        check_stackable([])


class Interrupt(Exception):
    """A kill in the middle of a run, raised from its log."""


def interrupt_at(text):
    """A log function that raises Interrupt at the first line holding ``text``."""

    def log(line):
        if text in line:
            raise Interrupt

    return log


def _assert_resumed_equals_uninterrupted(members, tmp_path):
    """The resumed folders a0, a1... hold the errors of an uninterrupted run (b0, b1...)."""
    straight = [tmp_path / f"b{i}" for i in range(len(members))]
    run_ensemble(members, straight, log=lambda _: None)
    for i, folder in enumerate(straight):
        resumed = records.read_metrics(tmp_path / f"a{i}")
        for key in ("train_error", "test_error"):
            np.testing.assert_array_equal(resumed[key], records.read_metrics(folder)[key])


def _folder_contents(folder):
    summary = json.loads((folder / "summary.json").read_text())
    metrics = records.read_metrics(folder)
    return summary, metrics


def test_run_ensemble_writes_each_members_folder_like_run_trial(paper_trials, tmp_path):
    base = paper_trials["wine_5layer_swni"].with_overrides({"epochs": 2})
    members = [base.with_overrides({"bypass_p": p}) for p in (0.0, 0.2)]
    folders = [tmp_path / f"ens{i}" for i in range(2)]
    outcomes = run_ensemble(members, folders, log=lambda _: None, preset="test")
    for i, settings in enumerate(members):
        alone = run_trial(settings, tmp_path / f"alone{i}", layout="dense", log=lambda _: None)
        files = sorted(p.name for p in folders[i].iterdir())
        assert files == sorted(p.name for p in alone.folder.iterdir())
        summary, metrics = _folder_contents(folders[i])
        assert summary["ensemble"] == {"members": 2, "index": i, "step_kernel": "cublas"}
        assert outcomes[i].summary["test_error"] == alone.summary["test_error"]
        np.testing.assert_array_equal(
            metrics["test_error"], records.read_metrics(alone.folder)["test_error"]
        )
        assert summary["realised_p"] == alone.summary["realised_p"]


def test_an_interrupted_ensemble_resumes_to_the_uninterrupted_outputs(paper_trials, tmp_path):
    base = paper_trials["wine_5layer_swni"].with_overrides({"epochs": 3, "free_iterations": 200})
    members = [base.with_overrides({"bypass_p": p}) for p in (0.0, 0.2)]
    checkpoints = [tmp_path / f"ck{i}.safetensors" for i in range(2)]

    with pytest.raises(Interrupt):
        run_ensemble(
            members,
            [tmp_path / "a0", tmp_path / "a1"],
            checkpoints=checkpoints,
            log=interrupt_at("epoch 2:"),
        )
    assert all(c.exists() for c in checkpoints)
    lines = []
    run_ensemble(
        members, [tmp_path / "a0", tmp_path / "a1"], checkpoints=checkpoints, log=lines.append
    )
    assert any("resumed every member from its checkpoint after epoch 1" in line for line in lines)
    assert not any(c.exists() for c in checkpoints)
    _assert_resumed_equals_uninterrupted(members, tmp_path)


def test_a_checkpoint_of_one_member_only_restarts_every_member(paper_trials, tmp_path):
    base = paper_trials["wine_5layer_swni"].with_overrides({"epochs": 1, "free_iterations": 50})
    members = [base.with_overrides({"bypass_p": p}) for p in (0.0, 0.2)]
    lone = Trainer.build(members[0])
    lone.ensemble = {"members": 2, "index": 0, "step_kernel": "cublas"}
    checkpoint = tmp_path / "ck0.safetensors"
    lone.save_checkpoint(checkpoint)
    lines = []
    run_ensemble(
        members,
        [tmp_path / "m0", tmp_path / "m1"],
        checkpoints=[checkpoint, tmp_path / "ck1.safetensors"],
        log=lines.append,
    )
    assert any("every member starts over" in line for line in lines)
    assert (tmp_path / "m1" / "summary.json").exists()


def test_mismatched_folder_and_checkpoint_counts_are_one_clear_error(paper_trials, tmp_path):
    members = [paper_trials["wine_5layer_swni"]] * 2
    with pytest.raises(EnsembleError, match="2 trials but 1 output folders"):
        run_ensemble(members, [tmp_path / "x"])
    with pytest.raises(EnsembleError, match="2 trials but 3 checkpoints"):
        run_ensemble(members, [tmp_path / "x", tmp_path / "y"], checkpoints=[None] * 3)


def test_members_with_fewer_epochs_leave_the_stack_and_the_rest_go_on(paper_trials, tmp_path):
    """Each member trains its own epochs, its folder as its separate run's."""
    base = paper_trials["wine_5layer_swni"].with_overrides({"free_iterations": 200})
    members = [
        base.with_overrides({"bypass_p": 0.0, "epochs": 1}),
        base.with_overrides({"bypass_p": 0.2, "epochs": 3}),
        base.with_overrides({"bypass_p": 0.5, "epochs": 2}),
    ]
    folders = [tmp_path / f"ens{i}" for i in range(3)]
    lines = []
    run_ensemble(members, folders, log=lines.append)
    assert any("1 member(s) finished; the other 2 go on from epoch 1" in x for x in lines)
    assert any("2 member(s) finished; the other 1 go on from epoch 2" in x for x in lines)
    for i, settings in enumerate(members):
        alone = run_trial(settings, tmp_path / f"alone{i}", layout="dense", log=lambda _: None)
        summary, metrics = _folder_contents(folders[i])
        assert summary["epochs_run"] == settings.epochs
        assert summary["ensemble"] == {
            "members": 3,
            "index": i,
            "step_kernel": "cublas",
            "member_epochs": [1, 2, 3],
        }
        separate = records.read_metrics(alone.folder)
        for key in ("train_error", "test_error"):
            np.testing.assert_array_equal(metrics[key], separate[key])


def test_an_ensemble_interrupted_after_a_member_left_resumes_to_the_same_outputs(
    paper_trials, tmp_path
):
    base = paper_trials["wine_5layer_swni"].with_overrides({"free_iterations": 100})
    members = [
        base.with_overrides({"bypass_p": 0.0, "epochs": 1}),
        base.with_overrides({"bypass_p": 0.2, "epochs": 3}),
    ]
    checkpoints = [tmp_path / f"ck{i}.safetensors" for i in range(2)]
    folders = [tmp_path / "a0", tmp_path / "a1"]

    with pytest.raises(Interrupt):
        run_ensemble(members, folders, checkpoints=checkpoints, log=interrupt_at("epoch 3:"))
    lines = []
    outcomes = run_ensemble(members, folders, checkpoints=checkpoints, log=lines.append)
    assert any("resumed every member from its checkpoint after epoch 2" in x for x in lines)
    assert [o.resumed_from for o in outcomes] == [1, 2]
    _assert_resumed_equals_uninterrupted(members, tmp_path)


def test_checkpoints_out_of_lockstep_restart_every_member(paper_trials, tmp_path):
    base = paper_trials["wine_5layer_swni"].with_overrides({"free_iterations": 50})
    members = [
        base.with_overrides({"bypass_p": 0.0, "epochs": 1}),
        base.with_overrides({"bypass_p": 0.2, "epochs": 2}),
    ]
    checkpoints = [tmp_path / f"ck{i}.safetensors" for i in range(2)]
    record = {"members": 2, "step_kernel": "cublas", "member_epochs": [1, 2]}
    for index, (settings, path) in enumerate(zip(members, checkpoints, strict=True)):
        lone = Trainer.build(settings, layout="dense")
        lone.ensemble = {**record, "index": index}
        lone.epoch = 1 - index  # the short member at 1, the long one still at 0: not lockstep
        lone.save_checkpoint(path)
    lines = []
    run_ensemble(
        members, [tmp_path / "m0", tmp_path / "m1"], checkpoints=checkpoints, log=lines.append
    )
    assert any("at epoch 0, not 1" in x and "every member starts over" in x for x in lines)
