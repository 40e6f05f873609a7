"""Repository-level pytest set-up: notebooks run by nbval write their outputs to a fresh folder, so that no
finished result from an earlier run (the harness resumes from its files) can stand in for a real execution."""
import os
import tempfile

os.environ["LOSTATTN_OUT_ROOT"] = tempfile.mkdtemp(prefix="lostattn-nbval-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
