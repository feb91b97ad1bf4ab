"""Model performance on labelled images, from running counts: nothing here grows with the number of images.

`Counts` takes the shared forward pass a batch at a time (each image's true class, its top-k classes and
their probabilities) and keeps only a confusion matrix, a top-k hit count, 15 calibration bins and the few
most confident mistakes. Two `Counts` add up (shards of a distributed run). Every score is then a pure
function of the counts: per-class precision / recall / F1 / support, accuracy, top-k accuracy, macro and
weighted F1, balanced accuracy, the expected calibration error (Guo et al. 2017) and its reliability bins,
and the most confused pairs. Numbers follow scikit-learn's definitions (zero_division=0), with macro F1
and balanced accuracy averaged over the classes that have images.

A multi-label (sigmoid) head is scored per label instead (`label_scores`): precision, recall and F1 of
the head's predicted sets, and average precision from the probabilities the shared forward pass already
holds. Torch-free: arrays in, numbers out.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ECE_BINS = 15  # equal-width bins of top-1 confidence (Guo et al. 2017)
CONFIDENT = 0.9  # a mistake at this top-1 probability or above is a confident one
KEEP_CONFIDENT = 50  # the most confident mistakes kept by name
CALIBRATION_TOLERANCE = 0.05  # |mean confidence - accuracy| within this reads as calibrated
UNKNOWN = -1  # the label of an image whose true class is not known


@dataclass
class Counts:
    """Running counts over the labelled images; `add` one batch at a time, or add two Counts (shards)."""

    classes: int
    k: int = 1  # the top-k of top-k accuracy
    bins: int = ECE_BINS
    keep: int = KEEP_CONFIDENT
    confusion: np.ndarray = field(init=False)  # [true, predicted] image counts
    top_k_hits: int = field(init=False, default=0)
    bin_count: np.ndarray = field(init=False)  # images per confidence bin
    bin_confidence: np.ndarray = field(init=False)  # sum of top-1 confidence per bin
    bin_correct: np.ndarray = field(init=False)  # correct top-1 predictions per bin
    unlabelled: int = field(init=False, default=0)
    # the `keep` most confident mistakes at CONFIDENT or above, as a min-heap of
    # (confidence, -image index, true, predicted); `confident_mistakes` counts all of them
    confident: list[tuple[float, int, int, int]] = field(init=False, default_factory=list)
    confident_mistakes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.classes, self.classes), dtype=np.int64)
        self.bin_count = np.zeros(self.bins, dtype=np.int64)
        self.bin_confidence = np.zeros(self.bins, dtype=np.float64)
        self.bin_correct = np.zeros(self.bins, dtype=np.int64)

    @property
    def labelled(self) -> int:
        return int(self.confusion.sum())

    def add(self, labels: Sequence[int | None] | np.ndarray, top_indices: Any, top_probabilities: Any,
            start: int = 0) -> Counts:
        """Count one batch: true classes (None or -1 when unknown), top-k class indices [n, k] (or the top-1
        [n]) and their probabilities (the same shape). `start` is the batch's first image index."""
        truth = np.array([UNKNOWN if label is None else label for label in labels], dtype=np.int64)
        top = np.asarray(top_indices).reshape(len(truth), -1)
        confidence = np.asarray(top_probabilities, dtype=np.float64).reshape(len(truth), -1)[:, 0]
        known = truth != UNKNOWN
        self.unlabelled += int((~known).sum())
        rows = np.flatnonzero(known)
        truth, top, confidence = truth[rows], top[rows], confidence[rows]
        predicted = top[:, 0]
        np.add.at(self.confusion, (truth, predicted), 1)
        self.top_k_hits += int((top[:, :self.k] == truth[:, None]).any(axis=1).sum())
        correct = predicted == truth
        where = confidence_bin(confidence, self.bins)
        self.bin_count += np.bincount(where, minlength=self.bins)
        self.bin_confidence += np.bincount(where, weights=confidence, minlength=self.bins)
        self.bin_correct += np.bincount(where, weights=correct, minlength=self.bins).astype(np.int64)
        sure = np.flatnonzero(~correct & (confidence >= CONFIDENT))
        self.confident_mistakes += len(sure)
        for row in sure:
            self._keep((float(confidence[row]), -(start + int(rows[row])), int(truth[row]), int(predicted[row])))
        return self

    def _keep(self, item: tuple[float, int, int, int]) -> None:
        if len(self.confident) < self.keep:
            heapq.heappush(self.confident, item)
        elif item > self.confident[0]:
            heapq.heapreplace(self.confident, item)

    def __add__(self, other: Counts) -> Counts:
        if (self.classes, self.k, self.bins) != (other.classes, other.k, other.bins):
            raise ValueError("counts over different classes, top-k or bins cannot be added")
        total = Counts(self.classes, self.k, self.bins, self.keep)
        total.confusion = self.confusion + other.confusion
        total.top_k_hits = self.top_k_hits + other.top_k_hits
        total.bin_count = self.bin_count + other.bin_count
        total.bin_confidence = self.bin_confidence + other.bin_confidence
        total.bin_correct = self.bin_correct + other.bin_correct
        total.unlabelled = self.unlabelled + other.unlabelled
        total.confident_mistakes = self.confident_mistakes + other.confident_mistakes
        for item in self.confident + other.confident:
            total._keep(item)
        return total

    def most_confident_mistakes(self) -> list[tuple[int, int, int, float]]:
        """(image index, true, predicted, confidence) of the kept confident mistakes, most confident first."""
        return [(-negative, true, predicted, confidence)
                for confidence, negative, true, predicted in sorted(self.confident, reverse=True)]


def confidence_bin(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The bin of each confidence: bin m holds ((m - 1) / bins, m / bins], as in Guo et al. (2017)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)


@dataclass(frozen=True)
class ClassScore:
    index: int
    precision: float
    recall: float
    f1: float
    support: int  # images of the class
    predicted: int  # images predicted as the class


def class_scores(confusion: np.ndarray) -> list[ClassScore]:
    """Precision, recall, F1 and support of every class that has images, in class order (0 where undefined)."""
    confusion = np.asarray(confusion)
    hits = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    scores = []
    for c in np.flatnonzero(support):
        precision = hits[c] / predicted[c] if predicted[c] else 0.0
        recall = hits[c] / support[c]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScore(int(c), float(precision), float(recall), float(f1), int(support[c]),
                                 int(predicted[c])))
    return scores


def worst_first(scores: Sequence[ClassScore]) -> list[ClassScore]:
    """Lowest F1 first, then lowest recall, then the class with more images (more evidence), then index."""
    return sorted(scores, key=lambda s: (s.f1, s.recall, -s.support, s.index))


def most_confused(confusion: np.ndarray, limit: int | None = None) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the off-diagonal cells with images, most first, ties in class order."""
    confusion = np.asarray(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    true, predicted = np.nonzero(off)
    order = sorted(zip(true.tolist(), predicted.tolist()), key=lambda tp: (-int(off[tp]), tp))
    return [(t, p, int(off[t, p])) for t, p in order[:limit]]


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    confidence: float | None  # mean top-1 confidence of its images; None when empty
    accuracy: float | None


def calibration_bins(counts: Counts) -> list[CalibrationBin]:
    edges = np.linspace(0.0, 1.0, counts.bins + 1)
    found = []
    for m in range(counts.bins):
        n = int(counts.bin_count[m])
        found.append(CalibrationBin(float(edges[m]), float(edges[m + 1]), n,
                                    float(counts.bin_confidence[m] / n) if n else None,
                                    float(counts.bin_correct[m] / n) if n else None))
    return found


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    """Sum over bins of |accuracy - mean confidence|, each weighted by its share of the images."""
    total = sum(b.count for b in bins)
    if not total:
        return float("nan")
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count))


def calibration_verdict(mean_confidence: float, accuracy: float,
                        tolerance: float = CALIBRATION_TOLERANCE) -> str:
    """"over-confident", "under-confident" or "calibrated": the sign of mean confidence - accuracy beyond
    `tolerance`."""
    gap = mean_confidence - accuracy
    if gap > tolerance:
        return "over-confident"
    if gap < -tolerance:
        return "under-confident"
    return "calibrated"


@dataclass(frozen=True)
class Performance:
    """Every score of a set of Counts."""

    labelled: int
    unlabelled: int
    k: int
    accuracy: float
    top_k_accuracy: float
    macro_f1: float
    weighted_f1: float
    balanced_accuracy: float
    mean_confidence: float
    calibration: str  # calibration_verdict
    ece: float
    bins: list[CalibrationBin]
    per_class: list[ClassScore]  # classes with images, in class order
    classes: list[int]  # the classes with images or predictions: the confusion matrix's rows and columns
    confusion: np.ndarray  # [len(classes), len(classes)], rows true, columns predicted
    most_confused: list[tuple[int, int, int]]  # (true, predicted, count), class indices, most first


def summarise(counts: Counts) -> Performance:
    """The scores of `counts`; raises ValueError when no image was labelled."""
    n = counts.labelled
    if not n:
        raise ValueError("no labelled image was counted")
    confusion = counts.confusion
    scores = class_scores(confusion)
    support = np.array([s.support for s in scores], dtype=np.float64)
    f1 = np.array([s.f1 for s in scores])
    bins = calibration_bins(counts)
    accuracy = float(np.trace(confusion) / n)
    mean_confidence = float(counts.bin_confidence.sum() / n)
    classes = np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))
    return Performance(
        labelled=n, unlabelled=counts.unlabelled, k=counts.k, accuracy=accuracy,
        top_k_accuracy=counts.top_k_hits / n, macro_f1=float(f1.mean()),
        weighted_f1=float((f1 * support).sum() / support.sum()),
        balanced_accuracy=float(np.mean([s.recall for s in scores])),
        mean_confidence=mean_confidence, calibration=calibration_verdict(mean_confidence, accuracy),
        ece=expected_calibration_error(bins), bins=bins, per_class=scores, classes=classes.tolist(),
        confusion=confusion[np.ix_(classes, classes)], most_confused=most_confused(confusion))


def matrix_classes(confusion: np.ndarray, limit: int) -> list[int]:
    """Which rows and columns of a confusion matrix to draw: all when there are at most `limit`, else the
    `limit` with the most errors (images of the class predicted as another plus images of other classes
    predicted as it), kept in their original order."""
    confusion = np.asarray(confusion)
    if len(confusion) <= limit:
        return list(range(len(confusion)))
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    errors = off.sum(axis=0) + off.sum(axis=1)
    chosen = sorted(range(len(confusion)), key=lambda c: (-int(errors[c]), c))[:limit]
    return sorted(chosen)


def pair_examples(labels: Sequence[int | None], predicted: Any, confidence: Any,
                  pairs: Sequence[tuple[int, int]], per_pair: int) -> list[list[int]]:
    """For each (true, predicted) pair, the indices of up to `per_pair` of its images, the most confident
    mistakes first (ties in file order)."""
    truth = np.array([UNKNOWN if label is None else label for label in labels], dtype=np.int64)
    predicted, confidence = np.asarray(predicted).reshape(-1), np.asarray(confidence, dtype=np.float64).reshape(-1)
    found = []
    for true, wrong in pairs:
        rows = np.flatnonzero((truth == true) & (predicted == wrong))
        order = sorted(rows.tolist(), key=lambda i: (-confidence[i], i))
        found.append(order[:per_pair])
    return found


# ---------------------------------------------------------------- multi-label (sigmoid) heads


@dataclass(frozen=True)
class LabelScore:
    """One label of a multi-label head: each image either has it or not, and is predicted to or not."""

    index: int
    precision: float
    recall: float
    f1: float
    support: int  # images that have the label
    predicted: int  # images predicted to have it
    average_precision: float  # over every image's probability of the label (NaN without any positive)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision as scikit-learn computes it: sum over the distinct thresholds, from the highest,
    of (R_n - R_(n-1)) P_n; NaN when no image is positive."""
    positives = int(positive.sum())
    if not positives:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last image of each distinct score
    hits = np.cumsum(positive)[last]
    precision, recall = hits / (last + 1), hits / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def label_scores(probabilities: np.ndarray, predicted: Sequence[Sequence[int]],
                 truth: Sequence[Sequence[int]]) -> list[LabelScore]:
    """Per-label precision, recall, F1 (the head's predicted sets against the true sets) and average
    precision (the probabilities), for every label, over the images given (those with known labels)."""
    count, labels = probabilities.shape
    has = np.zeros((count, labels), dtype=bool)
    said = np.zeros((count, labels), dtype=bool)
    for row, (true_set, predicted_set) in enumerate(zip(truth, predicted, strict=True)):
        has[row, list(true_set)] = True
        said[row, list(predicted_set)] = True
    scores = []
    for c in range(labels):
        hits, support, guessed = int((has[:, c] & said[:, c]).sum()), int(has[:, c].sum()), int(said[:, c].sum())
        precision = hits / guessed if guessed else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(LabelScore(c, precision, recall, f1, support, guessed,
                                 average_precision(probabilities[:, c], has[:, c])))
    return scores


def mean_average_precision(scores: Sequence[LabelScore]) -> float:
    """The mean of the labels' average precisions, over the labels that some image has (NaN if none)."""
    values = [s.average_precision for s in scores if s.support]
    return float(np.mean(values)) if values else float("nan")
