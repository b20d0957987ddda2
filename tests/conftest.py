import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_state():
    """Every test starts from an empty param store, Pyro validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in float64 (numbers compared to independent computations)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
