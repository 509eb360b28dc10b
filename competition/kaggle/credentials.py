"""Kaggle credentials: find them where the official client looks, never reveal them.

The harness only checks that credentials exist and learns the user name (kernel and dataset
ids start with it); the `kaggle` subprocess reads the secret itself. Nothing here prints,
logs, copies or bundles a key: error messages name the place to look, not its content.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from competition.errors import UserError

HOW_TO = (
    "create an API token at https://www.kaggle.com/settings/api and either save kaggle.json as "
    "~/.kaggle/kaggle.json (chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY, or export KAGGLE_API_TOKEN"
)


class CredentialsError(UserError):
    """Kaggle credentials are missing, malformed or rejected."""


@dataclass(frozen=True)
class Credentials:
    """Who the user is on Kaggle and where the secret was found (the secret itself is not kept)."""

    username: str | None
    source: str


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The folder the official client reads kaggle.json from (same rules as kaggle 2.x)."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    home = _home(env)
    legacy = home / ".kaggle"
    if legacy.exists():
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def _from_json_file(path: Path) -> Credentials:
    """Read the user name from kaggle.json, refusing files the client could not use."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialsError(f"{path}: not a readable JSON file; {HOW_TO}") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: expected a JSON object with 'username' and 'key'; {HOW_TO}")
    missing = [k for k in ("username", "key") if not isinstance(data.get(k), str) or not data[k].strip()]
    if missing:
        raise CredentialsError(f"{path}: field(s) {', '.join(missing)} missing or empty; {HOW_TO}")
    return Credentials(username=data["username"].strip(), source=str(path))


def find_credentials(env: Mapping[str, str] = os.environ) -> Credentials:
    """Locate credentials in the client's order; raise CredentialsError when none are usable."""
    if env.get("KAGGLE_API_TOKEN", "").strip():
        return Credentials(username=env.get("KAGGLE_USERNAME") or None, source="KAGGLE_API_TOKEN")
    user, key = env.get("KAGGLE_USERNAME", "").strip(), env.get("KAGGLE_KEY", "").strip()
    if user and key:
        return Credentials(username=user, source="KAGGLE_USERNAME/KAGGLE_KEY")
    path = config_dir(env) / "kaggle.json"
    if path.is_file():
        return _from_json_file(path)
    token_file = _home(env) / ".kaggle" / "access_token"
    if token_file.is_file() and token_file.stat().st_size > 0:
        return Credentials(username=user or None, source=str(token_file))
    if user or key:
        given, lacking = ("KAGGLE_USERNAME", "KAGGLE_KEY") if user else ("KAGGLE_KEY", "KAGGLE_USERNAME")
        raise CredentialsError(f"{given} is set but {lacking} is not; {HOW_TO}")
    raise CredentialsError(f"no Kaggle credentials found (looked for KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY and {path}); {HOW_TO}")


def has_credentials(env: Mapping[str, str] = os.environ) -> bool:
    """True when usable credentials exist (for steps that work offline otherwise)."""
    try:
        find_credentials(env)
    except CredentialsError:
        return False
    return True


def secrets(env: Mapping[str, str] = os.environ) -> list[str]:
    """The secret strings that must never appear in output, bundles or the ledger."""
    found = [env.get("KAGGLE_KEY", ""), env.get("KAGGLE_API_TOKEN", "")]
    path = config_dir(env) / "kaggle.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found.append(data.get("key", "") if isinstance(data, dict) else "")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    return [s for s in found if isinstance(s, str) and len(s.strip()) >= 4]


def redact(text: str, env: Mapping[str, str] = os.environ) -> str:
    """Replace every known secret in `text` (client output shown in an error) with ***."""
    for secret in secrets(env):
        text = text.replace(secret, "***")
    return text
