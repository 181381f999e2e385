"""Command-line flags of the pretrainer and how they resolve.

The official main_moco.py names and defaults are kept (--arch resnet50 --lr 0.03 --batch-size 256
--epochs 200 --schedule 120 160 --moco-k 65536 --moco-m 0.999 --moco-t 0.07 --mlp --aug-plus --cos ...).
Precedence, highest first: flags on the command line > `--config X.yaml` > the config stored in the
`--resume` checkpoint (so `--resume` alone continues the same run) > the defaults below.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import yaml

from mocoeval.results.store import pretrain_variant
from mocoeval.results.variants import describe_value
from mocoeval.runtime.errors import UserError

# The modules that import torch (checkpoint, residual_scaling, distributed, schedule) are imported inside the
# functions that use them: `train_moco.py --help` and the flag errors answer before torch loads (seconds).

ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
# The ResNet stages the kNN monitor can pool after (here, not in knn.py, so that parsers need no torch).
STAGES = ("layer1", "layer2", "layer3", "layer4")
# Flags that describe how to run this process, not the run itself: never taken from a resumed checkpoint.
RUNTIME_KEYS = {
    "data",
    "config",
    "resume",
    "device",
    "workers",
    "augment_on",
    "loader_priority",
    "print_freq",
    "compile",
    "checkpoint_minutes",
}
AUGMENT_ON = ("auto", "loader", "device")
LOADER_PRIORITY = ("auto", "normal", "idle")
# What the checkpoint's tensors fix: a flag that contradicts them cannot resume that checkpoint.
STRUCTURE_KEYS = ("arch", "mlp", "moco_dim", "moco_k")
# How the checkpoint's run began: a resumed run keeps it, so a flag that contradicts it is an error too.
INIT_KEYS = ("residual_bn_init", "residual_bn_ramp")  # the ramp's progress lives in the weights


def check_residual_bn_init(value: float) -> float:
    """The residual-branch BN scale a user asked for (--residual-bn-init of train_moco, to_d2, run_linear,
    inspect_collapse): within [0, 1]. Here, with the flags, not beside the scaling code: checking needs no torch."""
    if not 0 <= value <= 1:
        raise UserError(f"--residual-bn-init must be between 0 and 1, got {value:g}")
    return value


@dataclasses.dataclass
class PretrainConfig:
    """The resolved flags of one run; the fields are the argparse dest names (`cfg.lr` is `--lr`). The
    defaults live in `build_parser` only: `parse_config` builds one from a command line, `defaults` without."""

    data: str
    config: str | None
    arch: str
    workers: int | None
    augment_on: str  # where the colour augmentations run: AUGMENT_ON
    loader_priority: str  # the loader workers' CPU scheduling: LOADER_PRIORITY
    epochs: int
    batch_size: int  # global: all processes together
    lr: float
    schedule: list[int]
    warmup_epochs: float
    residual_bn_init: float
    residual_bn_ramp: list[float] | None
    momentum: float
    weight_decay: float
    print_freq: int
    resume: str | None
    seed: int | None  # None until the run draws (and records) one
    moco_dim: int
    moco_k: int
    moco_m: float
    moco_t: float
    mlp: bool
    aug_plus: bool
    cos: bool
    bn_splits: int
    image_size: int
    precision: str
    channels_last: bool
    compile: bool
    device: str
    output_dir: str | None
    save_every: int
    checkpoint_minutes: float
    keep_checkpoints: int
    keep_every: int
    knn_data: str | None
    knn_every: int
    knn_k: int
    knn_t: float

    @classmethod
    def defaults(cls, data: str = ".", **changes) -> PretrainConfig:
        """`train_moco.py DATA` with the flags' defaults, then `changes` (for code that builds the model or
        loader of a run without a command line: the benchmark, tests). Not validated."""
        return dataclasses.replace(cls(**vars(build_parser().parse_args([str(data)]))), **changes)

    def epoch_lr(self, epoch: int) -> float:
        """The schedule's lr of `epoch` (0-based): cosine with --cos (v2), else x0.1 at each --schedule epoch (v1)."""
        from mocoeval.runtime.schedule import lr_at_epoch

        return lr_at_epoch(self.lr, epoch, schedule=self.schedule, epochs=self.epochs, cos=self.cos)


def saved_epochs(cfg: PretrainConfig) -> list[int]:
    """The epoch counts after which a checkpoint_XXXX is written: every --save-every epochs and the last."""
    return [e for e in range(1, cfg.epochs + 1) if e % cfg.save_every == 0 or e == cfg.epochs]


def kept_checkpoint(cfg: PretrainConfig, epochs_done: int, newest: list[int]) -> bool:
    """Whether the checkpoint after `epochs_done` epochs stays, given the `newest` epoch counts saved so far
    (sorted): all with --keep-checkpoints 0, else the --keep-checkpoints newest and the --keep-every milestones."""
    if cfg.keep_checkpoints == 0 or epochs_done in newest[-cfg.keep_checkpoints :]:
        return True
    return cfg.keep_every > 0 and epochs_done % cfg.keep_every == 0


def checkpoint_policy(cfg: PretrainConfig) -> str:
    """The start-up line that says which checkpoints the run keeps."""
    saved = saved_epochs(cfg)
    if cfg.keep_checkpoints == 0:
        return f"checkpoints: {len(saved)} checkpoint_XXXX files, all kept (--keep-checkpoints 0)"
    kept = [e for e in saved if kept_checkpoint(cfg, e, saved)]
    shown = ", ".join(map(str, kept[:4])) + (f", ..., {kept[-1]}" if len(kept) > 4 else "")
    milestones = f" and every {cfg.keep_every}th epoch's" if cfg.keep_every else ""
    return (
        f"checkpoints: after every {cfg.save_every} epoch(s), keeping the newest {cfg.keep_checkpoints} (for "
        f"--resume){milestones}: {len(kept)} of {len(saved)} at the end (epochs {shown}); "
        "--keep-checkpoints 0 keeps all"
    )


def run_config(cfg: PretrainConfig, bn_splits: int, world_size: int) -> dict:
    """The resolved flags stored in checkpoints and run records (argparse dest names, JSON-able); `parse_config`
    reads them back from a resumed checkpoint."""
    stored = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("config",)}
    stored.update(bn_splits_effective=bn_splits, world_size=world_size)
    return stored


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # no "(default: None)"
        return action.help if action.default is None else super()._get_help_string(action)


EPILOG = """\
presets (the MoCo v2 paper's Table 1): configs/pretrain/{moco_v1,a,b,c,d,e}.yaml
  python pretrain/train_moco.py /data/imagenet --config configs/pretrain/d.yaml      # MoCo v2, 200 ep
several GPUs / machines (--batch-size is the global batch over all processes):
  torchrun --nproc_per_node 8 pretrain/train_moco.py /data/imagenet --config configs/pretrain/d.yaml
continue an interrupted run (every other flag comes from the checkpoint; mid-epoch if it left a resume point):
  python pretrain/train_moco.py /data/imagenet --resume auto --output-dir output/pretrain/d
output (--output-dir): checkpoint_XXXX.pth.tar (official layout: after epoch XXXX+1, 0-based like the
official code), final.pth.tar (the last one), resume_epochEEEE_stepSSSSSS.pth.tar (a mid-epoch resume point,
while one is newer than the last checkpoint), metrics.json, log.txt, config.json, tb/ (tensorboard);
one run record in ./results/runs/ (or $MOCOEVAL_RESULTS_DIR); tables next to it, in ./results/.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_moco.py",
        description="MoCo v1/v2 self-supervised pretraining of a ResNet on an ImageFolder (labels ignored). "
        "Single process (CPU or one GPU) or several GPUs/machines with torchrun.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    A = p.add_argument
    A("data", metavar="DATA_DIR", help="ImageFolder root holding train/<class>/<image> (labels are ignored)")
    A("--config", metavar="YAML", help="preset whose keys (flag names) fill the flags; explicit flags win")
    A(
        "-a",
        "--arch",
        default="resnet50",
        choices=ARCHS,
        metavar="ARCH",
        help=f"torchvision ResNet backbone: {', '.join(ARCHS)}",
    )
    A(
        "-j",
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="data loading workers per process (default: CPU cores / processes on this machine, at most 32)",
    )
    A(
        "--augment-on",
        choices=AUGMENT_ON,
        default="auto",
        help="where the views' colour augmentations run: the loader's workers (PIL, the reference ops) or the "
        "training device (batched, statistically equal; the workers then only decode and crop). auto: the "
        "device on CUDA, the loader on CPU",
    )
    A(
        "--loader-priority",
        choices=LOADER_PRIORITY,
        default="auto",
        help="the loader workers' CPU scheduling: normal, or idle (Linux SCHED_IDLE: a worker runs only on a core "
        "the training step leaves free, instead of preempting one of the step's threads). auto: idle when training "
        "on the CPU, normal on GPUs (where the loader must never wait)",
    )
    A("--epochs", type=int, default=200, help="total epochs")
    A("-b", "--batch-size", type=int, default=256, metavar="N", help="global batch size (all processes together)")
    A("--lr", "--learning-rate", type=float, default=0.03, dest="lr", metavar="LR", help="initial learning rate")
    A(
        "--schedule",
        type=int,
        nargs="*",
        default=[120, 160],
        metavar="EPOCH",
        help="epochs at which lr is multiplied by 0.1 (ignored with --cos)",
    )
    A(
        "--warmup-epochs",
        type=float,
        default=0.0,
        metavar="E",
        help="ramp the lr linearly, step by step, from ~0 to the schedule's value over the first E epochs "
        "(0 = none, as the v1/v2 recipe; an extension, as MoCo v3 warms up its ResNet-50 for 10)",
    )
    A(
        "--residual-bn-init",
        type=float,
        default=1.0,
        metavar="G",
        help="start the last BN scale of every residual branch at G (an extension: 1 is torchvision's init, the "
        "recipe's; 0 starts every block as the identity). Below 1 it tames a ResNet-50's early gradients on "
        "small images and short runs",
    )
    A(
        "--zero-init-residual",
        action="store_const",
        const=0.0,
        dest="residual_bn_init",
        help="the same as --residual-bn-init 0 (torchvision's zero_init_residual)",
    )
    A(
        "--residual-bn-ramp",
        type=float,
        nargs=2,
        default=None,
        metavar=("START", "END"),
        help="from epoch START to END make every residual branch louder, step by step and geometrically, by "
        "1 / --residual-bn-init in all, so branches started quiet end at about torchvision's scale (an extension; "
        "the branch scales are logged per epoch)",
    )
    A("--momentum", type=float, default=0.9, help="SGD momentum")
    A(
        "--wd",
        "--weight-decay",
        type=float,
        default=1e-4,
        dest="weight_decay",
        metavar="W",
        help="weight decay (all parameters, as in the official recipe)",
    )
    A("-p", "--print-freq", type=int, default=10, metavar="N", help="log every N steps (the only host syncs)")
    A(
        "--resume",
        metavar="PATH",
        default=None,
        help="checkpoint or resume point to continue (ours or an official MoCo checkpoint); 'auto' = the furthest "
        "in --output-dir, if any",
    )
    A(
        "--seed",
        type=int,
        default=None,
        help="seed of model init, data order and augmentations (default: drawn and recorded)",
    )
    g = p.add_argument_group("MoCo")
    g.add_argument("--moco-dim", type=int, default=128, help="feature dimension")
    g.add_argument("--moco-k", type=int, default=65536, help="queue size (negative keys); divisible by the batch")
    g.add_argument("--moco-m", type=float, default=0.999, help="key encoder momentum")
    g.add_argument("--moco-t", type=float, default=0.07, help="softmax temperature (MoCo v2: 0.2)")
    g.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=False, help="MLP projection head (v2)")
    g.add_argument("--aug-plus", action=argparse.BooleanOptionalAction, default=False, help="aug+ augmentations (v2)")
    g.add_argument("--cos", action=argparse.BooleanOptionalAction, default=False, help="cosine lr schedule (v2)")
    g.add_argument(
        "--bn-splits",
        type=int,
        default=0,
        metavar="S",
        help="BN sub-batches per process (split BN, emulating shuffle BN across S GPUs). 0 = auto: "
        "per-process batch / 32 like the 8x32 recipe, at least 2 in a single-process run",
    )
    r = p.add_argument_group("run")
    r.add_argument("--image-size", type=int, default=224, help="crop size of the views")
    r.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 = bfloat16 autocast (CPU and CUDA); the contrastive head stays float32",
    )
    r.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="channels_last memory format (faster with bf16 on CPUs with AMX and on GPUs)",
    )
    r.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile both encoders (inductor fuses BN/ReLU; the first steps are slow while it "
        "compiles; on CPU it needs a C++ compiler). Same results, checkpoints and keys",
    )
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)")
    r.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="checkpoints, log.txt, metrics.json, tensorboard events (default: output/pretrain/<variant>)",
    )
    r.add_argument("--save-every", type=int, default=1, metavar="N", help="checkpoint every N epochs (and the last)")
    r.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=30.0,
        metavar="MIN",
        help="also save a mid-epoch resume point every MIN minutes (0: off), so that a killed run loses at "
        "most MIN minutes; Ctrl-C / SIGTERM always saves one after the current step, then stops. "
        "Only the newest is kept, and none once the next checkpoint_XXXX is written",
    )
    # One checkpoint per epoch, all kept (the official code), is ~67 GB for a 200-epoch ResNet-50: by default
    # keep what a user needs, the newest (to resume) and milestones (to evaluate along the way).
    r.add_argument(
        "--keep-checkpoints",
        type=int,
        default=1,
        metavar="N",
        help="keep the N newest checkpoint_XXXX files (for --resume), plus the --keep-every milestones; "
        "0 = keep every checkpoint, as the official code (~67 GB for 200 epochs of a ResNet-50)",
    )
    r.add_argument(
        "--keep-every",
        type=int,
        default=10,
        metavar="E",
        help="also keep for good the checkpoint after every E-th epoch (milestones; 0: none). With the defaults "
        "a 200-epoch run keeps 20 files (epochs 10, 20, ..., 200; ~7 GB for a ResNet-50), not 200",
    )
    r.add_argument(
        "--knn-data",
        default=None,
        metavar="DIR",
        help="labelled ImageFolder with train/ and val/ for a kNN monitor of f_q's backbone features",
    )
    r.add_argument("--knn-every", type=int, default=1, metavar="N", help="kNN monitor every N epochs (and the last)")
    r.add_argument("--knn-k", type=int, default=200, help="kNN neighbours")
    r.add_argument("--knn-t", type=float, default=0.1, help="kNN temperature of the similarity weights")
    return p


def _load_yaml(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must be a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    values = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest in ("learning_rate",):
            dest = "lr"
        if dest not in actions or dest in ("help", "config", "data"):
            raise UserError(f"config {path}: unknown key {key!r}")
        values[dest] = _coerce(actions[dest], value, f"config {path}: {key}")
    return values


def _coerce(action: argparse.Action, value, what: str):
    """Give a YAML/checkpoint value the flag's type (argparse does not convert defaults)."""
    if value is None:
        return None
    try:
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if action.nargs == "*" or (isinstance(action.nargs, int) and action.nargs > 0):
            return [action.type(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        value = action.type(value) if action.type else value
        if action.choices and value not in action.choices:
            raise ValueError(f"choose from {', '.join(map(str, action.choices))}")
        return value
    except (TypeError, ValueError) as e:
        raise UserError(f"{what}: bad value {value!r} ({e})") from None


def default_output_dir(args) -> str:
    return str(Path("output") / "pretrain" / pretrain_variant(vars(args)).name)


# The official main_moco.py's own process launcher; torchrun starts the processes here.
MAIN_MOCO_LAUNCH_FLAGS = ("--dist-url", "--dist-backend", "--multiprocessing-distributed", "--world-size", "--rank")


def refuse_main_moco_launch_flags(argv) -> None:
    """One line that points to torchrun, rather than argparse's 'unrecognized arguments', for main_moco's flags."""
    given = [a.split("=")[0] for a in argv if a.split("=")[0] in MAIN_MOCO_LAUNCH_FLAGS]
    if given:
        raise UserError(
            f"{' '.join(dict.fromkeys(given))}: main_moco.py's launcher flags; here torchrun starts the processes: "
            "torchrun --nproc_per_node GPUS [--nnodes N --node_rank R --master_addr HOST --master_port PORT] "
            "pretrain/train_moco.py DATA_DIR [flags] (--batch-size stays the global batch)"
        )


def parse_config(argv=None) -> tuple[PretrainConfig, dict | None]:
    """Resolve the flags -> (config, resume checkpoint dict or None). Raises UserError for bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_main_moco_launch_flags(argv)
    parser = build_parser()
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config")
    early.add_argument("--resume")
    pre, _ = early.parse_known_args(argv)
    file_values = _load_yaml(pre.config, parser) if pre.config else {}
    parser.set_defaults(**file_values)
    first = parser.parse_args(argv)  # --help and flag errors here, before any checkpoint (or torch) is loaded

    from mocoeval.pretrain.checkpoint import find_resume_checkpoint, load_moco_checkpoint
    from mocoeval.runtime.distributed import launched_world_size

    # Where is the checkpoint to resume? ('auto': the latest one in the output dir, which may be a default)
    resume_path = pre.resume if pre.resume is not None else file_values.get("resume")
    if resume_path == "auto":
        out = first.output_dir or default_output_dir(first)
        resume_path = find_resume_checkpoint(out)
    ckpt = load_moco_checkpoint(resume_path) if resume_path else None
    inherited = _checkpoint_settings(ckpt, parser, resume_path) if ckpt is not None else None
    parser.set_defaults(**{**(inherited or {}), **file_values})
    args = parser.parse_args(argv)
    args.resume = str(resume_path) if resume_path else None
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
    cfg = PretrainConfig(**vars(args))
    validate(cfg, launched_world_size(), inherited)
    return cfg, ckpt


def _checkpoint_settings(ckpt: dict, parser: argparse.ArgumentParser, resume_path) -> dict:
    """The run settings a resumed checkpoint carries (its stored config, less RUNTIME_KEYS, and what its
    tensors fix), with the flags' types; older checkpoints' keys are translated."""
    from mocoeval.pretrain.checkpoint import structure_of

    inherited = {}
    actions = {a.dest: a for a in parser._actions}
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    for k, v in stored.items():
        if k in actions and k not in RUNTIME_KEYS:
            inherited[k] = _coerce(actions[k], v, f"checkpoint {resume_path} config {k}")
    if "zero_init_residual" in stored and "residual_bn_init" not in stored:  # written before --residual-bn-init
        inherited["residual_bn_init"] = 0.0 if stored["zero_init_residual"] else 1.0
    if stored:
        inherited.setdefault("residual_bn_ramp", None)  # written before --residual-bn-ramp: no ramp
    inherited.update(structure_of(ckpt))
    if "seed" in ckpt and ckpt["seed"] is not None:
        inherited.setdefault("seed", int(ckpt["seed"]))
    return inherited


def validate(cfg: PretrainConfig, world_size: int = 1, checkpoint_settings: dict | None = None) -> None:
    """The one place that checks a run's settings: one-line errors for values that cannot work, for a global
    batch that `world_size` processes cannot share, and (resuming) for flags that contradict what the
    checkpoint's tensors fix or how its run began (`checkpoint_settings`, from `_checkpoint_settings`)."""

    def need(ok: bool, msg: str):
        if not ok:
            raise UserError(msg)

    settings = checkpoint_settings or {}
    for key in STRUCTURE_KEYS:
        if key in settings and getattr(cfg, key) != settings[key]:
            raise UserError(
                f"--{key.replace('_', '-')} {getattr(cfg, key)} contradicts checkpoint "
                f"{cfg.resume}, which was trained with {key}={settings[key]}"
            )
    for key in INIT_KEYS:
        if key in settings and getattr(cfg, key) != settings[key]:
            raise UserError(
                f"--{key.replace('_', '-')} {describe_value(getattr(cfg, key))} contradicts "
                f"checkpoint {cfg.resume}, whose run started with {key}="
                f"{describe_value(settings[key])}"
            )

    need(cfg.epochs > 0, f"--epochs must be positive, got {cfg.epochs}")
    need(cfg.batch_size > 0, f"--batch-size must be positive, got {cfg.batch_size}")
    need(cfg.lr > 0, f"--lr must be positive, got {cfg.lr}")
    need(
        0 <= cfg.warmup_epochs <= cfg.epochs,
        f"--warmup-epochs must be between 0 and --epochs {cfg.epochs}, got {cfg.warmup_epochs:g}",
    )
    check_residual_bn_init(cfg.residual_bn_init)
    if cfg.residual_bn_ramp:
        start, end = cfg.residual_bn_ramp
        need(
            0 <= start < end <= cfg.epochs,
            f"--residual-bn-ramp START END needs 0 <= START < END <= --epochs {cfg.epochs}, got {start:g} {end:g}",
        )
        need(
            0 < cfg.residual_bn_init < 1,
            "--residual-bn-ramp raises branches started below torchvision's scale: "
            f"it needs --residual-bn-init strictly between 0 and 1, got {cfg.residual_bn_init:g}",
        )
    need(cfg.moco_k > 0, f"--moco-k must be positive, got {cfg.moco_k}")
    need(cfg.moco_dim > 0, f"--moco-dim must be positive, got {cfg.moco_dim}")
    need(0.0 <= cfg.moco_m < 1.0, f"--moco-m must be in [0, 1), got {cfg.moco_m}")
    need(cfg.moco_t > 0, f"--moco-t must be positive, got {cfg.moco_t}")
    need(
        cfg.moco_k % cfg.batch_size == 0,
        f"--moco-k {cfg.moco_k} is not divisible by the (global) --batch-size {cfg.batch_size}: "
        "the queue must hold a whole number of batches",
    )
    need(cfg.image_size >= 8, f"--image-size must be at least 8, got {cfg.image_size}")
    need(cfg.bn_splits >= 0, f"--bn-splits must be >= 0 (0 = auto), got {cfg.bn_splits}")
    need(cfg.save_every > 0, f"--save-every must be positive, got {cfg.save_every}")
    need(
        cfg.checkpoint_minutes >= 0 and math.isfinite(cfg.checkpoint_minutes),
        f"--checkpoint-minutes must be >= 0 (0: off), got {cfg.checkpoint_minutes}",
    )
    need(cfg.knn_every > 0, f"--knn-every must be positive, got {cfg.knn_every}")
    need(cfg.knn_k > 0 and cfg.knn_t > 0, "--knn-k and --knn-t must be positive")
    need(cfg.print_freq > 0, f"--print-freq must be positive, got {cfg.print_freq}")
    need(cfg.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0, got {cfg.keep_checkpoints}")
    need(cfg.keep_every >= 0, f"--keep-every must be >= 0 (0: no milestones), got {cfg.keep_every}")
    need(cfg.workers is None or cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    need(
        cfg.batch_size % world_size == 0,
        f"--batch-size {cfg.batch_size} is not divisible by the {world_size} processes",
    )
