"""`streamvec query --filter`: JSON or @FILE, checked against the filter language before sending."""

from __future__ import annotations

import numpy as np
import pytest

from streamvec import commands
from streamvec.commands.errors import ExitCode
from streamvec.commands.searcher import _filter_arg


@pytest.fixture
def vectors(tmp_path):
    path = tmp_path / "q.npy"
    np.save(path, np.ones((1, 4), np.float32))
    return str(path)


@pytest.mark.parametrize(("given", "line"), [
    ('{"price": {"gt": null}}',
     "--filter: 'price': 'gt' needs a number or a string, got None"),
    ('{"or": []}', "--filter: 'or' needs a list of at least one filter"),
    ("[1]", "--filter must be a JSON object"),
    ("{nope", "--filter is not valid JSON: Expecting property name enclosed in double quotes: "
              "line 1 column 2 (char 1)"),
])
def test_a_bad_filter_is_a_usage_error_before_anything_is_sent(capsys, vectors, given,
                                                               line) -> None:
    # Nothing listens at the settings' defaults here: a request sent would fail another way.
    code = commands.main(["--redis", "redis://127.0.0.1:1/0", "query", "c", "--vectors",
                          vectors, "--filter", given])
    assert code == ExitCode.USAGE
    assert capsys.readouterr().err == f"streamvec: error: {line}\n"


def test_a_filter_is_read_from_a_file_with_at(tmp_path, capsys, vectors) -> None:
    (tmp_path / "f.json").write_text('{"and": [{"a": {"exists": true}}, {"b": {"lt": "z"}}], '
                                     '"c": {"ne": 1}}')
    assert _filter_arg(f"@{tmp_path / 'f.json'}") == {
        "and": [{"a": {"exists": True}}, {"b": {"lt": "z"}}], "c": {"ne": 1}}
    code = commands.main(["query", "c", "--vectors", vectors, "--filter",
                          f"@{tmp_path / 'missing.json'}"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"streamvec: error: --filter @{tmp_path / 'missing.json'}: cannot "
                          "read it: [Errno 2] No such file or directory")
