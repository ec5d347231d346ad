"""Which trials can train as one ensemble (:mod:`eqp.training.ensemble`), without importing torch:
the pipeline groups named trials with it while it builds the DAG."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eqp.config.settings import TrialSettings

# Settings that every member must share: they fix the stacked shapes and the step loops.
# Epochs may differ: a member leaves the stack when its last epoch is done.
SHARED_SETTINGS = (
    "layer_sizes",
    "batch_size",
    "epsilon",
    "free_iterations",
    "weakly_clamped_iterations",
    "device",
    "settle",
)


class EnsembleError(ValueError):
    """The trials asked for cannot be trained as one stack."""


def check_stackable(settings_list: Sequence[TrialSettings]) -> None:
    """One clear error naming the first setting in which the members differ."""
    if not settings_list:
        raise EnsembleError("an ensemble needs at least one trial")
    first = settings_list[0]
    for other in settings_list[1:]:
        for key in SHARED_SETTINGS:
            if getattr(other, key) != getattr(first, key):
                raise EnsembleError(
                    f"trials {first.name!r} and {other.name!r} differ in {key} "
                    f"({getattr(first, key)!r} vs {getattr(other, key)!r}); an ensemble stacks "
                    f"only trials that share {', '.join(SHARED_SETTINGS)}: train them separately"
                )
        if other.batch_counts() != first.batch_counts():
            raise EnsembleError(
                f"trials {first.name!r} and {other.name!r} have different numbers of batches "
                f"({first.batch_counts()} vs {other.batch_counts()}); give them the same "
                "train_examples and test_examples"
            )
    if first.settle != "euler":
        raise EnsembleError(
            f"an ensemble runs the faithful Euler phases only, not settle: {first.settle}; "
            "use settle: euler or train the trials separately"
        )


def stack_groups(
    trials: Mapping[str, TrialSettings], key: Callable[[TrialSettings], Any] = lambda s: None
) -> dict[str, tuple[str, ...]]:
    """The named trials that can train as one ensemble (:func:`check_stackable`,
    and the same ``key``), in config order: group name (its first trial) -> trials. Trials
    that stack with no other are left out."""
    groups: dict[str, list[str]] = {}
    for name, settings in trials.items():
        for members in groups.values():
            first = trials[members[0]]
            if key(first) != key(settings):
                continue
            try:
                check_stackable([first, settings])
            except EnsembleError:
                continue
            members.append(name)
            break
        else:
            groups[name] = [name]
    return {group: tuple(names) for group, names in groups.items() if len(names) > 1}
