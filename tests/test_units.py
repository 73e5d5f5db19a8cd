"""Concept units (`explain --unit`, cbmctl.units) checked against the model and the data they summarise, and
the mistakes every command answers before torch is imported."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import UNIT_CONCEPTS

from cbmctl.cache import open_cache
from cbmctl.explain import Explainer
from cbmctl.units import concept_units, order_by_use


def test_units_agree_with_training_the_model_and_the_ground_truth(unit_runs):
    run = unit_runs["single"]
    report = concept_units(run, k=5)
    metrics = json.loads((run / "metrics.json").read_text())
    # the same faithfulness as the cutoff training applied: the same units withheld, the same mean
    assert [u.concept for u in report.units if not u.offered] == metrics["unfaithful_units"]
    assert np.mean([u.faithfulness for u in report.units]) == pytest.approx(metrics["model"]["faithfulness_mean"],
                                                                           abs=1e-4)
    explainer = Explainer.from_run(run)
    split = open_cache(unit_runs["cache"]).split("test")
    _, activations, _ = explainer.forward(torch.from_numpy(split.embeddings.astype(np.float32)))
    activations = activations.numpy()
    head = explainer.model.class_concept_weights().numpy()
    strongest = np.argsort(-activations, axis=1)[:, :5]
    red_images = split.labels % 2 == 0  # the cache's ground truth: has_color::red on even labels
    for j, unit in enumerate(report.units):
        assert unit.concept == UNIT_CONCEPTS[j] and len(unit.top) == 5
        assert [image.index for image in unit.top] == np.argsort(-activations[:, j], kind="stable")[:5].tolist()
        assert [image.activation for image in unit.top] == pytest.approx(sorted(activations[:, j])[::-1][:5], abs=1e-5)
        assert unit.classes_using == int((head[:, j] != 0).sum())
        assert unit.top5_rate == pytest.approx(float((strongest == j).any(axis=1).mean()))
        truth = {"red": red_images, "green": ~red_images}.get(unit.concept)
        if truth is None:
            assert unit.truth_share is None and unit.top[0].shows is None
        else:
            assert unit.truth_rate == pytest.approx(float(truth.mean()))
            assert unit.truth_share == pytest.approx(float(np.mean([truth[image.index] for image in unit.top])))
    assert sum(u.classes_using for u in report.units) == int((head != 0).sum())  # NEC 2 × 4 classes
    ordered = order_by_use(report.units)
    assert [u.classes_using for u in ordered] == sorted((u.classes_using for u in ordered), reverse=True)


def test_explain_unit_text_json_and_png(cli, unit_runs, tmp_path):
    run = unit_runs["single"]
    text = cli("explain", "--unit", "red", "--run", run, "--top-k", "4")
    assert text.exit_code == 0, text.output
    assert "unit 'red'" in text.stdout and "faithfulness" in text.stdout and "ground truth" in text.stdout
    assert text.stdout.count("test/") == 4  # the four top images, by their paths
    listed = cli("explain", "--unit", "all", "--run", run, "--top-k", "3", "--json")
    payload = json.loads(listed.stdout)
    assert sorted(u["concept"] for u in payload["units"]) == sorted(UNIT_CONCEPTS)
    assert all(len(u["top"]) == 3 for u in payload["units"]) and payload["split"] == "test"
    table = cli("explain", "--unit", "all", "--run", run)
    assert all(concept in table.stdout for concept in UNIT_CONCEPTS)
    png = tmp_path / "units.png"
    drawn = cli("explain", "--unit", "red", "--unit", "green", "--run", run, "--png", png)
    assert drawn.exit_code == 0 and png.stat().st_size > 5000
    both = cli("explain", "x.jpg", "--unit", "red", "--run", run)
    assert both.exit_code == 2 and "give no IMAGES" in both.output


def test_name_and_run_mistakes_are_answered_before_torch_is_imported(unit_runs, tmp_path):
    """Every command runs in one fresh interpreter (the embed mistakes: test_cache_integrity); at the end torch
    must still not be imported."""
    from makers import make_cub
    run, cache = unit_runs["single"], unit_runs["cache"]
    image = sorted((unit_runs["root"] / "test").glob("*.jpg"))[0]
    cub = make_cub(tmp_path / "cub")  # no cbmctl.yaml: the default ViT-L-14, whose weights are not here
    cases = [
        (["explain", str(tmp_path / "missing.jpg"), "--run", str(run)], "missing.jpg: file not found"),
        (["explain", str(image), "--run", str(run), "--zero", "stripd pattern"], "did you mean 'striped pattern'?"),
        (["explain", str(image), "--run", str(run), "--class", "clas 1"], "did you mean 'class 1'?"),
        (["explain", "--unit", "gren", "--run", str(run)], "did you mean 'green'?"),
        (["inspect", "--runs-root", str(tmp_path / "none")], "no runs yet under"),
        (["report", "--runs-root", str(tmp_path / "none")], "no runs yet under"),
        (["train", str(tmp_path / "data" / "cub"), "--data-root", str(tmp_path / "data")], "CUB_200_2011 (images/"),
        (["train", "cifr10"], "did you mean 'cifar10'?"),
        (["train", str(cache), "--compare", "gumbl,none"], "did you mean 'gumbel'?"),
        (["train", str(cache), "--concepts", "demoo"], "did you mean 'demo'?"),
        (["train", str(cache), "--loss", "gumbl"], "did you mean 'gumbel'?"),
        (["trian"], "did you mean 'train'?"),
        (["train", str(cub)], "ViT-L-14/openai is not in the HF cache"),
    ]
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from cbmctl.cli import main
        answers = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as exit:
                    answers.append([exit.code, err.getvalue()])
        print(json.dumps({"answers": answers, "torch": "torch" in sys.modules}))
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps([argv for argv, _ in cases])], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    result = json.loads(done.stdout)
    for (argv, fragment), (code, stderr) in zip(cases, result["answers"]):
        assert code in (1, 2) and fragment in stderr, (argv, stderr)
        assert "Traceback" not in stderr
    assert len(result["answers"]) == len(cases) and not result["torch"]


def test_a_folder_holding_a_dataset_points_to_it(tmp_path):
    from makers import make_places365

    from cbmctl.datasets import detect_format
    from cbmctl.errors import CbmctlError
    places = make_places365(tmp_path / "data" / "places")
    with pytest.raises(CbmctlError, match=f"did you mean {places}\\?"):
        detect_format(tmp_path / "data")  # the data root given instead of the dataset inside it
    with pytest.raises(CbmctlError, match="see `format`"):
        detect_format(tmp_path)
