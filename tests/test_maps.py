"""maps.safetensors: each CAM image's top-class maps at the layer's resolution, float16, keyed by image sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from fixtures_models import tiny
from safetensors.numpy import load
from toolkit import audit

from auditor.report import write_report
from auditor.report.maps import MAPS_FILE, read_maps


def test_the_cam_maps_are_kept_by_image_hash(tmp_path: Path) -> None:
    report = audit(tiny(), ("predictions", "cam"), gallery_images=3)
    written = write_report(report, tmp_path, pdf=False)
    assert written["maps"] == tmp_path / MAPS_FILE
    data = (tmp_path / MAPS_FILE).read_bytes()
    record = json.loads((tmp_path / "report.json").read_text())["record"]
    assert record["maps"]["file"] == MAPS_FILE and record["maps"]["sha256"] == hashlib.sha256(data).hexdigest()
    cam = next(s for s in report.sections if s.technique == "cam")
    hashes = {f["name"]: f["sha256"] for f in record["images"]["files"]}
    shown = record["images"]["gallery"]["shown"]
    expected = {f"{hashes[name]}/{method}" for name in shown for method in cam.metrics["methods"]}
    maps = load(data)
    assert set(maps) == expected == set(record["maps"]["keys"])
    for heat in maps.values():
        assert heat.dtype == np.float16 and heat.shape == (8, 8)  # tiny: 32 px, two stride-2 convolutions
        assert 0 <= float(heat.min()) and float(heat.max()) <= 1
    assert all(v.dtype == np.float32 for v in read_maps(tmp_path).values())
    json_text = (tmp_path / "report.json").read_text()
    assert "arrays" not in json.loads(json_text)["sections"][1]  # the maps are in their own file only


def test_no_cam_no_maps_file(tmp_path: Path) -> None:
    (tmp_path / MAPS_FILE).write_bytes(b"an older run's")
    report = audit(tiny(), ("predictions",))
    written = write_report(report, tmp_path, pdf=False)
    assert "maps" not in written and not (tmp_path / MAPS_FILE).exists()
    assert report.record["maps"] is None and read_maps(tmp_path) == {}
