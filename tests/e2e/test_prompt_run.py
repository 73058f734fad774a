"""``cachec run PIPELINE_DIR --prompt``: a prompt through a whole local pipeline (tokenizers, text
encoders, denoiser, VAE), plain and with cachec. Small FLUX and PixArt-α pipelines are saved by
:mod:`tiny_pipelines` (random weights, tokenizers built here). ``none`` must reproduce the plain
pipeline's image exactly; a cache policy must follow its schedule and change the image."""

import json

import pytest
import torch
from tiny_pipelines import save_flux, save_pixart

from cachec.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module", params=["flux", "pixart"])
def pipeline_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return save_flux(root) if request.param == "flux" else save_pixart(root)


def _run(pipeline_dir, policy, tmp_path, capsys, steps=6):
    argv = ["run", str(pipeline_dir), "--prompt", "a red cat in a house", "--policy", policy, "--steps", str(steps),
            "--image-size", "64", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_none_reproduces_the_plain_pipeline(pipeline_dir, tmp_path, capsys):
    report = _run(pipeline_dir, "none", tmp_path, capsys)
    assert report["psnr_vs_plain"] == float("inf") and report["ssim_vs_plain"] == pytest.approx(1.0)
    assert all(s == "FFFFFF" for s in report["schedule"].values())
    assert (tmp_path / "prompt_none.png").exists()


def test_a_policy_runs_its_schedule_in_the_pipeline(pipeline_dir, tmp_path, capsys):
    report = _run(pipeline_dir, "fora:2", tmp_path, capsys)
    assert list(report["schedule"].values()) == ["FRFRFR"]  # one branch: FLUX names it cond, PixArt batches CFG
    assert 3.0 <= next(iter(report["nfe"].values())) < 3.5
    assert report["psnr_vs_plain"] < float("inf")  # the cache changed the image
    assert (tmp_path / "prompt_fora_2.png").exists()


def test_a_directory_without_a_pipeline_is_named(model_dir, capsys):
    assert main(["run", str(model_dir), "--prompt", "a cat"]) == 2
    assert "needs a local diffusers pipeline directory" in capsys.readouterr().err


def test_a_pipeline_directory_supplies_the_inputs_its_denoisers_signature_does_not_describe(tmp_path, capsys,
                                                                                             monkeypatch):
    """CogView3-Plus needs size conditioning (``original_size``…) that no signature rule can build.
    Its synthesis rule taken away (it stands for a class no rule covers): as a bare model directory
    it is refused with what to pass; as a pipeline directory, the pipeline's own first denoiser call
    supplies the inputs, and the compiled artifact runs."""
    from tiny_pipelines import save_cogview3plus

    from cachec import input_synthesis
    from cachec.models import resolve

    monkeypatch.delitem(input_synthesis.RULES, "CogView3PlusTransformer2DModel")
    pipe_dir = save_cogview3plus(tmp_path)
    # the transformer alone: a clear error naming --inputs
    assert main(["compile", str(pipe_dir / "transformer"), "--out", str(tmp_path / "bare"), "--device", "cpu"]) == 2
    assert "--inputs FILE" in capsys.readouterr().err
    # the pipeline: inputs recorded from its own call, batch fitted
    bundle = resolve(str(pipe_dir))
    kw = bundle.example_inputs(batch=3)
    assert {"original_size", "target_size", "crop_coords"} <= set(kw)
    assert kw["hidden_states"].shape[0] == 3 and kw["original_size"].shape == (3, 2)
    with torch.no_grad():  # what the pipeline recorded is what the model takes
        assert bundle.model(**kw, return_dict=False)[0].shape == kw["hidden_states"].shape
    art = tmp_path / "art"
    assert main(["compile", str(pipe_dir), "--policy", "fora:3", "--out", str(art), "--device", "cpu"]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert {"original_size", "target_size", "crop_coords"} <= set(manifest["program"]["inputs"])
    capsys.readouterr()
    assert main(["run", str(art), "--steps", "6", "--batch", "2", "--out", str(tmp_path / "s"), "--json",
                 "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schedule"] == "FRRFRR"
