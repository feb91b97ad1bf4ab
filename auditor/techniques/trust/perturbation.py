"""How far to trust a saliency map, part 2: faithfulness, by perturbing the pixels a map calls important.

Deletion and insertion (Petsiuk et al. 2018, RISE) and average drop / increase in confidence
(Chattopadhay et al. 2018, Grad-CAM++). All perturbed images of several images and maps go through
the model together, `batch_size` at a time; nothing here needs gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.heads import SOFTMAX, Head
from auditor.nn.restore import audit_mode
from auditor.techniques.tensor_ops import gaussian_blur

__all__ = ["BASELINES", "BLUR_KERNEL", "BLUR_SIGMA", "ConfidenceChange", "PerturbationCurves", "baseline_images",
           "confidence_change", "deletion_insertion", "random_maps"]

Baseline = Literal["blur", "mean"]
BASELINES: tuple[Baseline, ...] = ("blur", "mean")
BLUR_SIGMA = 5.0  # pixels: RISE's reference code blurs with sigma 5 in an 11 x 11 kernel
BLUR_KERNEL = 11


@dataclass(frozen=True)
class PerturbationCurves:
    """Deletion and insertion curves: probability of the target class against the fraction of pixels changed.

    Shapes follow the maps: maps [N, H, W] give curves [N, S] and AUCs [N]; maps [N, M, H, W] give
    [N, M, S] and [N, M].
    """

    fractions: torch.Tensor  # [S], 0 ... 1: share of the most salient pixels removed / inserted
    deletion: torch.Tensor  # most salient pixels replaced by the baseline first: a faithful map drops fast
    insertion: torch.Tensor  # most salient pixels put into the baseline first: a faithful map rises fast
    deletion_auc: torch.Tensor  # trapezoid over fractions in [0, 1]: lower is better
    insertion_auc: torch.Tensor  # higher is better
    baseline: str  # the baseline, in words, for the report
    images_evaluated: int  # images run through the model: the cost

    @classmethod
    def joined(cls, parts: Sequence[PerturbationCurves]) -> PerturbationCurves:
        """The curves of consecutive runs over different images as one run's (images in order)."""
        first = parts[0]
        return cls(first.fractions, *(torch.cat([getattr(p, name) for p in parts])
                                      for name in ("deletion", "insertion", "deletion_auc", "insertion_auc")),
                   first.baseline, sum(p.images_evaluated for p in parts))


@dataclass(frozen=True)
class ConfidenceChange:
    """Average drop and increase in confidence (Chattopadhay et al. 2018), per image and averaged.

    Shapes: maps [N, H, W] give per-image [N] and averages []; maps [N, M, H, W] give [N, M] and [M].
    """

    score: torch.Tensor  # y: probability of the target class on the image
    masked_score: torch.Tensor  # o: the same on the image multiplied by its map
    drop: torch.Tensor  # max(0, y - o) / y * 100 per image
    average_drop: torch.Tensor  # mean of drop over images, percent: lower is better
    increase_in_confidence: torch.Tensor  # percent of images with o > y: higher is better

    @classmethod
    def of(cls, score: torch.Tensor, masked_score: torch.Tensor) -> ConfidenceChange:
        """From y and o per image ([N] or [N, M]): the drops and the averages over the images."""
        drop = (score - masked_score).clamp_min(0) / score * 100
        return cls(score=score, masked_score=masked_score, drop=drop, average_drop=drop.mean(dim=0),
                   increase_in_confidence=(masked_score > score).float().mean(dim=0) * 100)

    @classmethod
    def joined(cls, parts: Sequence[ConfidenceChange]) -> ConfidenceChange:
        """Consecutive runs over different images as one run's: the averages over all their images."""
        return cls.of(torch.cat([p.score for p in parts]), torch.cat([p.masked_score for p in parts]))


def random_maps(shape: tuple[int, ...] | torch.Size, seed: int = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform random maps in [0, 1] of `shape` (..., H, W): the chance level every method is compared with.

    Drawn on the CPU with their own generator, so the same seed gives the same maps on any device and
    the global RNG is untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=generator).to(device)


def baseline_images(x: torch.Tensor, baseline: Baseline) -> tuple[torch.Tensor, str]:
    """What deleted pixels become, [N, 3, H, W] like x (normalised), and the baseline in words.

    "blur": a Gaussian blur of the image, sigma 5 px in an 11 x 11 kernel (RISE's setting), borders
    replicated: removes detail but keeps colours, so the curves measure the loss of the object's
    shape rather than the shock of an unnatural colour. "mean": every pixel the image's own mean
    colour. Both are computed on the normalised tensor, which is the same as computing them on the
    pixels because normalisation is a per-channel affine map.
    """
    if baseline == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).contiguous(), "the image's mean colour"
    if baseline != "blur":
        raise AuditorError(f"--trust-baseline: {baseline!r} is not a baseline; use {' or '.join(BASELINES)}")
    blurred = gaussian_blur(x, BLUR_SIGMA, BLUR_KERNEL, border="replicate")
    return blurred, f"a Gaussian blur of the image (sigma {BLUR_SIGMA:g} px, {BLUR_KERNEL}x{BLUR_KERNEL} kernel)"


def deletion_insertion(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                       steps: int = 16, baseline: Baseline = "blur", batch_size: int = 64,
                       head: Head = SOFTMAX) -> PerturbationCurves:
    """Deletion and insertion curves and AUCs (Petsiuk et al. 2018) of each map for its image's target class.

    x: [N, 3, H, W] normalised inputs; maps: [N, H, W] or [N, M, H, W] (any resolution: bilinearly
    resized to H x W; only their order matters, ties broken by pixel position); targets: [N] or
    [N, M] class indices. At each of `steps` equal fractions f from 0 to 1, the round(f * H * W)
    most salient pixels are replaced by the baseline (deletion) or copied into the baseline
    (insertion), and the probability of the target class is read (`head`'s: softmax unless the model's is
    a sigmoid). The two end points are the
    same for every map of an image (the image, the baseline) and run once per image.
    """
    if steps < 2:
        raise AuditorError(f"--trust-steps: deletion and insertion need at least 2 steps (0 and 1), not {steps}")
    maps4, targets2 = _as_batch(x, maps, targets)
    count, per_image, height, width = maps4.shape
    fractions = torch.linspace(0, 1, steps, device=x.device)
    removed = (fractions * height * width).round().long()
    ranks = _descending_ranks(maps4)
    base, described = baseline_images(x, baseline)
    # interior jobs: (image, map, step, deletion?) for steps 1 .. S-2, all images and maps together
    image, slot, step, kind = (t.reshape(-1) for t in torch.meshgrid(
        torch.arange(count, device=x.device), torch.arange(per_image, device=x.device),
        torch.arange(1, steps - 1, device=x.device), torch.arange(2, device=x.device), indexing="ij"))
    deleting = kind == 0

    def perturbed(jobs: torch.Tensor) -> torch.Tensor:
        salient = ranks[image[jobs], slot[jobs]] < removed[step[jobs]].unsqueeze(1)
        keep_image = (salient ^ deleting[jobs].unsqueeze(1)).view(-1, 1, height, width)
        return torch.where(keep_image, x[image[jobs]], base[image[jobs]])

    with audit_mode(model), torch.inference_mode():
        both = torch.cat([x, base])
        ends = _probabilities(model, lambda jobs: both[jobs], 2 * count, batch_size, head, x.device)
        inner = (_probabilities(model, perturbed, len(image), batch_size, head, x.device) if len(image)
                 else ends.new_zeros((0, ends.shape[1])))  # two steps: the end points only
    inner_p = inner.gather(1, targets2[image, slot].unsqueeze(1)).view(count, per_image, steps - 2, 2)
    on_image = ends[:count].gather(1, targets2).unsqueeze(-1)
    on_base = ends[count:].gather(1, targets2).unsqueeze(-1)
    deletion = torch.cat([on_image, inner_p[..., 0], on_base], dim=-1)
    insertion = torch.cat([on_base, inner_p[..., 1], on_image], dim=-1)
    shape = maps.shape[:-2] + (steps,)
    return PerturbationCurves(
        fractions=fractions, deletion=deletion.reshape(shape), insertion=insertion.reshape(shape),
        deletion_auc=torch.trapezoid(deletion, fractions, dim=-1).reshape(shape[:-1]),
        insertion_auc=torch.trapezoid(insertion, fractions, dim=-1).reshape(shape[:-1]),
        baseline=described, images_evaluated=2 * count + len(image))


def confidence_change(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                      batch_size: int = 64, head: Head = SOFTMAX, scores: torch.Tensor | None = None) -> ConfidenceChange:
    """Average drop and increase in confidence of each map (maps in [0, 1], shapes as in deletion_insertion).

    y is the target's probability (`head`'s) on the image, o the same on the normalised input tensor
    multiplied by the map, exactly as pytorch-grad-cam's metrics do (multiply_tensor_with_cam). On the
    pixels that is a blend towards the normalisation mean colour: mean + map * (pixel - mean), so a map
    of 0 leaves the "average" colour that carries no signal, not the black of the original paper's
    pixel-space product, which is itself a strong, unnatural input.

    `scores`: y when the caller has it, the target's probability on each clean image, shaped like the
    maps without H, W ([N] or [N, M]): deletion_insertion's `deletion[..., 0]` for the same maps and
    targets. The clean images are then not run again.
    """
    maps4, targets2 = _as_batch(x, maps, targets)
    if scores is not None and scores.shape != maps.shape[:-2]:
        raise ValueError(f"scores: give one per map, shape {tuple(maps.shape[:-2])}, not {tuple(scores.shape)}")
    if maps4.amin() < 0 or maps4.amax() > 1:
        raise ValueError("confidence_change needs maps in [0, 1]; min-max normalise them first")
    count, per_image = maps4.shape[:2]
    with audit_mode(model), torch.inference_mode():
        flat_maps = maps4.view(-1, 1, *maps4.shape[-2:])
        plain = (None if scores is not None
                 else _probabilities(model, lambda jobs: x[jobs], count, batch_size, head, x.device))
        masked = _probabilities(model, lambda jobs: x[jobs // per_image] * flat_maps[jobs], count * per_image,
                                batch_size, head, x.device)
    y = (plain.gather(1, targets2) if plain is not None
         else scores.to(device=x.device, dtype=torch.float32).reshape(count, per_image))
    o = masked.view(count, per_image, -1).gather(2, targets2.unsqueeze(-1)).squeeze(-1)
    return ConfidenceChange.of(y.reshape(maps.shape[:-2]), o.reshape(maps.shape[:-2]))


def _as_batch(x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps as [N, M, H, W] at x's size and device, targets as [N, M] long."""
    if x.ndim != 4 or maps.ndim not in (3, 4) or maps.shape[0] != x.shape[0]:
        raise ValueError(f"need x [N, C, H, W] and maps [N, H, W] or [N, M, H, W], "
                         f"not {tuple(x.shape)} and {tuple(maps.shape)}")
    maps4 = (maps if maps.ndim == 4 else maps.unsqueeze(1)).to(device=x.device, dtype=torch.float32)
    if maps4.shape[-2:] != x.shape[-2:]:
        maps4 = F.interpolate(maps4, size=x.shape[-2:], mode="bilinear", align_corners=False)
    targets = targets.to(x.device).long()
    targets2 = targets.unsqueeze(1) if targets.ndim == 1 else targets
    return maps4, targets2.expand(maps4.shape[0], maps4.shape[1]).contiguous()


def _descending_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of each pixel in its map, 0 for the most salient; ties go to the earlier pixel."""
    flat = maps.flatten(-2)
    order = flat.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(flat.shape[-1], device=maps.device, dtype=torch.int32).expand_as(order)
    return torch.empty_like(order, dtype=torch.int32).scatter_(-1, order, positions)


def _probabilities(model: nn.Module, make: Callable[[torch.Tensor], torch.Tensor], count: int, batch_size: int,
                   head: Head, device: torch.device) -> torch.Tensor:
    """The head's probabilities [count, classes] of make(job indices), `batch_size` images per forward pass."""
    if batch_size < 1:
        raise AuditorError(f"--batch-size: {batch_size} images per forward pass is not possible; use 1 or more")
    outputs = []
    for start in range(0, count, batch_size):
        jobs = torch.arange(start, min(start + batch_size, count), device=device)
        outputs.append(head.probabilities(model(make(jobs)).float()))
    return torch.cat(outputs)
