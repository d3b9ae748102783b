"""The `gendet` front door (pipelines.cli): every offered verb has --help; errors are one line, exit 2."""

import os
import subprocess
import sys

import pytest

from gendet import GendetError
from pipelines import _jobs, cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_verb():
    out = _run("--help")
    assert out.returncode == 0
    for verb in cli.VERBS:  # this install has every module, so every verb is offered
        assert verb in out.stdout
    assert "``" not in out.stdout  # plain text, no reST markup


def test_the_console_script_is_the_pipelines_cli():
    script = os.path.join(os.path.dirname(sys.executable), "gendet")  # the venv's, installed by pyproject.toml
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("gendet ")


def test_a_verb_whose_module_is_not_installed_is_not_offered(monkeypatch, capsys):
    monkeypatch.setitem(cli.VERBS, "ghost", ("gendet_no_such_package.verb", "a verb of a missing extra"))
    monkeypatch.setitem(cli.VERBS, "ghost2", ("pipelines.no_such_module", "a module this version lacks"))
    assert "ghost" not in cli.available_verbs() and "ghost2" not in cli.available_verbs()
    assert "extract" in cli.available_verbs()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert "ghost" not in shown and "extract" in shown


def test_a_ray_verb_without_ray_says_so_in_one_line(tmp_path):
    # A fake `ray` package that fails to import stands in for an install without the [ray] extra.
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "pipelines", "evaluate", str(tmp_path), "--model", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "pip install 'gendet[ray]'" in out.stderr


@pytest.mark.parametrize("verb", sorted(cli.available_verbs()))
def test_every_verb_has_help(verb):
    out = _run(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: gendet {verb}" in out.stdout


def test_gendet_error_is_one_line_and_exit_2(capsys):
    def boom(job):
        raise GendetError("shards/x.tar: not found; check the URL")

    spec = _jobs.JobSpec(cli_job(), boom)
    assert _jobs.run(spec, [], prog="gendet fail") == 2
    assert capsys.readouterr().err == "gendet: error: shards/x.tar: not found; check the URL\n"


def cli_job():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Nothing:
        """Nothing to do. Example: none"""

    return Nothing


def test_logging_goes_to_stderr_and_follows_v_and_q(capsys):
    import logging

    _jobs.setup_logging(quiet=1)
    logging.getLogger("gendet.x").info("hidden")
    logging.getLogger("gendet.x").warning("shown")
    _jobs.setup_logging(verbose=1)
    logging.getLogger("pipelines.x").debug("details")
    captured = capsys.readouterr()
    assert "hidden" not in captured.err and "shown" in captured.err and "details" in captured.err
    assert captured.out == ""
    _jobs.setup_logging()


@pytest.mark.parametrize("verb", sorted(cli.available_verbs()))
def test_a_verbs_module_loads_no_heavy_library_so_help_is_quick(verb):
    """torch, Ray, MLflow, sklearn and pyarrow load when a job runs, not when its --help is read."""
    code = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
            "print([m for m in ('torch', 'ray', 'mlflow', 'sklearn', 'pyarrow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, cli.VERBS[verb][0]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
