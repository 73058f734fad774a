"""A small calibration file (``cachec calibrate --out``'s format) for budget tests, in unit/ and e2e/."""

from __future__ import annotations

import json


def calibration_file(tmp_path, **override):
    """A calibration file of 4 steps with ``override`` applied to its fields."""
    data = {"format": "cachec-calibration", "version": 1, "model": "x", "steps": 4, "samples": 1, "seed": 0,
            "max_gap": 3, "gains": [1.0] * 4, "ratios": [1.0] * 4,
            "errors": {"module": [[0.0] * 4 for _ in range(4)]}}
    data.update(override)
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(data))
    return path


# builtin:tiny-dit's module streams (every attention/MLP output) and their channel count
TINY_DIT_STREAMS = [f"b{i}_{kind}__0" for i in range(6) for kind in ("attn1", "ff")]
TINY_DIT_CHANNELS = 128


def hyca_section(labels_of, clusters: int, streams=TINY_DIT_STREAMS, channels=TINY_DIT_CHANNELS, max_gap=8) -> dict:
    """A ``hyca`` calibration section: channel c of every stream in cluster ``labels_of(channels)[c]``;
    cluster j's error is least for Taylor order j (ties never happen)."""
    errors = [[[0.0 if o == j else 1.0 + o] * max_gap for o in range(3)] for j in range(clusters)]
    return {"clusters": clusters, "max_order": 2, "max_gap": max_gap,
            "streams": {k: {"labels": labels_of(channels), "errors": errors} for k in streams}}
