"""The limits of ``cachec serve``: what one client may cost a replica, and the checks made before Ray starts.

Why a module of its own: these are the server's answers to hostile or careless clients (a huge body,
a flood of requests, a 50 MB policy echoed back, a replica the cluster can never place), and each has
a default that docs/serving.md ("Security") documents. Keeping them together makes the defaults
visible in one place and testable without Ray.
"""

from __future__ import annotations

DEFAULT_MAX_QUEUED = 32  # requests waiting per replica beyond those it runs (then 503 + Retry-After)
MIN_BODY_BYTES = 1 << 20  # the smallest default body limit (1 MiB): class labels, seeds, small embeddings
PIPELINE_BODY_BYTES = 16 << 20  # a pipeline directory declares no input shapes: room for large prompt embeddings
POLICY_CHARS = 256  # the longest policy spec a request may send (the longest built-in spec is far shorter)
ECHO_CHARS = 80  # the most of a client's value an error message quotes
DETAIL_CHARS = 1000  # the longest error message a reply carries
RETRY_AFTER_S = 1  # the Retry-After of a 503 for a full queue: batches of small models last about a second
RUNTIME_CACHE = 8  # runtimes (policy x rows) a replica keeps; all share the one loaded program


def clip(value, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with its full length said: a client's value quoted
    in an error must not make the reply as large as the request."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clip_detail(message: str) -> str:
    """An error message no longer than ``DETAIL_CHARS`` (the last safeguard against echoing a request)."""
    if len(message) <= DETAIL_CHARS:
        return message
    return message[:DETAIL_CHARS] + f"... ({len(message)} characters, cut)"


def request_bytes(manifest: dict) -> int:
    """The JSON size of the largest valid request to an artifact: every conditioning input as base64."""
    import torch

    values, names = manifest["program"]["values"], manifest["program"]["inputs"]
    latent = manifest["capture"]["latent_input"]
    total = 4096  # the scalar fields, the keys, the tensors' shape and dtype
    for name in names:
        if name in (latent, "timestep"):
            continue
        spec = values[name]
        numel = 1
        for d in spec["shape"]:
            numel *= 1 if d == "B" else d
        total += (numel * torch.empty((), dtype=getattr(torch, spec["dtype"])).element_size() + 2) // 3 * 4 + 256
    return total


def default_body_limit(manifest: dict | None) -> int:
    """The body limit when ``--max-body-bytes`` is not given: twice the largest valid request of the
    served artifact, at least ``MIN_BODY_BYTES``; ``PIPELINE_BODY_BYTES`` for a pipeline directory."""
    if manifest is None:
        return PIPELINE_BODY_BYTES
    return max(MIN_BODY_BYTES, 2 * request_bytes(manifest))


def check_port(port: int) -> None:
    """A TCP port number, or a CachecError (before Ray starts, instead of Serve's traceback)."""
    from .errors import CachecError

    if not 1 <= port <= 65535:
        raise CachecError(f"--port must be 1..65535; got {port}")


def placement_problem(nodes: list[dict], cpus: float, gpus: float) -> str | None:
    """Why no node of a Ray cluster can hold one sampling replica (None: one can).

    ``nodes``: each alive node's total resources (``ray.nodes()[i]["Resources"]``). Ray would
    otherwise wait for such a node forever without a word, and ``cachec serve`` would hang."""
    best_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes):
        return None
    if gpus and not any(n.get("GPU", 0.0) >= gpus for n in nodes):
        return f"a replica needs {gpus:g} GPU and no node of the Ray cluster has one"
    return (f"a replica reserves {cpus:g} CPUs (--cpus-per-replica) and the largest node of the Ray cluster has "
            f"{best_cpu:g}{' with a GPU' if gpus else ''}: lower --cpus-per-replica or add a larger node")
