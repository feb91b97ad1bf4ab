"""Cost of the trust section next to the CAM section whose maps it checks (not a test).

    .venv/bin/python bench/bench_trust.py [--repeat 3] [--trust-steps 6] [--trust-images 3]
        [--cam-methods cam,grad-cam,grad-cam++]

Runs the default model on the bundled photos with --techniques cam,trust (trust reuses the CAM maps)
and with trust alone (it computes them itself), and prints each section's median seconds and the ratio,
after one uncounted warm-up audit (the first pass of a process allocates and initialises what later ones
reuse; in `auditor run` the sections before trust have done that).
The default methods are the seven the trust section scored before issue 19 (the three CAM methods, guided
backprop, deconvnet, Guided Grad-CAM, the plain gradient; no attribution section runs, so none of its
methods is scored), on the three images and six steps of that time's defaults: the before / after
comparison of the README's speed table.
"""

from __future__ import annotations

import argparse
import statistics

from auditor import RunOptions, load_images, load_model, run_audit


def section_seconds(techniques: tuple[str, ...], settings: dict[str, int], repeat: int) -> dict[str, float]:
    model = load_model()
    images = load_images(None, model.preprocess, model.class_names)
    times: dict[str, list[float]] = {}
    run_audit(model, images, RunOptions(techniques=techniques, device="cpu", settings=settings))  # warm-up
    for _ in range(repeat):
        report = run_audit(model, images, RunOptions(techniques=techniques, device="cpu", settings=settings))
        for section in report.sections:
            times.setdefault(section.technique, []).append(section.seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trust-steps", type=int, default=6)
    parser.add_argument("--trust-images", type=int, default=3)
    parser.add_argument("--cam-methods", default="cam,grad-cam,grad-cam++")
    args = parser.parse_args()
    methods = tuple(args.cam_methods.split(","))  # drawn on every image, and nothing more on the first
    settings = {"trust_steps": args.trust_steps, "trust_images": args.trust_images, "cam_methods": methods,
                "cam_showcase": methods}
    together = section_seconds(("cam", "trust"), settings, args.repeat)
    alone = section_seconds(("trust",), settings, args.repeat)
    print(f"EfficientNet-Lite0, 5 bundled photos, CPU, median of {args.repeat}; trust on {args.trust_images} images, "
          f"{args.trust_steps} steps")
    cam = together["cam"]
    print(f"  CAM section                         {cam:6.2f} s")
    print(f"  trust section, reusing the CAM maps {together['trust']:6.2f} s  ({together['trust'] / cam:.1f}x CAM)")
    print(f"  trust section alone                 {alone['trust']:6.2f} s  ({alone['trust'] / cam:.1f}x CAM)")


if __name__ == "__main__":
    main()
