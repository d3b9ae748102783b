"""The `gendet` front door: every offered verb has --help; errors are one line, exit 2."""

import os
import subprocess
import sys

import pytest

from gendet import GendetError, cli
from gendet.config import ConfigError, check


def _run(*args):
    return subprocess.run([sys.executable, "-m", "gendet", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_verb():
    out = _run("--help")
    assert out.returncode == 0
    for verb in cli.VERBS:  # this install has every module, so every verb is offered
        assert verb in out.stdout


def test_a_verb_whose_module_is_not_installed_is_not_offered(monkeypatch, capsys):
    monkeypatch.setitem(cli.VERBS, "ghost", ("gendet_no_such_package.verb", "a verb of a missing extra"))
    monkeypatch.setitem(cli.VERBS, "ghost2", ("gendet.no_such_module", "a module this version lacks"))
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
    out = subprocess.run([sys.executable, "-m", "gendet", "evaluate", str(tmp_path), "--model", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "pip install 'gendet[ray]'" in out.stderr


@pytest.mark.parametrize("verb", sorted(cli.available_verbs()))
def test_every_verb_has_help(verb):
    out = _run(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: gendet" in out.stdout


def test_gendet_error_is_one_line_and_exit_2(capsys, monkeypatch):
    def boom(args):
        raise GendetError("shards/x.tar: not found; check the URL")

    parser = cli.build_parser([])
    monkeypatch.setattr(cli, "build_parser", lambda argv: _with_verb(parser, boom))
    assert cli.main(["fail"]) == 2
    err = capsys.readouterr().err
    assert err == "gendet: error: shards/x.tar: not found; check the URL\n"


def _with_verb(parser, fn):
    sub = next(a for a in parser._actions if a.dest == "verb")
    sub.add_parser("fail").set_defaults(_run=fn)
    return parser


def test_config_check_raises_config_error():
    with pytest.raises(ConfigError, match="margin"):
        check(False, "margin must be >= 0")
