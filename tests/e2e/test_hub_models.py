"""Hub models: ``cachec compile OWNER/NAME`` loads a repo id from the local Hugging Face cache.

A repo id (``--subfolder``, ``--revision``) resolves through :mod:`cachec.hub`: the cache first,
a download only when online. Offline with nothing cached is one message naming ``HF_HUB_OFFLINE``
and the cache path. Every test here is offline, against a temporary cache in the hub layout
(``models--OWNER--NAME/refs/REV`` naming a ``snapshots/COMMIT`` folder): nothing reaches the network.
"""

from __future__ import annotations

import json

import pytest
from small_models import make

from cachec.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache in ``tmp_path`` holding ``tiny/dit`` (the denoiser in transformer/)."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("a test reached the network"))

    cache = tmp_path / "hub"
    repo = cache / "models--tiny--dit"
    make("dit").save_pretrained(repo / "snapshots" / COMMIT / "transformer")
    (repo / "snapshots" / COMMIT / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "v1").write_text(COMMIT)
    for name, value in {"HF_HUB_OFFLINE": True, "HF_HUB_CACHE": str(cache)}.items():
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(constants, name, value)  # read once at import: the process already imported it
    return cache


def test_a_repo_id_compiles_from_the_offline_cache(hub_cache, tmp_path):
    out = tmp_path / "art"
    assert main(["compile", "tiny/dit", "--subfolder", "transformer", "--revision", "v1",
                 "--policy", "fora:2", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["spec"] == "tiny/dit" and manifest["model"]["class"] == "DiTTransformer2DModel"


def test_offline_with_nothing_cached_is_one_message_naming_hf_hub_offline_and_the_cache(hub_cache, tmp_path, capsys):
    assert main(["compile", "nobody/absent", "--out", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("cachec: error: nobody/absent is not in the Hugging Face cache at ")
    assert str(hub_cache) in err and "HF_HUB_OFFLINE is set" in err
    assert not (tmp_path / "art").exists()


def test_a_missing_subfolder_is_named(hub_cache, tmp_path, capsys):
    assert main(["compile", "tiny/dit", "--subfolder", "unet", "--out", str(tmp_path / "art")]) == 2
    assert "tiny/dit has no folder 'unet'" in capsys.readouterr().err
