"""The first commands a newcomer runs (issue 25), end to end on small models: an artifact other
accounts can read that names its model without a local path; `cachec run` timed with interleaved
repeats, readable in a log; `cachec example-pipeline` writing a pipeline diffusers loads."""

import json
import os
import stat

import pytest

from cachec.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_artifact_follows_the_umask_names_no_path_and_runs_with_repeats_in_a_log(model_dir, tmp_path, capsys):
    art = tmp_path / "art"
    before = os.umask(0o027)
    try:
        assert main(["compile", str(model_dir.resolve()), "--policy", "fora:2", "--out", str(art), "--device", "cpu"]) == 0
    finally:
        os.umask(before)
    assert stat.S_IMODE(art.stat().st_mode) == 0o750  # not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in art.iterdir()} == {0o640}
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["spec"] == model_dir.name  # not /tmp/.../dit
    assert not os.path.isabs(manifest["model"]["config"].get("_name_or_path", ""))
    capsys.readouterr()

    assert main(["run", str(art), "--steps", "4", "--batch", "2", "--repeats", "3", "--json",
                 "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["repeats"] == 3 and len(report["speedup_range"]) == 2
    assert report["speedup_range"][0] <= report["speedup_vs_none"] * 1.0001
    assert report["latency_range_s"][0] <= report["latency_s"] <= report["latency_range_s"][1]
    assert isinstance(report["within_noise"], bool) and report["timing"]
    for rep in (1, 2, 3):  # a stage line per timed trajectory, and no progress bar in the log
        assert f"[cachec] repeat {rep}/3 seed 0 none:" in captured.err
        assert f"[cachec] repeat {rep}/3 seed 0 fora:2:" in captured.err
    assert "\r" not in captured.err


def test_example_pipeline_writes_a_pipeline_diffusers_loads(tmp_path, capsys):
    import diffusers

    out = tmp_path / "tiny-pixart"
    assert main(["example-pipeline", "pixart", str(out)]) == 0
    assert "say nothing about image quality" in capsys.readouterr().out
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert type(pipe).__name__ == "PixArtAlphaPipeline" and pipe.text_encoder is not None
    assert main(["example-pipeline", "pixart", str(out)]) == 2  # never silently replaced
    assert "already exists" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
