"""Rules with one owner: each default and each constraint between options lives in the typed spec and holds
whatever the entry (library, command line, config file); one safe-text function, one slug, one list hash."""
import inspect

import pytest
import yaml
from makers import make_synthetic_cache

from cbmctl.errors import CbmctlError
from cbmctl.spec import ExperimentSpec, TrainConfig

CONCEPTS = ["red", "green", "striped pattern", "star shape"]


def test_the_l1_default_is_the_specs_everywhere():
    from cbmctl.losses import cbl_loss, l1_loss
    assert TrainConfig().l1_lambda == 0.1  # the documented default
    assert inspect.signature(l1_loss).parameters["strength"].default == TrainConfig().l1_lambda
    assert inspect.signature(cbl_loss).parameters["l1_lambda"].default == TrainConfig().l1_lambda


def test_min_epochs_above_epochs_is_refused_by_the_library():
    with pytest.raises(CbmctlError, match="`min_epochs` 6 is more than `epochs` 5"):
        TrainConfig(epochs=5, min_epochs=6).validate()
    with pytest.raises(CbmctlError, match="`min_epochs` 6 is more than `epochs` 5"):
        ExperimentSpec.from_mapping({"epochs": 5, "min_epochs": 6})
    # the default never conflicts: it is 20, or --epochs when fewer
    assert TrainConfig(epochs=5).first_stop_epoch() == 5 and TrainConfig().first_stop_epoch() == 20
    assert TrainConfig(epochs=5, min_epochs=5).first_stop_epoch() == 5


def test_a_config_file_with_min_epochs_above_epochs_is_refused_in_one_line(cli, tmp_path):
    cache = make_synthetic_cache(tmp_path / "c.h5", CONCEPTS, per_split=(40, 20, 20))
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"epochs": 3, "min_epochs": 10}))
    result = cli("train", cache, "--config", config, "--quiet", "--out", tmp_path / "runs")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(config) in errors[0] and "`min_epochs` 10 is more than `epochs` 3" in errors[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_runs_config_round_trips_with_the_default_min_epochs():
    spec = ExperimentSpec.from_mapping({"epochs": 3})
    again = ExperimentSpec.from_mapping(yaml.safe_load(yaml.safe_dump(spec.as_mapping())), "config.yaml")
    assert again.train == spec.train and again.train.min_epochs is None


def test_hard_belongs_to_gumbel_alone():
    base = TrainConfig(hard=True)
    assert base.for_method("gumbel", 3).hard and base.for_method("gumbel", 3).seed == 3
    assert [base.for_method(m).hard for m in ("l1", "none", "contrastive", "cos3")] == [False] * 4
    spec = ExperimentSpec.from_mapping({"compare": "gumbel,l1", "hard": True})  # not refused for l1
    assert spec.train.hard


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"])
def test_safe_text_escapes_every_line_and_paragraph_separator(separator):
    from cbmctl.sanitize import safe_text
    shown = safe_text(f"red{separator}wings")
    assert shown.startswith("red\\") and shown.endswith("wings") and separator not in shown
    assert len(shown.splitlines()) == 1


def test_one_slug_for_file_names():
    from cbmctl.files import slug
    assert slug("ViT-B/32 (openai)") == "ViT-B-32--openai"
    assert slug("//") == "x" and slug("", "run") == "run"


def test_one_hash_for_a_list_of_names():
    from cbmctl.concepts import ConceptSet
    from cbmctl.identity import names_sha256
    assert ConceptSet("s", CONCEPTS, "test").sha256 == names_sha256(CONCEPTS) != names_sha256(CONCEPTS[::-1])


RECORD = {"schema_version": 1, "backbone_model": "demo", "backbone_pretrained": "shipped", "weights_sha256": "a" * 64,
          "preprocess": "{}", "dataset_fingerprint": "b" * 64, "sha256": "c" * 64}


@pytest.mark.parametrize("question", ["data_difference", "backbone_difference", "concepts_difference",
                                      "cache_difference"])
def test_each_identity_question_answers_different_for_each_of_its_fields(question):
    import cbmctl.identity as identity
    ask = getattr(identity, question)
    fields = {"data_difference": identity.DATA_FIELDS, "backbone_difference": identity.BACKBONE_FIELDS,
              "concepts_difference": identity.CONCEPT_FIELDS, "cache_difference": identity.CACHE_FIELDS}[question]
    assert ask(RECORD, dict(RECORD)) is None
    for field in fields:
        found = ask(RECORD, {**RECORD, field: "d" * 64})
        assert found is not None and found.field == field and found.current.startswith("ddd")
        assert ask(RECORD, {k: v for k, v in RECORD.items() if k != field}) is not None  # missing is different
    others = {k: "changed" for k in RECORD if k not in fields}
    assert ask(RECORD, {**RECORD, **others}) is None  # fields outside the question do not matter
    assert ask("not a record", RECORD) is not None


def test_the_concept_question_takes_a_list_or_its_record():
    from cbmctl.concepts import ConceptSet
    from cbmctl.identity import concepts_difference
    record = ConceptSet("s", CONCEPTS, "test").record()
    assert concepts_difference(record, CONCEPTS) is None and concepts_difference(CONCEPTS, list(CONCEPTS)) is None
    assert concepts_difference(record, CONCEPTS[::-1]) is not None  # order is part of a concept list


def test_no_other_module_hashes_a_name_list_or_compares_identity_fields():
    """The hash of a name list is made, and identity fields are compared, in cbmctl/identity.py alone."""
    import re
    from pathlib import Path
    package = Path(__file__).resolve().parents[1] / "cbmctl"
    hashing = re.compile(r"sha256\(\s*\"\\n\"\.join")
    comparing = re.compile(r"(fingerprint|sha256)\W*[\]\)]?\s*(==|!=)|(==|!=)\s*[\w.\[\]\"']*(fingerprint|sha256)")
    # a BackboneRequest is compared part by part before the model exists (cbmctl.backbones.request, its owner)
    allowed = {"identity.py", "backbones/request.py"}
    found = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
             if path.relative_to(package).as_posix() not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if hashing.search(line) or comparing.search(line)]
    assert found == []


def test_library_errors_name_parameters_and_the_command_line_shows_flags(cli, tmp_path):
    from cbmctl.cli.common import for_the_command_line
    with pytest.raises(CbmctlError) as caught:
        ExperimentSpec.from_mapping({"cache_path": "x.h5", "lr": -1.0})
    assert "`lr` must be a positive number" in str(caught.value) and "--" not in str(caught.value)
    assert for_the_command_line(caught.value).startswith("--lr must be a positive number")
    shown = for_the_command_line(CbmctlError("`cache_path` and `class_name` differ from `red`", options=("cache_path",
                                                                                                       "class_name")))
    assert shown == "--cache and --class differ from `red`"  # only the parameters the error declares
    cache = make_synthetic_cache(tmp_path / "c.h5", CONCEPTS, per_split=(40, 20, 20))
    result = cli("train", cache, "--min-epochs", "5", "--epochs", "2", "--quiet", "--out", tmp_path / "runs")
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "Error: --min-epochs 5 is more than --epochs 2: training could never stop early; lower --min-epochs or "
        "raise --epochs"]


def test_a_flag_the_failing_command_lacks_is_named_with_the_command_that_has_it(cli, tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("not a dataset")
    for command, hint in (("embed", "see --format"), ("cms", "see `cbmctl embed --format`")):
        result = cli(command, tmp_path / "odd")
        assert result.exit_code == 1 and result.output.strip().endswith(hint), result.output
    # a warning printed while a command runs is translated for that command too
    import click
    from click.testing import CliRunner

    from cbmctl.cli import cli as root
    from cbmctl.cli.common import echo_warning
    for command, shown in (("cms", "lower `cbmctl train --batch-size`"), ("train", "lower --batch-size")):
        with click.Context(root.get_command(click.Context(root), command)), CliRunner().isolation() as (_, err, *_):
            echo_warning("lower `batch_size`")
        assert err.getvalue().decode().strip() == shown


@pytest.mark.parametrize("args", [["trian"], ["train", "x.h5", "--bogus"], ["train", "x.h5", "--epochs", "many"],
                                  ["explain", "--set", "red"], ["embed"]])
def test_every_usage_error_is_one_line_with_exit_status_2(cli, args):
    result = cli(*args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and " -h')" in lines[0]


def test_threads_beyond_any_machine_are_refused_by_the_spec():
    from cbmctl.spec import MAX_THREADS, TrainConfig
    TrainConfig(threads=MAX_THREADS).validate()
    with pytest.raises(CbmctlError, match="`threads` must be between 0"):
        TrainConfig(threads=100000).validate()
