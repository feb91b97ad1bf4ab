"""The built-in techniques: names, headings, summaries and declared options, in report order.

This module stays light (no torch, numpy or matplotlib at import) because `auditor run --help` and
`auditor techniques` read every declaration; each `run` imports its section builder from
auditor.sections, which in turn calls the pure functions of auditor.techniques.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from auditor.options import Option

# The saliency methods' keys, torch-free for --help; tests/test_methods.py checks them against auditor.methods.
CAM_METHODS: tuple[str, ...] = ("cam", "grad-cam", "grad-cam++", "score-cam", "layer-cam", "xgrad-cam", "hires-cam",
                                "eigen-cam")
DEFAULT_CAM_METHODS: tuple[str, ...] = ("cam", "grad-cam", "grad-cam++", "layer-cam")
ATTRIBUTION_METHODS: tuple[str, ...] = ("integrated-gradients", "smoothgrad", "smoothgrad-squared", "occlusion", "rise")
DEFAULT_ATTRIBUTION_METHODS: tuple[str, ...] = ("integrated-gradients", "smoothgrad", "occlusion", "rise")

if TYPE_CHECKING:
    from auditor.config import RunOptions
    from auditor.context import AuditContext
    from auditor.document import Section


class Predictions:
    name: ClassVar[str] = "predictions"
    title: ClassVar[str] = "Predictions"
    summary: ClassVar[str] = "Top-k classes and probabilities for every image; accuracy when labels are known."

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.predictions import predictions_section

        return predictions_section(self, ctx)


class Performance:
    name: ClassVar[str] = "performance"
    title: ClassVar[str] = "Model performance: confusions, per-class scores and calibration"
    summary: ClassVar[str] = ("With labelled images: accuracy, top-k, balanced accuracy, macro and weighted F1, a "
                              "confusion matrix, per-class precision / recall / F1, calibration (ECE, reliability "
                              "diagram) and the most confused pairs with the Grad-CAM of both classes.")
    after: ClassVar[tuple[str, ...]] = ("cam",)  # explains its examples at the CAM section's layer
    options: ClassVar[tuple[Option, ...]] = (
        Option("confused-pairs", "Most confused pairs (true class predicted as another) listed.", default=10,
               kind="int", low=1, high=1000, metavar="N"),
        Option("confused-examples", "Of those, the first N are shown on their images with the Grad-CAM of the "
                                    "true and the predicted class (0: none).", default=3, kind="int", low=0,
               high=20, metavar="N"),
        Option("confused-images", "Images shown per confused pair, the most confident mistakes first.", default=2,
               kind="int", low=1, high=8, metavar="N"),
        Option("matrix-classes", "Confusion matrix: most classes drawn; beyond, the classes with the most errors.",
               default=40, kind="int", low=2, high=200, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.performance import performance_section

        return performance_section(self, ctx, options.of(self))


class Trust:
    name: ClassVar[str] = "trust"
    title: ClassVar[str] = "How far to trust each explanation"
    summary: ClassVar[str] = ("Sanity checks (weight randomisation, other class), deletion / insertion faithfulness "
                              "and, with --boxes, the pointing game, per saliency method.")
    after: ClassVar[tuple[str, ...]] = ("cam", "reconstructions", "attribution")  # reuses their maps; shown first
    spreads: ClassVar[bool] = True  # under torchrun each rank scores its share of the images
    options: ClassVar[tuple[Option, ...]] = (
        Option("trust-images", "Images (the first of each gallery) on which the methods are tested.", default=2,
               kind="int", low=1, high=64, metavar="N"),
        Option("trust-steps", "Cost and precision: randomisation steps (head first) and deletion / insertion "
                              "steps (N + 1 points).", default=6, kind="int", low=1, high=64, metavar="N"),
        Option("trust-costly-steps", "Randomisation steps, at the middles of equal parts of the cascade, for the "
                                     "methods that take many passes per map (Score-CAM, Integrated Gradients, "
                                     "SmoothGrad, occlusion, RISE).",
               default=1, kind="int", low=1, high=64, metavar="N"),
        Option("trust-baseline", "What deleted pixels become: a strong blur of the image, or its mean colour.",
               default="blur", kind="choice", choices=("blur", "mean")),
        Option("boxes", "Object boxes for the pointing game: CSV (image,class,x0,y0,x1,y1) or JSON, in the "
                        "original images' pixels.", metavar="FILE"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.trust import trust_section

        return trust_section(self, ctx, options.of(self))


class Architecture:
    name: ClassVar[str] = "architecture"
    title: ClassVar[str] = "Architecture"
    summary: ClassVar[str] = "Layer table with shapes, parameters and MACs, and a graph of the network."
    options: ClassVar[tuple[Option, ...]] = (
        Option("graph-depth", "Architecture graph: how many module levels to expand (1 collapses repeated "
                              "blocks).", default=1, kind="int", low=1, high=20, metavar="N"),
        Option("table-depth", "Architecture table: how many module levels to show, each row with the totals of "
                              "what it holds (1: the graph's top level, repeated blocks collapsed); the full "
                              "per-module table is folded in the HTML and left out of the PDF, and 0 shows it "
                              "instead.", default=1, kind="int", low=0, high=20, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.architecture import architecture_section

        return architecture_section(self, ctx, options.of(self), options.tensorboard)


class Kernels:
    name: ClassVar[str] = "kernels"
    title: ClassVar[str] = "Convolution kernels"
    summary: ClassVar[str] = "The weights of chosen conv layers as image grids (first layer in colour)."
    options: ClassVar[tuple[Option, ...]] = (
        Option("kernel-layers", "Conv layers whose weights to draw (dotted names, see `auditor layers`). Default: "
                                "the first conv layer, a middle and the last one.", default=(), kind="layers",
               metavar="A,B"),
        Option("kernel-count", "Filters drawn per layer, in filter order.", default=64, kind="int", low=1,
               metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.kernels import kernels_section

        return kernels_section(self, ctx, options.of(self))


class FeatureMaps:
    name: ClassVar[str] = "feature-maps"
    title: ClassVar[str] = "Feature maps"
    summary: ClassVar[str] = "Activations of chosen layers: each image beside its most active channels."
    spreads: ClassVar[bool] = True  # under torchrun each rank captures its share of the shown images
    options: ClassVar[tuple[Option, ...]] = (
        Option("feature-layers", "Layers whose activations to draw. Default: three stage outputs (early, "
                                 "middle, late).", default=(), kind="layers", metavar="A,B"),
        Option("feature-channels", "Channels drawn per image and layer: those with the largest mean activation.",
               default=16, kind="int", low=1, high=1024, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.feature_maps import feature_maps_section

        return feature_maps_section(self, ctx, options.of(self))


class Reconstructions:
    name: ClassVar[str] = "reconstructions"
    title: ClassVar[str] = "Deconvnet and guided backprop"
    summary: ClassVar[str] = "Deconvnet and guided-backprop projections of the top class and of strong channels."
    spreads: ClassVar[bool] = True  # under torchrun each rank projects its share of the shown images
    options: ClassVar[tuple[Option, ...]] = (
        Option("recon-layer", "Layer whose strongest channels are projected back to pixels. Default: a stage "
                              "two thirds of the way up.", kind="layer", metavar="NAME"),
        Option("recon-channels", "Channels of --recon-layer projected per image (largest mean activation).",
               default=3, kind="int", low=0, high=16, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.reconstructions import reconstructions_section

        return reconstructions_section(self, ctx, options.of(self))


class ClassActivationMaps:
    name: ClassVar[str] = "cam"
    title: ClassVar[str] = "Class activation maps: CAM, Grad-CAM and their successors"
    summary: ClassVar[str] = ("Where the model looks for each class: CAM, Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM, "
                              "XGrad-CAM, HiResCAM, Eigen-CAM and Guided Grad-CAM galleries per image, per class and "
                              "for mistakes.")
    spreads: ClassVar[bool] = True  # under torchrun each rank maps its share of the shown images
    options: ClassVar[tuple[Option, ...]] = (
        Option("cam-layer", "Layer whose activations and gradients form the maps. Default: the last spatial layer "
                            "before pooling that the class score depends on.", kind="layer", metavar="NAME"),
        Option("cam-top-k", "Most probable classes explained per image.", default=3, kind="int", low=1, high=20,
               metavar="N"),
        Option("cam-classes", "Classes explained on every image (names or indices), also the rows of the "
                              "per-class gallery.", default=(), kind="classes", metavar="A,B"),
        Option("cam-target", "Score differentiated by the gradient methods (Grad-CAM and its successors) and "
                             "Score-CAM: the logit or the probability (softmax, or sigmoid for a sigmoid head).",
               default="logit", kind="choice", choices=("logit", "prob")),
        Option("cam-methods", f"CAM methods drawn on every image and scored by the trust section (or all: "
                              f"{', '.join(CAM_METHODS)}). Score-CAM runs one forward pass per channel of the layer.",
               default=DEFAULT_CAM_METHODS, kind="choices", choices=CAM_METHODS, metavar="A,B"),
        Option("cam-showcase", "CAM methods drawn on the first image besides --cam-methods (or all): there, once, "
                               "Score-CAM costs a forward pass per channel of the layer.", default=CAM_METHODS,
               kind="choices", choices=CAM_METHODS, metavar="A,B"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.cam import cam_section

        return cam_section(self, ctx, options.of(self))


class Attribution:
    name: ClassVar[str] = "attribution"
    title: ClassVar[str] = "Pixel attributions: Integrated Gradients, SmoothGrad, occlusion, RISE"
    summary: ClassVar[str] = ("Per image and top class, the pixel attributions users know from captum and RISE: "
                              "Integrated Gradients, SmoothGrad (and SmoothGrad²), occlusion and RISE; the last two "
                              "need only forward passes, so they also explain models without usable gradients.")
    after: ClassVar[tuple[str, ...]] = ("cam",)  # shown after the CAM maps it complements
    spreads: ClassVar[bool] = True  # under torchrun each rank explains its share of the images
    options: ClassVar[tuple[Option, ...]] = (
        Option("attribution-methods", f"Attribution methods drawn and scored by the trust section (or all: "
                                      f"{', '.join(ATTRIBUTION_METHODS)}).", default=DEFAULT_ATTRIBUTION_METHODS,
               kind="choices", choices=ATTRIBUTION_METHODS, metavar="A,B"),
        Option("attribution-images", "Images (the first of each gallery) explained by the attribution methods.",
               default=2, kind="int", low=1, high=64, metavar="N"),
        Option("ig-steps", "Integrated Gradients: points on the path from the black baseline to the image "
                           "(captum's Gauss-Legendre rule; each one a forward and a backward pass).", default=8,
               kind="int", low=2, high=1024, metavar="N"),
        Option("smoothgrad-samples", "SmoothGrad: noisy copies averaged per image.", default=8, kind="int", low=1,
               high=1024, metavar="N"),
        Option("smoothgrad-noise", "SmoothGrad: noise standard deviation as a share of the image's value range.",
               default=0.15, kind="float", low=0.0, high=1.0, metavar="SHARE"),
        Option("occlusion-window", "Occlusion: side of the square hidden at a time, in input pixels (0: a quarter "
                                   "of the shorter side).", default=0, kind="int", low=0, high=4096, metavar="PX"),
        Option("occlusion-stride", "Occlusion: step between windows in pixels (0: half the window).", default=0,
               kind="int", low=0, high=4096, metavar="PX"),
        Option("rise-masks", "RISE: random masks per image (the paper uses 4000; each one a forward pass).",
               default=96, kind="int", low=1, high=100000, metavar="N"),
        Option("rise-cell", "RISE: the masks' grid, cells per side before upsampling.", default=7, kind="int", low=2,
               high=64, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.attribution import attribution_section

        return attribution_section(self, ctx, options.of(self))


class MaximizingInputs:
    name: ClassVar[str] = "maximization"
    title: ClassVar[str] = "Maximizing inputs"
    summary: ClassVar[str] = ("Activation maximization for chosen channels, pixel and Fourier methods side by side, "
                              "with the real images that excite each channel most.")
    spreads: ClassVar[bool] = True  # under torchrun the images' pass is sharded, the channels spread
    options: ClassVar[tuple[Option, ...]] = (
        Option("max-layer", "Layer whose channels to maximize. Default: the middle stage.", kind="layer",
               metavar="NAME"),
        Option("max-channels", "Channels to maximize, e.g. 0,5,9 or 0:160:10. Default: 8 spread over the layer.",
               default=(), kind="indices", metavar="LIST"),
        Option("max-steps", "Optimisation steps per method (more gives sharper, more detailed patterns).",
               default=48, kind="int", low=1, high=10000, metavar="N"),
        Option("max-size", "Side of the synthesised images in pixels.", default=112, kind="int", low=16, high=1024,
               metavar="PX"),
        Option("max-exemplars", "Real images shown per channel: those with the highest mean activation.",
               default=4, kind="int", low=0, high=32, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.sections.maximization import maximization_section

        return maximization_section(self, ctx, options.of(self))
