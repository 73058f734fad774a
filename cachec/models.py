"""Model specs: ``builtin:NAME``, ``arch:NAME`` (published config, random weights), or a local dir.

A resolved model is a :class:`ModelBundle`: the diffusers module, how to synthesise example
inputs for it from its class and config (so export needs no pipeline), which inputs are the
streams, and which scheduler samples it. Nothing here reaches a model hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from . import hub
from .arch_configs import ARCH_CONFIGS
from .errors import ModelError
from .input_synthesis import signature_inputs, synth_inputs  # noqa: F401 - synthesis lives there; importers use these names here
from .model_loading import load_pretrained
from .quantized import check_quantization_config

# flow-matching models are sampled with FlowMatchEulerDiscreteScheduler, the rest with DDIM
FLOW_MATCHING = {
    "FluxTransformer2DModel", "SD3Transformer2DModel", "WanTransformer3DModel",
    # the arch: families whose diffusers pipelines sample with FlowMatchEulerDiscreteScheduler
    "AuraFlowTransformer2DModel", "ChromaTransformer2DModel", "QwenImageTransformer2DModel",
    "HunyuanVideoTransformer3DModel", "LTXVideoTransformer3DModel",
}


@dataclass
class ModelBundle:
    """A model to compile or sample: the module (absent for a loaded artifact) or its class and config."""

    name: str
    model: torch.nn.Module | None
    scheduler_dir: Path | None = None
    text_tokens: int = 8
    frames: int = 1
    cls_name: str = ""
    config: dict | None = None
    device: torch.device | None = None  # where inputs go when there is no module to ask (an artifact)
    resolution: int | None = None  # latent side for example inputs (None: the config's sample size)
    inputs_file: Path | None = None  # a safetensors file of example tensors (``--inputs``), for any class
    pipeline_dir: Path | None = None  # MODEL was a pipeline directory: its own first call can supply inputs
    recorded: dict | None = field(default=None, repr=False)  # that call's tensors, once recorded
    artifact_inputs: Path | None = None  # an artifact's own example inputs (kept when none could be synthesised)
    latent: str | None = None  # the latent input as capture found it (an artifact's manifest says it)
    inputs_origin: str = ""  # where the last example inputs came from: config, file, pipeline or artifact

    def __post_init__(self):
        if self.model is not None:
            self.cls_name = type(self.model).__name__
            self.config = dict(self.model.config)

    @property
    def class_name(self) -> str:
        return self.cls_name

    @property
    def latent_input(self) -> str:
        """The forward's first tensor argument (capture confirms it from the output's shape)."""
        from .structure import first_tensor_input

        if self.latent is not None:
            return self.latent

        tensors = {k: v for k, v in self.example_inputs(batch=1).items() if isinstance(v, torch.Tensor)}
        if self.model is None:
            return next(iter(tensors))  # synthesised inputs list the latent first
        return first_tensor_input(self.model, tensors)

    def example_inputs(self, batch: int = 2, seed: int = 0, resolution: int | None = None) -> dict:
        """Inputs on the model's device and in its dtype (seeded on the CPU, so every device sees the same values).

        With an ``inputs_file`` they are that file's tensors, with their batch repeated or cut to ``batch``.
        """
        param = next(self.model.parameters()) if self.model is not None else None
        dtype = param.dtype if param is not None else torch.float32
        if self.inputs_file is not None:
            inputs, self.inputs_origin = load_inputs(self.inputs_file, batch, dtype), "file"
        elif self.recorded is not None:  # recorded once (synthesis failed or the model failed on it): kept
            inputs, self.inputs_origin = fit_inputs(self.recorded, batch, dtype), "pipeline"
        else:
            try:
                inputs = synth_inputs(self.cls_name, self.config, batch, seed, text_tokens=self.text_tokens,
                                      resolution=resolution or self.resolution, frames=self.frames, dtype=dtype,
                                      model=self.model)
                self.inputs_origin = "config"
            except ModelError as exc:
                if self.pipeline_dir is not None:
                    inputs, self.inputs_origin = fit_inputs(self.recorded_call(exc), batch, dtype), "pipeline"
                elif self.artifact_inputs is not None:
                    inputs, self.inputs_origin = load_inputs(self.artifact_inputs, batch, dtype), "artifact"
                else:
                    raise
        device = param.device if param is not None else self.device
        return to_device(inputs, device) if device is not None else inputs

    def recorded_call(self, why: Exception) -> dict[str, torch.Tensor]:
        """The tensors of the pipeline directory's own first denoiser call (recorded once): what the
        signature could not tell (``why``), the pipeline that ships with the model knows."""
        if self.recorded is None:
            from .progress import stage
            from .recorded_inputs import record_first_call

            stage(f"example inputs: recorded from {self.pipeline_dir}'s own first denoiser call (the forward "
                  f"signature does not describe them all: {str(why).split(';')[0]})")
            param = next(self.model.parameters())
            self.recorded = record_first_call(self.pipeline_dir, param.device, param.dtype)
        return self.recorded

    def scheduler(self):
        import diffusers

        if self.scheduler_dir is not None:
            return diffusers.DDIMScheduler.from_pretrained(str(self.scheduler_dir))
        if self.class_name in FLOW_MATCHING:
            return diffusers.FlowMatchEulerDiscreteScheduler()
        return diffusers.DDIMScheduler()


def _cls(name: str):
    """Any diffusers model class (no whitelist: what torch.export captures, cachec serves)."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ModelError(f"model class {name!r} is not a diffusers model class (diffusers {diffusers.__version__})")
    return cls


def load_inputs(path: Path, batch: int, dtype: torch.dtype) -> dict:
    """Example inputs from a safetensors file (``--inputs FILE``): name → tensor, as the forward takes them.

    ``a__b`` names a nested input (``added_cond_kwargs={"b": ...}``). Floating tensors take the
    model's dtype. The file's batch (the leading size of its first tensor) is repeated or cut to
    ``batch`` in every tensor that carries it.
    """
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types (and OSError)
        raise ModelError(f"--inputs {path}: not a readable safetensors file of example tensors ({exc})") from exc
    if not flat:
        raise ModelError(f"--inputs {path}: the file holds no tensor")
    return fit_inputs(flat, batch, dtype)


def fit_inputs(flat: dict[str, torch.Tensor], batch: int, dtype: torch.dtype) -> dict:
    """Flat example tensors (``a__b`` nested) as keyword inputs: floating ones in ``dtype``, and their
    batch (the leading size of the first tensor) repeated or cut to ``batch`` in every tensor that
    carries it. Shared by ``--inputs`` files and inputs recorded from a pipeline's own call."""
    first = next(iter(flat.values()))
    have = int(first.shape[0]) if first.dim() else 1
    out: dict = {}
    for name, t in flat.items():
        if t.is_floating_point():
            t = t.to(dtype)
        if t.dim() and t.shape[0] == have and have != batch:
            t = t.repeat(-(-batch // have), *([1] * (t.dim() - 1)))[:batch]
        outer, _, inner = name.partition("__")
        if inner:
            out.setdefault(outer, {})[inner] = t
        else:
            out[name] = t
    # ``a__0``, ``a__1``… were a list (a ControlNet's per-block residuals): a list again, in order
    return {k: [v[i] for i in sorted(v, key=int)] if isinstance(v, dict) and all(i.isdigit() for i in v) else v
            for k, v in out.items()}

def example_inputs(model: torch.nn.Module, batch: int = 2, seed: int = 0, *, text_tokens: int = 8,
                   resolution: int | None = None, frames: int = 1) -> dict:
    """Synthesise a forward's keyword inputs from the model's class and config."""
    dtype = next(model.parameters()).dtype
    return synth_inputs(type(model).__name__, dict(model.config), batch, seed, text_tokens=text_tokens,
                        resolution=resolution, frames=frames, dtype=dtype)


def to_device(inputs: dict, device) -> dict:
    """Move a (possibly nested) dict of model keyword inputs to ``device``."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        elif isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out


def builtin_dir(name: str) -> Path:
    return Path(str(resources.files("cachec").joinpath("builtin", name.replace("-", "_"))))


BUILTINS = ("tiny-dit",)


def resolve(spec: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, device=None,
            subfolder: str | None = None, revision: str | None = None) -> ModelBundle:
    """Turn ``builtin:NAME``, ``arch:NAME``, a local directory or a Hugging Face Hub repo id
    (``owner/name`` at ``revision``; :mod:`cachec.hub`) into a :class:`ModelBundle`; ``subfolder``
    is the denoiser's folder inside a directory or repo (default: found, ``transformer``/``unet``).

    ``device`` is where the weights live. ``arch:`` models are built on it directly (FLUX.1-dev's
    12 B parameters never pass through host memory on the way to a GPU); ``device="meta"`` builds
    them without any weights at all, which is enough for capture, planning, FLOPs and op counts
    (``cachec inspect arch:flux.1-dev`` on a machine with less memory than the model).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTINS:
            raise ModelError(f"unknown builtin model {name!r}; builtin models: {', '.join(BUILTINS)}")
        d = builtin_dir(name)
        if not (d / "config.json").exists():
            raise ModelError(f"builtin model {name} is missing its checkpoint at {d}; retrain with tools/train_tiny_dit.py")
        model = _load_dir(d, dtype).to(device)
        return ModelBundle(spec, model, scheduler_dir=d / "scheduler")
    if spec.startswith("arch:"):
        name = spec.split(":", 1)[1]
        if name not in ARCH_CONFIGS:
            raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCH_CONFIGS)}")
        cls_name, cfg = ARCH_CONFIGS[name]
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        with torch.device(device):
            model = _cls(cls_name)(**cfg).to(dtype).eval()
        return ModelBundle(spec, model)
    path = Path(spec)
    if hub.is_repo_id(spec):
        path = hub.snapshot_dir(spec, revision, subfolder)
    elif revision is not None:
        raise ModelError(f"--revision applies to a Hugging Face Hub repo id (owner/name), not {spec!r}")
    if path.is_dir():
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise ModelError(f"{spec} has no folder {subfolder!r} (--subfolder names the denoiser's folder in it)")
        bundle = ModelBundle(spec, _load_dir(folder, dtype).to(device))
        if (path / "model_index.json").is_file():
            bundle.pipeline_dir = path
        return bundle
    raise ModelError(
        f"cannot resolve model {spec!r}: use builtin:NAME ({', '.join(BUILTINS)}), arch:NAME "
        f"({', '.join(ARCH_CONFIGS)}), a local diffusers model directory with config.json and weights, "
        "or a Hugging Face Hub repo id (owner/name)"
    )


def _load_dir(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        sub = path / "transformer" if (path / "transformer" / "config.json").exists() else path / "unet"
        if (sub / "config.json").exists():
            path, cfg_file = sub, sub / "config.json"
        else:
            raise ModelError(f"{path} has no config.json (nor transformer/ or unet/ subfolder): not a diffusers model dir")
    try:
        config = json.loads(cfg_file.read_text())
        cls_name = config["_class_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{cfg_file} is not a diffusers config (no _class_name): {exc}") from exc
    check_quantization_config(config.get("quantization_config"), str(path))  # before diffusers asks for bitsandbytes
    try:
        return load_pretrained(_cls(cls_name), path, dtype)  # with or without `accelerate` (not a dependency)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported with the path
        raise ModelError(f"could not load {cls_name} from {path}: {exc}") from exc
