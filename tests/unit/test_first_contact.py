"""What a newcomer meets first (issue 25), checked without a model: a fast `--help`, how `cachec run`
judges a timing, output that stays readable off a terminal, the third-party messages filtered by
their exact text, permissions that follow the umask, and manifests without local paths."""

import logging
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from cachec import progress, quiet
from cachec.file_modes import follow_umask
from cachec.model_names import portable_config, portable_name
from cachec.run_timing import speedup

ROOT = Path(__file__).resolve().parents[2]


def test_help_does_not_import_torch():
    """`cachec --help` (and a subcommand's) answer without importing torch or diffusers (seconds)."""
    code = ("import sys\nfrom cachec.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['inspect', '--help'], ['example-pipeline', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
            "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "meta" in out and "default: fora:3" in out  # --device meta and inspect's default are in the help


def test_the_cli_dtype_names_are_the_devices_dtypes():
    from cachec.cli import DTYPE_NAMES
    from cachec.devices import DTYPES

    assert list(DTYPE_NAMES) == list(DTYPES)


# --------------------------------------------------------------------------------------------
# cachec run's timing verdict


def test_a_spread_that_includes_one_is_within_the_noise():
    s = speedup([1.0, 0.6, 0.65], [0.9, 1.0, 1.0])  # one repeat found the policy slower
    assert s.within_noise and "within the noise" in s.verdict()
    assert s.value == pytest.approx(1.0 / 0.65)
    assert s.to_json()["speedup_range"] == [0.9, pytest.approx(1.667, abs=1e-3)]


def test_a_steady_speedup_is_reported_with_its_range():
    s = speedup([0.62, 0.6, 0.61, 0.63, 0.6], [1.0, 0.98, 1.0, 1.01, 0.99])
    assert not s.within_noise
    assert s.value == pytest.approx(1.0 / 0.61)
    assert s.verdict().startswith("5 interleaved repeats ranged 1.6")
    report = s.to_json()
    assert report["repeats"] == 5 and report["latency_s"] == 0.61 and report["latency_none_s"] == 1.0


def test_a_wide_spread_and_a_single_repeat_are_named():
    assert "noisy machine" in speedup([0.5, 0.9, 0.6], [1.0, 1.0, 1.0]).verdict()
    assert "one repeat" in speedup([0.5], [1.0]).verdict() and not speedup([0.5], [1.0]).within_noise
    with pytest.raises(ValueError):
        speedup([0.5, 0.6], [1.0])


# --------------------------------------------------------------------------------------------
# off a terminal: stage lines and heartbeats, no bars


def test_off_a_terminal_loops_print_one_line_per_item_and_no_carriage_returns(capsys):
    assert not progress.on_terminal()  # pytest's captured stderr is not a terminal
    assert list(progress.steps(["a", "b"], "onnx export")) == ["a", "b"]
    with progress.busy("exporting X"):
        pass
    err = capsys.readouterr().err
    assert "[cachec] onnx export 1/2: a" in err and "[cachec] onnx export 2/2: b" in err
    assert "[cachec] exporting X: done in" in err
    assert "\r" not in err


def test_a_heartbeat_keeps_a_log_from_going_silent(capsys):
    import time

    with progress.heartbeat("sampling none", every=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.count("[cachec] still sampling none (") >= 2 and "\r" not in err


# --------------------------------------------------------------------------------------------
# third-party messages: exactly the known-harmless ones are dropped


def test_the_torch_dtype_deprecation_is_filtered_and_other_future_warnings_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("The `torch_dtype` argument is deprecated and will be removed in version 1.0.0. "
                      "Please use `dtype` instead.", FutureWarning, stacklevel=1)
        warnings.warn("`torch_dtype` is deprecated and will be removed in version 1.0.0. Please use `dtype` instead.",
                      FutureWarning, stacklevel=1)
        warnings.warn("The `upcast_attention` argument is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`torch_dtype` is deprecated", UserWarning, stacklevel=1)  # another category stays
    assert [str(w.message) for w in seen] == ["The `upcast_attention` argument is deprecated",
                                              "`torch_dtype` is deprecated"]


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_diffusers_known_notices_are_filtered_and_the_rest_of_its_log_is_not():
    quiet.install()
    log = logging.getLogger("diffusers.models.modeling_utils")
    kept = Kept()
    log.addHandler(kept)  # diffusers' loggers may not propagate to the root (caplog's) logger
    try:
        log.warning("Cannot initialize model with low cpu memory usage because `accelerate` was not found in the"
                    " environment. Defaulting to `low_cpu_mem_usage=False`. It is strongly recommended to install"
                    " `accelerate` for faster and less memory-intense model loading. You can do so with: \n```\npip"
                    " install accelerate\n```\n.")
        log.warning("There are modules in FluxTransformer2DModel that should be kept in float32: []. Casting "
                    "directly with `to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` "
                    "instead to keep these modules in float32.")
        log.warning("There are modules in FluxTransformer2DModel that should be kept in float32: ['norm_out']. "
                    "Casting directly with `to()` can lead to inconsistent results.")
        log.warning("some other diffusers warning")
    finally:
        log.removeHandler(kept)
    assert [r.getMessage().split(".")[0] for r in kept.records] == [
        "There are modules in FluxTransformer2DModel that should be kept in float32: ['norm_out']",
        "some other diffusers warning"]


def test_rays_shutdown_noise_is_recognised_with_or_without_ansi_codes():
    line = ("\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries "
            "remaining, so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`.")
    assert quiet.is_ray_shutdown_noise(line)
    assert quiet.is_ray_shutdown_noise(quiet.ANSI.sub("", line))
    assert not quiet.is_ray_shutdown_noise("Task CachecServer.generate failed. There are 3 retries remaining")
    assert not quiet.is_ray_shutdown_noise("INFO serve -- Application 'cachec' is ready")


# --------------------------------------------------------------------------------------------
# artifacts for other users and machines


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_trees_follow_the_umask(mask):
    before = os.umask(mask)
    try:
        with tempfile.TemporaryDirectory() as parent:
            tree = Path(tempfile.mkdtemp(dir=parent))  # 0700, as the artifact writer's temporary folder
            (tree / "sub").mkdir(mode=0o700)
            fd, name = tempfile.mkstemp(dir=tree / "sub")  # 0600, as AOTInductor's weights were
            os.close(fd)
            (tree / "run.so").write_bytes(b"")
            os.chmod(tree / "run.so", 0o700)
            follow_umask(tree)
            mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (tree, tree / "sub", Path(name), tree / "run.so")}
    finally:
        os.umask(before)
    assert mode[tree] == mode[tree / "sub"] == mode[tree / "run.so"] == 0o777 & ~mask
    assert mode[Path(name)] == 0o666 & ~mask


def test_a_manifest_names_the_model_without_a_local_path():
    assert portable_name("/home/alice/models/pixart") == "pixart"
    assert portable_name("/home/alice/models/pixart/") == "pixart"
    assert portable_name("models/pixart") == "models/pixart"  # relative: as given
    assert portable_name("builtin:tiny-dit") == "builtin:tiny-dit"
    assert portable_config({"_name_or_path": "/srv/x/flux", "num_layers": 2}) == {"_name_or_path": "flux",
                                                                                  "num_layers": 2}


def test_compile_says_at_the_start_when_its_engines_will_not_run_here(monkeypatch, capsys):
    import torch

    from cachec.cli import _say_where_it_runs

    class GpuOnly:
        name, devices = "tensorrt", ("cuda",)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _say_where_it_runs(GpuOnly())
    assert "will not run here" in capsys.readouterr().err
    _say_where_it_runs(type("Any", (), {"name": "eager", "devices": ("cpu", "cuda")})())
    assert capsys.readouterr().err == ""


def test_the_quickstart_tool_reads_the_readme_figure():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import quickstart_repeat
    finally:
        sys.path.remove(str(ROOT / "tools"))
    lo, hi = quickstart_repeat.readme_figure(ROOT / "README.md")
    assert 1.0 < lo <= hi
    assert quickstart_repeat.within(lo * 0.86, lo, hi, 0.15) and not quickstart_repeat.within(hi * 1.16, lo, hi, 0.15)


def test_serve_drops_rays_shutdown_line_and_passes_every_other_line(capsys):
    """Ray prints it from a thread with print(file=sys.stdout): a line and its newline in two writes."""
    import threading

    noise = ("\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries "
             "remaining, so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`.")
    with quiet.output_without(quiet.is_ray_shutdown_noise):
        print("cachec serve: shutting down", file=sys.stderr)
        thread = threading.Thread(target=lambda: print(noise, file=sys.stdout))
        thread.start()
        thread.join()
        print("kept", end="")
        sys.stdout.flush()
        print(" line")
        print("(raylet) Task CachecServer.generate failed. There are infinite retries remaining")
    print("after")
    out, err = capsys.readouterr()
    assert out == "kept line\n(raylet) Task CachecServer.generate failed. There are infinite retries remaining\nafter\n"
    assert err == "cachec serve: shutting down\n"
