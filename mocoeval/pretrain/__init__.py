"""MoCo v1/v2 pretraining: the model (builder), augmentations, data, checkpoints, kNN monitor, training loop.

The CLI is pretrain/train_moco.py; `engine.train_step` is the step the throughput benchmark reuses.
"""
