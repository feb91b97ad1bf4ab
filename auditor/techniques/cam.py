"""The CAM family: where a classifier looks for each image and class; and Guided Grad-CAM.

CAM, Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM, XGrad-CAM, HiResCAM and Eigen-CAM. `cam_maps` computes
every CAM-family method of the one table (auditor.methods) from one forward pass and at most one batched
backward (all K classes of every image at once, gradients taken only with respect to the target layer's
output); Score-CAM adds its forward passes of masked inputs, without gradients. Each method is one
function of `CamInputs` (`cam_raw`, `grad_cam_raw`, `grad_cam_pp_raw`, `score_cam_raw`, `layer_cam_raw`,
`xgrad_cam_raw`, `hires_cam_raw`, `eigen_cam_raw`) that the table names; the public one-method functions
are thin views of `cam_maps`. `guided_grad_cam` multiplies guided backprop by the upsampled Grad-CAM map.

The conventions follow pytorch-grad-cam (pgc) 1.5.7 except where a function's docstring says otherwise.
Common to all: pgc min-max normalises each map at the layer's resolution (with 1e-7 added to the span)
and resizes it with cv2; here the raw map is upsampled bilinearly (half-pixel centres, as cv2's
INTER_LINEAR) and then min-max normalised, with no epsilon (a constant map becomes all zero).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.heads import SOFTMAX, Head
from auditor.nn.folding import folded_batch_norms
from auditor.nn.hooks import forward_hooks
from auditor.nn.memory_format import preferred_layout
from auditor.nn.restore import audit_mode
from auditor.techniques.cam_layers import (
    CamNotApplicable,
    LayerSpec,
    Layout,
    TargetLayer,
    automatic_layer,
    capture_output,
    detect_layout,
    resolve_layer,
)
from auditor.techniques.class_targets import check_class_scores, target_columns
from auditor.techniques.reconstructions import RuleGraph, guided_backprop
from auditor.techniques.tensor_ops import minmax

__all__ = ["CamInputs", "CamNotApplicable", "CamResult", "cam_maps", "cam_raw", "choose_layer",
           "class_activation_map", "eigen_cam", "eigen_cam_raw", "grad_cam", "grad_cam_pp", "grad_cam_pp_raw",
           "grad_cam_raw", "guided_grad_cam", "guided_grad_cam_product", "hires_cam", "hires_cam_raw", "layer_cam",
           "layer_cam_raw", "score_cam", "score_cam_raw", "xgrad_cam", "xgrad_cam_raw"]

Target = Literal["logit", "prob"]


def __getattr__(name: str) -> Any:
    """`cam.METHODS`: the CAM family's keys ("cam", "grad-cam", "grad-cam++", "score-cam", ...), in the
    order of the one table (auditor.methods), read from it when asked for, since the table imports this module."""
    if name == "METHODS":
        from auditor.methods import cam_family

        return tuple(method.key for method in cam_family())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class CamResult:
    """Everything a CAM report section needs from one forward pass and one batched backward."""

    layer: TargetLayer  # the layer used, and why
    formed: str  # how the map was formed from the layer's output, in words
    target: Target  # score differentiated: the logit or the head's probability (CAM always uses weights)
    targets: torch.Tensor  # [N, K] class indices
    logits: torch.Tensor  # [N, classes] from the same forward pass
    raw: dict[str, torch.Tensor]  # method key -> [N, K, h, w] at the layer's resolution, before upsampling
    maps: dict[str, torch.Tensor]  # method key -> [N, K, H, W] upsampled to the input, min-max normalised
    unavailable: dict[str, str] = field(default_factory=dict)  # method key -> why it does not apply
    input_gradients: dict[str, torch.Tensor] = field(default_factory=dict)  # rule -> [N, K, 3, H, W], if asked

    @property
    def cam_unavailable(self) -> str | None:
        """Why classic CAM does not apply, when it does not."""
        return self.unavailable.get("cam")


@dataclass
class _LinearCall:
    name: str
    module: nn.Linear
    inputs: torch.Tensor
    output: torch.Tensor


@contextmanager
def _last_linear_call(model: nn.Module) -> Iterator[list[_LinearCall]]:
    """Record the last nn.Linear call of the forward pass: the candidate head for classic CAM."""
    calls: list[_LinearCall] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls[:] = [_LinearCall(name, module, inputs[0].detach(), output.detach())]
        return hook

    linears = [(module, record(name)) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    with forward_hooks(linears):
        yield calls


class CamInputs:
    """What every CAM-family method's map is made of, from one forward pass: the target layer's output,
    the scores, the classifier's last linear call; and the class gradients, from one batched backward taken the first time a
    method asks for them (classic CAM, Score-CAM and Eigen-CAM never do). Score-CAM also runs the model
    (in eval mode, as cam_maps leaves it) on masked copies of the input batch, `batch_size` at a time."""

    def __init__(self, layer: str, activation: torch.Tensor, layout: Layout, logits: torch.Tensor,
                 targets: torch.Tensor, target: Target, linear: _LinearCall | None, head: Head, *,
                 model: nn.Module | None = None, x: torch.Tensor | None = None, batch_size: int = 64) -> None:
        self.layer = layer  # the target layer's name, for messages
        self.features = layout.channels_first(activation.detach())  # [N, C, h, w]: the layer's output
        self.logits = logits.detach()  # [N, classes]
        self.targets = targets  # [N, K] class indices, on the logits' device
        self.target = target  # the score differentiated: "logit" or "prob" (the head's probability)
        self.linear = linear  # the forward pass's last nn.Linear call (classic CAM's class weights), if any
        self.head = head  # how the logits become probabilities (softmax, or a sigmoid per output)
        self.model = model  # the model, for Score-CAM's forward passes of masked inputs
        self.x = None if x is None else x.detach()  # [N, 3, H, W] the input batch, for Score-CAM
        self.batch_size = batch_size  # Score-CAM: masked inputs per forward pass
        self._graph = (activation, layout, logits)  # still attached to the forward pass's graph

    @cached_property
    def gradients(self) -> torch.Tensor:
        """d score[n, k] / d layer output[n], [N, K, C, h, w]: one batched backward for all K classes."""
        activation, layout, logits = self._graph
        return _class_gradients(_scores(logits, self.targets, self.target, self.head), activation, layout)


def cam_raw(inputs: CamInputs) -> torch.Tensor:
    """Classic CAM, [N, K, h, w]: the head's class weights times the feature maps; CamNotApplicable
    when the scores are not one linear layer on the spatial mean of the features."""
    return _cam(inputs.linear, inputs.features, inputs.logits, inputs.targets, inputs.layer)


def grad_cam_raw(inputs: CamInputs) -> torch.Tensor:
    """Grad-CAM, [N, K, h, w]: the feature maps weighted by their mean gradient, ReLU."""
    return _weighted_sum(inputs.gradients.mean(dim=(-2, -1)), inputs.features).relu()


def grad_cam_pp_raw(inputs: CamInputs) -> torch.Tensor:
    """Grad-CAM++, [N, K, h, w]: the feature maps weighted by the paper's closed-form weights, ReLU."""
    return _weighted_sum(_grad_cam_pp_weights(inputs.gradients, inputs.features), inputs.features).relu()


def score_cam_raw(inputs: CamInputs) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs"), [N, K, h, w]:
    the feature maps weighted by the softmax over channels of the target's score on the input masked by
    each channel, ReLU (as pgc's BaseCAM applies to every map).

    As pgc's ScoreCAM: each channel is upsampled to the input with align_corners=True (its
    UpsamplingBilinear2d), min-max normalised with 1e-8 added to the span, and multiplies the image; the
    score is the target logit (pgc's ClassifierOutputTarget), or with target "prob" the head's
    probability. Differences, none of which changes a value beyond float rounding: one masked forward pass
    gives all K targets' scores; a channel whose upsampled mask is constant (max == min: pgc's mask is then
    exactly zero) is not run, its score is the zero image's, from one pass shared by all such channels;
    masked passes run `batch_size` at a time across images and channels together, under inference mode,
    with the BatchNorms folded into the convolutions before them (auditor.nn.folding) and in channels-last
    layout on the CPU where the model gives the same output that way (auditor.nn.memory_format); on the
    CPU, when more than a few batches remain after the first, through a frozen TorchScript trace of the
    model, used only where it reproduces the first batch's eager scores (`_traced_forward`).
    """
    if inputs.model is None or inputs.x is None:
        raise AuditorError("Score-CAM needs the model and the input batch: build CamInputs with model= and x=")
    scores = _masked_scores(inputs.model, inputs.x, inputs.features, inputs.targets, inputs.target, inputs.head,
                            inputs.batch_size)  # [N, C, K]
    weights = scores.transpose(1, 2).softmax(dim=-1)  # [N, K, C]: softmax over channels, per image and target
    return _weighted_sum(weights.to(inputs.features.dtype), inputs.features).relu()


def layer_cam_raw(inputs: CamInputs) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP), [N, K, h, w]: relu(gradient) times the feature maps, position by position,
    summed over channels, ReLU (as pgc's BaseCAM applies). As pgc's LayerCAM (no eigen smoothing)."""
    return (inputs.gradients.relu() * inputs.features[:, None]).sum(dim=2).relu()


def xgrad_cam_raw(inputs: CamInputs) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM", BMVC), [N, K, h, w]: the feature maps weighted
    by sum_ij(g * A) / sum_ij A per channel, ReLU.

    pgc adds eps = 1e-7 to the denominator; here there is none: a channel whose activations sum to zero
    gets weight 0 (for non-negative activations its numerator is 0 too; for signed ones, a ViT's, the
    paper's weight is undefined there, and pgc's would be the numerator times 1e7). Elsewhere the eps
    changes a weight by a relative 1e-7 / sum_ij A: float32 rounding for trained layers, but not for tiny
    activations (random-weight mobilenet_v3_small's last features, ~1e-8 per position, where pgc's eps
    outweighs the sums and its map becomes another; tests/test_cam_methods.py)."""
    features = inputs.features
    total = features.sum(dim=(-2, -1))[:, None]  # [N, 1, C]
    numerator = (inputs.gradients * features[:, None]).sum(dim=(-2, -1))  # [N, K, C]
    nonzero = total != 0
    weights = torch.where(nonzero, numerator / torch.where(nonzero, total, torch.ones_like(total)),
                          torch.zeros_like(numerator))
    return _weighted_sum(weights, features).relu()


def hires_cam_raw(inputs: CamInputs) -> torch.Tensor:
    """HiResCAM (Draelos and Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks"), [N, K, h, w]: the gradient times the feature maps, position by
    position, summed over channels, ReLU (as pgc's BaseCAM applies). As pgc's HiResCAM (no eigen smoothing)."""
    return (inputs.gradients * inputs.features[:, None]).sum(dim=2).relu()


def eigen_cam_raw(inputs: CamInputs) -> torch.Tensor:
    """Eigen-CAM (Muhammad and Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal Components",
    IJCNN), [N, K, h, w]: the feature maps (positions x channels, centred over positions) projected on
    their first right singular vector, ReLU (as pgc's BaseCAM applies); class-independent, the same map
    for each of the K targets. No gradients.

    As pgc's get_2d_projection, with one batched torch.linalg.svd over the images instead of a numpy loop.
    The sign of a singular vector is arbitrary (LAPACK's choice, which numpy and torch need not share, and
    with it which half of the projection survives the ReLU), so here it is fixed: the projection
    correlates non-negatively with the channel sum of the activations (it is flipped where its dot product
    with that sum is negative). pgc keeps whatever sign numpy's SVD returns: on the test models torch's
    sign equalled numpy's for every image, and this convention flipped it on 3 of the 12 images
    (tests/test_cam_methods.py). pgc's NaN-to-zero step is not repeated (a finite layer has no NaN).
    """
    features = inputs.features
    count, _, h, w = features.shape
    matrix = features.flatten(2).transpose(1, 2)  # [N, hw, C]
    matrix = matrix - matrix.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    projection = (matrix @ vh[:, 0, :, None])[..., 0]  # [N, hw], mean zero over positions
    agreement = (projection * features.sum(dim=1).flatten(1)).sum(dim=1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    maps = projection.view(count, 1, h, w).relu()
    return maps.expand(count, inputs.targets.shape[1], h, w).clone()


def cam_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: LayerSpec = None, *,
             target: Target = "logit", methods: Sequence[str] | None = None, head: Head = SOFTMAX,
             batch_size: int = 64, input_gradients: Sequence[str] = ()) -> CamResult:
    """The CAM-family maps `methods` for `targets` ([N] or [N, K] class indices) of images `x`; by default
    every one-pass method of the table (CAM, Grad-CAM, Grad-CAM++, LayerCAM, XGrad-CAM, HiResCAM,
    Eigen-CAM): Score-CAM, a forward pass per channel, runs only when asked for.

    One forward pass for all images, at most one batched backward for all K classes, in eval mode; the
    model is left exactly as found. `head` turns logits into the probabilities that target "prob"
    differentiates (softmax unless the model's head is a sigmoid). Score-CAM adds forward passes of
    masked inputs, `batch_size` per pass. A method that cannot serve is left out of `maps`, with the reason
    in `unavailable` (classic CAM's also as `cam_unavailable`).

    `input_gradients`: backward rules (reconstructions.RULES: guided backprop, deconvnet, the plain gradient)
    whose input gradients of the targets' logits come from the same forward pass, recorded for them
    (reconstructions.RuleGraph), into `input_gradients`: the numbers of reconstructions.input_gradients
    without its forward pass.
    """
    from auditor.methods import cam_family  # the table imports this module

    family = {method.key: method for method in cam_family()}
    methods = [key for key, method in family.items() if not method.many_passes] if methods is None else list(methods)
    if target not in ("logit", "prob"):
        raise AuditorError(f"--cam-target: {target!r} is not a target; use logit or prob")
    unknown = sorted(set(methods) - set(family))
    if unknown:
        raise AuditorError(f"cam methods: unknown {', '.join(unknown)}; use {', '.join(family)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AuditorError(f"cam batch size: give a positive whole number of masked inputs per pass, not {batch_size!r}")
    targets = _as_targets(targets, len(x))
    size = (x.shape[-2], x.shape[-1])
    with audit_mode(model):
        chosen = automatic_layer(model, x) if layer is None else resolve_layer(model, layer)
        with torch.enable_grad():
            graph = RuleGraph(x, input_gradients) if input_gradients else None
            with capture_output(chosen.module, keep_graph=graph is not None) as captured, \
                    _last_linear_call(model) as linear, \
                    (graph.recording() if graph is not None else nullcontext()):
                logits = model(graph.input if graph is not None else x.detach())
        activation, layout = _checked_activation(chosen, captured.output, size)
        check_class_scores(logits, targets, "cam")
        targets = targets.to(logits.device)
        gradients = {} if graph is None else graph.per_target(logits, targets, keep=True)  # the CAM family's next
        # the capture and linear-call hooks are gone now: Score-CAM's masked passes leave `activation` alone
        inputs = CamInputs(chosen.name, activation, layout, logits, targets, target, linear[0] if linear else None,
                           head, model=model, x=x, batch_size=batch_size)
        raw: dict[str, torch.Tensor] = {}
        unavailable: dict[str, str] = {}
        for key in (key for key in family if key in methods):  # the table's order
            try:
                raw[key] = family[key].compute(inputs)
            except CamNotApplicable as error:
                unavailable[key] = str(error)
    if graph is not None:
        graph.warn_if_blind(model)
    return CamResult(chosen, layout.describe(size), target, targets, logits.detach(), raw,
                     {method: upsample_normalise(r, size) for method, r in raw.items()}, unavailable, gradients)


def choose_layer(model: nn.Module, x: torch.Tensor) -> TargetLayer:
    """The automatic target layer for images like `x`; choose once per model, pass its name to each batch."""
    with audit_mode(model):
        return automatic_layer(model, x)


def class_activation_map(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
                         target: Target = "logit") -> torch.Tensor:
    """Classic CAM (Zhou et al. 2016): the head's class weights times the feature maps, [N(,K),H,W].

    Raises CamNotApplicable when the head is not global average pooling + linear. `target` is
    accepted for symmetry; CAM is defined by the head's weights, not by a gradient.
    """
    return _one_method(model, layer, x, targets, target, "cam")


def grad_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
             target: Target = "logit") -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient, ReLU, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "grad-cam")


def grad_cam_pp(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
                target: Target = "logit") -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018) with the paper's exp(score) closed form, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "grad-cam++")


def score_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
              target: Target = "logit") -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): feature maps weighted by the softmax over channels of the score of the
    input masked by each upsampled channel, ReLU, [N(,K),H,W] (see `score_cam_raw`)."""
    return _one_method(model, layer, x, targets, target, "score-cam")


def layer_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
              target: Target = "logit") -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): relu(gradient) times the feature maps, summed over channels, ReLU, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "layer-cam")


def xgrad_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
              target: Target = "logit") -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): feature maps weighted by sum(gradient * A) / sum(A), ReLU, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "xgrad-cam")


def hires_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
              target: Target = "logit") -> torch.Tensor:
    """HiResCAM (Draelos and Carin 2020): gradient times the feature maps, summed over channels, ReLU, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "hires-cam")


def eigen_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
              target: Target = "logit") -> torch.Tensor:
    """Eigen-CAM (Muhammad and Yeasin 2020): the first principal component of the feature maps, ReLU,
    [N(,K),H,W], the same for every target (see `eigen_cam_raw`). `target` is accepted for symmetry."""
    return _one_method(model, layer, x, targets, target, "eigen-cam")


def guided_grad_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
                    target: Target = "logit") -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM map, pixel by
    pixel, [N(,K),3,H,W]. Like guided backprop it reduces to the plain gradient (and warns so) when no
    rectifier runs; reduce it to a map with reconstructions.gradient_saliency."""
    columns = _as_targets(targets, len(x))  # [N, K]
    maps = grad_cam(model, layer, x, columns, target=target)  # [N, K, H, W]
    product = guided_grad_cam_product(guided_backprop(model, x, columns), maps)  # one forward pass for all K
    return product[:, 0] if torch.as_tensor(targets).ndim == 1 else product


def guided_grad_cam_product(guided: torch.Tensor, grad_cam_maps: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM from results already computed: guided backprop gradients [N(,K), 3, H, W] times the
    Grad-CAM maps of the same images and classes [N(,K), H, W] (upsampled to the input), on the gradients'
    device and dtype."""
    return guided * grad_cam_maps.to(guided.device, guided.dtype).unsqueeze(-3)


def _one_method(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, target: Target,
                method: str) -> torch.Tensor:
    result = cam_maps(model, x, targets, layer, target=target, methods=(method,))
    if method not in result.maps:
        raise CamNotApplicable(f"CAM does not apply: {result.unavailable.get(method)}")
    maps = result.maps[method]
    return maps[:, 0] if torch.as_tensor(targets).ndim == 1 else maps


def _as_targets(targets: torch.Tensor, count: int) -> torch.Tensor:
    """Class indices as a LongTensor [N, K]."""
    return target_columns(targets, count, "cam")


def _checked_activation(layer: TargetLayer, output: torch.Tensor | None,
                        size: tuple[int, int]) -> tuple[torch.Tensor, Layout]:
    """The captured output and its layout, or a user error that says what is wrong with the layer."""
    if output is None:
        raise AuditorError(f"--cam-layer {layer.name}: the layer did not run in the forward pass; choose one that does")
    layout = detect_layout(output.shape, size)
    if layout is None:
        raise AuditorError(f"--cam-layer {layer.name}: its output {tuple(output.shape)} has no spatial grid for a "
                           f"{size[0]} x {size[1]} input; choose a layer with an N x C x H x W, N x H x W x C "
                           "or token output")
    return output, layout


def _scores(logits: torch.Tensor, targets: torch.Tensor, target: Target, head: Head) -> torch.Tensor:
    """[N, K] differentiable scores: the target logits or their probabilities by `head`."""
    return (head.probabilities(logits) if target == "prob" else logits).gather(1, targets)


def _masked_scores(model: nn.Module, x: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
                   target: Target, head: Head, batch_size: int) -> torch.Tensor:
    """Score-CAM's scores [N, C, K]: the targets' scores of image n masked by its channel c, upsampled
    (align_corners=True) and min-max normalised (span + 1e-8) as pgc does. Channels whose upsampled mask is
    constant (then exactly zero) take the zero image's scores, from one shared pass."""
    count, channels = features.shape[:2]
    size = (x.shape[-2], x.shape[-1])
    flat = features.flatten(0, 1)  # [N * C, h, w]; pair p is image p // C, channel p % C

    def masks(pairs: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(flat[pairs][:, None], size=size, mode="bilinear", align_corners=True)
        low = upsampled.amin(dim=(-2, -1), keepdim=True)
        high = upsampled.amax(dim=(-2, -1), keepdim=True)
        return upsampled, low, high

    # only a channel constant at the layer can have a constant upsampled mask; check those upsampled
    empty = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    candidates = (flat.amin(dim=(-2, -1)) == flat.amax(dim=(-2, -1))).nonzero()[:, 0]
    for pairs in candidates.split(batch_size):
        _, low, high = masks(pairs)
        empty[pairs] = (low == high).flatten()
    kept = (~empty).nonzero()[:, 0]
    rows = targets.repeat_interleave(channels, dim=0)  # [N * C, K]: each pair's image's targets
    scores = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    chunks = kept.split(batch_size)
    with torch.no_grad(), folded_batch_norms(model, model, x[:1]):
        layout = preferred_layout(model, x[:1])
        if bool(empty.any()):
            with torch.inference_mode():
                zero = model(torch.zeros_like(x[:1]).contiguous(memory_format=layout))
            picked = empty.nonzero()[:, 0]
            scores[picked] = _scores(zero.expand(len(picked), -1), rows[picked], target, head).float()
        run: Any = model
        for index, pairs in enumerate(chunks):
            upsampled, low, high = masks(pairs)
            mask = (upsampled - low) / (high - low + 1e-8)
            batch = (x[pairs // channels] * mask.to(x.dtype)).contiguous(memory_format=layout)
            if run is not model and len(batch) < batch_size:  # the trace's batch size: pad the last chunk
                batch = torch.cat([batch, batch.new_zeros(batch_size - len(batch), *batch.shape[1:])])
            with torch.inference_mode():
                logits = run(batch)[:len(pairs)]
            scores[pairs] = _scores(logits, rows[pairs], target, head).float()
            if index == 0 and len(chunks) > _TRACE_AFTER:
                run = _traced_forward(model, batch, logits)
    return scores.view(count, channels, -1)


_TRACE_AFTER = 4  # Score-CAM traces the model for its masked passes when more than this many batches remain


def _traced_forward(model: nn.Module, batch: torch.Tensor, reference: torch.Tensor) -> Any:
    """A frozen TorchScript trace of `model` for CPU batches shaped like `batch` (oneDNN kernels: resnet50's
    masked passes run some 1.4x faster), if tracing works without a TracerWarning (which is how a trace
    says it may not hold for other inputs: Python control flow on tensor values, sizes read as numbers)
    and the trace reproduces `reference`, the eager output for `batch` (rtol 1e-3, atol 1e-4 of its
    largest value); else `model` itself. The model is not changed: freezing copies its weights into the trace."""
    if batch.device.type != "cpu" or isinstance(model, torch.jit.ScriptModule):
        return model
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # recorded, not shown: TracerWarnings, TorchScript's deprecation
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, batch,
                                                                                        check_trace=False)))
            with torch.inference_mode():
                output = traced(batch)
    except Exception:  # noqa: BLE001 - a model TorchScript cannot trace or freeze runs as it is
        return model
    if any(issubclass(warning.category, torch.jit.TracerWarning) for warning in caught):
        return model
    reference = reference.float()  # under autocast (--precision bf16) the eager output is bf16
    scale = float(reference.abs().max())
    if isinstance(output, torch.Tensor) and output.shape == reference.shape and \
            torch.allclose(output.float(), reference, rtol=1e-3, atol=1e-4 * scale):
        return traced
    return model


def _class_gradients(scores: torch.Tensor, activation: torch.Tensor, layout: Layout) -> torch.Tensor:
    """d score[n, k] / d activation[n] for every k in one batched backward, as [N, K, C, h, w].

    Images are independent in eval mode, so one cotangent per class column gives every image's
    gradient at once; is_grads_batched vmaps the K columns over a single backward graph.
    """
    count, k = scores.shape
    cotangents = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, count, k)
    (grads,) = torch.autograd.grad(scores, activation, cotangents, is_grads_batched=True,
                                   allow_unused=True, materialize_grads=True)
    grads = layout.channels_first(grads.flatten(0, 1))
    return grads.unflatten(0, (k, count)).transpose(0, 1)


def _weighted_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """sum_c weights[n, k, c] * features[n, c] -> [N, K, h, w]."""
    return torch.einsum("nkc,nchw->nkhw", weights, features)


def _grad_cam_pp_weights(grads: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights, eq. 19 of the paper with Y = exp(S):
    alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), w = sum_ij alpha_ij relu(g_ij). No epsilon: alpha is 0
    where its denominator is (there g = 0 or the position cannot matter)."""
    g2 = grads.square()
    total = features.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * g2 + total * g2 * grads
    alpha = torch.where(denominator != 0, g2 / denominator, torch.zeros_like(g2))
    return (alpha * grads.relu()).sum(dim=(-2, -1))


def _cam(linear: _LinearCall | None, features: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
         layer: str) -> torch.Tensor:
    """Classic CAM when the scores are a linear layer on the spatial mean of `features`, else the reason."""
    if linear is None:
        raise CamNotApplicable("the model has no linear layer to take class weights from")
    pooled = features.mean(dim=(-2, -1))
    if linear.inputs.shape != pooled.shape:
        raise CamNotApplicable(f"the head is not global average pooling + one linear layer: the last linear "
                               f"layer {linear.name!r} reads {tuple(linear.inputs.shape[1:])} features, "
                               f"not the {pooled.shape[1]} channels of {layer!r}")
    if not torch.allclose(linear.inputs, pooled, rtol=1e-4, atol=1e-5 * float(pooled.abs().max())):
        raise CamNotApplicable(f"the head is not global average pooling + one linear layer: the last linear "
                               f"layer {linear.name!r} does not read the spatial mean of {layer!r}")
    weight, output = linear.module.weight.detach(), linear.output
    if output.shape[1] == 1 and logits.shape[1] == 2:  # a binary model's z, seen as [-z, z] (models/outputs.py)
        weight, output = torch.cat([-weight, weight]), torch.cat([-output, output], dim=1)
    if output.shape != logits.shape or not torch.allclose(output, logits, rtol=1e-4, atol=1e-5):
        raise CamNotApplicable(f"the class scores are not the output of the last linear layer {linear.name!r}")
    return _weighted_sum(weight[targets], features)


def upsample_normalise(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, K, h, w] -> [N, K, H, W]: bilinear to the input size, then min-max to [0, 1] per map.
    A constant map (all zero, say) becomes all zero, never NaN."""
    upsampled = F.interpolate(raw.flatten(0, 1)[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return minmax(upsampled).view(*raw.shape[:2], *size)
