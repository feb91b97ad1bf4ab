"""What techniques share: typed results one section publishes (`ctx.shared`) for those that run after it.

A technique that reads them declares the writers in `after` (see auditor.declarations), so they run
first; every reader checks `shown` against its own images, and computes what it cannot reuse. Method
keys are those of the one table of saliency methods (auditor.methods). Results are on the CPU.

| field               | holds                                              | written by         | read by        |
| ------------------- | -------------------------------------------------- | ------------------ | -------------- |
| `cam`               | CamShared: the CAM family's maps of the top class  | sections/cam       | sections/trust |
| `gradients[key]`    | GradientShared: input gradients of the top class,  | sections/          | sections/cam,  |
|                     | "guided-backprop" and "deconvnet", never the plain | reconstructions;   | sections/trust |
|                     | gradient under their names                         | sections/cam (its  |                |
|                     |                                                    | guided backprop)   |                |
| `attribution`       | AttributionShared: the attribution methods' maps   | sections/          | sections/trust |
|                     | of the top class, and the settings they used       | attribution        |                |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _leading(shown: list[int], rows: list[int]) -> bool:
    """Whether `rows` are the first images of `shown`, in order: their results are the leading rows."""
    return shown[:len(rows)] == rows


@dataclass(frozen=True)
class CamShared:
    """The CAM section's maps: each shown image's top class, per CAM-family method it computed."""

    shown: list[int]  # image indices (ctx.images order), one a row
    layer: str  # the target layer's name: later CAM maps (trust's randomised copies) use the same one
    target: str  # the score differentiated: "logit" or "prob"
    maps: dict[str, torch.Tensor]  # method key ("cam", "grad-cam", "grad-cam++") -> [N, H, W] in [0, 1]
    unavailable: dict[str, str] = field(default_factory=dict)  # method key -> why it does not apply (classic CAM)

    def rows(self, rows: list[int]) -> dict[str, torch.Tensor] | None:
        """The maps of images `rows`, when they lead `shown`; else None."""
        return {key: maps[:len(rows)] for key, maps in self.maps.items()} if _leading(self.shown, rows) else None


@dataclass(frozen=True)
class GradientShared:
    """One input-gradient method's result: each shown image's top class, the method's own (a result that
    is the plain gradient, no rectifier having been seen, is never shared under the method's key)."""

    shown: list[int]  # image indices (ctx.images order), one a row
    gradients: torch.Tensor  # [N, 3, H, W] input gradients, float

    def rows(self, rows: list[int]) -> torch.Tensor | None:
        """The gradients of images `rows`, when they lead `shown`; else None."""
        return self.gradients[:len(rows)] if _leading(self.shown, rows) else None


@dataclass(frozen=True)
class AttributionShared:
    """The attribution section's maps: each shown image's top class, per attribution method it computed, with the
    settings (steps, samples, window, masks, seed) that the trust section reuses for the randomised models."""

    shown: list[int]  # image indices (ctx.images order), one a row
    maps: dict[str, torch.Tensor]  # method key -> [N, H, W] in [0, 1]
    settings: dict[str, Any]  # what auditor.methods' attribution adapters read
    unavailable: dict[str, str] = field(default_factory=dict)  # method key -> why it could not run (no gradients)
    other: torch.Tensor | None = None  # [N]: the trust section's random other class of each image
    other_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # its maps, from the same passes

    def rows(self, rows: list[int]) -> dict[str, torch.Tensor] | None:
        """The maps of images `rows`, when they lead `shown`; else None."""
        return {key: maps[:len(rows)] for key, maps in self.maps.items()} if _leading(self.shown, rows) else None

    def other_rows(self, rows: list[int], other: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps of classes `other` [N] of images `rows`, when they lead `shown` with those classes; else {}."""
        if self.other is None or not _leading(self.shown, rows) or \
                self.other[:len(rows)].tolist() != other.tolist():
            return {}
        return {key: maps[:len(rows)] for key, maps in self.other_maps.items()}


@dataclass
class SharedResults:
    """`ctx.shared`: one per audit, filled in as the sections run (see the module doc for who writes what)."""

    cam: CamShared | None = None  # None until the CAM section has run (or when CAM does not apply)
    gradients: dict[str, GradientShared] = field(default_factory=dict)  # gradient-family method key -> result
    attribution: AttributionShared | None = None  # None until the attribution section has run
