"""From what a user names (a dataset folder or name, or a cache file) to a ready cache and concept set;
shared by `train`, `cms` and `explain`. Embeds first when the cache is missing (the same code as
`cbmctl embed`); an existing cache is checked against the dataset and backbone instead of re-embedding.
Which cache and concept set a command uses is decided below, in cbmctl.preflight (without torch); this module
imports it, never the other way round."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cbmctl.errors import CbmctlError


def resolve_cache(spec: str | None, *, model=None, pretrained=None, cache_path=None, data_root=None,
                  device="auto", log=None, warn=None, templates=None, plan=None):
    """(Cache, DatasetConfig) for DATA or CACHE.

    Everything that can be checked without torch is checked first (cbmctl.preflight.plan_cache: pass its
    result as `plan` when the command already called it); a missing cache is then embedded under the
    cache's lock, so two commands that both need it embed it once (the second waits, saying so on `log`).
    `log` gets progress lines, `warn` one line per thing the user should know (a backbone whose results
    mean nothing here), `log` when not given."""
    from cbmctl.cache import open_cache
    from cbmctl.files import file_lock
    from cbmctl.logs import sayer
    from cbmctl.preflight import check_existing, plan_cache
    say = sayer(log)
    plan = plan or plan_cache(spec, model=model, pretrained=pretrained, templates=templates, cache_path=cache_path,
                              data_root=data_root)
    for line in plan.warnings:
        (warn or say)(f"warning: {line}")
    if plan.state != "missing":
        return open_cache(plan.cache), plan.config
    with file_lock(plan.cache, note=say, doing="embedding into"):
        if plan.cache.exists():  # another process embedded it while this one waited
            check_existing(plan, spec, None)
            return open_cache(plan.cache), plan.config
        from cbmctl.backbones import load_backbone
        from cbmctl.embed import embed_dataset, report_lines
        say(f"no cache yet: embedding {plan.dataset.summary()} with {plan.request.label} into {plan.cache}")
        backbone = load_backbone(plan.model, plan.pretrained, device)
        report = embed_dataset(plan.dataset, backbone, plan.cache, templates=plan.templates,
                               progress=log is not None, log=say)
        for line in report_lines(report, limit=5):
            say(line)
    return open_cache(plan.cache), plan.config


def plan_train(spec):
    """The cache a training spec will use, checked without torch (cbmctl.preflight.plan_cache)."""
    from cbmctl.preflight import plan_cache
    return plan_cache(spec.data, model=spec.model, pretrained=spec.pretrained, cache_path=spec.cache_path,
                      data_root=spec.data_root, allow_outside_root=spec.allow_outside_root)


def _absolute(path: str | None) -> str | None:
    """An existing path made absolute, so that a run's config.yaml works from any directory; a name (a
    dataset or concept set name) unchanged."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def run_train(spec, log=None, run_dir: Path | None = None, resume: Path | None = None, plan=None, warn=None,
              started=None):
    """The whole `cbmctl train` behaviour for an ExperimentSpec; returns the ExperimentResult. `run_dir`
    trains into that directory instead of a new timestamped one; `resume` continues an interrupted run;
    `plan` is plan_train(spec) when the caller checked it already; `warn` gets the warning lines (`log`
    when not given), which a quiet `log` must not hide; `started(run_dir)` is called once the run directory
    is the one `--resume` would continue (the command line then knows what to say on Ctrl-C)."""
    from cbmctl import runs
    from cbmctl.backbones import resolve_device
    from cbmctl.experiment import check_resumable, run_experiment
    from cbmctl.files import file_lock
    from cbmctl.logs import sayer
    from cbmctl.preflight import resolve_concepts
    from cbmctl.resources import check_training
    from cbmctl.spec import BASELINES
    from cbmctl.training import prepare_data
    warn = warn or sayer(log)
    device = resolve_device(spec.train.device)  # an unusable --device is an error before anything is embedded
    _check_destination(spec, run_dir, resume)
    cache, dataset_config = resolve_cache(spec.data, device=device, log=log, warn=warn,
                                          plan=plan or plan_train(spec))
    concept_set = resolve_concepts(spec.concepts, dataset_config, cache)
    models = sum(method not in BASELINES for method in spec.methods) * len(spec.seeds)
    if models:  # before a concept is encoded or a tensor allocated
        check_training(models, len(concept_set.concepts), cache.num_classes, cache.counts(), spec.train.batch_size,
                       cache.embed_dim, device)
    data = prepare_data(cache, concept_set, spec.random_concepts, spec.concept_map, device, warn)
    spec = replace(spec, cache_path=str(Path(cache.path).resolve()), data=_absolute(spec.data),
                   data_root=_absolute(spec.data_root), concept_map=_absolute(spec.concept_map),
                   concepts=concept_set.name if concept_set.source.startswith("builtin:") else
                   _absolute(concept_set.source))
    spec = _fitted_to_the_data(spec, data, warn)
    if resume is not None:
        run_dir = Path(resume).resolve()
    elif run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    else:
        label = "compare" if len(spec.methods) > 1 else spec.methods[0]
        run_dir = runs.new_run_dir(Path(spec.out), str(cache.attrs["dataset_name"]), label)
    # one process trains a run at a time: a --resume of a run still training elsewhere is refused
    with file_lock(run_dir, wait=False, doing="training"):
        if resume is not None:
            check_resumable(run_dir, data)
            if runs.is_finished(run_dir):
                raise CbmctlError(f"{run_dir} already finished; nothing to resume (start a new run instead)")
        result = run_experiment(data, spec.train, spec.methods, spec.seeds, run_dir, spec.as_mapping(), log=log,
                                warn=warn, started=started, device=device)
    runs.point_latest(run_dir.parent, run_dir)
    return result


def _check_destination(spec, run_dir, resume) -> None:
    """An unwritable destination, or a `latest` of the user's in it, is found before minutes of embedding and
    training, not after them."""
    from cbmctl import runs
    if resume is not None:
        runs.check_writable(Path(resume), "the resumed run")
        runs.check_latest_free(Path(resume).parent)
    else:
        runs.check_writable(Path(run_dir) if run_dir is not None else Path(spec.out))
        runs.check_latest_free(Path(run_dir).parent if run_dir is not None else Path(spec.out))


def _fitted_to_the_data(spec, data, warn):
    """The spec with the options the data cannot honour adjusted, each said in one line: a batch larger than
    the train split (noted), a precision@k past the concept count (reported at k = C)."""
    train_images = int(data.labels["train"].shape[0])
    if spec.train.batch_size > train_images:
        warn(f"note: `batch_size` {spec.train.batch_size} is more than the {train_images} train images: every epoch "
             "is one batch of all of them")
    if spec.train.precision_k > len(data.concepts):
        warn(f"warning: `precision_k` {spec.train.precision_k} is more than the {len(data.concepts)} concepts: "
             f"precision@{len(data.concepts)} is reported instead")
        spec = replace(spec, train=replace(spec.train, precision_k=len(data.concepts)))
    return spec
