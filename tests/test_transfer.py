"""Host <-> device transfers: pinning decided by the target device, never asked of a device tensor."""

import ast
from pathlib import Path

import pytest
import torch

from idlekv.cache import TieredCache
from idlekv.cache.transfer import TransferPlan, Uploader, host_cat, to_host

PACKAGE = Path(__file__).resolve().parents[1] / "idlekv"


def test_the_plan_pins_host_buffers_only_for_a_cuda_target():
    cuda, cpu = TransferPlan.for_device("cuda:0"), TransferPlan.for_device("cpu")
    assert (cuda.pin_host, cuda.non_blocking, cuda.device.type) == (True, True, "cuda")
    assert (cpu.pin_host, cpu.non_blocking) == (False, False)


def test_no_code_pins_a_tensor_after_the_fact():
    """`.pin_memory()` on a tensor that was moved to a device crashed every CUDA run; pinning is
    only asked at allocation, of host tensors (transfer.host_empty)."""
    calls, allocations = [], []
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "pin_memory":
                calls.append(f"{file.name}:{node.lineno}")
            if isinstance(node, ast.keyword) and node.arg == "pin_memory":
                allocations.append(file.name)
    assert calls == []
    assert set(allocations) <= {"transfer.py", "cache_bench.py", "gpu_check.py"}  # host buffers only


def test_host_copies_land_on_the_host_in_one_copy():
    plan = TransferPlan.for_device("cpu")
    t = torch.randn(1, 2, 5, 4)
    out = to_host(t, plan)
    assert out.device.type == "cpu" and torch.equal(out, t) and out.data_ptr() != t.data_ptr()
    assert torch.equal(host_cat([t, t * 2], 2, plan), torch.cat([t, t * 2], 2))


def test_an_uploader_for_the_cpu_hands_rows_back_as_they_are():
    t = torch.randn(1, 2, 5, 4)[:, :, 1:3]
    assert Uploader(TransferPlan.for_device("cpu"))(t).data_ptr() == t.data_ptr()


def test_the_warm_tier_holds_host_storage_whatever_the_plan_says():
    keys = [torch.randn(1, 2, 30, 8) for _ in range(2)]
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys], warm_precision="int8")
    assert cache.warm.plan == TransferPlan.for_device("cpu")
    cache.compress(torch.arange(0, 30, 3), reserve=4)
    assert all(cache.warm._k[i].data.device.type == "cpu" and cache.warm._k[i].scale.device.type == "cpu" for i in range(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make gpu-check runs the CUDA side)")
def test_a_cuda_cache_promotes_and_scores_through_pinned_host_storage():
    from idlekv.repair.scoring import score_rows

    keys = [torch.randn(1, 2, 300, 8, device="cuda") for _ in range(2)]
    cache = TieredCache.from_tensors(keys, [k.clone() for k in keys])
    cache.compress(torch.arange(0, 300, 3), reserve=8)
    assert cache.warm._k[0].data.is_pinned()
    score_rows(cache, [torch.randn(4, 3, 8, device="cuda") for _ in range(2)])
    cache.promote(torch.arange(8))
    assert cache.rows == 108
