"""Pixel attribution: Integrated Gradients, SmoothGrad, occlusion and RISE, batched over images and classes.

Every public function takes images x [N, C, H, W] and class indices [N] or [N, K] (grad_cam's batching)
and returns maps [N, H, W] or [N, K, H, W], each scaled to [0, 1]; the `*_attributions` functions
return the raw attributions before that reduction (what the tests compare with captum). The model is
left exactly as found (auditor.nn.restore.audit_mode), also when a call raises, and no hook is added.

- The gradient methods (integrated_gradients, smooth_grad) send every (image, path step or noise sample)
  job through the model `batch_size` at a time, and take all K classes' input gradients of a batch in
  one batched backward (is_grads_batched), with respect to the input only: no parameter gradient is
  ever formed. A model whose output does not depend differentiably on its input raises GradientsUnavailable.
- The forward-only methods (occlusion, rise) need no autograd at all: they run under inference_mode
  with the BatchNorms folded into their convolutions (auditor.nn.folding), read only the target
  columns of each forward pass (so K classes cost no more passes than one), and work on any model that
  maps images to class scores, TorchScript (scripted or traced) included.

`target` chooses the score: "logit" (captum's convention) or "prob", `head`'s probability (softmax,
or a sigmoid per output), which RISE uses by default as its paper does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.heads import SOFTMAX, Head
from auditor.nn.folding import folded_batch_norms
from auditor.nn.restore import audit_mode
from auditor.techniques.class_targets import check_class_scores, target_columns
from auditor.techniques.reconstructions import gradient_saliency
from auditor.techniques.tensor_ops import minmax

__all__ = ["GradientsUnavailable", "integrated_gradients", "integrated_gradients_attributions", "occlusion",
           "occlusion_attributions", "rise", "rise_masks", "rise_saliency", "smooth_grad", "smooth_grad_attributions",
           "smooth_grad_noise"]

Target = Literal["logit", "prob"]
Baseline = float | torch.Tensor


class GradientsUnavailable(AuditorError):
    """The model's scores carry no usable gradient with respect to its input (its forward detaches,
    runs under no_grad, or is a TorchScript model that does so): gradient methods cannot serve it;
    occlusion and RISE can."""


# ---------------------------------------------------------------------------------------------- public maps

def integrated_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, steps: int = 32,
                         baseline: Baseline | None = None, *, batch_size: int = 64, target: Target = "logit",
                         head: Head = SOFTMAX) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017) maps [N(,K),H,W]: largest |attribution| over
    channels, min-max scaled (gradient_saliency's rule, so the maps compare with the other gradient maps).

    Reference: captum's IntegratedGradients with its default method="gausslegendre": the same `steps`
    (captum's n_steps) gives the same nodes and weights, hence the same numbers up to float rounding.
    Baseline None is zeros, as in captum. captum's default is 50 steps; 32 cost two thirds of that, and
    completeness (the attributions sum to score(x) - score(baseline)) shows whether they are enough.
    """
    attributions = integrated_gradients_attributions(model, x, targets, steps, baseline, batch_size=batch_size,
                                                     target=target, head=head)
    return _as_given(gradient_saliency(attributions), targets)


def smooth_grad(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, samples: int = 16, noise: float = 0.15,
                seed: int = 0, *, squared: bool = False, batch_size: int = 64, target: Target = "logit",
                head: Head = SOFTMAX) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017) maps [N(,K),H,W]: the input gradient averaged over `samples`
    noisy copies of each image, reduced by gradient_saliency's rule (largest |value| over channels, min-max).

    `noise` is the paper's noise level: sigma = noise * (max - min) of each image (0.15 is in the
    paper's recommended 10-20 %); `squared` gives SmoothGrad² (the mean of squared gradients, captum's
    nt_type="smoothgrad_sq"). Reference: captum's NoiseTunnel(Saliency(model)) with abs=False, which
    takes one absolute sigma (`stdevs`) for all images; the noise comes from smooth_grad_noise, so
    the global RNG is untouched and a seed gives the same noise on any device. noise=0 is the plain
    gradient (one sample is taken, since all would be equal).
    """
    drawn = smooth_grad_noise(x, 1 if noise == 0 else samples, noise, seed)
    attributions = smooth_grad_attributions(model, x, targets, drawn, squared=squared, batch_size=batch_size,
                                            target=target, head=head)
    return _as_given(gradient_saliency(attributions), targets)


def occlusion(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, window: int | None = None,
              stride: int | None = None, baseline: Baseline = 0.0, *, batch_size: int = 64, target: Target = "logit",
              head: Head = SOFTMAX) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014) maps [N(,K),H,W]: the positive part of occlusion_attributions,
    min-max scaled: where hiding the pixels lowers the score, as Grad-CAM keeps only positive evidence
    (ReLU, then min-max). Where hiding raises the score the map is 0; read the signed raw map for that.

    Defaults, relative to the input: window = 1/8 of the shorter side (28 px at 224, 4 at 32), stride
    half the window, so every pixel is covered by about four windows and an image costs about 15 x 15
    forward passes whatever its size.
    """
    attributions = occlusion_attributions(model, x, targets, window, stride, baseline, batch_size=batch_size,
                                          target=target, head=head)
    return _as_given(minmax(attributions.relu()), targets)


def rise(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, masks: int = 1000, cell: int = 7,
         p: float = 0.5, seed: int = 0, *, batch_size: int = 64, target: Target = "prob",
         head: Head = SOFTMAX) -> torch.Tensor:
    """RISE (Petsiuk et al. 2018) maps [N(,K),H,W]: rise_saliency, min-max scaled.

    `masks` random `cell` x `cell` grids (RISE's N and s), each cell on with probability `p` (p1).
    The paper uses 4000 masks of 7 x 7 cells on ImageNet; the default 1000 keeps a 224 px image to
    about 1000 forward passes on the CPU; the Monte Carlo noise falls as 1 / sqrt(masks), so it is twice
    the paper's: raise `masks` when time allows. Scores are the head's probabilities by default, as RISE uses the softmax.
    """
    saliency = rise_saliency(model, x, targets, masks, cell, p, seed, batch_size=batch_size, target=target,
                             head=head)
    return _as_given(minmax(saliency), targets)


# ------------------------------------------------------------------------------------ raw attributions

def integrated_gradients_attributions(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, steps: int = 32,
                                      baseline: Baseline | None = None, *, batch_size: int = 64,
                                      target: Target = "logit", head: Head = SOFTMAX) -> torch.Tensor:
    """Integrated Gradients [N, K, C, H, W]: (x - baseline) times the Gauss-Legendre quadrature of the
    gradient along the straight path from the baseline to x, captum's default quadrature (see
    integrated_gradients). All steps x images go through the model `batch_size` at a time.

    Differs from captum only in batching (captum runs steps x images in one pass unless given
    internal_batch_size) and in summation order, so results agree to float rounding; K classes share
    each forward pass here, where captum needs one call per class.
    """
    if steps < 1:
        raise AuditorError(f"integrated gradients: {steps} steps is not possible; use 1 or more")
    columns = _targets(targets, x)
    base = _baseline(baseline, x)
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # captum's gauss_legendre_builders
    alphas = torch.tensor(0.5 * (1 + nodes), dtype=x.dtype, device=x.device)
    step_weights = torch.tensor(0.5 * weights, dtype=x.dtype, device=x.device)
    difference = x.detach() - base

    def points(jobs: torch.Tensor) -> torch.Tensor:
        image, step = jobs // steps, jobs % steps
        return base[image] + alphas[step].view(-1, 1, 1, 1) * difference[image]

    summed = _summed_gradients(model, x, columns, points, steps, lambda jobs: step_weights[jobs % steps],
                               squared=False, batch_size=batch_size, target=target, head=head,
                               method="integrated gradients")
    return summed * difference[:, None]


def smooth_grad_noise(x: torch.Tensor, samples: int = 16, noise: float = 0.15, seed: int = 0) -> torch.Tensor:
    """SmoothGrad's noise [N, samples, C, H, W] on x's device: Gaussian with sigma = noise * (max - min)
    of each image, drawn on the CPU from its own generator (the same seed gives the same noise anywhere).
    Every image takes the same standard draw, scaled by its own sigma: an image's noise does not depend on
    which images share its batch (the trust section explains a block of images with the noise the attribution
    section gave each alone)."""
    if samples < 1 or noise < 0:
        raise AuditorError(f"smooth grad: need samples >= 1 and noise >= 0, not {samples} and {noise}")
    flat = x.detach().flatten(1)
    sigma = (noise * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, 1, 1, 1, 1).cpu().float()
    generator = torch.Generator().manual_seed(seed)
    standard = torch.randn((1, samples, *x.shape[1:]), generator=generator)
    return (standard * sigma).to(device=x.device, dtype=x.dtype)


def smooth_grad_attributions(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, noise: torch.Tensor, *,
                             squared: bool = False, batch_size: int = 64, target: Target = "logit",
                             head: Head = SOFTMAX) -> torch.Tensor:
    """SmoothGrad [N, K, C, H, W]: the mean over samples s of the input gradient (squared if `squared`)
    at x[n] + noise[n, s], for noise [N, S, C, H, W] (smooth_grad_noise, or any noise to compare with).

    captum's NoiseTunnel(Saliency(model), abs=False) computes the same given the same noise tensor
    (it orders its noisy copies image by image, as noise.flatten(0, 1) does).
    """
    if noise.ndim != x.ndim + 1 or noise.shape[0] != x.shape[0] or noise.shape[2:] != x.shape[1:]:
        raise AuditorError(f"smooth grad: noise must be [N, samples, C, H, W] for x {tuple(x.shape)}, "
                           f"not {tuple(noise.shape)}")
    columns = _targets(targets, x)
    samples = noise.shape[1]
    flat_noise = noise.to(x.device, x.dtype).flatten(0, 1)
    clean = x.detach()

    def points(jobs: torch.Tensor) -> torch.Tensor:
        return clean[jobs // samples] + flat_noise[jobs]

    share = torch.tensor(1 / samples, dtype=x.dtype, device=x.device)
    return _summed_gradients(model, x, columns, points, samples, lambda jobs: share.expand(len(jobs)),
                             squared=squared, batch_size=batch_size, target=target, head=head, method="smooth grad")


def occlusion_attributions(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, window: int | None = None,
                           stride: int | None = None, baseline: Baseline = 0.0, *, batch_size: int = 64,
                           target: Target = "logit", head: Head = SOFTMAX) -> torch.Tensor:
    """Occlusion [N, K, H, W], signed: each pixel's mean, over the windows that cover it, of
    score(x) - score(x with the window set to `baseline`), exactly as captum's
    Occlusion(model).attribute(x, sliding_window_shapes=(C, window, window), strides=(C, stride, stride),
    baselines=baseline) computes it (captum's result is the same on every channel; here it has none).

    Windows are placed as captum places them: ceil((H - window) / stride) + 1 per axis, from the top
    left, the last one cut off by the border when the stride does not divide the remainder. `baseline`
    is a number or a tensor broadcastable to x (a per-channel mean, say). All windows of all images go
    through the model `batch_size` at a time; one pass gives every class, where captum needs one call per class.
    """
    columns = _targets(targets, x)
    height, width = x.shape[-2:]
    window = window if window is not None else max(1, round(min(height, width) / 8))
    stride = stride if stride is not None else max(1, window // 2)
    if not 1 <= stride <= window <= min(height, width):
        raise AuditorError(f"occlusion: need 1 <= stride ({stride}) <= window ({window}) <= the image side "
                           f"({min(height, width)})")
    rows, cols = (math.ceil((side - window) / stride) + 1 for side in (height, width))
    starts_r = torch.arange(rows, device=x.device) * stride
    starts_c = torch.arange(cols, device=x.device) * stride
    clean = x.detach()
    base = _baseline(baseline, x)
    per_image = rows * cols
    line_r, line_c = torch.arange(height, device=x.device), torch.arange(width, device=x.device)

    def occluded(jobs: torch.Tensor) -> torch.Tensor:
        image, place = jobs // per_image, jobs % per_image
        top, left = starts_r[place // cols, None], starts_c[place % cols, None]
        inside = (((line_r >= top) & (line_r < top + window))[:, :, None]
                  & ((line_c >= left) & (line_c < left + window))[:, None, :])
        return torch.where(inside[:, None], base[image], clean[image])

    with _forward_only(model, x):
        layout = _layout(x)
        plain = _forward_scores(model, lambda jobs: clean[jobs], len(x), columns, 1, batch_size, target, head, layout)
        hidden = _forward_scores(model, occluded, len(x) * per_image, columns, per_image, batch_size, target, head,
                                 layout)
    drops = (plain[:, None] - hidden.view(len(x), per_image, -1)).transpose(1, 2)  # [N, K, windows]
    return _window_means(drops, (rows, cols), (height, width), window, stride)


def rise_masks(count: int, cell: int, p: float, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """RISE's masks [count, H, W] in [0, 1], on the CPU, from their own generator: binary cell x cell grids
    (each cell on with probability p), upsampled bilinearly to (cell + 1) * ceil(side / cell) with
    mirrored borders and cropped to H x W at a random shift of less than one cell, exactly as the
    reference code's skimage resize(order=1, mode="reflect") and crop compute them."""
    return _RiseMasks(count, cell, p, size, seed).masks(torch.arange(count))


def rise_saliency(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, masks: int = 1000, cell: int = 7,
                  p: float = 0.5, seed: int = 0, *, batch_size: int = 64, target: Target = "prob",
                  head: Head = SOFTMAX) -> torch.Tensor:
    """RISE saliency [N, K, H, W]: sum_i score(x * mask_i) * mask_i / (masks * p), the reference code's
    formula (eclique/RISE, explanations.py), with the masks of rise_masks (the same masks for every image).

    Differs from the reference only in drawing: its NumPy global RNG draws the grids, then each mask's
    shift; here a seeded torch.Generator draws all grids, then all shifts. Masks are built a batch at a
    time from their grids, never all held at once.
    """
    if masks < 1 or cell < 1 or not 0 < p <= 1:
        raise AuditorError(f"rise: need masks >= 1, cell >= 1 and 0 < p <= 1, not {masks}, {cell} and {p}")
    _check_batch_size(batch_size)
    columns = _targets(targets, x)
    size = (x.shape[-2], x.shape[-1])
    drawn = _RiseMasks(masks, cell, p, size, seed, x.device)
    clean = x.detach()
    saliency = torch.zeros((len(x), columns.shape[1], *size), dtype=torch.float32, device=x.device)
    jobs = len(x) * masks  # job j: image j // masks under mask j % masks
    with _forward_only(model, x):
        for start in range(0, jobs, batch_size):
            batch = torch.arange(start, min(start + batch_size, jobs), device=x.device)
            image, chosen = batch // masks, drawn.masks(batch % masks)
            masked = (clean[image] * chosen[:, None].to(x.dtype)).contiguous(memory_format=_layout(x))
            scores = _target_scores(model(masked), columns[image], target, head)
            saliency.index_add_(0, image, torch.einsum("bk,bhw->bkhw", scores.float(), chosen))
    return saliency / (masks * p)


# -------------------------------------------------------------------------------------------- internals

def _as_given(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N, K, H, W] maps as the targets were given: [N, H, W] for targets [N]."""
    return maps[:, 0] if torch.as_tensor(targets).ndim == 1 else maps


def _targets(targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Class indices as a LongTensor [N, K] on x's device (a normal tensor, even from inference mode)."""
    if x.ndim != 4:
        raise AuditorError(f"attribution: give images as [N, C, H, W], not {tuple(x.shape)}")
    return target_columns(targets, len(x), "attribution").to(x.device)


def _baseline(baseline: Baseline | None, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a tensor of x's shape, device and dtype (None and numbers: constant images)."""
    value = torch.as_tensor(0.0 if baseline is None else baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise AuditorError(f"attribution baseline: {tuple(value.shape)} does not broadcast to the images "
                           f"{tuple(x.shape)}") from None


def _target_scores(logits: object, columns: torch.Tensor, target: Target, head: Head) -> torch.Tensor:
    """[B, K] scores of the target columns (the logits or `head`'s probabilities), or a clear error."""
    if target not in ("logit", "prob"):
        raise AuditorError(f"attribution target: {target!r} is not a target; use logit or prob")
    check_class_scores(logits, columns, "attribution")
    return (head.probabilities(logits) if target == "prob" else logits).gather(1, columns)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise AuditorError(f"--batch-size: {batch_size} images per forward pass is not possible; use 1 or more")


def _summed_gradients(model: nn.Module, x: torch.Tensor, columns: torch.Tensor,
                      points: Callable[[torch.Tensor], torch.Tensor], per_image: int,
                      weight: Callable[[torch.Tensor], torch.Tensor], *, squared: bool, batch_size: int,
                      target: Target, head: Head, method: str) -> torch.Tensor:
    """sum_j weight(j) * (d score_k / d input at points(j)) (squared first if `squared`) over each
    image's `per_image` jobs j (job j belongs to image j // per_image), as [N, K, C, H, W].

    Each batch of jobs is one forward pass and one backward for all K classes: the jobs are independent
    in eval mode, so one cotangent per class column gives every job's gradient at once. BatchNorms are
    folded into the convolutions before them (auditor.nn.folding): the default model's forward and input
    gradient take a third of their time that way (bench/bench_layout.py).
    """
    _check_batch_size(batch_size)
    count, k = columns.shape
    with audit_mode(model), torch.inference_mode(False), torch.enable_grad(), \
            folded_batch_norms(model, model, x[:1].detach()):
        total = torch.zeros((count, k, *x.shape[1:]), dtype=x.dtype, device=x.device)
        cotangents = torch.eye(k, dtype=x.dtype, device=x.device)[:, None, :]
        for start in range(0, count * per_image, batch_size):
            jobs = torch.arange(start, min(start + batch_size, count * per_image), device=x.device)
            leaf = points(jobs).detach().contiguous(memory_format=_layout(x)).requires_grad_(True)
            image = jobs // per_image
            scores = _target_scores(model(leaf.clone()), columns[image], target, head)
            if not scores.requires_grad:
                raise GradientsUnavailable(f"{method}: the model's scores carry no gradient (its forward detaches "
                                           "or runs under no_grad); use occlusion or rise, which need none")
            if k == 1:  # no vmap needed: models with ops that have no batching rule run at full speed
                (grads,) = torch.autograd.grad(scores, leaf, torch.ones_like(scores), allow_unused=True)
                grads = None if grads is None else grads[None]
            else:
                (grads,) = torch.autograd.grad(scores, leaf, cotangents.expand(k, len(jobs), k),
                                               is_grads_batched=True, allow_unused=True)
            if grads is None:
                raise GradientsUnavailable(f"{method}: the model's scores do not depend differentiably on its "
                                           "input (its forward detaches it); use occlusion or rise, which need none")
            grads = grads.transpose(0, 1)  # [B, K, C, H, W]
            grads = grads.square() if squared else grads
            total.index_add_(0, image, grads * weight(jobs).view(-1, 1, 1, 1, 1))
    return total.detach()


def _forward_scores(model: nn.Module, make: Callable[[torch.Tensor], torch.Tensor], jobs: int,
                    columns: torch.Tensor, per_image: int, batch_size: int, target: Target,
                    head: Head, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """[jobs, K] float target scores of make(job indices), `batch_size` images per forward pass (job j
    is image j // per_image's), each batch in `layout` (the caller's inputs', which the model was probed
    with: channels-last runs oneDNN's convolutions much faster). Run inside _forward_only."""
    _check_batch_size(batch_size)
    scores = []
    for start in range(0, jobs, batch_size):
        batch = torch.arange(start, min(start + batch_size, jobs), device=columns.device)
        inputs = make(batch).contiguous(memory_format=layout)
        scores.append(_target_scores(model(inputs), columns[batch // per_image], target, head).float())
    return torch.cat(scores)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory layout of the caller's inputs, for the perturbed copies made of them."""
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


@contextmanager
def _forward_only(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Eval mode with frozen parameters, BatchNorms folded into their convolutions, no autograd."""
    with audit_mode(model), folded_batch_norms(model, model, x[:1]), torch.inference_mode():
        yield


def _window_means(drops: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], window: int,
                  stride: int) -> torch.Tensor:
    """[N, K, windows] values -> [N, K, H, W]: each pixel's mean over the windows covering it (F.fold
    sums each window's value over its pixels; the windows that run past the border are cut off there)."""
    count, k, windows = drops.shape
    padded = ((grid[0] - 1) * stride + window, (grid[1] - 1) * stride + window)
    spread = drops.reshape(count * k, 1, windows).expand(-1, window * window, -1)
    sums = F.fold(spread, padded, window, stride=stride)
    covers = F.fold(torch.ones_like(spread[:1]), padded, window, stride=stride)
    return (sums / covers)[..., :size[0], :size[1]].reshape(count, k, *size)


class _RiseMasks:
    """RISE's random grids and shifts, drawn once; masks built from them for any subset of indices.

    A bilinear upsampling is separable: mask = R @ grid @ C^T with R, C the 1-D interpolation matrices
    (rows cropped at each mask's shift), so a batch of masks is one einsum.
    """

    def __init__(self, count: int, cell: int, p: float, size: tuple[int, int], seed: int,
                 device: torch.device | str = "cpu") -> None:
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same masks on any device
        self.grids = (torch.rand((count, cell, cell), generator=generator) < p).float().to(device)
        cells = [math.ceil(side / cell) for side in size]
        shifts = [torch.randint(0, c, (count,), generator=generator).to(device) for c in cells]
        self.rows, self.cols = (_interpolation(cell, (cell + 1) * c).to(device) for c in cells)
        # each mask's row and column indices into the upsampled grid: its crop
        self.row_index, self.col_index = (shift[:, None] + torch.arange(side, device=device)
                                          for shift, side in zip(shifts, size, strict=True))
        self.shifts = shifts

    def masks(self, indices: torch.Tensor) -> torch.Tensor:
        """[len(indices), H, W] float32 masks on the device they were drawn for."""
        rows = self.rows[self.row_index[indices]]  # [B, H, cell]
        cols = self.cols[self.col_index[indices]]  # [B, W, cell]
        return torch.einsum("bhi,bij,bwj->bhw", rows, self.grids[indices], cols)


def _interpolation(cells: int, out: int) -> torch.Tensor:
    """[out, cells]: linear interpolation from `cells` samples to `out` (pixel centres aligned, as
    skimage's resize and F.interpolate(align_corners=False) map them), mirrored at the borders
    (skimage's mode="reflect")."""
    position = (torch.arange(out, dtype=torch.float64) + 0.5) * cells / out - 0.5
    low = position.floor()
    frac = (position - low).float()
    matrix = torch.zeros((out, cells))
    for index, share in ((low, 1 - frac), (low + 1, frac)):
        mirrored = _mirror(index.long(), cells)
        matrix.index_put_((torch.arange(out), mirrored), share, accumulate=True)
    return matrix


def _mirror(index: torch.Tensor, cells: int) -> torch.Tensor:
    """Indices reflected about the first and last sample (NumPy's "reflect": -1 -> 1, cells -> cells - 2)."""
    if cells == 1:
        return torch.zeros_like(index)
    period = 2 * (cells - 1)
    index = index.remainder(period)
    return torch.where(index >= cells, period - index, index)
