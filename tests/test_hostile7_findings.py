"""Hostile pass seven: explain's CMS options and --unit, and `concepts filter --split`. Each through the real
click app; the refusals come before any backbone or run is loaded."""
import json
import os
import stat

import pytest
from makers import make_cub


def test_without_a_run_the_note_names_the_cms_options_given_not_the_demo_s(cli, tmp_path):
    """The note said 'the demo world's concepts and species' while the user's --classes were used; now the
    note says only that no run was found and the library's line names what it used."""
    cub = make_cub(tmp_path / "data")
    image = sorted(str(p) for p in (cub / "images").rglob("*.jpg"))[0]
    classes = tmp_path / "classes.txt"
    classes.write_text("albatross\ngull\n")
    result = cli("explain", image, "--runs-root", tmp_path / "no-runs", "--classes", classes, "--json",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: no run under")]
    assert len(notes) == 1 and "species" not in notes[0], result.stderr
    assert f"concept set demo (33 concepts) and 2 classes ({classes})" in result.stderr  # what it used, by name
    assert json.loads(result.stdout)["explanations"][0]["predicted"] in ("albatross", "gull")


def test_unit_refuses_the_options_that_only_explain_images(cli, tmp_path):
    """--unit used to ignore --cms, --model, --class and the interventions without a word."""
    for extra, named in ((["--cms"], "--cms"), (["--model", "demo", "--classes", "x.txt"], "--model, --classes"),
                         (["--class", "gull"], "--class"), (["--zero", "red"], "--zero")):
        result = cli("explain", "--unit", "red", "--runs-root", tmp_path / "no-runs", *extra)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"--unit shows the concept units of a run; drop {named}" in lines[0]


def test_concepts_filter_split_suggests_the_split_meant(cli, tmp_path):
    result = cli("concepts", "filter", "demo", "--out", tmp_path / "kept.txt", "--split", "tset")
    assert result.exit_code == 2 and "did you mean 'test'" in result.output.lower(), result.output
    assert not (tmp_path / "kept.txt").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_overwrite_never_replaces_a_pipe_or_device_with_a_cache(cli, tmp_path, tiny_model):
    """`embed --cache PIPE --overwrite` renamed the new cache over the pipe (as root, over /dev/zero's node)."""
    from cbmctl.errors import CbmctlError
    from cbmctl.files import atomic_write
    cub = make_cub(tmp_path / "data")
    pipe = tmp_path / "pipe.h5"
    os.mkfifo(pipe)
    for extra in (["--overwrite"], []):
        result = cli("embed", cub, "--model", tiny_model, "--pretrained", "none", "--cache", pipe, "-q", *extra)
        assert result.exit_code == 1 and "pipe.h5 is a named pipe, not a file" in result.output, result.output
        assert stat.S_ISFIFO(os.lstat(pipe).st_mode)  # still the pipe
    with pytest.raises(CbmctlError, match="is a named pipe"):  # every atomic writer, not only embed
        with atomic_write(pipe, "w") as handle:
            handle.write("x")
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode) and not list(tmp_path.glob(".pipe.h5*.tmp"))
