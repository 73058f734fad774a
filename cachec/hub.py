"""Hugging Face Hub models: a repo id (``black-forest-labs/FLUX.1-dev``) resolved to a local folder.

Why its own module: the only place cachec may reach a model hub. A repo id is looked up in the
local Hugging Face cache first (``HF_HUB_CACHE``, ``HF_HOME``) and downloaded only when online;
with ``HF_HUB_OFFLINE=1`` and nothing cached the user gets one message naming both, never a
``huggingface_hub`` traceback. Only what :func:`cachec.models.resolve` loads is fetched (the
denoiser's folder, its scheduler and ``model_index.json``), not a pipeline's text encoders.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ModelError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
DENOISER_FOLDERS = ("transformer", "unet")


def is_repo_id(spec: str) -> bool:
    """``owner/name`` that is not a local path (a local folder of that name wins; ``./owner/name``
    is always a local path)."""
    return bool(REPO_ID.match(spec)) and not Path(spec).exists()


def _patterns(subfolder: str | None) -> list[str]:
    folders = [subfolder] if subfolder else ["", *DENOISER_FOLDERS]
    files = [f"{f}/*" if f else "*.json" for f in folders]
    if not subfolder:
        files += ["*.safetensors"]
    return [*files, "model_index.json", "scheduler/*"]


def snapshot_dir(repo_id: str, revision: str | None = None, subfolder: str | None = None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (of ``subfolder`` only, when given):
    from the cache, or downloaded when online. Raises :class:`ModelError` naming ``HF_HUB_OFFLINE`` and the cache."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError as exc:
        raise ModelError(f"{repo_id} looks like a Hugging Face Hub repo id, and huggingface_hub is not "
                         "installed (pip install huggingface_hub); or give a local diffusers model dir") from exc
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                      allow_patterns=_patterns(subfolder)))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated, network: one message each
        cache = constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            raise ModelError(f"{where} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set: "
                             "download it once online (unset HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache "
                             "that holds it") from exc
        raise ModelError(f"could not fetch {where} from the Hugging Face Hub into {cache}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check the repo id "
                         "and your access (huggingface-cli login), or set HF_HUB_OFFLINE=1 to use the cache only") from exc
