"""The front end shared by the CLI, ``cachec bench`` and ``cachec calibrate``: resolve a model,
capture it once, plan policies on copies of that capture.

Why a layer of its own: the commands all start the same way (a model spec or an artifact
directory in, a sampling bundle and programs out), and before this module the bench reached
into the CLI's private helpers while the CLI imported the bench — an import circle. Now both
sit on top of this module and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import CachecError, ModelError


@dataclass
class Session:
    """A model opened for sampling and planning.

    ``bundle`` samples (scheduler, inputs); ``program(spec)`` returns the planned program of a
    policy (planned once per spec, each on its own copy of the single capture) and
    ``signature`` the model's positional input names. For an artifact directory, ``backend``
    and ``options`` point a runtime at the artifact's lowered files and ``artifact_policy`` is
    the policy it was compiled for; a model spec has neither.
    """

    bundle: object
    signature: list[str]
    backend: str | None = None
    options: dict = field(default_factory=dict)
    artifact_policy: str | None = None
    device: object = None  # where the model was built, and where runtimes must go (--device)
    plan: object = field(default=None, repr=False)  # spec -> (program, the capture it rewrote or None)
    planned: dict = field(default_factory=dict, repr=False)

    def program(self, spec: str):
        """The program of policy ``spec``, planned on first request."""
        if spec not in self.planned:
            self.planned[spec] = self.plan(spec)
        return self.planned[spec][0]

    def captured(self, spec: str):
        """The (planned, rewritten) capture a program was built from: what an artifact saves."""
        self.program(spec)
        cap = self.planned[spec][1]
        if cap is None:
            raise ModelError("this model was opened from a compiled artifact; compile a model spec or directory")
        return cap

    @property
    def is_artifact(self) -> bool:
        return self.artifact_policy is not None


def open_model(model_spec: str, batch: int, backend: str | None = None, allow_version_mismatch: bool = False,
               device=None, dtype=None, image_size: int | None = None, text_tokens: int | None = None,
               inputs_file: str | None = None, loras: list[str] | None = None, *, trust_native: bool = False,
               verify_key=None, subfolder: str | None = None, revision: str | None = None) -> Session:
    """Resolve MODEL (a model spec, a diffusers directory, or an artifact directory).

    ``device``/``dtype`` (names or torch objects; default: the GPU if there is one, fp32) say where
    the model is built and run; ``Session.device`` tells the caller where runtimes must go.
    ``image_size`` (pixels) and ``text_tokens`` set the example inputs the model is captured with.
    ``trust_native``/``verify_key`` apply to an artifact (:func:`cachec.artifact.read_trusted`).
    ``loras`` (``FILE[:SCALE]``) are fused into the model's weights before it is captured.
    ``subfolder``/``revision`` pick the denoiser inside a model dir or Hub repo (:func:`cachec.models.resolve`).
    """
    from . import artifact
    from .devices import resolve_device, resolve_dtype
    from .models import ModelBundle, builtin_dir, resolve

    device = resolve_device(device)
    path = Path(model_spec)
    if path.is_dir() and (path / "manifest.json").exists():
        manifest = artifact.read_trusted(path, trust_native=trust_native, verify_key=verify_key)
        spec = manifest["model"]["spec"]
        sched = builtin_dir(spec.split(":", 1)[1]) / "scheduler" if spec.startswith("builtin:") else None
        bundle = ModelBundle(spec, None, scheduler_dir=sched, cls_name=manifest["model"]["class"],
                             config=manifest["model"]["config"], device=device,
                             latent=manifest["capture"]["latent_input"])
        if artifact.EXAMPLE_INPUTS in manifest["files"]:
            bundle.artifact_inputs = path / artifact.EXAMPLE_INPUTS

        own_policy = manifest["program"]["meta"]["policy"]

        def plan_artifact(pol):
            program, _ = artifact.load_program(path, None if pol == own_policy else pol,
                                               allow_version_mismatch=allow_version_mismatch,
                                               trust_native=trust_native, verify_key=verify_key)
            return program, None

        own, options = artifact.runtime_backend(path, manifest, backend)
        return Session(bundle, manifest["signature"], own, options, own_policy, device, plan_artifact)
    from .input_check import capture_blaming_inputs, checked_inputs
    from .planner import compile_program
    from .policy import parse_policy
    from .progress import busy, library_bars_off_terminal
    from .runtime import signature_of

    library_bars_off_terminal()  # a local model directory loads with diffusers' bars
    bundle = resolve(model_spec, dtype=resolve_dtype(dtype), device=device, subfolder=subfolder, revision=revision)
    if image_size is not None:
        if image_size < 8 or image_size % 8:
            raise CachecError(f"--image-size {image_size}: give the image side in pixels, a multiple of 8 (e.g. 1024)")
        bundle.resolution = image_size // 8  # the latent side: every supported model decodes with an 8x VAE
    if inputs_file is not None:
        if not Path(inputs_file).is_file():
            raise CachecError(f"--inputs {inputs_file}: no such file (give a safetensors file of example tensors)")
        bundle.inputs_file = Path(inputs_file)
    if text_tokens is not None:
        if text_tokens < 1:
            raise CachecError(f"--text-tokens must be at least 1; got {text_tokens}")
        bundle.text_tokens = text_tokens
    if loras:
        from .lora import fuse_lora_files

        fuse_lora_files(bundle.model, loras)
    with busy(f"exporting {bundle.class_name} ({model_spec})"):
        # the plain model runs on the example inputs first, so a failure blames the inputs, not the model
        captured = capture_blaming_inputs(bundle, checked_inputs(bundle, batch))

    def plan(pol):
        # each plan consumes its own copy of the captured graph (passes rewrite it in place)
        with busy(f"planning {pol}"):
            cap = captured.copy()
            return compile_program(cap, parse_policy(pol)), cap

    return Session(bundle, signature_of(bundle.model), None, {}, None, device, plan)
