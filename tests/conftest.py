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
    from lostattn.tasks.synthetic import SyntheticBenchmark

    return SyntheticBenchmark().samples("test", limit_per_family=2)


from lostattn.models.adapters import MODEL_FAMILIES  # noqa: E402

FAMILIES = tuple(MODEL_FAMILIES)  # every supported family; random_checkpoints builds each (test_models checks it)
PAPER_FAMILIES = FAMILIES[:5]  # the paper's 2024-era families; the others are the newer ones (book/newer_models.md)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny random-weight checkpoints of every family, in both file layouts, built at test time with the real
    transformers classes and processors: `checkpoints(family, layout="hub")` returns the folder, built once."""
    from lostattn.models.random_checkpoints import build_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[tuple[str, str], str] = {}

    def get(family: str, layout: str = "hub") -> str:
        if (family, layout) not in built:
            built[family, layout] = str(build_checkpoint(family, root / f"{family}-{layout}", layout=layout))
        return built[family, layout]

    return get


@pytest.fixture(scope="session")
def family_lm(checkpoints):
    """The loaded tiny checkpoint of a family (hub layout), cached for the session: `family_lm("qwen2_5_vl")`."""
    from lostattn.models.loader import load_model

    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(checkpoints(family))
        return cache[family]

    return get
