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
