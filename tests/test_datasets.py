import pickle

import numpy as np
import pytest
from makers import (
    CUB_ATTRIBUTES,
    make_cifar10,
    make_cifar100,
    make_cub,
    make_imagefolder,
    make_manifest,
    make_places365,
    picture,
)

from cbmctl.datasets import detect_format, load_dataset, stratified_split
from cbmctl.datasets.base import ImageRecord
from cbmctl.errors import CbmctlError
from cbmctl.names import clean_class_name


def test_clean_class_name():
    assert clean_class_name("001.Black_footed_Albatross") == "black footed albatross"
    assert clean_class_name("/a/apartment_building/outdoor") == "apartment building outdoor"
    assert clean_class_name("/b/bakery/shop") == "bakery shop"


def test_cub_reader_splits_classes_and_attributes(tmp_path):
    make_cub(tmp_path, classes=3, per_class=6)
    for spec in (tmp_path, tmp_path / "CUB_200_2011"):  # the archive root or the folder itself
        dataset = load_dataset(spec)
        assert dataset.format == "cub"
        assert dataset.classes == ["black footed albatross", "laysan albatross", "sooty albatross"]
    # train_test_split.txt marks i % 3 != 0 as training: 4 train + 2 test per class
    assert len(dataset.splits["test"]) == 6
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == 12
    assert len(dataset.splits["val"]) == 3  # 10% of 4 per class rounds to 0, but every class keeps one
    assert {r.label for r in dataset.splits["val"]} == {0, 1, 2}
    assert dataset.attribute_names[0] == "has_bill_shape::curved_(up_or_down)"
    assert len(dataset.attribute_names) == len(CUB_ATTRIBUTES)
    # attribute rows follow their images: image k has attribute j when (k + j) % 3 == 0
    for split in ("train", "val", "test"):
        for record, row in zip(dataset.splits[split], dataset.attributes[split]):
            image_id = int(record.path.rsplit("_", 1)[1].split(".")[0]) - 100
            assert row.tolist() == [int((image_id + j) % 3 == 0) for j in range(len(CUB_ATTRIBUTES))]
    image = dataset.open_image(dataset.splits["test"][0].path)
    assert image.size == (40, 40)


def test_cub_without_attributes_and_bad_lines(tmp_path):
    cub = make_cub(tmp_path, attributes=False)
    assert load_dataset(cub).attributes is None
    (cub / "image_class_labels.txt").write_text("1 1\nbroken\n")
    with pytest.raises(CbmctlError, match="image_class_labels.txt:2"):
        load_dataset(cub)


@pytest.mark.parametrize("maker,variant,classes", [(make_cifar10, "cifar10", ["airplane", "automobile", "bird"]),
                                                   (make_cifar100, "cifar100", ["apple", "aquarium fish", "baby"])])
def test_cifar_reader(tmp_path, maker, variant, classes):
    folder = maker(tmp_path)
    dataset = load_dataset(tmp_path)
    assert dataset.format == variant and dataset.classes == classes
    assert dataset.root == folder
    n_train = 30 if variant == "cifar10" else 24
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == n_train
    first = dataset.splits["test"][0]
    expected = np.asarray(picture(first.label, 500 if variant == "cifar10" else 9, 32))
    assert np.array_equal(np.asarray(dataset.open_image(first.path)), expected)


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    folder = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": []}, handle, protocol=2)
    with pytest.raises(CbmctlError, match="refusing to load"):
        load_dataset(tmp_path)
    assert not marker.exists()


def test_imagefolder_imagenet_style(tmp_path):
    make_imagefolder(tmp_path)
    dataset = load_dataset(tmp_path)
    assert dataset.format == "imagefolder"
    # synset order, readable names, the two ImageNet cranes kept apart
    assert dataset.classes == ["tench", "goldfish", "crane (n02012849)", "crane (n03126707)"]
    assert len(dataset.splits["test"]) == 8  # ImageNet's val/ is the held-out evaluation split
    assert all(r.path.startswith("val/") for r in dataset.splits["test"])
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == 20


def test_imagefolder_with_val_and_test_keeps_both(tmp_path):
    make_imagefolder(tmp_path, held_out="test", mapping=False)
    make_imagefolder(tmp_path / "tmp", held_out="val", mapping=False)
    (tmp_path / "tmp" / "val").rename(tmp_path / "val")
    dataset = load_dataset(tmp_path)
    assert all(r.path.startswith("val/") for r in dataset.splits["val"])
    assert all(r.path.startswith("test/") for r in dataset.splits["test"])
    assert dataset.classes[0] == "n01440764"


def test_places365_reader(tmp_path):
    make_places365(tmp_path)
    dataset = load_dataset(tmp_path)
    assert dataset.format == "places365"
    assert dataset.classes == ["airfield", "bakery shop", "apartment building outdoor"]
    assert len(dataset.splits["test"]) == 6
    assert dataset.splits["test"][0].path == "val_256/Places365_val_00000001.jpg"
    assert dataset.open_image(dataset.splits["train"][0].path).size == (40, 40)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_reader(tmp_path, kind):
    file = make_manifest(tmp_path, kind)
    dataset = load_dataset(file)
    assert dataset.format == "manifest" and dataset.classes == ["cat", "dog"]
    assert [r.path for r in dataset.splits["test"]] == ["img/cat0.png", "img/dog0.png"]
    assert load_dataset(tmp_path).fingerprint() == dataset.fingerprint()  # the folder finds the manifest


def test_manifest_without_split_holds_out_a_test_split(tmp_path):
    make_manifest(tmp_path, "csv", with_split=False, per_class=10)
    dataset = load_dataset(tmp_path)
    assert len(dataset.splits["test"]) == 4 and any("no official test split" in n for n in dataset.notes)


def test_manifest_errors(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(CbmctlError, match="'path' and 'label'"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.csv").write_text("path,label,split\na.png,cat,holdout\n")
    with pytest.raises(CbmctlError, match="unknown split 'holdout'"):
        load_dataset(tmp_path)


def test_detection_and_forced_format(tmp_path):
    make_cub(tmp_path / "cub")
    assert detect_format(tmp_path / "cub") == "cub"
    with pytest.raises(CbmctlError, match="not laid out as imagefolder"):
        load_dataset(tmp_path / "cub", format="imagefolder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CbmctlError, match="unrecognised dataset layout"):
        load_dataset(tmp_path / "empty")


def test_dataset_yaml_overrides_class_names_and_rejects_typos(tmp_path):
    cub = make_cub(tmp_path)
    (cub / "cbmctl.yaml").write_text("class_names:\n  sooty albatross: sooty\nval_seed: 3\n")
    dataset = load_dataset(cub)
    assert dataset.classes[2] == "sooty" and dataset.val_seed == 3
    (cub / "cbmctl.yaml").write_text("modle: demo\n")
    with pytest.raises(CbmctlError, match="unknown setting 'modle'"):
        load_dataset(cub)


def test_known_names_resolve_under_the_data_root(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    assert load_dataset("cifar10", data_root=tmp_path).format == "cifar10"
    monkeypatch.setenv("CBMCTL_DATA", str(tmp_path))
    assert load_dataset("cifar10").format == "cifar10"
    # offline (HF_HUB_OFFLINE is set by the test session): a one-line hint, no download attempt
    with pytest.raises(CbmctlError, match="put the official 'cifar-100-python' folder in"):
        load_dataset("cifar100")
    with pytest.raises(CbmctlError, match="put the official dataset folder there as 'CUB_200_2011'"):
        load_dataset("cub")


def test_stratified_split_is_deterministic_disjoint_and_proportional():
    records = [ImageRecord(f"{k}/{i}", k) for k in range(5) for i in range(40)]
    kept, carved = stratified_split(records, 0.1, seed=0)
    assert (kept, carved) == stratified_split(records, 0.1, seed=0)
    assert stratified_split(records, 0.1, seed=1)[1] != carved
    assert not set(kept) & set(carved) and len(kept) + len(carved) == 200
    assert all(sum(records[i].label == k for i in carved) == 4 for k in range(5))


def test_fingerprint_changes_with_content(tmp_path):
    cub = make_cub(tmp_path)
    before = load_dataset(cub).fingerprint()
    assert load_dataset(cub).fingerprint() == before
    first = (cub / "images.txt").read_text().split()[1]
    (cub / "images" / first).write_bytes(b"changed")
    assert load_dataset(cub).fingerprint() != before
    assert load_dataset(cub, val_seed=5).fingerprint() != load_dataset(cub).fingerprint()
