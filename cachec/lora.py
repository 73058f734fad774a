"""LoRA on a pipeline after ``cachec.enable``: the diffusers LoRA API reaches the wrapped model.

diffusers' pipeline LoRA methods (``load_lora_weights``, ``set_adapters``, ``fuse_lora``,
``unfuse_lora``, ``unload_lora_weights``, ``enable_lora``/``disable_lora``, ``delete_adapters``)
act on a component only if ``issubclass(component.__class__, ModelMixin)`` and then call the
component's own PEFT methods. :func:`with_lora_api` gives the cached denoiser's class that base
and forwards each PEFT method to the wrapped model, which is where the adapters live. The cached
programs never run stale adapters: every runtime watches its model (:mod:`cachec.staleness`)
and compiles again after such a change; a LoRA scale passed per call
(``joint_attention_kwargs={"scale": s}``) selects a runtime of its own.

Kept apart from :mod:`cachec.pipeline` because it imports diffusers, which ``import cachec`` does not.
"""

from __future__ import annotations

import functools

# diffusers.loaders.peft.PeftAdapterMixin's public methods (what the pipeline-level LoRA API calls)
PEFT_METHODS = (
    "load_lora_adapter", "save_lora_adapter", "add_adapter", "set_adapter", "set_adapters", "delete_adapters",
    "active_adapters", "enable_adapters", "disable_adapters", "enable_lora", "disable_lora", "fuse_lora",
    "unfuse_lora", "unload_lora", "enable_lora_hotswap",
)


def _forwarded(name: str):
    def method(self, *args, **kwargs):
        return getattr(self.model, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"The wrapped model's ``{name}`` (its cached programs follow the change)."
    return method


def _forwarded_attribute(name: str) -> property:
    return property(lambda self: getattr(self.model, name), doc=f"The wrapped model's ``{name}``.")


@functools.cache
def with_lora_api(denoiser_class: type) -> type:
    """``denoiser_class`` as a diffusers ``ModelMixin`` whose PEFT methods act on its ``model``."""
    from diffusers.models.modeling_utils import ModelMixin

    namespace = {name: _forwarded(name) for name in PEFT_METHODS}
    namespace["peft_config"] = _forwarded_attribute("peft_config")
    namespace["_hf_peft_config_loaded"] = _forwarded_attribute("_hf_peft_config_loaded")
    namespace["__module__"] = denoiser_class.__module__
    namespace["__doc__"] = denoiser_class.__doc__
    return type(denoiser_class.__name__, (denoiser_class, ModelMixin), namespace)


# -- `cachec compile --lora FILE[:SCALE]`: fused into the weights before export --------------------
LORA_SPEC = "FILE[:SCALE]"


def parse_lora_spec(spec: str):
    """``"style.safetensors:0.8"`` -> (path, 0.8); a spec without a scale has scale 1."""
    from pathlib import Path

    from .errors import CachecError

    path, sep, scale = spec.rpartition(":")
    try:
        value = float(scale) if sep else 1.0
    except ValueError:
        path, value = spec, 1.0  # a colon that is part of the file name
    path = Path(path if sep and path else spec)
    if not path.is_file():
        raise CachecError(f"--lora {spec}: no such file; give a LoRA safetensors file in the diffusers/PEFT format, "
                          f"as {LORA_SPEC} (e.g. style.safetensors:0.8)")
    return path, value


def fuse_lora_files(model, specs: list[str]) -> None:
    """Fuse the LoRA files ``specs`` (``FILE[:SCALE]``) into ``model``'s weights and drop the adapters.

    Why fused: an artifact holds a program and its weights, not a live model whose adapters could
    be switched, so the LoRAs become part of the weights it is compiled from.
    """
    from safetensors.torch import load_file

    from .errors import ModelError

    if not hasattr(model, "load_lora_adapter"):
        raise ModelError(f"{type(model).__name__} takes no LoRA adapters (it is not a diffusers model with PEFT "
                         "support); --lora applies to diffusers denoisers such as FLUX, SD3, Wan and the U-Net")
    names, scales = [], []
    for i, spec in enumerate(specs):
        path, scale = parse_lora_spec(spec)
        state = load_file(str(path))
        firsts = {k.split(".", 1)[0] for k in state}  # "transformer.…" keys, as diffusers saves a pipeline's LoRA
        prefix = next(iter(firsts)) if len(firsts) == 1 and firsts <= {"transformer", "unet", "prior"} else None
        name = f"cachec_lora{i}"
        model.load_lora_adapter(state, adapter_name=name, prefix=prefix)
        if name not in (getattr(model, "peft_config", None) or {}):
            raise ModelError(f"--lora {spec}: none of its keys names a module of {type(model).__name__} "
                             f"(keys like {next(iter(state), '?')!r}; expected <module>.lora_A.weight / lora_B.weight)")
        names.append(name)
        scales.append(scale)
    model.set_adapters(names, scales)
    model.fuse_lora(adapter_names=names)
    model.unload_lora()
