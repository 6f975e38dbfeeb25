import torch

from idlekv.embedded.ablation import remove_rows
from idlekv.evaluation import prefill
from idlekv.generation import greedy_decode, run_turn


def test_run_turn_equals_hf_generate(tiny_model, token_ids):
    prompt, turn = token_ids[0, :30].tolist(), token_ids[0, 30:38].tolist()
    cache = prefill(tiny_model, prompt)
    answer = run_turn(tiny_model, cache, turn, max_new_tokens=6, stop_ids=())
    reference = tiny_model.generate(torch.tensor([prompt + turn]), max_new_tokens=6, do_sample=False, min_new_tokens=6, pad_token_id=0)
    assert answer == reference[0, 38:].tolist()
    assert cache.rows == 38 + 5 and cache.seen_tokens == 43  # the last token is emitted, not fed back


def test_stop_ids_end_a_row_and_batches_decode_independently(tiny_model, token_ids):
    prompts = torch.stack([token_ids[0, :20], token_ids[0, 20:40]])
    out = tiny_model(prompts, use_cache=True)
    first = out.logits[:, -1]
    free = greedy_decode(tiny_model, out.past_key_values, first, 20, 5)
    stop_at = free[1][2]
    out = tiny_model(prompts, use_cache=True)
    stopped = greedy_decode(tiny_model, out.past_key_values, first, 20, 5, stop_ids={stop_at})
    assert stopped[1] == free[1][: free[1].index(stop_at)]
    assert stopped[0] == free[0][: free[0].index(stop_at)] if stop_at in free[0] else stopped[0] == free[0]


def test_remove_rows_evicts_exactly_those_positions(tiny_model, token_ids):
    cache = prefill(tiny_model, token_ids[0].tolist())
    remove_rows(cache, [3, 4, 5, 40])
    for layer in range(cache.num_layers):
        kept = set(cache.active.positions(layer)[0, 0].tolist())
        assert kept == set(range(48)) - {3, 4, 5, 40}
    assert cache.warm.rows == 4
