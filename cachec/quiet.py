"""Third-party messages known to be harmless, filtered by their exact text; everything else stays.

Why one module: a newcomer reads every line a command prints, and these say nothing they can act
on. Each entry names where it comes from and why it is harmless here; the filters match the
message itself (not a whole logger, not a whole warning category), so a new or different
message from the same library still shows. :func:`install` is called once by the CLI.

* diffusers' ``torch_dtype is deprecated`` FutureWarning: cachec passes ``torch_dtype`` to
  ``from_pretrained`` because the ``dtype`` spelling does not exist in the older diffusers it
  supports; the argument still works.
* diffusers' "Cannot initialize model with low cpu memory usage because `accelerate` was not
  found ..." notice (several lines, with a pip command): loading works without accelerate,
  only with more peak memory, and cachec's models are loaded once.
* diffusers' "There are modules in X that should be kept in float32: []." when the list is
  *empty*: no module is affected. A non-empty list is kept.
* Ray's "(raylet) Task ServeController.graceful_shutdown failed. There are infinite retries
  remaining ..." on SIGTERM (Serve's shutdown kills its controller while the controller's own
  shutdown task is pending; the process is leaving anyway), printed on stdout with raw ANSI
  colour codes: ``cachec serve`` runs inside :func:`output_without` (:func:`is_ray_shutdown_noise`),
  which drops that line alone.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable

# (category, regex matched at the start of the message) for warnings.filterwarnings
WARNINGS = [
    (FutureWarning, r"(The )?`torch_dtype` (argument )?is deprecated"),
]

# regexes searched in a log record's message, on the loggers that emit them
LOG_MESSAGES = [
    re.compile(r"Cannot initialize model with low cpu memory usage because `accelerate` was not found"),
    re.compile(r"There are modules in \w+ that should be kept in float32: \[\]\."),
]
# the diffusers modules that log the messages above (logger names are module names)
DIFFUSERS_LOGGERS = [
    "diffusers.models.modeling_utils",
    "diffusers.pipelines.pipeline_utils",
    "diffusers.loaders.transformer_flux",
    "diffusers.loaders.transformer_sd3",
    "diffusers.loaders.unet",
    "diffusers.loaders.ip_adapter",
]

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a line of Ray's own logging about the Serve controller's shutdown task failing while it exits
RAY_SHUTDOWN_NOISE = re.compile(r"^\s*(\(raylet\)\s*)?Task ServeController\.graceful_shutdown failed\. "
                                r"There are infinite retries remaining")


class KnownHarmless(logging.Filter):
    """Drops a log record whose message matches one of ``LOG_MESSAGES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to judge
            return True
        return not any(p.search(text) for p in LOG_MESSAGES)


_FILTER = KnownHarmless()


def install() -> None:
    """Filter the known-harmless warnings and log messages (idempotent; imports nothing heavy).

    Logger filters apply to the records a logger itself creates, and ``logging.getLogger`` of a
    module's name returns the very logger that module will use, so this works before diffusers
    is imported.
    """
    for category, pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in DIFFUSERS_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def is_ray_shutdown_noise(line: str) -> bool:
    """True for Ray's harmless ``graceful_shutdown`` failure line (ANSI codes or not)."""
    return bool(RAY_SHUTDOWN_NOISE.search(ANSI.sub("", line)))


class DroppingLines:
    """A text stream that passes every line to ``stream`` except those ``drop`` accepts.

    Lines are judged whole: text is held until its newline (``print`` writes a line and its
    newline in two calls), and ``flush`` passes on a held partial line unless it already matches.
    Writers on several threads (Ray prints from a background thread) are serialised.
    """

    def __init__(self, stream, drop: Callable[[str], bool]):
        self.stream, self.drop = stream, drop
        self._held = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._held = (self._held + text).split("\n")
            for line in lines:
                if not self.drop(line):
                    self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._held and not self.drop(self._held):
                self.stream.write(self._held)
                self._held = ""
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the wrapped stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def output_without(drop: Callable[[str], bool]):
    """``sys.stdout`` and ``sys.stderr`` without the lines ``drop`` accepts while the block runs.

    Why on Python's streams: Ray's driver prints the errors its GCS publishes (the
    ``graceful_shutdown`` one included) from a background thread with ``print(file=sys.stdout)``,
    looking the stream up at each call, so a wrapper in its place sees every such line.
    """
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = DroppingLines(saved[0], drop), DroppingLines(saved[1], drop)
    try:
        yield
    finally:
        wrapped = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = saved
        for stream in wrapped:
            if isinstance(stream, DroppingLines):
                stream.flush()
