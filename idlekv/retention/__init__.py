"""Retention rules: score context rows, keep a budget. One file per rule, registered by name."""

from idlekv.retention.base import BudgetError, RetentionInputs, RetentionRule
from idlekv.retention.keep_all import KeepAll
from idlekv.retention.snapkv import SnapKV
from idlekv.retention.streaming_llm import StreamingLLM

RULES: dict[str, type[RetentionRule]] = {cls.name: cls for cls in (KeepAll, SnapKV, StreamingLLM)}


def build_rule(name: str, **options) -> RetentionRule:
    try:
        cls = RULES[name]
    except KeyError:
        raise ValueError(f"unknown retention rule {name!r}; choose one of {sorted(RULES)}") from None
    return cls(**options)


__all__ = ["RULES", "BudgetError", "KeepAll", "RetentionInputs", "RetentionRule", "SnapKV", "StreamingLLM", "build_rule"]
