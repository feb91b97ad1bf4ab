"""Heads: how a model's scores become probabilities and predictions, one rule for every technique.

- softmax: the classes compete, one per image (the usual classifier);
- sigmoid: every label on its own (multi-label), each predicted when its probability reaches the threshold;
- binary: one output z, seen by every technique as two classes [-z, z] (auditor.inputs.models.outputs),
  so that a sigmoid per column gives P(positive) = sigmoid(z) and P(negative) = 1 - sigmoid(z), and the
  negative class is explained with -z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from auditor.errors import AuditorError

HeadKind = Literal["softmax", "sigmoid", "binary"]


@dataclass(frozen=True)
class Head:
    kind: HeadKind
    threshold: float = 0.5  # sigmoid and binary: the probability from which a label is predicted
    reason: str = ""  # why this head, in words, for the audit record

    @property
    def independent(self) -> bool:
        """Whether each output's probability is its own sigmoid (no competition between classes)."""
        return self.kind != "softmax"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, classes] probabilities; differentiable, so CAM and trust can use them as the score."""
        return logits.sigmoid() if self.independent else logits.softmax(dim=-1)

    def predicted(self, probabilities: torch.Tensor) -> list[list[int]]:
        """Each image's predicted classes: the top one (softmax, and binary: positive when P(positive) reaches
        the threshold), or every label at or above the threshold (sigmoid), most probable first."""
        if self.kind == "softmax":
            return [[int(i)] for i in probabilities.argmax(dim=1)]
        if self.kind == "binary":
            return [[1 if float(p) >= self.threshold else 0] for p in probabilities[:, 1]]
        order = probabilities.argsort(dim=1, descending=True, stable=True)
        return [[int(c) for c in row if float(p[c]) >= self.threshold] for row, p in zip(order, probabilities)]

    def describe(self) -> str:
        if self.kind == "softmax":
            return "softmax over the classes (one class per image)"
        if self.kind == "binary":
            return (f"binary: P(positive) = sigmoid(z) of the one output z, positive when it is at least "
                    f"{self.threshold:g}")
        return (f"sigmoid per label (multi-label): each label predicted when its probability is at least "
                f"{self.threshold:g}")


SOFTMAX = Head("softmax", reason="the default")


def choose_head(requested: str, outputs: int, *, binary: bool, multi_label: bool, threshold: float = 0.5) -> Head:
    """The head for `--head` (auto, softmax or sigmoid) and a model with `outputs` columns.

    `binary`: the model returns one logit (the output adapter made it two); `multi_label`: its own config
    says so (Hugging Face problem_type). auto gives sigmoid for either, else softmax.
    """
    if requested not in ("auto", "softmax", "sigmoid"):
        raise AuditorError(f"--head: {requested!r} is not a head; use auto, softmax or sigmoid")
    if binary:
        if requested == "softmax":
            raise AuditorError("--head softmax: the model returns one score per image, and a softmax over one class "
                               "is always 1; use --head sigmoid or auto")
        return Head("binary", threshold, "one output per image" + (" (auto)" if requested == "auto" else ""))
    if requested == "sigmoid" or (requested == "auto" and multi_label):
        why = "--head sigmoid" if requested == "sigmoid" else "the model's config says multi-label (auto)"
        return Head("sigmoid", threshold, why)
    why = "--head softmax" if requested == "softmax" else f"{outputs} outputs, not multi-label (auto)"
    return Head("softmax", threshold, why)
