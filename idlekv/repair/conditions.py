"""A condition is data: a name, a kind, the signal that scores the warm rows, and a selector with its own options.

    {name: IdleKV, kind: repair, signal: exact, selector: {name: topk_burst, lo: -1, hi: 5}}

kind: full (the uncompressed cache) | repair (B + K rows promoted from the warm tier) |
refresh (re-select all B+K rows with the signal). The signals are idlekv.repair.signals'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idlekv.repair.granularity import GRANULARITIES
from idlekv.repair.selectors import SELECTORS, build_selector

KINDS = ("full", "repair", "refresh")
ANCHORS = ("warm", "all")
# the signals that also score the active rows, which anchors="all" ranks
SIGNALS_WITH_ACTIVE_SCORES = ("exact", "digest", "proxy", "proxy_centered", "stale", "wrong")


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str
    signal: str | None = None  # a registered signal (idlekv.repair.signals) | None: content-agnostic
    selector: str | None = None  # a registered selector; a refresh without one keeps the plain top B+K
    selector_options: tuple = ()  # (option, value) pairs, e.g. (("lo", -1), ("hi", 5))
    granularity: str = "shared"  # shared | layer | head
    deployable: bool = True
    # Where topk_burst may anchor a burst: "warm" (the evicted rows, as the reference ranks them)
    # or "all" (active rows too, so a burst can fill the evicted rows around a kept row).
    anchors: str = "warm"

    def __post_init__(self):
        from idlekv.repair.signals import SIGNALS

        def refuse(why: str):
            raise ValueError(f"condition {self.name}: {why}")

        if self.kind not in KINDS:
            refuse(f"kind {self.kind!r} not in {KINDS}")
        if self.signal is not None and self.signal not in SIGNALS:
            refuse(f"signal {self.signal!r} not in {sorted(SIGNALS)} or None")
        if self.selector is not None and self.selector not in SELECTORS:
            refuse(f"selector {self.selector!r} not in {sorted(SELECTORS)}")
        if self.granularity not in GRANULARITIES:
            refuse(f"granularity {self.granularity!r} not in {GRANULARITIES}")
        if self.kind == "repair" and self.selector is None:
            refuse("a repair needs a selector")
        if self.kind == "refresh" and self.signal is None:
            refuse("a refresh re-selects by a signal; name one")
        if self.anchors not in ANCHORS:
            refuse(f"anchors {self.anchors!r} not in {ANCHORS}")
        if self.anchors == "all" and (self.kind != "repair" or self.selector != "topk_burst"
                                      or self.signal not in SIGNALS_WITH_ACTIVE_SCORES):
            refuse(f"anchors='all' needs a topk_burst repair scored by {', '.join(SIGNALS_WITH_ACTIVE_SCORES)} "
                   "(the signals that also score the active rows)")

    @classmethod
    def from_config(cls, entry: Mapping, defaults: Mapping[str, Mapping] | None = None) -> "Condition":
        """From a config entry whose `selector` is a name or {name: ..., <options>}; `defaults` gives
        options per selector name for entries that set none (e.g. the repair config's burst)."""
        entry = dict(entry)
        selector = entry.pop("selector", None)
        options = {}
        if isinstance(selector, Mapping):
            options = {k: v for k, v in selector.items() if k != "name"}
            selector = selector["name"]
        if not options and selector is not None:
            options = dict((defaults or {}).get(selector, {}))
        return cls(selector=selector, selector_options=tuple(sorted(options.items())), **entry)

    def build_selector(self):
        return build_selector(self.selector, **dict(self.selector_options))


STANDARD_CONDITIONS = (
    Condition("Full", "full"),
    # The rule's own next K rows: exactly the rule at B+K (its top B+K contains its top B).
    Condition("Matched", "repair", "rule", "topk", granularity="head"),
    Condition("IdleKV", "repair", "exact", "topk_burst", (("hi", 20), ("lo", -2))),
    Condition("Coverage", "repair", "exact", "coverage", (("width", 23),)),
    Condition("Random-K", "repair", None, "random"),
    Condition("Oldest-K", "repair", None, "oldest"),
    Condition("SpanRef-K", "repair", None, "span_ref", deployable=False),
    Condition("Refresh-buffered", "refresh", "exact", "topk_burst", (("hi", 20), ("lo", -2))),
)
