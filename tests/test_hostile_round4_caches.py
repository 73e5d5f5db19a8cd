"""Round four against caches: every number and name a command reads from a cache is checked where it is read,
whichever command reads it (CMS's centring reads the train split too), a split that cannot support a method
is an error or a warning naming what is missing, and a request too large for the machine is refused before
it allocates. Each case goes through the real click app on a tiny synthetic cache: one line, the documented
exit code, no traceback, the cache untouched."""
import h5py
import numpy as np
import pytest
from makers import make_synthetic_cache
from test_cache_integrity import CONCEPTS, cms_args, one_line_error, train_args, warnings_in

from cbmctl.cache import open_cache, text_store_dir


@pytest.fixture
def synthetic(tmp_path):
    cache = make_synthetic_cache(tmp_path / "s.h5", CONCEPTS, per_split=(120, 40, 40))
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    return {"cache": cache, "concepts": concepts}


def no_run(tmp_path) -> bool:
    """Nothing was trained: the runs folder (made when its writability was checked) holds no run."""
    return not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _edit(cache, **changes):
    with h5py.File(cache, "a") as handle:
        for change in changes.values():
            change(handle)


def _rename_classes(names):
    def change(handle):
        del handle["classes/names"]
        handle["classes/names"] = np.array(names, dtype=h5py.string_dtype())
    return change


# 1. the train split CMS centres with is read as carefully as the split it scores

@pytest.mark.parametrize("damage, fragment", [
    (lambda e: e.__setitem__((3, 0), np.nan), "the train split has 1 embedding(s) with NaN or infinite values"),
    (lambda e: e.__setitem__(slice(None), np.nan), "the train split has 120 embedding(s) with NaN"),
    (lambda e: e.__setitem__(slice(0, 7), np.float16(65504)), "the train split has 7 embedding(s) that are not unit"),
    (lambda e: e.__setitem__(slice(0, 1), np.zeros(16, np.float16)), "not unit vectors (first: train/0.jpg, norm 0"),
])
def test_cms_checks_the_train_split_it_centres_with(cli, synthetic, damage, fragment):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    _edit(cache, train=lambda handle: damage(handle["splits/train/embeddings"]))
    before = cache.read_bytes()
    for args in (cms_args(cache, concepts), cms_args(cache, concepts, "--split", "test", "--json")):
        line = one_line_error(cli(*args))
        assert str(cache) in line and fragment in line and "--overwrite" in line
    assert cache.read_bytes() == before


def test_a_scaled_split_is_refused_by_train_too(cli, synthetic, tmp_path):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    _edit(cache, test=lambda handle: handle["splits/test/embeddings"].__setitem__(
        slice(None), handle["splits/test/embeddings"][()] * 3))
    line = one_line_error(cli(*train_args(cache, concepts, tmp_path)))
    assert "the test split has 40 embedding(s) that are not unit vectors" in line
    assert no_run(tmp_path)


def test_text_embeddings_that_are_not_unit_vectors_read_as_absent(synthetic):
    from cbmctl.cache import TextStore
    from cbmctl.identity import text_key
    cache = open_cache(synthetic["cache"])
    key = text_key(cache.attrs, CONCEPTS)
    store = TextStore.beside(cache.path)
    texts, vectors, attrs = cache.text(key)
    store.put(key, texts, vectors * 1e3, attrs)  # every concept score would be a thousand times too large
    assert cache.text(key) is None  # then encoded again, never used as it is


def test_a_cache_that_is_a_named_pipe_is_refused_not_waited_on(cli, synthetic, tmp_path):
    import os

    from test_hostile_models import in_thread
    os.mkfifo(tmp_path / "pipe.h5")
    result = in_thread(cli, *cms_args(tmp_path / "pipe.h5", synthetic["concepts"]))["value"]
    assert "pipe.h5 is a named pipe, not a regular file" in one_line_error(result)


# 2. class names read from a cache follow the rules of every other class list

@pytest.mark.parametrize("names, fragment", [
    (["class 0", "\x1b]0;pwned\x07bird", "class 2", "class 3"], "class 1 holds the control character \\x1b"),
    (["same"] * 4, "classes 0 'same' and 1 'same' differ only by case or spacing"),
    (["Bird", "bird", "a", "b"], "differ only by case or spacing"),
    (["", "b", "c", "d"], "class 0 has an empty name"),
])
def test_class_names_in_a_cache_are_checked(cli, synthetic, tmp_path, names, fragment):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    _edit(cache, names=_rename_classes(names))
    for args in (cms_args(cache, concepts), train_args(cache, concepts, tmp_path)):
        result = cli(*args)
        line = one_line_error(result)
        assert "classes/names" in line and fragment in line
        assert "\x1b" not in result.output and "\x07" not in result.output
    assert no_run(tmp_path)


# 3. labels that cannot support a method

def test_a_train_split_of_one_class_is_an_error_not_a_chance_result(cli, synthetic, tmp_path):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    _edit(cache, labels=lambda handle: handle["splits/train/labels"].__setitem__(slice(None), 2))
    line = one_line_error(cli(*train_args(cache, concepts, tmp_path)))
    assert "the train split holds images of 1 of the 4 classes" in line
    assert no_run(tmp_path)
    # CMS does not learn from train; its centring is only skewed, which it says
    result = cli(*cms_args(cache, concepts))
    assert result.exit_code == 0, result.output
    assert ("warning: 3 of the 4 classes have no train image ('class 0', 'class 1', 'class 3'): CMS cos, centred's "
            "centring mean leans towards the others") in warnings_in(result.stderr)


def test_classes_without_training_images_are_named_in_a_warning(cli, synthetic, tmp_path):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    _edit(cache, labels=lambda handle: handle["splits/train/labels"].__setitem__(
        slice(None), np.arange(120) % 2))
    result = cli(*train_args(cache, concepts, tmp_path, "--json"))
    assert result.exit_code == 0, result.output
    assert ("warning: 2 of the 4 classes have no training image ('class 2', 'class 3'): the model cannot learn "
            "them, and their test images count as errors") in warnings_in(result.stderr)


def test_fifty_thousand_classes_are_scored_in_bounded_chunks(cli, tmp_path):
    from cbmctl.resources import cms_chunk
    cache = make_synthetic_cache(tmp_path / "wide.h5", CONCEPTS, per_split=(60, 20, 20), classes=50_000)
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    result = cli(*cms_args(cache, concepts, "--json"))
    assert result.exit_code == 0, result.output
    assert "warning: 49940 of the 50000 classes have no train image" in result.stderr
    # a chunk's scores (chunk × K floats, for each variant) stay within the budget, not 4096 × 50,000
    assert cms_chunk(len(CONCEPTS), 50_000, 4096) * 50_006 * 4 * 3 <= 256 << 20
    zero_shot = cli("train", cache, "--loss", "zero-shot", "--device", "cpu", "--quiet", "--concepts", concepts,
                    "--out", tmp_path / "runs", "--json")
    assert zero_shot.exit_code == 0, zero_shot.output
    assert "49940 of the 50000 classes have no training image" in zero_shot.stderr


# 4. requests too large for the machine are refused before they allocate

def test_a_huge_concept_set_is_refused_before_it_is_encoded(cli, synthetic, tmp_path):
    cache = synthetic["cache"]
    huge = tmp_path / "huge.txt"
    huge.write_text("".join(f"concept {i}\n" for i in range(100_000)))  # 1.5 MB, under the file-size cap
    stored = sorted(text_store_dir(cache).iterdir())
    line = one_line_error(cli(*train_args(cache, huge, tmp_path)))
    assert "training 1 model × 100,000 concepts × 4 classes (mostly its CBL (C×C per model)" in line
    assert "use fewer concepts (`cbmctl concepts filter`)" in line and "CBMCTL_MEMORY_LIMIT=SIZE" in line
    # refused before the 100,000 concepts were encoded (the synthetic backbone could not even be loaded)
    assert sorted(text_store_dir(cache).iterdir()) == stored and no_run(tmp_path)


def test_the_memory_limit_can_be_set_and_is_named(cli, synthetic, tmp_path, monkeypatch):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    monkeypatch.setenv("CBMCTL_MEMORY_LIMIT", "64K")
    line = one_line_error(cli(*train_args(cache, concepts, tmp_path, "--seeds", "3")))
    assert "training 3 models × 6 concepts × 4 classes" in line and "than the 64.0 KB $CBMCTL_MEMORY_LIMIT" in line
    line = one_line_error(cli(*cms_args(cache, concepts)))
    assert "CMS with 6 concepts × 4 classes needs about" in line
    monkeypatch.setenv("CBMCTL_MEMORY_LIMIT", "lots")
    assert "expected a size such as 200G" in one_line_error(cli(*cms_args(cache, concepts)))
    monkeypatch.setenv("CBMCTL_MEMORY_LIMIT", "2G")
    assert cli(*cms_args(cache, concepts)).exit_code == 0


def test_the_library_refuses_before_the_stack_is_allocated(synthetic, monkeypatch):
    from cbmctl.concepts import load_concept_set
    from cbmctl.errors import CbmctlError
    from cbmctl.spec import TrainConfig
    from cbmctl.training import prepare_data, train_many
    data = prepare_data(open_cache(synthetic["cache"]), load_concept_set(str(synthetic["concepts"])))
    monkeypatch.setenv("CBMCTL_MEMORY_LIMIT", "1M")
    with pytest.raises(CbmctlError, match=r"training 40 models × 6 concepts × 4 classes .* more than the 1.0 MB"):
        train_many(data, TrainConfig(device="cpu", epochs=1), [("gumbel", seed) for seed in range(40)])
