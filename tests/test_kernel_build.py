"""`make kernel`: the steps it ships, the configuration it ships, and what the generated script does with /kaggle/input."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from competition.cli import command_table
from competition.errors import ConfigError
from competition.kaggle.kernel import CODE_FILE, build_from_overrides, check_steps, kernel_script
from competition.kaggle.settings import KaggleConfig, load_kernel_settings

REPO = Path(__file__).resolve().parents[1]
SLUG = "statoil-iceberg-classifier-challenge"
QUICK = ["kaggle.owner=bob", "kaggle.dataset.weight_packages=[]"]  # no weight wheels: a quick build
COMMANDS = command_table()  # what `make kernel` checks the steps against


def _config(name: str) -> str:
    return str(REPO / "configs" / name)


def test_default_kernel_runs_the_whole_flow():
    assert KaggleConfig().kernel.steps == ["all"]
    assert yaml.safe_load((REPO / "configs" / "kaggle.yaml").read_text())["kernel"]["steps"] == ["all"]
    assert check_steps(["all"], COMMANDS) == [{"args": ["all"], "overrides": True, "trainer": True}]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (["folds", "train", "stack"], r"key 'kernel.steps.1' \('train'\): Missing argument 'model'.*`all` trains every configured model"),
        (["train epochs=1"], r"`train` needs a model before any KEY=VALUE"),
        (["fold"], r"'fold' is not a `competition` command \(known: all, "),
        (["all --profil gpu"], r"No such option: --profil"),
        (["data"], r"`data` cannot run inside a kernel"),
        (["all 'unclosed"], r"No closing quotation"),
    ],
)
def test_steps_the_cli_would_refuse_are_refused_when_the_kernel_is_built(steps, message):
    with pytest.raises(ConfigError, match=message):
        check_steps(steps, COMMANDS)


def test_make_kernel_refuses_train_without_a_model_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "competition", "kernel", "kaggle.kernel.steps=[folds,train,stack]", "kaggle.owner=bob", f"runs_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Missing argument 'model'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "kaggle").exists()


def test_steps_get_the_data_folder_and_the_trainer_overrides():
    steps = check_steps(["folds", "train mobilenetv2_100 --profile cpu", "stack", "validate sub.csv", "report"], COMMANDS)
    assert [(s["overrides"], s["trainer"]) for s in steps] == [(True, False), (True, True), (True, False), (True, False), (True, False)]


def test_the_kernel_ships_the_configuration_it_was_built_with(tmp_path):
    overrides = ["experiment=k1", "folds.k=3", "models=[mobilenetv2_100]", "stack.stacker.n_trials=2", "epochs=1", "optimizer.lr=0.001", *QUICK]
    kernel, dataset = build_from_overrides(overrides, _config("competition.yaml"), _config("kaggle.yaml"), out_dir=tmp_path, commands=COMMANDS)
    comp = yaml.safe_load((dataset / "configs" / "competition.yaml").read_text())
    assert (comp["experiment"], comp["folds"]["k"], comp["models"]) == ("k1", 3, ["mobilenetv2_100"])
    assert comp["simulate"]["n_train"] == 1604 and comp["slug"] == SLUG  # untouched keys keep the file's values
    stack = yaml.safe_load((dataset / "configs" / "stack.yaml").read_text())
    assert stack["stacker"]["n_trials"] == 2
    assert (dataset / "configs" / "profiles" / "cpu.yaml").is_file() and (dataset / "configs" / "models" / "mobilenetv2_100.yaml").is_file()
    script = (kernel / CODE_FILE).read_text()
    assert "TRAINER_OVERRIDES = ['epochs=1', 'optimizer.lr=0.001']" in script
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["bob/iceberg-harness"] and meta["machine_shape"] == "NvidiaTeslaT4"


def test_data_dir_for_the_kernel_is_refused_with_the_key_to_use():
    with pytest.raises(ConfigError) as err:
        load_kernel_settings(["data_dir=kdata", *QUICK], _config("competition.yaml"), _config("kaggle.yaml"))
    assert str(err.value) == (
        "data_dir=: the kernel reads the competition from /kaggle/input (found at run time); to fix the folder, use kaggle.kernel.data_dir=PATH"
    )
    settings = load_kernel_settings(["kaggle.kernel.data_dir=/kaggle/input/mine", *QUICK], _config("competition.yaml"), _config("kaggle.yaml"))
    assert settings.kcfg.kernel.data_dir == "/kaggle/input/mine"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=0", r"profiles/(cpu|gpu).yaml: key 'epochs' \(from a command-line override\)"),
        ("stack.stacker.n_trial=2", r"stack.yaml: key 'stacker.n_trial'"),
        ("folds.k=1", r"competition.yaml: key 'folds.k'"),
        ("foo.bar=1", r"models/vgg16_angle.yaml: key 'foo': unknown key"),
        ("kaggle.kernel.data_dir=x", r"key 'kernel.data_dir'.*expected an absolute path inside the kernel"),
    ],
)
def test_bad_overrides_are_refused_when_the_kernel_is_built(override, message):
    with pytest.raises(ConfigError, match=message):
        load_kernel_settings([override, *QUICK], _config("competition.yaml"), _config("kaggle.yaml"))


def test_gpu_settings():
    assert KaggleConfig().kernel.machine == "NvidiaTeslaT4"
    assert KaggleConfig.model_validate({"kernel": {"accelerator": "NvidiaL4"}}).kernel.machine == "NvidiaL4"
    assert KaggleConfig.model_validate({"kernel": {"enable_gpu": False}}).kernel.machine is None
    with pytest.raises(ValueError, match="enable_gpu is false"):
        KaggleConfig.model_validate({"kernel": {"enable_gpu": False, "accelerator": "NvidiaTeslaT4"}})


# --- the generated script, loaded as a module (its main() is not run) --------------------------------------


def _script(tmp_path: Path, monkeypatch, data_dir: str | None = None) -> dict:
    settings = load_kernel_settings(QUICK + ([f"kaggle.kernel.data_dir={data_dir}"] if data_dir else []), _config("competition.yaml"), _config("kaggle.yaml"))
    path = tmp_path / CODE_FILE
    path.write_text(kernel_script(settings.cfg, settings.kcfg, "iceberg_harness-0.1.0-py3-none-any.whl", check_steps(settings.kcfg.kernel.steps, COMMANDS)))
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path / "working"))
    return runpy.run_path(str(path), run_name="kernel")


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")


def _harness_dataset(root: Path) -> None:
    _touch(
        root / "datasets" / "bob" / "iceberg-harness" / "iceberg_harness-0.1.0-py3-none-any.whl",
        root / "datasets" / "bob" / "iceberg-harness" / "configs" / "competition.yaml",
    )


@pytest.mark.parametrize(
    "layout",
    [
        [f"competitions/{SLUG}/train.json.7z", f"competitions/{SLUG}/test.json.7z", f"competitions/{SLUG}/sample_submission.csv.7z"],
        [f"{SLUG}/train.json", f"{SLUG}/test.json", f"{SLUG}/sample_submission.csv"],
        [f"competitions/{SLUG}/{SLUG}.zip"],
    ],
    ids=["competitions-7z", "slug-plain", "zip"],
)
def test_the_script_finds_the_competition_folder_in_each_layout(tmp_path, monkeypatch, layout):
    inp = tmp_path / "input"
    _harness_dataset(inp)
    _touch(*(inp / rel for rel in layout))
    script = _script(tmp_path, monkeypatch)
    assert script["competition_dir"]() == (inp / layout[0]).parent


def test_the_competition_folder_wins_over_another_train_json(tmp_path, monkeypatch):
    inp = tmp_path / "input"
    _touch(inp / "datasets" / "someone" / "sar-chips" / "train.json", inp / "competitions" / SLUG / "deep" / "train.json.7z")
    assert _script(tmp_path, monkeypatch)["competition_dir"]() == inp / "competitions" / SLUG / "deep"


def test_no_competition_under_input_is_one_clear_line(tmp_path, monkeypatch):
    _harness_dataset(tmp_path / "input")
    script = _script(tmp_path, monkeypatch)
    with pytest.raises(SystemExit, match=f"no competition files .* under {tmp_path / 'input'}: add the competition {SLUG}"):
        script["competition_dir"]()


def test_a_configured_data_dir_is_used_as_given(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    assert _script(tmp_path, monkeypatch, data_dir=str(mine))["competition_dir"]() == mine
    with pytest.raises(SystemExit, match="is not a folder"):
        _script(tmp_path, monkeypatch, data_dir=str(tmp_path / "absent"))["competition_dir"]()


def test_publish_copies_the_newest_submission_and_its_sidecar(tmp_path, monkeypatch):
    script = _script(tmp_path, monkeypatch)
    subs = tmp_path / "working" / "submissions"
    subs.mkdir(parents=True)
    old = subs / "20260101-000000_k1_mean_cv0.3000.csv"
    new = subs / "20260102-000000_k1_lgbm_cv0.2000.csv"
    for path, cv in ((old, 0.3), (new, 0.2)):
        path.write_text(f"id,is_iceberg\na,{cv}\n")
        path.with_suffix(".json").write_text(json.dumps({"cv_mean": cv}))
    import os

    os.utime(old, (1, 1))
    script["publish"]()
    assert (tmp_path / "working" / "submission.csv").read_text() == new.read_text()
    assert json.loads((tmp_path / "working" / "submission.json").read_text()) == {"cv_mean": 0.2}


def test_publish_without_any_submission_fails_clearly(tmp_path, monkeypatch):
    script = _script(tmp_path, monkeypatch)
    with pytest.raises(SystemExit, match="the steps wrote no submission into submissions/"):
        script["publish"]()


def test_configs_zip_is_unpacked(tmp_path, monkeypatch):
    script = _script(tmp_path, monkeypatch)
    ds = tmp_path / "ds"
    ds.mkdir()
    with zipfile.ZipFile(ds / "configs.zip", "w") as zf:
        zf.writestr("competition.yaml", "experiment: z\n")
    (tmp_path / "working").mkdir()
    script["copy_configs"](ds)
    assert (tmp_path / "working" / "configs" / "competition.yaml").read_text() == "experiment: z\n"


def test_local_folders_given_to_make_kernel_are_not_shipped(tmp_path):
    """Found by a newcomer: runs_dir=/tmp/... (where to build here) went into the kernel's config and script."""
    local = [f"runs_dir={tmp_path / 'runs'}", f"work_dir={tmp_path / 'work'}", f"submissions_dir={tmp_path / 'subs'}"]
    kernel, dataset = build_from_overrides([*local, "experiment=k2", *QUICK], _config("competition.yaml"), _config("kaggle.yaml"), commands=COMMANDS)
    assert kernel == tmp_path / "runs" / "kaggle" / "kernel"  # built where asked
    comp = yaml.safe_load((dataset / "configs" / "competition.yaml").read_text())
    assert (comp["runs_dir"], comp["work_dir"], comp["submissions_dir"], comp["experiment"]) == ("runs", "data", "submissions", "k2")
    script = (kernel / CODE_FILE).read_text()
    assert "SUBMISSIONS_DIR = 'submissions'" in script and str(tmp_path) not in script


def test_a_build_holding_a_credential_is_refused_and_the_previous_build_stays(tmp_path, monkeypatch):
    from competition.kaggle.kernel import SecretLeakError

    monkeypatch.setenv("KAGGLE_KEY", "k3y-0123456789abcdef")
    runs = [f"runs_dir={tmp_path / 'runs'}", *QUICK]
    kernel, dataset = build_from_overrides(runs, _config("competition.yaml"), _config("kaggle.yaml"), commands=COMMANDS)
    before = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    leaky = tmp_path / "weights.pth"
    leaky.write_bytes(b"weights ... k3y-0123456789abcdef ...")
    with pytest.raises(SecretLeakError, match=r"weights\.pth: contains a Kaggle credential"):
        build_from_overrides([*runs, f"kaggle.dataset.weight_files=[{leaky}]"], _config("competition.yaml"), _config("kaggle.yaml"), commands=COMMANDS)
    assert {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before
    assert not any((tmp_path / "runs" / "kaggle" / ".staging").rglob("*.pth"))  # the refused build is gone
