"""Retention rules: score context rows, keep a budget. One file per rule, registered by name."""

from idlekv.retention.adakv import AdaKV
from idlekv.retention.arkv import ARKV
from idlekv.retention.base import BudgetError, RetentionInputs, RetentionRule
from idlekv.retention.h2o import H2O
from idlekv.retention.keep_all import KeepAll
from idlekv.retention.keydiff import KeyDiff
from idlekv.retention.knorm import Knorm
from idlekv.retention.kvmirror import KVMirrorHybrid
from idlekv.retention.probe import LearnedRelevance
from idlekv.retention.pyramidkv import PyramidKV
from idlekv.retention.random_rule import RandomRule
from idlekv.retention.recent_window import RecentWindow
from idlekv.retention.scissorhands import Scissorhands
from idlekv.retention.snapkv import SnapKV, SnapKVMax
from idlekv.retention.snapkv_reference import ReferenceSnapKV
from idlekv.retention.streaming_llm import StreamingLLM
from idlekv.retention.tova import TOVA

RULES: dict[str, type[RetentionRule]] = {
    cls.name: cls
    for cls in (ARKV, KeepAll, RecentWindow, StreamingLLM, H2O, Scissorhands, SnapKV, SnapKVMax, ReferenceSnapKV, TOVA, Knorm, KeyDiff, RandomRule, KVMirrorHybrid,
                LearnedRelevance, PyramidKV, AdaKV)
}


def build_rule(name: str, **options) -> RetentionRule:
    try:
        cls = RULES[name]
    except KeyError:
        raise ValueError(f"unknown retention rule {name!r}; choose one of {sorted(RULES)}") from None
    return cls(**options)


__all__ = ["ARKV", "AdaKV", "PyramidKV", "H2O", "RULES", "TOVA", "BudgetError", "KVMirrorHybrid", "KeepAll", "LearnedRelevance", "KeyDiff", "Knorm", "RandomRule", "RecentWindow", "ReferenceSnapKV",
           "RetentionInputs", "RetentionRule", "Scissorhands", "SnapKV", "SnapKVMax", "StreamingLLM", "build_rule"]
