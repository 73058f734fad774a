"""The :class:`Backend` interface and the helpers every segment-by-segment backend shares.

Why its own module: each backend module imports these, and the package ``__init__`` (the registry
that imports backends by name) re-exports them; kept here, no backend imports back up into the
registry that imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cachec.errors import ArtifactError, ModelError, PolicyError

Runner = Callable[[dict, dict], float]


class Backend:
    """The interface every backend implements, and its declared capabilities.

    Capabilities (class attributes):

    * ``dynamic_variants`` — a variant's shapes may change from step to step beyond the batch
      (a token variant's selected token count);
    * ``token_variants`` — runs ToCa/DuCa gather/scatter variants (needs ``dynamic_variants`` and,
      for ``select=attn``, a materialised attention map);
    * ``fft`` — lowers FasterCache's CFG-Cache segments: complex FFTs on the two halves of the
      batch. ONNX and TensorRT have no complex tensors; AOTInductor compiles them, but its
      packages are exported for any batch and these need an even one (not wired up);
    * ``cuda_graphs`` — can capture a variant as a CUDA graph (static shapes, fixed buffers);
    * ``devices`` — where it runs; ``movable`` — its lowered variants are torch modules that can
      move to another device after lowering (``CacheRuntime.to``);
    * ``writes_artifacts`` — ``cachec compile --backend NAME`` can write it; ``holds_graphs`` —
      its artifact keeps the captured graph (any backend can lower it), else only lowered files;
      ``default_max_batch`` — the largest batch its artifacts accept unless ``--max-batch`` says
      otherwise (None: the exported limit).
    * ``native_code`` — its artifact files are machine code (shared libraries, engines) that loading
      runs and no parser can vet: such an artifact loads only when trusted or signed
      (:func:`cachec.artifact.read_trusted`).
    * ``quantized_weights`` — runs weights quantized by torchao (tensor subclasses such as
      ``Int8Tensor``); ``saves_quantized_weights`` — its artifact can store them. Without either,
      :meth:`check_weights` refuses the program before any work, naming the quantization.
    """

    name = ""
    dynamic_variants = False
    token_variants = False
    fft = False
    cuda_graphs = False
    devices: tuple[str, ...] = ("cpu",)
    movable = False
    writes_artifacts = False
    holds_graphs = False
    native_code = False
    quantized_weights = False
    saves_quantized_weights = False
    lowered_key: str | None = None  # manifest["lowered"] key listing one file per segment
    default_max_batch: int | None = None  # cap on an artifact's batch when --max-batch is not given

    def check(self) -> None:
        """Fail early, naming the extra, when a package this backend needs is missing."""

    def lower(self, program, **options) -> dict[str, Runner]:  # pragma: no cover - abstract
        raise NotImplementedError

    def supports(self, capability: str) -> bool:
        return bool(getattr(self, capability))

    def move_problem(self, program, device, **options) -> str | None:
        """Why this backend's lowered variants cannot run on ``device`` (None: they can). Backends
        whose variants are torch modules move their weights instead (``movable``). ``options`` are
        those :meth:`lower` was given (an artifact's: :meth:`artifact_options`)."""
        if device.type not in self.devices:
            return (f"the {self.name} backend runs on {' or '.join(self.devices)}, not {device}; "
                    "use the eager or inductor backend there")
        return None

    def check_policy(self, policy) -> None:
        """Refuse a policy whose variants need a capability this backend lacks."""
        missing = [c for c in sorted(policy.needs) if not self.supports(c)]
        if missing:
            from .registry import capable

            raise PolicyError(policy.unsupported(self.name, capable(missing)))

    def check_weights(self, kind: str | None, saving: bool = False) -> None:
        """Refuse weights quantized as ``kind`` (:func:`cachec.quantized.quantization_of`; None: plain)
        when this backend cannot run (or, with ``saving``, store) them: one message naming the
        quantization and what can, before any work."""
        if kind is None or self.saves_quantized_weights or (self.quantized_weights and not saving):
            return
        from .registry import capable

        if not self.quantized_weights:
            use = " or ".join(capable(["quantized_weights"]))
            raise ModelError(f"weights quantized by {kind} cannot be lowered to {self.name}; use {use}")
        raise ModelError(f"weights quantized by {kind} cannot be saved in an artifact (it stores plain tensors); "
                         f"compile in process instead (cachec.compile with backend={self.name!r})")

    # -- artifacts ------------------------------------------------------------------------------
    def save(self, out_dir: Path, program, captured) -> dict:
        """Write this backend's files into ``out_dir`` (an artifact being written); returns what the
        manifest's ``lowered`` records about them."""
        from .registry import artifact_backends

        raise ArtifactError(f"the {self.name} backend does not write artifacts; compile for one of "
                            f"{', '.join(artifact_backends())} (and run it on {self.name} with --backend)")

    def artifact_options(self, path: Path, lowered: dict) -> dict:
        """Options of :meth:`lower` that point it at an artifact's files: its directory ``path``
        and what the manifest's ``lowered`` records (what :meth:`save` returned: the file of each
        segment or variant). The program does not carry them: they are the backend's business."""
        return {}

    def validate_lowered(self, manifest: dict, fail) -> None:
        """Check the manifest fields of this backend's files (``fail(where, problem)`` raises)."""
        key = self.lowered_key
        if key is None:
            return
        files = manifest["lowered"].get(key)
        if files is None:
            fail(f"lowered.{key}", f"is missing (a {self.name} artifact lists one file per segment)")
        segments = manifest["program"]["segments"]
        for seg in segments:
            if seg not in files:
                fail(f"lowered.{key}", f"has no file for segment {seg!r}")
        for seg, f in files.items():
            if seg not in segments:
                fail(f"lowered.{key}.{seg}", "names a segment the program does not have")
            if f not in manifest["files"]:
                fail(f"lowered.{key}.{seg}", f"names {f}, which is not among the checksummed files")

    def versions(self) -> dict:
        """Versions an artifact of this backend must record (beyond cachec, torch, diffusers)."""
        return {}

    def check_versions(self, path: Path, manifest: dict, allow_version_mismatch: bool) -> None:
        """Refuse an artifact whose files this installation cannot be trusted to load."""


def store(caches: dict, name: str, value) -> None:
    """Copy ``value`` into the buffer ``name``, allocating it once per shape (fixed address)."""
    buf = caches.get(name)
    if buf is None or buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
        caches[name] = value.detach().clone()
    else:
        buf.copy_(value)


def outputs_bound_to_caches(program, ops: list) -> dict[int, dict[str, str]]:
    """For each ``Run`` op of a variant (by index): its outputs that a later ``Store`` of the same
    variant writes to a cache the segment does not read (under its own name or loaded earlier as
    another value), mapped to that cache.

    Why: a backend that binds outputs by address (ONNX Runtime, TensorRT) can write such an
    output straight into the cache buffer, so the cache write costs no copy; a cache the segment
    also reads cannot be its own output buffer.
    """
    from cachec.program import Load, Run, Store

    direct: dict[int, dict[str, str]] = {}
    for i, op in enumerate(ops):
        if not isinstance(op, Run):
            continue
        seg = program.segments[op.segment]
        loaded = {o.value: o.cache for o in ops[:i] if isinstance(o, Load)}
        reads = set(seg.inputs) | {loaded[n] for n in seg.inputs if n in loaded}
        stored = {o.value: o.cache for o in ops[i + 1 :] if isinstance(o, Store)}
        direct[i] = {v: c for v, c in stored.items() if v in seg.outputs and c not in reads}
    return direct


def run_cache_op(op, env: dict, caches: dict) -> bool:
    """Carry out a ``Load`` or ``Store`` of a variant for a backend that runs segment by segment;
    False for a ``Run`` (the backend's own work). A store of a value that already *is* the cache
    buffer (an output bound to it, :func:`outputs_bound_to_caches`) copies nothing."""
    from cachec.program import Load, Store

    if isinstance(op, Load):
        env[op.value] = caches[op.cache]
        return True
    if isinstance(op, Store):
        if env[op.value] is not caches.get(op.cache):
            store(caches, op.cache, env[op.value])
        return True
    return False


def output_buffer(program, name: str, batch: int, cache: str | None, caches: dict, device):
    """The tensor a segment writes output ``name`` into: the cache buffer it is bound to when that
    buffer has the step's shape (written in place), else a new tensor of the value's spec (which
    becomes the cache buffer when the output is bound to one)."""
    import torch

    spec = program.values[name]
    shape = spec.concrete(batch)
    out = caches.get(cache) if cache else None
    if out is None or tuple(out.shape) != shape:
        out = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=device)
        if cache:
            caches[cache] = out
    return out


def major_minor(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string, or None if it is not one."""
    import re

    m = re.match(r"\s*v?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None
