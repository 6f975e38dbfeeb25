"""Attention statistics that several rules share: window attention, and the attention of
every prefill query, streamed in chunks so that memory stays (chunk x rows) per head."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def window_attention(queries: torch.Tensor, keys: torch.Tensor, key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """Softmax attention of queries over a head's rows.

    queries (query_heads, w, d); keys (kv_heads, rows, d); key_positions (kv_heads, rows);
    query_positions (w,). Returns (query_heads, w, rows); a query sees rows at positions <= its own.
    """
    group = queries.shape[0] // keys.shape[0]
    k = keys.repeat_interleave(group, dim=0).float()
    logits = queries.float() @ k.transpose(-1, -2) * queries.shape[-1] ** -0.5
    pos = key_positions.repeat_interleave(group, dim=0)
    visible = pos[:, None, :] <= query_positions.to(pos.device)[None, :, None]
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)


def attention_chunks(queries: torch.Tensor, keys: torch.Tensor, key_positions: torch.Tensor,
                     query_positions: torch.Tensor, chunk: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(attention (query_heads, c, rows), visible (query_heads, c, rows)) for chunks of queries."""
    group = queries.shape[0] // keys.shape[0]
    pos = key_positions.repeat_interleave(group, dim=0)
    for start in range(0, queries.shape[1], chunk):
        q_pos = query_positions[start : start + chunk].to(pos.device)
        attn = window_attention(queries[:, start : start + chunk], keys, key_positions, q_pos)
        yield attn, pos[:, None, :] <= q_pos[None, :, None]


def group_mean(values: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(query_heads, ...) -> (kv_heads, ...): the mean over each GQA group."""
    return values.reshape(kv_heads, -1, *values.shape[1:]).mean(dim=1)


def pool_positions(scores: torch.Tensor, kernel: int, mode: str = "max", count_pad: bool = True) -> torch.Tensor:
    """Smooth (heads, positions) scores along positions with a 1-D kernel (odd), keeping the length;
    average pooling counts the zero padding at the edges (torch's default, SnapKV's code) unless told not to."""
    if kernel <= 1:
        return scores
    x, pad = scores[:, None, :], kernel // 2
    if mode == "max":
        return torch.nn.functional.max_pool1d(x, kernel, stride=1, padding=pad)[:, 0]
    if mode == "avg":
        return torch.nn.functional.avg_pool1d(x, kernel, stride=1, padding=pad, count_include_pad=count_pad)[:, 0]
    raise ValueError(f"pooling {mode!r} not in ('max', 'avg')")


def window_scores(inputs, layer: int, reduce, last: int | None = None) -> torch.Tensor:
    """(kv_heads, context_length): the observation window's attention over layer `layer`'s rows,
    reduced over the window's queries by `reduce` ((query_heads, w, rows) -> (query_heads, rows)),
    averaged over each GQA group, by context position (-inf where no row). `last` keeps only the
    window's last queries."""
    from idlekv.retention.base import context_scores

    keys, positions = inputs.keys[layer], inputs.positions[layer]
    queries, query_positions = inputs.window_queries[layer], inputs.window_positions
    if last is not None:
        queries, query_positions = queries[:, -last:], query_positions[-last:]
    attn = reduce(window_attention(queries, keys, positions, query_positions))
    return context_scores(group_mean(attn, keys.shape[0]), positions, inputs.context_length)
