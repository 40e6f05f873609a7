"""Repository-level pytest set-up: notebooks run by nbval write their outputs to a fresh folder, so that no
finished result from an earlier run (the harness resumes from its files) can stand in for a real execution."""
import os
import tempfile

os.environ["LOSTATTN_OUT_ROOT"] = tempfile.mkdtemp(prefix="lostattn-nbval-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

_last_file = {"name": None}


def pytest_runtest_logstart(nodeid, location):
    """Even under `-q`, start a line naming each test file as it begins, so a long run shows where it is (the
    notebooks under nbval and the end-to-end tests take minutes)."""
    name = location[0]
    if name == _last_file["name"]:
        return
    first = _last_file["name"] is None
    _last_file["name"] = name
    tr = _config["config"].pluginmanager.get_plugin("terminalreporter") if _config["config"] else None
    if tr is not None and tr.verbosity < 1:
        tr.write(("" if first else "\n") + f"{name} ")


_config = {"config": None}


def pytest_configure(config):
    _config["config"] = config


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (torch, numpy, random), so no draw a test makes unseeded can
    make it pass on one run and fail on the next."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
