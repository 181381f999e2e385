"""transfer/run_voc.py and mocoeval.transfer.detection: seeds, config building, planning, summary, the VOC
evaluator, one-line errors, and (slow) real tiny trials on the mini VOC data: two trials, a re-run that
skips them, a killed trial that resumes, a failed trial that does not lose the others."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mocoeval.results import identity as protocol_identity
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.stop_request import Interrupted
from mocoeval.transfer.detection import benchmark
from mocoeval.transfer.detection import config as voc_config
from mocoeval.transfer.detection import run as voc_run
from mocoeval.transfer.detection import trial as voc_trial
from mocoeval.transfer.detection.modeling import DEFAULT_VOC_CONFIG

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "transfer" / "run_voc.py"

# A tiny schedule for CPU tests. R50-C4 on CPU is dominated by res5 on every RoI (~1.6 GFLOP per RoI at
# the protocol's 14x14 pooler), so the tests shrink the pooler, the RoI batch and the images.
TINY_OPTS = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "4",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "16",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "16",
    "TEST.PRECISE_BN.NUM_ITER",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
]


def _load_script(module: str = "mocoeval.transfer.detection.run_voc"):
    return importlib.import_module(module)


def kill_when(proc: subprocess.Popen, ready, what: str, sig: int = signal.SIGKILL, timeout: float = 600) -> None:
    """Send `sig` to a running command once `ready()` holds (polled); fail if it ends or times out first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the command ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)
    proc.send_signal(sig)


def cpu_run_args(weights, out, dataset_root, *extra) -> list[str]:
    """run_voc.py / run_coco.py arguments for a CPU run of `weights` on the mini data into `out`, then `extra`."""
    return [
        "--weights",
        str(weights),
        "--output-dir",
        str(out),
        "--dataset-root",
        str(dataset_root),
        "--device",
        "cpu",
        *extra,
    ]


def _subprocess_env(store_dir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MOCOEVAL_RESULTS_DIR"] = str(store_dir)
    return env


# ------------------------------------------------------------------------------------------ seeds/config


def test_seeds_default_fixed_and_validated():
    assert voc_run.resolve_seeds(None, None) == [0, 1, 2, 3, 4]  # protocol: 5 trials
    assert voc_run.resolve_seeds(3, None) == [0, 1, 2]
    assert voc_run.resolve_seeds(5, None)[:3] == voc_run.resolve_seeds(3, None)  # --trials 5 after --trials 3 extends
    assert voc_run.resolve_seeds(None, [7, 11]) == [7, 11]
    assert voc_run.resolve_seeds(2, [7, 11]) == [7, 11]
    for trials, seeds in [(3, [7, 11]), (None, [4, 4]), (0, None), (None, [-1])]:
        with pytest.raises(UserError):
            voc_run.resolve_seeds(trials, seeds)


def test_build_config_scales_lr_and_schedule_with_batch():
    """The protocol's rule for another batch: lr x batch/16, MAX_ITER, STEPS, WARMUP_ITERS x 16/batch."""
    cfg, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.IMS_PER_BATCH", "8"], weights="")
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.01) and notes.lr_scaled == (0.02, pytest.approx(0.01))
    assert cfg.SOLVER.MAX_ITER == 48000 and tuple(cfg.SOLVER.STEPS) == (36000, 44000)
    assert cfg.SOLVER.WARMUP_ITERS == 200
    assert notes.schedule_scaled == {
        "factor": 2.0,
        "MAX_ITER": [24000, 48000],
        "STEPS": [[18000, 22000], [36000, 44000]],
        "WARMUP_ITERS": [100, 200],
    }
    text = " ".join(notes.messages)
    assert "0.02 -> 0.01" in text and "MAX_ITER 24000 -> 48000" in text and "(36000, 44000)" in text
    assert "WARMUP_ITERS 100 -> 200" in text

    cfg, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.IMS_PER_BATCH", "32"])
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.WARMUP_ITERS) == (
        pytest.approx(0.04),
        12000,
        (9000, 11000),
        50,
    )

    # keys that --opts sets win (the demo sets all three); the others are still scaled, with a note if past the end
    demo = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(8,)", "SOLVER.WARMUP_ITERS", "2"]
    cfg, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, demo)
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.WARMUP_ITERS) == (10, (8,), 2)
    assert notes.schedule_scaled is None and "not scaled" in " ".join(notes.messages)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.0025)
    cfg, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "200"])
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.WARMUP_ITERS) == (200, (36000, 44000), 200)
    assert set(notes.schedule_scaled) == {"factor", "STEPS", "WARMUP_ITERS"}
    assert "reach MAX_ITER 200" in notes.messages[-1]

    cfg, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.BASE_LR", "0.005"])
    assert cfg.SOLVER.BASE_LR == 0.005 and notes.lr_scaled is None  # an explicit lr wins

    cfg, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, [])
    assert cfg.SOLVER.BASE_LR == 0.02 and cfg.SOLVER.IMS_PER_BATCH == 16 and not notes.messages

    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [], norm="SyncBN", device="cpu")
    assert cfg.MODEL.RESNETS.NORM == "SyncBN" and cfg.MODEL.DEVICE == "cpu"


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.MAX_ITER"], "KEY VALUE pairs"),
        (["SOLVER.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
        (["SOLVER.MAX_ITER", "abc"], "--opts"),
        (["MODEL.WEIGHTS", "x.pkl"], "--weights"),
        (["SEED", "3"], "--seeds"),
        (["SOLVER.IMS_PER_BATCH", "0"], "IMS_PER_BATCH"),
    ],
)
def test_build_config_bad_opts_are_user_errors(opts, message):
    with pytest.raises(UserError, match=message):
        voc_config.build_config(DEFAULT_VOC_CONFIG, opts)


def test_config_hash_ignores_result_neutral_keys_only():
    base, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [], device="cpu", weights="")
    neutral, _ = voc_config.build_config(
        DEFAULT_VOC_CONFIG, ["DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "7"], device="cuda"
    )
    other, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.WARMUP_ITERS", "200"])
    assert protocol_identity.config_hash(base) == protocol_identity.config_hash(neutral)
    assert protocol_identity.config_hash(base) != protocol_identity.config_hash(other)
    diff = voc_config.config_differences(
        protocol_identity.config_identity(base), protocol_identity.config_identity(other)
    )
    assert diff == "SOLVER.WARMUP_ITERS (100 -> 200)"


def test_voc_splits_of_the_protocol_and_non_voc_refused():
    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [])
    assert benchmark.voc_splits(cfg) == [("2007", "trainval"), ("2012", "trainval"), ("2007", "test")]
    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, ["DATASETS.TEST", "('coco_2017_val',)"])
    with pytest.raises(UserError, match="coco_2017_val"):
        benchmark.voc_splits(cfg)


def test_loaded_key_check_allows_only_new_detection_layers():
    missing_ok = [
        "proposal_generator.rpn_head.conv.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.res5.norm.weight",
        "roi_heads.res5.norm.running_mean",
        "backbone.res2.0.conv1.norm.num_batches_tracked",
    ]
    assert voc_trial.check_loaded_keys(missing_ok, ["fc.0.weight"], "w.pkl") == ["fc.0.weight"]
    with pytest.raises(UserError, match=r"backbone\.res4\.5\.conv3\.weight"):
        voc_trial.check_loaded_keys(missing_ok + ["backbone.res4.5.conv3.weight"], [], "w.pkl")
    with pytest.raises(UserError, match=r"roi_heads\.res5\.0\.conv1\.weight"):
        voc_trial.check_loaded_keys(["roi_heads.res5.0.conv1.weight"], [], "w.pkl")


def test_preflight_reports_unused_projection_head(random_r50_pkl, tmp_path):
    """A .pkl with extra tensors (a MoCo projection head) loads; the extras are reported, not fatal."""
    import pickle

    with open(random_r50_pkl, "rb") as f:
        data = pickle.load(f)
    data["model"]["fc.0.weight"] = np.zeros((4, 4), np.float32)
    with_head = tmp_path / "with_head.pkl"
    with open(with_head, "wb") as f:
        pickle.dump(data, f)
    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [], device="cpu", weights=with_head)
    weights = voc_trial.check_weights(with_head)
    assert weights.variant["name"] == "random-init" and weights.source_sha256 == "0" * 64
    unused, report = voc_trial.preflight_weights(cfg, weights)
    assert unused == ["fc.0.weight"]
    assert "RPN (6), box predictor (4), res5 norm (4)" in report and "unused in the file: 1" in report


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_machines=2, machine_rank=1), "--dist-url"),
        (dict(num_machines=2, machine_rank=2, dist_url="tcp://h:1"), "--machine-rank"),
        (dict(trials=3, seeds=[1, 2]), "one seed per trial"),
        (dict(checkpoint_minutes=-1.0), "--checkpoint-minutes"),
    ],
)
def test_bad_flag_combinations_are_user_errors(options, message, tmp_path):
    with pytest.raises(UserError, match=message):
        voc_run.run(voc_run.RunOptions(weights=str(tmp_path / "w.pkl"), output_dir=str(tmp_path / "o"), **options))
    assert not (tmp_path / "o").exists()


def test_trial_spec_pickles_for_spawn_and_submitit():
    """launch() (spawn) and submitit pickle the trial; the frozen config must survive it unchanged."""
    import pickle

    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.IMS_PER_BATCH", "8"], device="cpu")
    cfg.OUTPUT_DIR, cfg.SEED = "/tmp/run/trial_2", 1
    cfg.freeze()
    spec = voc_trial.TrialSpec(index=2, n_trials=5, seed=1, cfg=cfg, identity={"seed": 1}, dataset_root="/data")
    job = pickle.loads(pickle.dumps(voc_trial.SlurmTrialJob(spec)))
    assert job.spec.cfg == cfg and job.spec.cfg.is_frozen() and job.spec.dir == Path("/tmp/run/trial_2")
    assert job.spec.cfg.SOLVER.BASE_LR == pytest.approx(0.01)


def test_a_fresh_process_unpickling_a_trial_has_the_detector_registered(tmp_path):
    """launch() workers and submitit jobs import only the trial module (via the pickle): it must register
    Res5ROIHeadsExtraNorm itself, or building the model fails with a registry KeyError."""
    import pickle

    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [], device="cpu")
    cfg.freeze()
    spec = voc_trial.TrialSpec(index=1, n_trials=1, seed=0, cfg=cfg, identity={}, dataset_root="/data")
    job_file = tmp_path / "job.pkl"
    job_file.write_bytes(pickle.dumps(voc_trial.SlurmTrialJob(spec)))
    code = (
        "import pickle, sys; job = pickle.load(open(sys.argv[1], 'rb')); "
        "from detectron2.modeling import ROI_HEADS_REGISTRY; "
        "assert job.spec.cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY, job.spec.cfg.MODEL.ROI_HEADS.NAME"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(job_file)],
        capture_output=True,
        text=True,
        env=_subprocess_env(tmp_path / "store"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


class _Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return {"loss": ((self.w * x).sum() - 1.0) ** 2}


def _trainer_with_resume_points(tmp_path, data, minutes: float, period: int, max_iter: int, stop_on_signal=False):
    """Detectron2's own SimpleTrainer, DetectionCheckpointer and PeriodicCheckpointer, plus ResumePoints."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import SimpleTrainer, hooks

    model = _Quadratic()
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.01))
    trainer.checkpointer = DetectionCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks(
        [
            hooks.PeriodicCheckpointer(trainer.checkpointer, period, max_iter=max_iter),
            voc_trial.ResumePoints(minutes, period=period, stop_on_signal=stop_on_signal),
        ]
    )
    return trainer


def _saved_iteration(path: Path) -> int:
    state = torch.load(path, weights_only=False)
    assert state["iteration"] == state["trainer"]["iteration"]
    return state["iteration"]


def test_timed_resume_points_keep_only_the_newest_and_never_a_periodic_one(tmp_path):
    """With a tiny interval ResumePoints saves after every iteration except those the periodic checkpointer
    saves and the last; only its newest file stays."""
    trainer = _trainer_with_resume_points(tmp_path, iter(lambda: torch.ones(3), None), 1e-9, period=3, max_iter=7)
    trainer.train(0, 7)
    # timed: iterations 0, 1, 3, 4 (2 and 5 are periodic, 6 is the last) -> only model_0000004 stays
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000002.pth",
        "model_0000004.pth",
        "model_0000005.pth",
        "model_final.pth",
    ]
    assert _saved_iteration(tmp_path / "model_0000004.pth") == 4


def _data_signalling(sig, at_item: int, times: int = 1, then_fail: bool = False):
    """Batches for the trainer; fetching item `at_item` (1-based) sends `sig` to this process `times` times
    (as Ctrl-C or `kill` would, mid-iteration), then optionally fails like a loader whose workers died."""
    item = 0
    while True:
        item += 1
        if item == at_item:
            for _ in range(times):
                os.kill(os.getpid(), sig)
            if then_fail:
                raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")
        yield torch.ones(3)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_trial_after_the_iteration_with_a_resume_point(tmp_path, sig):
    before = signal.getsignal(sig)
    trainer = _trainer_with_resume_points(
        tmp_path, _data_signalling(sig, at_item=4), 0, period=100, max_iter=10, stop_on_signal=True
    )
    with pytest.raises(Interrupted) as e:
        trainer.train(0, 10)
    # the signal came while iteration 3 fetched its batch: iteration 3 completes, is saved, and training stops
    assert e.value.exit_code == 128 + sig and str(e.value).startswith(
        f"{signal.Signals(sig).name}: trial stopped after iteration 4 of 10, resume point "
    )
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000003.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    assert _saved_iteration(tmp_path / "model_0000003.pth") == 3
    assert signal.getsignal(sig) is before  # the handlers are put back


def test_a_stop_request_survives_a_loader_that_died_of_the_same_ctrl_c(tmp_path):
    """Ctrl-C reaches the loader's worker processes too; when the next fetch fails before the iteration ends,
    the last completed iteration is saved and the trial still stops as interrupted."""
    trainer = _trainer_with_resume_points(
        tmp_path,
        _data_signalling(signal.SIGINT, at_item=4, then_fail=True),
        0,
        period=100,
        max_iter=10,
        stop_on_signal=True,
    )
    with pytest.raises(Interrupted, match="after iteration 3 of 10") as e:
        trainer.train(0, 10)
    assert isinstance(e.value.__context__, RuntimeError)
    assert _saved_iteration(tmp_path / "model_0000002.pth") == 2


def test_a_second_signal_stops_at_once_and_the_last_iteration_is_not_interrupted(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    trainer = _trainer_with_resume_points(
        tmp_path, _data_signalling(signal.SIGINT, at_item=4, times=2), 0, period=100, max_iter=10, stop_on_signal=True
    )
    with pytest.raises(KeyboardInterrupt) as e:
        trainer.train(0, 10)
    assert type(e.value) is KeyboardInterrupt and not list(tmp_path.glob("model_*.pth"))
    assert signal.getsignal(signal.SIGINT) is before
    # a request during the last iteration lets the trial finish (model_final.pth; evaluation would follow)
    final = tmp_path / "last"
    final.mkdir()
    trainer = _trainer_with_resume_points(
        final, _data_signalling(signal.SIGINT, at_item=10), 0, period=100, max_iter=10, stop_on_signal=True
    )
    trainer.train(0, 10)
    assert sorted(p.name for p in final.glob("model_*.pth")) == ["model_final.pth"]
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------------------------- planning


def _identity(seed=0, cfg_hash="h1", sha="w1"):
    return {"seed": seed, "config_hash": cfg_hash, "weights": "/w.pkl", "weights_sha256": sha}


def _finished(tdir: Path, **identity):
    tdir.mkdir(parents=True)
    (tdir / "metrics.json").write_text(json.dumps({"AP50": 50.0, "AP": 30.0, "AP75": 28.0, **_identity(**identity)}))


def test_plan_skips_finished_resumes_checkpointed_and_starts_new(tmp_path):
    _finished(tmp_path / "trial_1", seed=0)
    t2 = tmp_path / "trial_2"
    t2.mkdir()
    (t2 / "trial.json").write_text(json.dumps(_identity(seed=1)))
    (t2 / "last_checkpoint").write_text("model_0000009.pth")
    base = {"config_hash": "h1", "weights": "/w.pkl", "weights_sha256": "w1"}
    plans = voc_run.plan_trials(tmp_path, [0, 1, 2], base, {})
    assert [(p.index, p.seed, p.status) for p in plans] == [(1, 0, "finished"), (2, 1, "resume"), (3, 2, "new")]
    assert plans[0].metrics["AP50"] == 50.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 5}, "seed 0, not 5"),
        ({"config_hash": "h2"}, "different config"),
        ({"weights_sha256": "w2"}, "other weights"),
    ],
)
def test_plan_refuses_to_mix_setups(tmp_path, change, message):
    _finished(tmp_path / "trial_1", seed=0)
    base = {"config_hash": "h1", "weights": "/w.pkl", "weights_sha256": "w1"}
    seed = change.pop("seed", 0)
    with pytest.raises(UserError, match=message) as e:
        voc_run.plan_trials(tmp_path, [seed], {**base, **change}, {})
    assert "--output-dir" in str(e.value) and "\n" not in str(e.value)


def test_plan_refuses_foreign_checkpoints_and_corrupt_metrics(tmp_path):
    (tmp_path / "trial_1").mkdir()
    (tmp_path / "trial_1" / "last_checkpoint").write_text("model_final.pth")
    base = {"config_hash": "h1", "weights": "/w.pkl", "weights_sha256": "w1"}
    with pytest.raises(UserError, match="unknown run"):
        voc_run.plan_trials(tmp_path, [0], base, {})
    (tmp_path / "trial_1" / "metrics.json").write_text("{truncated")
    with pytest.raises(UserError, match="unreadable"):
        voc_run.plan_trials(tmp_path, [0], base, {})


# ---------------------------------------------------------------------------------------------- summary


def test_summary_population_std_csv_and_table(tmp_path):
    trials = [
        {"trial": i + 1, "seed": i, "AP50": a, "AP": b, "AP75": c, "wall_time_s": 1.0}
        for i, (a, b, c) in enumerate([(81.5, 55.9, 62.6), (82.0, 56.4, 62.6), (82.2, 56.8, 63.2)])
    ]
    summary, table = voc_run.summarize(tmp_path, trials, requested=3, failed=[])
    ap50 = np.array([81.5, 82.0, 82.2])
    s = summary["metrics"]["AP50"]
    assert s["mean"] == pytest.approx(ap50.mean()) and s["n"] == 3
    assert s["std"] == pytest.approx(ap50.std(ddof=0)) and s["std"] != pytest.approx(ap50.std(ddof=1))
    assert (s["min"], s["max"]) == (81.5, 82.2) and summary["std_ddof"] == 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["metrics"]["AP75"]["values"] == [62.6, 62.6, 63.2]
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == "row,trial,seed,AP50,AP,AP75,wall_time_s"
    assert [ln.split(",")[0] for ln in lines[1:]] == [
        "trial_1",
        "trial_2",
        "trial_3",
        "mean",
        "std (ddof=0)",
        "min",
        "max",
        "n",
    ]
    std_row = lines[5].split(",")
    assert float(std_row[3]) == pytest.approx(ap50.std(ddof=0), abs=1e-4)
    assert "std (ddof=0)" in table and "81.90" in table


# -------------------------------------------------------------------------------------------- evaluator


def _twenty_class_voc07_test(root: Path) -> None:
    """A VOC2007 test split with one 20x20 box of each class (1-based 11..30) plus one difficult object."""
    from PIL import Image

    from mocoeval.data.voc import VOC_CLASS_NAMES, VocObject, annotation_xml

    voc = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    ids = []
    for k, name in enumerate(VOC_CLASS_NAMES):
        image_id = f"{k:06d}"
        ids.append(image_id)
        Image.new("RGB", (64, 48), (k * 10, 100, 200)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        objects = [VocObject(name, 11, 11, 30, 30)]
        if k == 0:
            objects.append(VocObject("dog", 40, 20, 60, 40, difficult=1))  # ignored by the VOC metric
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            annotation_xml(
                "VOC2007",
                f"{image_id}.jpg",
                64,
                48,
                objects,
                {"database": "test", "annotation": "test", "image": "test"},
            )
        )
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")


def _evaluate(predict) -> dict:
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [])
    evaluator = voc_trial.VOCTrainer.build_evaluator(cfg, "voc_2007_test")
    evaluator.reset()
    for d in DatasetCatalog.get("voc_2007_test"):
        boxes = [a["bbox"] for a in d["annotations"] if predict(a)]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) + predict.shift)
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"] if predict(a)], dtype=torch.long)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    return voc_trial.VOCTrainer.benchmark.extract_metrics(evaluator.evaluate())


def test_evaluator_ground_truth_as_predictions_scores_100(tmp_path):
    from mocoeval.data.voc import register_voc_datasets

    _twenty_class_voc07_test(tmp_path)
    register_voc_datasets(tmp_path)
    try:

        def every_box(a):
            return not (a["category_id"] == 11 and a["bbox"][0] > 30)  # not the difficult dog

        every_box.shift = torch.zeros(4)
        assert _evaluate(every_box) == {
            "AP50": pytest.approx(100.0),
            "AP": pytest.approx(100.0),
            "AP75": pytest.approx(100.0),
        }

        def all_but_cats(a):
            return every_box(a) and a["category_id"] != 7

        all_but_cats.shift = torch.zeros(4)
        assert _evaluate(all_but_cats)["AP50"] == pytest.approx(95.0)  # one class of 20 at AP 0

        # Shift by 4 px: IoU = 16*20 / (2*400 - 320) = 0.667, a hit at IoU 0.50..0.65 only (4 of 10 thresholds)
        every_box.shift = torch.tensor([4.0, 0.0, 4.0, 0.0])
        assert _evaluate(every_box) == {
            "AP50": pytest.approx(100.0),
            "AP": pytest.approx(40.0),
            "AP75": pytest.approx(0.0),
        }
    finally:
        register_voc_datasets(os.environ.get("DETECTRON2_DATASETS", "datasets"))


# ------------------------------------------------------------------------------------- one-line errors


def _run_cli(args, store_dir, timeout=300):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=_subprocess_env(store_dir),
        cwd=REPO,
        timeout=timeout,
    )


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in err_lines[0]


def test_cli_bad_weights_one_line_error(tmp_path, mini_data_root, capsys):
    missing = tmp_path / "nope.pkl"
    proc = _run_cli(
        ["--weights", missing, "--dataset-root", mini_data_root, "--output-dir", tmp_path / "o"], tmp_path / "store"
    )
    _assert_one_line_error(proc, str(missing))
    # in-process too (same cli_main path, no interpreter start-up): a file that is not a pickle
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _load_script().main(
            ["--weights", str(garbage), "--dataset-root", str(mini_data_root), "--output-dir", str(tmp_path / "o")]
        )
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and err.startswith("error: ") and str(garbage) in err
    assert not (tmp_path / "o").exists()


def test_cli_bad_dataset_root_one_line_error(tmp_path, random_r50_pkl):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    proc = _run_cli(
        ["--weights", random_r50_pkl, "--dataset-root", empty, "--output-dir", tmp_path / "o"], tmp_path / "store"
    )
    _assert_one_line_error(proc, "VOC2007")
    assert not (tmp_path / "o").exists()


def test_dry_run_checks_and_prints_plan(tmp_path, random_r50_pkl, mini_data_root, store):
    out = tmp_path / "run"
    proc = _run_cli(
        [
            "--weights",
            random_r50_pkl,
            "--trials",
            "2",
            "--output-dir",
            out,
            "--dataset-root",
            mini_data_root,
            "--dry-run",
            "--device",
            "cpu",
            "--opts",
            "SOLVER.IMS_PER_BATCH",
            "4",
        ],
        store,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "BASE_LR scaled linearly 0.02 -> 0.005" in log
    assert "trial 1/2 (seed 0): would start" in log and "trial 2/2 (seed 1): would start" in log
    assert not out.exists() and not store.exists()  # a dry run creates nothing, not even its output folder


def test_amp_sets_detectron2s_amp_trainer_and_departs_from_the_protocol():
    """--amp = SOLVER.AMP.ENABLED True (DefaultTrainer then builds its AMPTrainer): another config hash than fp32."""
    script = _load_script()
    assert script.parse_args(["--weights", "w.pkl", "--amp"]).amp is True
    assert script.parse_args(["--weights", "w.pkl"]).amp is False
    amp, notes = voc_config.build_config(DEFAULT_VOC_CONFIG, [], device="cuda", amp=True)
    fp32, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, [], device="cuda")
    assert amp.SOLVER.AMP.ENABLED is True and fp32.SOLVER.AMP.ENABLED is False
    assert any(m.startswith("AMP: Detectron2's AMPTrainer") for m in notes.messages)
    assert protocol_identity.config_hash(amp) != protocol_identity.config_hash(fp32)
    agreeing, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, ["SOLVER.AMP.ENABLED", "True"], device="cuda", amp=True)
    assert agreeing.dump() == amp.dump()


@pytest.mark.parametrize(
    "opts, device, message",
    [
        (["SOLVER.AMP.ENABLED", "False"], "cuda", "--amp contradicts --opts SOLVER.AMP.ENABLED False"),
        ([], "cpu", "needs a GPU: Detectron2's AMPTrainer trains on CUDA only"),
    ],
)
def test_amp_with_a_contradiction_or_on_cpu_is_refused(opts, device, message):
    with pytest.raises(UserError, match=re.escape(message)):
        voc_config.build_config(DEFAULT_VOC_CONFIG, opts, device=device, amp=True)


def test_amp_dry_run_prints_it_and_cpu_is_one_line_error(tmp_path, random_r50_pkl, mini_data_root, store):
    common = ["--weights", random_r50_pkl, "--dataset-root", mini_data_root, "--output-dir", tmp_path / "o", "--amp"]
    _assert_one_line_error(_run_cli([*common, "--device", "cpu"], store), "--amp", "needs a GPU")
    _assert_one_line_error(
        _run_cli([*common, "--device", "cpu", "--opts", "SOLVER.AMP.ENABLED", "False"], store), "--amp contradicts"
    )
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit is not installed: no device-free --amp dry run (--launcher slurm plans for CUDA)")
    proc = _run_cli([*common, "--launcher", "slurm", "--dry-run"], store)  # Slurm jobs train on CUDA
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    official = protocol_identity.official_config_hash("random-init")[:12]
    assert "AMP: Detectron2's AMPTrainer" in log and "device cuda" in log
    assert "config " in log and f"(hash {official})" not in log  # AMP is in the config hash: not the official one
    assert not (tmp_path / "o").exists() and not store.exists()


def test_the_weights_recorded_input_normalisation_sets_the_config_or_refuses_a_contradiction(
    tmp_path, mini_data_root, store
):
    """Weights converted with --input-norm none (0..1 inputs, no mean/std) train with that normalisation; the
    ImageNet config given explicitly is refused in one line."""
    import torchvision

    from mocoeval.convert.detectron2_weights import input_settings, save_d2_pickle, torchvision_to_d2
    from mocoeval.convert.resnet50 import INPUT_NORMS

    pkl = tmp_path / "no_norm.pkl"
    save_d2_pickle(
        pkl,
        torchvision_to_d2(torchvision.models.resnet50().state_dict()),
        {"path": "x", "sha256": "1" * 64, "format": "torchvision", "variant": {"name": "simclr"}},
        input_norm=INPUT_NORMS["none"],
    )
    cfg, _ = voc_config.build_config(DEFAULT_VOC_CONFIG, input_settings=input_settings(INPUT_NORMS["none"]))
    assert (cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)) == ("RGB", [0.0] * 3, [255.0] * 3)
    common = ["--weights", pkl, "--trials", "1", "--dataset-root", mini_data_root, "--dry-run", "--device", "cpu"]
    proc = _run_cli([*common, "--output-dir", tmp_path / "a"], store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imagenet_hash = protocol_identity.config_hash(voc_config.build_config(DEFAULT_VOC_CONFIG)[0])[:12]
    assert imagenet_hash not in proc.stdout + proc.stderr  # the recorded normalisation is in the config
    proc = _run_cli([*common, "--output-dir", tmp_path / "b", "--config-file", DEFAULT_VOC_CONFIG], store)
    _assert_one_line_error(
        proc,
        "does not fit converted torchvision/MoCo weights with the input normalisation they record: MODEL.PIXEL_MEAN",
    )


def test_output_dir_that_is_a_file_is_one_line_error(tmp_path, random_r50_pkl, mini_data_root):
    not_a_dir = tmp_path / "taken"
    not_a_dir.write_text("a file")
    proc = _run_cli(
        ["--weights", random_r50_pkl, "--dataset-root", mini_data_root, "--output-dir", not_a_dir, "--device", "cpu"],
        tmp_path / "store",
    )
    _assert_one_line_error(proc, f"--output-dir {not_a_dir} exists and is not a directory")
    assert not_a_dir.read_text() == "a file"


# ------------------------------------------------------------------------------------- real tiny trials


def _metrics(out: Path, i: int) -> dict:
    return json.loads((out / f"trial_{i}" / "metrics.json").read_text())


def _branch_scales():
    return _load_script("mocoeval.transfer.branch_scales")


def test_branch_scales_reads_every_kind_of_weights_file(tmp_path, random_r50_pkl, capsys):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50()  # the network random_r50_pkl holds
    with torch.no_grad():
        model.layer3[0].bn3.weight.fill_(0.5)  # one of layer3's six branches at 0.5
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    cli = _branch_scales()
    assert cli.branch_scales_of(random_r50_pkl) == pytest.approx({s: 1.0 for s in ("res2", "res3", "res4", "res5")})
    assert cli.branch_scales_of(tmp_path / "tv.pth") == pytest.approx(
        {"res2": 1.0, "res3": 1.0, "res4": (5 + 0.5) / 6, "res5": 1.0}
    )
    assert cli.main([str(random_r50_pkl), str(tmp_path / "tv.pth")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("1.000   1.000   0.917   1.000")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "tv.pth").read_bytes()[:1000])
    (tmp_path / "cut.pkl").write_bytes(random_r50_pkl.read_bytes()[:1000])
    for bad, message in [
        ("missing.pth", "no such file"),
        ("cut.pth", "truncated or corrupted PyTorch checkpoint"),
        ("cut.pkl", "truncated or corrupted pickle"),
        ("", "is a directory"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main([str(tmp_path / bad)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_trials_summary_rerun_kill_resume_and_failure(tmp_path, random_r50_pkl, mini_data_root, store):
    cli = _load_script()
    out = tmp_path / "run"
    common = cpu_run_args(random_r50_pkl, out, mini_data_root)

    # 1. Two trials: metrics per trial, a summary with n=2, one results record.
    assert cli.main([*common, "--trials", "2", "--opts", *TINY_OPTS]) == 0
    for i, seed in [(1, 0), (2, 1)]:
        m = _metrics(out, i)
        assert m["trial"] == i and m["seed"] == seed and m["iterations"] == 2 and m["resumed_from_iter"] is None
        assert all(0.0 <= m[k] <= 100.0 for k in ("AP50", "AP", "AP75"))
        assert (out / f"trial_{i}" / "model_final.pth").exists()
        assert (out / f"trial_{i}" / "events.json").exists()  # Detectron2's event log, renamed
        assert json.loads((out / f"trial_{i}" / "trial.json").read_text())["seed"] == seed
        # the fine-tuned detector's residual branch scales, as transfer/branch_scales.py reads them from the file
        assert m["residual_branch_scale"] == pytest.approx(
            _branch_scales().branch_scales_of(out / f"trial_{i}" / "model_final.pth")
        )
        assert list(m["residual_branch_scale"]) == ["res2", "res3", "res4", "res5"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == 2 and summary["metrics"]["AP50"]["n"] == 2 and summary["std_ddof"] == 0
    assert [t["seed"] for t in summary["trials"]] == [0, 1]
    assert (out / "summary.csv").read_text().splitlines()[-1].startswith("n,")
    records = sorted(store.glob("*_voc_*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["stage"] == "voc" and rec["seeds"] == [0, 1] and rec["variant"]["name"] == "random-init"
    assert rec["source_sha256"] == "0" * 64 and len(rec["weights_sha256"]) == 64 and rec["config_hash"]
    assert [t["seed"] for t in rec["trials"]] == [0, 1]

    # 2. The same command again: both trials skipped, nothing rewritten, no second record.
    before = {
        i: (
            (out / f"trial_{i}" / "metrics.json").read_bytes(),
            (out / f"trial_{i}" / "metrics.json").stat().st_mtime_ns,
        )
        for i in (1, 2)
    }
    assert cli.main([*common, "--trials", "2", "--opts", *TINY_OPTS]) == 0
    assert all(
        ((out / f"trial_{i}" / "metrics.json").read_bytes(), (out / f"trial_{i}" / "metrics.json").stat().st_mtime_ns)
        == before[i]
        for i in (1, 2)
    )
    log = (out / "log.txt").read_text()
    assert "trial 1/2 (seed 0): finished earlier, skipped" in log and "trial 2/2 (seed 1): finished earlier" in log
    assert len(list(store.glob("*_voc_*.json"))) == 1

    # 3. A different config for the same directory is refused (one line), nothing runs.
    with pytest.raises(SystemExit) as e:
        cli.main([*common, "--trials", "2", "--opts", *TINY_OPTS, "SOLVER.WARMUP_ITERS", "7"])
    assert e.value.code == 2

    # 4. --trials 3, killed after trial 3's first checkpoint (a subprocess, SIGKILL: no clean-up at all).
    t3 = out / "trial_3"
    # The resume point is a timed one (--checkpoint-minutes; the periodic one is at 5,000 iterations).
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *common, "--trials", "3", "--checkpoint-minutes", "1e-9", "--opts", *TINY_OPTS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_subprocess_env(store),
        cwd=REPO,
    )
    try:
        kill_when(proc, (t3 / "last_checkpoint").exists, "trial 3's checkpoint")
    finally:
        proc.kill()
        proc.wait()
    assert not (t3 / "metrics.json").exists()
    checkpoint = t3 / (t3 / "last_checkpoint").read_text().strip()
    assert checkpoint.name.startswith("model_000000")
    resume_iter = int(checkpoint.stem.split("_")[1]) + 1

    # 5. A broken checkpoint makes trial 3 fail; trial 4 still runs; exit 1, summary of 1, 2, 4, no record.
    good = checkpoint.with_suffix(".good")
    checkpoint.rename(good)
    checkpoint.write_bytes(b"truncated by a full disk")
    assert cli.main([*common, "--trials", "4", "--opts", *TINY_OPTS]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_trials"] == [3] and [t["trial"] for t in summary["trials"]] == [1, 2, 4]
    assert _metrics(out, 4)["seed"] == 3
    assert len(list(store.glob("*_voc_*.json"))) == 1
    assert all((out / f"trial_{i}" / "metrics.json").read_bytes() == before[i][0] for i in (1, 2))

    # 6. Repaired: the same command resumes trial 3 from its checkpoint and completes the run of 4.
    checkpoint.unlink()
    good.rename(checkpoint)
    assert cli.main([*common, "--trials", "4", "--opts", *TINY_OPTS]) == 0
    m3 = _metrics(out, 3)
    assert m3["resumed_from_iter"] == resume_iter and m3["seed"] == 2
    assert not list(t3.glob("model_0*.pth")) and (t3 / "model_final.pth").exists()  # resume points pruned
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == 4 and summary["failed_trials"] == [] and summary["metrics"]["AP"]["n"] == 4
    records = sorted(store.glob("*_voc_*.json"))
    assert len(records) == 2
    newest = max((json.loads(p.read_text()) for p in records), key=lambda r: len(r["trials"]))
    assert newest["seeds"] == [0, 1, 2, 3] and newest["extra"]["supersedes"]


@pytest.mark.slow
def test_ctrl_c_saves_the_iteration_and_the_same_command_resumes_from_it(
    tmp_path, random_r50_pkl, mini_data_root, store
):
    """SIGINT to run_voc.py (as Ctrl-C; no timed resume points): exit 130 with a one-line message naming the
    resume point, and running the same command again resumes right after that iteration and finishes."""
    cli = _load_script()
    out = tmp_path / "run"
    opts = [*TINY_OPTS, "SOLVER.MAX_ITER", "12"]
    command = cpu_run_args(
        random_r50_pkl, out, mini_data_root, "--trials", "1", "--checkpoint-minutes", "0", "--opts", *opts
    )
    console = tmp_path / "console.txt"  # a file, not a pipe: nobody reads stdout while the trial runs
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *command],
        stdout=console.open("w"),
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(store),
        cwd=REPO,
    )
    trial_log = out / "trial_1" / "log.txt"
    try:
        deadline = time.time() + 600
        while not (trial_log.exists() and "Starting training from iteration 0" in trial_log.read_text()):
            assert proc.poll() is None, "run_voc.py ended before training started"
            assert time.time() < deadline, "training did not start within 10 minutes"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and last.startswith("interrupted: SIGINT: trial stopped after iteration "), err
    stopped_after = int(last.split("after iteration ")[1].split()[0])
    assert 1 <= stopped_after < 12 and not (out / "trial_1" / "metrics.json").exists()
    checkpoint = out / "trial_1" / (out / "trial_1" / "last_checkpoint").read_text().strip()
    assert checkpoint.name == f"model_{stopped_after - 1:07d}.pth" and str(checkpoint) in last
    assert "trial 1/1: SIGINT: trial stopped" in (out / "log.txt").read_text()
    # the console has our lines; the model dump, dataset tables and torch's warnings are in log.txt only
    shown, logged = console.read_text() + err, trial_log.read_text()
    assert "trial 1/1 (seed 0): starting" in shown and "weights fit the detector" in shown
    for detail in ("GeneralizedRCNN(", "Distribution of instances", "Loading from", "UserWarning", "is_fx_tracing"):
        assert detail in logged and detail not in shown, detail

    assert cli.main(command) == 0
    m = _metrics(out, 1)
    assert m["resumed_from_iter"] == stopped_after and m["iterations"] == 12
    assert not list((out / "trial_1").glob("model_0*.pth"))  # the resume point is pruned with the others


@pytest.mark.slow
def test_two_cpu_processes_run_a_trial_through_detectron2s_launcher(tmp_path, random_r50_pkl, mini_data_root, store):
    """--num-gpus 2 --device cpu: two gloo processes (naiveSyncBN synchronised across them), as on 2 GPUs."""
    cli = _load_script()
    out = tmp_path / "run"
    assert (
        cli.main(
            cpu_run_args(
                random_r50_pkl,
                out,
                mini_data_root,
                "--num-gpus",
                "2",
                "--trials",
                "1",
                "--checkpoint-minutes",
                "0",
                "--opts",
                *TINY_OPTS,
            )
        )
        == 0
    )
    m = _metrics(out, 1)
    assert m["world_size"] == 2 and m["iterations"] == 2 and all(0.0 <= m[k] <= 100.0 for k in ("AP50", "AP", "AP75"))
    assert (out / "trial_1" / "log.txt.rank1").exists() and (out / "trial_1" / "model_final.pth").exists()
    # the batch rule's record: TINY_OPTS sets batch 2 and MAX_ITER, so lr, STEPS and WARMUP_ITERS were scaled
    (record,) = store.glob("*_voc_*.json")
    extra = json.loads(record.read_text())["extra"]
    assert extra["lr_scaled"] == [0.02, pytest.approx(0.0025)] and extra["schedule_scaled"]["WARMUP_ITERS"] == [
        100,
        800,
    ]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_slurm_path_through_submitits_local_executor_requeues_on_timeout_and_resumes(
    tmp_path, random_r50_pkl, mini_data_root, store, monkeypatch
):
    """--launcher slurm for real, on submitit's local executor (same pickling, job folders, signal handling and
    requeue as on Slurm): the job gets the time-limit signal (USR2, here sent as soon as it has a resume point),
    submitit calls SlurmTrialJob.checkpoint and requeues it, and the requeued job resumes and finishes."""
    import threading

    monkeypatch.setattr(voc_run, "SLURM_POLL_S", 0.5)
    out = tmp_path / "run"
    t1 = out / "trial_1"
    signalled = []

    def send_time_limit_signal():
        deadline = time.time() + 300
        while not (t1 / "last_checkpoint").exists() or not (t1 / "slurm_job.json").exists():
            if time.time() > deadline:
                return
            time.sleep(0.05)
        controller = int(json.loads((t1 / "slurm_job.json").read_text())["job_id"])  # local job id = its pid
        for pid in _children(controller):  # the job's task process
            os.kill(pid, signal.SIGUSR2)
            signalled.append(pid)

    watcher = threading.Thread(target=send_time_limit_signal, daemon=True)
    watcher.start()
    # time_min 2: submitit counts any signal as the time limit's (it "guarantees" max(0.8 t, t - 10 min))
    code = voc_run.run(
        voc_run.RunOptions(
            weights=str(random_r50_pkl),
            output_dir=str(out),
            dataset_root=str(mini_data_root),
            device="cpu",
            trials=1,
            launcher="slurm",
            slurm_cluster="local",
            time_min=2,
            checkpoint_minutes=1e-9,
            opts=[*TINY_OPTS, "SOLVER.MAX_ITER", "6"],
        )
    )
    watcher.join(timeout=5)
    assert code == 0 and signalled
    m = _metrics(out, 1)
    assert m["iterations"] == 6 and m["resumed_from_iter"] and 1 <= m["resumed_from_iter"] < 6
    job_log = "".join(p.read_text() for p in (out / "slurm").rglob("*_log.*"))  # submitit logs to stdout
    assert "Caught signal SIGUSR2" in job_log and "this job is timed-out" in job_log and "Requeued job" in job_log
    assert json.loads((out / "summary.json").read_text())["n_trials"] == 1


def test_pretraining_logs_only_to_its_own_handlers_after_a_voc_trial_in_the_same_process(tmp_path, capsys):
    """Detectron2's cached setup_logger leaves a console handler on "mocoeval" (here: a VOC trial's logging set
    up in this process); runtime.logger.log_to sets it aside, so a pretraining line is printed once."""
    import logging

    from mocoeval.runtime.logger import log_to

    voc_trial.setup_logging(0)
    cached = list(logging.getLogger("mocoeval").handlers)  # Detectron2's, cached for the process
    assert cached
    fmt = logging.Formatter("%(message)s")
    with log_to("mocoeval", tmp_path, True, console_format=fmt) as log:
        logging.getLogger("mocoeval.pretrain").info("one line")
        assert not set(cached) & set(log.handlers)
    console = capsys.readouterr()
    assert (console.out + console.err).count("one line") == 1
    assert (tmp_path / "log.txt").read_text().count("one line") == 1
    assert logging.getLogger("mocoeval").handlers  # restored afterwards
