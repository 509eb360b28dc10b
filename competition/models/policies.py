"""Fine-tuning policies over a model-agnostic block list (bottom/stem -> top/head).

The seed's four cases, decided here once for every framework; adapters only apply
"block b trains or not":

| data \\ domain | similar            | different      |
| ------------- | ------------------ | -------------- |
| small         | `head`             | `all_but_stem` |
| large         | `top:K` (K blocks) | `all`          |

`auto` picks the cell from the training-set size and a measured domain divergence.
"""

from __future__ import annotations

import re

from competition.errors import ConfigError
from competition.models.schema import AutoPolicyConfig, PolicyDecision

_TOP_K = re.compile(r"^top:(\d+)$")
NAMES = ("head", "top:K", "all_but_stem", "all", "auto")


def check_policy(policy: str) -> str:
    """Return `policy` if it is one of the known names, else a ConfigError listing them."""
    if policy in ("head", "all_but_stem", "all", "auto") or (_TOP_K.match(policy) and int(policy[4:]) >= 1):
        return policy
    raise ConfigError(f"key 'policy': expected one of {', '.join(NAMES)} (K >= 1, e.g. top:3), got {policy!r}")


def trainable_blocks(policy: str, blocks: list[str]) -> list[bool]:
    """Which blocks train under `policy` (the last block is the head and always trains)."""
    n = len(blocks)
    if policy == "head":
        k = 0
    elif policy == "all":
        return [True] * n
    elif policy == "all_but_stem":
        return [False] + [True] * (n - 1)
    elif match := _TOP_K.match(check_policy(policy)):
        k = int(match.group(1))
    else:
        raise ConfigError(f"policy {policy!r} must be resolved (auto -> a concrete policy) before it is applied")
    k = min(k, n - 1)
    return [False] * (n - 1 - k) + [True] * (k + 1)


def frozen_prefix(trainable: list[bool]) -> int:
    """Number of leading frozen blocks: their output can be computed once and cached."""
    count = 0
    for flag in trainable:
        if flag:
            break
        count += 1
    return count


def block_learning_rates(lr: float, decay: float, trainable: list[bool]) -> list[float]:
    """Discriminative rates: the head gets `lr`, each block below it `decay` times the one above."""
    n = len(trainable)
    return [lr * decay ** (n - 1 - b) if flag else 0.0 for b, flag in enumerate(trainable)]


def unfrozen_at_epoch(target: list[bool], epoch: int, every: int | None) -> list[bool]:
    """Gradual unfreezing: start with the head, unfreeze one more trainable block (top-down) every `every` epochs."""
    if every is None:
        return list(target)
    allowed = 1 + epoch // every
    out, opened = [False] * len(target), 0
    for b in range(len(target) - 1, -1, -1):
        if target[b] and opened < allowed:
            out[b], opened = True, opened + 1
    return out


def choose_auto(n_train: int, divergence: float, baseline: float, cfg: AutoPolicyConfig, measure: str) -> PolicyDecision:
    """The seed's 2 x 2 table: small/large by `cfg.large_n`, similar/different by divergence / photo baseline."""
    large = n_train >= cfg.large_n
    score = divergence / baseline
    different = score > cfg.different_above
    name = {(False, False): "head", (True, False): f"top:{cfg.top_k}", (False, True): "all_but_stem", (True, True): "all"}[(large, different)]
    reason = (
        f"n_train={n_train} is {'large' if large else 'small'} (large from {cfg.large_n}); "
        f"domain divergence {divergence:.3f} = {score:.2f} x natural photos' {baseline:.3f} ({measure}) is "
        f"{'different' if different else 'similar'} (different above {cfg.different_above:g} x) -> {name}"
    )
    numbers = {
        "n_train": n_train,
        "divergence": round(float(divergence), 4),
        "photo_divergence": round(float(baseline), 4),
        "score": round(float(score), 4),
        "large_n": cfg.large_n,
        "different_above": cfg.different_above,
    }
    return PolicyDecision(name=name, requested="auto", reason=reason, numbers=numbers)
