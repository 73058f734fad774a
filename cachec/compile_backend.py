"""The old name of :mod:`cachec.torch_compile`, kept for one public entry point.

Environments installed before the rename register ``torch.compile``'s ``backend="cachec"`` as
``cachec.compile_backend:cachec_backend`` (pyproject's ``torch_dynamo_backends`` entry point,
read from the installed metadata, not from pyproject); this import keeps them working until
they are reinstalled. Nothing in cachec imports it.
"""

from .torch_compile import cachec_backend, runtimes_of

__all__ = ["cachec_backend", "runtimes_of"]
