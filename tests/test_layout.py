"""The tree reads as the data path, in small modules (the layer rules themselves are import-linter
contracts in pyproject.toml, run by `make lint`)."""

from __future__ import annotations

from pathlib import Path

import gendet

PACKAGE = Path(gendet.__file__).parent
DATA_PATH = ["data", "encoders", "extract", "features", "method", "eval", "serve", "mlops", "zoo", "coevolve"]
MAX_LINES = 400


def test_the_package_is_grouped_by_concern():
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == sorted(DATA_PATH)
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "config.py", "io.py"]


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
