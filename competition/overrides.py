"""The one router of command-line `KEY=VALUE` overrides: every command sends its overrides here.

Each item is parsed once (`config.parse_overrides`: the value is YAML, a malformed item is named)
and routed by the first part of its key to exactly one destination:

- `kaggle.KEY=...` -> `configs/kaggle.yaml` (prefix removed);
- `stack.KEY=...` -> `configs/stack.yaml` (prefix removed);
- `model.KEY=...` / `profile.KEY=...` -> the model's YAML / the trainer profile (prefix removed);
  this forces a destination (`model.seed=3` is the model's init seed, plain `seed=3` the
  profile's first training seed);
- a key of `configs/quality.yaml` (`budget=quick`, `experiment=...`) -> that file, for
  `bench-quality` and `bench-ladder` only (they pass the file's keys), where it wins over a competition key of the same name;
- a `CompetitionConfig` key (`experiment`, `data_dir`, `models`, `folds.k`, ...) -> `configs/competition.yaml`;
- a `Profile` key (`epochs`, `batch_size`, `policy`, `seeds`, `tta`, `augment.*`, `cache_prefix`, ...)
  -> the trainer profile `configs/profiles/<profile>.yaml`;
- any other key -> the model's YAML `configs/models/<name>.yaml` (`optimizer.lr`, `head.dropout`, `weights`, ...).

Precedence (the only statement of it): the command line wins over every YAML file. For the
trainer: command line > the profile's `per_model:` entry for the model > the profile's own keys >
the model's YAML (a profile value replaces the YAML's unless the command line sets that model key).

A command takes only some destinations (`COMMANDS`); an override for one it does not take is
refused with one line naming the key and the commands that take it, never ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from competition.config import CompetitionConfig, apply_overrides, parse_overrides, validate
from competition.errors import ConfigError

Destination = Literal["competition", "stack", "kaggle", "quality", "profile", "model"]
PREFIXED: tuple[Destination, ...] = ("kaggle", "stack", "model", "profile")  # `kaggle.`, `stack.`, `model.`, `profile.`

WHERE: dict[Destination, str] = {
    "competition": "configs/competition.yaml",
    "stack": "configs/stack.yaml (stack.KEY=VALUE)",
    "kaggle": "configs/kaggle.yaml (kaggle.KEY=VALUE)",
    "quality": "the benchmark's config (configs/quality.yaml; bench-engine: configs/bench_engine.yaml)",
    "profile": "the trainer profile (configs/profiles/)",
    "model": "the model's config (configs/models/<name>.yaml)",
}

_DATA: frozenset[Destination] = frozenset({"competition"})
_KAGGLE: frozenset[Destination] = frozenset({"competition", "kaggle"})
_TRAINER: frozenset[Destination] = frozenset({"profile", "model"})
_STACK: frozenset[Destination] = frozenset({"stack"})
_QUALITY: frozenset[Destination] = frozenset({"quality"})
COMMANDS: dict[str, frozenset[Destination]] = {
    "data": _DATA,
    "simulate": _DATA,
    "folds": _DATA,
    "validate": _DATA,
    "report": _DATA,
    "models": frozenset({"model"}),
    "train": _DATA | _TRAINER,
    "stack": _DATA | _STACK,
    "all": _DATA | _STACK | _TRAINER,
    "bench-quality": _DATA | _STACK | _QUALITY | _TRAINER,
    "submit": _KAGGLE,
    "lb": _KAGGLE,
    "kernel": _KAGGLE | _STACK | _TRAINER,
    "kernel-push": _KAGGLE,
    "kernel-status": _KAGGLE,
    "kernel-output": _KAGGLE,
    "bench-ladder": _DATA | _STACK | _QUALITY | _TRAINER,
    "bench-engine": _DATA | _STACK | _QUALITY | _TRAINER,  # its `quality` keys are configs/bench_engine.yaml's
}


@dataclass(frozen=True)
class Overrides:
    """One command's overrides by destination, each a `KEY=VALUE` for that file (prefix removed), in the order given.

    `trainer` keeps the profile and model items as they were given (prefixes included), for a step
    that hands them on to `train` (`make all`, `bench-quality`, the kernel's steps), which routes them again.
    """

    command: str
    competition: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)
    kaggle: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    trainer: list[str] = field(default_factory=list)

    def apply_competition(self, cfg: CompetitionConfig) -> CompetitionConfig:
        """`cfg` with the competition overrides applied and validated (errors say they came from the command line).

        A `work_dir` that was null (it is `data_dir`) follows `data_dir=elsewhere` unless `work_dir=` is given too:
        otherwise the folds and cache of another competition folder would land in the default one."""
        if not self.competition:
            return cfg
        base = cfg.model_dump(mode="json")
        if cfg.work_dir_follows_data_dir:  # null in the YAML: it follows an overridden data_dir too
            base["work_dir"] = None
        return validate(CompetitionConfig, apply_overrides(base, self.competition), "command line", self.competition)


def _profile_keys() -> set[str]:
    from competition.training.profiles import Profile  # the trainer's schema, only when a key needs it

    return set(Profile.model_fields)


def destination(keys: Sequence[str], quality_keys: Collection[str] = ()) -> Destination:
    """Where an override with these key parts goes (before the command's refusal)."""
    first = keys[0]
    if len(keys) > 1 and first in PREFIXED:
        return first
    if first in quality_keys:
        return "quality"
    if first in CompetitionConfig.model_fields:
        return "competition"
    if first in _profile_keys():
        return "profile"
    return "model"


def takers(dest: Destination) -> list[str]:
    return [name for name, accepted in COMMANDS.items() if dest in accepted]


def _refusal(command: str, item: str, key: str, dest: Destination) -> str:
    accepted = COMMANDS[command]
    what = ", ".join(WHERE[d] for d in ("competition", "stack", "kaggle", "quality", "profile", "model") if d in accepted)
    elsewhere = f"{WHERE[dest]}, taken only by {', '.join(takers(dest))}"
    if dest == "model":  # the fallback: most often a misspelt key of this command
        return f"`{command}` does not take {item!r}: unknown key {key!r} (check the spelling); `{command}` takes keys of {what}; other keys go to {elsewhere}"
    return f"`{command}` does not take {item!r}: {key!r} goes to {elsewhere}; `{command}` takes keys of {what}"


def route(items: Sequence[str] | None, command: str, quality_keys: Collection[str] = ()) -> Overrides:
    """Parse and route `command`'s overrides; refuse one whose destination `command` does not take (docs/architecture.md, "Override routing").

    `quality_keys`: the top-level keys of the benchmark's config (configs/quality.yaml; bench-engine: configs/bench_engine.yaml), given by the commands that take them
    (so this module imports no benchmark).
    """
    if command not in COMMANDS:
        raise ValueError(f"no override routing for command {command!r}")
    if bool(quality_keys) != ("quality" in COMMANDS[command]):
        raise ValueError(f"quality_keys are for the benchmarks with a config of their own only, and they need them (command {command!r})")
    items = list(items or [])
    routed = Overrides(command)
    for item, (keys, _) in zip(items, parse_overrides(items), strict=True):  # the syntax of every item first
        dest = destination(keys, quality_keys)
        if dest not in COMMANDS[command]:
            raise ConfigError(_refusal(command, item, ".".join(keys), dest))
        key, raw = item.partition("=")[0].strip(), item.partition("=")[2]
        own = key.split(".", 1)[1] if len(keys) > 1 and keys[0] in PREFIXED else key
        getattr(routed, dest).append(f"{own}={raw}")
        if dest in ("profile", "model"):
            routed.trainer.append(item)
    return routed
