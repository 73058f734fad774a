"""Model specs: ``builtin:NAME``, ``arch:NAME`` (published config, random weights), or a local dir.

A resolved model is a :class:`ModelBundle`: the diffusers module, how to synthesise example
inputs for it from its class and config (so export needs no pipeline), which inputs are the
streams, and which scheduler samples it. Nothing here reaches a model hub.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from . import hub
from .arch_configs import ARCH_CONFIGS
from .errors import ModelError
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
            inputs = load_inputs(self.inputs_file, batch, dtype)
        else:
            try:
                inputs = synth_inputs(self.cls_name, self.config, batch, seed, text_tokens=self.text_tokens,
                                      resolution=resolution or self.resolution, frames=self.frames, dtype=dtype,
                                      model=self.model)
            except ModelError as exc:
                if self.pipeline_dir is not None:
                    inputs = fit_inputs(self.recorded_call(exc), batch, dtype)
                elif self.artifact_inputs is not None:
                    inputs = load_inputs(self.artifact_inputs, batch, dtype)
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


class _Config(dict):
    __getattr__ = dict.get


def synth_inputs(cls: str, config: dict, batch: int = 2, seed: int = 0, *, text_tokens: int = 8,
                 resolution: int | None = None, frames: int = 1, dtype: torch.dtype = torch.float32,
                 model: torch.nn.Module | None = None) -> dict:
    """Keyword inputs for a model class and config (no module needed, so artifacts can be sampled).

    Shapes follow the pipelines (latent channels and sample size from the config); values are
    seeded noise, timesteps mid-schedule, so export and runtime checks see realistic dtypes.
    """
    g = torch.Generator().manual_seed(seed)
    c = _Config(config)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    size = resolution or c.get("sample_size") or 16
    if cls == "DiTTransformer2DModel":
        return dict(hidden_states=randn(batch, c.in_channels, size, size),
                    timestep=torch.full((batch,), 500, dtype=torch.long),
                    class_labels=torch.randint(0, c.num_embeds_ada_norm, (batch,), generator=g))
    if cls == "PixArtTransformer2DModel":
        added = {"resolution": None, "aspect_ratio": None}
        if c.use_additional_conditions if c.use_additional_conditions is not None else c.sample_size == 128:
            added = {"resolution": torch.tensor([[size * 8.0, size * 8.0]] * batch, dtype=dtype),
                     "aspect_ratio": torch.ones(batch, 1, dtype=dtype)}
        return dict(hidden_states=randn(batch, c.in_channels, size, size),
                    encoder_hidden_states=randn(batch, text_tokens, c.caption_channels),
                    timestep=torch.full((batch,), 500, dtype=torch.long), added_cond_kwargs=added)
    if cls in ("FluxTransformer2DModel", "ChromaTransformer2DModel"):  # Chroma: FLUX's layout, no pooled text
        h = w = size // 2 if resolution else 8
        ids = torch.zeros(h, w, 3)
        ids[..., 1] = torch.arange(h)[:, None]
        ids[..., 2] = torch.arange(w)[None, :]
        kw = dict(hidden_states=randn(batch, h * w, c.in_channels),
                  encoder_hidden_states=randn(batch, text_tokens, c.joint_attention_dim))
        if c.pooled_projection_dim:
            kw["pooled_projections"] = randn(batch, c.pooled_projection_dim)
        kw.update(timestep=torch.full((batch,), 0.5, dtype=dtype),
                  img_ids=ids.reshape(h * w, 3).to(dtype), txt_ids=torch.zeros(text_tokens, 3, dtype=dtype))
        if c.guidance_embeds:
            kw["guidance"] = torch.full((batch,), 3.5, dtype=dtype)
        return kw
    if cls == "SD3Transformer2DModel":
        return dict(hidden_states=randn(batch, c.in_channels, size, size),
                    encoder_hidden_states=randn(batch, text_tokens, c.joint_attention_dim),
                    pooled_projections=randn(batch, c.pooled_projection_dim),
                    timestep=torch.full((batch,), 500.0, dtype=dtype))
    if cls == "WanTransformer3DModel":
        size = resolution or 16
        return dict(hidden_states=randn(batch, c.in_channels, frames, size, size),
                    timestep=torch.full((batch,), 500, dtype=torch.long),
                    encoder_hidden_states=randn(batch, text_tokens, c.text_dim))
    if cls == "QwenImageTransformer2DModel":
        # packed 2x2 latent patches, (frames, rows, cols) of the packed grid per sample, as QwenImagePipeline passes
        h = w = size // 2 if resolution else 8
        return dict(hidden_states=randn(batch, h * w, c.in_channels),
                    encoder_hidden_states=randn(batch, text_tokens, c.joint_attention_dim),
                    encoder_hidden_states_mask=torch.ones(batch, text_tokens, dtype=torch.long),
                    timestep=torch.full((batch,), 0.5, dtype=dtype), img_shapes=[(1, h, w)] * batch)
    if cls == "LTXVideoTransformer3DModel":
        # packed latent tokens (frames x rows x cols, patch 1) and the grid they came from, as LTXPipeline passes them
        size = resolution or 16
        return dict(hidden_states=randn(batch, frames * size * size, c.in_channels),
                    encoder_hidden_states=randn(batch, text_tokens, c.caption_channels),
                    timestep=torch.full((batch,), 500.0, dtype=dtype),
                    encoder_attention_mask=torch.ones(batch, text_tokens, dtype=dtype),
                    num_frames=frames, height=size, width=size)
    if cls == "UNet2DConditionModel":
        # a 0-d timestep, as StableDiffusionPipeline passes it (a batched one bounds the batch at 2..63)
        return dict(sample=randn(batch, c.in_channels, size, size),
                    timestep=torch.tensor(500, dtype=torch.long),
                    encoder_hidden_states=randn(batch, text_tokens, c.cross_attention_dim))
    return signature_inputs(cls, config, batch, seed, text_tokens=text_tokens, resolution=resolution, frames=frames,
                            dtype=dtype, model=model)


# config keys that give a text stream's width, in the order diffusers' classes use them
# (``caption_channels`` first: where a class has it, a caption projection maps it to ``cross_attention_dim``)
_TEXT_DIMS = ("joint_attention_dim", "caption_channels", "cross_attention_dim", "text_dim", "text_embed_dim",
              "encoder_hid_dim", "context_dim", "caption_projection_dim")


def signature_inputs(cls: str, config: dict, batch: int = 2, seed: int = 0, *, text_tokens: int = 8,
                     resolution: int | None = None, frames: int = 1, dtype: torch.dtype = torch.float32,
                     model: torch.nn.Module | None = None) -> dict:
    """Example inputs of any class from its forward signature and config.

    The forward's first argument is the latent: ``(B, in_channels, H, W)``, with a frame axis for
    a ``*3D*``/video class; ``timestep`` is a batch of mid-schedule values; ``encoder_hidden_states``
    a token sequence as wide as the config's text dimension; ``pooled_projections`` as wide as
    ``pooled_projection_dim``. Arguments with a default are left out. A required argument none of
    these rules covers is ambiguous: the error asks for ``--inputs FILE``.
    """
    import inspect

    g = torch.Generator().manual_seed(seed)
    c = _Config(config)
    forward = getattr(model, "forward", None) if model is not None else _cls(cls).forward
    params = [p for p in inspect.signature(forward).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    sample_size = c.get("sample_size")
    size = resolution or (sample_size if isinstance(sample_size, int) else 16)
    channels = c.get("in_channels") or c.get("in_dim") or c.get("num_channels_latents")
    video = "3D" in cls or "Video" in cls
    out: dict = {}
    for i, p in enumerate(params):
        name = p.name
        if i == 0:
            if not channels:
                break
            shape = (batch, channels, frames, size, size) if video else (batch, channels, size, size)
            out[name] = torch.randn(*shape, generator=g).to(dtype)
        elif name in ("timestep", "timesteps", "t"):
            out[name] = torch.full((batch,), 500.0, dtype=dtype)
        elif name == "encoder_hidden_states" and any(c.get(k) for k in _TEXT_DIMS):
            width = next(c.get(k) for k in _TEXT_DIMS if c.get(k))
            out[name] = torch.randn(batch, text_tokens, width, generator=g).to(dtype)
        elif name == "pooled_projections" and c.get("pooled_projection_dim"):
            out[name] = torch.randn(batch, c.pooled_projection_dim, generator=g).to(dtype)
        elif name == "encoder_attention_mask" and "encoder_hidden_states" in out and p.default is p.empty:
            out[name] = torch.ones(batch, text_tokens, dtype=dtype)  # every text token attended
        elif name == "guidance" and c.get("guidance_embeds"):
            out[name] = torch.full((batch,), 3.5, dtype=dtype)  # a model with a guidance embedding needs its input
        elif p.default is p.empty:
            break
    missing = [p.name for p in params if p.default is p.empty and p.name not in out]
    if missing or not out:
        raise ModelError(
            f"cannot build example inputs for {cls} from its forward signature and config: no rule for the required "
            f"input(s) {missing or [params[0].name if params else '?']}; pass them with --inputs FILE (a safetensors "
            "file of example tensors named as the forward's arguments, a__b for a nested a={'b': ...}) or use a "
            "pipeline with cachec.enable"
        )
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
        # low_cpu_mem_usage needs `accelerate` (not a dependency); asking for the plain load keeps diffusers quiet
        low_mem = importlib.util.find_spec("accelerate") is not None
        return _cls(cls_name).from_pretrained(str(path), torch_dtype=dtype, low_cpu_mem_usage=low_mem).eval()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported with the path
        raise ModelError(f"could not load {cls_name} from {path}: {exc}") from exc
