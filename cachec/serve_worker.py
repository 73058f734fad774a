"""What one ``cachec serve`` replica does, without Ray: validate requests, run them in batches.

:class:`ArtifactWorker` serves a compiled artifact (``cachec.load``), :class:`PipelineWorker` a
local diffusers pipeline directory (``cachec.enable``). Both have the same two steps, which the
Ray Serve deployment (:mod:`cachec.serve`) calls:

* :meth:`prepare` turns a request into a :class:`Job` or raises :class:`RequestError` (HTTP 422)
  before the request is queued, so a bad request never enters a batch;
* :meth:`run` runs the jobs Ray Serve batched together and returns one reply or one exception per
  job. A batched trajectory that fails anyway is run again one job at a time, so only the job that
  caused the failure fails; a job whose client went away (``Job.cancelled``) is dropped before it
  starts, and its trajectory stops between steps once every job in it is abandoned.

What a request may not do (docs/serving.md, "Security"): name a file (a policy parameter declared
``file=True`` is fixed by the server), send a value outside the model's declared range (a class
index beyond the embedding table, a NaN embedding), or make the replica load the artifact again
(runtimes for other policies share the one loaded program, and at most ``RUNTIME_CACHE`` are kept).

**Batching is exact.** Jobs with the same policy, steps and shared inputs run as one batched
trajectory: caches are per batch row (cachec's runtime), and a static policy's decisions do not
depend on the batch's contents. What could still couple rows is the choice of kernel: CPU and GPU
matmul/convolution libraries pick algorithms by problem size (on this project's CPU, batch 1 and 2
round differently from batch 4), so a row's bits would depend on how many requests it shared a
trajectory with. The worker therefore runs every batched trajectory with exactly ``max_batch`` rows,
padding with copies of the first request: a request's result is then bit for bit the same alone or
in any batch, and equal to the same request run through ``cachec.load`` at ``max_batch`` rows
(``pad=False`` trades that for less work at low load). Dynamic policies (FBCache, TeaCache, …) take
one decision per step from a probe over the whole batch, and token policies select tokens from
it, so their jobs are never batched: each runs alone at batch 1, exactly as a single request.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .devices import default_device
from .errors import CachecError, PolicyError, RequestError
from .serve_limits import RUNTIME_CACHE, clip
from .serve_schema import GenerateRequest, decode_tensor, encode_tensor, parse_request

log = logging.getLogger("cachec")

# request field -> the denoiser input it feeds
ALIASES = {"class_label": "class_labels", "prompt_embeds": "encoder_hidden_states",
           "pooled_prompt_embeds": "pooled_projections"}


@dataclass
class Job:
    """A validated request, ready to run."""

    request: GenerateRequest
    policy: str
    steps: int
    alone: bool  # never batched (dynamic or token policy, or a pipeline)
    key: tuple = ()  # jobs with equal keys may share a trajectory
    latent: torch.Tensor | None = None  # starting noise, batch 1
    cond: dict[str, torch.Tensor] = field(default_factory=dict)  # per-sample inputs, batch 1
    shared: dict[str, torch.Tensor] = field(default_factory=dict)  # inputs without a batch dimension
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # the client went away: skip the job, stop its trajectory if no one else waits
    method: object = None  # the parsed ``policy`` (a Method), checked against the served one


class Abandoned(RuntimeError):
    """Every client of a trajectory went away, so it stopped between steps (no one reads the reply)."""


def replica_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def png_base64(img: torch.Tensor) -> str:
    """A [C, H, W] image in [0, 1] as base64 PNG (RGB from the first three channels, else grey)."""
    from PIL import Image

    arr = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if arr.shape[0] >= 3:
        im = Image.fromarray(arr[:3].permute(1, 2, 0).numpy(), "RGB")
    else:
        im = Image.fromarray(arr[0].numpy(), "L")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


ROW_ALIGN = 64  # bytes: the SIMD alignment at which CPU kernels treat every batch row alike


def unaligned_rows(values: dict) -> list[str]:
    """Floating-point values of a program whose per-sample row is not a multiple of ``ROW_ALIGN`` bytes.

    CPU GEMM kernels vectorise along a row; a row that starts off the alignment of row 0 (a
    ``[B, 6]`` float32 input has 24-byte rows) takes a different peel/remainder path and can round
    differently, so the same sample would give other bits at row 1 than at row 0. Measured on this
    project's CPU with a small SD3 (6-wide pooled projection: rows differ by 2e-7; 16-wide: exact).
    Values with one element per row (timesteps, scalars) are used elementwise and do not count.
    """
    out = []
    for name, spec in values.items():
        shape, dtype = spec["shape"], spec["dtype"]
        if "B" not in shape or not dtype.startswith(("float", "bfloat")):
            continue
        numel = 1
        for d in shape:
            if d != "B":
                numel *= d
        if numel > 1 and (numel * torch.empty((), dtype=getattr(torch, dtype)).element_size()) % ROW_ALIGN:
            out.append(name)
    return out


def runs_alone(method) -> bool:
    """Whether a method's jobs always run alone at batch 1: a dynamic method decides once per step
    for the whole batch, and a token method selects tokens from it (see the module docstring)."""
    return method.dynamic or method.granularity == "token"


def check_policy(spec: str | None, compiled, blocks: int, steps: int, policy_data=None):
    """Parse a request's policy (None: the served one) and check that the variants compiled for the
    method ``compiled`` run it for ``steps`` steps (:func:`cachec.compatibility.compatible`)."""
    from .compatibility import compatible
    from .policy import parse_policy

    compiled = parse_policy(compiled)  # the served method (a spec from a direct caller is parsed here)
    try:
        p = served_files(parse_policy(spec), compiled) if spec else compiled
    except PolicyError as exc:
        raise RequestError(f"policy: {exc}") from None
    if p.cfg_pairs:
        raise RequestError(f"policy: {p.spec!r} reads the batch as classifier-free-guidance pairs [uncond; cond], and "
                           "the server batches separate requests without guidance; use cfg=0")
    try:
        p = compatible(p, compiled, blocks, policy_data)
    except PolicyError as exc:
        raise RequestError(f"policy: {exc}") from None
    try:
        p.controller(steps)  # a schedule of the wrong length, a missing calibration, ...
    except (CachecError, ValueError, OSError) as exc:
        raise RequestError(f"policy: {p.spec!r} cannot run {steps} steps here: {exc}") from None
    return p


def served_files(p, served):
    """``p`` with the server's values of its file-valued parameters (declared ``file=True``).

    A request must never make the server open a path it names: its answer would tell whether the
    file exists and what it holds. Such a parameter keeps the served policy's value (empty for
    another method); a request that names another value is refused without the file being touched.
    """
    files = [prm for prm in p.all_params() if prm.file]
    fixed = {prm.name: served.params[prm.name] if served.name == p.name else prm.default for prm in files}
    named = [prm.name for prm in files if p.params[prm.name] not in (prm.default, fixed[prm.name])]
    if named:
        raise RequestError(f"policy: {', '.join(named)} may name a file, and only the server sets files (cachec serve "
                           f"--policy, or the artifact's compiled policy {served.spec!r}); leave "
                           f"{', '.join(k + '=' for k in named)} out of the request")
    if all(p.params[k] == v for k, v in fixed.items()):
        return p
    return p.with_params(**fixed)


def value_ranges(config) -> dict[str, tuple[int, int]]:
    """Declared ranges of a model's integer inputs: a class index must lie in its label table."""
    n = config.get("num_embeds_ada_norm") or config.get("num_class_embeds")
    return {"class_labels": (0, n - 1)} if n else {}


def check_values(label: str, t: torch.Tensor, bounds: tuple[int, int] | None) -> None:
    """A request's tensor within the model's declared range (else the batch it joins would fail):
    floats finite, integers within ``bounds``. ``label`` is the request field, for the message."""
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise RequestError(f"{label}: holds NaN or infinite values; send finite numbers")
        return
    if bounds is not None and t.numel():
        lo, hi = bounds
        bad = int(t.min()) if int(t.min()) < lo else int(t.max())
        if not lo <= bad <= hi:
            raise RequestError(f"{label}: {bad} is out of range; this model has classes {lo}..{hi}")


def check_device(device: str, *, here: bool = True) -> str:
    """A device name cachec accepts; with ``here``, one this machine has (a cluster's driver may have no GPU)."""
    from .devices import resolve_device

    if here:
        return str(resolve_device(device))
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise CachecError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N") from None
    return device


class ArtifactWorker:
    """Serves one compiled artifact. See the module docstring for what is batched and how."""

    def __init__(self, path, *, device: str | None = None, max_batch: int = 4, max_steps: int = 1000,
                 pad: bool = True, trust_native: bool = False, verify_key=None):
        from . import artifact
        from .models import synth_inputs
        from .policy import parse_policy
        from .session import artifact_bundle

        self.path = Path(path)
        self.device = check_device(device or default_device())
        self.trust = {"trust_native": trust_native, "verify_key": verify_key}  # cachec.artifact.read_trusted
        self.manifest = m = artifact.read_trusted(self.path, **self.trust)
        self.bundle = artifact_bundle(m)
        self.pixel = m["model"]["spec"].startswith("builtin:")
        meta = m["program"]["meta"]  # manifest schema 2: the program is described once
        if max_batch < 1 or max_batch > meta["max_batch"]:
            raise CachecError(f"--max-batch must be 1..{meta['max_batch']} for this artifact; got {max_batch}")
        self.max_batch = max_batch
        self.pad = pad
        train_steps = int(self.bundle.scheduler().config.num_train_timesteps)
        self.max_steps = min(max_steps, train_steps)
        self.method = parse_policy(meta["policy"])  # the manifest's spec, parsed once
        self.policy = self.method.spec
        self.blocks = len(meta["blocks"])
        self.inputs = {n: m["program"]["values"][n] for n in m["program"]["inputs"]}
        self.batch_dims = meta["batch_dims"]
        self.latent_name = m["capture"]["latent_input"]
        self.cond_names = [n for n in self.inputs if n not in (self.latent_name, "timestep")]
        example = synth_inputs(self.bundle.class_name, m["model"]["config"], batch=1, seed=0)
        from .capture import flatten_inputs

        self.defaults = {n: t for n, t in flatten_inputs(example).items() if n not in self.batch_dims}
        # a model with unaligned rows cannot batch exactly (see unaligned_rows): its requests run alone
        self.unaligned = unaligned_rows(m["program"]["values"])
        if self.unaligned:
            log.warning("cachec serve: %s has per-sample rows that are not multiples of %d bytes (%s); requests "
                        "run alone so that each equals the request run alone bit for bit", self.path, ROW_ALIGN,
                        ", ".join(self.unaligned[:3]))
        self._runtimes: OrderedDict[tuple, object] = OrderedDict()
        self._loaded = None  # the one runtime loaded from the artifact; the others share its program
        self.abandoned = 0  # jobs dropped or stopped because their client went away (GET /info)
        batched = not (self.unaligned or runs_alone(self.method))
        # load once at start, with the rows most requests will run with: a broken artifact fails here
        rt = self.runtime(self.method, max_batch if batched and pad else 1)
        self.policy_data = rt.program.planned.policy_data

    # -- what the server accepts ------------------------------------------------------------------
    def info(self) -> dict:
        fields = {v: k for k, v in ALIASES.items()}
        return {
            "kind": "artifact", "path": str(self.path), "model": self.manifest["model"]["spec"],
            "model_class": self.bundle.class_name, "policy": self.policy, "backend": self.manifest["backend"],
            "device": self.device, "max_batch": self.max_batch, "pad": self.pad, "steps": [1, self.max_steps],
            "batching": self._batching(),
            "latent": {"name": self.latent_name, "shape": [1, *self.inputs[self.latent_name]["shape"][1:]],
                       "dtype": self.inputs[self.latent_name]["dtype"]},
            "conditioning": {
                n: {"field": fields.get(n, f"inputs.{n}"), "required": n in self.batch_dims,
                    "shape": self._want_shape(n), "dtype": self.inputs[n]["dtype"]}
                for n in self.cond_names},
            "num_classes": self.bundle.config.get("num_embeds_ada_norm"),
            "abandoned": self.abandoned,
        }

    def _batching(self) -> str:
        if self.unaligned:
            return (f"alone: per-sample rows of {', '.join(self.unaligned[:3])} are not multiples of {ROW_ALIGN} bytes, "
                    "so batched rows could round differently")
        if runs_alone(self.method):
            return "alone: the policy takes one decision per step for the whole batch"
        return f"up to {self.max_batch} requests with the same policy and steps per trajectory"

    def _want_shape(self, name: str) -> list[int]:
        return [1 if d == "B" else d for d in self.inputs[name]["shape"]]

    # -- prepare ----------------------------------------------------------------------------------
    def prepare(self, body) -> Job:
        req = parse_request(body)
        if req.prompt is not None:
            raise RequestError("prompt: a compiled artifact has no text encoder; send prompt_embeds (see GET /info), "
                               "or serve a pipeline directory")
        if req.steps > self.max_steps:
            raise RequestError(f"steps: {req.steps} is out of range; this server runs 1..{self.max_steps} steps")
        p = check_policy(req.policy, self.method, self.blocks, req.steps, self.policy_data)
        given = self._given(req)
        cond, shared = {}, {}
        for name in self.cond_names:
            spec = self.inputs[name]
            field_name = {v: k for k, v in ALIASES.items()}.get(name, f"inputs.{name}")
            if name in req.inputs:  # the field the client used, so that the message names what it sent
                field_name = f"inputs.{name}"
            if name not in given:
                if name in self.batch_dims or name not in self.defaults:
                    raise RequestError(f"missing field {field_name}: this model needs input {name} of shape "
                                       f"{self._want_shape(name)} ({spec['dtype']})")
                given[name] = self.defaults[name]
            t = given[name]
            if list(t.shape) != self._want_shape(name) or str(t.dtype).replace("torch.", "") != spec["dtype"]:
                label = field_name if field_name.endswith(name) else f"{field_name} ({name})"
                raise RequestError(f"{label}: shape {list(t.shape)} {str(t.dtype).replace('torch.', '')} is not "
                                   f"accepted; this model takes {self._want_shape(name)} {spec['dtype']}")
            self._check_values(field_name if field_name.endswith(name) else f"{field_name} ({name})", name, t)
            (cond if name in self.batch_dims else shared)[name] = t
        spec = self.inputs[self.latent_name]
        g = torch.Generator().manual_seed(req.seed)
        latent = torch.randn(self._want_shape(self.latent_name), generator=g).to(getattr(torch, spec["dtype"]))
        alone = runs_alone(p) or bool(self.unaligned)
        digest = hashlib.sha256()
        for n, t in sorted(shared.items()):
            digest.update(n.encode())
            digest.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.dim() else repr(t.item()).encode())
        key = (p.spec, req.steps, digest.hexdigest())
        return Job(req, p.spec, req.steps, alone, key, latent, cond, shared, method=p)

    def _check_values(self, label: str, name: str, t: torch.Tensor) -> None:
        check_values(label, t, value_ranges(self.bundle.config).get(name))

    def _given(self, req: GenerateRequest) -> dict[str, torch.Tensor]:
        given = {}
        for fname, input_name in ALIASES.items():
            value = getattr(req, fname)
            if value is None:
                continue
            if input_name not in self.cond_names:
                raise RequestError(f"{fname}: this model takes no {input_name}; its conditioning inputs are "
                                   f"{self.cond_names or 'none'} (GET /info)")
            if fname == "class_label":
                n = self.bundle.config.get("num_embeds_ada_norm")
                if n is not None and value >= n:
                    raise RequestError(f"class_label: {value} is out of range; this model has classes 0..{n - 1}")
                given[input_name] = torch.tensor([value], dtype=getattr(torch, self.inputs[input_name]["dtype"]))
            else:
                given[input_name] = decode_tensor(value, fname)
        for name, value in req.inputs.items():
            if name not in self.cond_names:
                raise RequestError(f"inputs.{clip(name)}: not an input of this model; its conditioning inputs are "
                                   f"{self.cond_names or 'none'}")
            if name in given:
                raise RequestError(f"inputs.{name}: given twice (also as a named field)")
            given[name] = decode_tensor(value, f"inputs.{name}")
        return given

    # -- run --------------------------------------------------------------------------------------
    def runtime(self, policy, rows: int):
        """The runtime for ``policy`` (a method, or a spec a direct caller gives) at ``rows`` rows (one
        shape per runtime: caches never re-allocate).

        The artifact is loaded once (the first call); a runtime for another policy or row count is
        built on that loaded program (same weights, same lowering: bit for bit what ``cachec.load``
        with that policy gives), so a stream of distinct policies costs no reload, and at most
        ``RUNTIME_CACHE`` runtimes (their cache buffers) are kept."""
        from .policy import parse_policy

        method = parse_policy(policy)
        key = (method.spec, rows)
        if key not in self._runtimes:
            self._runtimes[key] = self._build_runtime(method)
            while len(self._runtimes) > RUNTIME_CACHE:
                self._runtimes.popitem(last=False)
        self._runtimes.move_to_end(key)
        return self._runtimes[key]

    def _build_runtime(self, method):
        if self._loaded is None:
            import cachec

            # always the artifact's own plan: a first request for `none` must not leave a program
            # without the variants the compiled policy's later requests need
            self._loaded = cachec.load(self.path, device=self.device, **self.trust)
            if method.spec == self.policy:
                return self._loaded
        from .runtime import CacheRuntime

        base = self._loaded
        return CacheRuntime(base.program, method, backend=base.backend.name, signature=base.signature,
                            backend_options=base.backend_options, config=dict(base.config), device=self.device)

    def groups(self, jobs: list[Job]) -> list[list[int]]:
        """Indices of jobs that share a trajectory: equal keys, at most ``max_batch``; alone jobs alone."""
        out: dict[tuple, list[list[int]]] = {}
        for i, job in enumerate(jobs):
            if job.alone:
                out[("alone", i)] = [[i]]
                continue
            chunks = out.setdefault(job.key, [[]])
            if len(chunks[-1]) == self.max_batch:
                chunks.append([])
            chunks[-1].append(i)
        return [c for chunks in out.values() for c in chunks]

    def run(self, jobs: list[Job]) -> list[dict | Exception]:
        """One reply dict or one exception per job, in order.

        A batched trajectory that fails is run again one job at a time: a request that slipped past
        validation then fails alone, and the requests that shared its batch still get their images
        (each equal to its batched result: a job alone runs with the same padded rows, unless ``pad=False``)."""
        results: list[dict | Exception] = [Abandoned("the client went away before its job started")] * len(jobs)
        live = [i for i, j in enumerate(jobs) if not j.cancelled]
        self.abandoned += len(jobs) - len(live)
        for group in self.groups([jobs[i] for i in live]):
            group = [live[i] for i in group]
            try:
                replies = self._run_group([jobs[i] for i in group])
            except Abandoned as exc:
                self.abandoned += len(group)
                replies = [exc] * len(group)
            except Exception as exc:  # noqa: BLE001 - confined to this group's jobs
                if len(group) == 1:
                    replies = [self._failure(exc)]
                else:
                    log.warning("cachec serve: a batch of %d failed (%s: %s); running its requests one by one",
                                len(group), type(exc).__name__, exc)
                    replies = [self._run_alone(jobs[i]) for i in group]
            for i, r in zip(group, replies, strict=True):
                results[i] = r
        return results

    def _run_alone(self, job: Job) -> dict | Exception:
        try:
            return self._run_group([job])[0]
        except Abandoned as exc:
            self.abandoned += 1
            return exc
        except Exception as exc:  # noqa: BLE001 - this job's own failure
            return self._failure(exc)

    @staticmethod
    def _failure(exc: Exception) -> RuntimeError:
        log.error("cachec serve: a trajectory failed", exc_info=exc)
        return RuntimeError(f"sampling failed on replica {replica_name()}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _stop_if_abandoned(group: list[Job]):
        """A step callback that stops the trajectory once every client of the group went away."""
        def check(step: int, _x) -> None:
            if all(j.cancelled for j in group):
                raise Abandoned(f"every client of this trajectory went away; stopped after step {step + 1}")
        return check

    def _run_group(self, group: list[Job]) -> list[dict]:
        from .metrics import to_unit
        from .sampling import denoise

        first = group[0]
        n = len(group)
        rows = n if first.alone or not self.pad else self.max_batch
        pick = list(range(n)) + [0] * (rows - n)  # padding rows: copies of the first request
        x = torch.cat([group[i].latent for i in pick]).to(self.device)
        kw = {name: torch.cat([group[i].cond[name] for i in pick]).to(self.device) for name in first.cond}
        kw.update({name: t.to(self.device) for name, t in first.shared.items()})
        ts = self.inputs["timestep"]
        kw["timestep"] = torch.zeros([rows if d == "B" else d for d in ts["shape"]], dtype=getattr(torch, ts["dtype"]),
                                     device=self.device)
        rt = self.runtime(first.method, rows)
        rt.reset(first.steps)
        traj = denoise(rt, self.bundle, x, kw, first.steps, callback=self._stop_if_abandoned(group))
        stats = rt.stats
        done = time.perf_counter()
        replies = []
        for i, job in enumerate(group):
            sample = traj.sample[i:i + 1]
            img = to_unit(sample, self.pixel)[0]
            reply = {
                "image_png": png_base64(img), "nfe": round(stats.nfe, 4), "schedule": stats.schedule,
                "steps": job.steps, "policy": job.policy, "latency_s": round(done - job.arrived, 4),
                "compute_s": round(traj.seconds, 4), "batch_size": n, "batch_rows": rows, "replica": replica_name(),
                "latent": encode_tensor(sample.float()) if job.request.return_latent else None,
            }
            replies.append(reply)
        return replies


class PipelineWorker:
    """Serves a local diffusers pipeline directory with ``cachec.enable``; each request runs alone
    (the pipeline owns its sampling loop, so requests are not batched across each other)."""

    def __init__(self, path, *, policy: str = "fora:3", device: str | None = None, max_steps: int = 1000):
        import diffusers

        from .pipeline import CachedDenoiser, denoiser_attr
        from .policy import parse_policy

        self.path = Path(path)
        self.device = check_device(device or default_device())
        try:
            self.pipe = diffusers.DiffusionPipeline.from_pretrained(str(self.path)).to(self.device)
        except Exception as exc:  # noqa: BLE001 - any loading failure is reported with the path
            raise CachecError(f"could not load a diffusers pipeline from {self.path}: {exc}") from exc
        self.method = parse_policy(policy)
        self.policy = self.method.spec
        self.pipe.set_progress_bar_config(disable=True)
        self.attr = denoiser_attr(self.pipe)
        self.model = getattr(self.pipe, self.attr)
        # blocks as cachec's regions count them (numbered children of the top-level block lists)
        self.blocks = sum(len(c) for c in self.model.children() if isinstance(c, torch.nn.ModuleList)) or 1
        self.max_batch = 1
        self.max_steps = max_steps
        self.params = set(inspect.signature(self.pipe.__call__).parameters)
        self._denoisers: OrderedDict[str, CachedDenoiser] = OrderedDict()

    def info(self) -> dict:
        return {"kind": "pipeline", "path": str(self.path), "pipeline": type(self.pipe).__name__,
                "policy": self.policy, "device": self.device, "max_batch": 1, "steps": [1, self.max_steps],
                "fields": sorted(f for f in ("class_label", "prompt", "prompt_embeds", "pooled_prompt_embeds")
                                 if self._param_of(f) in self.params)}

    @staticmethod
    def _param_of(fname: str) -> str:
        return {"class_label": "class_labels", "pooled_prompt_embeds": "pooled_prompt_embeds"}.get(fname, fname)

    def prepare(self, body) -> Job:
        req = parse_request(body)
        if req.steps > self.max_steps:
            raise RequestError(f"steps: {req.steps} is out of range; this server runs 1..{self.max_steps} steps")
        p = check_policy(req.policy, self.method, self.blocks, req.steps)
        if req.inputs:
            raise RequestError(f"inputs: a served pipeline takes {', '.join(self.info()['fields'])}, not inputs")
        cond = {}
        for fname in ("class_label", "prompt", "prompt_embeds", "pooled_prompt_embeds"):
            value = getattr(req, fname)
            if value is None:
                continue
            param = self._param_of(fname)
            if param not in self.params:
                raise RequestError(f"{fname}: {type(self.pipe).__name__} does not take {param}; it takes "
                                   f"{', '.join(self.info()['fields'])}")
            if fname == "class_label":
                lo, hi = value_ranges(self.model.config).get("class_labels", (0, value))
                if not lo <= value <= hi:  # a Python int: any size a client sends
                    raise RequestError(f"class_label: {value} is out of range; this model has classes {lo}..{hi}")
            elif fname != "prompt":
                value = decode_tensor(value, fname)
                check_values(fname, value, None)
            cond[param] = [value] if fname == "class_label" else value if fname == "prompt" else value.to(self.device)
        if not cond:
            raise RequestError(f"missing field: give one of {', '.join(self.info()['fields'])}")
        job = Job(req, p.spec, req.steps, alone=True, method=p)
        job.cond = cond
        return job

    def denoiser(self, method):
        from .pipeline import CachedDenoiser

        if method.spec not in self._denoisers:
            self._denoisers[method.spec] = CachedDenoiser(self.model, method)
            while len(self._denoisers) > RUNTIME_CACHE:
                self._denoisers.popitem(last=False)
        return self._denoisers[method.spec]

    def run(self, jobs: list[Job]) -> list[dict | Exception]:
        results = []
        for job in jobs:
            if job.cancelled:
                results.append(Abandoned("the client went away before its job started"))
                continue
            try:
                results.append(self._run_one(job))
            except Exception as exc:  # noqa: BLE001 - confined to this job
                log.exception("cachec serve: a pipeline call failed")
                results.append(RuntimeError(f"sampling failed on replica {replica_name()}: "
                                            f"{type(exc).__name__}: {exc}"))
        return results

    def _run_one(self, job: Job) -> dict:
        den = self.denoiser(job.method)
        setattr(self.pipe, self.attr, den)
        den.reset(job.steps)
        g = torch.Generator(self.device).manual_seed(job.request.seed)
        t0 = time.perf_counter()
        out = self.pipe(**job.cond, num_inference_steps=job.steps, generator=g, output_type="np")
        seconds = time.perf_counter() - t0
        images = out.images if hasattr(out, "images") else out[0]
        img = torch.as_tensor(images[0]).permute(2, 0, 1)  # [H, W, C] in [0, 1] -> [C, H, W]
        stats = den.current.stats if den.current is not None else None
        done = time.perf_counter()
        return {
            "image_png": png_base64(img), "nfe": round(stats.nfe, 4) if stats else 0.0,
            "schedule": stats.schedule if stats else "", "steps": job.steps, "policy": job.policy,
            "latency_s": round(done - job.arrived, 4), "compute_s": round(seconds, 4), "batch_size": 1,
            "batch_rows": 1, "replica": replica_name(),
            "latent": encode_tensor(img[None].float()) if job.request.return_latent else None,
        }


def make_worker(target: str, *, device: str | None = None, max_batch: int = 4, max_steps: int = 1000,
                pad: bool = True, policy: str | None = None, trust_native: bool = False, verify_key=None):
    """An :class:`ArtifactWorker` for an artifact directory, a :class:`PipelineWorker` for a pipeline one."""
    kind = target_kind(target)
    if kind == "artifact":
        if policy is not None:
            raise CachecError("--policy is for pipeline directories; an artifact serves the policy it was compiled "
                              "with (requests may change its run-time parameters)")
        return ArtifactWorker(target, device=device, max_batch=max_batch, max_steps=max_steps, pad=pad,
                              trust_native=trust_native, verify_key=verify_key)
    return PipelineWorker(target, policy=policy or "fora:3", device=device, max_steps=max_steps)


def target_kind(target: str) -> str:
    path = Path(target)
    if (path / "manifest.json").exists():
        return "artifact"
    if (path / "model_index.json").exists():
        return "pipeline"
    raise CachecError(f"{target} is neither a cachec artifact (manifest.json: `cachec compile ... --out DIR`) nor a "
                      "diffusers pipeline directory (model_index.json)")
