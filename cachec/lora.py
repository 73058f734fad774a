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
