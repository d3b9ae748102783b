"""The command line of a pipelines job, from a test: what `gendet VERB ARGS` or `python -m pipelines.X
ARGS` does (parse, validate, run; bad input one line, exit 2), and the job an argv describes."""

from __future__ import annotations

from typing import Any

from pipelines import _jobs


def run_cli(module: Any, argv: list) -> int:
    """The exit code of ``python -m <module> ARGV``."""
    return _jobs.run(module.JOB, [str(a) for a in argv], prog=module.__name__)


def job_of(module: Any, argv: list) -> Any:
    """The (validated) job ``ARGV`` describes for ``module``."""
    return _jobs.parse(module.JOB, [str(a) for a in argv], prog=module.__name__)[0]
