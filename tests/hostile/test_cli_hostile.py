"""Hostile use of the command line (issue 21, items 2, 7, 8, 10, 11): what --force may delete, two
compiles into one folder, leftovers of killed or failing writes, rerunning calibrate, and errors
that were raw tracebacks.

Cost: tiny-dit is exported once per module (``session``) and in-process compiles reuse that export
(``cachec.cli.open_model`` patched), so each costs a plan and a 9.5 MB write. Two faults need a
process of their own (SIGKILL, a file-size limit); those subprocesses run a real ``cachec
compile`` and start when the module does, so they overlap the in-process tests.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cachec.cli as cli
from cachec import output_dir, program_store
from cachec.cli import main

MODEL = "builtin:tiny-dit"
ROOT = Path(__file__).resolve().parents[2]

# a compile whose artifact write blocks (after some bytes are out) until the test kills it
BLOCKING_COMPILE = textwrap.dedent("""
    import sys, time
    import cachec.program_store as program_store
    def blocking(ep, out_dir):
        (out_dir / program_store.WEIGHTS_FILE).write_bytes(b"x" * 100000)
        print("WRITING", flush=True)
        time.sleep(600)
    program_store.save = blocking
    from cachec.cli import main
    sys.exit(main(sys.argv[1:]))
""")
# a full disk, as the kernel reports it: writes past 1 MB fail (EFBIG) instead of killing the process
FULL_DISK_COMPILE = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    from cachec.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _spawn(script: str, *argv: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """The two subprocess compiles, started first so that their export overlaps the other tests."""
    root = tmp_path_factory.mktemp("procs")
    (root / "killed").mkdir()
    (root / "full").mkdir()
    procs = {
        "killed": _spawn(BLOCKING_COMPILE, "compile", MODEL, "--device", "cpu", "--out", "art", cwd=root / "killed"),
        "full": _spawn(FULL_DISK_COMPILE, "compile", MODEL, "--device", "cpu", "--out", "art", cwd=root / "full"),
    }
    yield root, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def session(request):
    """tiny-dit exported once; the subprocess compiles start first when a selected test needs them
    (``-m "not slow"`` deselects those), so that their exports overlap this one."""
    from cachec.session import open_model

    if any("background" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("background")
    return open_model(MODEL, 2, device="cpu")


@pytest.fixture
def shared_export(session, monkeypatch):
    """In-process compiles reuse the module's export (everything after it runs for real)."""
    monkeypatch.setattr(cli, "open_model", lambda *a, **k: session)


@pytest.fixture(scope="module")
def artifact(session, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "open_model", lambda *a, **k: session)
    try:
        assert main(["compile", MODEL, "--device", "cpu", "--out", str(out), "--max-batch", "4"]) == 0
    finally:
        mp.undo()
    return out


def compile_to(out, *extra) -> int:
    return main(["compile", MODEL, "--device", "cpu", "--out", str(out), *extra])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old-" in p.name or p.name.endswith(".cachec-lock"))


# -- item 2: --force replaces only an artifact or an empty folder -------------------------------

def test_force_refuses_a_folder_of_user_files(tmp_path, capsys, shared_export):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"mine")
    assert compile_to(user, "--force") == 2
    err = capsys.readouterr().err
    assert "refuses to replace" in err and str(user) in err and "Traceback" not in err
    assert (user / "holiday.jpg").read_bytes() == b"mine"


def test_force_refuses_the_model_folder_before_exporting(tmp_path, capsys, monkeypatch):
    model = tmp_path / "dit"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")

    def no_export(*a, **k):
        raise AssertionError("the refusal must come before the export")

    monkeypatch.setattr(cli, "open_model", no_export)
    assert main(["compile", str(model), "--out", str(model), "--force"]) == 2
    assert "which this compile reads" in capsys.readouterr().err
    assert (model / "diffusion_pytorch_model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("where", [".", "..", "sub/.."])
def test_force_refuses_the_current_directory_and_above(tmp_path, capsys, monkeypatch, where):
    cwd = tmp_path / "work"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "manifest.json").write_text(json.dumps({"format": "cachec-artifact"}))  # even an artifact
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(cli, "open_model", lambda *a, **k: pytest.fail("refused before the export"))
    assert compile_to(where, "--force") == 2
    assert "current directory or a folder above it" in capsys.readouterr().err
    assert (cwd / "manifest.json").exists() and (cwd / "sub").is_dir()


def test_force_replaces_an_empty_folder_and_an_artifact(tmp_path, shared_export):
    out = tmp_path / "out"
    out.mkdir()
    assert compile_to(out, "--force") == 0
    (out / "marker").write_text("from the first compile")
    assert compile_to(out, "--force") == 0  # an artifact: replaced
    assert json.loads((out / "manifest.json").read_bytes())["format"] == "cachec-artifact"
    assert not (out / "marker").exists()
    assert leftovers(tmp_path) == []


def test_existing_out_without_force_is_refused_before_exporting(artifact, capsys, monkeypatch):
    monkeypatch.setattr(cli, "open_model", lambda *a, **k: pytest.fail("refused before the export"))
    assert compile_to(artifact) == 2
    assert "already exists" in capsys.readouterr().err


# -- item 7: one compile per --out ----------------------------------------------------------------

def test_second_compile_into_a_locked_out_fails_at_once(tmp_path, capsys, shared_export):
    out = tmp_path / "out"
    with output_dir.OutputLock(out):  # what a first compile holds while it runs
        start = time.perf_counter()
        assert compile_to(out) == 2
        assert time.perf_counter() - start < 5, "the second compile must not export before failing"
    err = capsys.readouterr().err
    assert "being written by another cachec compile" in err and f"pid {os.getpid()}" in err
    assert not out.exists() and leftovers(tmp_path) == []


# -- item 8: no leftovers -------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkilled_compile_leftovers_are_removed_by_the_next_compile(background, shared_export):
    """SIGKILL leaves the temporary artifact and the lock file (no process can clean up); the next
    compile into the folder takes the dead compile's lock over and removes the temporary folder."""
    root, procs = background
    folder, proc = root / "killed", procs["killed"]
    line = proc.stdout.readline()  # blocks until the artifact write has begun
    assert line.strip() == "WRITING", proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = leftovers(folder)
    assert ".art.cachec-lock" in left and any(name.startswith(".art.tmp-") for name in left), left
    assert compile_to(folder / "art") == 0  # the same --out: its lock is free, its leftovers are gone
    assert leftovers(folder) == [] and sorted(p.name for p in folder.iterdir()) == ["art"]


def test_cleaning_spares_live_writers_other_hosts_and_puts_a_moved_artifact_back(tmp_path):
    """What the next compile removes: only what dead processes of this host left (pid and host are in
    the names); an artifact a killed --force had moved aside comes back when nothing replaced it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = output_dir._HOST
    names = {
        f".a.tmp-{dead.pid}@{host}-abcdefgh": False,  # dead writer: removed
        f".a.tmp-{os.getpid()}@{host}-abcdefgh": True,  # live writer (this process): kept
        f".a.tmp-{dead.pid}@elsewhere-abcdefgh": True,  # another machine's (a shared disk): kept
        f".b.old-{dead.pid}@{host}": False,  # moved aside, b missing: put back as b
        ".c.tmp-123": True,  # not a name cachec writes
    }
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / f".b.old-{dead.pid}@{host}" / "manifest.json").write_text("{}")
    output_dir.clean_stale(tmp_path / "a")
    assert {n: (tmp_path / n).exists() for n in names} == names
    assert (tmp_path / "b" / "manifest.json").is_file()


def _write_some(out_dir) -> None:
    """The first bytes of the program's weights file, as the artifact writer would leave them."""
    (Path(out_dir) / program_store.WEIGHTS_FILE).write_bytes(b"x" * 100000)


def test_sigterm_during_the_write_removes_the_partial_artifact(tmp_path, capsys, shared_export, monkeypatch):
    def terminated_while_writing(ep, out_dir, *a, **k):
        _write_some(out_dir)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from another shell
        time.sleep(5)  # the handler raises before this ends
        pytest.fail("SIGTERM did not interrupt the write")

    def unhandled(signum, frame):  # what runs if main() installs no handler of its own
        raise AssertionError("cachec did not handle SIGTERM (by default it kills the process, leaving the temp folder)")

    monkeypatch.setattr(program_store, "save", terminated_while_writing)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert compile_to(tmp_path / "out") == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # main() puts the caller's handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "terminated" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_compile_is_one_line_and_exit_130(tmp_path, capsys, shared_export, monkeypatch):
    def interrupted(ep, out_dir, *a, **k):
        _write_some(out_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(program_store, "save", interrupted)
    assert compile_to(tmp_path / "out") == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "cachec: interrupted; nothing half-written was left"
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_disk_during_compile_is_one_message(background):
    root, procs = background
    proc = procs["full"]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]  # was 134: torch's writer aborted the process
    assert "Traceback" not in err and "cannot write the artifact art: File too large" in err
    assert list((root / "full").iterdir()) == []


def test_full_disk_during_run_leaves_no_partial_png(artifact, tmp_path, capsys, monkeypatch):
    from PIL import Image

    def disk_full(self, fp, *a, **k):
        Path(fp).write_bytes(b"")  # what the kernel leaves: the file exists, nothing fits in it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "run"
    assert main(["run", str(artifact), "--device", "cpu", "--steps", "1", "--batch", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []


def test_bench_json_and_calibrate_out_on_a_folder_are_refused_up_front(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "open_model", lambda *a, **k: pytest.fail("refused before any work"))
    import cachec.bench as bench

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("refused before any work"))
    folder = tmp_path / "results"
    folder.mkdir()
    assert main(["bench", MODEL, "--policies", "fora:2", "--json", str(folder)]) == 2
    assert "it is a folder" in capsys.readouterr().err
    assert main(["calibrate", MODEL, "--out", str(folder)]) == 2
    assert "it is a folder" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and leftovers(tmp_path) == []


# -- item 10: calibrate replaces its own output ---------------------------------------------------

def test_calibrate_reruns_over_its_previous_output(tmp_path, shared_export):
    out = tmp_path / "calibration.json"
    out.write_text('{"stale": true}')  # the previous run's file, at the default name
    assert main(["calibrate", MODEL, "--device", "cpu", "--steps", "2", "--samples", "2", "--bases", "module",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "stale" not in data and "module" in data["errors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]


# -- item 11: one message instead of a traceback --------------------------------------------------

def test_run_on_the_meta_device_is_one_message(artifact, capsys):
    assert main(["run", str(artifact), "--device", "meta", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--device meta" in err and "Traceback" not in err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_run_out_where_no_folder_can_be_made_is_one_message(artifact, capsys):
    assert main(["run", str(artifact), "--device", "cpu", "--steps", "2", "--out", "/proc/cachec-x"]) == 2
    assert "cannot write /proc/cachec-x" in capsys.readouterr().err


def test_run_batch_above_the_artifacts_max_batch_is_refused(artifact, tmp_path, capsys):
    assert main(["run", str(artifact), "--device", "cpu", "--steps", "1", "--batch", "8", "--out", str(tmp_path)]) == 2
    assert "above this program's max_batch 4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_example_pipeline_force_never_deletes_user_files(tmp_path, capsys):
    """`example-pipeline DIR --force` replaces only a saved pipeline or an empty folder, checked
    before anything is built (it used to delete whatever DIR held)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["example-pipeline", "flux", str(folder), "--force"]) == 2
    assert "neither a saved pipeline" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_a_weight_index_cannot_name_a_file_outside_its_model_folder(tmp_path, shard):
    """A shared model's shard index names files by path: one outside the folder is refused, unread."""
    import torch
    from safetensors.torch import save_file

    from cachec.errors import ModelError
    from cachec.model_loading import read_weights

    save_file({"w": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ModelError, match="not a file inside"):
        read_weights(folder)


@pytest.mark.parametrize("spec", ["budget:4,calib=../../../tmp/evil.json", "hyca:4,calib=/etc/cal.json",
                                  "omnicache:6,calib=" + "a/" * 200 + "c.json", "..", "fora:3"])
def test_run_names_its_sample_file_inside_out_whatever_the_spec(spec, tmp_path):
    """`cachec run` writes ``samples_<spec>.png`` under --out; a spec carrying a path (``calib=``)
    once made folders of it (``samples_hyca_4_calib/tmp/x.png``) and ``..`` could leave --out."""
    from cachec.cli import sample_file_stem

    stem = sample_file_stem(spec)
    path = (tmp_path / f"samples_{stem}.png").resolve()
    assert path.parent == tmp_path.resolve() and "/" not in stem and len(path.name) < 255, stem
