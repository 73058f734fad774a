"""The front end shared by the CLI, ``cachec bench``, ``cachec calibrate``, ``cachec serve`` and the
tools: resolve a model, capture it once, plan methods on copies of that capture, and build (and
warm up) the runtimes that run them.

Why a layer of its own: the commands all start the same way (a model spec or an artifact
directory in, a sampling bundle, programs and runtimes out), and before this module the bench
reached into the CLI's private helpers while the CLI imported the bench — an import circle —
and the CLI, the bench, the serve worker and the tools each wrote the runtime, its warm-up and
the artifact's sampling bundle by hand. Now they all sit on top of this module:

* :func:`open_model` (a model spec, a diffusers directory or an artifact) and :func:`open_bundle`
  (a model already built, with the inputs to capture it with) return a :class:`Session`;
* :meth:`Session.program` plans a method, :meth:`Session.runtime` builds its runtime on the
  session's backend, options and device, :meth:`Session.warm_runtime` also warms it up;
* :func:`artifact_bundle` is the one way from an artifact's manifest to its sampling bundle.

Methods come in parsed (:class:`~cachec.methods.base.Method`); a spec string is parsed at that
edge for callers that hold one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import CachecError, ModelError


@dataclass
class Session:
    """A model opened for sampling and planning.

    ``bundle`` samples (scheduler, inputs); ``program(method)`` returns the planned program of a
    method (planned once per spec, each on its own copy of the single capture) and
    ``signature`` the model's positional input names. For an artifact directory, ``backend``
    and ``options`` point a runtime at the artifact's lowered files and ``artifact_method`` is
    the method it was compiled for; a model spec has neither.
    """

    bundle: object
    signature: list[str]
    backend: str | None = None
    options: dict = field(default_factory=dict)
    artifact_method: object = None  # a Method
    device: object = None  # where the model was built, and where runtimes must go (--device)
    plan: object = field(default=None, repr=False)  # Method -> (program, the capture it rewrote or None)
    planned: dict = field(default_factory=dict, repr=False)  # spec -> what plan returned

    def program(self, method):
        """The program of ``method`` (a Method, or a spec string), planned on first request."""
        method = _as_method(method)
        if method.spec not in self.planned:
            self.planned[method.spec] = self.plan(method)
        return self.planned[method.spec][0]

    def captured(self, method):
        """The (planned, rewritten) capture a program was built from: what an artifact saves."""
        method = _as_method(method)
        self.program(method)
        cap = self.planned[method.spec][1]
        if cap is None:
            raise ModelError("this model was opened from a compiled artifact; compile a model spec or directory")
        return cap

    def runtime(self, method, *, backend: str | None = None, steps: int | None = None, options: dict | None = None,
                program=None):
        """A runtime of ``method`` with the session's signature, backend options and device.

        ``backend`` defaults to the artifact's own, else eager; ``options`` are backend options over
        the session's (``{"mode": "reduce-overhead"}``); ``program`` is one from :attr:`plan` (a
        fresh plan, e.g. to time planning), else the session's :meth:`program` of ``method``."""
        from .runtime import CacheRuntime

        method = _as_method(method)
        return CacheRuntime(program if program is not None else self.program(method), method,
                            backend=backend or self.backend or "eager", num_steps=steps, signature=self.signature,
                            backend_options={**self.options, **(options or {})}, device=self.device)

    def warm_runtime(self, method, *, batch: int, steps: int, backend: str | None = None):
        """:meth:`runtime`, warmed up by a short trajectory (allocations, first-call costs, a lazy
        compile), so that no timed trajectory pays them."""
        from .sampling import sample

        rt = self.runtime(method, backend=backend, steps=steps)
        # long enough for a step past the forced-full ones (warmup=/final=), which a policy refuses
        # to run without; a schedule bound to the trajectory's length (a static mask, alone or as a
        # hybrid's decision; a calibrated budget or OmniCache) runs at that length only
        forced = rt.policy.params.warmup + rt.policy.params.final
        length = steps if rt.policy.length_bound else min(max(2, forced + 1), steps)
        sample(rt, self.bundle, length, 0, batch)
        return rt

    @property
    def is_artifact(self) -> bool:
        return self.artifact_method is not None


def _as_method(method):
    """A Method as is; a spec string a caller still holds is parsed here, the session's edge."""
    from .policy import parse_policy

    return parse_policy(method)


def artifact_bundle(manifest: dict, path: str | Path | None = None, device=None):
    """An artifact's sampling bundle, from its manifest: class, config, latent input and scheduler
    (a builtin model's own; others use the default), and (with ``path``) the example inputs it
    kept. The one place that reads a manifest into a :class:`~cachec.models.ModelBundle`."""
    from . import artifact
    from .models import ModelBundle, builtin_dir

    spec = manifest["model"]["spec"]
    sched = builtin_dir(spec.split(":", 1)[1]) / "scheduler" if spec.startswith("builtin:") else None
    bundle = ModelBundle(spec, None, scheduler_dir=sched, cls_name=manifest["model"]["class"],
                         config=manifest["model"]["config"], device=device,
                         latent=manifest["capture"]["latent_input"])
    if path is not None and artifact.EXAMPLE_INPUTS in manifest["files"]:
        bundle.artifact_inputs = Path(path) / artifact.EXAMPLE_INPUTS
    return bundle


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
    from .models import resolve
    from .policy import parse_policy

    device = resolve_device(device)
    path = Path(model_spec)
    if path.is_dir() and (path / "manifest.json").exists():
        manifest = artifact.read_trusted(path, trust_native=trust_native, verify_key=verify_key)
        bundle = artifact_bundle(manifest, path, device)
        own = parse_policy(manifest["program"]["meta"]["policy"])  # the manifest: an edge

        def plan_artifact(method):
            program, _ = artifact.load_program(path, None if method.spec == own.spec else method,
                                               allow_version_mismatch=allow_version_mismatch,
                                               trust_native=trust_native, verify_key=verify_key)
            return program, None

        backend, options = artifact.runtime_backend(path, manifest, backend)
        return Session(bundle, manifest["signature"], backend, options, own, device, plan_artifact)
    from .input_check import checked_inputs
    from .progress import library_bars_off_terminal

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
    # the plain model runs on the example inputs first, so a failure blames the inputs, not the model
    return open_bundle(bundle, lambda: checked_inputs(bundle, batch), label=model_spec, device=device)


def open_bundle(bundle, example_inputs, *, latent_input: str | None = None, label: str | None = None,
                device=None) -> Session:
    """A session of a model already built (``bundle.model``), captured once with ``example_inputs``
    (a dict, or a function that makes it: a pipeline directory records them from its own first
    call, which takes as long as the export); ``latent_input``: which of them is the latent, when
    the structure should not decide. ``device``: where runtimes go (default: where the weights are)."""
    from .input_check import capture_blaming_inputs
    from .planner import compile_program
    from .progress import busy
    from .runtime import signature_of

    with busy(f"exporting {bundle.class_name} ({label or bundle.name})"):
        inputs = example_inputs() if callable(example_inputs) else example_inputs
        captured = capture_blaming_inputs(bundle, inputs, latent_input=latent_input)

    def plan(method):
        # each plan consumes its own copy of the captured graph (passes rewrite it in place)
        with busy(f"planning {method.spec}"):
            cap = captured.copy()
            return compile_program(cap, method), cap

    return Session(bundle, signature_of(bundle.model), None, {}, None, device, plan)
