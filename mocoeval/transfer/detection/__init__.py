"""Detection transfer (the MoCo protocol): N seeded R50-C4 trials, resumable, on VOC07+12 (Faster R-CNN) or COCO
(Mask R-CNN, run_coco.py). One harness; what differs per benchmark is in `benchmark`.

One command trains and evaluates N trials of the same converted backbone, each with its own seed,
and summarises them (mean, population std, min, max). Layout of a run directory (`--output-dir`):

    trial_1/ ... trial_N/   one Detectron2 training each; trials are numbered from 1 and trial i
                            uses seed SEEDS[i-1] (default seed i-1, i.e. 0, 1, ..., N-1)
        trial.json          the trial's identity, written before it trains: seed, config hash, weights
        config.yaml         the full Detectron2 config it trains with
        log.txt             its log; events.json is Detectron2's per-iteration JSON event log
                            (Detectron2 calls it metrics.json; renamed, that name is ours)
        events.out.tfevents.*   tensorboard
        model_XXXXXXX.pth, last_checkpoint   resume points: Detectron2's periodic checkpoints and the
                            newest timed one (--checkpoint-minutes) or the one saved on Ctrl-C / SIGTERM,
                            deleted once the trial has finished (model_final.pth, the trained detector, stays)
        metrics.json        written once, atomically, after the test evaluation: VOC AP50/AP/AP75, COCO
                            box_AP/box_AP50/box_AP75/mask_AP/mask_AP50/mask_AP75
    summary.json, summary.csv   over the requested trials (std with ddof=0, as the official README's ±)
    log.txt                 the orchestration log of every invocation
    run_record.json         which results-store record this directory wrote last

Re-running the same command skips finished trials, resumes an interrupted one from its last
checkpoint and never rewrites a finished trial's metrics. A trial directory remembers its config
hash, seed and weights; a request that differs is refused rather than mixed into one summary.

Modules: `benchmark` (VOC and COCO: metrics, default configs, data check and registration, evaluator), `config`
(the Detectron2 config and its identity), `trial` (the weights checks, the trainer, one trial), `run` (plan, execute
and summarise the trials), `run_voc` / `run_coco` (the command, shared; what `transfer/run_{voc,coco}.py` call).
"""
