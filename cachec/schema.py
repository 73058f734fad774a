"""Small JSON shape checkers for what cachec reads from disk (manifests, program descriptions).

No dependency: each checker takes ``(value, where)`` and raises :class:`Mismatch` when the value
does not fit, where ``where`` is the dotted field path the user sees (``segments.b0_ff.inputs[1]``).
The callers turn a :class:`Mismatch` into an :class:`~cachec.errors.ArtifactError` naming the file.
"""

from __future__ import annotations

import json
import math
import re

import torch


class Mismatch(Exception):
    """Internal: the value at ``where`` does not fit its checker (turned into a user message)."""

    def __init__(self, where: str, expected: str, value=None, missing: bool = False):
        super().__init__(where)
        self.where, self.expected, self.value, self.missing = where, expected, value, missing

    def problem(self) -> str:
        return "is missing" if self.missing else f"should be {self.expected}, got {show_value(self.value)}"


def show_value(value) -> str:
    """``a list [1, 2]``: the kind and the start of a value, for messages about a wrong field."""
    try:
        text = json.dumps(value, default=repr)
    except (RecursionError, ValueError):
        text = "…"
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {text[:60]}{'…' if len(text) > 60 else ''}"


def leaf(expected: str, ok):
    def check(v, where):
        if not ok(v):
            raise Mismatch(where, expected, v)
    return check


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STR = leaf("a string", lambda v: isinstance(v, str))
NAME = leaf("a non-empty string", lambda v: isinstance(v, str) and bool(v))
NAT = leaf("a non-negative integer", lambda v: is_int(v) and v >= 0)
POS = leaf("a positive integer", lambda v: is_int(v) and v >= 1)
NUM = leaf("a finite number", lambda v: (is_int(v) or isinstance(v, float)) and math.isfinite(v))
DIM = leaf('"B" (the batch) or a non-negative integer', lambda v: v == "B" or (is_int(v) and v >= 0))
DTYPE = leaf("a torch dtype name such as 'float32'",
              lambda v: isinstance(v, str) and isinstance(getattr(torch, v, None), torch.dtype))
SHA = leaf("a SHA-256 hex digest", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None)
ANY = leaf("any JSON value", lambda v: True)


def one_of(*choices):
    return leaf("one of " + ", ".join(map(repr, choices)), lambda v: isinstance(v, str) and v in choices)


def nullable(check):
    def run(v, where):
        if v is not None:
            check(v, where)
    return run


def list_of(item, expected="a list"):
    def check(v, where):
        if not isinstance(v, list):
            raise Mismatch(where, expected, v)
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def map_of(item, expected="an object"):
    def check(v, where):
        if not isinstance(v, dict):
            raise Mismatch(where, expected, v)
        for k, x in v.items():
            item(x, f"{where}.{k}" if where else k)
    return check


def record(required: dict, optional: dict | None = None):
    def check(v, where):
        if not isinstance(v, dict):
            raise Mismatch(where, "an object with keys " + ", ".join(required), v)
        for key, sub in required.items():
            if key not in v:
                raise Mismatch(f"{where}.{key}" if where else key, "", missing=True)
            sub(v[key], f"{where}.{key}" if where else key)
        for key, sub in (optional or {}).items():
            if key in v:
                sub(v[key], f"{where}.{key}" if where else key)
    return check
