"""The head stage, after the epochs: each model's CBL frozen at its best epoch, the sparse final layer
(cbmctl.sparse) fitted on its standardised activations along a regularisation path, and every model scored.

Only units that pass the faithfulness cutoff may enter the sparse head (LF-CBM's interpretability cutoff: a
unit whose activation no longer follows its concept's score may not be named by the head as that concept).
Every run reports the dense head and the sparse head at its NEC (and the whole accuracy-sparsity path),
whichever head it keeps as its model."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cbmctl import metrics as M
from cbmctl import resources
from cbmctl.model import ConceptBottleneckModel
from cbmctl.spec import TrainConfig
from cbmctl.training.data import ScoreSource, TrainingData
from cbmctl.training.evaluation import evaluate_head, evaluate_model
from cbmctl.training.result import TrainResult
from cbmctl.training.stack import Stack, stack_forward


@dataclass
class _Heads:
    """What the head stage computed for the whole stack, read per model by _model_result."""

    cbl: torch.Tensor           # S×C×C, each model's best-epoch CBL
    mean: torch.Tensor          # S×C activation means over the train split
    std: torch.Tensor           # S×C
    faithfulness: torch.Tensor  # S×C correlation of unit j with concept j's score
    usable: torch.Tensor        # S×C bool: the units past the faithfulness cutoff
    path: object                # cbmctl.sparse's path: heads at each NEC level, path points, refits
    solver: list[dict]          # per model, how the solver ended
    level_top1: dict            # NEC level -> per-model test top-1


def fit_heads(data: TrainingData, configs: list[TrainConfig], stack: Stack, device: torch.device, log=None,
              warn=None) -> list[TrainResult]:
    """Best-epoch CBLs -> the faithfulness cutoff -> the sparse path on their activations -> each model's
    chosen head and metrics."""
    from cbmctl.logs import LOGGER, sayer
    from cbmctl.sparse import top1
    warn = warn or (log if log is not None else LOGGER.warning)
    log = sayer(log)
    cbl = stack.best_cbl
    sources = {split: ScoreSource(data, split, device) for split in ("train", "val", "test")}
    mean, std, faithfulness = _activation_moments(sources["train"], cbl)
    usable = _faithful_units(configs, faithfulness, len(data.concepts), warn)
    designs = {split: _design(source, cbl, mean, std, usable) for split, source in sources.items()}
    path, solver = _sparse_path(data, configs, designs, log, warn)
    # test top-1 at every NEC level, for every model at once, from the standardised activations
    level_top1 = {level: top1(designs["test"], weight, bias) for level, (weight, bias) in path.heads.items()}
    heads = _Heads(cbl, mean, std, faithfulness, usable, path, solver, level_top1)
    return [_model_result(data, config, m, stack, heads, sources) for m, config in enumerate(configs)]


def _faithful_units(configs: list[TrainConfig], faithfulness: torch.Tensor, concepts: int, warn) -> torch.Tensor:
    """The units each model's sparse head may use (S×C), with a warning for a model left too few."""
    base = configs[0]
    usable = faithfulness >= base.faithfulness_cutoff
    offered = usable.sum(1).tolist()
    for m, config in enumerate(configs):
        if not offered[m]:
            warn(f"warning: no CBL unit of {config.loss} (seed {config.seed}) follows its concept with correlation "
                 f"≥ {base.faithfulness_cutoff:g}: its sparse head can use no concept (lower `faithfulness_cutoff`)")
    if base.nec > min(offered):
        warn(f"warning: `nec` {base.nec} asks for more concepts per class than the {min(offered)} units (of "
             f"{concepts}) that pass the faithfulness cutoff {base.faithfulness_cutoff:g} in some model: its head "
             "holds every weight the path reaches instead (the NEC metrics report the real count)")
    return usable


def _sparse_path(data: TrainingData, configs: list[TrainConfig], designs: dict, log, warn):
    """The elastic-net path of every model's sparse head, truncated and refitted at each NEC level asked for;
    (path, per-model solver record)."""
    from cbmctl.sparse import SparseConfig, cap_warning, fit_path, solver_record
    c = len(data.concepts)
    # budgets above C concepts per class are every weight (as VLG-CBM's truncation does)
    levels = sorted({min(level, c) for level in M.NEC_LEVELS} | {min(config.nec, c) for config in configs})
    log(f"fitting the sparse head{'s' * (len(configs) > 1)}: an elastic-net path on the frozen CBL's activations, "
        f"then NEC {', '.join(map(str, levels))} each truncated and refitted")
    started = time.monotonic()
    sparse_config = SparseConfig(alpha=configs[0].sparse_alpha)
    path = fit_path(designs["train"], len(data.classes), levels, sparse_config, designs["val"], designs["test"],
                    log=log)
    log(f"sparse head{'s' * (len(configs) > 1)} fitted in {time.monotonic() - started:.1f} s "
        f"({max(len(points) for points in path.points)} path points)")
    capped = cap_warning(path, sparse_config, [f"{c.loss} seed {c.seed}" for c in configs])
    if capped:
        warn(f"warning: {capped}")
    return path, solver_record(path, sparse_config)


def _model_result(data: TrainingData, config: TrainConfig, m: int, stack: Stack, heads: _Heads,
                  sources: dict[str, ScoreSource]) -> TrainResult:
    """Model `m` of the stack: both its heads, the one it keeps, and every metric the run reports of it."""
    c, cbl, path = len(data.concepts), heads.cbl, heads.path
    dense = _model(data, cbl[m], "dense", stack.best_head[m])
    weight, bias = path.heads[min(config.nec, c)]
    sparse = _model(data, cbl[m], "sparse", weight[m], bias[m], heads.mean[m], heads.std[m])
    chosen = sparse if config.head == "sparse" else dense
    metrics = {split: evaluate_model(chosen, sources[split], data, split, config) for split in ("test", "val")}
    metrics["dense"] = {split: evaluate_head(dense, sources[split]) for split in ("val", "test")}
    metrics["sparse"] = {"nec": M.nec(sparse.class_concept_weights()), "nec_requested": config.nec,
                         "units_offered": int(heads.usable[m].sum()),
                         **{split: evaluate_head(sparse, sources[split]) for split in ("val", "test")}}
    accuracy_at = {level: float(heads.level_top1[min(level, c)][m]) for level in M.NEC_LEVELS}
    reached = {str(level): M.nec(path.heads[min(level, c)][0][m]) for level in M.NEC_LEVELS}
    history, best = stack.history[m], stack.best_epoch[m]
    test = metrics["test"]
    test["dense_top1"] = metrics["dense"]["test"]["top1"]
    test[f"nec{config.nec}_top1"] = metrics["sparse"]["test"]["top1"]
    test["nec5_top1"] = accuracy_at[5]
    test["anec"] = M.anec(accuracy_at)
    metrics.update({
        "head": config.head, "nec_accuracy": {str(k): v for k, v in accuracy_at.items()}, "nec_reached": reached,
        "anec": test["anec"], "path": path.points[m], "refit": {str(k): v[m] for k, v in path.refit.items()},
        "model": {**M.cbl_weight_metrics(cbl[m], stack.initial_cbl[m]),
                  "faithful_units": int(heads.usable[m].sum()),
                  "faithfulness_mean": float(heads.faithfulness[m].mean())},
        "unfaithful_units": [data.concepts[j] for j in (~heads.usable[m]).nonzero().flatten().tolist()],
        "sparse_solver": heads.solver[m],
        "best_epoch": best, "epochs_run": history[-1]["epoch"] if history else 0,
        "stopped_early": bool(stack.stopped[m]),
        "ce_at_best": history[best - 1]["ce"] if best else None,
    })
    return TrainResult(chosen, metrics, history, best, {"dense": dense, "sparse": sparse})


def _model(data: TrainingData, cbl: torch.Tensor, kind: str, weight: torch.Tensor, bias=None, mean=None, std=None):
    model = ConceptBottleneckModel(len(data.concepts), len(data.classes), "none", kind)
    model.set_head(kind, weight.cpu(), None if bias is None else bias.cpu(), None if mean is None else mean.cpu(),
                   None if std is None else std.cpu())
    with torch.no_grad():
        model.cbl.weight.copy_(cbl.cpu())
    return model.eval()


def _activation_moments(source: ScoreSource, cbl: torch.Tensor, chunk: int = 8192):
    """Per model, over the train split: the mean and standard deviation of each CBL activation (σ of a
    constant activation is taken as 1: its standardised value is 0 and the head never uses it), and each
    unit's faithfulness — the correlation of unit j's activation with concept j's own CLIP score ψ_j."""
    s, c = cbl.shape[0], cbl.shape[1]
    sums = {name: torch.zeros(s, c, dtype=torch.float64, device=cbl.device) for name in ("a", "aa", "p", "pp", "ap")}
    with torch.no_grad():
        for start in range(0, len(source), chunk):
            scores = source.rows(start, min(start + chunk, len(source)))
            a = stack_forward(scores, cbl, cbl[:, :0])[0].double()
            p = scores.double()[None]
            for name, value in (("a", a), ("aa", a * a), ("p", p), ("pp", p * p), ("ap", a * p)):
                sums[name] += value.sum(1)
    n = max(len(source), 1)
    mean, score_mean = sums["a"] / n, sums["p"] / n
    variance = (sums["aa"] / n - mean * mean).clamp_min(0)
    score_variance = (sums["pp"] / n - score_mean * score_mean).clamp_min(0)
    covariance = sums["ap"] / n - mean * score_mean
    faithfulness = covariance / (variance * score_variance).sqrt().clamp_min(1e-30)
    std = variance.sqrt()
    std = torch.where(std > 1e-6 * std.amax(1, keepdim=True).clamp_min(1e-30), std, torch.ones_like(std))
    return mean.float(), std.float(), faithfulness.float()


def _design(source: ScoreSource, cbl: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, usable: torch.Tensor):
    """The sparse head's input: standardised activations, 0 for the units it may not use (`usable`, S×C)."""
    from cbmctl.sparse import Design
    keep = usable.float()[:, None, :]

    def produce(start, stop):
        with torch.no_grad():
            a = stack_forward(source.rows(start, stop), cbl, cbl[:, :0])[0]
            return (a - mean[:, None, :]) / std[:, None, :] * keep
    size = cbl.shape[0] * len(source) * cbl.shape[1] * 4
    materialise = size <= resources.SPARSE_MATERIALISE_BYTES  # read at call time, as a test may lower it
    return Design(produce, source.labels, resources.SPARSE_CHUNK, materialise=materialise)
