"""The `gendet` front door: every offered verb has --help; errors are one line, exit 2."""

import subprocess
import sys

import pytest

from gendet import GendetError, cli
from gendet.config import ConfigError, check


def _run(*args):
    return subprocess.run([sys.executable, "-m", "gendet", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_only_installed_verbs():
    out = _run("--help")
    assert out.returncode == 0
    for verb in cli.available_verbs():
        assert verb in out.stdout
    missing = set(cli.VERBS) - set(cli.available_verbs())
    for verb in missing:  # no placeholder verb pretends to work
        assert f"    {verb} " not in out.stdout


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
