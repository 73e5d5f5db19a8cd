"""Per-image explanations of a trained CBM (or of CMS), and interventions on concept activations.
Data only; cbmctl.render draws it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cbmctl.errors import CbmctlError
from cbmctl.identity import BACKBONE_RECORD, data_difference
from cbmctl.sanitize import safe_text
from cbmctl.suggest import did_you_mean

# |value| an intervention may set an activation to: far beyond any real activation, far below overflow
MAX_INTERVENTION = 1e6


@dataclass
class ConceptRow:
    concept: str
    activation: float    # a_j, the CBL unit's output (CMS: V_ij)
    weight: float        # F[c, j] (CMS: T[c, j])
    contribution: float  # x_j · F[c, j], x = the head's input (CMS: V_ij · T[c, j])
    score: float         # raw CLIP concept score ψ_j = s · cos(image, concept)
    head_input: float | None = None  # x_j = (a_j − μ_j)/σ_j for the sparse head, a_j for the dense head


@dataclass
class Explanation:
    image: str
    method: str                      # "cbm" or "cms"
    predicted: str
    probability: float
    top_classes: list[tuple[str, float]]
    explained_class: str
    concepts: list[ConceptRow]
    logit: float = 0.0
    bias: float = 0.0                # the explained class's bias (sparse head): logit = Σ contributions + bias
    head: str = "dense"              # the run's head ("sparse", "dense"; "cms" for CMS)
    unlisted: float = 0.0            # the sum of the contributions not listed (cut by top_k)
    unlisted_count: int = 0
    intervention: dict | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Explainer:
    """A trained model with the text embeddings it was trained with."""

    model: object
    concepts: list[str]
    classes: list[str]
    concept_vectors: torch.Tensor
    class_vectors: torch.Tensor
    logit_scale: float
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_run(cls, run_dir: Path) -> Explainer:
        from cbmctl.runs import load_model
        model, metadata = load_model(run_dir)
        vectors = metadata.pop("vectors")
        if "concept_vectors" not in vectors or "class_vectors" not in vectors:
            raise CbmctlError(f"{run_dir}: the model file lacks its text embeddings; retrain with this cbmctl")
        from cbmctl.model import logit_scale_of
        logit_scale = logit_scale_of(metadata, str(run_dir))
        if vectors["concept_vectors"].shape[1] != vectors["class_vectors"].shape[1]:
            raise CbmctlError(f"{run_dir}: its concept and class embeddings have different widths")
        return cls(model, metadata["concepts"], metadata["classes"], vectors["concept_vectors"],
                   vectors["class_vectors"], logit_scale, metadata)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.concept_vectors.shape[1]:
            raise CbmctlError(f"image embeddings have {features.shape[1]} dimensions, the run's concepts "
                              f"{self.concept_vectors.shape[1]}: another backbone")
        return self.logit_scale * F.normalize(features.float(), dim=1) @ self.concept_vectors.T

    def forward(self, features: torch.Tensor):
        """(ψ, activations, logits) for (N, D) image embeddings."""
        scores = self.scores(features)
        with torch.no_grad():
            activations, logits = self.model(scores)
        return scores, activations, logits

    def class_index(self, name: str) -> int:
        lowered = [c.lower() for c in self.classes]
        if name.lower() not in lowered:
            raise CbmctlError(f"`class_name` {name!r} is not one of the run's {len(self.classes)} classes"
                              + did_you_mean(name, self.classes))
        return lowered.index(name.lower())

    def concept_index(self, name: str) -> int:
        lowered = [c.lower() for c in self.concepts]
        if name.strip().lower() not in lowered:
            raise CbmctlError(f"concept {name!r} is not in the run's concept set" + did_you_mean(name, self.concepts))
        return lowered.index(name.strip().lower())

    def explain(self, features: torch.Tensor, names: list[str], top_k: int = 10, class_name: str | None = None,
                top_classes: int = 5, activations_override: torch.Tensor | None = None) -> list[Explanation]:
        """Per image: the predicted class and the concepts behind the explained class's logit. With a sparse
        head these are exactly the concepts its row uses (at most NEC, largest contribution first); with the
        dense head every concept contributes, and the top_k largest contributions are listed."""
        scores, activations, logits = self.forward(features)
        if activations_override is not None:
            activations = activations_override
            with torch.no_grad():
                logits = self.model.logits_from_activations(activations)
        _require_finite(scores=scores, activations=activations, logits=logits)
        probabilities = logits.softmax(dim=1)
        with torch.no_grad():
            inputs = self.model.head_inputs(activations)
        head = self.model.class_concept_weights()
        bias = self.model.head.bias.detach()
        sparse = self.model.head_kind == "sparse"
        results = []
        for i, name in enumerate(names):
            predicted = int(logits[i].argmax())
            target = self.class_index(class_name) if class_name else predicted
            contribution = inputs[i] * head[target]
            order = contribution.argsort(descending=True).tolist()
            if sparse:
                order = [j for j in order if head[target, j] != 0]
            rows = [ConceptRow(self.concepts[j], float(activations[i, j]), float(head[target, j]),
                               float(contribution[j]), float(scores[i, j]), float(inputs[i, j]))
                    for j in order[:top_k]]
            rest = order[top_k:]
            results.append(Explanation(
                name, "cbm", self.classes[predicted], float(probabilities[i, predicted]),
                most_probable(probabilities[i], self.classes, top_classes),
                self.classes[target], rows, float(logits[i, target]), float(bias[target]), self.model.head_kind,
                float(contribution[rest].sum()) if rest else 0.0, len(rest)))
        return results

    def intervene(self, features: torch.Tensor, set_values: dict[str, float], zero: list[str]):
        """Activations with some concepts set to a value (`set_values`, an activation a_j) or removed
        (`zero`: the concept's contribution to every class becomes 0, i.e. its activation is set to the
        mean the head is centred on — 0 for the dense head): (before, after) activations and logits."""
        for concept, value in set_values.items():
            if not (math.isfinite(value) and abs(value) <= MAX_INTERVENTION):
                raise CbmctlError(f"`set_values` {concept}={value}: the value must be a finite number within "
                                  f"±{MAX_INTERVENTION:g}")
        zeroed = {self.concept_index(concept): concept for concept in zero}
        for concept in set_values:
            both = zeroed.get(self.concept_index(concept))
            if both is not None:
                raise CbmctlError(f"`set_values` {safe_text(concept)} and `zero` {safe_text(both)} name the same concept; "
                                  "give one intervention per concept")
        _, activations, logits = self.forward(features)
        edited = activations.clone()
        for concept in zero:
            j = self.concept_index(concept)
            edited[:, j] = self.model.activation_mean[j]
        for concept, value in set_values.items():
            edited[:, self.concept_index(concept)] = float(value)
        with torch.no_grad():
            return activations, logits, edited, self.model.logits_from_activations(edited)

    def without_concepts(self, concepts: list[str]):
        """A copy of the model whose head no longer uses the given concepts (their columns zeroed)."""
        import copy
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for concept in concepts:
                model.head.weight[:, self.concept_index(concept)] = 0.0
        return model


def open_run_cache(metadata: dict, run_dir):
    """The cache a run was trained on, as its model.json records it: a one-line error when it is gone or now
    holds other data (another dataset fingerprint or class count) than the run saw."""
    from cbmctl.cache import open_cache
    path = metadata.get("cache")
    if not isinstance(path, str) or not Path(path).is_file():
        raise CbmctlError(f"the run's cache {safe_text(path)} is missing: no images (re-embed the dataset to that path)")
    cache = open_cache(path)
    dataset = metadata.get("dataset") if isinstance(metadata.get("dataset"), dict) else {}
    classes = metadata.get("classes") if isinstance(metadata.get("classes"), list) else []
    # the class count too: the model's head has one row per class, whatever the record says
    if data_difference(dataset, cache.attrs) or len(cache.classes) != len(classes):
        raise CbmctlError(f"the run's cache {safe_text(path)} now holds other data than {safe_text(run_dir)} was "
                          "trained on: no images")
    return cache


def most_probable(probabilities: torch.Tensor, classes: list[str], count: int) -> list[tuple[str, float]]:
    """The `count` most probable (class, p), ties in label order as argmax breaks them, so the predicted class
    leads the list even when another class has exactly its probability (classes CLIP cannot tell apart)."""
    order = torch.sort(probabilities, descending=True, stable=True).indices[:count].tolist()
    return [(classes[k], float(probabilities[k])) for k in order]


def _require_finite(**tensors: torch.Tensor) -> None:
    """The last guard against a model whose numbers overflow: a one-line error instead of NaN printed as a
    probability (model_from_tensors bounds every weight, so this fires only on what slipped past it)."""
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise CbmctlError(f"the model gives non-finite {name} for this image (its weights are damaged or "
                              "tampered); retrain or restore the run")


def cms_explain(features: torch.Tensor, names: list[str], concepts: list[str], classes: list[str], concept_vectors,
                class_vectors, logit_scale: float, top_k: int = 10, class_name: str | None = None,
                top_classes: int = 5) -> list[Explanation]:
    """Explanation without a trained model: the image's top concepts by V and the class chosen through T
    (the default CMS rule, cos, via cbmctl.cms); contribution = V_ij · T_cj."""
    from cbmctl.cms import ConceptMatrixSearch
    cms = ConceptMatrixSearch(concept_vectors, class_vectors).score(features)
    v, t, similarity = cms.v, cms.t, cms.scores
    _require_finite(similarities=similarity)
    probabilities = (similarity * logit_scale).softmax(dim=1)
    lowered = [c.lower() for c in classes]
    if class_name and class_name.lower() not in lowered:
        raise CbmctlError(f"`class_name` {class_name!r} is not one of the {len(classes)} classes"
                          + did_you_mean(class_name, classes))
    results = []
    for i, name in enumerate(names):
        predicted = int(similarity[i].argmax())
        target = lowered.index(class_name.lower()) if class_name else predicted
        contribution = cms.contributions(target)[i]
        order = v[i].argsort(descending=True)[:top_k]
        rows = [ConceptRow(concepts[j], float(v[i, j]), float(t[target, j]), float(contribution[j]),
                           float(logit_scale * v[i, j])) for j in order.tolist()]
        results.append(Explanation(name, "cms", classes[predicted], float(probabilities[i, predicted]),
                                   most_probable(probabilities[i], classes, top_classes),
                                   classes[target], rows, float(similarity[i, target]), head="cms"))
    return results


def embed_images(backbone, paths: list[str]):
    """(features of the readable images, their names, {path: error} for the others)."""
    from cbmctl.images import BadImage, load_rgb, open_image_file
    tensors, names, errors = [], [], {}
    for path in paths:
        try:
            tensors.append(backbone.preprocess(load_rgb(open_image_file, path)))
            names.append(path)
        except BadImage as error:
            errors[path] = str(error)
    if not tensors:
        return torch.zeros(0, backbone.embed_dim), names, errors
    return backbone.encode_images(torch.stack(tensors)).cpu(), names, errors


@dataclass
class ImageExplanations:
    """Everything one `explain` call produces, for rendering or JSON."""

    results: list[Explanation]
    errors: dict[str, str]                 # image -> why it could not be read
    classes: list[str]
    interventions: tuple | None = None     # (logits before, logits after), one row per result


def run_backbone(metadata: dict, run_dir, device="auto"):
    """The backbone a run recorded, checked by weights hash (a malformed record is a one-line error)."""
    from cbmctl.backbones import load_recorded_backbone
    record = metadata.get("backbone")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in BACKBONE_RECORD):
        raise CbmctlError(f"{run_dir}: the model description does not say which backbone it was trained on")
    return load_recorded_backbone(record, run_dir, device)


def explain_with_run(run_dir: Path, images: list[str], device="auto", top_k: int = 10, class_name: str | None = None,
                     set_values: dict[str, float] | None = None, zero: list[str] | None = None) -> ImageExplanations:
    """Explain image files with a trained run (its own backbone, checked by weights hash), optionally with
    interventions on concept activations."""
    explainer = Explainer.from_run(run_dir)
    backbone = run_backbone(explainer.metadata, run_dir, device)
    features, names, errors = embed_images(backbone, list(images))
    if not names:
        return ImageExplanations([], errors, explainer.classes)
    results = explainer.explain(features, names, top_k, class_name)
    set_values, zero = set_values or {}, list(zero or [])
    if not (set_values or zero):
        return ImageExplanations(results, errors, explainer.classes)
    _, before_logits, after_activations, after_logits = explainer.intervene(features, set_values, zero)
    after = explainer.explain(features, names, top_k, class_name, activations_override=after_activations)
    for result, edited in zip(results, after):
        result.intervention = {"set": set_values, "zero": zero, "predicted_after": edited.predicted,
                               "probability_after": edited.probability, "explained_logit_after": edited.logit}
    return ImageExplanations(results, errors, explainer.classes, (before_logits, after_logits))


def explain_with_cms(images: list[str], run_dir: Path | None = None, model: str | None = None,
                     pretrained: str | None = None, concepts: str | None = None, classes: str | None = None,
                     device="auto", top_k: int = 10, class_name: str | None = None, log=None) -> ImageExplanations:
    """Explain image files with Concept Matrix Search: a run's backbone, concepts and classes when given
    (with the text embeddings the run was trained with, so its classes are prompted with its cache's
    templates), else the named (default: demo) backbone, concept set and class list; one line on `log` says
    which."""
    from cbmctl.backbones import load_backbone
    from cbmctl.concepts import builtin_classes, load_class_list, load_concept_set
    from cbmctl.logs import sayer
    if run_dir is not None:
        explainer = Explainer.from_run(run_dir)
        backbone = run_backbone(explainer.metadata, run_dir, device)
        concept_list, class_list = explainer.concepts, explainer.classes
        concept_vectors, class_vectors = explainer.concept_vectors, explainer.class_vectors
        run_name = safe_text(Path(run_dir).resolve().name)  # runs/latest: the run it points at
        sayer(log)(f"Concept Matrix Search with run {run_name}'s backbone {safe_text(backbone.name)} "
                   f"({safe_text(backbone.pretrained)}), its {len(concept_list)} concepts and {len(class_list)} classes")
    else:
        concept_set = load_concept_set(concepts or "demo")
        concept_list = concept_set.concepts
        class_list = load_class_list(classes, log) if classes else builtin_classes(concept_set.name)
        if not class_list:
            raise CbmctlError(f"`classes` is needed: no built-in class list goes with {concept_set.name!r}")
        from cbmctl.embed import DEFAULT_TEMPLATES
        backbone = load_backbone(model or "demo", pretrained, device)
        source = safe_text(classes) if classes else "the set's own"
        sayer(log)(f"Concept Matrix Search with backbone {safe_text(backbone.name)} ({safe_text(backbone.pretrained)}), "
                   f"concept set {safe_text(concept_set.name)} ({len(concept_list)} concepts) and {len(class_list)} "
                   f"classes ({source})")
        concept_vectors = backbone.encode_texts(concept_list)
        class_vectors = backbone.encode_prompts(class_list, DEFAULT_TEMPLATES)
    features, names, errors = embed_images(backbone, list(images))
    if not names:
        return ImageExplanations([], errors, class_list)
    results = cms_explain(features, names, concept_list, class_list, concept_vectors, class_vectors,
                          backbone.logit_scale, top_k, class_name)
    return ImageExplanations(results, errors, class_list)


def save_edited_run(run_dir: Path, concepts: list[str], target: Path) -> Path:
    """A copy of a run whose head no longer uses `concepts` (concept removal), ready for `train --evaluate`."""
    import shutil

    from cbmctl import runs
    run_dir, target = Path(run_dir), Path(target)
    if target.exists():
        raise CbmctlError(f"{target} exists; choose a new directory")
    explainer = Explainer.from_run(run_dir)
    edited = explainer.without_concepts(concepts)
    target.mkdir(parents=True)
    for name in (runs.CONFIG_FILE, runs.RECORD_FILE):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, target / name)
    metadata = {**explainer.metadata, "edited": {"from": str(run_dir), "removed_concepts": list(concepts)}}
    metadata.pop("metrics", None)
    runs.save_model(target, edited, metadata, {"concept_vectors": explainer.concept_vectors,
                                               "class_vectors": explainer.class_vectors})
    return target
