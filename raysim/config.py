"""Typed configuration: run configs and ablation matrices, loaded from YAML.

YAML only overrides the defaults below. Unknown keys, wrong types and impossible
combinations fail at load time with `FILE: dotted.path: reason`. A file may
`include:` a base file (deep-merged beneath it); `--set a.b=c` overrides come last.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from raysim.errors import UserError

PROFILES = ("smoke", "local", "cloud")
METRICS = (
    "nrmse_one_step",
    "nrmse_rollout",
    "nrmse_one_step_operator",
    "nrmse_rollout_operator",
    "nrmse_ttc",
    "nrmse_ttc_random",
    "nrmse_persistence",
    "conservation_gap",
    "bc_violation",
    "ttc_improvement_pct",
    "operator_final_loss",
    "diffusion_final_loss",
    "params",
    "train_seconds",
)


class ConfigErrors(UserError):
    """Several problems found in one file; rendered one per line."""

    def __init__(self, errors: list[UserError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


# --------------------------------------------------------------------------- schema


@dataclass
class GenerateConfig:
    """Burgers data raysim generates itself when `data.path` is not given."""

    nu: float = 0.01
    samples: int = 256
    nx: int = 1024
    nt: int = 201
    t_end: float = 2.0
    seed: int = 0


@dataclass
class DataConfig:
    """Where trajectories come from and how they are strided and split."""

    path: str | None = None  # a PDEBench-layout HDF5 file; None: generate into cache_dir
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    cache_dir: str = "~/.cache/raysim/data"
    x_stride: int = 4  # 1024 -> 256 points
    t_stride: int = 5  # 201 -> 41 frames
    splits: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train, val, test
    split_seed: int = 0
    loader_workers: int = 0


@dataclass
class ModelConfig:
    """The latent operator: encoder -> processor -> decoder."""

    processor: Literal["u_shaped", "pdet_stack"] = "pdet_stack"
    attention: Literal["standard", "channel_separated"] = "standard"
    encoder: Literal["perceiver", "patch"] = "perceiver"
    tokens: int = 128
    latent_dim: int = 64
    heads: int = 4
    group_size: int = 16  # channels per group, channel_separated attention
    depth: int = 4  # pdet_stack: identical blocks
    stage_depths: list[int] = field(default_factory=lambda: [1, 2])  # u_shaped: down stages, last = bottleneck
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    fourier_features: int = 16
    attention_locality: bool = True  # processor self-attention gets a learned, periodic distance bias per head
    decoder_point_features: bool = False  # decoder queries also see the input's local stencil at their point
    family: Literal["upt", "fno"] = "upt"  # upt: the latent operator above; fno: neuraloperator's FNO (fno_* below)
    fno_modes: int = 16  # Fourier modes kept per spectral layer; at most half the strided grid's points
    fno_width: int = 64  # hidden channels
    fno_layers: int = 4  # spectral layers


@dataclass
class StageConfig:
    """Optimisation settings shared by both training stages."""

    epochs: int = 10
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 8e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.99  # 0 disables EMA
    ema_warmup: bool = True  # decay of update n: min(ema_decay, (1 + n) / (10 + n)), so early weights fade fast
    early_stopping_patience: int = 0  # epochs without val improvement; 0 disables
    max_nonfinite_steps: int = 20
    max_steps_per_epoch: int | None = None
    validation_samples: int | None = 512  # validation pairs per epoch, spread evenly over the split; None: all
    final_loss_threshold: float = 1e-3  # milestone: final training loss below this
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on GPU, off on CPU


@dataclass
class OperatorStageConfig(StageConfig):
    """Operator stage: physical-space next-step loss, optionally unrolled with the pushforward trick."""

    loss: Literal["mse", "relative"] = "mse"  # relative: per-sample, per-time squared nRMSE (as in the metric)
    unroll_steps: int = 1  # the longest unroll: steps before the last run without gradient (pushforward)
    unroll_curriculum: float = 0.5  # fraction of training over which the longest unroll grows from 1 to unroll_steps
    input_noise: float = 0.0  # std of Gaussian noise added to the input state, as a fraction of the data's std


@dataclass
class DiffusionStageConfig(StageConfig):
    """Diffusion residual corrector (PDE-Refiner style)."""

    enabled: bool = True
    noise_steps: int = 3  # K refinement steps
    sigma_min: float = 2e-3  # smallest noise level; sigma_k = sigma_min ** (k / K)
    hidden: int = 48
    layers: int = 4
    final_loss_threshold: float = 1e-2
    # held_out: teacher-forced residuals on validation trajectories the operator never trained on (half train the
    # corrector, half validate it); rollout: on the operator's own rollout states; teacher_forced: in-sample
    residuals: Literal["held_out", "rollout", "teacher_forced"] = "held_out"
    residual_trajectories: int | None = 1024  # at most this many trajectories per split rolled out; None: all
    rollout_max_nrmse: float = 1.0  # a rollout's pairs end where its state's nRMSE against the truth exceeds this


@dataclass
class EvaluationConfig:
    """Test-set evaluation: rollout horizon, TTC budget."""

    horizon: int | None = None  # rollout steps; None: the whole test window
    ttc_candidates: int = 4
    corrector_samples: int = 4  # samples averaged for the baseline prediction (the corrector mean)
    batch_size: int = 64
    max_trajectories: int | None = None
    conservation_weight: float = 1.0
    seed: int = 0
    reward_modes: int | None = 32  # TTC scores candidates on Fourier modes below this only; None: every mode
    ttc_operator_candidate: bool = False  # true: TTC candidate 0 is the operator alone, the others corrector samples


@dataclass
class LoggingConfig:
    """W&B through Ray's integration; offline unless a key is configured."""

    wandb: bool = True
    project: str = "raysim"
    mode: Literal["offline", "online", "disabled"] = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class ResourcesConfig:
    """What each stage's TorchTrainer asks the cluster for."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    accelerator_type: str | None = None
    force_cpu: bool = False  # run on CPU even where a (fake) GPU is visible
    torch_threads: int | None = None
    min_micro_batch: int = 1  # the floor of out-of-memory retries (halved micro-batch, doubled accumulation)
    cost_per_gpu_hour: float = 1.89  # USD, the guide's A100 rate


@dataclass
class RunConfig:
    """One configuration: data, model, both stages, evaluation."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    operator: OperatorStageConfig = field(default_factory=OperatorStageConfig)
    diffusion: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass
class ArmConfig:
    """One arm of a matrix: overrides of the base config."""

    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    reference_values: dict[str, float] = field(default_factory=dict)  # e.g. earlier phases' numbers
    baseline: bool = False  # a reference point in the report (e.g. a standard FNO); no hypothesis may name it


@dataclass
class ProfileConfig:
    """A scale of the same study (smoke / local / cloud)."""

    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    max_concurrent_trials: int | None = None


@dataclass
class HypothesisConfig:
    """`within`: |ratio - 1| <= tolerance. `better_by`: ratio <= 1 - margin."""

    id: str
    candidate: str
    test: Literal["within", "better_by"]
    description: str = ""
    reference: str | None = None  # an arm of the study
    reference_value: float | None = None  # or a fixed number
    metric: str | None = None  # default: the matrix's metric (the operator's own rollout, nrmse_rollout_operator)
    tolerance: float = 0.05
    margin: float = 0.10


@dataclass
class PromotionConfig:
    """Gate for `raysim promote`."""

    margin: float = 0.0  # better than the champion by at least this fraction
    physics_tolerance: float = 0.05  # conservation/BC may be at most this much worse


@dataclass
class MatrixConfig:
    """An ablation study: a base config, arms (or axes), seeds, profiles, hypotheses."""

    name: str
    base: str
    description: str = ""
    metric: str = "nrmse_rollout_operator"  # architecture hypotheses: the operator alone, without the corrector
    seeds: list[int] = field(default_factory=lambda: [0])
    default_profile: str = "local"
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values (cartesian)
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    hypotheses: list[HypothesisConfig] = field(default_factory=list)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    tags: list[str] = field(default_factory=list)
    source: str = ""  # the file it was loaded from (set by the loader)


# --------------------------------------------------------------------------- YAML


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its `include:` chain merged beneath it."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", file=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path), field=where) from None
    except UnicodeDecodeError:
        raise UserError("not a text file", file=str(path)) from None
    if data is None:
        raise UserError("empty file", file=str(path))
    if not isinstance(data, dict):
        raise UserError(f"top level must be a mapping, got {type(data).__name__}", file=str(path))
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str):
        raise UserError("must be a file path", file=str(path), field="include")
    base_path = (path.parent / include).resolve()
    if base_path in _seen:
        raise UserError("include cycle", file=str(path), field="include")
    if not base_path.is_file():
        raise UserError(f"included file {include} does not exist", file=str(path), field="include")
    return deep_merge(read_yaml(base_path, (*_seen, path.resolve())), data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`; mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_sets(sets: list[str] | None, file: str = "--set") -> dict[str, Any]:
    """`["a.b=3", "c=x"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected key=value, got {item!r}", file=file)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 4e-3 as a string
            value = float(value)
        out = deep_merge(out, nest_dotted(key.strip(), value))
    return out


def nest_dotted(key: str, value: Any) -> dict[str, Any]:
    """`("a.b", 1)` -> `{"a": {"b": 1}}`."""
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _convert(value: Any, tp: Any, file: str, path: str, errors: list[UserError]) -> Any:
    """Check `value` against the annotation `tp`; record problems in `errors`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, path, errors)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], file, path, errors)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(str(a) for a in get_args(tp))
            errors.append(UserError(f"must be one of {choices}, got {value!r}", file, path))
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(UserError(f"must be a list, got {type(value).__name__}", file, path))
            return value
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, file, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(UserError(f"must be a mapping, got {type(value).__name__}", file, path))
            return value
        _, value_tp = get_args(tp)
        return {str(k): _convert(v, value_tp, file, f"{path}.{k}", errors) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(UserError(f"must be true or false, got {value!r}", file, path))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(UserError(f"must be an integer, got {value!r}", file, path))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(UserError(f"must be a number, got {value!r}", file, path))
            return value
        if not math.isfinite(value):
            errors.append(UserError(f"must be finite, got {value!r}", file, path))
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(UserError(f"must be a string, got {value!r}", file, path))
        return value
    errors.append(UserError(f"must be {_type_name(tp)}, got {value!r}", file, path))
    return value


def _build(cls: type, data: Any, file: str, path: str, errors: list[UserError]) -> Any:
    if not isinstance(data, dict):
        errors.append(UserError(f"must be a mapping, got {type(data).__name__}", file, path or "top level"))
        data = {}
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields or key == "source":
            known = ", ".join(n for n in fields if n != "source")
            errors.append(UserError(f"unknown key (known: {known})", file, where))
            continue
        kwargs[key] = _convert(value, hints[key], file, where, errors)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            errors.append(UserError("required key is missing", file, f"{path}.{name}" if path else name))
            kwargs[name] = None
    return cls(**kwargs)


# --------------------------------------------------------------------------- validation


def _positive(errors: list[UserError], file: str, obj: Any, prefix: str, names: str) -> None:
    for name in names.split():
        value = getattr(obj, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            errors.append(UserError(f"must be a positive number, got {value}", file, f"{prefix}.{name}"))


def validate_run(cfg: RunConfig, file: str, errors: list[UserError], check_paths: bool = True) -> None:
    """Cross-field rules of a run config."""
    d, m = cfg.data, cfg.model
    _positive(errors, file, d, "data", "x_stride t_stride")
    _positive(errors, file, d.generate, "data.generate", "nu samples nx nt t_end")
    if isinstance(d.splits, list) and all(isinstance(s, float) for s in d.splits):
        if len(d.splits) != 3 or any(s <= 0 for s in d.splits) or abs(sum(d.splits) - 1) > 1e-6:
            errors.append(UserError(f"must be 3 positive fractions summing to 1, got {d.splits}", file, "data.splits"))
    if check_paths and d.path is not None and isinstance(d.path, str) and not Path(d.path).expanduser().is_file():
        errors.append(UserError(f"data file {d.path} does not exist", file, "data.path"))
    if d.generate.nt and d.t_stride and isinstance(d.generate.nt, int) and d.path is None:
        if (d.generate.nt - 1) // max(d.t_stride, 1) < 2:
            errors.append(UserError("fewer than 3 frames remain after striding", file, "data.t_stride"))

    _positive(errors, file, m, "model", "tokens latent_dim heads group_size depth mlp_ratio fourier_features")
    _positive(errors, file, m, "model", "fno_modes fno_width fno_layers")
    if m.family == "fno" and d.path is None and m.fno_modes > 0 and d.x_stride > 0:
        points = d.generate.nx // d.x_stride  # a data file's grid is known only when the model first runs
        if m.fno_modes > points // 2:
            errors.append(
                UserError(
                    f"must be at most {points // 2}, half the {points} grid points, got {m.fno_modes}",
                    file,
                    "model.fno_modes",
                )
            )
    if isinstance(m.latent_dim, int) and isinstance(m.heads, int) and m.heads > 0 and m.latent_dim % m.heads:
        errors.append(UserError(f"latent_dim {m.latent_dim} is not divisible by heads {m.heads}", file, "model.heads"))
    if m.attention == "channel_separated" and isinstance(m.group_size, int) and m.group_size > 0:
        if isinstance(m.latent_dim, int) and m.latent_dim % m.group_size:
            errors.append(
                UserError(
                    f"channel groups of {m.group_size} do not divide latent_dim {m.latent_dim}",
                    file,
                    "model.group_size",
                )
            )
    if isinstance(m.drop_path, float) and not 0 <= m.drop_path < 1:
        errors.append(UserError(f"must be in [0, 1), got {m.drop_path}", file, "model.drop_path"))
    if m.processor == "u_shaped" and isinstance(m.stage_depths, list) and isinstance(m.tokens, int):
        if not m.stage_depths or any(not isinstance(s, int) or s < 1 for s in m.stage_depths):
            errors.append(UserError("must be a non-empty list of positive integers", file, "model.stage_depths"))
        else:
            halvings = len(m.stage_depths) - 1
            if m.tokens % (2**halvings) or m.tokens // (2**halvings) < 2:
                errors.append(
                    UserError(
                        f"{m.tokens} tokens cannot halve {halvings} times for {len(m.stage_depths)} stages",
                        file,
                        "model.tokens",
                    )
                )

    for name, stage in (("operator", cfg.operator), ("diffusion", cfg.diffusion)):
        _positive(errors, file, stage, name, "epochs batch_size grad_accum_steps grad_clip final_loss_threshold")
        if isinstance(stage.lr, float) and not 1e-6 <= stage.lr <= 1.0:
            errors.append(UserError(f"learning rate must be in [1e-6, 1], got {stage.lr}", file, f"{name}.lr"))
        if isinstance(stage.ema_decay, float) and not 0 <= stage.ema_decay < 1:
            errors.append(UserError(f"must be in [0, 1), got {stage.ema_decay}", file, f"{name}.ema_decay"))
        if isinstance(stage.warmup_fraction, float) and not 0 <= stage.warmup_fraction < 1:
            errors.append(UserError(f"must be in [0, 1), got {stage.warmup_fraction}", file, f"{name}.warmup_fraction"))
        if isinstance(stage.weight_decay, float) and stage.weight_decay < 0:
            errors.append(UserError(f"must be >= 0, got {stage.weight_decay}", file, f"{name}.weight_decay"))
        if stage.max_steps_per_epoch is not None:
            _positive(errors, file, stage, name, "max_steps_per_epoch")
        if stage.validation_samples is not None:
            _positive(errors, file, stage, name, "validation_samples")
    _positive(errors, file, cfg.operator, "operator", "unroll_steps")
    op = cfg.operator
    if isinstance(op.unroll_curriculum, float) and not 0 <= op.unroll_curriculum <= 1:
        errors.append(UserError(f"must be in [0, 1], got {op.unroll_curriculum}", file, "operator.unroll_curriculum"))
    if isinstance(op.input_noise, float) and not 0 <= op.input_noise < 1:
        errors.append(UserError(f"must be in [0, 1), got {op.input_noise}", file, "operator.input_noise"))
    if isinstance(op.unroll_steps, int) and d.path is None and isinstance(d.generate.nt, int):
        frames = (d.generate.nt - 1) // max(d.t_stride, 1) + 1 if isinstance(d.t_stride, int) else None
        if frames is not None and op.unroll_steps >= frames:
            errors.append(UserError(f"must be below the {frames} frames left after striding, got {op.unroll_steps}",
                                    file, "operator.unroll_steps"))
    _positive(errors, file, cfg.diffusion, "diffusion", "noise_steps sigma_min hidden layers")
    if isinstance(cfg.diffusion.sigma_min, float) and not 0 < cfg.diffusion.sigma_min < 1:
        errors.append(UserError(f"must be in (0, 1), got {cfg.diffusion.sigma_min}", file, "diffusion.sigma_min"))
    if cfg.diffusion.residual_trajectories is not None:
        _positive(errors, file, cfg.diffusion, "diffusion", "residual_trajectories")
    _positive(errors, file, cfg.diffusion, "diffusion", "rollout_max_nrmse")
    _positive(errors, file, cfg.evaluation, "evaluation", "ttc_candidates corrector_samples batch_size")
    for name in ("horizon", "max_trajectories", "reward_modes"):
        if getattr(cfg.evaluation, name) is not None:
            _positive(errors, file, cfg.evaluation, "evaluation", name)
    _positive(errors, file, cfg.resources, "resources", "num_workers cpus_per_worker min_micro_batch")
    if cfg.resources.torch_threads is not None:
        _positive(errors, file, cfg.resources, "resources", "torch_threads")
    if cfg.resources.accelerator_type and not cfg.resources.use_gpu:
        errors.append(UserError("accelerator_type needs use_gpu: true", file, "resources.accelerator_type"))


def build_run(data: dict[str, Any], file: str, check_paths: bool = True) -> RunConfig:
    """A validated RunConfig from a merged mapping, or ConfigErrors."""
    errors: list[UserError] = []
    cfg = _build(RunConfig, data, file, "", errors)
    if not errors:
        validate_run(cfg, file, errors, check_paths)
    if errors:
        raise ConfigErrors(errors)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (YAML/JSON-ready) of a config dataclass."""
    return dataclasses.asdict(cfg)


def is_matrix(data: dict[str, Any]) -> bool:
    """Whether a YAML mapping is an ablation matrix rather than a run config."""
    return "arms" in data or "axes" in data or "hypotheses" in data


# --------------------------------------------------------------------------- loading


def load_run(path: str | Path, sets: list[str] | None = None) -> RunConfig:
    """A run config file (with includes) plus `--set` overrides."""
    data = deep_merge(read_yaml(path), parse_sets(sets))
    return build_run(data, str(path))


def load_matrix(path: str | Path) -> MatrixConfig:
    """An ablation matrix, checked on its own (arms are checked by `expand_arms`)."""
    file = str(path)
    data = read_yaml(path)
    errors: list[UserError] = []
    matrix = _build(MatrixConfig, data, file, "", errors)
    if errors:
        raise ConfigErrors(errors)
    matrix.source = file
    base = Path(path).parent / matrix.base
    if not base.is_file():
        errors.append(UserError(f"base config {matrix.base} does not exist", file, "base"))
    if matrix.axes and matrix.arms:
        errors.append(UserError("give either arms or axes, not both", file, "axes"))
    if matrix.axes:
        matrix.arms = _arms_from_axes(matrix.axes)
    if not matrix.arms:
        errors.append(UserError("a matrix needs at least one arm", file, "arms"))
    if not matrix.seeds or len(set(matrix.seeds)) != len(matrix.seeds):
        errors.append(UserError("must be a non-empty list of distinct integers", file, "seeds"))
    for name in PROFILES:
        if name not in matrix.profiles:
            errors.append(UserError(f"profile {name} is missing", file, f"profiles.{name}"))
    if matrix.default_profile not in matrix.profiles:
        errors.append(UserError(f"no profile named {matrix.default_profile}", file, "default_profile"))
    if matrix.metric not in METRICS:
        errors.append(UserError(f"unknown metric {matrix.metric}", file, "metric"))
    ids = [h.id for h in matrix.hypotheses]
    for i, h in enumerate(matrix.hypotheses):
        where = f"hypotheses[{i}]"
        if ids.count(h.id) > 1:
            errors.append(UserError(f"duplicate hypothesis id {h.id}", file, f"{where}.id"))
        if h.candidate not in matrix.arms:
            errors.append(UserError(f"names arm {h.candidate!r}, which does not exist", file, f"{where}.candidate"))
        for role in ("candidate", "reference"):
            arm = getattr(h, role)
            if arm in matrix.arms and matrix.arms[arm].baseline:
                reason = f"names baseline arm {arm!r}, which no hypothesis may use"
                errors.append(UserError(reason, file, f"{where}.{role}"))
        if (h.reference is None) == (h.reference_value is None):
            errors.append(UserError("give exactly one of reference or reference_value", file, f"{where}.reference"))
        if h.reference is not None and h.reference not in matrix.arms:
            errors.append(UserError(f"names arm {h.reference!r}, which does not exist", file, f"{where}.reference"))
        if h.reference is not None and h.reference == h.candidate:
            errors.append(UserError(f"is the candidate arm {h.candidate!r}: a hypothesis compares two different arms",
                                    file, f"{where}.reference"))
        if h.reference_value is not None and h.reference_value <= 0:
            errors.append(UserError("must be positive", file, f"{where}.reference_value"))
        if h.metric is not None and h.metric not in METRICS:
            errors.append(UserError(f"unknown metric {h.metric}", file, f"{where}.metric"))
        for name in ("tolerance", "margin"):
            if not 0 < getattr(h, name) < 1:
                errors.append(UserError(f"must be in (0, 1), got {getattr(h, name)}", file, f"{where}.{name}"))
    if errors:
        raise ConfigErrors(errors)
    return matrix


def _arms_from_axes(axes: dict[str, list[Any]]) -> dict[str, ArmConfig]:
    keys = list(axes)
    arms = {}
    for values in itertools.product(*(axes[k] for k in keys)):
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values, strict=True))
        overrides: dict[str, Any] = {}
        for k, v in zip(keys, values, strict=True):
            overrides = deep_merge(overrides, nest_dotted(k, v))
        arms[name] = ArmConfig(overrides=overrides)
    return arms


def arm_mapping(
    matrix: MatrixConfig, arm: str, profile: str, seed: int, sets: list[str] | None = None
) -> dict[str, Any]:
    """The merged YAML mapping of one trial: base <- profile <- arm <- --set, with name and seed."""
    file = matrix.source
    if arm not in matrix.arms:
        raise UserError(f"unknown arm {arm!r} (arms: {', '.join(matrix.arms)})", file=file, field="--arm")
    if profile not in matrix.profiles:
        raise UserError(f"unknown profile {profile!r} (profiles: {', '.join(matrix.profiles)})", file, "--profile")
    data = read_yaml(Path(file).parent / matrix.base)
    data = deep_merge(data, matrix.profiles[profile].overrides)
    data = deep_merge(data, matrix.arms[arm].overrides)
    data = deep_merge(data, parse_sets(sets))
    data = deep_merge(data, {"name": arm, "seed": seed})
    return data


def resolve_arm(
    matrix: MatrixConfig, arm: str, profile: str, seed: int | None = None, sets: list[str] | None = None
) -> RunConfig:
    """The validated RunConfig of one arm under one profile and seed."""
    seeds = profile_seeds(matrix, profile)
    data = arm_mapping(matrix, arm, profile, seeds[0] if seed is None else seed, sets)
    try:
        return build_run(data, matrix.source)
    except ConfigErrors as exc:
        for e in exc.errors:
            e.field = f"arms.{arm}[{profile}].{e.field}" if e.field else f"arms.{arm}"
        raise ConfigErrors(exc.errors) from None


def profile_seeds(matrix: MatrixConfig, profile: str) -> list[int]:
    """The seeds a profile runs (its own list, else the matrix's)."""
    if profile not in matrix.profiles:
        known = ", ".join(matrix.profiles)
        raise UserError(f"unknown profile {profile!r} (profiles: {known})", matrix.source, "--profile")
    seeds = matrix.profiles[profile].seeds
    return list(seeds) if seeds else list(matrix.seeds)


def expand_arms(matrix: MatrixConfig, profile: str, sets: list[str] | None = None) -> dict[str, RunConfig]:
    """Every arm of the matrix resolved and validated under `profile` (first seed)."""
    errors: list[UserError] = []
    out = {}
    for arm in matrix.arms:
        try:
            out[arm] = resolve_arm(matrix, arm, profile, sets=sets)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigErrors(errors)
    return out


def load_any(path: str | Path) -> RunConfig | MatrixConfig:
    """A run config or a matrix, whichever the file is."""
    data = read_yaml(path)
    if is_matrix(data):
        return load_matrix(path)
    return build_run(data, str(path))
