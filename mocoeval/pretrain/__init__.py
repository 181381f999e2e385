"""MoCo v1/v2 pretraining: the model (builder), augmentations, data, checkpoints, kNN monitor, training loop.

The CLI is pretrain/train_moco.py; the run (`engine`) and the throughput benchmark (`throughput`) share what a run is
built from (`build`) and its step (`step.train_step`).
"""
