"""Typed trial settings, read from YAML, with errors that say what to change.

A trial is named in a config file; every value a user can get wrong is checked here, before
any tensor exists, so that a bad value fails in one line naming the trial, the field, the
value and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("mnist", "fashion_mnist", "diabetes", "wine")
# Data sets fetched into ``data_dir`` (torchvision layout); the others ship with scikit-learn.
DOWNLOADED = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
NETWORK_TYPES = ("MLFF", "SW_intra", "SW_no_intra")
# How the free phase settles: the published Euler steps, or to a fixed point
# (eqp.engines.converged).
SETTLE_METHODS = ("euler", "sor")
DEFAULT_SETTLE_TOL = 1e-5

# Input and output widths; for MNIST-like sets the sizes of the two canonical splits, for the
# scikit-learn sets the number of rows and the row at which the spec cuts training from test.
DATASET_SHAPES: dict[str, dict[str, int]] = {
    "mnist": {"inputs": 784, "outputs": 10, "train": 60000, "test": 10000},
    "fashion_mnist": {"inputs": 784, "outputs": 10, "train": 60000, "test": 10000},
    "diabetes": {"inputs": 10, "outputs": 1, "rows": 442, "cut": 400},
    "wine": {"inputs": 13, "outputs": 3, "rows": 178, "cut": 150},
}


def batch_counts(
    dataset: str,
    batch_size: int,
    train_examples: int | None = None,
    test_examples: int | None = None,
) -> tuple[int, int]:
    """Training and test batches per epoch, as the spec cuts them, capped by any subset."""
    shape = DATASET_SHAPES[dataset]
    if "cut" in shape:
        n_train = shape["cut"] // batch_size
        n_test = shape["rows"] // batch_size - n_train
    else:
        n_train = shape["train"] // batch_size
        n_test = shape["test"] // batch_size
    if train_examples is not None:
        n_train = min(n_train, train_examples // batch_size)
    if test_examples is not None:
        n_test = min(n_test, test_examples // batch_size)
    return n_train, n_test


class SettingsError(ValueError):
    """A trial setting or config entry is invalid; the message says which and how to fix it."""


class PipelineError(SettingsError):
    """The pipeline config is inconsistent; the message says which key and how to fix it."""


# A number in scientific notation without a dot or without a signed exponent (1e6, 1E-5,
# 1.5e3): YAML 1.1, which PyYAML implements, reads these as strings; YAML 1.2 as floats.
SCIENTIFIC_NOTATION = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads 1e6, 1E-5 and 1.5e+3 as numbers, as a user means."""


SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", SCIENTIFIC_NOTATION, list("-+0123456789.")
)


def load_settings_yaml(text: Any) -> Any:
    """Parse YAML (a string or an open file) with :class:`SettingsLoader`."""
    return yaml.load(text, Loader=SettingsLoader)


def scientific_numbers(value: Any) -> Any:
    """``value`` with every string spelling a number in scientific notation made that float.

    For values parsed by someone else's YAML 1.1 loader (Snakemake's config files).
    """
    if isinstance(value, Mapping):
        return {key: scientific_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scientific_numbers(item) for item in value]
    if isinstance(value, str) and SCIENTIFIC_NOTATION.match(value):
        return float(value.replace("_", ""))
    return value


@dataclass(frozen=True)
class TrialSettings:
    """Everything that defines one training run of the paper's networks."""

    name: str
    dataset: str
    layer_sizes: tuple[int, ...]
    network_type: str
    bypass_p: float | None
    bypass_mag: float | None
    learning_rate: float | tuple[float, ...]
    epsilon: float
    beta: float
    free_iterations: int
    weakly_clamped_iterations: int
    batch_size: int
    epochs: int
    seed: int = 0
    device: str = "cpu"
    train_examples: int | None = None
    test_examples: int | None = None
    correct_bias_quirk: bool = False
    settle: str = "euler"
    settle_tol: float = DEFAULT_SETTLE_TOL
    settle_max_steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.layer_sizes) - 1

    @property
    def per_layer_rates(self) -> bool:
        return isinstance(self.learning_rate, tuple)

    @property
    def pair_learning_rates(self) -> tuple[float, ...]:
        """The learning rate that multiplies each adjacent pair's block of dW."""
        if isinstance(self.learning_rate, tuple):
            return self.learning_rate
        return (float(self.learning_rate),) * self.n_pairs

    @property
    def classification(self) -> bool:
        return self.dataset != "diabetes"

    @property
    def settle_cap(self) -> int:
        """Most free-phase passes (Euler steps or sweeps) an example may cost."""
        return self.settle_max_steps or self.free_iterations

    def batch_counts(self) -> tuple[int, int]:
        return batch_counts(self.dataset, self.batch_size, self.train_examples, self.test_examples)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready settings (snake_case keys, lists instead of tuples)."""
        out = asdict(self)
        out.pop("extra")
        out["layer_sizes"] = list(self.layer_sizes)
        if isinstance(self.learning_rate, tuple):
            out["learning_rate"] = list(self.learning_rate)
        return out

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrialSettings:
        """A copy with some fields replaced, validated like a fresh trial."""
        data = self.to_dict()
        data.update(overrides)
        name = data.pop("name")
        return trial_from_dict(name, data)


_FIELD_NAMES = {f.name for f in fields(TrialSettings)} - {"name", "extra"}
_REQUIRED = {
    "dataset",
    "layer_sizes",
    "network_type",
    "learning_rate",
    "epsilon",
    "beta",
    "free_iterations",
    "weakly_clamped_iterations",
    "batch_size",
    "epochs",
}


def _fail(trial: str, key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(f"trial '{trial}': {key} = {value!r} is invalid; {allowed}")


def _integer(trial: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(trial, key, value, f"it must be an integer >= {minimum}")
    return value


def _number(trial: str, key: str, value: Any, *, positive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or (positive and value <= 0):
        raise _fail(trial, key, value, "it must be a finite number" + (" > 0" if positive else ""))
    return float(value)


def trial_from_dict(name: str, data: Mapping[str, Any]) -> TrialSettings:
    """Build and validate one trial from its YAML mapping (snake_case keys)."""
    _check_keys(name, data)
    dataset = data["dataset"]
    if dataset not in DATASETS:
        raise _fail(name, "dataset", dataset, f"allowed: {', '.join(DATASETS)}")
    sizes = _layer_sizes(name, dataset, data["layer_sizes"])
    network_type = data["network_type"]
    if network_type not in NETWORK_TYPES:
        raise _fail(name, "network_type", network_type, f"allowed: {', '.join(NETWORK_TYPES)}")
    bypass_p, bypass_mag = _bypass(name, network_type, data)
    batch_size, examples = _batching(name, dataset, data)
    device = data.get("device", "cpu")
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise _fail(name, "device", device, "use 'cpu', 'cuda' or 'cuda:N'")
    correct = data.get("correct_bias_quirk", False)
    if not isinstance(correct, bool):
        raise _fail(name, "correct_bias_quirk", correct, "it must be true or false")
    return TrialSettings(
        name=name,
        dataset=dataset,
        layer_sizes=sizes,
        network_type=network_type,
        bypass_p=bypass_p,
        bypass_mag=bypass_mag,
        learning_rate=_learning_rate(name, data["learning_rate"], len(sizes) - 1),
        epsilon=_number(name, "epsilon", data["epsilon"]),
        beta=_number(name, "beta", data["beta"]),
        free_iterations=_integer(name, "free_iterations", data["free_iterations"], 1),
        weakly_clamped_iterations=_integer(
            name, "weakly_clamped_iterations", data["weakly_clamped_iterations"], 1
        ),
        batch_size=batch_size,
        epochs=_integer(name, "epochs", data["epochs"], 0),
        seed=_integer(name, "seed", data.get("seed", 0), 0),
        device=device,
        correct_bias_quirk=correct,
        **examples,
        **_settling(name, network_type, data),
    )


def _check_keys(name: str, data: Any) -> None:
    if not isinstance(data, Mapping):
        raise SettingsError(f"trial '{name}': expected a mapping of settings, got {data!r}")
    unknown = sorted(set(data) - _FIELD_NAMES)
    if unknown:
        raise SettingsError(
            f"trial '{name}': unknown setting(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_FIELD_NAMES))}"
        )
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise SettingsError(f"trial '{name}': missing setting(s) {', '.join(missing)}")


def _layer_sizes(name: str, dataset: str, sizes: Any) -> tuple[int, ...]:
    """At least three positive sizes, the first and last fixed by the data set."""
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 3:
        raise _fail(name, "layer_sizes", sizes, "it must list at least 3 layer sizes")
    sizes = tuple(_integer(name, "layer_sizes", s, 1) for s in sizes)
    shape = DATASET_SHAPES[dataset]
    if sizes[0] != shape["inputs"] or sizes[-1] != shape["outputs"]:
        raise _fail(
            name,
            "layer_sizes",
            list(sizes),
            f"{dataset} needs {shape['inputs']} inputs and {shape['outputs']} outputs",
        )
    return sizes


def _bypass(name: str, network_type: str, data: Mapping[str, Any]) -> tuple[Any, Any]:
    """bypass_p and bypass_mag of an SW network; None for an MLFF one (it has no rewiring)."""
    if network_type == "MLFF":
        return None, None
    bypass_p = data.get("bypass_p")
    ok = isinstance(bypass_p, (int, float)) and not isinstance(bypass_p, bool)
    if not ok or not 0.0 <= bypass_p <= 1.0:
        raise _fail(name, "bypass_p", bypass_p, "it must be a number in [0, 1]")
    bypass_mag = _number(name, "bypass_mag", data.get("bypass_mag"), positive=False)
    if bypass_mag < 0:
        raise _fail(name, "bypass_mag", bypass_mag, "it must be >= 0")
    return float(bypass_p), bypass_mag


def _learning_rate(name: str, rate: Any, pairs: int) -> float | tuple[float, ...]:
    """One rate, or one per adjacent layer pair."""
    if not isinstance(rate, (list, tuple)):
        return _number(name, "learning_rate", rate)
    if len(rate) != pairs:
        raise _fail(
            name,
            "learning_rate",
            rate,
            f"a per-layer list needs {pairs} entries (one per adjacent layer pair)",
        )
    return tuple(_number(name, "learning_rate", r) for r in rate)


def _batching(name: str, dataset: str, data: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The batch size and example subsets, checked to leave a full batch of each split."""
    batch_size = _integer(name, "batch_size", data["batch_size"], 1)
    examples = {
        "train_examples": data.get("train_examples"),
        "test_examples": data.get("test_examples"),
    }
    for key, value in examples.items():
        if value is not None:
            _integer(name, key, value, 1)
    for split, count in zip(
        ("training", "test"), batch_counts(dataset, batch_size, **examples), strict=True
    ):
        if count < 1:
            raise _fail(
                name,
                "batch_size",
                batch_size,
                f"it leaves no full {split} batch of {dataset}"
                + (" with the chosen example subset" if any(examples.values()) else "")
                + "; use a smaller batch size",
            )
    return batch_size, examples


def _settling(name: str, network_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """settle, settle_tol and settle_max_steps; sor is refused where a layer is not exact."""
    settle = data.get("settle", "euler")
    if settle not in SETTLE_METHODS:
        raise _fail(
            name,
            "settle",
            settle,
            "use 'euler' (the published Euler steps) or 'sor' (settle to a fixed point)",
        )
    if settle == "sor" and network_type == "SW_intra":
        raise _fail(
            name,
            "settle",
            settle,
            "settle: sor updates one layer at a time, which is exact only without connections "
            "inside a layer; SW_intra has them, so use settle: euler for it",
        )
    max_steps = data.get("settle_max_steps")
    if max_steps is not None:
        _integer(name, "settle_max_steps", max_steps, 1)
    return {
        "settle": settle,
        "settle_tol": _number(name, "settle_tol", data.get("settle_tol", DEFAULT_SETTLE_TOL)),
        "settle_max_steps": max_steps,
    }


def parse_override(text: str) -> tuple[str, Any]:
    """Turn ``key=value`` (value in YAML syntax) into a pair, for ``--set`` on the command line."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"--set expects key=value (e.g. --set epochs=2), got {text!r}")
    try:
        return key.strip(), load_settings_yaml(value)
    except yaml.YAMLError as exc:
        raise SettingsError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path) as handle:
            data = load_settings_yaml(handle)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return data


def trials_from_config(
    config: Mapping[str, Any], base_dir: str | Path = "."
) -> dict[str, TrialSettings]:
    """All named trials of a config, with its override layers applied.

    A config holds its trials inline (``trials:``) or names a file that does
    (``trials_file:``, relative to ``base_dir``). Then, later layers winning: ``overrides``
    scales every trial (the demo preset uses it for fewer epochs and data subsets),
    ``dataset_overrides.<dataset>`` the trials of one data set, and
    ``trial_overrides.<name>`` a single trial.
    """
    if config.get("trials") is not None and config.get("trials_file"):
        raise SettingsError("the config gives both 'trials:' and 'trials_file:'; keep one")
    raw = config.get("trials")
    if raw is None and config.get("trials_file"):
        raw = load_yaml(Path(base_dir) / config["trials_file"]).get("trials")
    if not isinstance(raw, Mapping) or not raw:
        raise SettingsError("the config names no trials: give 'trials:' or 'trials_file:'")
    common = dict(config.get("overrides") or {})
    per_dataset = dict(config.get("dataset_overrides") or {})
    per_trial = dict(config.get("trial_overrides") or {})
    for key, names, known in (
        ("dataset_overrides", per_dataset, DATASETS),
        ("trial_overrides", per_trial, tuple(raw)),
    ):
        unknown = sorted(set(names) - set(known))
        if unknown:
            what = "data set(s)" if key == "dataset_overrides" else "trial(s)"
            raise SettingsError(
                f"{key} names unknown {what} {', '.join(unknown)}; known: {', '.join(known)}"
            )
    trials = {}
    for name, data in raw.items():
        data = dict(data or {})
        merged = {
            **data,
            **common,
            **(per_dataset.get(data.get("dataset")) or {}),
            **(per_trial.get(name) or {}),
        }
        trials[name] = trial_from_dict(name, merged)
    return trials


def select_trial(trials: Mapping[str, TrialSettings], name: str) -> TrialSettings:
    if name not in trials:
        raise SettingsError(f"unknown trial '{name}'; known trials: {', '.join(trials)}")
    return trials[name]


def with_seed(settings: TrialSettings, seed: int) -> TrialSettings:
    return replace(settings, seed=_integer(settings.name, "seed", seed, 0))


def p_label(p: float) -> str:
    """The folder label of a sweep point, as the published code named it (``%0.6f``)."""
    return f"{p:.6f}"
