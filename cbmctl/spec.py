"""The one typed specification of a training run (shared by the command line, --config files, a run's
config.yaml and the library): TrainConfig holds every option of one model's training with its default,
ExperimentSpec adds the data and the methods × seeds of one `cbmctl train`. Plain Python, no torch, so the
command line can read defaults and check options before anything heavy is imported."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import require_plain_folder
from cbmctl.suggest import did_you_mean

LOSSES = ("gumbel", "contrastive", "l1", "cos3", "none")
BASELINES = ("linear-probe", "zero-shot")
METHODS = LOSSES + BASELINES
GUMBEL_FORMS = ("paper", "reference")
HEADS = ("sparse", "dense")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
CBL_INITS = ("identity", "random")
# seeds go to torch's and numpy's generators, some of which take only 32-bit seeds
SEED_LIMIT = 2 ** 32
# each seed trains one more model (and writes one more directory); more than this is a typo, not a study
MAX_SEEDS = 1000
# learning rates, the temperature and penalty strengths: useful values are below 10; far beyond this bound
# (1e300) the optimizers' float32 arithmetic overflows
MAX_RATE = 1e6
# the l1 objective's λ in (λ/C)·Σ|W| (cbmctl.losses.l1_loss takes it from here)
MAX_THREADS = 1024  # torch allocates per-thread state: a typo of 100000 threads must not reach it
L1_LAMBDA = 0.1
# training never stops early before this epoch unless --min-epochs says otherwise (or --epochs is smaller)
DEFAULT_MIN_EPOCHS = 20


def check_loss_options(name: str, gumbel_form: str = "paper", hard: bool = False) -> None:
    if name not in LOSSES:
        raise CbmctlError(f"unknown `loss` {name!r} ({', '.join(LOSSES)})" + did_you_mean(name, LOSSES))
    if gumbel_form not in GUMBEL_FORMS:
        raise CbmctlError(f"unknown `gumbel_form` {gumbel_form!r} ({', '.join(GUMBEL_FORMS)})")
    if hard and not (name == "gumbel" and gumbel_form == "paper"):
        raise CbmctlError("`hard` applies only to `loss` gumbel with `gumbel_form` paper (the reference form's "
                          "−log of a hard sample is infinite)")


@dataclass
class TrainConfig:
    """Every option of one training run (and the defaults of `cbmctl train`)."""

    loss: str = "gumbel"
    gumbel_form: str = "paper"
    tau: float = 1.0
    hard: bool = False
    l1_lambda: float = L1_LAMBDA
    head: str = "sparse"
    nec: int = 5
    lr: float = 1e-3
    cbl_lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 1000
    min_epochs: int | None = None  # None: DEFAULT_MIN_EPOCHS, or `epochs` when that is fewer
    patience: int = 30
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    cbl_init: str = "identity"
    precision_k: int = 5
    sparse_alpha: float = 0.99
    faithfulness_cutoff: float = 0.5
    threads: int = 0  # torch's CPU threads while training; 0: chosen by cbmctl.threads

    def first_stop_epoch(self) -> int:
        """The first epoch at which early stopping may end training."""
        return min(DEFAULT_MIN_EPOCHS, self.epochs) if self.min_epochs is None else self.min_epochs

    def for_method(self, method: str, seed: int | None = None) -> TrainConfig:
        """This configuration for one method (and seed) of a comparison: --hard belongs to the Gumbel
        objective only, so every other method of the same comparison trains without it."""
        return replace(self, loss=method, seed=self.seed if seed is None else seed,
                       hard=self.hard and method == "gumbel")

    def validate(self) -> None:
        if self.loss not in METHODS:
            raise CbmctlError(f"unknown `loss` {self.loss!r} (choose from {', '.join(METHODS)})"
                              + did_you_mean(self.loss, METHODS))
        if self.loss in LOSSES:
            check_loss_options(self.loss, self.gumbel_form, self.hard)
        elif self.gumbel_form not in GUMBEL_FORMS:
            raise CbmctlError(f"unknown `gumbel_form` {self.gumbel_form!r} ({', '.join(GUMBEL_FORMS)})")
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "head": HEADS, "cbl_init": CBL_INITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CbmctlError(f"unknown `{name}` {getattr(self, name)!r} "
                                  f"({', '.join(allowed)})" + did_you_mean(str(getattr(self, name)), allowed))
        positive = {"tau": self.tau, "lr": self.lr, "cbl_lr": self.cbl_lr}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise CbmctlError(f"`{name}` must be a positive number, got {value}")
        for name in ("l1_lambda", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise CbmctlError(f"`{name}` must be a non-negative number, got {value}")
        for name in ("tau", "lr", "cbl_lr", "l1_lambda", "weight_decay"):
            # the optimizers turn these into float32 factors: beyond MAX_RATE a step overflows
            if getattr(self, name) > MAX_RATE:
                raise CbmctlError(f"`{name}` must be at most {MAX_RATE:g}, got {getattr(self, name)}")
        for name in ("batch_size", "epochs", "patience", "nec", "precision_k"):
            if getattr(self, name) < 1:
                raise CbmctlError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise CbmctlError(f"`seed` must be in [0, 2^32) (the random generators take 32-bit seeds), got {self.seed}")
        if self.min_epochs is not None and self.min_epochs < 0:
            raise CbmctlError(f"`min_epochs` must be at least 0, got {self.min_epochs}")
        if self.min_epochs is not None and self.min_epochs > self.epochs:
            raise CbmctlError(f"`min_epochs` {self.min_epochs} is more than `epochs` {self.epochs}: training could "
                              "never stop early; lower `min_epochs` or raise `epochs`")
        if not 0 <= self.threads <= MAX_THREADS:
            raise CbmctlError(f"`threads` must be between 0 (chosen from the CPUs this process may use) and "
                              f"{MAX_THREADS}, got {self.threads}")
        if not 0 < self.sparse_alpha <= 1:
            raise CbmctlError(f"`sparse_alpha` must be in (0, 1], got {self.sparse_alpha}")
        if not -1 <= self.faithfulness_cutoff <= 1:
            raise CbmctlError(f"`faithfulness_cutoff` must be a correlation in [-1, 1], got {self.faithfulness_cutoff}")

    @classmethod
    def from_mapping(cls, values: dict, where: str = "") -> TrainConfig:
        """A config from plain values (command-line options, a YAML file, a run's config): unknown names are
        an error, and each value is converted to the field's type with a one-line error when it cannot be."""
        known = {f.name: f for f in fields(cls)}
        converted = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise CbmctlError(f"{where + ': ' if where else ''}unknown option {key!r}")
            kind = known[name].type
            if value is None and kind.endswith(" | None"):
                converted[name] = None
                continue
            converted[name] = _convert(value, kind.removesuffix(" | None"), option_label(where, name))
        config = cls(**converted)
        try:
            config.validate()
        except CbmctlError as error:
            # a file's keys are the names it spells: not rewritten as flags
            raise CbmctlError(f"{where}: {error}", options=()) if where else error from None
        return config


def option_label(where: str, name: str) -> str:
    """How an error names an option: `cbl_lr` as a parameter (the command line shows --cbl-lr), `file.yaml:
    cbl_lr` in a file."""
    return f"{where}: {name}" if where else f"`{name}`"


def _convert(value, kind: str, label: str):
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise CbmctlError(f"{label} must be true or false, got {value!r}")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise CbmctlError(f"{label} must be a number, got {value!r}")
        if kind == "int":
            return _whole_number(value, label)
        try:
            number = float(value)
        except ValueError:
            raise CbmctlError(f"{label} must be a number, got {value!r}") from None
        return number
    if not isinstance(value, str):
        raise CbmctlError(f"{label} must be text, got {value!r}")
    return value


def _whole_number(value, label: str) -> int:
    """An int read exactly: digits (not '1e3', which a float would silently turn into 1000, nor a value a
    float would round, as 9007199254740993); a float only when it is whole and exact (YAML's `7.0`)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= 2 ** 53:
            return int(value)
        raise CbmctlError(f"{label} must be a whole number, got {value!r}")
    text = value.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,30}", text):
        try:
            float(text)
        except ValueError:
            raise CbmctlError(f"{label} must be a number, got {value!r}") from None
        raise CbmctlError(f"{label} must be a whole number written in digits, got {value!r}")
    return int(text)


# options of an experiment that are not TrainConfig's: what to train on, and where the run goes
DATA_OPTIONS = {"data": "str", "cache_path": "str", "model": "str", "pretrained": "str", "data_root": "str",
                "concepts": "str", "concept_map": "str", "random_concepts": "bool", "out": "str",
                "allow_outside_root": "bool"}


@dataclass
class ExperimentSpec:
    """The one typed specification of a `cbmctl train` invocation: the data, the methods × seeds, and the
    TrainConfig shared by every model. Command-line options, --config files and a run's config.yaml all
    become one through from_mapping, which checks every value; as_mapping is what config.yaml stores."""

    train: TrainConfig = field(default_factory=TrainConfig)
    methods: list[str] = field(default_factory=lambda: ["gumbel"])
    seeds: list[int] = field(default_factory=lambda: [0])
    data: str | None = None
    cache_path: str | None = None
    model: str | None = None
    pretrained: str | None = None
    data_root: str | None = None
    concepts: str | None = None
    concept_map: str | None = None
    random_concepts: bool = False
    out: str = "runs"
    allow_outside_root: bool = False

    @classmethod
    def from_mapping(cls, values: dict, where: str = "") -> ExperimentSpec:
        """From option names as the command line or a config file spells them. `loss` or `compare`
        (a comma list or 'all') give the methods, `seed` or `seeds` (a list, a comma list, or a count N
        meaning seeds 0..N-1) the seeds; every other name is a TrainConfig field or a data option. `where`
        names the source in errors (a file); empty, errors name the command-line flag."""
        values = {str(k).replace("-", "_"): v for k, v in values.items() if v is not None}
        # `compare` (the command line's spelling) wins over `methods` (config.yaml's); both win over `loss`
        listed = [values.pop(k) for k in ("methods", "compare") if k in values]
        methods = parse_methods(listed[-1] if listed else [values.get("loss", TrainConfig.loss)],
                                option_label(where, "compare"))
        values.pop("loss", None)
        seeds = parse_seeds(values.pop("seeds", None), values.get("seed", TrainConfig.seed),
                            option_label(where, "seeds"))
        data = {k: _convert(values.pop(k), kind, option_label(where, k)) for k, kind in DATA_OPTIONS.items()
                if k in values}
        if data.get("out") is not None:
            require_plain_folder(data["out"], option_label(where, "out"))
        train = TrainConfig.from_mapping({**values, "loss": methods[0], "seed": seeds[0]}, where)
        for method in methods:
            train.for_method(method).validate()
        return cls(train=train, methods=methods, seeds=seeds, **data)

    def as_mapping(self) -> dict:
        train = {k: v for k, v in asdict(self.train).items() if k not in ("loss", "seed")}
        data = {k: getattr(self, k) for k in DATA_OPTIONS if getattr(self, k) not in (None, False)}
        return {**data, "methods": list(self.methods), "seeds": list(self.seeds), **train}


def parse_methods(value, where: str = "`compare`") -> list[str]:
    if isinstance(value, str):
        value = list(METHODS) if value.strip() == "all" else [m.strip() for m in value.split(",") if m.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise CbmctlError(f"{where}: methods must be a list of {', '.join(METHODS)} (or 'all')")
    unknown = [m for m in value if m not in METHODS]
    if unknown:
        raise CbmctlError(f"{where}: unknown method {unknown[0]!r} (choose from {', '.join(METHODS)}, or 'all')"
                          + did_you_mean(unknown[0], METHODS))
    if len(set(value)) != len(value):
        raise CbmctlError(f"{where}: a method is listed twice")
    return value


def parse_seeds(value, seed=0, where: str = "`seeds`") -> list[int]:
    """A list of seeds, a comma list ('0,1,2'), or a count ('10' = seeds 0..9); None: the single `seed`.
    At most MAX_SEEDS seeds, each in [0, SEED_LIMIT), every number read exactly."""
    if value is None:
        seeds = [_convert(seed, "int", f"{where}: seed")]
    elif (isinstance(value, str) and "," not in value) or (isinstance(value, int) and not isinstance(value, bool)):
        count = _convert(value, "int", f"{where} (a count, or a comma list of seeds)")
        if not 1 <= count <= MAX_SEEDS:
            raise CbmctlError(f"{where}: a seed count must be in [1, {MAX_SEEDS}] (each seed trains one more "
                              f"model), got {count}")
        return list(range(count))
    else:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise CbmctlError(f"{where}: seeds must be a list of whole numbers, got {str(value)[:80]!r}")
        if len(items) > MAX_SEEDS:
            raise CbmctlError(f"{where}: at most {MAX_SEEDS} seeds (each trains one more model), got {len(items)}")
        seeds = [_convert(item.strip() if isinstance(item, str) else item, "int", f"{where}: each seed")
                 for item in items]
        if len(set(seeds)) != len(seeds):
            raise CbmctlError(f"{where}: a seed is listed twice")
    for number in seeds:
        if not 0 <= number < SEED_LIMIT:
            raise CbmctlError(f"{where}: a seed must be in [0, 2^32) (the random generators take 32-bit seeds), "
                              f"got {number}")
    return seeds
