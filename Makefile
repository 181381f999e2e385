# The README's two commands: `make demo` and `make test`. Both do the (idempotent) set-up first.
PY := .venv/bin/python
export DETECTRON2_DATASETS ?= datasets

.PHONY: setup data demo demo-science lint test test-fast clean-demo gpu-check
setup:
	bash scripts/install.sh

data: setup
	$(PY) -m mocoeval.data.make_mini_data --root datasets

# ruff: lint + format, configured in pyproject.toml (`ruff format .` fixes the formatting)
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# ---------------------------------------------------------------------------------------------------------
# Demo settings: the only place where the demo departs from the paper's protocol. The commands themselves
# (scripts/demo.sh) are the ones a user runs on ImageNet and VOC; these flags only shrink sizes/schedules.
# MoCo v1 = configs/pretrain/moco_v1.yaml, MoCo v2 = (d).yaml; K stays <= 10% of the training images.
# Linear: --feature-norm (BN without affine before fc; not the protocol's lr 30 on raw features) because a
# random-init ResNet-50 in eval mode (BN = identity) has far larger features than a pretrained one (plain lr 1:
# train loss 4e4 vs 1e3 in this demo), so no single lr fits both rows.
# VOC: few RoIs and a 7x7 RoI pooler, since R50-C4 runs res5 once per RoI (14x14 x 512 RoIs: ~100 s/iter
# on 2 cores). COCO: one short Mask R-CNN trial per backbone with the VOC stage's sizes, and no test score
# threshold (a barely trained 81-way classifier scores every class ~1/81, under Detectron2's 0.05, and would
# predict nothing). Override any of these on the command line: make demo DEMO_VOC_TRIALS=1.
DEMO_OUT ?= output/demo
DEMO_DATA ?= datasets
DEMO_DATA_FLAGS ?= --voc2007-trainval 100 --voc2007-test 40 --voc2012-trainval 100 --voc-short-side 128 \
                   --imagenet-train-per-class 40 --imagenet-val-per-class 10 --coco-train 40 --coco-val 20
DEMO_VARIANTS ?= moco_v1 d
DEMO_PRETRAIN_FLAGS ?= --image-size 32 --epochs 3 --batch-size 32 --lr 0.03 --moco-k 64 --moco-m 0.99 \
                       --seed 0 --print-freq 5
DEMO_LINEAR_FLAGS ?= --image-size 32 --epochs 4 --schedule 3 --batch-size 64 --lr 0.01 --feature-norm --workers 1 --print-freq 5
DEMO_RANDOM_SEEDS ?= 0 1
DEMO_RANDOM_INITS ?= 1
DEMO_VOC_TRIALS ?= 2
DEMO_VOC_OPTS ?= SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 10 SOLVER.STEPS (8,) SOLVER.WARMUP_ITERS 2 \
                 SOLVER.CHECKPOINT_PERIOD 5 INPUT.MIN_SIZE_TRAIN (128,) INPUT.MAX_SIZE_TRAIN 200 \
                 INPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 200 TEST.PRECISE_BN.NUM_ITER 4 \
                 MODEL.RPN.PRE_NMS_TOPK_TRAIN 300 MODEL.RPN.POST_NMS_TOPK_TRAIN 64 \
                 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 16 MODEL.RPN.PRE_NMS_TOPK_TEST 300 \
                 MODEL.RPN.POST_NMS_TOPK_TEST 20 MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 7 DATALOADER.NUM_WORKERS 1
DEMO_COCO_TRIALS ?= 1
DEMO_COCO_OPTS ?= SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 6 SOLVER.STEPS (5,) SOLVER.WARMUP_ITERS 2 \
                  SOLVER.CHECKPOINT_PERIOD 5 INPUT.MIN_SIZE_TRAIN (128,) INPUT.MAX_SIZE_TRAIN 200 \
                  INPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 200 TEST.PRECISE_BN.NUM_ITER 4 \
                  MODEL.RPN.PRE_NMS_TOPK_TRAIN 300 MODEL.RPN.POST_NMS_TOPK_TRAIN 64 \
                  MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 16 MODEL.RPN.PRE_NMS_TOPK_TEST 300 \
                  MODEL.RPN.POST_NMS_TOPK_TEST 20 MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 7 \
                  MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 DATALOADER.NUM_WORKERS 1
DEMO_ENV = DEMO_OUT='$(DEMO_OUT)' DEMO_DATA='$(DEMO_DATA)' DEMO_DATA_FLAGS='$(DEMO_DATA_FLAGS)' \
           DEMO_VARIANTS='$(DEMO_VARIANTS)' DEMO_PRETRAIN_FLAGS='$(DEMO_PRETRAIN_FLAGS)' \
           DEMO_LINEAR_FLAGS='$(DEMO_LINEAR_FLAGS)' DEMO_RANDOM_SEEDS='$(DEMO_RANDOM_SEEDS)' \
           DEMO_RANDOM_INITS='$(DEMO_RANDOM_INITS)' \
           DEMO_VOC_TRIALS='$(DEMO_VOC_TRIALS)' DEMO_VOC_OPTS='$(DEMO_VOC_OPTS)' \
           DEMO_COCO_TRIALS='$(DEMO_COCO_TRIALS)' DEMO_COCO_OPTS='$(DEMO_COCO_OPTS)' PY='$(PY)'

# Quick end-to-end run of every stage (~10 min on 2 cores); its numbers show the plumbing, not the science.
demo: setup
	@$(DEMO_ENV) bash scripts/demo.sh

# The paper's central claim in miniature (MoCo v2 beats random init on linear top-1 and VOC AP50): longer
# pretraining at 64 px on 4,000 images and longer VOC schedules. About 13 h on 2 cores (README).
# --residual-bn-init 0.1 (not the recipe's init of 1): at 64 px a default-init ResNet-50's early gradients are ~10x
# its stem's weights and it collapses or lags; at 0 (zero init) its residual branches never turn on (README "The
# claim in miniature"); --residual-bn-ramp 6 16 raises them tenfold between epochs 6 and 16, as the detector needs
# full-scale blocks at this VOC schedule; lr 0.015 as the ResNet-18's. DEMO_RANDOM_INITS="1 0.1": random-init
# rows with torchvision's init and with the pretraining's starting branch scale (the network it started from).
# --keep-checkpoints 2: 24 epochs x 336 MB per variant otherwise.
demo-science: setup
	$(MAKE) demo DEMO_OUT=output/demo-science DEMO_DATA=datasets-science \
	  DEMO_DATA_FLAGS="--imagenet-train-per-class 200 --imagenet-val-per-class 50" \
	  DEMO_PRETRAIN_FLAGS="--image-size 64 --epochs 24 --batch-size 64 --lr 0.015 --residual-bn-init 0.1 --residual-bn-ramp 6 16 --moco-k 256 --moco-m 0.99 --seed 0 --channels-last --knn-data datasets-science/imagenet-mini --knn-every 4 --keep-checkpoints 2" \
	  DEMO_LINEAR_FLAGS="--image-size 64 --epochs 30 --schedule 20 25 --batch-size 128 --lr 0.01 --feature-norm --workers 2" \
	  DEMO_RANDOM_INITS="1 0.1" DEMO_VOC_TRIALS=2 \
	  DEMO_VOC_OPTS="SOLVER.IMS_PER_BATCH 4 SOLVER.MAX_ITER 1500 SOLVER.STEPS (1100,1350) SOLVER.WARMUP_ITERS 100 INPUT.MIN_SIZE_TRAIN (128,144,160) INPUT.MAX_SIZE_TRAIN 256 INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256 TEST.PRECISE_BN.NUM_ITER 50 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32 MODEL.RPN.POST_NMS_TOPK_TRAIN 150 MODEL.RPN.POST_NMS_TOPK_TEST 50 MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 7 DATALOADER.NUM_WORKERS 1"

# Every speed figure on one GPU in ~8 minutes (README "Performance"): output/gpu-check/report.{json,md}.
# GPU_CHECK_FLAGS=--smoke: the same code paths at tiny sizes, on any machine.
GPU_CHECK_FLAGS ?=
gpu-check: setup
	$(PY) transfer/gpu_check.py $(GPU_CHECK_FLAGS)

clean-demo:
	rm -rf output/demo output/demo-science
