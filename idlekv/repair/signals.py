"""Next-turn signals: what scores the warm rows at a pause. One function per signal, registered by name.

exact: the next turn's own post-RoPE queries over the compressed cache (the reference's scorer);
proxy: the next turn's key rows used as queries; stale: the turn-1 question's queries (a control
that should not help); wrong: another sample's next turn, of the same task (a control that should
not help); rule: the turn-1 rule's own scores (Matched); digest: the exact signal over the warm pages whose
Quest bound is highest (idlekv/repair/digest.py). A signal is computed once per compressed
cache and timed by one helper; exact and proxy share one forward of the next turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from idlekv.attention import capture_queries
from idlekv.cache import TieredCache
from idlekv.models import with_cache
from idlekv.repair.digest import DigestOptions, digest_rows
from idlekv.repair.scoring import RowScores, centered_proxy_queries, proxy_queries, score_rows


@dataclass
class Signal:
    scores: RowScores
    seconds: float  # what computing it took (the next-turn forward included, where it needs one)


@dataclass
class PauseInputs:
    """What the signals of one pause can read."""

    model: object
    comp: TieredCache  # the compressed cache
    turn_ids: list[int]  # the next turn's tokens
    stale_queries: list[torch.Tensor] | None = None  # per layer (Hq, T, d): the turn-1 question's queries
    rule_scores: torch.Tensor | None = None  # (layers, kv_heads, positions): the turn-1 rule's scores
    wrong_turn_ids: list[int] | None = None  # another sample's next turn
    chunk_rows: int | None = None
    active_visible: list[torch.Tensor] | None = None  # a ragged plan's padding mask (idlekv/repair/planned.py)
    digest: DigestOptions = field(default_factory=DigestOptions)  # the pages the digest signal scores exactly
    _forwards: dict = field(default_factory=dict, repr=False)

    def forward(self, ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
        """(queries, key rows, seconds not yet counted) of a forward of `ids` over the compressed cache.

        Run once per ids: a second signal that reads it is charged the forward's seconds, as if
        it had run it alone. Its rows land in spare room that no fork reads, and are not absorbed."""
        key = tuple(ids)
        if key in self._forwards:
            queries, keys, seconds = self._forwards[key]
            return queries, keys, seconds
        start = time.perf_counter()
        comp = self.comp
        hf = comp.to_hf(scratch=True)
        with capture_queries(self.model) as cap, torch.no_grad():
            self.model(torch.tensor([ids], device=comp.active.device), **with_cache(self.model, hf),
                       position_ids=comp.position_ids(len(ids)), use_cache=True, logits_to_keep=1)
        queries = [cap.queries[i][0] for i in range(comp.num_layers)]
        keys = [layer.keys[:, :, comp.rows :].clone() for layer in hf.layers]  # the room is reused by the next forward
        self._forwards[key] = (queries, keys, time.perf_counter() - start)
        return queries, keys, 0.0  # the caller's own clock counts this forward


SIGNALS: dict[str, Callable[[PauseInputs], tuple[RowScores, float]]] = {}


def signal(name: str):
    """Register a signal: a function of the pause's inputs -> (row scores, seconds of shared work it read but did not run)."""
    def register(fn):
        SIGNALS[name] = fn
        return fn
    return register


@signal("rule")
def rule_signal(x: PauseInputs) -> tuple[RowScores, float]:
    """The turn-1 rule's scores of the rows it evicted."""
    rs = RowScores([], [], [], [], [])
    heads = x.comp.active.kv_heads
    for layer in range(x.comp.num_layers):
        slots, positions = x.comp.warm.candidates(layer)
        if not slots.numel():  # nothing evicted
            slots = positions = torch.zeros(1, heads, 0, dtype=torch.long)
        rs.warm.append(torch.gather(x.rule_scores[layer], 1, positions[0]))
        rs.warm_positions.append(positions[0])
        rs.warm_slots.append(slots[0])
    return rs, 0.0


@signal("exact")
def exact_signal(x: PauseInputs) -> tuple[RowScores, float]:
    queries, _, forward = x.forward(x.turn_ids)
    return score_rows(x.comp, queries, x.chunk_rows, active_visible=x.active_visible), forward


@signal("digest")
def digest_signal(x: PauseInputs) -> tuple[RowScores, float]:
    queries, _, forward = x.forward(x.turn_ids)
    return digest_rows(x.comp, queries, x.digest, active_visible=x.active_visible), forward


@signal("proxy")
def proxy_signal(x: PauseInputs) -> tuple[RowScores, float]:
    _, keys, forward = x.forward(x.turn_ids)
    return score_rows(x.comp, proxy_queries(keys), x.chunk_rows, active_visible=x.active_visible), forward


@signal("proxy_centered")
def centered_proxy_signal(x: PauseInputs) -> tuple[RowScores, float]:
    _, keys, forward = x.forward(x.turn_ids)
    return score_rows(x.comp, centered_proxy_queries(keys, x.comp), x.chunk_rows, active_visible=x.active_visible), forward


@signal("stale")
def stale_signal(x: PauseInputs) -> tuple[RowScores, float]:
    return score_rows(x.comp, x.stale_queries, x.chunk_rows, active_visible=x.active_visible), 0.0


@signal("wrong")
def wrong_signal(x: PauseInputs) -> tuple[RowScores, float]:
    if x.wrong_turn_ids is None:
        raise ValueError("the wrong signal scores with another sample's next turn; none was given")
    queries, _, forward = x.forward(x.wrong_turn_ids)
    return score_rows(x.comp, queries, x.chunk_rows, active_visible=x.active_visible), forward


def timed(fn: Callable[[PauseInputs], tuple[RowScores, float]], inputs: PauseInputs) -> Signal:
    """A signal with its cost: its own time plus the seconds of a shared forward it read but did not run."""
    start = time.perf_counter()
    scores, uncounted = fn(inputs)
    return Signal(scores, time.perf_counter() - start + uncounted)


def compute_signals(inputs: PauseInputs, wanted: set[str]) -> dict[str, Signal]:
    """Each wanted signal once for this pause."""
    return {name: timed(SIGNALS[name], inputs) for name in sorted(wanted)}
