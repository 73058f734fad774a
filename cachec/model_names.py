"""The model name an artifact records: symbolic, never a path of the machine that compiled it.

Why: a manifest travels with the artifact to other users and machines. A local model directory
given as ``/home/alice/models/pixart`` (and diffusers' ``_name_or_path`` in the config, which
holds the same absolute path) would publish the compiling account's file layout and mean
nothing elsewhere. So a path is recorded by its folder name, a relative path as given (it names
nothing outside the folder it was run from), and ``builtin:``/``arch:`` specs and hub ids as they are.
"""

from __future__ import annotations

import os
from pathlib import PurePath


def portable_name(spec: str) -> str:
    """``/abs/path/to/pixart`` → ``pixart``; anything not absolute is kept."""
    if not isinstance(spec, str) or not os.path.isabs(spec):
        return spec
    return PurePath(spec.rstrip("/\\") or spec).name or spec


def portable_config(config: dict) -> dict:
    """The model config with ``_name_or_path`` made portable (the rest is the model's own)."""
    if isinstance(config.get("_name_or_path"), str):
        return {**config, "_name_or_path": portable_name(config["_name_or_path"])}
    return config
