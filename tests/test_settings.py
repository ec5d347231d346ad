"""Trial settings: the paper's config and the errors a user sees for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from eqp.config.settings import (
    SettingsError,
    parse_override,
    select_trial,
    trial_from_dict,
    trials_from_config,
)

ROOT = Path(__file__).resolve().parents[1]


def test_paper_config_holds_the_published_settings(paper_trials, published):
    assert set(paper_trials) == set(published["trials"])
    for name, trial in paper_trials.items():
        expected = published["trials"][name]["settings"]
        actual = trial.to_dict()
        for key, value in expected.items():
            assert actual[key] == value, (name, key)


def test_batch_counts_follow_the_spec_cuts(paper_trials):
    assert paper_trials["diabetes_5layer_mlff"].batch_counts() == (80, 8)
    assert paper_trials["wine_5layer_swni"].batch_counts() == (30, 5)
    assert paper_trials["mnist_5layer_swni"].batch_counts() == (3000, 500)
    demo = paper_trials["mnist_5layer_swni"].with_overrides(
        {"train_examples": 1000, "test_examples": 200}
    )
    assert demo.batch_counts() == (50, 10)


BAD_VALUES = [
    ({"bypass_p": 1.5}, "bypass_p = 1.5", "[0, 1]"),
    ({"bypass_p": -0.1}, "bypass_p = -0.1", "[0, 1]"),
    ({"learning_rate": [0.1, 0.2]}, "learning_rate = [0.1, 0.2]", "6 entries"),
    ({"batch_size": 500}, "batch_size = 500", "smaller batch size"),
    ({"network_type": "SW"}, "network_type = 'SW'", "SW_no_intra"),
    ({"dataset": "cifar"}, "dataset = 'cifar'", "mnist"),
    ({"layer_sizes": [13, 0, 3]}, "layer_sizes = 0", ">= 1"),
    ({"layer_sizes": [13, 10, 4]}, "layer_sizes = [13, 10, 4]", "3 outputs"),
    ({"free_iterations": 0}, "free_iterations = 0", ">= 1"),
    ({"weakly_clamped_iterations": -3}, "weakly_clamped_iterations = -3", ">= 1"),
    ({"epsilon": 0}, "epsilon = 0", "> 0"),
    ({"epochs": 2.5}, "epochs = 2.5", "integer"),
    ({"device": "tpu"}, "device = 'tpu'", "cuda"),
]


@pytest.mark.parametrize(("change", "names", "allowed"), BAD_VALUES)
def test_bad_values_name_trial_field_value_and_rule(paper_trials, change, names, allowed):
    with pytest.raises(SettingsError) as info:
        paper_trials["wine_5layer_swni"].with_overrides(change)
    message = str(info.value)
    assert message.startswith("trial 'wine_5layer_swni': ")
    assert names in message
    assert allowed in message


def test_unknown_and_missing_fields_are_listed():
    with pytest.raises(SettingsError, match="unknown setting\\(s\\) bypas_p"):
        trial_from_dict("t", {"bypas_p": 0.1})
    with pytest.raises(SettingsError, match="missing setting\\(s\\) batch_size"):
        trial_from_dict(
            "t",
            {
                "dataset": "wine",
                "layer_sizes": [13, 10, 3],
                "network_type": "MLFF",
                "learning_rate": 0.01,
                "epsilon": 0.5,
                "beta": 1.0,
                "free_iterations": 10,
                "weakly_clamped_iterations": 2,
                "epochs": 1,
            },
        )


def test_unknown_trial_lists_the_known_ones(paper_trials):
    with pytest.raises(SettingsError, match="unknown trial 'nope'; known trials: diabetes_5"):
        select_trial(paper_trials, "nope")


def test_overrides_and_trial_overrides_apply(paper_trials):
    config = {
        "trials_file": "config/paper.yaml",
        "overrides": {"epochs": 2},
        "trial_overrides": {"wine_5layer_mlff": {"epochs": 3}},
    }
    from conftest import ROOT

    trials = trials_from_config(config, ROOT)
    assert trials["wine_5layer_swni"].epochs == 2
    assert trials["wine_5layer_mlff"].epochs == 3
    with pytest.raises(SettingsError, match="unknown trial\\(s\\) nope"):
        trials_from_config({**config, "trial_overrides": {"nope": {}}}, ROOT)


def test_set_override_parses_yaml_values():
    assert parse_override("learning_rate=[0.1, 0.2]") == ("learning_rate", [0.1, 0.2])
    assert parse_override("epochs=3") == ("epochs", 3)
    with pytest.raises(SettingsError, match="key=value"):
        parse_override("epochs")


def test_the_schema_allows_exactly_the_values_the_code_accepts():
    """The allowed values live in eqp (settings, engines); the schema must say the same."""
    import yaml

    from eqp.config import settings
    from eqp.engines.registry import ENGINES

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    enums: dict[str, list] = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, dict) and "enum" in value:
                    enums.setdefault(key, value["enum"])
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert enums["dataset"] == list(settings.DATASETS)
    assert enums["network_type"] == list(settings.NETWORK_TYPES)
    assert enums["settle"] == list(settings.SETTLE_METHODS)
    assert sorted(enums["engine"]) == sorted(ENGINES)
