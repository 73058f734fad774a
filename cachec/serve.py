"""``cachec serve``: a compiled artifact (or a local pipeline) as a Ray Serve application.

Ray Serve is the engine: it runs the replicas (each loads the artifact once), routes HTTP and
handle calls to them, restarts a replica that dies, and batches concurrent requests
(``@serve.batch``). This module only wires a :mod:`cachec.serve_worker` worker into two Serve
deployments:

* ``CachecIngress`` (no model, no CPU reserved): the HTTP routes and the handle entry point.
  ``POST /generate`` takes a :class:`~cachec.serve_schema.GenerateRequest` and returns a
  :class:`~cachec.serve_schema.GenerateReply`; a rejected request is a 422 with
  ``{"detail": message}``, a failed trajectory a 500 naming the replica, and a request whose
  replica died is resent (``retries``) or answered with a 503 saying so; a body over the limit is a
  413 and a full queue a 503 with ``Retry-After`` (:mod:`cachec.serve_limits`). ``GET /info`` says what
  the served model accepts; ``GET /docs`` and ``/openapi.json`` are the schema FastAPI derives
  from the same models. In-cluster callers use a handle:
  ``serve.get_app_handle("cachec").sample.remote(request_dict)`` (a rejected request raises
  :class:`~cachec.errors.RequestError`).
* ``CachecServer`` (``--replicas``, one GPU each on CUDA): loads the model once, validates each
  request on arrival, before it reaches the batch queue (so a bad request never enters a batch),
  and runs Serve's batches in one worker thread, so its event loop keeps accepting requests while
  a trajectory runs. A request whose client went away (Serve cancels it) marks its job, so the
  worker skips it or stops its trajectory between steps.
"""


# no `from __future__ import annotations`: FastAPI reads the route annotations as classes
import asyncio
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from .errors import CachecError, RequestError
from .progress import stage
from .serve_limits import DEFAULT_MAX_QUEUED, RETRY_AFTER_S, check_port, clip_detail, default_body_limit
from .serve_schema import GenerateReply, GenerateRequest, validation_message

log = logging.getLogger("cachec")

APP_NAME = "cachec"
http_api = FastAPI(title="cachec serve", description="Diffusion sampling with feature caching (cachec) on Ray Serve. "
                   "One request is one whole sampling job; see docs/serving.md.")


@http_api.exception_handler(RequestValidationError)
async def _invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
    """Schema violations (missing or unknown fields, out-of-range values) as one readable 422 message,
    the same shape as the worker's own rejections: ``{"detail": "steps: Input should be ..."}``."""
    return JSONResponse(status_code=422, content={"detail": validation_message(exc.errors())})


class BodyTooLarge(HTTPException):
    """A request body over the limit (HTTP 413). An HTTPException, so that FastAPI, which reads the
    body through :class:`BodyLimit`, answers it as such instead of "error parsing the body"."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=f"the request body is larger than this server's limit of {limit} "
                                                 "bytes (cachec serve --max-body-bytes)")


class BodyLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` before it is read into memory (by its
    Content-Length), or as soon as a body without one grows past it.

    ``max_bytes`` is set by :class:`CachecIngress` when its replica starts: a class attribute, because
    Serve runs a frozen copy of ``http_api`` in the replica, which the deployment cannot reach from its
    constructor, while this class is imported by name there (one ingress per replica process)."""

    max_bytes: int | None = None

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        limit = BodyLimit.max_bytes
        if scope["type"] != "http" or limit is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            response = JSONResponse(status_code=413, content={"detail": BodyTooLarge(limit).detail})
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


http_api.add_middleware(BodyLimit)


# defined before the deployments: Serve serialises the deployment classes when they are declared
def _cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's task-error wrapping (whose text is a traceback)."""
    while getattr(exc, "cause", None) is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


class SamplingError(RuntimeError):
    """A trajectory failed on the replica (HTTP 500); other requests are unaffected."""


class ReplicaLostError(RuntimeError):
    """The replica running a request died, on every attempt (HTTP 503)."""


class QueueFullError(RuntimeError):
    """Every sampling replica's queue is full (HTTP 503 with Retry-After): come back later."""


@serve.deployment(name="CachecServer")
class CachecServer:
    """One sampling replica: a worker (artifact or pipeline) behind Serve's batching."""

    def __init__(self, target: str, options: dict, batch_wait_s: float = 0.02):
        from .serve_worker import make_worker

        self.worker = make_worker(target, **options)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachec-sampling")
        self._run_batch.set_max_batch_size(self.worker.max_batch)
        self._run_batch.set_batch_wait_timeout_s(batch_wait_s)

    def info(self) -> dict:
        return self.worker.info()

    async def sample(self, request) -> dict:
        job = self.worker.prepare(request)  # RequestError before the job is queued
        try:
            result = await self._run_batch(job)
        except asyncio.CancelledError:  # the client went away: the worker skips the job or stops between steps
            job.cancelled = True
            raise
        if isinstance(result, Exception):
            raise SamplingError(str(result))
        return result

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _run_batch(self, jobs: list) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.worker.run, jobs)


@serve.deployment(name="CachecIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(http_api)
class CachecIngress:
    """HTTP routes and the handle entry point, in front of the sampling replicas.

    It holds no model: it forwards each request to a :class:`CachecServer` replica through a
    Serve handle, so that when a sampling replica dies mid-request it can say so clearly (or retry
    the request on a live replica: a request is a pure function of its fields) instead of the
    proxy's bare "Internal Server Error".
    """

    def __init__(self, server, retries: int = 1, max_body_bytes: int | None = None):
        self.server = server
        self.retries = retries
        BodyLimit.max_bytes = max_body_bytes

    @http_api.get("/info")
    async def info(self) -> dict:
        """What the served model accepts: conditioning fields and shapes, steps range, policy, batch."""
        return await self.server.info.remote()

    @http_api.post("/generate", response_model=GenerateReply, response_model_exclude_none=True,
                   responses={413: {"description": "the body is over the limit: {\"detail\": message}"},
                              422: {"description": "the request was rejected: {\"detail\": message}"},
                              500: {"description": "sampling failed on the replica: {\"detail\": message}"},
                              503: {"description": "the queue is full (Retry-After) or the replica died: "
                                                   "{\"detail\": message}"}})
    async def generate(self, request: GenerateRequest) -> dict:
        """Run one sampling job and return its PNG, NFE, schedule and latency."""
        try:
            return await self.sample(request)
        except RequestError as exc:
            raise HTTPException(status_code=422, detail=clip_detail(str(exc))) from None
        except SamplingError as exc:
            raise HTTPException(status_code=500, detail=clip_detail(str(exc))) from None
        except QueueFullError as exc:
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ReplicaLostError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    async def sample(self, request) -> dict:
        """The handle entry point: a request dict (or GenerateRequest) in, a reply dict out.
        Raises RequestError (rejected), SamplingError (failed), QueueFullError (every queue is full)
        or ReplicaLostError (replica died)."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        from .serve_schema import parse_request

        request = parse_request(request)  # schema errors here, before any replica is involved
        for attempt in range(self.retries + 1):
            try:
                return await self.server.sample.remote(request)
            except (RequestError, SamplingError) as exc:  # the replica's own exception, wrapped by Ray
                raise type(_cause(exc))(str(_cause(exc))) from None
            except BackPressureError:
                raise QueueFullError(f"the server is busy: every sampling replica's queue is full; retry in "
                                     f"{RETRY_AFTER_S} s or later") from None
            except RayActorError as exc:
                log.warning("cachec serve: the replica died during a request (%s); attempt %d of %d",
                            type(exc).__name__, attempt + 1, self.retries + 1)
                lost = exc
        raise ReplicaLostError(
            f"the sampling replica died while running this request ({type(lost).__name__}), "
            f"{self.retries + 1} time(s); Serve restarts replicas: retry later") from None


def build_app(target: str, *, replicas: int = 1, max_batch: int = 4, device: str | None = None,
              max_steps: int = 1000, pad: bool = True, policy: str | None = None, batch_wait_s: float = 0.02,
              cpus_per_replica: float = 1.0, autoscale: tuple[int, int] | None = None,
              runtime_env: dict | None = None, retries: int = 1, ingress_replicas: int = 1,
              ray_cluster: bool = False, max_body_bytes: int | None = None, max_queued: int = DEFAULT_MAX_QUEUED,
              trust_native: bool = False, verify_key: str | None = None):
    """The Serve application for ``target`` (artifact or pipeline directory), ready for ``serve.run``.

    On a GPU device each replica reserves one GPU (one replica per GPU); ``autoscale=(min, max)``
    lets Serve scale the replicas on the number of ongoing requests (target: one full batch each).
    ``retries``: how often the ingress resends a request whose replica died (0: fail at once, 503).
    ``ray_cluster``: the replicas run on other nodes, so a GPU device is not looked for on this one.
    ``max_body_bytes``: the largest request body (default: :func:`~cachec.serve_limits.default_body_limit`);
    ``max_queued``: requests waiting per replica before new ones get a 503 with Retry-After.
    ``trust_native``/``verify_key`` (a key file every replica can read): see :func:`cachec.artifact.read_trusted`.
    """
    from .devices import default_device
    from .policy import parse_policy
    from .serve_worker import check_device, target_kind

    target = str(Path(target).resolve())  # replicas may run elsewhere (another cwd, another node)
    # a wrong path, device, batch, policy or limit fails here, before any replica starts
    manifest = None
    if target_kind(target) == "artifact":
        from .artifact import read_trusted

        manifest = read_trusted(target, trust_native=trust_native, verify_key=verify_key)
        limit = manifest["program"]["meta"]["max_batch"]
        if not 1 <= max_batch <= limit:
            raise CachecError(f"--max-batch must be 1..{limit} for this artifact; got {max_batch}")
        if policy is not None:
            raise CachecError(f"--policy is for pipeline directories; an artifact serves the policy it was compiled "
                              f"with ({manifest['program']['meta']['policy']}; requests may change its run-time "
                              "parameters)")
    elif policy is not None:
        policy = parse_policy(policy).spec
    if max_body_bytes is not None and max_body_bytes < 1024:
        raise CachecError(f"--max-body-bytes must be at least 1024; got {max_body_bytes}")
    if max_queued < 1:
        raise CachecError(f"--max-queued must be at least 1; got {max_queued}")
    device = check_device(device or default_device(), here=not ray_cluster)
    options = {"device": device, "max_batch": max_batch, "max_steps": max_steps, "pad": pad}
    if trust_native or verify_key is not None:
        options.update(trust_native=trust_native,
                       verify_key=None if verify_key is None else str(Path(verify_key).resolve()))
    if policy is not None:
        options["policy"] = policy
    actor = {"num_cpus": cpus_per_replica}
    if device.startswith("cuda"):
        actor["num_gpus"] = 1
    if runtime_env:
        actor["runtime_env"] = runtime_env
    # max_queued_requests counts the requests each caller (the ingress) holds back: per replica, times replicas
    config = {"ray_actor_options": actor, "max_ongoing_requests": max(2 * max_batch, 4),
              "max_queued_requests": max_queued * (autoscale[1] if autoscale else replicas)}
    if autoscale:
        lo, hi = autoscale
        config["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                        "target_ongoing_requests": max_batch}
    else:
        config["num_replicas"] = replicas
    server = CachecServer.options(**config).bind(target, options, batch_wait_s)
    body = max_body_bytes if max_body_bytes is not None else default_body_limit(manifest)
    return CachecIngress.options(num_replicas=ingress_replicas).bind(server, retries, body)


def start(target: str, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          name: str = APP_NAME, route_prefix: str = "/", **app_options):
    """Start (or join) Ray, start Serve's HTTP proxy on ``host:port`` and deploy the app; returns its handle."""
    import ray

    check_port(port)
    app = build_app(target, ray_cluster=address is not None, **app_options)  # validated before Ray starts
    # after the checks, so that a refused option is the only line printed
    stage(f"starting Ray Serve for {target} (each replica loads the model first: this can take minutes)")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    check_placement(app_options.get("cpus_per_replica", 1.0), app_options.get("device"), cluster=address is not None)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=name, route_prefix=route_prefix)


def check_placement(cpus: float, device: str | None, *, cluster: bool) -> None:
    """Refuse a replica that no node of the running Ray can hold (Serve would wait for one forever).
    On a cluster (``--address``) an autoscaler may still add such a node: only a warning then."""
    import ray

    from .devices import default_device
    from .serve_limits import placement_problem

    gpus = 1.0 if (device or default_device()).startswith("cuda") else 0.0
    problem = placement_problem([n["Resources"] for n in ray.nodes() if n.get("Alive")], cpus, gpus)
    if problem is None:
        return
    if cluster:
        log.warning("cachec serve: %s; Serve waits until the cluster has such a node", problem)
        return
    raise CachecError(f"the Ray cluster cannot place a sampling replica: {problem}")


def main(args) -> int:
    """``cachec serve``: start the app and block until interrupted."""
    autoscale = None
    if args.autoscale:
        try:
            lo, hi = (int(x) for x in args.autoscale.split("-"))
        except ValueError:
            raise CachecError(f"--autoscale takes MIN-MAX replicas, e.g. 1-4; got {args.autoscale!r}") from None
        if not 0 <= lo <= hi or hi < 1:
            raise CachecError(f"--autoscale {args.autoscale}: need 0 <= MIN <= MAX, MAX >= 1")
        autoscale = (lo, hi)
    if args.replicas < 1:
        raise CachecError(f"--replicas must be at least 1; got {args.replicas}")
    if args.retries < 0:
        raise CachecError(f"--retries must be at least 0; got {args.retries}")
    if args.max_batch < 1:
        raise CachecError(f"--max-batch must be at least 1; got {args.max_batch}")
    if args.cpus_per_replica < 0:
        raise CachecError(f"--cpus-per-replica must be at least 0; got {args.cpus_per_replica:g}")
    check_port(args.port)
    try:
        start(args.target, host=args.host, port=args.port, address=args.address, replicas=args.replicas,
              max_batch=args.max_batch, device=args.device, max_steps=args.max_steps, pad=not args.no_pad,
              policy=args.policy, batch_wait_s=args.batch_wait_ms / 1000.0, cpus_per_replica=args.cpus_per_replica,
              autoscale=autoscale, retries=args.retries, max_body_bytes=args.max_body_bytes,
              max_queued=args.max_queued, trust_native=args.trust_native,
              verify_key=args.verify_key)
    except CachecError:
        _stop_ray()  # Ray may have started before the check that failed: do not leave it running
        raise

    print(f"cachec serve: {args.target} on http://{args.host}:{args.port}/generate "
          f"({'autoscaling ' + args.autoscale if autoscale else f'{args.replicas} replica(s)'}, "
          f"max batch {args.max_batch}); GET /info, /docs; Ctrl-C stops", flush=True)
    # Ctrl-C, or SIGTERM from a process manager (systemd, Kubernetes, docker stop): shut Serve and Ray down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        print("cachec serve: shutting down", file=sys.stderr, flush=True)
    finally:
        _stop_ray()
    return 0


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def app(args: dict):
    """Application builder for Serve config files and ``serve run``:
    ``serve run cachec.serve:app target=DIR max_batch=8 device=cuda replicas=4``."""
    args = dict(args)
    target = args.pop("target")
    casts = {"replicas": int, "max_batch": int, "max_steps": int, "batch_wait_s": float, "cpus_per_replica": float,
             "retries": int, "ingress_replicas": int, "pad": lambda v: str(v).lower() not in ("0", "false", "no"),
             "trust_native": lambda v: str(v).lower() in ("1", "true", "yes"),
             "max_body_bytes": int, "max_queued": int}
    unknown = set(args) - set(casts) - {"device", "policy", "verify_key"}
    if unknown:
        raise CachecError(f"cachec.serve:app: unknown arguments {sorted(unknown)}; known: target, device, policy, verify_key, "
                          f"{', '.join(casts)}")
    return build_app(target, **{k: casts[k](v) if k in casts else v for k, v in args.items()})
