"""Training a Concept Bottleneck Model on cached embeddings, and the baselines on the same split.

Embeddings come from the HDF5 cache, never from a backbone forward per step. When a split fits on the
device it is moved there once and batches are indexed there (the fast path); concept scores
ψ = s · cos(image, concept) are computed once per run for all splits when that fits, else per batch."""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cbmctl import metrics as M
from cbmctl.errors import CbmctlError
from cbmctl.losses import GUMBEL_FORMS, LOSSES, cbl_loss
from cbmctl.model import ConceptBottleneckModel

BASELINES = ("linear-probe", "zero-shot")
OPTIMIZERS = ("adam", "adamw", "sgd")
# concept scores of every split are precomputed when they take at most this many bytes
PRECOMPUTE_BYTES = 2 << 30


@dataclass
class TrainConfig:
    loss: str = "gumbel"
    gumbel_form: str = "paper"
    tau: float = 1.0
    hard: bool = False
    l1_lambda: float = 1e-3
    lr: float = 1e-4
    cbl_lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    epochs: int = 200
    patience: int = 20
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    cbl_init: str = "identity"
    nec: int | None = None
    precision_k: int = 5
    fast_path: str = "auto"  # auto | on | off (off: plain CPU batches, ψ per batch; for checking)

    def validate(self) -> None:
        if self.loss not in LOSSES + BASELINES:
            raise CbmctlError(f"unknown --loss {self.loss!r} (choose from {', '.join(LOSSES + BASELINES)})")
        if self.gumbel_form not in GUMBEL_FORMS:
            raise CbmctlError(f"unknown --gumbel-form {self.gumbel_form!r} ({', '.join(GUMBEL_FORMS)})")
        if self.hard and not (self.loss == "gumbel" and self.gumbel_form == "paper"):
            raise CbmctlError("--hard applies only to --loss gumbel --gumbel-form paper (the reference form's "
                              "−log of a hard sample is infinite)")
        if self.optimizer not in OPTIMIZERS:
            raise CbmctlError(f"unknown --optimizer {self.optimizer!r} ({', '.join(OPTIMIZERS)})")
        if self.tau <= 0:
            raise CbmctlError(f"--tau must be positive, got {self.tau}")
        if self.batch_size < 1 or self.epochs < 1:
            raise CbmctlError("--batch-size and --epochs must be at least 1")


@dataclass
class TrainingData:
    """Everything a run reads: cached image embeddings per split, concept and class text embeddings."""

    features: dict[str, torch.Tensor]   # split -> (N, D) float32, L2-normalised
    labels: dict[str, torch.Tensor]     # split -> (N,) int64
    concept_vectors: torch.Tensor       # (C, D)
    class_vectors: torch.Tensor         # (K, D)
    logit_scale: float
    concepts: list[str]
    classes: list[str]
    truth: dict[str, np.ndarray | None] = field(default_factory=dict)  # split -> (N, C) bool
    record: dict = field(default_factory=dict)  # provenance: cache, backbone, concept set

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """ψ = s · cos(image, concept) for (N, D) normalised features."""
        return self.logit_scale * features @ self.concept_vectors.to(features.device).T


@dataclass
class TrainResult:
    model: ConceptBottleneckModel | None
    metrics: dict
    history: list[dict]
    best_epoch: int
    extra: dict = field(default_factory=dict)


def _optimizer(name, params, lr, weight_decay):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


class _Scores:
    """Batches of (ψ, labels) for one split: device-resident and precomputed (fast path) or plain."""

    def __init__(self, data: TrainingData, split: str, device, fast: bool):
        self.data, self.fast, self.device = data, fast, device
        features, labels = data.features[split], data.labels[split]
        if fast:
            self.labels = labels.to(device)
            size = features.shape[0] * data.concept_vectors.shape[0] * 4
            self.scores = data.scores(features.to(device)) if size <= PRECOMPUTE_BYTES else None
            self.features = None if self.scores is not None else features.to(device)
        else:
            self.features, self.labels, self.scores = features, labels, None

    def __len__(self):
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor):
        if self.fast:
            index = index.to(self.device)
            scores = self.scores[index] if self.scores is not None else self.data.scores(self.features[index])
            return scores, self.labels[index]
        # the plain path: gather on the CPU, compute ψ per batch, then move the batch
        scores = self.data.scores(self.features[index])
        return scores.to(self.device), self.labels[index].to(self.device)

    def all(self, chunk: int = 8192):
        for start in range(0, len(self), chunk):
            yield self.batch(torch.arange(start, min(start + chunk, len(self))))


def _forward_split(model, source: _Scores):
    activations, logits = [], []
    with torch.no_grad():
        for scores, _ in source.all():
            a, z = model(scores)
            activations.append(a.float())
            logits.append(z.float())
    return torch.cat(activations), torch.cat(logits)


def evaluate_model(model, source: _Scores, data: TrainingData, split: str, config: TrainConfig) -> dict:
    """Accuracy, sparsity and faithfulness of `model` on one split."""
    activations, logits = _forward_split(model, source)
    labels = source.labels
    predicted = logits.argmax(dim=1)
    contributions = model.contributions(activations, predicted)
    result = {
        "top1": M.topk_accuracy(logits, labels, 1), "top5": M.topk_accuracy(logits, labels, 5),
        "mean_per_class": M.mean_per_class_accuracy(logits, labels, model.num_classes),
        "l0_mean": float(M.activation_l0(activations).float().mean()),
        "nec": M.effective_concepts(model.head.weight.detach()),
        "coverage90_mean": float(M.coverage(contributions, 0.9).float().mean()),
        "images": len(labels),
    }
    truth = data.truth.get(split)
    if truth is not None:
        result[f"concept_precision@{config.precision_k}"] = M.concept_precision_at_k(
            activations, torch.as_tensor(truth, device=activations.device), config.precision_k)
    if config.nec:
        head = M.truncate_head(model.head.weight.detach(), config.nec)
        truncated = activations @ head.T
        result[f"nec{config.nec}_top1"] = M.topk_accuracy(truncated, labels, 1)
        result[f"nec{config.nec}_mean_per_class"] = M.mean_per_class_accuracy(truncated, labels, model.num_classes)
    return result


def _checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_cbm(data: TrainingData, config: TrainConfig, checkpoint: Path | None = None, log=None,
              resume: dict | None = None) -> TrainResult:
    """Train CBL + head with the configured CBL objective plus cross-entropy; select the epoch by
    validation top-1 with early stopping; evaluate the test split once, with the selected weights."""
    from cbmctl.backbones import resolve_device
    config.validate()
    device = resolve_device(config.device)
    fast = config.fast_path != "off"
    torch.manual_seed(config.seed)
    model = ConceptBottleneckModel(len(data.concepts), len(data.classes), config.cbl_init).to(device)
    cbl_optimizer = _optimizer(config.optimizer, model.cbl.parameters(), config.cbl_lr, config.weight_decay)
    head_optimizer = _optimizer(config.optimizer, model.head.parameters(), config.lr, config.weight_decay)
    order = torch.Generator().manual_seed(config.seed)
    noise = torch.Generator(device=device).manual_seed(config.seed + 1)
    train, val = _Scores(data, "train", device, fast), _Scores(data, "val", device, fast)
    history, best_state, best_top1, best_epoch, start = [], None, -1.0, 0, 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        cbl_optimizer.load_state_dict(resume["cbl_optimizer"])
        head_optimizer.load_state_dict(resume["head_optimizer"])
        order.set_state(resume["order_rng"])
        noise.set_state(resume["noise_rng"])
        history, best_top1, best_epoch = resume["history"], resume["best_top1"], resume["best_epoch"]
        best_state, start = resume["best_state"], resume["epoch"] + 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for epoch in range(start, config.epochs + 1):
        if epoch - best_epoch > config.patience and best_epoch:
            break
        model.train()
        permutation = torch.randperm(len(train), generator=order)
        sums = {"loss": 0.0, "cbl_loss": 0.0, "ce": 0.0, "correct": 0}
        for start_index in range(0, len(train), config.batch_size):
            scores, labels = train.batch(permutation[start_index:start_index + config.batch_size])
            with autocast:
                activations, logits = model(scores)
            activations, logits = activations.float(), logits.float()
            objective = cbl_loss(config.loss, z=activations, scores=scores, cbl_weight=model.cbl.weight,
                                 gumbel_form=config.gumbel_form, tau=config.tau, hard=config.hard,
                                 l1_lambda=config.l1_lambda, generator=noise)
            cross_entropy = F.cross_entropy(logits, labels)
            loss = objective + cross_entropy
            if not torch.isfinite(loss):
                raise CbmctlError(f"the loss became {float(loss.detach())} at epoch {epoch}; lower --lr/--cbl-lr or raise --tau")
            cbl_optimizer.zero_grad(set_to_none=True)
            head_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            cbl_optimizer.step()
            head_optimizer.step()
            n = len(labels)
            sums["loss"] += float(loss.detach()) * n
            sums["cbl_loss"] += float(objective.detach()) * n
            sums["ce"] += float(cross_entropy.detach()) * n
            sums["correct"] += int((logits.argmax(1) == labels).sum())
        model.eval()
        _, val_logits = _forward_split(model, val)
        val_top1 = M.topk_accuracy(val_logits, val.labels, 1)
        row = {"epoch": epoch, "loss": sums["loss"] / len(train), "cbl_loss": sums["cbl_loss"] / len(train),
               "ce": sums["ce"] / len(train), "train_top1": sums["correct"] / len(train), "val_top1": val_top1}
        history.append(row)
        if val_top1 > best_top1:
            best_top1, best_epoch = val_top1, epoch
            best_state = copy.deepcopy(model.state_dict())
        if log:
            log(f"epoch {epoch:3d}  loss {row['loss']:.4f} (cbl {row['cbl_loss']:.4f}, ce {row['ce']:.4f})  "
                f"train {row['train_top1']:.4f}  val {val_top1:.4f}")
        if checkpoint is not None:
            _checkpoint(checkpoint, {"model": model.state_dict(), "cbl_optimizer": cbl_optimizer.state_dict(),
                                     "head_optimizer": head_optimizer.state_dict(), "order_rng": order.get_state(),
                                     "noise_rng": noise.get_state(), "history": history, "best_top1": best_top1,
                                     "best_epoch": best_epoch, "best_state": best_state, "epoch": epoch,
                                     "config": asdict(config)})
    model.load_state_dict(best_state)
    model.eval()
    metrics = {**evaluate_splits(model, data, config, fast),
               "best_epoch": best_epoch, "epochs_run": history[-1]["epoch"] if history else 0}
    return TrainResult(model.cpu(), metrics, history, best_epoch)


def evaluate_splits(model, data: TrainingData, config: TrainConfig, fast: bool = True,
                    splits=("test", "val")) -> dict:
    """evaluate_model on each split, with the model on the configured device."""
    from cbmctl.backbones import resolve_device
    device = resolve_device(config.device)
    model = model.to(device).eval()
    return {split: evaluate_model(model, _Scores(data, split, device, fast), data, split, config) for split in splits}


def run_baseline(data: TrainingData, name: str) -> TrainResult:
    """The linear probe (on image embeddings, L2 chosen on val) or zero-shot CLIP, on the same split."""
    from cbmctl.probe import fit_linear_probe

    def scores_metrics(logits, labels):
        return {"top1": M.topk_accuracy(logits, labels, 1), "top5": M.topk_accuracy(logits, labels, 5),
                "mean_per_class": M.mean_per_class_accuracy(logits, labels, len(data.classes)),
                "images": len(labels)}

    if name == "zero-shot":
        logits = {s: data.features[s] @ data.class_vectors.T for s in ("val", "test")}
        extra = {}
    elif name == "linear-probe":
        probe = fit_linear_probe(data.features["train"].numpy(), data.labels["train"].numpy(),
                                 data.features["val"].numpy(), data.labels["val"].numpy(), len(data.classes))
        logits = {s: torch.as_tensor(probe.logits(data.features[s].numpy())) for s in ("val", "test")}
        extra = {"l2": probe.l2}
    else:
        raise CbmctlError(f"unknown baseline {name!r}")
    metrics = {s: scores_metrics(logits[s], data.labels[s]) for s in ("val", "test")}
    metrics.update(extra)
    return TrainResult(None, metrics, [], 0)


def run_method(data: TrainingData, config: TrainConfig, **kwargs) -> TrainResult:
    if config.loss in BASELINES:
        return run_baseline(data, config.loss)
    return train_cbm(data, config, **kwargs)


def seeds_summary(results: list[TrainResult]) -> dict:
    """mean ± std over seeds of every numeric test metric."""
    keys = [k for k, v in results[0].metrics["test"].items() if isinstance(v, (int, float)) and k != "images"]
    return {k: M.summarise([r.metrics["test"][k] for r in results]) for k in keys}


def random_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct random English-looking words from the CLIP tokenizer's vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer
    vocabulary = sorted({w[:-4] for w in SimpleTokenizer().encoder if w.endswith("</w>") and w[:-4].isalpha()
                         and 3 <= len(w) - 4 <= 10})
    rng = np.random.default_rng(seed)
    if count > len(vocabulary):
        raise CbmctlError(f"cannot draw {count} distinct random words")
    return [vocabulary[i] for i in rng.choice(len(vocabulary), size=count, replace=False)]


def describe(config: TrainConfig) -> str:
    if config.loss == "gumbel":
        return f"gumbel ({config.gumbel_form}, τ={config.tau:g}{', hard' if config.hard else ''})"
    if config.loss == "l1":
        return f"l1 (λ={config.l1_lambda:g})"
    return config.loss


def concept_vectors(cache, concept_set, device="auto") -> np.ndarray:
    """A concept set's text embeddings under the cache's backbone: from the cache's text store, or encoded
    (loading the backbone only then) and stored there for next time."""
    from cbmctl.cache import text_key
    stored = cache.text(text_key(cache.attrs, concept_set.concepts))
    if stored is not None:
        return stored[1]
    from cbmctl.backbones import load_backbone_of_cache
    from cbmctl.concepts import encode_concepts
    return encode_concepts(load_backbone_of_cache(cache, device), concept_set, cache.path)[0]


def random_concept_set(concept_set):
    """The random-word control for a concept set: as many random words."""
    from cbmctl.concepts import ConceptSet
    return ConceptSet(f"random-words-{len(concept_set.concepts)}", random_words(len(concept_set.concepts)),
                      f"random words replacing {concept_set.name}")


def prepare_data(cache, concept_set, random_concepts: bool = False, concept_map=None, device="auto"
                 ) -> TrainingData:
    """Read a cache and a concept set into TrainingData. Concept text embeddings come from the cache's text
    store; only when they are not there yet is the cache's backbone loaded to encode (and store) them."""
    from cbmctl.concept_truth import read_mapping, truth_matrix
    if random_concepts:
        concept_set = random_concept_set(concept_set)
    vectors = concept_vectors(cache, concept_set, device)
    splits = {s: cache.split(s) for s in ("train", "val", "test")}
    for name, split in splits.items():
        if len(split.labels) == 0:
            raise CbmctlError(f"{cache.path}: the {name} split is empty")
    mapping = read_mapping(concept_map) if concept_map else None
    names = cache.attribute_names
    return TrainingData(
        features={s: torch.from_numpy(d.embeddings.astype(np.float32)) for s, d in splits.items()},
        labels={s: torch.from_numpy(d.labels.astype(np.int64)) for s, d in splits.items()},
        concept_vectors=torch.from_numpy(np.asarray(vectors, np.float32)),
        class_vectors=torch.from_numpy(cache.class_embeddings().astype(np.float32)),
        logit_scale=float(cache.attrs["logit_scale"]),
        concepts=list(concept_set.concepts), classes=cache.classes,
        truth={s: truth_matrix(names, d.attributes, concept_set.concepts, mapping) for s, d in splits.items()},
        record={"cache": str(Path(cache.path).resolve()),
                "backbone": {k: cache.attrs[k] for k in ("backbone_model", "backbone_pretrained", "weights_sha256")},
                "dataset": {k: cache.attrs[k] for k in ("dataset_name", "dataset_root", "dataset_fingerprint",
                                                        "val_fraction", "val_seed")},
                "concept_set": concept_set.record(), "logit_scale": float(cache.attrs["logit_scale"])},
    )
