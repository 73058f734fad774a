"""Loading a saved diffusers model directory, with or without ``accelerate`` installed.

Why not always ``from_pretrained``: without ``accelerate``, diffusers turns ``low_cpu_mem_usage``
off (it needs accelerate's empty-weight init) and then refuses every class that declares
``_keep_in_fp32_modules`` — Wan, SkyReels-V2, ChronoEdit, Cosmos, Kandinsky 5 — with
"`low_cpu_mem_usage` cannot be False when `keep_in_fp32_modules` is True", whatever the caller
passes (``None`` turns it back on and then fails on the missing module). ``accelerate`` is not a
cachec dependency, so for those classes, when it is missing, the model is built from its config
and its saved weights are read here, with diffusers' dtype rule: parameters and buffers inside a
module named in ``_keep_in_fp32_modules`` stay float32, the rest take ``dtype``. Every other case
is diffusers' own ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import ModelError


def accelerate_available() -> bool:
    """diffusers' own answer (what its ``from_pretrained`` decides on)."""
    from diffusers.utils import is_accelerate_available

    return bool(is_accelerate_available())


def load_pretrained(cls: type, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``cls`` with the weights saved in ``path``, in ``dtype`` (float32 where the class keeps modules so)."""
    quantization = cls.load_config(str(path)).get("quantization_config")
    if quantization and not accelerate_available():  # diffusers needs low_cpu_mem_usage, so accelerate, for these
        method = quantization.get("quant_method", "a quantizer") if isinstance(quantization, dict) else "a quantizer"
        raise ModelError(f"{path} holds weights quantized with {method}: diffusers loads quantized weights only with "
                         "`accelerate` installed (pip install accelerate)")
    if accelerate_available() or not cls._keep_in_fp32_modules:
        # low_cpu_mem_usage needs accelerate; asking for the plain load without it keeps diffusers quiet
        return cls.from_pretrained(str(path), torch_dtype=dtype, low_cpu_mem_usage=accelerate_available()).eval()
    return _load_without_accelerate(cls, Path(path), dtype)


def _load_without_accelerate(cls: type, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers.models.modeling_utils import no_init_weights

    with no_init_weights():  # every parameter is overwritten from the files below
        model = cls.from_config(cls.load_config(str(path)))
    state = read_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"the weights in {path} do not fit {cls.__name__}'s config: "
                         f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:2]})")
    keep = set(cls._keep_in_fp32_modules)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model.eval()


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict ``save_pretrained`` wrote to ``path``: one file or the shards an index lists,
    safetensors preferred (as diffusers prefers them)."""
    from diffusers.models.model_loading_utils import load_state_dict
    from diffusers.utils import (
        SAFE_WEIGHTS_INDEX_NAME,
        SAFETENSORS_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
    )

    for single, index in ((SAFETENSORS_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        if (path / single).is_file():
            return load_state_dict(str(path / single))
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_state_dict(str(_inside(path, shard, index))))
            return state
    raise ModelError(f"{path} holds no weights ({SAFETENSORS_WEIGHTS_NAME}, {WEIGHTS_NAME} or a sharded index)")


def _inside(folder: Path, name: str, index: str) -> Path:
    """A shard the index names, refused unless it is a file inside ``folder``: an index from a
    downloaded or shared model must not make cachec read files elsewhere."""
    root = folder.resolve()
    shard = (folder / name).resolve()
    if not isinstance(name, str) or root not in shard.parents or not shard.is_file():
        raise ModelError(f"{folder / index} names the shard {str(name)[:80]!r}, which is not a file inside {folder}; "
                         "an index lists the weight files next to it by name")
    return shard
