"""YAML configuration: load, apply command-line overrides, validate with clear errors.

Every config file has a pydantic schema with `extra="forbid"`, so a typo is an error rather
than a silently ignored key. Errors name the file, the dotted key and what was expected.
Overrides are `dotted.key=value` strings; the value is parsed as YAML (so `5`, `true`,
`[a, b]` and `null` mean what they look like).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from competition.errors import ConfigError
from competition.fingerprint import of_json

CONFIG_DIR = Path("configs")
COMPETITION_CONFIG = CONFIG_DIR / "competition.yaml"

S = TypeVar("S", bound=BaseModel)

# Folders beside the runs in runs/<experiment>/ (stacker, report, bench-quality's scored CSVs): never run names.
STACK_FOLDER, REPORT_FOLDER, SUBMISSIONS_FOLDER = "stack", "report", "submissions"
RESERVED_RUN_NAMES = (STACK_FOLDER, REPORT_FOLDER, SUBMISSIONS_FOLDER)
# Beside the experiments in runs/: the Kaggle kernel and dataset builds, the ledger, the synced leaderboards.
KAGGLE_FOLDER, LEDGER_FILE, LEADERBOARD_FOLDER, LB_PLOT_FILE = "kaggle", "ledger.sqlite", "leaderboard", "lb_cv_vs_lb.png"


def numbers_only(annotation: Any) -> bool:
    """Whether a field of this type takes an int or a float but not a bool: `float`, `int | None` do; `bool | int`,
    `list[int]` (a list, not a number) do not."""
    admitted = set(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else {annotation}
    return bool(admitted & {int, float}) and bool not in admitted


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are not coerced loosely (pydantic's lax mode
    reads `true` as 1 for a number; here it is an error)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and numbers_only(field.annotation):
            raise PydanticCustomError("bool_for_number", "expected a number")
        return value


class SimulateConfig(Strict):
    """Size and seed of the simulated competition (defaults: the real competition's sizes)."""

    n_train: int = Field(1604, ge=20)
    n_test: int = Field(8424, ge=10)
    seed: int = 2017
    machine_generated_fraction: float = Field(0.6, ge=0.0, lt=1.0)
    public_fraction: float = Field(0.3, gt=0.0, lt=1.0)


class FoldsConfig(Strict):
    """K folds x R repeats, stratified by label, optionally grouped by exact angle."""

    k: int = Field(5, ge=2)
    repeats: int = Field(1, ge=1)
    seed: int = 42
    group_by_angle: bool = False


EngineName = Literal["local", "ray"]


class RayConfig(Strict):
    """How `engine: ray` reaches its cluster (configs/competition.yaml, `ray:`)."""

    address: str | None = Field(
        None, description="null: a local Ray started and stopped by the harness; auto: the cluster this machine belongs to; HOST:PORT: that head"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray the harness starts (null: all of this machine's)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the local Ray the harness starts (null: those Ray finds)")
    max_retries: int = Field(3, ge=0, description="reruns of a unit whose worker process or node died (a user error is never retried)")

    @field_validator("address")
    @classmethod
    def _null_auto_or_host_port(cls, value: str | None) -> str | None:
        """null, `auto` or HOST:PORT (a hostname, an IPv4 address or a bracketed IPv6 one; port 1-65535), checked when the
        config is read, whichever engine runs; a Ray Client address (ray://) is refused (untested here)."""
        if value is None or value == "auto" or parse_host_port(value) is not None:
            return value
        raise PydanticCustomError(  # not ValueError: its message would start "Value error, "
            "ray_address", "expected null, auto or HOST:PORT with a port 1-65535 (the head's GCS port, 6379 unless changed; ray:// is not supported)"
        )

    @model_validator(mode="after")
    def _sizes_only_for_a_local_ray(self) -> RayConfig:
        """`num_cpus` and `num_gpus` size the local Ray the harness starts; a cluster has what its nodes were started with."""
        if self.address is not None and (self.num_cpus is not None or self.num_gpus is not None):
            raise PydanticCustomError(
                "ray_sizes",
                "ray.num_cpus and ray.num_gpus size a local Ray (ray.address: null); the cluster at ray.address={address} "
                "has the resources its nodes were started with: set them to null",
                {"address": self.address},
            )
        return self


HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<port>[0-9]{1,5})")


def parse_host_port(address: str) -> tuple[str, int] | None:
    """`(host, port)` of a HOST:PORT address (an IPv6 host keeps its brackets), or None when it is not one or the port is outside 1-65535."""
    match = HOST_PORT.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return None
    return match["host"], int(match["port"])


class CompetitionConfig(Strict):
    """Where the competition's files live, and the settings of the data steps."""

    slug: str = "statoil-iceberg-classifier-challenge"
    experiment: str = "baseline"
    data_dir: Path = Path("data")  # the competition's files as they are (plain, .7z, zip); only read, never written by the flow
    work_dir: Path = Field(None, validate_default=True)  # the harness's own derived files: cache/ (extracted archives, parsed arrays), folds
    runs_dir: Path = Path("runs")
    submissions_dir: Path = Path("submissions")
    models: list[str] = Field(default_factory=lambda: ["vgg16_angle", "tf_efficientnet_lite0", "mobilenetv2_100"], min_length=1)
    simulate: SimulateConfig = SimulateConfig()
    folds: FoldsConfig = FoldsConfig()
    engine: EngineName = "local"  # where training units and stacker studies run: competition.engine
    ray: RayConfig = RayConfig()
    _work_dir_given: bool = PrivateAttr(True)  # False: work_dir was null or absent, so it follows data_dir

    @model_validator(mode="wrap")
    @classmethod
    def _remember_work_dir_given(cls, data: Any, handler: ModelWrapValidatorHandler[CompetitionConfig]) -> CompetitionConfig:
        """Remember whether `work_dir` was given, so that `data_dir=elsewhere` on the command line moves a work_dir that
        follows data_dir and leaves a given one (the Kaggle kernel ships `work_dir: data` beside `data_dir: data`)."""
        if isinstance(data, CompetitionConfig):  # an assignment (validate_assignment) revalidates the model itself
            given = data._work_dir_given
        else:
            given = not isinstance(data, dict) or data.get("work_dir") is not None
        config = handler(data)
        config._work_dir_given = given
        return config

    @property
    def work_dir_follows_data_dir(self) -> bool:
        """True when `work_dir` was null or absent (it is `data_dir`), False when it was given."""
        return not self._work_dir_given

    @field_validator("work_dir", mode="before")
    @classmethod
    def _work_dir_follows_data_dir(cls, value: Any, info: ValidationInfo) -> Any:
        """An absent or null `work_dir` is `data_dir`, so `data_dir=elsewhere` keeps its folds and cache beside it.

        Refused (one line naming `work_dir`) when that `data_dir` exists but is not writable (a Kaggle
        kernel's /kaggle/input, a shared read-only copy): the harness would fail at its first write.
        """
        if value is not None:
            return value
        data_dir = info.data.get("data_dir")
        if data_dir is None:
            raise PydanticCustomError("work_dir_unset", "null follows data_dir, which is not valid")
        if data_dir.is_dir() and not os.access(data_dir, os.W_OK):
            raise PydanticCustomError(
                "work_dir_unset",
                "null means data_dir ({data_dir}), which is not writable: set work_dir=<a writable folder> for the harness's cache and folds",
                {"data_dir": str(data_dir)},
            )
        return data_dir

    @property
    def train_json(self) -> Path:
        """Where `make simulate` and `make data` write the plain training file; readers use competition.data.files."""
        return self.data_dir / "train.json"

    @property
    def test_json(self) -> Path:
        return self.data_dir / "test.json"

    @property
    def sample_submission(self) -> Path:
        return self.data_dir / "sample_submission.csv"

    @property
    def solution_csv(self) -> Path:
        """Hidden answers of simulated data; never read by training or stacking."""
        return self.data_dir / "hidden" / "solution.csv"

    @property
    def cache_dir(self) -> Path:
        return self.work_dir / "cache"

    @property
    def folds_csv(self) -> Path:
        return self.work_dir / "folds.csv"

    @property
    def folds_json(self) -> Path:
        return self.work_dir / "folds.json"

    # The run folders (docs/architecture.md, "Artefact formats"): every step builds these paths from here.

    @property
    def experiment_dir(self) -> Path:
        """runs/<experiment>/: the experiment's runs, its stack and its report."""
        return self.runs_dir / self.experiment

    def run_dir(self, name: str) -> Path:
        """runs/<experiment>/<name>/: one trained run (the model's name, or the run name given with --name)."""
        return self.experiment_dir / name

    @property
    def stack_dir(self) -> Path:
        """runs/<experiment>/stack/: the stacker's outputs (never mistaken for a model run)."""
        return self.experiment_dir / STACK_FOLDER

    @property
    def report_dir(self) -> Path:
        """runs/<experiment>/report/: the HTML report."""
        return self.experiment_dir / REPORT_FOLDER

    @property
    def experiment_submissions_dir(self) -> Path:
        """runs/<experiment>/submissions/: bench-quality's scored CSVs (the flow's submissions go to `submissions_dir`)."""
        return self.experiment_dir / SUBMISSIONS_FOLDER

    @property
    def kaggle_dir(self) -> Path:
        """runs/kaggle/: the kernel and dataset `make kernel` builds, and the kernel's downloaded output."""
        return self.runs_dir / KAGGLE_FOLDER

    @property
    def ledger_path(self) -> Path:
        """runs/ledger.sqlite: every submission and its scores."""
        return self.runs_dir / LEDGER_FILE

    @property
    def leaderboard_dir(self) -> Path:
        """runs/leaderboard/: the leaderboards `make lb` downloads."""
        return self.runs_dir / LEADERBOARD_FOLDER

    @property
    def lb_plot(self) -> Path:
        """runs/lb_cv_vs_lb.png: CV against the leaderboard scores."""
        return self.runs_dir / LB_PLOT_FILE


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Turn `a.b=1` strings into (["a", "b"], 1) pairs, rejecting malformed ones."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. folds.k=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set (creating sections as needed)."""
    out = copy.deepcopy(data)
    for keys, value in parse_overrides(overrides):
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(keys)}: '{key}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def described(value: Any) -> str:
    """A value as a config error shows it: what YAML gave in words for an empty value, a section or a list, else its repr."""
    if value is None:
        return "an empty value (null, or nothing after the colon)"
    if isinstance(value, dict):
        return f"a section (keys {', '.join(map(str, value))})" if value else "an empty section"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    return repr(value)


def _not_found(path: Path) -> str:
    """Why a config file is missing: a relative configs/ path is read from the working folder (the repository root)."""
    if path.is_absolute() or path.parts[:1] != CONFIG_DIR.parts or Path.cwd().joinpath(CONFIG_DIR).is_dir():
        return f"{path}: config file not found"
    repo = Path(__file__).resolve().parents[1]
    where = f" ({repo})" if (repo / CONFIG_DIR).is_dir() else ""
    return f"{path}: config file not found: the harness reads configs/ from the working folder; run it from the repository's root{where}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a ConfigError that names the file."""
    if not path.is_file():
        raise ConfigError(_not_found(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    return data


def validate(schema: type[S], data: dict[str, Any], source: str, overridden: Sequence[str] = ()) -> S:
    """Validate `data` against `schema`; errors name `source`, the dotted key and the expectation."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            origin = " (from a command-line override)" if any(o.partition("=")[0].strip() == key for o in overridden) else ""
            got = "" if err["type"] == "missing" else f", got {described(err.get('input'))}"
            expected = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{source}: key '{key}'{origin}: {expected}{got}")
        raise ConfigError("\n".join(lines)) from None


def load(path: Path | str, schema: type[S], overrides: Sequence[str] = ()) -> S:
    """Load one YAML config file, apply overrides, validate."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    return validate(schema, data, str(path), overrides)


def load_competition(overrides: Sequence[str] = (), path: Path | str = COMPETITION_CONFIG) -> CompetitionConfig:
    """The competition config every step starts from."""
    return load(path, CompetitionConfig, overrides)


def config_hash(cfg: BaseModel) -> str:
    """A stable hash of a validated config, recorded in every artefact it produced."""
    return of_json(cfg.model_dump(mode="json"))
