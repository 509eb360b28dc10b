"""`make kernel` / `kernel-push` / `kernel-status` / `kernel-output`: the pipeline as a Kaggle kernel.

Kaggle kernels run without internet, so everything the harness needs travels in a private
dataset: the harness wheel, the configs resolved with the overrides `make kernel` was given,
and the weight packages' wheels (rebuilt from the installed packages, so no download is needed
here either). The kernel itself is one script that installs those wheels with `pip --no-index`,
finds the competition's folder under /kaggle/input (plain files, the .7z archives or the zip,
read where they are: the harness's data intake extracts them into its cache), runs the
configured steps with `data_dir=` that folder, and copies the newest submission and its sidecar
to /kaggle/working/submission.{csv,json}. Both folders are checked for credentials before they
are written and again before they are pushed; the kernel is pushed only once Kaggle says the
dataset version it installs from is ready.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import competition
from competition.atomic import replaced_folder, write_json, write_text
from competition.config import COMPETITION_CONFIG, CONFIG_DIR, CompetitionConfig
from competition.errors import ConfigError, MissingArtefactError, UserError
from competition.kaggle.client import run_kaggle
from competition.kaggle.credentials import CredentialsError, find_credentials, secrets
from competition.kaggle.settings import KAGGLE_CONFIG, KaggleConfig, load_kernel_settings
from competition.locks import hold

CODE_FILE = "iceberg_kernel.py"
_SKIP_DIST_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


class SecretLeakError(UserError):
    """A built file contains a Kaggle credential; nothing is pushed."""


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
            located = dist.locate_file(rel)
            if not isinstance(located, (str, os.PathLike)):  # an installed package's files are on disk
                raise MissingArtefactError(f"weight package {name!r}: {rel} is not a file on disk ({type(located).__name__})")
            data = Path(located).read_bytes()
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


@contextlib.contextmanager
def _built_folder(target: Path) -> Iterator[Path]:
    """A staging folder that replaces `target` whole once built and checked for credentials
    (competition.atomic.replaced_folder under the folder's lock); a failed build leaves the old folder."""
    with hold(target, f"kernel build folder {target}"), replaced_folder(target) as build:
        yield build
        _check_clean(build)


def _not_yaml(folder: str, names: list[str]) -> list[str]:
    """copytree filter: only YAML configs (and folders) travel to Kaggle."""
    return [n for n in names if not (n.endswith((".yaml", ".yml")) or (Path(folder) / n).is_dir())]


def _dump_yaml(path: Path, data: dict[str, Any], what: str) -> None:
    header = f"# {what}: written by `make kernel` with the command line's overrides applied (what the kernel runs)\n"
    write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def _stack_config(config_dir: Path) -> Any:
    from competition.stacking.settings import STACK_CONFIG, load_stack_config

    return load_stack_config((), Path(config_dir) / STACK_CONFIG.name)


KERNEL_FOLDERS = ("work_dir", "runs_dir", "submissions_dir")


def shipped_config(cfg: CompetitionConfig) -> CompetitionConfig:
    """The competition config as the kernel runs it. Its own folders live in /kaggle/working: an absolute
    one given to `make kernel` says where to build here (runs_dir) and is not shipped; the field's default is."""
    defaults = CompetitionConfig()
    return cfg.model_copy(update={key: getattr(defaults, key) for key in KERNEL_FOLDERS if getattr(cfg, key).is_absolute()})


def build_dataset(cfg: CompetitionConfig, kcfg: KaggleConfig, config_dir: Path = CONFIG_DIR, scfg: Any = None, out_dir: Path | None = None) -> Path:
    """runs/kaggle/dataset/: harness wheel, weight wheels, configs/ (competition.yaml and stack.yaml as resolved), weights/, metadata."""
    target = (out_dir or cfg.kaggle_dir) / "dataset"
    with _built_folder(target) as build:
        build_harness_wheel(build)
        for package in kcfg.dataset.weight_packages:
            repack_installed(package, build)
        shutil.copytree(config_dir, build / "configs", ignore=_not_yaml)
        _dump_yaml(build / "configs" / "competition.yaml", shipped_config(cfg).model_dump(mode="json"), "the competition config")
        _dump_yaml(build / "configs" / "stack.yaml", (scfg if scfg is not None else _stack_config(config_dir)).model_dump(mode="json"), "the stack config")
        for weight in kcfg.dataset.weight_files:
            if not Path(weight).is_file():
                raise ConfigError(f"configs/kaggle.yaml: key 'dataset.weight_files': {weight} is not a file")
            (build / "weights").mkdir(exist_ok=True)
            shutil.copy2(weight, build / "weights" / Path(weight).name)
        write_json(
            build / "dataset-metadata.json",
            {"id": dataset_id(kcfg), "title": kcfg.dataset.title, "licenses": [{"name": kcfg.dataset.license}]},
        )
    return target


# Steps that need the internet or act on Kaggle from outside; a kernel runs offline.
_NOT_IN_KERNEL = {"data", "kernel", "kernel-push", "kernel-status", "kernel-output", "lb"}
_TRAINER_STEPS = {"all", "train"}  # the steps that take trainer (profile, model) overrides


def check_steps(steps: Sequence[str], commands: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each kernel step parsed as the CLI would parse it; a step the CLI would refuse is refused now (ConfigError).

    `commands` is the CLI's command table (`competition.cli.command_table()`: click commands by name),
    passed in so that this module does not import the CLI that imports it.
    Returns, per step, its words and whether it takes `KEY=VALUE` overrides (it then gets `data_dir=`).
    """
    out = []
    for i, step in enumerate(steps):
        where = f"configs/kaggle.yaml: key 'kernel.steps.{i}' ({step!r})"
        try:
            words = shlex.split(step)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not words:
            raise ConfigError(f"{where}: an empty step")
        name = words[0]
        if name not in commands:
            raise ConfigError(f"{where}: {name!r} is not a `competition` command (known: {', '.join(sorted(commands))})")
        if name in _NOT_IN_KERNEL:
            raise ConfigError(f"{where}: `{name}` cannot run inside a kernel (no internet there); steps like all, folds, train MODEL, stack")
        command = commands[name]
        try:
            ctx = command.make_context(name, list(words[1:]), resilient_parsing=False)
        except Exception as exc:  # click's UsageError (typer vendors click in newer releases)
            if not hasattr(exc, "format_message"):
                raise
            hint = " (e.g. `train mobilenetv2_100`; `all` trains every configured model)" if name == "train" else ""
            raise ConfigError(f"{where}: {exc.format_message()}{hint}") from None
        model = ctx.params.get("model") if name == "train" else None
        if isinstance(model, str) and "=" in model:
            raise ConfigError(
                f"{where}: `train` needs a model before any KEY=VALUE (e.g. `train mobilenetv2_100 {model}`); `all` trains every configured model"
            )
        takes = any(p.name == "overrides" for p in command.params)
        out.append({"args": words, "overrides": takes, "trainer": takes and name in _TRAINER_STEPS})
    return out


def kernel_script(cfg: CompetitionConfig, kcfg: KaggleConfig, harness_wheel: str, steps: list[dict[str, Any]], trainer: Sequence[str] = ()) -> str:
    """The kernel's code: install offline, find the competition, run `steps` (check_steps'), write submission.csv and .json."""
    packages = ["iceberg-harness", *kcfg.dataset.weight_packages]
    values = {
        "TITLE": kcfg.kernel.title,
        "DATASET": dataset_id(kcfg),
        "SLUG": cfg.slug,
        "HARNESS_WHEEL": harness_wheel,
        "PACKAGES": packages,
        "STEPS": steps,
        "TRAINER_OVERRIDES": list(trainer),
        "COMPETITION_DIR": kcfg.kernel.data_dir,
        "SUBMISSIONS_DIR": shipped_config(cfg).submissions_dir.as_posix(),
    }
    script = _SCRIPT
    for key, value in values.items():
        script = script.replace(f"@{key}@", repr(value))
    return script


def build_kernel(
    cfg: CompetitionConfig, kcfg: KaggleConfig, harness_wheel: str, steps: list[dict[str, Any]], trainer: Sequence[str] = (), out_dir: Path | None = None
) -> Path:
    """runs/kaggle/kernel/: kernel-metadata.json and the script running `steps` (check_steps')."""
    target = (out_dir or cfg.kaggle_dir) / "kernel"
    with _built_folder(target) as build:
        write_text(build / CODE_FILE, kernel_script(cfg, kcfg, harness_wheel, steps, trainer))
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
                "machine_shape": kcfg.kernel.machine or "",
                "dataset_sources": [dataset_id(kcfg)],
                "competition_sources": [cfg.slug],
                "kernel_sources": [],
                "model_sources": [],
            },
        )
    return target


def build(
    cfg: CompetitionConfig,
    kcfg: KaggleConfig,
    config_dir: Path = CONFIG_DIR,
    scfg: Any = None,
    trainer: Sequence[str] = (),
    out_dir: Path | None = None,
    *,
    commands: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Build the dataset folder, then the kernel folder that installs from it (into out_dir, default runs/kaggle/).

    `commands`: the CLI's command table (`competition.cli.command_table()`) the kernel's steps are checked against.
    """
    steps = check_steps(kcfg.kernel.steps, commands)  # before the slow wheel build
    dataset = build_dataset(cfg, kcfg, config_dir, scfg, out_dir)
    wheel = sorted(dataset.glob("iceberg_harness-*.whl"))[-1].name
    return build_kernel(cfg, kcfg, wheel, steps, trainer, out_dir), dataset


def build_from_overrides(
    overrides: Sequence[str] = (),
    config: Path | str = COMPETITION_CONFIG,
    kaggle_config: Path | str = KAGGLE_CONFIG,
    out_dir: Path | None = None,
    *,
    commands: Mapping[str, Any],
) -> tuple[Path, Path]:
    """`make kernel ARGS=...`: every override routed and validated, and shipped (configs or the script); `commands` as for build."""
    settings = load_kernel_settings(overrides, config, kaggle_config)
    return build(settings.cfg, settings.kcfg, Path(config).parent, settings.stack, settings.trainer, out_dir, commands=commands)


def _built(cfg: CompetitionConfig) -> tuple[Path, Path]:
    kernel, dataset = cfg.kaggle_dir / "kernel", cfg.kaggle_dir / "dataset"
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
    out += wait_until_ready(dataset_id(kcfg), kcfg.dataset.ready_timeout_s, kcfg.dataset.ready_poll_s)
    args = ["kernels", "push", "-p", str(kernel)]
    if kcfg.kernel.machine:
        args += ["--accelerator", kcfg.kernel.machine]
    if kcfg.kernel.timeout_s:
        args += ["-t", str(kcfg.kernel.timeout_s)]
    return out + run_kaggle(args)


# `kaggle datasets status` prints the lower-cased name of kagglesdk's DatabundleVersionStatus.
_READY = "ready"
_FAILED = ("failed", "deleted")


def wait_until_ready(
    ref: str, timeout_s: float = 600, poll_s: float = 5, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
) -> str:
    """Poll `kaggle datasets status REF` until the newest version is ready (a kernel pushed earlier may not see it)."""
    deadline = clock() + timeout_s
    while True:
        lines = run_kaggle(["datasets", "status", ref]).strip().splitlines()
        state = lines[-1].strip().lower() if lines else ""
        if state == _READY:
            return f"dataset {ref}: ready\n"
        if state in _FAILED:
            raise UserError(f"dataset {ref}: Kaggle reports the new version as {state!r}; see its page on kaggle.com, fix and push again")
        if clock() + poll_s > deadline:
            raise UserError(
                f"dataset {ref}: still {state or 'unknown'!r} after {timeout_s:g} s; the kernel was not pushed "
                "(run `make kernel-push` again later, or raise kaggle.dataset.ready_timeout_s)"
            )
        sleep(poll_s)


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
    target = cfg.kaggle_dir / "output"
    target.mkdir(parents=True, exist_ok=True)
    run_kaggle(["kernels", "output", kernel_id(kcfg), "-p", str(target), "--force"])
    return target


_SCRIPT = """\
\"\"\"Iceberg harness on Kaggle, generated by `make kernel` (edit configs/kaggle.yaml and rebuild).

Installs the harness offline from its dataset, finds the competition's files under
/kaggle/input, runs the configured steps on them (the configs shipped in the dataset are the
ones `make kernel` resolved) and copies the newest submission and its sidecar to
/kaggle/working/submission.csv and submission.json.
\"\"\"
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

TITLE = @TITLE@
DATASET = @DATASET@
SLUG = @SLUG@
HARNESS_WHEEL = @HARNESS_WHEEL@
PACKAGES = @PACKAGES@
STEPS = @STEPS@
TRAINER_OVERRIDES = @TRAINER_OVERRIDES@
COMPETITION_DIR = @COMPETITION_DIR@
SUBMISSIONS_DIR = @SUBMISSIONS_DIR@
INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
WORK = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
MARKERS = ("train.json", "train.json.7z", SLUG + ".zip")


def run(*args):
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def find(name):
    hits = sorted(INPUT.rglob(name))
    if not hits:
        sys.exit(f"{name} not found under {INPUT}: add the dataset {DATASET} to the kernel")
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


def competition_dir():
    \"\"\"The folder holding the competition's files: plain, the .7z archives, or the competition's zip.\"\"\"
    if COMPETITION_DIR:
        folder = Path(COMPETITION_DIR)
        if not folder.is_dir():
            sys.exit(f"kaggle.kernel.data_dir: {folder} is not a folder")
        return folder
    found = sorted({p.parent for p in INPUT.rglob("*") if p.name in MARKERS and p.is_file()},
                   key=lambda d: (SLUG not in d.as_posix(), len(d.parts), d.as_posix()))
    if not found:
        sys.exit(f"no competition files ({', '.join(MARKERS)}) under {INPUT}: add the competition {SLUG} to the kernel's inputs")
    if len(found) > 1:
        print(f"competition files in {len(found)} folders; using {found[0]} (others: {', '.join(map(str, found[1:]))})", flush=True)
    return found[0]


def newest_submission():
    made = sorted((WORK / SUBMISSIONS_DIR).glob("*.csv"), key=lambda p: (p.stat().st_mtime, p.name))
    if not made:
        sys.exit(f"the steps wrote no submission into {SUBMISSIONS_DIR}/")
    return made[-1]


def main():
    wheel_dir = install()
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)
    copy_configs(wheel_dir)
    data = competition_dir()
    print(f"competition files: {data}", flush=True)
    for step in STEPS:
        extra = []
        if step["overrides"]:
            extra.append(f"data_dir={data}")
        if step["trainer"]:
            extra += TRAINER_OVERRIDES
        run(sys.executable, "-m", "competition", *step["args"], *extra)
    publish()


def publish():
    \"\"\"The newest submission and its sidecar as /kaggle/working/submission.csv and submission.json.\"\"\"
    made = newest_submission()
    shutil.copy(made, WORK / "submission.csv")
    sidecar = made.with_suffix(".json")
    if sidecar.is_file():
        shutil.copy(sidecar, WORK / "submission.json")
    else:
        print(f"warning: {made.name} has no sidecar {sidecar.name}; `make submit` will record it with CV unknown", flush=True)
    print(f"{TITLE}: {made.name} -> submission.csv" + (" + submission.json" if sidecar.is_file() else ""), flush=True)


if __name__ == "__main__":
    main()
"""
