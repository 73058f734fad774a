"""``cachec serve``: a compiled artifact (or a local pipeline) as a Ray Serve application.

Ray Serve is the engine: it runs the replicas (each loads the artifact once), routes HTTP and
handle calls to them, restarts a replica that dies, and batches concurrent requests
(``@serve.batch``). This module only wires a :mod:`cachec.serve_worker` worker into two Serve
deployments:

* ``CachecIngress`` (no model, no CPU reserved): the HTTP routes and the handle entry point.
  ``POST /generate`` takes a :class:`~cachec.serve_schema.GenerateRequest` and returns a
  :class:`~cachec.serve_schema.GenerateReply`; a rejected request is a 422 with
  ``{"detail": message}``, a failed trajectory a 500 naming the replica, and a request whose
  replica died is resent (``retries``) or answered with a 503 saying so. ``GET /info`` says what
  the served model accepts; ``GET /docs`` and ``/openapi.json`` are the schema FastAPI derives
  from the same models. In-cluster callers use a handle:
  ``serve.get_app_handle("cachec").sample.remote(request_dict)`` (a rejected request raises
  :class:`~cachec.errors.RequestError`).
* ``CachecServer`` (``--replicas``, one GPU each on CUDA): loads the model once, validates each
  request on arrival, before it reaches the batch queue (so a bad request never enters a batch),
  and runs Serve's batches in one worker thread, so its event loop keeps accepting requests while
  a trajectory runs.
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
        result = await self._run_batch(job)
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

    def __init__(self, server, retries: int = 1):
        self.server = server
        self.retries = retries

    @http_api.get("/info")
    async def info(self) -> dict:
        """What the served model accepts: conditioning fields and shapes, steps range, policy, batch."""
        return await self.server.info.remote()

    @http_api.post("/generate", response_model=GenerateReply, response_model_exclude_none=True,
                   responses={422: {"description": "the request was rejected: {\"detail\": message}"},
                              500: {"description": "sampling failed on the replica: {\"detail\": message}"},
                              503: {"description": "the replica died and retries failed: {\"detail\": message}"}})
    async def generate(self, request: GenerateRequest) -> dict:
        """Run one sampling job and return its PNG, NFE, schedule and latency."""
        try:
            return await self.sample(request)
        except RequestError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except SamplingError as exc:
            raise HTTPException(status_code=500, detail=str(exc)) from None
        except ReplicaLostError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    async def sample(self, request) -> dict:
        """The handle entry point: a request dict (or GenerateRequest) in, a reply dict out.
        Raises RequestError (rejected), SamplingError (failed) or ReplicaLostError (replica died)."""
        from ray.exceptions import RayActorError

        from .serve_schema import parse_request

        request = parse_request(request)  # schema errors here, before any replica is involved
        for attempt in range(self.retries + 1):
            try:
                return await self.server.sample.remote(request)
            except (RequestError, SamplingError) as exc:  # the replica's own exception, wrapped by Ray
                raise type(_cause(exc))(str(_cause(exc))) from None
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
              ray_cluster: bool = False, trust_native: bool = False, verify_key: str | None = None):
    """The Serve application for ``target`` (artifact or pipeline directory), ready for ``serve.run``.

    On a GPU device each replica reserves one GPU (one replica per GPU); ``autoscale=(min, max)``
    lets Serve scale the replicas on the number of ongoing requests (target: one full batch each).
    ``retries``: how often the ingress resends a request whose replica died (0: fail at once, 503).
    ``ray_cluster``: the replicas run on other nodes, so a GPU device is not looked for on this one.
    ``trust_native``/``verify_key`` (a key file every replica can read): see :func:`cachec.artifact.read_trusted`.
    """
    from .devices import default_device
    from .serve_worker import check_device, target_kind

    target = str(Path(target).resolve())  # replicas may run elsewhere (another cwd, another node)
    # a wrong path, device or batch fails here, before any replica starts
    if target_kind(target) == "artifact":
        from .artifact import read_trusted

        limit = read_trusted(target, trust_native=trust_native, verify_key=verify_key)["program"]["meta"]["max_batch"]
        if not 1 <= max_batch <= limit:
            raise CachecError(f"--max-batch must be 1..{limit} for this artifact; got {max_batch}")
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
    config = {"ray_actor_options": actor, "max_ongoing_requests": max(2 * max_batch, 4)}
    if autoscale:
        lo, hi = autoscale
        config["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                        "target_ongoing_requests": max_batch}
    else:
        config["num_replicas"] = replicas
    server = CachecServer.options(**config).bind(target, options, batch_wait_s)
    return CachecIngress.options(num_replicas=ingress_replicas).bind(server, retries)


def start(target: str, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          name: str = APP_NAME, route_prefix: str = "/", **app_options):
    """Start (or join) Ray, start Serve's HTTP proxy on ``host:port`` and deploy the app; returns its handle."""
    import ray

    app = build_app(target, ray_cluster=address is not None, **app_options)  # validated before Ray starts
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=name, route_prefix=route_prefix)


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
    start(args.target, host=args.host, port=args.port, address=args.address, replicas=args.replicas,
          max_batch=args.max_batch, device=args.device, max_steps=args.max_steps, pad=not args.no_pad,
          policy=args.policy, batch_wait_s=args.batch_wait_ms / 1000.0, cpus_per_replica=args.cpus_per_replica,
          autoscale=autoscale, retries=args.retries, trust_native=args.trust_native, verify_key=args.verify_key)
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
        import ray

        serve.shutdown()
        ray.shutdown()
    return 0


def app(args: dict):
    """Application builder for Serve config files and ``serve run``:
    ``serve run cachec.serve:app target=DIR max_batch=8 device=cuda replicas=4``."""
    args = dict(args)
    target = args.pop("target")
    casts = {"replicas": int, "max_batch": int, "max_steps": int, "batch_wait_s": float, "cpus_per_replica": float,
             "retries": int, "ingress_replicas": int, "pad": lambda v: str(v).lower() not in ("0", "false", "no"),
             "trust_native": lambda v: str(v).lower() in ("1", "true", "yes")}
    unknown = set(args) - set(casts) - {"device", "policy", "verify_key"}
    if unknown:
        raise CachecError(f"cachec.serve:app: unknown arguments {sorted(unknown)}; known: target, device, policy, verify_key, "
                          f"{', '.join(casts)}")
    return build_app(target, **{k: casts[k](v) if k in casts else v for k, v in args.items()})
