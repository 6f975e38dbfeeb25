import pytest
import torch

from idlekv.tiny_models import FAMILIES, build_tiny_model

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_model(request):
    """A random tiny model of each supported family (fp32, sdpa)."""
    return build_tiny_model(request.param, seed=0)


@pytest.fixture
def token_ids():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, 128, (1, 48), generator=gen)
