"""The settings of one linear evaluation: a typed `LinearConfig`, validated in one place.

Field names are run_linear.py's argparse destinations, and `as_record()` is the dict that checkpoints
(`args`) and results records (`config`) have always stored, so old checkpoints resume and the results
identity reads the same keys. No torch import here: `--help` and validation stay fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mocoeval.pretrain.config import check_residual_bn_init
from mocoeval.results.identity import LINCLS_DEFAULTS as D
from mocoeval.runtime.errors import UserError

PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    data: str
    weights: str | None = None
    random_init: bool = False
    residual_bn_init: float | None = None
    weights_format: str | None = None
    trust_pickle: bool = False
    variant: str | None = None
    image_size: int = D["image_size"]
    epochs: int = D["epochs"]
    batch_size: int = D["batch_size"]
    lr: float = D["lr"]
    schedule: list[int] = dataclasses.field(default_factory=lambda: list(D["schedule"]))
    feature_norm: bool = False
    momentum: float = D["momentum"]
    weight_decay: float = D["weight_decay"]
    workers: int = 4
    seed: int = 0
    output_dir: str | None = None  # None: default_output_dir(), filled in at construction
    resume: str | None = None
    device: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    print_freq: int = D["print_freq"]

    def __post_init__(self):
        self._validate()
        # str(Path): the form records have always stored (no trailing slash)
        object.__setattr__(self, "output_dir", str(Path(self.output_dir or default_output_dir(self))))

    def _validate(self) -> None:
        """Every check that needs only the settings (the process count is checked by `check_world_size`)."""
        if self.random_init == bool(self.weights):
            raise UserError("give exactly one of --weights CKPT or --random-init")
        if self.residual_bn_init is not None:
            if not self.random_init:
                raise UserError("--residual-bn-init describes a --random-init network; a checkpoint has its own scales")
            check_residual_bn_init(self.residual_bn_init)
        for flag, value in (
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--image-size", self.image_size),
            ("--print-freq", self.print_freq),
        ):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")

    def check_world_size(self, world_size: int) -> None:
        if self.batch_size % world_size:
            raise UserError(f"--batch-size {self.batch_size} is not divisible by the {world_size} processes")

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field defaults, for the command-line parser (one source for both)."""
        return {
            f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }

    @classmethod
    def from_namespace(cls, args) -> LinearConfig:
        """From run_linear.py's parsed flags (every field; extra attributes are an error)."""
        return cls(**vars(args))

    def as_record(self) -> dict[str, Any]:
        """The settings as checkpoints and results records store them (field order, lists for tuples)."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }


def default_output_dir(config: LinearConfig) -> Path:
    name = "random-init" if config.random_init else Path(config.weights).name.split(".")[0]
    if config.random_init and config.residual_bn_init not in (None, 1.0):  # another network: its own folder
        name += f"_residual-bn-{config.residual_bn_init:g}"
    return Path("output") / "linear" / f"{name}_seed{config.seed}"
