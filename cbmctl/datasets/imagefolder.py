"""ImageFolder: <root>/train/<class>/*.jpg and <root>/val|test/<class>/*.jpg (ImageNet's layout)."""
from __future__ import annotations

from pathlib import Path

from cbmctl.datasets.base import IMAGE_EXTENSIONS, Dataset, ImageRecord, read_list_file
from cbmctl.errors import CbmctlError
from cbmctl.names import disambiguate, validate_class_names

# Files that map ImageNet synset folder names (n01440764) to readable names, "wnid name[, synonym...]".
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "synsets.txt", "words.txt")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "train").is_dir() and bool(_class_dirs(path / "train"))


def _synset_file(root: Path) -> Path | None:
    return next((candidate for candidate in (root / name for name in SYNSET_FILES) if candidate.is_file()), None)


def _synset_names(file: Path | None) -> dict[str, str]:
    names = {}
    for line in read_list_file(file).splitlines() if file else ():
        wnid, _, rest = line.strip().partition(" ")
        if wnid and rest.split(",")[0].strip():
            names[wnid] = rest.split(",")[0].strip()
    return names


def _images(split_dir: Path, folders: list[str], root: Path) -> list[ImageRecord]:
    records = []
    for label, folder in enumerate(folders):
        directory = split_dir / folder
        if not directory.is_dir():
            continue
        for file in sorted(directory.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                records.append(ImageRecord(file.relative_to(root).as_posix(), label))
    return records


def read(root: Path) -> Dataset:
    folders = _class_dirs(root / "train")
    splits = {"train": _images(root / "train", folders, root)}
    held_out = [name for name in ("val", "test") if (root / name).is_dir()]
    for name in held_out:
        unknown = sorted(set(_class_dirs(root / name)) - set(folders))
        if unknown:
            raise CbmctlError(f"{root / name}: class folder {unknown[0]!r} is not in train/")
    if held_out == ["val"]:
        # ImageNet convention: the official val/ is the held-out evaluation set.
        splits["test"] = _images(root / "val", folders, root)
    else:
        for name in held_out:
            splits[name] = _images(root / name, folders, root)
    synset_file = _synset_file(root)
    synsets = _synset_names(synset_file)
    names = [synsets.get(folder, folder).replace("_", " ") for folder in folders]
    dataset = Dataset(
        name=root.name,
        root=root,
        format="imagefolder",
        classes=validate_class_names(disambiguate(names, folders), synset_file or root / "train"),
        splits=splits,
    )
    if not splits["train"]:
        raise CbmctlError(f"{root / 'train'}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return dataset
