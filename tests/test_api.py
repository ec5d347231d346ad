"""The authors' Python API (eqp.Network and eqp.datasets) on this project's engines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_continue import folder_contents
from workflow_helpers import REPO

import eqp
from eqp import cli, datasets
from eqp.config.settings import SettingsError
from eqp.outputs import records
from eqp.training.checkpoint import STATE_FILE

# wine_5layer_swni exactly as the authors' trials/run_trials.py wrote it (device: cpu here)
TOPOLOGY = {
    "layer sizes": [13, 10, 10, 10, 10, 10, 3],
    "network type": "SW_no_intra",
    "bypass p": 0.1,
    "bypass mag": 0.563,
}
HYPERPARAMETERS = {
    "learning rate": 0.01,
    "epsilon": 0.5,
    "beta": 1.0,
    "free iterations": 1000,
    "weakly clamped iterations": 12,
}
CONFIGURATION = {"batch size": 5, "device": "cpu", "seed": 0}

AUTHORS_SCRIPT = """
import eqp, eqp.datasets as datasets  # was: from framework import eqp, datasets
import json

topology = {topology!r}
hyperparameters = {hyperparameters!r}
configuration = {configuration!r}
Network = eqp.Network(topology, hyperparameters, configuration, datasets.Wine)
Network.calculate_test_error()
training_errors, test_errors = [Network.test_error], [Network.test_error]
per_layer_rates = []
for epoch_idx in range(3):
    Network.train_epoch()
    Network.calculate_test_error()
    training_errors.append(Network.training_error)
    test_errors.append(Network.test_error)
    for p in Network.per_layer_rates:
        per_layer_rates.append(p)
    mean_dW = Network.mean_dW.clone().squeeze().cpu().numpy()
    assert mean_dW.shape == tuple(Network.W.shape)
Network.calculate_training_error()
print(json.dumps({{
    "train": training_errors, "test": test_errors, "rates": per_layer_rates,
    "true_training_error": Network.true_training_error,
    "n_trainb": Network.dataset.n_trainb, "n_testb": Network.dataset.n_testb,
    "mean_dW_sum": float(mean_dW.sum()), "p_actual": Network.p_actual,
}}))
"""


def _network(**options) -> eqp.Network:
    return eqp.Network(TOPOLOGY, HYPERPARAMETERS, CONFIGURATION, datasets.Wine, **options)


def test_an_authors_script_reproduces_the_published_errors(published, tmp_path):
    """Their dictionaries, train_epoch, calculate_test_error, per_layer_rates, mean_dW: only
    the import line changed, and every published error of the first 3 epochs comes out."""
    script = tmp_path / "authors.py"
    script.write_text(
        AUTHORS_SCRIPT.format(
            topology=TOPOLOGY, hyperparameters=HYPERPARAMETERS, configuration=CONFIGURATION
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    reference = published["trials"]["wine_5layer_swni"]
    expected = reference["per_epoch"]
    n_train, n_test, size = got["n_trainb"], got["n_testb"], 5
    assert (n_train, n_test) == (30, 5)

    def count(errors, batches):
        return [round(e * batches * size) for e in errors]

    assert count(got["test"][:1], n_test) == count([reference["initial_test_error"]], n_test)
    assert count(got["train"][1:], n_train) == count(expected["train_error"][:3], n_train)
    assert count(got["test"][1:], n_test) == count(expected["test_error"][:3], n_test)
    assert len(got["rates"]) == 3 * n_train and all(len(r) == 6 for r in got["rates"])
    assert all(v >= 0 for r in got["rates"] for v in r) and any(v > 0 for v in got["rates"][0])
    assert got["mean_dW_sum"] > 0 and 0 <= got["true_training_error"] <= 1
    assert got["p_actual"] == pytest.approx(reference["final"]["realised_p"], rel=1e-6)


def test_the_api_equals_python_m_eqp_train_bitwise(tmp_path):
    network = _network(name="wine_5layer_swni")
    network.train(2)
    network.save(tmp_path / "api")
    args = [
        "train", str(REPO / "config" / "paper.yaml"), "--trial", "wine_5layer_swni",
        "--out", str(tmp_path / "cli"), "--epochs", "2", "--no-progress",
    ]  # fmt: skip
    assert cli.main(args) == 0
    api, command = folder_contents(tmp_path / "api"), folder_contents(tmp_path / "cli")
    for contents in (api, command):
        contents["summary.json"].pop("preset")
    assert sorted(api) == sorted(command)
    for name in command:
        assert api[name] == command[name], name


@pytest.mark.parametrize("settle", ["euler", "sor"])
def test_saved_network_continued_equals_an_uninterrupted_one(tmp_path, settle):
    options = {"settle": settle, "free iterations": 300, "threads": 2}
    hyper = {**HYPERPARAMETERS, "free iterations": 300}
    straight = eqp.Network(TOPOLOGY, hyper, CONFIGURATION, datasets.Wine, settle=settle)
    straight.train(4)
    straight.save(tmp_path / "straight")

    first = _network(**options)
    first.train(2)
    first.save(tmp_path / "continued")
    again = eqp.Network.load(tmp_path / "continued")
    assert again.epoch == 2 and again.test_error == first.test_error
    again.train(4)
    again.save(tmp_path / "continued")
    assert folder_contents(tmp_path / "continued") == folder_contents(tmp_path / "straight")
    assert torch.equal(again.W, straight.W)


def test_a_saved_mnist_subset_continues_with_the_cli(mnist_root, tmp_path):
    """A folder saved by the API is a trial folder: the CLI continues it exactly."""
    topology = {
        "layer sizes": [784, 100, 100, 100, 100, 100, 10],
        "network type": "SW_no_intra",
        "bypass p": 0.1,
        "bypass mag": 0.168,
    }
    hyper = {
        "learning rate": 0.015,
        "epsilon": 0.5,
        "beta": 1.0,
        "free iterations": 100,
        "weakly clamped iterations": 12,
    }
    config = {"batch size": 20, "device": "cpu", "seed": 0, "data dir": str(mnist_root)}
    subset = datasets.MNIST(train_examples=100, test_examples=60)
    network = eqp.Network(topology, hyper, config, subset, name="mnist_5layer_swni")
    network.train(1)
    network.save(tmp_path / "a")
    overrides = [
        "--set", "free_iterations=100", "--set", "train_examples=100",
        "--set", "test_examples=60", "--data-dir", str(mnist_root), "--no-progress",
    ]  # fmt: skip
    for out, epochs in (("a", "2"), ("b", "2")):
        args = ["train", str(REPO / "config" / "paper.yaml"), "--trial", "mnist_5layer_swni",
                "--out", str(tmp_path / out), "--epochs", epochs, *overrides]  # fmt: skip
        assert cli.main(args) == 0
    got, expected = folder_contents(tmp_path / "a"), folder_contents(tmp_path / "b")
    for contents in (got, expected):
        contents["summary.json"].pop("preset")
    assert got == expected


def test_authors_spellings_and_per_layer_rates_are_accepted():
    topology = {**TOPOLOGY, "network type": "SW"}  # their README's name of SW_intra
    hyper = {**HYPERPARAMETERS, "learning rate": [0.01] * 6, "free iterations": 20}
    network = eqp.Network(topology, hyper, {**CONFIGURATION, "device": "CPU"}, datasets.Wine)
    assert network.network_type == "SW_intra" and network.learning_rate == [0.01] * 6
    mlff = eqp.Network(
        {**TOPOLOGY, "network type": "MLFF", "bypass p": None, "bypass mag": None},
        {**HYPERPARAMETERS, "free iterations": 20},
        CONFIGURATION,
        datasets.Diabetes,
        layer_sizes=[10, 10, 10, 10, 10, 10, 1],
    )
    mlff.train_epoch()
    assert len(mlff.per_layer_rates) == mlff.dataset.n_trainb == 80
    assert not mlff.dataset.classification and mlff.training_error > 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"epsilon": -1.0}, "trial 'api': epsilon = -1.0 is invalid; it must be a finite number"),
        ({"free iterations": 2.5}, "free_iterations = 2.5 is invalid"),
        ({"bogus key": 1}, "unknown setting(s) bogus_key"),
        ({"learning rate": [0.1, 0.1]}, "a per-layer list needs 6 entries"),
        ({"settle": "newton"}, "settle = 'newton' is invalid"),
    ],
)
def test_bad_settings_are_the_clis_one_line_errors(change, expected):
    with pytest.raises(SettingsError) as info:
        eqp.Network(TOPOLOGY, {**HYPERPARAMETERS, **change}, CONFIGURATION, datasets.Wine)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_bad_dataset_and_missing_state_are_one_line(tmp_path):
    with pytest.raises(SettingsError, match="not one of eqp.datasets.MNIST"):
        eqp.Network(TOPOLOGY, HYPERPARAMETERS, CONFIGURATION, object())
    with pytest.raises(records.RecordError, match=f"{STATE_FILE} does not exist"):
        eqp.Network.load(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(records.RecordError, match="is not a saved network"):
        eqp.Network.load(tmp_path)


def test_calculate_training_error_changes_nothing():
    hyper = {**HYPERPARAMETERS, "free iterations": 100}
    a = eqp.Network(TOPOLOGY, hyper, CONFIGURATION, datasets.Wine)
    b = eqp.Network(TOPOLOGY, hyper, CONFIGURATION, datasets.Wine)
    for network in (a, b):
        network.calculate_test_error()
        network.train_epoch()
    a.calculate_training_error()
    assert a.true_training_error is not None
    for network in (a, b):
        network.train_epoch()
        network.calculate_test_error()
    assert a.test_error == b.test_error and torch.equal(a.W, b.W)
    np.testing.assert_array_equal(a.per_layer_rates, b.per_layer_rates)
