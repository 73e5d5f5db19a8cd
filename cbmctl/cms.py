"""Concept Matrix Search (training-free) and the zero-shot and description baselines.

V = cos(image, concept) (N×C), T = cos(class name, concept) (K×C). A CMS variant scores class c for image i
with sim(V'_i, T'_c), where V', T' are V, T after the variant's normalisation (none, row, col, or our
centring) and, for cos3, an element-wise cube; sim is the cosine. The max-score variant scores
T̃[c, j*] with j* = argmax_j Ṽ_ij (Ṽ, T̃: each row divided by its sum), as the reference library does.
`score_matrices` is the one place these rules are written; `cms`, `explain --cms` and the TUI's CMS view
all go through it. Everything is a matrix product over row chunks of the images, so memory stays at
chunk × C whatever N is; V is computed once per chunk for every variant."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cbmctl.errors import CbmctlError

SIMILARITIES = ("cos", "cos3")
NORMALIZATIONS = ("none", "row", "col", "centred")
# A sum of n cosines (|x| ≤ 1) in float32 carries a rounding error of up to ~n·6e-8: below n·1e-6 its sign
# is noise, so such a row (or column) counts as summing to zero.
ZERO_SUM_PER_TERM = 1e-6


@dataclass(frozen=True)
class Variant:
    similarity: str = "cos"
    normalization: str = "none"
    max_score: bool = False

    def __post_init__(self):
        if self.similarity not in SIMILARITIES or self.normalization not in NORMALIZATIONS:
            raise CbmctlError(f"unknown CMS variant {self.similarity}/{self.normalization} (similarity: "
                              f"{', '.join(SIMILARITIES)}; normalisation: {', '.join(NORMALIZATIONS)})")

    @property
    def name(self) -> str:
        if self.max_score:
            return "CMS max-score"
        suffix = {"none": "", "row": ", row-normalised", "col": ", col-normalised",
                  "centred": ", centred"}[self.normalization]
        return f"CMS {self.similarity}{suffix}"

    @property
    def transductive(self) -> bool:
        return self.normalization == "col" and not self.max_score


# the paper's seven, then cbmctl's centred variant (docs/method.md, "Concept Matrix Search")
PAPER_VARIANTS = tuple(Variant(s, n) for s in SIMILARITIES for n in ("none", "row", "col")) + \
    (Variant(max_score=True),)
CENTRED = Variant("cos", "centred")
ALL_VARIANTS = PAPER_VARIANTS + (CENTRED,)


def divide_by_sums(matrix: torch.Tensor, sums: torch.Tensor, terms: int) -> torch.Tensor:
    """matrix / sums (broadcast), as the formula says: a negative sum flips the sign (and so an argmax into
    an argmin). A sum that is zero up to float32 rounding (|sum| < terms · ZERO_SUM_PER_TERM) leaves its
    row or column as it is, since dividing by it would be dividing by noise (or by zero)."""
    zero = sums.abs() < terms * ZERO_SUM_PER_TERM
    return matrix / torch.where(zero, torch.ones_like(sums), sums)


def row_normalise(matrix: torch.Tensor) -> torch.Tensor:
    return divide_by_sums(matrix, matrix.sum(dim=1, keepdim=True), matrix.shape[1])


@dataclass
class CMSScores:
    """One chunk of images scored by one variant."""

    v: torch.Tensor       # (N, C) V = cos(image, concept)
    t: torch.Tensor       # (K, C) T = cos(class, concept)
    v_used: torch.Tensor  # (N, C) V as the variant uses it (normalised / centred, cubed for cos3)
    t_used: torch.Tensor  # (K, C) T likewise
    scores: torch.Tensor  # (N, K) per-class score; the prediction is its argmax

    def contributions(self, class_index: int) -> torch.Tensor:
        """(N, C): V'_ij · T'_cj for class c. For the cosine rules score_ic = Σ_j of these / (‖V'_i‖ ‖T'_c‖);
        for the default variant (cos, none) they are V_ij · T_cj."""
        return self.v_used * self.t_used[class_index]

    @property
    def predicted(self) -> torch.Tensor:
        return self.scores.argmax(dim=1)


def score_matrices(v: torch.Tensor, t: torch.Tensor, variant: Variant, v_column_sums=None, v_train_mean=None,
                   column_terms: int | None = None) -> CMSScores:
    """The CMS rule of `variant` on V (N×C) and T (K×C).

    col needs v_column_sums (Σ_i V_ij over the evaluated images, column_terms of them); centred needs
    v_train_mean (the mean of V over the train split)."""
    if variant.max_score:
        v_used, t_used = row_normalise(v), row_normalise(t)
        chosen = v_used.argmax(dim=1)                        # j* per image
        return CMSScores(v, t, v_used, t_used, t_used[:, chosen].T)
    if variant.normalization == "none":
        v_used, t_used = v, t
    elif variant.normalization == "row":
        v_used, t_used = row_normalise(v), row_normalise(t)
    elif variant.normalization == "col":
        if v_column_sums is None:
            raise CbmctlError("col-normalised CMS needs the column sums of V over the evaluated images")
        v_used = divide_by_sums(v, v_column_sums, column_terms or len(v))
        t_used = divide_by_sums(t, t.sum(dim=0), len(t))
    else:
        if v_train_mean is None:
            raise CbmctlError("centred CMS needs the train split's mean concept scores (mean of V over train)")
        # the class-independent part: what every class shares (T's column mean) and what every image shows
        # (V's train mean); known before any evaluated image is seen
        v_used, t_used = v - v_train_mean, t - t.mean(dim=0)
    if variant.similarity == "cos3":
        v_used, t_used = v_used ** 3, t_used ** 3
    scores = F.normalize(v_used, dim=1, eps=1e-12) @ F.normalize(t_used, dim=1, eps=1e-12).T
    return CMSScores(v, t, v_used, t_used, scores)


class ConceptMatrixSearch:
    """T for one concept set and class list, and V for chunks of image embeddings (class_vectors None: V only)."""

    def __init__(self, concept_vectors, class_vectors=None, device="cpu"):
        self.device = torch.device(device)
        self.concepts = F.normalize(torch.as_tensor(concept_vectors, dtype=torch.float32).to(self.device), dim=1)
        self.t = None if class_vectors is None else \
            F.normalize(torch.as_tensor(class_vectors, dtype=torch.float32).to(self.device), dim=1) @ self.concepts.T

    def normalised(self, features) -> torch.Tensor:
        return F.normalize(torch.as_tensor(features).to(self.device, torch.float32), dim=1)

    def v(self, features) -> torch.Tensor:
        return self.normalised(features) @ self.concepts.T

    def column_sums(self, chunks) -> tuple[torch.Tensor, int]:
        """(Σ_i V_ij over every image of the chunks, number of images), without V:
        Σ_i cos(x_i, d_j) = (Σ_i x̂_i) · d_j."""
        total, count = torch.zeros(self.concepts.shape[1], device=self.device), 0
        for chunk in chunks:
            total += self.normalised(chunk).sum(dim=0)
            count += len(chunk)
        return total @ self.concepts.T, count

    def mean_v(self, chunks) -> torch.Tensor:
        """The mean of V over every image of the chunks (the train split, for centred CMS)."""
        sums, count = self.column_sums(chunks)
        if not count:
            raise CbmctlError("centred CMS needs train images to centre V with; the train split is empty")
        return sums / count

    def score(self, features, variant: Variant = Variant(), **statistics) -> CMSScores:
        return score_matrices(self.v(features), self.t, variant, **statistics)


def _chunks(features, chunk: int):
    return (features[start:start + chunk] for start in range(0, len(features), chunk))


def predict(features, concept_vectors, class_vectors, variants=PAPER_VARIANTS, chunk: int = 4096,
            device="cpu", v_train_mean=None, progress=None) -> dict[Variant, torch.Tensor]:
    """Predicted class per image for every variant, computed over chunks of `chunk` images. The centred
    variant needs v_train_mean (see ConceptMatrixSearch.mean_v over the train split). `progress`: a
    cbmctl.logs.Progress advanced by each chunk scored."""
    search = ConceptMatrixSearch(concept_vectors, class_vectors, device)
    features = torch.as_tensor(features)
    statistics = {}
    if any(v.normalization == "col" and not v.max_score for v in variants):
        sums, count = search.column_sums(_chunks(features, chunk))
        statistics.update(v_column_sums=sums, column_terms=count)
    if v_train_mean is not None:
        statistics["v_train_mean"] = torch.as_tensor(v_train_mean, dtype=torch.float32).to(search.device)
    predictions = {v: [] for v in variants}
    for piece in _chunks(features, chunk):
        v = search.v(piece)
        for variant in variants:
            predictions[variant].append(score_matrices(v, search.t, variant, **statistics).predicted.cpu())
        if progress is not None:
            progress.advance(len(piece))
    return {v: torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for v, p in predictions.items()}


def zero_shot_predict(features, class_vectors, chunk: int = 4096, device="cpu") -> torch.Tensor:
    device = torch.device(device)
    classes = F.normalize(torch.as_tensor(class_vectors, dtype=torch.float32).to(device), dim=1)
    features = torch.as_tensor(features)
    return torch.cat([(F.normalize(piece.to(device, torch.float32), dim=1) @ classes.T).argmax(dim=1).cpu()
                      for piece in _chunks(features, chunk)])


def description_predict(features, concept_vectors, concepts: list[str], classes: list[str],
                        associations: dict[str, list[str]], chunk: int = 4096, device="cpu") -> torch.Tensor:
    """Each class scored by the mean similarity of the image to the concepts associated with it."""
    index = {c: j for j, c in enumerate(concepts)}
    weights = torch.zeros(len(classes), len(concepts))
    for k, name in enumerate(classes):
        members = [index[c] for c in associations.get(name, []) if c in index]
        if not members:
            raise CbmctlError(f"the concept set associates no concept with class {name!r}")
        weights[k, members] = 1.0 / len(members)
    search = ConceptMatrixSearch(concept_vectors, device=device)
    weights = weights.to(search.device)
    return torch.cat([(search.v(piece) @ weights.T).argmax(dim=1).cpu()
                      for piece in _chunks(torch.as_tensor(features), chunk)])


def accuracy_report(predicted: torch.Tensor, labels, num_classes: int, per_class: bool = False) -> dict:
    from cbmctl import metrics
    labels = torch.as_tensor(np.asarray(labels))
    report = {"top1": float((predicted == labels).float().mean()) if len(labels) else 0.0,
              "mean_per_class": metrics.mean_per_class_accuracy(predicted, labels, num_classes)}
    if per_class:
        report["per_class"] = metrics.per_class_accuracy(predicted, labels, num_classes)
    return report


def cms_report(cache, concept_set, split: str = "test", per_class: bool = False, random_control: bool = True,
               device="cpu", chunk: int = 4096, log=None) -> dict:
    """Every CMS variant side by side with zero-shot CLIP, the description baseline and the random-concept
    control, on one split of a cache. The centred variant centres V with the train split's mean. `log`
    gets a progress line every few seconds of a long pass over the images (None: silent)."""
    from cbmctl.backbones import resolve_device
    from cbmctl.concepts import concept_vectors
    from cbmctl.logs import Progress
    from cbmctl.resources import cms_bytes, cms_chunk, require
    device = resolve_device(str(device))
    classes = cache.classes
    chunk = cms_chunk(len(concept_set.concepts), len(classes), chunk)
    require(cms_bytes(len(concept_set.concepts), len(classes), chunk, cache.embed_dim),
            f"CMS with {len(concept_set.concepts):,} concepts × {len(classes):,} classes", device,
            "use fewer concepts (`cbmctl concepts filter`)")
    data = cache.split(split)
    if len(data.labels) == 0:  # an accuracy over no image is no result (and zero-shot has nothing to concatenate)
        raise CbmctlError(f"{cache.path}: the {split} split is empty; evaluate another `split`")
    concept_embeddings = concept_vectors(cache, concept_set, device)
    class_embeddings = cache.class_embeddings()
    features = torch.from_numpy(data.embeddings.astype(np.float32))
    rows = []

    def add_row(method, predicted, transductive=False):
        rows.append({"method": method, "transductive": transductive,
                     **accuracy_report(predicted, data.labels, len(classes), per_class)})

    variants, v_train_mean, notes, warnings = _centring(cache, classes, concept_embeddings, class_embeddings, split,
                                                        chunk, device, log)
    scoring = Progress(log, len(features), f"CMS: {len(variants)} variants on the {split} split")
    predictions = predict(features, concept_embeddings, class_embeddings, variants, chunk, device, v_train_mean,
                          scoring)
    for variant, predicted in predictions.items():
        add_row(variant.name, predicted, variant.transductive)
    add_row("zero-shot CLIP", zero_shot_predict(features, class_embeddings, chunk, device))
    notes += _control_rows(add_row, cache, concept_set, classes, features, concept_embeddings, class_embeddings, chunk,
                           device, random_control)
    if any(r["transductive"] for r in rows):
        notes.append("col-normalised variants divide by column sums over the evaluated images: transductive")
    notes += negative_sum_notes(features, concept_embeddings, class_embeddings, chunk, device)
    return {"split": split, "images": int(len(features)), "classes": len(classes),
            "concept_set": concept_set.record(), "backbone": backbone_record(cache), "cache": str(cache.path),
            "device": str(device), "rows": rows, "notes": notes, "warnings": warnings}


def _centring(cache, classes: list[str], concept_embeddings, class_embeddings, split: str, chunk: int, device, log):
    """(variants to score, the train split's mean concept scores or None, notes, warnings): the centred
    variant joins the paper's when the cache has train images to centre V with."""
    from cbmctl.cache import name_some, uncovered_classes
    from cbmctl.logs import Progress
    variants, v_train_mean, notes, warnings = PAPER_VARIANTS, None, [], []
    if "train" in cache.splits:
        search = ConceptMatrixSearch(concept_embeddings, class_embeddings, device)
        counts = cache.counts()
        centring = Progress(log, counts.get("train", 0), "CMS: the train split's mean concept scores")
        # the centring reads the train split: its embeddings and labels are checked as the scored split's are
        train_sums, train_count = search.column_sums(centring.iterate(cache.embedding_chunks("train", chunk)))
        if train_count:
            variants, v_train_mean = ALL_VARIANTS, train_sums / train_count
            notes.append(f"{CENTRED.name} is cbmctl's addition, not the paper's: T's columns centred over "
                         f"classes, V's with the mean over the {train_count} train images (not transductive)")
            if split == "train":
                notes.append("evaluating the train split: the centring mean is taken over the evaluated images")
            missing = uncovered_classes(cache.labels("train"), classes)
            if missing:
                warnings.append(f"{len(missing)} of the {len(classes)} classes have no train image "
                                f"({name_some(missing)}): {CENTRED.name}'s centring mean leans towards the others")
    if v_train_mean is None:
        notes.append(f"{CENTRED.name} skipped: the cache has no train images to centre V with")
    return variants, v_train_mean, notes, warnings


def negative_sum_notes(features, concept_embeddings, class_embeddings, chunk: int, device) -> list[str]:
    """What the normalised variants divided by: the rows and columns of V and T whose sums are below zero,
    where dividing turns the cosine rule's ranking upside down. CLIP's image–text cosines are positive on
    real data, so there the division changes nothing; a backbone whose cosines centre on zero (the demo
    CLIP) makes these variants fall below chance, which the output must say rather than leave to be read as
    a finding about CMS."""
    search = ConceptMatrixSearch(concept_embeddings, class_embeddings, device)
    direction = search.concepts.sum(dim=0)  # Σ_j V_ij = x̂_i · Σ_j d̂_j: the row sums without V
    row_sums = torch.cat([search.normalised(features[start:start + chunk]) @ direction
                          for start in range(0, len(features), chunk)]) if len(features) else torch.zeros(0)
    column_sums, _ = search.column_sums(features[start:start + chunk] for start in range(0, len(features), chunk))
    terms = search.concepts.shape[0]
    below = {"image rows of V": (int((row_sums < -terms * ZERO_SUM_PER_TERM).sum()), len(row_sums)),
             "class rows of T": (int((search.t.sum(dim=1) < -terms * ZERO_SUM_PER_TERM).sum()), len(search.t)),
             "concept columns of V": (int((column_sums < -len(features) * ZERO_SUM_PER_TERM).sum()), terms),
             "concept columns of T": (int((search.t.sum(dim=0) < -len(search.t) * ZERO_SUM_PER_TERM).sum()), terms)}
    negative = [f"{count:,} of {total:,} {what}" for what, (count, total) in below.items() if count]
    if not negative:
        return []
    return [f"the normalised variants divide by sums below zero in {', '.join(negative)}: an image's negative row "
            "sum turns its best class into its worst, a class's negative row sum reverses that class's scores, a "
            "column's negative sum reverses its concept (this backbone's image-text cosines are not all positive, "
            "as CLIP's are on real data, where these divisions change no ranking)"]


def _control_rows(add_row, cache, concept_set, classes: list[str], features, concept_embeddings, class_embeddings,
                  chunk: int, device, random_control: bool) -> list[str]:
    """The description baseline and the random-concept control, each a row through `add_row` where it can be
    computed; the notes for those that cannot."""
    from cbmctl.concepts import concept_vectors, random_concept_set
    notes = []
    if concept_set.associations:
        add_row("description (class concepts)",
                description_predict(features, concept_embeddings, concept_set.concepts, classes,
                                    concept_set.associations, chunk, device))
    else:
        notes.append(f"description baseline skipped: concept set {concept_set.name!r} does not say which concepts "
                     "describe which class (give a {class: [concepts]} .json/.yaml set)")
    if random_control:
        try:
            random_embeddings = concept_vectors(cache, random_concept_set(concept_set), device)
            predicted = predict(features, random_embeddings, class_embeddings, (Variant(),), chunk, device)[Variant()]
            add_row(f"CMS cos, {len(concept_set.concepts)} random words", predicted)
        except CbmctlError as error:
            notes.append(f"random-concept control skipped: {error}")
    return notes


def backbone_record(cache) -> dict:
    return {"model": cache.attrs.get("backbone_model"), "pretrained": cache.attrs.get("backbone_pretrained")}
