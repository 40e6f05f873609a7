"""The package's shape: subpackages that read as the pipeline, imports that run one way (the import-linter
contract in pyproject.toml), and few top-level modules."""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

import lostattn

PKG = Path(lostattn.__file__).parent
ROOT = PKG.parent


def test_the_layer_contract_is_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    exe = str(exe) if exe.is_file() else shutil.which("lint-imports")
    assert exe, "import-linter is not installed: pip install -e .[dev]"
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout or "kept, 0 broken" in run.stdout


def test_no_import_cycle_between_subpackages():
    g = grimp.build_graph("lostattn")
    tops = sorted({m.split(".")[1] for m in g.modules if m.count(".") >= 1})
    for a in tops:
        for b in tops:
            if a < b:
                assert not (g.chain_exists(f"lostattn.{a}", f"lostattn.{b}", as_packages=True)
                            and g.chain_exists(f"lostattn.{b}", f"lostattn.{a}", as_packages=True)), (a, b)


def test_at_most_five_top_level_modules():
    modules = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(modules) <= 5, modules
