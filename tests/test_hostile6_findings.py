"""Hostile pass six: `concepts check` on a concept far over the name limit, and an empty split given to
`cbmctl cms` and to `cbmctl inspect` on a cache. Each through the real click app or the TUI's loader, on a
tiny synthetic cache: one line, a non-zero exit, nothing printed without bound."""
import pytest
from makers import make_synthetic_cache
from test_cache_integrity import CONCEPTS, cms_args, one_line_error

from cbmctl.errors import CbmctlError
from cbmctl.names import MAX_NAME_CHARS


def test_a_concept_over_the_name_limit_is_reported_in_one_short_line(cli, tmp_path, tiny_model):
    """It used to be tokenised and echoed whole in a second error ('...' is N tokens): a megabyte line."""
    path = tmp_path / "long.txt"
    path.write_text("red\n" + "wing " * (4 * MAX_NAME_CHARS) + "\n")
    result = cli("concepts", "check", path, "--model", tiny_model)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) < 300, max(len(line) for line in lines)
    errors = [line for line in lines if ":2:" in line and "error" in line.lower()]
    assert len(errors) == 1, errors  # one error for line 2: its length, not also its tokens
    assert f"over the {MAX_NAME_CHARS} a name may hold" in result.output


@pytest.fixture
def no_val(tmp_path):
    cache = make_synthetic_cache(tmp_path / "s.h5", CONCEPTS, per_split=(60, 0, 20))
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    return cache, concepts


def test_cms_on_an_empty_split_is_one_line_not_a_traceback(cli, no_val):
    cache, concepts = no_val
    for extra in ((), ("--json",)):
        line = one_line_error(cli(*cms_args(cache, concepts, "--split", "val", *extra)))
        assert "the val split is empty" in line and "--split" in line
    assert cli(*cms_args(cache, concepts, "--split", "test")).exit_code == 0  # the other splits still score


def test_inspect_refuses_an_empty_split_of_a_cache_instead_of_showing_nan(no_val):
    from cbmctl.tui.data import load_cache
    cache, concepts = no_val
    with pytest.raises(CbmctlError, match="the val split is empty"):
        load_cache(cache, "val", str(concepts))
    assert load_cache(cache, "test", str(concepts)).labels.size == 20


@pytest.mark.parametrize("command", [["demo", "bench", "--worlds", "2", "--seeds", "2"], ["train", "x.h5"]])
def test_an_output_folder_with_a_control_character_is_refused_by_every_command_that_writes_one(cli, tmp_path,
                                                                                               command):
    out = tmp_path / "x\x1b[31my\n2"
    line = one_line_error(cli(*command, "--out", out))
    assert "holds a control character (\\x1b)" in line and "\x1b" not in line
    assert list(tmp_path.iterdir()) == []  # nothing made under such a name
