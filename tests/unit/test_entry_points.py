"""pyproject's entry points resolve, and the torch.compile backend's old module name still does.

Installed environments read entry points from their metadata, written at install time: one
installed before ``compile_backend.py`` became ``torch_compile.py`` still names the old module.
"""

import importlib
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _resolve(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_every_entry_point_in_pyproject_resolves_to_a_callable():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    specs = dict(project["scripts"])
    for group in project["entry-points"].values():
        specs.update(group)
    assert specs
    for name, spec in specs.items():
        assert callable(_resolve(spec)), (name, spec)


def test_the_old_torch_compile_backend_name_is_the_same_backend():
    from cachec.torch_compile import cachec_backend

    assert _resolve("cachec.compile_backend:cachec_backend") is cachec_backend
