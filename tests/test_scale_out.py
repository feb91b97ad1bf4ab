"""Audits beyond one process: --workers decoding processes, torchrun ranks (gloo on the CPU), --precision.

Every check compares numbers with a one-process, --workers 0, fp32 run on the same images and seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from auditor import distributed
from auditor.cli import cli
from auditor.config import RunOptions
from auditor.context import AuditContext, default_workers
from auditor.errors import AuditorError
from auditor.forward import autocast
from auditor.inputs.images import check_files, load_images
from auditor.inputs.models import load_model
from tests.fixtures_models import TINY_CLASSES, TINY_FACTORY_IMPORT_SPEC

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["ant", "bee", "cat", "dog", "eel"][:TINY_CLASSES]
TECHNIQUES = "predictions,performance,feature-maps,reconstructions,cam,attribution,trust,maximization"
CHEAP_FLAGS = ["--input-size", "32", "--device", "cpu", "--no-pdf", "--batch-size", "3", "--gallery-images", "2",
               "--trust-images", "2", "--trust-steps", "2", "--cam-methods", "grad-cam",
               "--attribution-methods", "occlusion", "--max-steps", "3", "--max-size", "32", "--quiet"]


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """11 seeded noise images in three labelled folders (11 does not divide into the 3-image batches), and
    a --labels file naming TinyNet's five classes."""
    rng = np.random.default_rng(0)
    for i in range(11):
        path = tmp_path / "images" / CLASSES[i % 3] / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    return tmp_path / "images", labels


def arguments(folder: tuple[Path, Path], out: Path, *more: str) -> list[str]:
    images, labels = folder
    return ["run", str(images), "-m", TINY_FACTORY_IMPORT_SPEC, "--labels", str(labels), "-t", TECHNIQUES,
            *CHEAP_FLAGS, "-o", str(out), *more]


def timeless(value: object) -> object:
    """`value` without its "seconds" and "*_seconds" entries: timings, the only numbers that may differ
    between runs."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k != "seconds" and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def numbers(out: Path) -> dict[str, object]:
    """What must not change with workers or ranks: predictions, accuracy, every gallery's numbers (feature maps,
    reconstructions, CAM peaks, attributions), trust scores, maximization."""
    report = json.loads((out / "report.json").read_text())
    sections = {s["technique"]: s for s in report["sections"]}
    assert all(not s.get("error") for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    performance = sections["performance"]["metrics"]
    return {"predictions": sections["predictions"]["metrics"]["images"],
            "accuracy": {k: v for k, v in performance.items() if "accuracy" in k or k in ("top1", "top_k", "f1")},
            "performance": performance,
            "cam": sections["cam"]["metrics"]["images"],
            "attribution": timeless(sections["attribution"]["metrics"]),
            "maximization": timeless(sections["maximization"]["metrics"]),
            "feature maps": sections["feature-maps"]["metrics"],
            "reconstructions": sections["reconstructions"]["metrics"],
            "trust": timeless(sections["trust"]["metrics"]),
            "files": report["record"]["images"]["files"]}


def one_process(folder: tuple[Path, Path], out: Path, *more: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, arguments(folder, out, *more))
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def torchrun(folder: tuple[Path, Path], out: Path, ranks: int, env: dict[str, str] | None = None,
             *more: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "auditor", *arguments(folder, out, *more)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "AUDITOR_DIST_TIMEOUT": "60", **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
                          check=False)


# --- sharding, without a process group ----------------------------------------------------------------------


def test_shards_are_whole_batches_in_order_and_cover_every_image():
    for count in (0, 1, 5, 11, 12, 100):
        for size in (1, 3, 16):
            for ranks in (1, 2, 3, 5):
                shards = [distributed.shard(count, size, distributed.World(rank, ranks)) for rank in range(ranks)]
                assert [i for s in shards for i in s] == list(range(count))
                assert all(s.start % size == 0 for s in shards if len(s))  # a batch is never split
    assert [list(distributed.shard(11, 3, distributed.World(r, 2))) for r in (0, 1)] == [[0, 1, 2, 3, 4, 5],
                                                                                          [6, 7, 8, 9, 10]]


def test_default_workers_follow_the_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert default_workers() == 1 and default_workers(2) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert default_workers() == 4 and default_workers(4) == 3 and default_workers(16) == 0


def test_a_failed_rank_is_named_in_one_line():
    assert str(distributed.RankFailed(1, "RuntimeError: boom")) == "rank 1 failed: RuntimeError: boom"
    assert str(distributed.RankFailed(0, "--model: no such model")) == "--model: no such model"
    with pytest.raises(RuntimeError, match="AUDITOR_FAIL_RANK=1"):
        os.environ["AUDITOR_FAIL_RANK"] = "1"
        try:
            distributed.fail_hook(distributed.World(1, 2))
        finally:
            del os.environ["AUDITOR_FAIL_RANK"]
    distributed.fail_hook(distributed.World(0, 2))  # not this rank: nothing


# --- workers ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_give_the_numbers_of_the_main_process(folder, tmp_path):
    one_process(folder, tmp_path / "w0", "--workers", "0")
    pooled = one_process(folder, tmp_path / "w2", "--workers", "2")
    assert pooled["record"]["environment"]["workers"] == 2
    assert numbers(tmp_path / "w2") == numbers(tmp_path / "w0")


def test_worker_batches_are_the_same_tensors_and_errors_name_the_file(folder):
    model = load_model(TINY_FACTORY_IMPORT_SPEC, input_size=32)
    images = load_images(folder[0], model.preprocess)
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    here = list(images.input_batches(batches, workers=0))
    pooled = list(images.input_batches(batches, workers=2))
    assert all(torch.equal(a, b) for a, b in zip(here, pooled, strict=True))
    images.paths[4].write_bytes(b"not the image any more")
    with pytest.raises(AuditorError, match=f"--images: {images.paths[4]} changed while the audit ran"):
        list(images.input_batches(batches, workers=2))


def test_the_scan_checks_files_in_workers_with_the_same_result(folder):
    (folder[0] / "ant" / "broken.png").write_bytes(b"no image")
    model = load_model(TINY_FACTORY_IMPORT_SPEC, input_size=32)
    here = load_images(folder[0], model.preprocess)
    pooled = load_images(folder[0], model.preprocess, check=lambda paths: check_files(paths, workers=2))
    assert (here.names, here.sha256, here.sizes, here.skipped) == (pooled.names, pooled.sha256, pooled.sizes,
                                                                   pooled.skipped)
    assert [name for name, _ in here.skipped] == ["ant/broken.png"]


# --- precision ----------------------------------------------------------------------------------------------


def test_bf16_maps_and_probabilities_follow_fp32(folder):
    """A torchvision resnet18 with random weights: its Grad-CAM maps and probabilities under bf16 autocast
    against fp32."""
    from auditor.techniques.cam import grad_cam

    model = load_model("resnet18", weights="none", input_size=64)
    images = load_images(folder[0], model.preprocess)
    results = {}
    for precision in ("fp32", "bf16"):
        ctx = AuditContext(model, images, RunOptions(device="cpu", precision=precision, workers=0),
                           torch.device("cpu"), {})
        x = ctx.inputs([0, 1, 2, 3])
        with autocast(ctx.device, precision):
            maps = grad_cam(model.module, None, x, ctx.forward.top_indices[:4, 0])
        results[precision] = (ctx.forward.probabilities, maps)
    (p32, m32), (p16, m16) = results["fp32"], results["bf16"]
    assert p16.dtype == torch.float32  # probabilities stay float32
    assert np.corrcoef(p32.flatten(), p16.flatten())[0, 1] > 0.99
    assert m32.shape == m16.shape == (4, 64, 64)
    assert np.corrcoef(m32.float().flatten().detach(), m16.float().flatten().detach())[0, 1] > 0.99


def test_every_technique_runs_under_bf16_without_falling_back_to_fp32():
    from tests.fixtures_models import tiny
    from tests.toolkit import CHEAP, audit

    report = audit(tiny(), size=32, precision="bf16", **CHEAP)
    assert [s.technique for s in report.sections if s.error] == []
    assert [n for s in report.sections for n in s.notes if "--precision" in n] == []
    used = {t["name"]: t["precision"] for t in report.record["techniques"]}
    assert {t: p for t, p in used.items() if p != "bf16"} == {"architecture": "fp32", "kernels": "fp32"}


def test_fp16_on_the_cpu_is_refused_in_one_line(folder, tmp_path):
    result = CliRunner().invoke(cli, arguments(folder, tmp_path / "out", "--precision", "fp16"))
    assert result.exit_code == 1
    assert "--precision fp16 needs a CUDA device; on the CPU use --precision bf16" in result.output
    assert not (tmp_path / "out" / "report.json").exists()


# --- torchrun -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_ranks_give_one_report_with_the_numbers_of_one_process(folder, tmp_path):
    alone = one_process(folder, tmp_path / "one", "--workers", "0")
    ran = torchrun(folder, tmp_path / "two", 2)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    record = report["record"]
    jsonschema = pytest.importorskip("jsonschema")
    from auditor.report.schema import schema_text

    jsonschema.Draft202012Validator(json.loads(schema_text("report"))).validate(report)
    # one item a rank in each of 6 spread calls: 2 images for the feature maps, reconstructions, the CAM
    # gallery, occlusion; 2 blocks of 4 channels for each maximization method. The trust section's 5 (trained
    # maps, 2 steps, other class, deletion) each have one --batch-size block of its 2 images, the last rank's
    assert record["environment"]["distributed"] == {"world_size": 2, "backend": "gloo", "shards": [6, 5],
                                                    "spread": [6, 11]}
    assert alone["record"]["environment"]["distributed"]["world_size"] == 1
    assert numbers(tmp_path / "two") == numbers(tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_run_in_one_line_and_writes_no_report(folder, tmp_path):
    ran = torchrun(folder, tmp_path / "out", 2, {"AUDITOR_FAIL_RANK": "1"})
    assert ran.returncode != 0
    ours = [line for line in ran.stderr.splitlines() if "failed:" in line and "rank 1" in line
            and line.startswith("Error:")]
    expected = "Error: rank 1 failed: RuntimeError: AUDITOR_FAIL_RANK=1: this rank fails on purpose (a test hook)"
    assert ours == [expected], ran.stderr[-3000:]
    # torchrun's launcher adds its own report (ChildFailedError); no auditor frame, no auditor traceback
    assert "/auditor/" not in "".join(line for line in ran.stderr.splitlines() if line.strip().startswith("File"))
    assert sum(line.startswith("Error:") for line in ran.stderr.splitlines()) == 1  # one line, from rank 0 alone
    assert not (tmp_path / "out" / "report.json").exists() and not (tmp_path / "out" / "report.html").exists()


def test_the_record_says_which_precision_each_technique_ran_in(folder, tmp_path):
    images, labels = folder
    runner = CliRunner()
    for precision in ("fp32", "bf16"):
        result = runner.invoke(cli, ["run", str(images), "-m", TINY_FACTORY_IMPORT_SPEC, "--labels", str(labels),
                                     "-t", "predictions,kernels", *CHEAP_FLAGS, "--precision", precision,
                                     "-o", str(tmp_path / precision)])
        assert result.exit_code == 0, result.output
    fp32, bf16 = (json.loads((tmp_path / p / "report.json").read_text()) for p in ("fp32", "bf16"))
    assert bf16["record"]["environment"]["precision"] == "bf16"
    assert {t["name"]: t["precision"] for t in bf16["record"]["techniques"]} == {"predictions": "bf16",
                                                                                 "kernels": "fp32"}
    top = [[[c["probability"] for c in image["top"]] for image in run["sections"][0]["metrics"]["images"]]
           for run in (fp32, bf16)]
    assert np.corrcoef(np.ravel(top[0]), np.ravel(top[1]))[0, 1] > 0.99


def test_spread_results_come_back_on_the_cpu_in_order():
    from auditor.techniques.trust.perturbation import ConfidenceChange

    one = distributed.World()  # one process: the same calls in turn
    found = distributed.spread(one, 3, lambda i: {"maps": torch.full((1, 2), float(i)), "why": (i, [torch.ones(1)]),
                                                 "change": ConfidenceChange.of(torch.ones(1), torch.zeros(1))})
    assert [float(part["maps"][0, 0]) for part in found] == [0.0, 1.0, 2.0]
    assert all(part["maps"].device.type == "cpu" and part["why"][1][0].device.type == "cpu" for part in found)
    assert float(found[0]["change"].average_drop) == 100.0


def test_an_exception_that_cannot_travel_between_ranks_becomes_its_one_line():
    travels = distributed._picklable(ValueError("no gradient"))
    assert isinstance(travels, ValueError) and str(travels) == "no gradient"
    rebuilt = distributed._picklable(distributed.RankFailed(1, "boom"))  # its constructor takes two arguments
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "rank 1 failed: boom"
