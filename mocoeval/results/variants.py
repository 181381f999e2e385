"""What a run records about the network it trained or evaluated: its variant (`Variant`), and the pretraining
extensions beyond the MoCo v1/v2 recipe (`RECIPE_EXTENSIONS`) a variant departs in.

Run records, checkpoints and the converter's .pkl carry `Variant.to_record()`, a plain dict, so what is on disk
does not depend on this class; `Variant.from_record` reads one back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Pretraining extensions beyond the v1/v2 recipe (train_moco.py flags) and the recipe's value of each.
RECIPE_EXTENSIONS = {"warmup_epochs": 0, "residual_bn_init": 1.0, "residual_bn_ramp": None}
# What a pretraining run records beyond the core keys (the hyperparameters outside the tables' row key).
HYPERPARAMS = ("batch_size", "moco_k", "moco_t", "moco_m", "arch", "image_size")
# The keys every variant records, in record order; the rest of a record is `Variant.settings`.
CORE_KEYS = ("name", "mlp", "aug_plus", "cos", "epochs")


def recipe_departures(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """(name, value) of each extension in which `values` departs from the recipe, in RECIPE_EXTENSIONS order."""
    return tuple(
        (k, tuple(v) if isinstance(v, list) else v)  # hashable: part of the tables' row key
        for k, recipe in RECIPE_EXTENSIONS.items()
        if (v := values.get(k, recipe)) != recipe and not (recipe is None and not v)
    )


def describe_value(value) -> str:
    """A flag value as the user typed it: 0.1, or 4-16 for a START END pair."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "-".join(f"{v:g}" for v in value)
    return f"{value:g}"


def describe_departures(departures) -> str:
    """How tables, plots and the converter show a variant's departures, e.g. 'residual_bn_init 0.1'."""
    return ", ".join(f"{k} {describe_value(v)}" for k, v in departures)


@dataclass(frozen=True)
class Variant:
    """A run's variant: the case name (a MoCo v2 Table 1 case, random-init, supervised or the user's), the three
    MoCo v2 switches and the pretraining epochs (None where there was no MoCo pretraining), and `settings`:
    every other recorded (key, value), in record order: a pretraining run's hyperparameters (batch_size,
    moco_k, moco_t, moco_m, arch, image_size) and its departures from the recipe."""

    name: str
    mlp: bool | None = None
    aug_plus: bool | None = None
    cos: bool | None = None
    epochs: int | None = None
    settings: tuple[tuple[str, Any], ...] = ()

    def to_record(self) -> dict:
        """The dict records and checkpoints carry (the five core keys, then the settings)."""
        return {**{k: getattr(self, k) for k in CORE_KEYS}, **dict(self.settings)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Variant:
        """The variant a record's (or checkpoint's) dict describes; `to_record()` gives that dict back."""
        return cls(
            *(record.get(k) for k in CORE_KEYS), settings=tuple((k, v) for k, v in record.items() if k not in CORE_KEYS)
        )

    def get(self, key: str, default=None):
        """A recorded value by its record key (a core key or a setting), as `to_record().get` would give it."""
        if key in CORE_KEYS:
            return getattr(self, key)
        return dict(self.settings).get(key, default)

    @property
    def extensions(self) -> tuple[tuple[str, Any], ...]:
        """Its departures from the recipe (`recipe_departures`); empty for the recipe."""
        return recipe_departures(dict(self.settings))

    def renamed(self, name: str) -> Variant:
        return dataclasses.replace(self, name=name)
