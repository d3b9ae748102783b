"""``gendet.io.redact``: a URL's ``user:pass@`` never reaches what gendet writes or prints."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from gendet.io import redact, redacted
from helpers.bad_shards import write_good_shards
from pipelines import cli


@pytest.mark.parametrize(("text", "expected"), [
    ("http://user:pass@host:8080/a/b.tar", "http://***@host:8080/a/b.tar"),
    ("error at postgresql://me:p%40ss@db/mlflow and https://token@h/x", "error at postgresql://***@db/mlflow and https://***@h/x"),
    ("s3://bucket/a@b.tar", "s3://bucket/a@b.tar"),  # an @ in a path is no credential
    ("mail user@example.com", "mail user@example.com"),
])
def test_redact_replaces_userinfo_only(text, expected):
    assert redact(text) == expected


def test_redacted_reaches_every_string_of_a_json_value():
    value = {"url": "http://u:p@h/x", "list": ["gs://b/k", "http://a:b@c/d"], "n": 3, "http://k:s@h": None}
    assert redacted(value) == {"url": "http://***@h/x", "list": ["gs://b/k", "http://***@c/d"], "n": 3,
                               "http://***@h": None}


@pytest.fixture()
def shard_server(tmp_path):
    write_good_shards(str(tmp_path / "shards"), "good", n_shards=2, per_shard=2)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "shards"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_shards_behind_a_password_leave_it_out_of_the_store_and_the_logs(shard_server, tmp_path, capsys):
    store = tmp_path / "features"
    assert cli.main(["extract", f"http://alice:s3cret@{shard_server}/", str(store), "--local", "--encoder",
                     "spectrum:v1", "-v"]) == 0
    out, err = capsys.readouterr()
    written = [p.read_text() for p in store.rglob("*.json")]
    assert len(written) == 3 and all("s3cret" not in text for text in written)  # 2 stats files, the manifest
    assert any(f"http://***@{shard_server}/good-000000.tar" in text for text in written)
    assert "s3cret" not in out + err and "alice" not in out + err

    assert cli.main(["extract", f"http://alice:s3cret@{shard_server}/nothing-here/", str(store), "--local"]) == 2
    err = capsys.readouterr().err
    assert f"http://***@{shard_server}/nothing-here" in err and "s3cret" not in err  # the error names the URL, redacted
