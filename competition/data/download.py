"""`make data`: download the real competition with the official Kaggle client and unpack it.

The client is run as a subprocess through `competition.kaggle.client`, the only part of
`competition.kaggle` used here (importing `kaggle` authenticates, and exits, at import time).
Kaggle serves one zip holding train.json.7z, test.json.7z and sample_submission.csv.7z; it is
kept in `<data_dir>/download/` so that a rerun downloads again only when Kaggle's copy is newer
(the client's own check). The unpacked files replace `train.json`, `test.json` and
`sample_submission.csv` in `data_dir`, the same places `make simulate` writes; the simulator's
hidden `solution.csv` is removed then, since it does not describe the real test set.
Credentials are only ever looked for, never read into messages or copied.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from rich.table import Table

from competition.config import CompetitionConfig
from competition.console import console, table
from competition.data.files import extract, marker_path
from competition.data.loader import load_test, load_train
from competition.errors import DataError, UserError
from competition.kaggle.client import has_credentials, redact, stream_kaggle

FILES = ("train.json", "test.json", "sample_submission.csv")
_TAIL_BYTES = 4000


def no_credentials_message(cfg: CompetitionConfig) -> str:
    return (
        "no Kaggle credentials found, so the real data cannot be downloaded. To get them: sign in at "
        "https://www.kaggle.com, open Settings -> API (https://www.kaggle.com/settings/api) and either "
        "'Generate New Token' (export it as KAGGLE_API_TOKEN or save it to ~/.kaggle/access_token) or "
        "'Create New Legacy API Key' (save the kaggle.json it gives as ~/.kaggle/kaggle.json, chmod 600, or "
        "export KAGGLE_USERNAME and KAGGLE_KEY); `kaggle auth login` also works. Then accept the rules at "
        f"https://www.kaggle.com/c/{cfg.slug}/rules. "
        "Without an account, `make simulate` writes a simulated competition in the same format."
    )


def download(cfg: CompetitionConfig) -> list[Path]:
    """Download with the official client and install the files into `cfg.data_dir`."""
    if not has_credentials():
        raise UserError(no_credentials_message(cfg))
    staging = cfg.data_dir / "download"
    staging.mkdir(parents=True, exist_ok=True)
    run_client(["competitions", "download", "-c", cfg.slug, "-p", str(staging)], cfg)
    installed = unpack(staging, cfg.data_dir)
    for hidden in (cfg.solution_csv, marker_path(cfg)):
        if hidden.is_file():
            hidden.unlink()
            console.print(f"removed {hidden}: it described the simulated competition")
    return installed


def run_client(args: list[str], cfg: CompetitionConfig) -> None:
    """Run `kaggle ARGS`, showing its output; a failure becomes a UserError with its last lines."""
    returncode, tail = stream_kaggle(args, _TAIL_BYTES)
    if returncode != 0:
        raise UserError(client_failure(tail, returncode, cfg))


def client_failure(output: str, returncode: int, cfg: CompetitionConfig) -> str:
    """A clear message for a failed client run: the likely cause, what to do, its last lines."""
    output = redact(output)
    last = " | ".join(line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip())[-600:]
    if re.search(r"\b403\b|Forbidden|must accept|rules", output):
        cause = f"Kaggle refused the download: accept the competition rules at https://www.kaggle.com/c/{cfg.slug}/rules with the account of your token"
    elif "Authentication required" in output:
        cause = "the Kaggle client found no usable credentials: " + no_credentials_message(cfg).partition(". ")[2]
    elif re.search(r"\b401\b|Unauthorized|Unauthenticated|Invalid credentials", output):
        cause = "Kaggle rejected the credentials: create a new API token (Settings -> API) and replace the old one"
    elif re.search(r"\b404\b|Not Found", output):
        cause = f"Kaggle does not know the competition {cfg.slug!r}: check `slug` in the competition config"
    elif re.search(r"Connection|resolve|Max retries|timed out|Network", output, re.IGNORECASE):
        cause = "could not reach kaggle.com (no network?)"
    else:
        cause = "the Kaggle client failed"
    return f"{cause} (kaggle exit code {returncode}; its last output: {last or 'none'}). `make simulate` works offline."


def unpack(downloaded: Path, data_dir: Path) -> list[Path]:
    """Unzip Kaggle's bundle in `downloaded`, extract its .7z files, install FILES into `data_dir`.

    Everything is unpacked beside `data_dir` first and moved in only when all files are there,
    so a damaged download leaves the old files in place.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".unpack-") as tmp:
        work = Path(tmp)
        for item in sorted(downloaded.iterdir()):
            if item.suffix == ".zip":
                extract(item, work)
            elif item.is_file():
                shutil.copy2(item, work / item.name)
        for archive in sorted(work.rglob("*.7z")):
            extract(archive, archive.parent)
        found = {name: next(iter(sorted(work.rglob(name))), None) for name in FILES}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise DataError(f"{downloaded}: the download holds no {', '.join(missing)}; delete that folder and run `make data` again")
        installed = []
        for name, path in found.items():
            assert path is not None
            os.replace(path, data_dir / name)
            installed.append(data_dir / name)
    return installed


def summary(cfg: CompetitionConfig) -> Table:
    """Read (and cache) the installed files: checks them and shows what they hold."""
    train, test = load_train(cfg), load_test(cfg)
    rows = [
        (
            "train",
            len(train),
            f"{train.labels.mean():.3f}" if train.labels is not None else "-",
            int(train.angle_missing.sum()),
            int(train.machine_generated.sum()),
        ),
        ("test", len(test), "-", int(test.angle_missing.sum()), int(test.machine_generated.sum())),
    ]
    return table(f"competition data in {cfg.data_dir}", ["split", "images", "iceberg share", 'angle "na"', "angle > 4 decimals"], rows)
