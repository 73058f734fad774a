"""``none``: no caching, every step a full forward — the reference every method is measured
against, and what any program runs as ``none`` (its full variant) for a same-backend baseline."""

from __future__ import annotations

from ..planner.plan import Plan
from . import register
from .base import Always, Method


@register
class NoneMethod(Method):
    name = "none"
    doc = "no caching: every step is a full forward (the reference)"
    controller_cls = Always
    variants = ("full",)
    rank = 0

    def plan(self, planner) -> Plan:
        """The full variant the planner starts from is the whole plan."""
        return planner.new_plan()
