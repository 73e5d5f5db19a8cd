"""Concept sets: reading them robustly, the built-in registry, checks, Label-free-CBM filtering, and
generation through an OpenAI-compatible chat endpoint."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cbmctl.data_files import load_structured, read_bytes_capped
from cbmctl.errors import CbmctlError
from cbmctl.identity import names_sha256
from cbmctl.logs import sayer
from cbmctl.names import (
    MAX_NAME_CHARS,
    normalise,
    numbered_class_names,
    validate_class_names,
    validate_concept_names,
)
from cbmctl.sanitize import first_control, has_control, safe_text

BUILTIN_DIR = Path(__file__).parent / "concept_sets"
MAX_CONCEPT_CHARS = 30


@dataclass
class ConceptSet:
    name: str
    concepts: list[str]
    source: str
    warnings: list[str] = field(default_factory=list)
    # class name -> its concepts, when the set says which concepts describe which class
    associations: dict[str, list[str]] | None = None

    @property
    def sha256(self) -> str:
        return names_sha256(self.concepts)

    def record(self) -> dict:
        """What caches and runs store to say which concepts they used."""
        return {"name": self.name, "size": len(self.concepts), "sha256": self.sha256, "source": self.source}


@dataclass
class FileIssue:
    line: int | None
    severity: str  # "error" or "warning"
    message: str


def builtin_sets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.txt")) if not p.stem.endswith("_classes")}


def builtin_classes(name: str) -> list[str] | None:
    path = BUILTIN_DIR / f"{name}_classes.txt"
    return read_lines(path, dedupe=False)[0] if re.fullmatch(r"[\w-]+", name) and path.is_file() else None


def _split_lines(text: str) -> list[str]:
    # Only CR and LF end a line: str.splitlines would also split at \x0b, \x1c or U+2028, numbering
    # lines differently from an editor, and hide those characters from the control-character check.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _control_issue(number: int, line: str) -> FileIssue | None:
    """An error for a line holding a control character (a tab is only white space)."""
    found = first_control(line.replace("\t", " "))
    if found is None:
        return None
    return FileIssue(number, "error", f"holds the control character {found} (a concept or class name must be "
                                      "plain text)")


def read_lines(path: Path, dedupe: bool = True) -> tuple[list[str], list[FileIssue]]:
    """Entries of a one-per-line text file: UTF-8 with or without BOM, CRLF or LF, '#' comments and blank
    lines ignored, exact duplicates (after normalising) dropped unless `dedupe` is False. Lines holding
    control characters are left out with an error issue. Returns (entries, what was noticed)."""
    raw = read_bytes_capped(path)
    issues = []
    if raw.startswith(b"\xef\xbb\xbf"):
        issues.append(FileIssue(1, "warning", "starts with a UTF-8 byte-order mark (ignored)"))
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CbmctlError(f"{safe_text(path)}: not UTF-8 text (byte {error.start})") from None
    if "\r\n" in text:
        issues.append(FileIssue(None, "warning", "Windows line endings (CRLF; read as LF)"))
    entries, seen = [], {}
    lines = _split_lines(text)
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            if number < len(lines):  # the empty string after the final newline is not a line
                issues.append(FileIssue(number, "warning", "blank line (ignored)"))
            continue
        if stripped.startswith("#"):
            continue
        control = _control_issue(number, line)
        if control is not None:
            issues.append(control)
            continue
        if stripped != line.rstrip("\n"):
            issues.append(FileIssue(number, "warning", "leading or trailing spaces (stripped)"))
        key = normalise(stripped)
        if dedupe and key in seen:
            issues.append(FileIssue(number, "warning", f"duplicate of line {seen[key]} {stripped!r} (dropped)"))
            continue
        seen.setdefault(key, number)
        entries.append(re.sub(r"\s+", " ", stripped))
    return entries, issues


def _raise_first_error(path, issues: list[FileIssue]) -> None:
    error = next((i for i in issues if i.severity == "error"), None)
    if error is not None:
        raise CbmctlError(_issue_text(path, error))


MAP_SUFFIXES = (".json", ".yaml", ".yml")


def locate_concept_set(spec: str) -> tuple[Path, str, str]:
    """(file, name, source) of a built-in set NAME or a file PATH."""
    sets = builtin_sets()
    path = Path(spec).expanduser()
    # anything else that exists (a pipe, a device, a directory, a looping link) is a path the user meant: the
    # reader then says what is wrong with it, rather than "no such file"
    if path.is_file() or (spec not in sets and os.path.lexists(path)):
        return path, path.stem, str(path)
    if spec in sets:
        return sets[spec], spec, f"builtin:{spec}"
    from cbmctl.suggest import did_you_mean
    raise CbmctlError(f"concept set {spec!r}: no such file, and not a built-in set ({', '.join(sets) or 'none'})"
                      + did_you_mean(spec, sets))


def load_concept_set(spec: str) -> ConceptSet:
    """A built-in set by name, or a file by path."""
    path, name, source = locate_concept_set(spec)
    if path.suffix.lower() in MAP_SUFFIXES:
        return _load_associated(path, name, source)
    concepts, issues = read_lines(path)
    _raise_first_error(path, issues)
    if not concepts:
        raise CbmctlError(f"{safe_text(path)}: the concept set is empty")
    return ConceptSet(name, validate_concept_names(concepts, path), source, [_issue_text(path, i) for i in issues])


def check_concept_set(spec: str, classes: list[str] | None = None, tokenizer=None, context_length: int = 77
                      ) -> tuple[ConceptSet, Path, list[FileIssue]]:
    """`concepts check`: the set as far as it is readable, its file and every issue, errors included (a
    concept map's structural errors are raised, as there is no line to point at)."""
    path, name, source = locate_concept_set(spec)
    if path.suffix.lower() in MAP_SUFFIXES:
        loaded = _load_associated(path, name, source)
        return loaded, path, _concept_issues(loaded.concepts, {}, classes, tokenizer, context_length)
    issues = check_file(path, classes, tokenizer, context_length)
    return ConceptSet(name, read_lines(path)[0], source), path, issues


def _load_associated(path: Path, name: str, source: str) -> ConceptSet:
    """A {class name: [concepts]} mapping (JSON or YAML): the concepts, de-duplicated in first-seen order,
    and which class each describes (for CMS's description baseline). Anything but text where a class name
    or a concept belongs is an error naming the class."""
    import reprlib
    data = load_structured(path)
    shown = safe_text(path)
    if not isinstance(data, dict):
        raise CbmctlError(f"{shown}: expected a mapping of class name -> list of concepts")
    concepts, seen, associations = [], set(), {}
    for class_name, items in data.items():
        if isinstance(class_name, bool) or not isinstance(class_name, (str, int)):
            raise CbmctlError(f"{shown}: class name {reprlib.repr(class_name)} is not text")
        if not isinstance(items, list):
            raise CbmctlError(f"{shown}: class {str(class_name)!r}: expected a list of concepts, got "
                              f"{reprlib.repr(items)}")
        for item in items:
            if not isinstance(item, str):
                raise CbmctlError(f"{shown}: class {str(class_name)!r}: {reprlib.repr(item)} is not a concept "
                                  f"({type(item).__name__}, where concepts are text)")
            if has_control(item.replace("\t", " ")):
                raise CbmctlError(f"{shown}: class {str(class_name)!r}: concept {item!r} holds the control "
                                  f"character {first_control(item)}")
        associations[str(class_name)] = [re.sub(r"\s+", " ", c.strip()) for c in items if c.strip()]
    validate_class_names(list(associations), shown)
    for class_concepts in associations.values():
        for concept in class_concepts:
            if normalise(concept) not in seen:
                seen.add(normalise(concept))
                concepts.append(concept)
    if not concepts:
        raise CbmctlError(f"{shown}: the concept set is empty")
    return ConceptSet(name, validate_concept_names(concepts, shown), source, [], associations)


def load_class_list(spec: str, log=None) -> list[str]:
    """Class names from a file (one per line, label order; a CUB-style numbered classes.txt is read as the
    CUB reader reads it) or a built-in list by dataset name."""
    path = Path(spec).expanduser()
    if path.is_file() or (builtin_classes(spec) is None and os.path.lexists(path)):
        classes, issues = read_lines(path, dedupe=False)
        _raise_first_error(path, issues)
        numbered = numbered_class_names(classes)
        if numbered is not None:
            sayer(log)(f"{safe_text(path)}: read as a numbered CUB-style class list ('{safe_text(classes[0])}' -> "
                       f"'{safe_text(numbered[0])}')")
            classes = numbered
        return validate_class_names(classes, path)
    classes = builtin_classes(spec)
    if classes is None:
        raise CbmctlError(f"class list {spec!r}: no such file, and not a built-in list")
    return classes


def _issue_text(path, issue: FileIssue) -> str:
    where = f"{path}:{issue.line}" if issue.line else str(path)
    return safe_text(f"{where}: {issue.message}")


def check_class_list(classes: list[str]) -> list[FileIssue]:
    """Errors for duplicate class names: two classes may never share a name silently."""
    seen, issues = {}, []
    for index, name in enumerate(classes):
        key = normalise(name)
        if key in seen:
            issues.append(FileIssue(index + 1, "error", f"class {index} {name!r} has the same name as class "
                                                        f"{seen[key]}; disambiguate it"))
        else:
            seen[key] = index
    return issues


def check_file(path: Path, classes: list[str] | None = None, tokenizer=None, context_length: int = 77
               ) -> list[FileIssue]:
    """Everything worth telling about a concept file. Errors: empty set, control characters, concepts
    longer than the text encoder's context (they would be truncated), concepts that are class names (they
    leak the label)."""
    concepts, issues = read_lines(path)
    raw_lines = _split_lines(read_bytes_capped(path).decode("utf-8", errors="replace").lstrip("\ufeff"))
    line_of = {}
    for number, line in enumerate(raw_lines, 1):
        line_of.setdefault(re.sub(r"\s+", " ", line.strip()), number)
    return sorted(issues + _concept_issues(concepts, line_of, classes, tokenizer, context_length),
                  key=lambda i: (i.line or 0, i.severity))


def _concept_issues(concepts: list[str], line_of: dict[str, int], classes, tokenizer, context_length: int
                    ) -> list[FileIssue]:
    issues = [] if concepts else [FileIssue(None, "error", "no concepts")]
    class_keys = {normalise(c): c for c in classes or []}
    for concept in concepts:
        number = line_of.get(concept)
        if len(concept) > MAX_NAME_CHARS:  # an error already: neither tokenised nor echoed whole (it may be megabytes)
            issues.append(FileIssue(number, "error", f"{concept[:40]!r}... is {len(concept)} characters, over the "
                                                     f"{MAX_NAME_CHARS} a name may hold"))
            continue
        if tokenizer is not None:
            count = _token_count(tokenizer, concept)
            if count > context_length:
                issues.append(FileIssue(number, "error", f"{concept!r} is {count} tokens, over the text "
                                                         f"encoder's context of {context_length}"))
        if len(concept) > MAX_CONCEPT_CHARS:
            issues.append(FileIssue(number, "warning", f"{concept!r} is over {MAX_CONCEPT_CHARS} characters "
                                                       "(`concepts filter` drops it)"))
        if normalise(concept) in class_keys:
            issues.append(FileIssue(number, "error", f"{concept!r} is the class name "
                                                     f"{class_keys[normalise(concept)]!r}"))
    if classes:
        issues.extend(check_class_list(classes))
    return issues


def _token_count(tokenizer, text: str) -> int:
    """Tokens including start and end markers, counted without the tokenizer's truncation."""
    encoder = getattr(tokenizer, "encode", None)
    if encoder is not None:
        return len(encoder(text)) + 2
    return len(text.split()) + 2


@dataclass
class FilterThresholds:
    max_chars: int = MAX_CONCEPT_CHARS
    class_similarity: float = 0.85
    duplicate_similarity: float = 0.9
    activation_cutoff: float | None = None
    activation_top_k: int = 5


def filter_concepts(concepts: list[str], classes: list[str], concept_vectors, class_vectors,
                    thresholds: FilterThresholds, image_vectors=None):
    """Label-free CBM rules in order; returns (kept, [(concept, reason)]).

    concept_vectors (C×D) and class_vectors (K×D) are normalised text embeddings; image_vectors (N×D)
    enables the activation cutoff (mean of each concept's top-k image similarities)."""
    import numpy as np
    concept_vectors = np.asarray(concept_vectors, np.float32)
    class_vectors = np.asarray(class_vectors, np.float32)
    dropped: list[tuple[str, str]] = []
    alive = np.ones(len(concepts), dtype=bool)
    class_keys = {normalise(c): c for c in classes}
    for i, concept in enumerate(concepts):
        if len(concept) > thresholds.max_chars:
            alive[i] = False
            dropped.append((concept, f"longer than {thresholds.max_chars} characters ({len(concept)})"))
        elif normalise(concept) in class_keys:
            alive[i] = False
            dropped.append((concept, f"is the class name {class_keys[normalise(concept)]!r}"))
    if len(classes):
        to_class = concept_vectors @ class_vectors.T
        for i in np.flatnonzero(alive):
            j = int(to_class[i].argmax())
            if to_class[i, j] >= thresholds.class_similarity:
                alive[i] = False
                dropped.append((concepts[i], f"similarity {to_class[i, j]:.3f} to class {classes[j]!r} "
                                             f"≥ {thresholds.class_similarity}"))
    similarity = concept_vectors @ concept_vectors.T
    indices = np.flatnonzero(alive)
    if len(indices) > 1:
        block = similarity[np.ix_(indices, indices)]
        mean_similarity = (block.sum(1) - np.diag(block)) / (len(indices) - 1)
        mean_of = dict(zip(indices.tolist(), mean_similarity.tolist()))
        pairs = [(float(similarity[a, b]), a, b) for ai, a in enumerate(indices) for b in indices[ai + 1:]
                 if similarity[a, b] >= thresholds.duplicate_similarity]
        for value, a, b in sorted(pairs, reverse=True):
            if not (alive[a] and alive[b]):
                continue
            # of a near-duplicate pair, keep the one more distinct from the rest (lower mean similarity)
            loser, winner = (a, b) if mean_of[a] > mean_of[b] else (b, a)
            alive[loser] = False
            dropped.append((concepts[loser], f"similarity {value:.3f} to {concepts[winner]!r} "
                                             f"≥ {thresholds.duplicate_similarity}"))
    if thresholds.activation_cutoff is not None and image_vectors is not None:
        scores = np.asarray(image_vectors, np.float32) @ concept_vectors.T
        k = min(thresholds.activation_top_k, len(scores))
        top_mean = np.sort(scores, axis=0)[-k:].mean(0)
        for i in np.flatnonzero(alive):
            if top_mean[i] < thresholds.activation_cutoff:
                alive[i] = False
                dropped.append((concepts[i], f"mean top-{k} image similarity {top_mean[i]:.3f} < "
                                             f"{thresholds.activation_cutoff}"))
    return [c for c, keep in zip(concepts, alive) if keep], dropped


def encode_concepts(backbone, concept_set: ConceptSet, cache_path=None):
    """Text embeddings of a concept set (C×D float32), reused from and added to a text store: the one beside
    the given cache, or beside `$CBMCTL_HOME/text-embeddings.h5` when there is none (the cache file itself
    is never written). Returns (embeddings, key, created)."""
    from cbmctl.cache import read_text, store_text
    from cbmctl.files import cbmctl_home
    from cbmctl.identity import text_key
    store = Path(cache_path) if cache_path else cbmctl_home() / "text-embeddings.h5"
    identity = backbone.identity()
    key = text_key(identity, concept_set.concepts)
    existing = read_text(store, key)
    if existing is not None:
        return existing[1], key, False
    vectors = backbone.encode_texts(concept_set.concepts).numpy()
    created = store_text(store, key, concept_set.concepts, vectors,
                         {"kind": "concepts", "name": concept_set.name, "source": concept_set.source,
                          "backbone_model": identity["backbone_model"], "weights_sha256": identity["weights_sha256"]})
    return vectors, key, created


def concept_vectors(cache, concept_set, device="auto"):
    """A concept set's text embeddings under the cache's backbone: from the cache's text store, or encoded
    (loading the backbone only then) and stored there for next time."""
    from cbmctl.identity import text_key
    stored = cache.text(text_key(cache.attrs, concept_set.concepts))
    if stored is not None:
        return stored[1]
    from cbmctl.backbones import load_backbone_of_cache
    return encode_concepts(load_backbone_of_cache(cache, device), concept_set, cache.path)[0]


def random_concept_set(concept_set):
    """The random-word control for a concept set: as many random words."""
    return ConceptSet(f"random-words-{len(concept_set.concepts)}", random_words(len(concept_set.concepts)),
                      f"random words replacing {concept_set.name}")


def random_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct random English-looking words from the CLIP tokenizer's vocabulary."""
    import numpy as np
    from open_clip.tokenizer import SimpleTokenizer
    vocabulary = sorted({w[:-4] for w in SimpleTokenizer().encoder if w.endswith("</w>") and w[:-4].isalpha()
                         and 3 <= len(w) - 4 <= 10})
    rng = np.random.default_rng(seed)
    if count > len(vocabulary):
        raise CbmctlError(f"cannot draw {count} distinct random words")
    return [vocabulary[i] for i in rng.choice(len(vocabulary), size=count, replace=False)]
