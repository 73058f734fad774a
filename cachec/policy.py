"""The policy language: ``NAME[:ARGS]`` specs parsed into a method instance.

Words: a *spec* is the string (``fora:3``), a *method* the parsed, immutable instance of a
:class:`~cachec.methods.base.Method` subclass. Specs are parsed once, where they enter cachec
(CLI arguments, ``cachec.enable``, ``torch.compile`` options, a served request, a manifest);
inside, methods are passed. :func:`parse_policy` returns a method unchanged, so an API that
accepts either parses at its own edge.

This module only parses and prints: the methods themselves (parameters, controllers, plans)
are one module each under :mod:`cachec.methods`, and the parser reads their declared
:class:`~cachec.methods.base.Params` for names, kinds, defaults and ranges.

Grammar (DESIGN.md)::

    SPEC := NAME [":" ARGS]
    ARGS := VALUE | KEY "=" VALUE ("," KEY "=" VALUE)*      (a leading bare VALUE is the main key)
"""

from __future__ import annotations

import math

from .errors import PolicyError
from .methods import METHODS
from .methods.base import Method, Param
from .methods.hybrid import DECISIONS, HybridMethod, check_forecaster_args, forecast_keys, forecasters


def _convert(policy: str, p: Param, raw: str):
    if p.kind is str:
        return raw
    try:
        value = p.kind(raw)
    except ValueError:
        raise PolicyError(f"{policy}: {p.name}={raw!r} is not a{'n' if p.kind is int else ''} {p.kind.__name__}") from None
    if p.kind is float and not math.isfinite(value):  # nan compares false with every bound: it would pass
        raise PolicyError(f"{policy}: {p.name}={raw} is not a finite number")
    if (p.lo is not None and value < p.lo) or (p.hi is not None and value > p.hi):
        lo = "-inf" if p.lo is None else p.lo
        hi = "inf" if p.hi is None else p.hi
        raise PolicyError(f"{policy}: {p.name}={raw} is out of range; accepted: {lo} .. {hi}")
    return value


def parse_policy(spec: str | Method) -> Method:
    """Parse a spec string into a method instance; every mistake raises :class:`PolicyError`."""
    if isinstance(spec, Method):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyError(f"a policy spec is a non-empty string like 'fora:3'; got {spec!r}. Known: {', '.join(METHODS)}")
    spec = spec.strip()
    if "+" in spec:
        return _parse_hybrid(spec)
    name, _, args = spec.partition(":")
    name = name.strip().lower()
    if name not in METHODS:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(METHODS)} (see `cachec policies`)")
    cls = METHODS[name]
    params_by_name = {p.name: p for p in cls.all_params()}
    values = {p.name: p.default for p in cls.all_params()}
    positional = cls.positional or ((cls.main,) if cls.main is not None else ())
    if args.strip():
        keyed = False
        for i, item in enumerate(args.split(",")):
            item = item.strip()
            if "=" in item:
                key, _, raw = item.partition("=")
                key = key.strip()
                keyed = True
            elif not keyed and i < len(positional):
                key, raw = positional[i], item
            else:
                accepted = ", ".join(params_by_name)
                bare = f" (bare values: {', '.join(positional)}, first and in that order)" if positional else ""
                raise PolicyError(f"{name}: {item!r} needs the form KEY=VALUE; keys: {accepted}{bare}")
            if key not in params_by_name:
                raise PolicyError(f"{name}: unknown key {key!r}; accepted keys: {', '.join(params_by_name)}")
            values[key] = _convert(name, params_by_name[key], raw.strip())
    policy = cls(cls.Params(**values))
    policy.validate()
    return policy


def _parse_hybrid(spec: str) -> Method:
    """``DECISION+FORECASTER``: a step decision whose reused steps are forecasts (:mod:`cachec.methods.hybrid`)."""
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) != 2 or not all(parts):
        raise PolicyError(f"{spec!r}: a hybrid is DECISION+FORECASTER, two specs joined by one '+' "
                          f"(e.g. dbcache:F=1,t=0.08+taylorseer:O=1); decisions: {', '.join(DECISIONS)}; "
                          f"forecasters: {', '.join(forecasters())}")
    decision, forecaster = parts
    name, _, args = forecaster.partition(":")
    name = name.strip().lower()
    if name not in forecasters():
        raise PolicyError(f"{spec!r}: {name!r} after '+' is not a forecaster; accepted: {', '.join(forecasters())}")
    check_forecaster_args(name, args)
    policy = HybridMethod(parse_policy(decision), parse_policy(forecaster))
    policy.validate()
    return policy


def describe_policies() -> str:
    """The table printed by ``cachec policies``, from each method's declared parameters."""
    lines = []
    for cls in METHODS.values():
        lines.append(f"{cls.name:<10} {cls.doc}")
        lines.append(f"{'':<10} granularity: {cls.granularity}, schedule: {'dynamic' if cls.dynamic else 'static'}")
        for p in cls.all_params():
            main = " (main value)" if p.name == cls.main else ""
            rng = ""
            if p.lo is not None or p.hi is not None:
                rng = f", range {p.lo if p.lo is not None else '-inf'}..{p.hi if p.hi is not None else 'inf'}"
            lines.append(f"{'':<11}{p.name + '=' + repr(p.default):<16} {p.kind.__name__}{rng}: {p.doc}{main}")
    return "\n".join(lines + _describe_hybrids())


def _describe_hybrids() -> list[str]:
    """The hybrid spelling, after the methods it combines."""
    keys = "; ".join(f"{n}: {', '.join(forecast_keys(METHODS[n])) or 'no key'}" for n in forecasters())
    return [
        "",
        f"{'DECISION+FORECASTER':<10} hybrid: the decision's steps (probe or F/R mask), its reused steps forecast "
        "instead of copied",
        f"{'':<10} e.g. dbcache:F=1,B=0,t=0.08+taylorseer:O=1, static:FFRRFRRF+hicache:O=1",
        f"{'':<10} decisions: {', '.join(DECISIONS)} (all their keys); forecasters: {', '.join(forecasters())} "
        f"(forecast keys only, as KEY=VALUE: {keys})",
        f"{'':<10} the forecast uses the real distances between the decision's full steps",
    ]
