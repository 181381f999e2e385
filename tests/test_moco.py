"""Unit tests of the MoCo core (builder, augmentations, kNN, schedule, flags) against the papers' numbers and
hand computations. CPU, tiny tensors; the training runs are in test_pretrain.py."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
import yaml
from PIL import Image, ImageFilter

from mocoeval.pretrain.augment import GaussianBlur, TwoCropsTransform, eval_transform, moco_transform
from mocoeval.pretrain.build import build_model, resolve_bn_splits
from mocoeval.pretrain.builder import (
    MoCo,
    SplitBatchNorm,
    contrastive_loss,
    contrastive_top1,
    key_spread,
    resnet_encoder,
    shuffle_batch,
    unshuffle_batch,
)
from mocoeval.pretrain.config import PretrainConfig, build_parser, parse_config, run_config
from mocoeval.pretrain.knn import backbone_of, knn_predict, reestimate_bn_statistics
from mocoeval.pretrain.residual_scaling import residual_branch_scales
from mocoeval.pretrain.step import lr_at_step
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.schedule import build_sgd, lr_at_epoch, sgd_implementation

REPO = Path(__file__).resolve().parents[1]


def linear_moco(dim=2, K=4, m=0.999, T=0.07, weight=None):
    """MoCo whose encoders are one bias-free Linear (per-sample, no BN): easy to compute by hand."""

    def enc():
        lin = nn.Linear(dim, dim, bias=False)
        if weight is not None:
            lin.weight.data.copy_(weight)
        return lin

    return MoCo(enc, dim=dim, K=K, m=m, T=T)


# ------------------------------------------------------------------ InfoNCE, queue, momentum


def test_infonce_matches_hand_computation():
    model = linear_moco(dim=2, K=2, T=0.5, weight=torch.eye(2))
    model.queue.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # negatives e1 and e2 (one per column)
    im_q = torch.tensor([[2.0, 0.0]])  # q = (1, 0) after normalisation
    im_k = torch.tensor([[3.0, 4.0]])  # k = (0.6, 0.8)
    logits = model(im_q, im_k)
    # l_pos = q.k = 0.6, l_neg = (q.e1, q.e2) = (1, 0); divided by T = 0.5
    assert torch.allclose(logits, torch.tensor([[1.2, 2.0, 0.0]]), atol=1e-6)
    expected = math.log(math.exp(1.2) + math.exp(2.0) + math.exp(0.0)) - 1.2
    assert contrastive_loss(logits).item() == pytest.approx(expected, abs=1e-6)
    assert contrastive_top1(logits).item() == 0.0  # a negative (2.0) beats the positive (1.2)
    assert contrastive_top1(torch.tensor([[3.0, 2.0, 0.0]])).item() == 1.0


def test_queue_starts_normalised_random():
    torch.manual_seed(0)
    model = linear_moco(dim=8, K=16)
    assert model.queue.shape == (8, 16)
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(16), atol=1e-6)
    assert model.queue_ptr.item() == 0 and model.queue_ptr.dtype == torch.long


def test_key_spread_is_one_for_uniform_keys_and_zero_for_collapsed_ones():
    torch.manual_seed(0)
    assert key_spread(F.normalize(torch.randn(128, 4096), dim=0)).item() == pytest.approx(1.0, abs=0.01)
    one_point = F.normalize(torch.randn(128, 1), dim=0).expand(128, 4096)
    assert key_spread(one_point).item() == pytest.approx(0.0, abs=1e-6)
    # a narrow cone: every key within ~0.1 rad of one direction -> spread ~0.1
    centre = F.normalize(torch.randn(128, 1), dim=0)
    cone = F.normalize(centre + 0.1 * F.normalize(torch.randn(128, 4096), dim=0), dim=0)
    assert 0.05 < key_spread(cone).item() < 0.15


def test_stage_grad_ratios_are_gradient_over_weight_norm_per_resnet_stage():
    from mocoeval.pretrain.step import GRAD_STAGES, stage_grad_ratios

    encoder = resnet_encoder("resnet18", 8, mlp=True)
    for p in encoder.parameters():
        p.grad = None
    with torch.no_grad():
        encoder.conv1.weight.fill_(1.0)  # stem: conv1 (1 x 9408) + bn1 (weight 1 x 64, bias 0 x 64)
        encoder.bn1.weight.fill_(1.0)
        encoder.bn1.bias.zero_()
    encoder.conv1.weight.grad = torch.full_like(encoder.conv1.weight, 0.5)
    encoder.bn1.weight.grad = torch.zeros_like(encoder.bn1.weight)
    encoder.fc[2].weight.grad = 3 * encoder.fc[2].weight.detach()  # tensors without a gradient do not count
    ratios = dict(zip(GRAD_STAGES, stage_grad_ratios(encoder).tolist()))
    assert ratios["stem"] == pytest.approx(0.5 * (9408 / (9408 + 64)) ** 0.5, rel=1e-5)
    assert ratios["fc"] == pytest.approx(3.0, rel=1e-5)
    assert all(np.isnan(ratios[s]) for s in ("layer1", "layer2", "layer3", "layer4"))  # no gradient there


def test_queue_pointer_wraps_and_holds_the_newest_keys():
    model = linear_moco(dim=3, K=8)
    k1, k2, k3 = (torch.randn(4, 3) for _ in range(3))
    model.dequeue_and_enqueue(k1)
    assert model.queue_ptr.item() == 4
    model.dequeue_and_enqueue(k2)
    assert model.queue_ptr.item() == 0  # wrapped around
    assert torch.equal(model.queue, torch.cat([k1, k2]).t())
    model.dequeue_and_enqueue(k3)  # overwrites the oldest keys only
    assert model.queue_ptr.item() == 4
    assert torch.equal(model.queue, torch.cat([k3, k2]).t())


def test_forward_enqueues_the_normalised_keys_of_two_steps():
    torch.manual_seed(0)
    w = torch.randn(3, 3)
    model = linear_moco(dim=3, K=4, m=0.0, weight=w)  # m = 0: f_k equals f_q, k = normalize(W x_k)
    x1, x2 = torch.randn(2, 3), torch.randn(2, 3)
    model(torch.randn(2, 3), x1)
    model(torch.randn(2, 3), x2)
    expected = F.normalize(torch.cat([x1, x2]) @ w.t(), dim=1).t()
    assert torch.allclose(model.queue, expected, atol=1e-6)
    assert model.queue_ptr.item() == 0


def test_momentum_update_value_and_bn_buffers_untouched():
    def enc():
        return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))

    model = MoCo(enc, dim=2, K=4, m=0.9)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    assert all(
        torch.equal(a, b) for a, b in zip(model.encoder_q.state_dict().values(), model.encoder_k.state_dict().values())
    )  # f_k = copy of f_q
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.fill_(1.0)
        for p in model.encoder_k.parameters():
            p.fill_(3.0)
        model.encoder_k[1].running_mean.fill_(5.0)
    model.momentum_update_key_encoder()
    for p in model.encoder_k.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.9 * 3.0 + 0.1 * 1.0), atol=1e-6)
    assert torch.equal(model.encoder_k[1].running_mean, torch.full((2,), 5.0))  # buffers are not averaged
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.encoder_q.parameters())


def test_gradients_reach_only_the_query_encoder():
    torch.manual_seed(0)
    model = linear_moco(dim=3, K=4)
    loss = contrastive_loss(model(torch.randn(2, 3), torch.randn(2, 3)))
    loss.backward()
    assert model.encoder_q.weight.grad is not None and model.encoder_q.weight.grad.abs().sum() > 0
    assert model.encoder_k.weight.grad is None


# ------------------------------------------------------------------ shuffling BN


def test_shuffle_unshuffle_round_trip():
    torch.manual_seed(0)
    x = torch.arange(16.0).view(8, 2)
    shuffled, unshuffle = shuffle_batch(x)
    assert not torch.equal(shuffled, x)
    assert torch.equal(shuffled[:, 0].sort().values, x[:, 0])  # a permutation of the samples
    assert torch.equal(unshuffle_batch(shuffled, unshuffle), x)
    xc = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    sc, u = shuffle_batch(xc)
    assert sc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(unshuffle_batch(sc, u), xc)


def test_split_bn_normalises_each_split_with_its_own_statistics():
    torch.manual_seed(0)
    bn = SplitBatchNorm(3, num_splits=2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    x[4:] += 10  # the second split has very different statistics
    xg = x.clone().requires_grad_(True)
    y = bn(xg)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = torch.cat(
        [
            F.batch_norm(x1[:4], None, None, bn.weight, bn.bias, training=True, eps=bn.eps),
            F.batch_norm(x2[4:], None, None, bn.weight, bn.bias, training=True, eps=bn.eps),
        ]
    )
    assert torch.allclose(y, ref, atol=1e-5)
    for half in (y[:4], y[4:]):  # each split on its own: per-channel mean = bias, std = weight
        assert torch.allclose(half.mean((0, 2, 3)), bn.bias, atol=1e-4)
        assert torch.allclose(half.var((0, 2, 3), unbiased=False).sqrt(), bn.weight, atol=1e-3)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    assert torch.allclose(xg.grad, x1.grad + x2.grad, atol=1e-5)
    # running stats: momentum 0.1 towards the mean over splits of each split's mean / unbiased variance
    means = torch.stack([x[:4].mean((0, 2, 3)), x[4:].mean((0, 2, 3))]).mean(0)
    vars_ = torch.stack([x[:4].var((0, 2, 3), unbiased=True), x[4:].var((0, 2, 3), unbiased=True)]).mean(0)
    assert torch.allclose(bn.running_mean, 0.1 * means, atol=1e-5)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * vars_, atol=1e-4)
    assert bn.num_batches_tracked.item() == 1
    # one split over the whole batch would differ a lot: the splits really are separate
    whole = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True)
    assert (whole - y).abs().max() > 0.5
    # channels_last input: same numbers, stays channels_last
    yc = bn(x.contiguous(memory_format=torch.channels_last))
    assert yc.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(yc, ref, atol=1e-5)
    # eval: plain BN with the running statistics
    bn.eval()
    ref_eval = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    assert torch.allclose(bn(x), ref_eval, atol=1e-6)


def test_resnet_encoder_heads_and_official_keys():
    enc = resnet_encoder("resnet50", 128, mlp=True, bn_splits=8)
    keys = enc.state_dict().keys()
    assert {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"} <= set(keys)
    assert enc.fc[0].in_features == 2048 and enc.fc[0].out_features == 2048 and enc.fc[2].out_features == 128
    assert isinstance(enc.fc[1], nn.ReLU) and len(enc.fc) == 3  # no BN in the v2 head
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == 53
    assert all(m.num_splits == 8 for m in enc.modules() if isinstance(m, SplitBatchNorm))
    v1 = resnet_encoder("resnet50", 128, mlp=False)
    assert v1.fc.in_features == 2048 and v1.fc.out_features == 128
    assert [k for k in v1.state_dict() if k.startswith("fc.")] == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 32, 32)
    enc.eval()
    assert backbone_of(enc)(x).shape == (2, 2048)
    # an earlier stage: the same modules up to it, pooled (layer3 of a ResNet-50 has 1024 channels)
    h = enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))
    h3 = enc.layer3(enc.layer2(enc.layer1(h)))
    assert torch.equal(backbone_of(enc, "layer3")(x), h3.mean((2, 3))) and h3.shape[1] == 1024
    assert torch.equal(backbone_of(enc)(x), torch.flatten(enc.avgpool(enc.layer4(h3)), 1))
    with pytest.raises(ValueError, match="stage must be one of"):
        backbone_of(enc, "fc")


def test_zero_init_residual_starts_every_block_as_the_identity_and_tames_early_gradients():
    """--zero-init-residual: every residual branch's last BN scale is 0 (both encoders: the key encoder is a copy),
    so each block passes its input on; the stem's first gradient shrinks by an order of magnitude (the
    lab notes' first-step table: 9.7 -> 0.39 at 64 px; here a smaller ResNet-50 problem of the same kind)."""
    from mocoeval.pretrain.step import GRAD_STAGES, stage_grad_ratios

    torch.manual_seed(0)
    zero = resnet_encoder("resnet50", 16, mlp=True, residual_bn_init=0.0)
    torch.manual_seed(0)
    torchvisions = torchvision.models.resnet50(num_classes=16, zero_init_residual=True).state_dict()
    assert all(torch.equal(v, torchvisions[k]) for k, v in zero.state_dict().items() if not k.startswith("fc."))
    blocks = [b for layer in (zero.layer1, zero.layer2, zero.layer3, zero.layer4) for b in layer]
    assert len(blocks) == 16 and all(torch.equal(b.bn3.weight, torch.zeros_like(b.bn3.weight)) for b in blocks)
    assert torch.equal(zero.bn1.weight, torch.ones(64))  # the stem and the other BN layers are as usual
    torch.manual_seed(0)
    plain = resnet_encoder("resnet50", 16, mlp=True)
    assert all(torch.equal(b.bn3.weight, torch.ones_like(b.bn3.weight)) for b in plain.layer1)
    torch.manual_seed(0)
    tenth = resnet_encoder("resnet50", 16, mlp=True, residual_bn_init=0.1)  # only those scales differ
    differ = {k for k, v in tenth.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    assert differ == {f"layer{i}.{j}.bn3.weight" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)}
    assert all(torch.allclose(b.bn3.weight, torch.full_like(b.bn3.weight, 0.1)) for b in tenth.layer4)

    def first_stem_ratio(encoder):
        torch.manual_seed(0)
        x = torch.randn(16, 3, 64, 64)
        out = F.normalize(encoder(x), dim=1)
        loss = -(out[:8] * out[8:]).sum(1).mean() + (out @ out.t()).mean()  # any loss that mixes the images
        loss.backward()
        return dict(zip(GRAD_STAGES, stage_grad_ratios(encoder).tolist()))["stem"]

    assert first_stem_ratio(zero) < first_stem_ratio(plain) / 5
    moco = build_model(
        PretrainConfig.defaults(
            arch="resnet18", moco_dim=8, mlp=False, moco_k=16, moco_m=0.99, moco_t=0.2, residual_bn_init=0.0
        )
    )
    assert torch.equal(moco.encoder_k.layer1[0].bn2.weight, torch.zeros(64))  # BasicBlock: bn2 is the last
    assert torch.equal(moco.encoder_q.layer4[1].bn2.weight, torch.zeros(512))
    # the readout of inspect_collapse.py: per stage, the mean |scale| of the branches' last BN
    assert residual_branch_scales(zero) == dict.fromkeys(("layer1", "layer2", "layer3", "layer4"), 0.0)
    assert residual_branch_scales(plain) == dict.fromkeys(("layer1", "layer2", "layer3", "layer4"), 1.0)
    with torch.no_grad():
        moco.encoder_q.layer3[0].bn2.weight.fill_(-0.5)  # a sign flip is as loud: |scale|
        moco.encoder_q.layer3[1].bn2.weight[:128].fill_(1.0)
    assert residual_branch_scales(moco.encoder_q)["layer3"] == pytest.approx((0.5 + 0.5) / 2)


def test_bn_splits_default_emulates_eight_gpus_of_32():
    assert resolve_bn_splits(0, 256, 1) == 8  # 256 images on one GPU: like 8 GPUs x 32
    assert resolve_bn_splits(0, 128, 1) == 4
    assert resolve_bn_splits(0, 32, 1) == 2  # never one BN group in a single process
    assert resolve_bn_splits(0, 32, 8) == 1  # torchrun, 32 per GPU: the real shuffle BN does it
    assert resolve_bn_splits(4, 32, 1) == 4
    with pytest.raises(UserError, match="--bn-splits 5"):
        resolve_bn_splits(5, 32, 1)


# ------------------------------------------------------------------ augmentations: the protocol's numbers, in order


def _ops(compose):
    return compose.transforms


def test_v1_augmentation_parameters_and_order():
    ops = _ops(moco_transform(224, aug_plus=False))
    assert [type(o) for o in ops] == [
        T.RandomResizedCrop,
        T.RandomGrayscale,
        T.ColorJitter,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    rrc, gray, jitter, flip, _, norm = ops
    assert rrc.size == (224, 224) and rrc.scale == (0.2, 1.0)
    assert rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    assert gray.p == 0.2
    assert jitter.brightness == pytest.approx((0.6, 1.4)) and jitter.contrast == pytest.approx((0.6, 1.4))
    assert jitter.saturation == pytest.approx((0.6, 1.4)) and jitter.hue == pytest.approx((-0.4, 0.4))
    assert flip.p == 0.5
    assert tuple(norm.mean) == (0.485, 0.456, 0.406) and tuple(norm.std) == (0.229, 0.224, 0.225)


def test_aug_plus_parameters_and_order():
    ops = _ops(moco_transform(64, aug_plus=True))
    assert [type(o) for o in ops] == [
        T.RandomResizedCrop,
        T.RandomApply,
        T.RandomGrayscale,
        T.RandomApply,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    rrc, jitter_apply, gray, blur_apply, flip, _, norm = ops
    assert rrc.size == (64, 64) and rrc.scale == (0.2, 1.0)
    assert jitter_apply.p == 0.8 and len(jitter_apply.transforms) == 1
    jitter = jitter_apply.transforms[0]
    assert isinstance(jitter, T.ColorJitter)
    assert jitter.brightness == pytest.approx((0.6, 1.4)) and jitter.contrast == pytest.approx((0.6, 1.4))
    assert jitter.saturation == pytest.approx((0.6, 1.4)) and jitter.hue == pytest.approx((-0.1, 0.1))
    assert gray.p == 0.2
    assert blur_apply.p == 0.5 and isinstance(blur_apply.transforms[0], GaussianBlur)
    assert blur_apply.transforms[0].sigma == (0.1, 2.0)
    assert flip.p == 0.5
    assert tuple(norm.mean) == (0.485, 0.456, 0.406) and tuple(norm.std) == (0.229, 0.224, 0.225)


def test_gaussian_blur_draws_sigma_uniformly_in_range():
    img = Image.fromarray((torch.rand(24, 24, 3) * 255).to(torch.uint8).numpy())
    blur = GaussianBlur((0.1, 2.0))
    torch.manual_seed(3)
    u = torch.rand(()).item()
    torch.manual_seed(3)
    out = blur(img)
    expected = img.filter(ImageFilter.GaussianBlur(radius=0.1 + 1.9 * u))
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_two_crops_gives_two_different_views_of_the_right_size():
    img = Image.fromarray((torch.rand(40, 50, 3) * 255).to(torch.uint8).numpy())
    torch.manual_seed(0)
    q, k = TwoCropsTransform(moco_transform(32, aug_plus=True))(img)
    assert q.shape == k.shape == (3, 32, 32)
    assert not torch.equal(q, k)
    assert eval_transform(32)(img).shape == (3, 32, 32)


# ------------------------------------------------------------------ kNN monitor


def test_reestimated_bn_statistics_are_the_average_over_the_batches():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), SplitBatchNorm(4, num_splits=2)).eval()
    batches = [(torch.randn(4, 3, 8, 8) * (i + 1) + i, torch.zeros(4)) for i in range(3)]
    reestimate_bn_statistics(model, batches, torch.device("cpu"))
    with torch.no_grad():
        acts = [conv(x) for x, _ in batches]
    # the first BN sees the conv outputs: per-batch mean and unbiased variance over (N, H, W), averaged
    assert torch.allclose(model[1].running_mean, torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, torch.stack([a.var((0, 2, 3)) for a in acts]).mean(0), atol=1e-4)
    assert model[1].momentum == 0.3 and model[3].momentum == 0.1 and not model.training  # put back
    assert int(model[3].num_batches_tracked) == 3 and model[3].running_var.ne(1).all()


def test_knn_weights_votes_by_similarity():
    def unit(deg):
        return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))])

    train = torch.stack([unit(8), unit(60), unit(63)])  # cos sims with the test point: 0.99, 0.50, 0.45
    labels = torch.tensor([0, 1, 1])
    test = unit(0)[None]
    # T 0.1: exp(9.9) > exp(5.0) + exp(4.5) -> class 0, although class 1 has the majority of the 3 neighbours
    assert knn_predict(test, train, labels, num_classes=2, k=3, t=0.1).item() == 0
    # T 10: weights nearly equal -> the majority wins
    assert knn_predict(test, train, labels, num_classes=2, k=3, t=10.0).item() == 1
    # k larger than the bank is clipped; k = 1 is the nearest neighbour
    assert knn_predict(test, train, labels, num_classes=2, k=200, t=0.1).item() == 0
    assert knn_predict(unit(61)[None], train, labels, num_classes=2, k=1).item() == 1


# ------------------------------------------------------------------ schedule and flags


def test_lr_schedules():
    args = PretrainConfig.defaults("d")
    assert [args.epoch_lr(e) for e in (0, 119, 120, 159, 160, 199)] == pytest.approx(
        [0.03, 0.03, 0.003, 0.003, 0.0003, 0.0003]
    )
    args.cos = True
    assert args.epoch_lr(0) == pytest.approx(0.03)
    assert args.epoch_lr(100) == pytest.approx(0.015)
    assert args.epoch_lr(150) == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    # the shared schedule, as the linear protocol uses it: x0.1 at epochs 60 and 80 (0-based), bit for bit
    assert [lr_at_epoch(30.0, e, schedule=[60, 80]) for e in (0, 59, 60, 80, 99)] == [
        30.0,
        30.0,
        30.0 * 0.1**1,
        30.0 * 0.1**2,
        30.0 * 0.1**2,
    ]
    assert lr_at_epoch(1.0, 5, schedule=[2, 4], decay=0.5) == 0.25
    assert lr_at_epoch(0.03, 150, epochs=200, cos=True, schedule=[120]) == 0.03 * 0.5 * (
        1.0 + math.cos(math.pi * 150 / 200)
    )  # cosine ignores the milestones


def test_sgd_is_fused_on_cpu_with_the_default_implementations_steps():
    """build_sgd with a device takes torch's fused kernel where it runs (this torch has one for the CPU); its
    steps (momentum, weight decay, changing lr) are the default implementation's; without a device: the default."""
    torch.manual_seed(0)
    shapes = [(64, 3, 7, 7), (64,), (2048, 128), (1,)]
    params = {impl: [torch.randn(s).requires_grad_() for s in shapes] for impl in ("default", "fused")}
    for a, b in zip(*params.values()):
        b.data.copy_(a.data)
    start = [p.detach().clone() for p in params["default"]]
    fused = build_sgd(params["fused"], 0.03, momentum=0.9, weight_decay=1e-4, device=torch.device("cpu"))
    default = build_sgd(params["default"], 0.03, momentum=0.9, weight_decay=1e-4)
    assert fused.param_groups[0]["fused"] is True and sgd_implementation(torch.device("cpu"))["fused"] is True
    assert not default.param_groups[0]["fused"]
    for step in range(6):
        grads = [torch.randn(s) for s in shapes]
        for opt in (fused, default):
            opt.param_groups[0]["lr"] = 0.03 * 0.5**step
            for p, g in zip(opt.param_groups[0]["params"], grads):
                p.grad = g.clone()
            opt.step()
    for a, b, a0 in zip(params["default"], params["fused"], start):
        assert (a - a0).abs().max() > 1e-3  # the steps moved the weights
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_warmup_ramps_linearly_per_step_then_follows_the_schedule(tmp_path):
    args = PretrainConfig.defaults("d", cos=True, epochs=10)
    assert args.warmup_epochs == 0  # the recipe has none: every step takes the epoch's lr
    assert [lr_at_step(args, e, s, 4) for e in (0, 3) for s in range(4)] == [
        args.epoch_lr(e) for e in (0, 3) for _ in range(4)
    ]
    args.warmup_epochs = 2
    ramp = [lr_at_step(args, e, s, 4) for e in range(3) for s in range(4)]
    # 8 warm-up steps: step i (1-based) gets i/8 of its epoch's scheduled lr, the first one already > 0
    assert ramp[:8] == pytest.approx([args.epoch_lr(i // 4) * (i + 1) / 8 for i in range(8)])
    assert ramp[8:] == pytest.approx([args.epoch_lr(2)] * 4)
    args.warmup_epochs = 0.5  # fractional: two steps of the first epoch
    assert [lr_at_step(args, 0, s, 4) for s in range(4)] == pytest.approx([0.015, 0.03, 0.03, 0.03])
    with pytest.raises(UserError, match="--warmup-epochs must be between 0 and --epochs 10, got 11"):
        parse_config([str(tmp_path), "--epochs", "10", "--warmup-epochs", "11"])
    with pytest.raises(UserError, match="--residual-bn-init must be between 0 and 1, got 1.5"):
        parse_config([str(tmp_path), "--residual-bn-init", "1.5"])


def test_flag_defaults_are_the_official_ones():
    a = build_parser().parse_args(["DATA"])
    assert (a.arch, a.lr, a.batch_size, a.epochs, a.schedule, a.momentum, a.weight_decay) == (
        "resnet50",
        0.03,
        256,
        200,
        [120, 160],
        0.9,
        1e-4,
    )
    assert (a.moco_dim, a.moco_k, a.moco_m, a.moco_t, a.mlp, a.aug_plus, a.cos) == (
        128,
        65536,
        0.999,
        0.07,
        False,
        False,
        False,
    )
    assert a.image_size == 224 and a.precision == "fp32" and a.print_freq == 10
    assert a.warmup_epochs == 0 and a.residual_bn_init == 1.0  # extensions are off: torchvision's init
    assert build_parser().parse_args(["DATA", "--zero-init-residual"]).residual_bn_init == 0.0


@pytest.mark.parametrize(
    "name,mlp,aug,cos,t,epochs",
    [
        ("moco_v1", False, False, False, 0.07, 200),
        ("a", True, False, False, 0.2, 200),
        ("b", False, True, False, 0.07, 200),
        ("c", True, True, False, 0.2, 200),
        ("d", True, True, True, 0.2, 200),
        ("e", True, True, True, 0.2, 800),
    ],
)
def test_presets_are_the_paper_rows(name, mlp, aug, cos, t, epochs, tmp_path):
    cfg_file = REPO / "configs" / "pretrain" / f"{name}.yaml"
    args, ckpt = parse_config([str(tmp_path), "--config", str(cfg_file)])
    assert ckpt is None
    assert (args.mlp, args.aug_plus, args.cos, args.moco_t, args.epochs) == (mlp, aug, cos, t, epochs)
    assert (args.arch, args.lr, args.batch_size, args.moco_k, args.moco_m, args.moco_dim) == (
        "resnet50",
        0.03,
        256,
        65536,
        0.999,
        128,
    )
    assert (args.momentum, args.weight_decay, args.schedule, args.image_size) == (0.9, 1e-4, [120, 160], 224)
    from mocoeval.results.store import pretrain_variant

    assert pretrain_variant(vars(args)).name == name
    assert args.output_dir == str(Path("output") / "pretrain" / name)


def test_config_fields_are_the_flags_and_run_config_stores_them_as_before(tmp_path):
    """Checkpoints and run records store the argparse dest names (less --config): old ones resume, new ones
    read back in older code."""
    ns = build_parser().parse_args([str(tmp_path), "--config", "x.yaml"])
    cfg, _ = parse_config([str(tmp_path), "--seed", "3"])
    assert list(vars(ns)) == [f.name for f in dataclasses.fields(PretrainConfig)]
    stored = run_config(cfg, bn_splits=2, world_size=1)
    assert set(stored) == (set(vars(ns)) - {"config"}) | {"bn_splits_effective", "world_size"}
    assert stored["seed"] == 3 and stored["bn_splits_effective"] == 2 and stored["schedule"] == [120, 160]


def test_a_global_batch_the_processes_cannot_share_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it
    with pytest.raises(UserError, match="--batch-size 256 is not divisible by the 3 processes"):
        parse_config([str(tmp_path)])


def test_explicit_flags_win_over_the_config(tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(yaml.safe_dump({"moco-k": 4096, "batch_size": 64, "mlp": True, "lr": 0.06}))
    args, _ = parse_config([str(tmp_path), "--config", str(cfg), "--lr", "0.01", "--no-mlp"])
    assert (args.moco_k, args.batch_size, args.mlp, args.lr) == (4096, 64, False, 0.01)


@pytest.mark.parametrize(
    "content,match",
    [
        ({"moco_q": 3}, "unknown key 'moco_q'"),
        ({"batch_size": "many"}, "bad value 'many'"),
        ({"mlp": "yes"}, "expected true or false"),
        ({"arch": "vgg16"}, "choose from"),
        ("- a list", "must be a mapping"),
    ],
)
def test_bad_config_files(tmp_path, content, match):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(UserError, match=match):
        parse_config([str(tmp_path), "--config", str(cfg)])


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--moco-k", "1000", "-b", "256"], "not divisible by the \\(global\\) --batch-size 256"),
        (["--moco-m", "1.0"], "--moco-m"),
        (["--epochs", "0"], "--epochs"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["--resume", "/nonexistent.pth.tar"], "checkpoint not found: /nonexistent.pth.tar"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, argv, match):
    with pytest.raises(UserError, match=match) as e:
        parse_config([str(tmp_path)] + argv)
    assert "\n" not in str(e.value)


def test_resume_rejects_files_that_are_not_moco_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="garbage.pth.tar: not a PyTorch checkpoint"):
        parse_config([str(tmp_path), "--resume", str(garbage)])
    tv = tmp_path / "torchvision.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 1, "optimizer": {}}, tv)
    with pytest.raises(UserError, match="not a MoCo pretraining checkpoint"):
        parse_config([str(tmp_path), "--resume", str(tv)])
    no_opt = tmp_path / "no_opt.pth.tar"
    torch.save(
        {
            "state_dict": {
                "module.encoder_q.a": torch.zeros(1),
                "module.encoder_k.a": torch.zeros(1),
                "module.queue": torch.zeros(4, 8),
                "module.queue_ptr": torch.zeros(1),
            }
        },
        no_opt,
    )
    with pytest.raises(UserError, match="cannot be resumed: it has no epoch or optimizer"):
        parse_config([str(tmp_path), "--resume", str(no_opt)])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_split_bn_cpu_kernel_path_matches_per_split_batch_norm(channels_last, dtype):
    """The CPU path writes every split into one output through ATen's out= kernels; forward, input and
    parameter gradients and running statistics equal per-split F.batch_norm + cat (four splits)."""
    torch.manual_seed(0)
    bn = SplitBatchNorm(8, num_splits=4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    weight, bias = bn.weight.detach().clone().requires_grad_(), bn.bias.detach().clone().requires_grad_()
    x = torch.randn(16, 8, 5, 5) * 3 + torch.arange(16).view(16, 1, 1, 1)  # splits with different statistics
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    means, variances = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        xa_in, xb_in = (t.to(dtype) for t in (xa, xb))
        y = bn(xa_in)
        ref_parts = []
        for c in xb_in.chunk(4):
            m, v = torch.zeros(8), torch.ones(8)
            ref_parts.append(F.batch_norm(c, m, v, weight, bias, True, 0.1, bn.eps))
            means.append(m)
            variances.append(v)
        ref = torch.cat(ref_parts)
    assert y.dtype == ref.dtype and y.is_contiguous(memory_format=x_format(channels_last))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(y.float(), ref.float(), atol=tol)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=tol * 10)
    assert torch.allclose(bn.weight.grad, weight.grad, atol=1e-4) and torch.allclose(bn.bias.grad, bias.grad, atol=1e-4)
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack(variances).mean(0), atol=1e-4)


def x_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format
