"""End to end through the CLI and artifacts, as a user runs them; bad input gives exit code 2."""

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel

import cachec
from cachec.artifact import load_program
from cachec.cli import main
from cachec.models import example_inputs
from cachec.runtime import CacheRuntime


@pytest.fixture(scope="module")
def artifact_dir(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "fora2"
    assert main(["compile", str(model_dir), "--policy", "fora:2", "--out", str(out)]) == 0
    return out


def test_compile_writes_a_verified_artifact(artifact_dir):
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    assert manifest["program"]["meta"]["policy"] == "fora:2"
    assert set(manifest["program"]["variants"]) == {"full", "reuse"}
    assert manifest["program"]["values"]["hidden_states"] == {"shape": ["B", 4, 8, 8], "dtype": "float32"}
    assert manifest["files"]["program.json"]["sha256"]
    assert not [p for p in artifact_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_artifact_runs_without_the_model_and_matches_in_memory_compile(artifact_dir, model_dir):
    program, manifest = load_program(artifact_dir)
    loaded = CacheRuntime(program, num_steps=6, signature=manifest["signature"])
    model = DiTTransformer2DModel.from_pretrained(model_dir).eval()
    direct = cachec.compile(model, example_inputs(model, 2), "fora:2", num_steps=6)
    x = torch.randn(3, 4, 8, 8)
    for t in (900, 700, 500, 300, 200, 100):
        kw = dict(hidden_states=x, timestep=torch.full((3,), t), class_labels=torch.tensor([1, 2, 3]))
        a, b = loaded(**kw)[0], direct(**kw)[0]
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        x = x - 0.1 * a
    assert loaded.stats.schedule == direct.stats.schedule == "FRFRFR"


@pytest.mark.slow  # lowers to ONNX
def test_onnxruntime_artifact_loads_on_its_own_backend(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    copy = tmp_path / "model"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "ort"
    assert main(["compile", str(copy), "--policy", "fora:2", "--backend", "onnxruntime", "--out", str(out)]) == 0
    model = DiTTransformer2DModel.from_pretrained(copy).eval()
    for f in copy.iterdir():  # the artifact must not need the weights files
        f.unlink()
    loaded = cachec.load(out, num_steps=4)
    assert loaded.backend.name == "onnxruntime"
    direct = cachec.compile(model, example_inputs(model, 2), "fora:2", num_steps=4)
    x = torch.randn(2, 4, 8, 8)
    for t in (900, 600, 300, 100):
        kw = dict(hidden_states=x, timestep=torch.full((2,), t), class_labels=torch.tensor([4, 5]))
        a, b = loaded(**kw)[0], direct(**kw)[0]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        x = x - 0.1 * a
    assert loaded.stats.schedule == "FRFR"
    with pytest.raises(cachec.ArtifactError, match="compiled for the onnxruntime backend"):
        cachec.load(out, backend="eager")


def test_run_reports_consistent_numbers(artifact_dir, tmp_path, capsys):
    assert main(["run", str(artifact_dir), "--steps", "12", "--batch", "2", "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schedule"] == "FRFRFRFRFRFR"
    assert report["full_steps"] == [0, 2, 4, 6, 8, 10]
    # NFE = full steps + the FLOPs share of the cached steps (glue, prologue, epilogue)
    assert 6 < report["nfe"] < 12
    assert report["psnr_vs_none"] > 20 and 0 < report["ssim_vs_none"] <= 1
    assert (tmp_path / "samples_none.png").exists()
    assert any(p.name.startswith("samples_fora") for p in tmp_path.iterdir())


def test_inspect_and_policies(model_dir, capsys):
    assert main(["inspect", str(model_dir), "--policy", "fora:3"]) == 0
    out = capsys.readouterr().out
    assert "cache_read" in out and "transformer_blocks.1.ff" in out
    assert main(["policies"]) == 0
    assert "teacache" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compile", "MODEL", "--policy", "fora:0", "--out", "OUT"], "out of range"),
        (["compile", "MODEL", "--policy", "bogus", "--out", "OUT"], "unknown policy"),
        (["compile", "MODEL", "--policy", "fora:foo=1", "--out", "OUT"], "unknown key 'foo'; accepted keys: N, warmup"),
        (["compile", "MODEL", "--policy", "fora:x", "--out", "OUT"], "N='x' is not an int"),
        (["compile", "MODEL", "--policy", "teacache:coeffs=nosuch", "--out", "OUT"], "known: "),
        (["compile", "./nosuch/dir", "--out", "OUT"], "cannot resolve model"),  # nosuch/dir: a Hub repo id
        (["compile", "arch:nosuch", "--out", "OUT"], "unknown architecture"),
        (["compile", "MODEL", "--backend", "tensorflow", "--out", "OUT"], "unknown backend"),
        (["run", "MODEL", "--steps", "0"], "--steps"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, model_dir, tmp_path, capsys):
    argv = [str(model_dir) if a == "MODEL" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class _DataDependentForward:
    """A DiT whose forward branches in Python on a tensor value: torch.export cannot capture it."""

    def __init__(self, model):
        self.inner = model.forward

    def __call__(self, hidden_states, timestep=None, class_labels=None, **kw):
        if hidden_states.mean() > 0:  # data-dependent control flow
            hidden_states = -hidden_states
        return self.inner(hidden_states, timestep=timestep, class_labels=class_labels, **kw)


def _unexportable_resolve(monkeypatch):
    import cachec.models as models

    real = models.resolve

    def resolve(spec, **kwargs):  # device=, dtype= pass through
        bundle = real(spec, **kwargs)
        bundle.model.forward = _DataDependentForward(bundle.model)
        return bundle

    monkeypatch.setattr(models, "resolve", resolve)


def test_unexportable_model_is_named_without_traceback(model_dir, tmp_path, tmp_path_factory, monkeypatch, capsys):
    """On inputs synthesised from the config the message says so first (they could be the cause) and
    points to --inputs; on the user's own inputs it names the model's construct."""
    from safetensors.torch import save_file

    from cachec.models import resolve

    _unexportable_resolve(monkeypatch)
    out = tmp_path / "o"
    assert main(["compile", str(model_dir), "--policy", "fora:2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "torch.export could not capture DiTTransformer2DModel on the example inputs cachec synthesised" in err
    assert "data-dependent Python control flow" in err and "--inputs FILE" in err
    assert "def forward" not in err  # torch's partial-graph dump is held back
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())
    given = tmp_path_factory.mktemp("inputs") / "dit.safetensors"
    save_file({k: v for k, v in resolve(str(model_dir)).example_inputs(batch=2).items()}, str(given))
    assert main(["compile", str(model_dir), "--inputs", str(given), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "torch.export could not capture DiTTransformer2DModel" in err and "synthesised" not in err
    assert "the model uses data-dependent Python control flow" in err
    assert "accepts a denoiser that non-strict torch.export can trace" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(cachec.errors.ModelError):  # --debug shows the traceback instead
        main(["compile", str(model_dir), "--debug", "--out", str(out)])


def test_existing_output_is_not_overwritten_without_force(artifact_dir, model_dir, capsys):
    assert main(["compile", str(model_dir), "--out", str(artifact_dir)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_corrupt_or_foreign_artifacts_are_named(artifact_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifact_dir, bad)
    with open(bad / "program.json", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    assert main(["run", str(bad), "--steps", "2"]) == 2
    assert "program.json does not match its checksum" in capsys.readouterr().err
    os.truncate(bad / "program.json", 10)
    assert main(["run", str(bad), "--steps", "2"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    (bad / "manifest.json").write_text("{not json")
    assert main(["run", str(bad), "--steps", "2"]) == 2
    assert "manifest.json is corrupt" in capsys.readouterr().err
    (bad / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    assert main(["inspect", str(bad)]) == 2
    assert "not a cachec manifest" in capsys.readouterr().err
    Path(bad / "manifest.json").unlink()
    assert main(["run", str(bad), "--steps", "2"]) == 2


def test_run_warms_up_past_the_policys_forced_full_steps(artifact_dir, tmp_path, capsys):
    """The warm-up trajectory before timing must reach a cached step: ``warmup=2`` once made the
    2-step warm-up refuse to run (every step forced full) before anything was timed."""
    assert main(["run", str(artifact_dir), "--policy", "fora:2,warmup=2", "--steps", "3", "--batch", "1",
                 "--repeats", "1", "--json", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["schedule"] == "FFR"
