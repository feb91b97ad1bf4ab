"""How far to trust a saliency map, part 4: the one method to use on this model, and why.

A method qualifies when it passes the randomisation sanity check (its maps depend on the learnt
weights); of those, the one with the largest deletion / insertion margin over the random map wins:
margin = (random map's deletion AUC - its deletion AUC) + (its insertion AUC - random map's insertion
AUC), both in probability x fraction of pixels. A margin of zero or less is no better than chance, so
no method is recommended then, and the reason says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recommendation:
    """The method to use (None when none qualifies) and the sentence that says why."""

    method: str | None
    margin: float | None
    why: str

    def as_metrics(self) -> dict[str, Any]:
        return {"method": self.method, "margin": self.margin, "why": self.why}


def margin(scores: Mapping[str, Any], random: Mapping[str, Any]) -> float:
    """How far a method's deletion and insertion AUCs beat the random map's, summed (higher is better)."""
    return (random["deletion_auc"] - scores["deletion_auc"]) + (scores["insertion_auc"] - random["insertion_auc"])


def recommend(methods: Mapping[str, Mapping[str, Any]], random: Mapping[str, Any],
              names: Mapping[str, str]) -> Recommendation:
    """The recommended method of the trust table `methods` (key -> its metrics, with "randomization"
    {"verdict"}, "deletion_auc", "insertion_auc"), against the random map's AUCs; ties go to the table's order."""
    passing = [key for key, scores in methods.items() if scores["randomization"]["verdict"] == "pass"]
    if not passing:
        return Recommendation(None, None, "No method is recommended: none passes the randomisation sanity check, so "
                                          "every map here may show the image more than the model.")
    margins = {key: margin(methods[key], random) for key in passing}
    best = max(passing, key=lambda key: margins[key])  # max keeps the first of equals: the table's order
    scores = methods[best]
    numbers = (f"deletion AUC {scores['deletion_auc']:.3f} against the random map's {random['deletion_auc']:.3f}, "
               f"insertion AUC {scores['insertion_auc']:.3f} against {random['insertion_auc']:.3f}")
    if margins[best] <= 0:
        return Recommendation(None, round(margins[best], 4),
                              f"No method is recommended: of those that pass the sanity check, the most faithful, "
                              f"{names[best]}, does no better than a random map ({numbers}).")
    others = len(passing) - 1
    rivals = f"the largest margin over the random map of the {len(passing)} methods that pass" if others else \
        "the only method that passes, and it beats the random map"
    return Recommendation(best, round(margins[best], 4),
                          f"Use {names[best]} on this model: it passes the randomisation sanity check and has "
                          f"{rivals} (+{margins[best]:.3f}: {numbers}).")
