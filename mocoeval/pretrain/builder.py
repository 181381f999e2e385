"""The MoCo model (He et al. 2020, Algorithm 1; MoCo v2: Chen et al. 2020), written to read beside the paper.

    f_k.params = f_q.params                      -> encoder_k starts as a copy of encoder_q, no gradients
    q = f_q(x_q); k = f_k(x_k) (no grad)         -> keys come from a shuffled batch (shuffling BN, below)
    l_pos = q . k        (N x 1)
    l_neg = q . queue    (N x K)
    logits = [l_pos, l_neg] / t; label 0         -> InfoNCE = cross-entropy with the positive at index 0
    f_k.params = m * f_k.params + (1 - m) * f_q.params
    enqueue(k); dequeue oldest

As in the official implementation the momentum update runs before the keys are computed (the same
sequence of updates, shifted by one step). Every step runs without a host synchronisation: the queue
pointer lives on the device and the momentum update is one `torch._foreach_lerp_` call.

Shuffling BN. BatchNorm statistics computed over one device's batch let the model recognise "keys of the
current batch" and cheat the pretext task. The paper's remedy: compute the keys on a batch shuffled across
GPUs, so a query and its positive key are normalised with different sub-batches. With several processes we
do exactly that (gather, permutation from rank 0, unshuffle). On one device we emulate the GPUs with
`SplitBatchNorm` in both encoders: every BN layer normalises `num_splits` consecutive sub-batches with their
own statistics (as each GPU normalises its own queries), and the key batch is randomly permuted before it is
split (as the keys are shuffled across GPUs) -- the official scheme on `num_splits` GPUs.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from mocoeval.pretrain.residual_scaling import set_residual_branch_scales


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises `num_splits` consecutive sub-batches separately, each with
    its own statistics, as if each sat on its own GPU.

    Same parameters and buffers as nn.BatchNorm2d (checkpoints keep torchvision's keys). The running
    statistics move towards the mean over sub-batches of each sub-batch's mean and unbiased variance. In
    eval mode, or with one split, it is plain BatchNorm2d. On CPU the sub-batches are normalised into one
    output tensor in eager mode (`_SplitBatchNormCPU`): concatenating per-split outputs cost ~7% of a ResNet-50 step
    there.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = int(num_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        if x.shape[0] % s:
            raise ValueError(f"SplitBatchNorm: batch {x.shape[0]} is not divisible by num_splits {s}")
        if not self.track_running_stats:
            return torch.cat(
                [F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps) for c in x.chunk(s)]
            )
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        # Every split moves its own copy of the running statistics; the update being linear, the mean of the
        # copies is the update towards the mean of the sub-batch statistics.
        means = [self.running_mean.clone() for _ in range(s)]
        variances = [self.running_var.clone() for _ in range(s)]
        if x.device.type == "cpu" and self.affine and not torch.compiler.is_compiling():  # compiled: inductor fuses
            out = _SplitBatchNormCPU.apply(x, self.weight, self.bias, means, variances, factor, self.eps)
        else:  # chunks of the batch dim are views in any memory format
            chunks = zip(x.chunk(s), means, variances)
            out = torch.cat(
                [F.batch_norm(c, m, v, self.weight, self.bias, True, factor, self.eps) for c, m, v in chunks]
            )
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return out


class _SplitBatchNormCPU(torch.autograd.Function):
    """Training-mode batch norm of consecutive sub-batches written straight into one output (and, backwards,
    one input gradient) through ATen's out= kernels: the same kernels F.batch_norm runs on CPU, without the
    concatenation. `means` / `variances` (one copy of the running statistics per split) are updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, means, variances, momentum, eps):
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        out = torch.empty_like(x, memory_format=fmt)
        stat_dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        saved = []
        for xc, oc, mean, var in zip(x.chunk(len(means)), out.chunk(len(means)), means, variances):
            save_mean = torch.empty(x.shape[1], dtype=stat_dtype)
            save_invstd = torch.empty(x.shape[1], dtype=stat_dtype)
            torch.ops.aten.native_batch_norm.out(
                xc, weight, bias, mean, var, True, momentum, eps, out=oc, save_mean=save_mean, save_invstd=save_invstd
            )
            saved += [save_mean, save_invstd]
        ctx.save_for_backward(x, weight, *saved)
        ctx.fmt, ctx.eps = fmt, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, *saved = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=ctx.fmt)
        grad_in = torch.empty_like(x, memory_format=ctx.fmt)
        grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(weight)
        part_weight, part_bias = torch.empty_like(weight), torch.empty_like(weight)
        splits = len(saved) // 2
        for i, (go, xc, gi) in enumerate(zip(grad_out.chunk(splits), x.chunk(splits), grad_in.chunk(splits))):
            torch.ops.aten.native_batch_norm_backward.out(
                go, xc, weight, None, None, saved[2 * i], saved[2 * i + 1], True, ctx.eps, [True, True, True],
                out0=gi, out1=part_weight, out2=part_bias,
            )  # fmt: skip
            grad_weight += part_weight
            grad_bias += part_bias
        return grad_in, grad_weight, grad_bias, None, None, None, None


def resnet_encoder(arch: str, dim: int, mlp: bool, bn_splits: int = 1, residual_bn_init: float = 1.0) -> nn.Module:
    """A torchvision ResNet whose `fc` is the MoCo projection: Linear(d, dim), or with `mlp` (MoCo v2)
    Sequential(Linear(d, d), ReLU, Linear(d, dim)) -> keys fc.0.*, fc.2.* as in the official checkpoints.
    `residual_bn_init` is where the last BN scale of every residual branch starts: 1 is torchvision's init (the
    MoCo recipe), 0 torchvision's zero_init_residual (each block starts as the identity; Goyal et al. 2017)."""
    norm_layer = functools.partial(SplitBatchNorm, num_splits=bn_splits)
    encoder = torchvision.models.__dict__[arch](weights=None, num_classes=dim, norm_layer=norm_layer)
    set_residual_branch_scales(encoder, residual_bn_init)
    if mlp:
        d = encoder.fc.in_features
        encoder.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), encoder.fc)
    return encoder


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and queue. `forward(im_q, im_k)` returns the (N, 1+K) logits
    (positives in column 0) and updates the key encoder and the queue as side effects."""

    def __init__(self, encoder_fn, dim: int = 128, K: int = 65536, m: float = 0.999, T: float = 0.07):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = encoder_fn()
        self.encoder_k = encoder_fn()
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        self.encoder_k.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))  # one key per column
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update_key_encoder(self):
        """theta_k <- m * theta_k + (1 - m) * theta_q, parameters only (BN buffers follow their own batches)."""
        params_k = list(self.encoder_k.parameters())
        params_q = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_lerp_(params_k, params_q, 1.0 - self.m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor):
        """Write the (globally gathered) keys over the oldest columns; the pointer stays on the device."""
        keys = gather_from_all(keys)
        columns = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
        self.queue.index_copy_(1, columns, keys.t().to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.K)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        q = self.encoder_q(im_q)
        with torch.no_grad():
            self.momentum_update_key_encoder()
            im_k, unshuffle = shuffle_batch(im_k)
            k = unshuffle_batch(self.encoder_k(im_k), unshuffle)
        # The contrastive head runs in float32 even under autocast: logits of size 1/T need the precision.
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = F.normalize(q.float(), dim=1)
            k = F.normalize(k.float(), dim=1)
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ self.queue.clone()  # clone: the queue is overwritten below, backward needs this copy
            logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        self.dequeue_and_enqueue(k)
        return logits


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE: cross-entropy of the (N, 1+K) logits with the positive key at index 0."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def contrastive_top1(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of queries whose positive key wins the (1+K)-way classification (a device tensor)."""
    return (logits.argmax(dim=1) == 0).float().mean()


@torch.no_grad()
def key_spread(queue: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: per-dimension std of the queued (unit-norm) keys, averaged, times sqrt(dim).
    About 1 for keys spread uniformly over the sphere (the random initial queue), near 0 when the projection
    maps every image to almost the same point -- a collapse in which the loss sits near ln(K+1) while the
    contrastive top-1 can still be high (the fresh positive beats slightly older queue keys). A device tensor."""
    return queue.float().std(dim=1).mean() * queue.shape[0] ** 0.5


# ---- shuffling BN across processes (one process: a random permutation, the split BN does the rest) ----


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather_from_all(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0 (identity without a process group). No gradient."""
    if _world() == 1:
        return x
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(_world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def shuffle_batch(x: torch.Tensor):
    """This process's share of the globally permuted batch, and the indices that undo the permutation."""
    x_all = gather_from_all(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    if _world() > 1:
        dist.broadcast(perm, src=0)  # every process must use rank 0's permutation
    chunk = slice(dist.get_rank() * x.shape[0], (dist.get_rank() + 1) * x.shape[0]) if _world() > 1 else slice(None)
    x_shuffled = x_all[perm[chunk]]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        x_shuffled = x_shuffled.contiguous(memory_format=torch.channels_last)
    return x_shuffled, torch.argsort(perm)[chunk]


@torch.no_grad()
def unshuffle_batch(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of `shuffle_batch`: gather the outputs and take back this process's original samples."""
    return gather_from_all(x)[unshuffle]
