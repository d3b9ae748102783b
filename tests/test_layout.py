"""The tree reads as the data path, in small modules: the library never names the layer above it
(the layer rules themselves are import-linter contracts in pyproject.toml, run by `make lint`)."""

from __future__ import annotations

import re
from pathlib import Path

import gendet

PACKAGE = Path(gendet.__file__).parent
REPO = PACKAGE.parent
DATA_PATH = ["data", "encoders", "extract", "features", "method", "eval", "serve", "mlops", "zoo", "coevolve"]
MAX_LINES = 400
CODE_TREES = ("gendet", "pipelines", "benchmarks", "experiments")


def test_the_package_is_grouped_by_concern():
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == sorted(DATA_PATH)
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "config.py", "io.py", "progress.py"]
    methods = sorted(p.name for p in (PACKAGE / "method").iterdir() if (p / "__init__.py").is_file())
    assert methods == ["gamma", "gendet"]  # one package per method


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for tree in CODE_TREES for p in (REPO / tree).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_library_never_names_the_pipelines():
    """import-linter sees imports, not a module named in a string (importlib, a table of verbs)."""
    named = {str(p.relative_to(REPO)): m.group(0) for p in PACKAGE.rglob("*.py")
             if (m := re.search(r"""["']pipelines[./]|\bimport pipelines\b|\bfrom pipelines\b""", p.read_text()))}
    assert named == {}


def test_one_literal_per_default_of_the_gate():
    """The family rule's tolerance is ``gate.MAX_FAMILY_DROP`` and its split ``gate.GATE_SPLIT``;
    jobs take both through ``GateConfig``, so no other module spells a number or a split for them."""
    for pattern in (r"(family_drop|FAMILY_DROP)\s*(:\s*float\s*)?=\s*[\d.]", r"(gate_split|GATE_SPLIT)\s*[:=]\s*[\"']"):
        found = [f"{p.relative_to(REPO)}:{i}" for tree in ("gendet", "pipelines") for p in (REPO / tree).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
        assert len(found) == 1 and found[0].startswith("gendet/mlops/gate.py:"), found
