import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def lm():
    """The committed embedded model, loaded offline through the same loader real checkpoints use."""
    from lostattn.models.loader import load_model

    return load_model("embedded")


@pytest.fixture(scope="session")
def samples():
    from lostattn.bench.synthetic import SyntheticBenchmark

    return SyntheticBenchmark().samples("test", limit_per_family=2)
