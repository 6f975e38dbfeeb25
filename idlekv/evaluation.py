"""Answer a ruler sample's turns with a model over a TieredCache, and score the answers.

The prompt is prefilled once; each turn's text is then prefilled over the cache and its
answer decoded greedily. A hook may change the cache before any turn (compress it,
remove rows, repair it): that is how ablations and, later, the repair engine plug in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from idlekv.cache import TieredCache
from idlekv.generation import run_turn, stop_token_ids
from idlekv.models import with_cache
from ruler.metrics import needle_recall
from ruler.render import encode, render
from ruler.sample import Sample

BeforeTurn = Callable[[int, TieredCache, Sample], None]


@dataclass
class TurnResult:
    turn: int
    answer: str
    recall: list[bool]  # per gold value of the turn

    @property
    def accuracy(self) -> float:
        return sum(self.recall) / len(self.recall) if self.recall else 0.0


@torch.no_grad()
def prefill(model, prompt_ids: list[int], warm_precision: str = "model", room: int = 0) -> TieredCache:
    """The prompt's KV rows, written by the forward straight into a cache with `room` more rows of capacity."""
    param = next(model.parameters())
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    cache = TieredCache.empty(config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim,
                              len(prompt_ids) + room, param.dtype, param.device, warm_precision)
    hf = cache.to_hf()
    model(torch.tensor([prompt_ids], device=param.device), **with_cache(model, hf), position_ids=cache.position_ids(len(prompt_ids)),
          use_cache=True, logits_to_keep=1)
    cache.absorb(hf)
    return cache


@torch.no_grad()
def answer_sample(model, tokenizer, sample: Sample, max_new_tokens: int | list[int] = 48, before_turn: BeforeTurn | None = None,
                  stop_ids: set[int] | None = None) -> list[TurnResult]:
    """Answer every turn of `sample` (`max_new_tokens` for each, or one per turn); earlier answers stay in
    the context of later turns."""
    stop_ids = stop_token_ids(tokenizer) if stop_ids is None else stop_ids
    rendered = render(sample, tokenizer)
    cache = prefill(model, encode(tokenizer, rendered.prompt_text))
    results = []
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(sample.turns)
    for t, (turn, text) in enumerate(zip(sample.turns, rendered.turn_texts)):
        if before_turn is not None:
            before_turn(t, cache, sample)
        answer = tokenizer.decode(run_turn(model, cache, encode(tokenizer, text), budgets[t], stop_ids))
        results.append(TurnResult(t, answer, needle_recall(answer, turn.outputs)))
    return results
