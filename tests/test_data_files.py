"""The one resolver of the competition's files: Kaggle's archives as they arrive, the client's zip,
plain files; the simulator's guard and marker; records as pandas writes them back (../shared/cases)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import py7zr
import pytest
from competition.config import CompetitionConfig, SimulateConfig
from competition.data import files
from competition.data.loader import load_test, load_train, read_dataset
from competition.errors import DataError, MissingArtefactError
from competition.pipeline import data_statement, ensure_data
from competition.simulate import write_simulated

ROOT = Path(__file__).resolve().parents[1]
INNER = {"train.json": "data/processed/train.json", "test.json": "data/processed/test.json", "sample_submission.csv": "sample_submission.csv"}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash: what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulated competition, plain files (the source of every other form)."""
    root = tmp_path_factory.mktemp("plain")
    write_simulated(CompetitionConfig(data_dir=root, simulate=SimulateConfig(n_train=24, n_test=12, seed=3)))
    return root


def as_7z(source: Path, folder: Path) -> Path:
    """Kaggle's download as it arrives: three .7z archives, the JSON nested under data/processed/."""
    folder.mkdir(parents=True)
    for name, inner in INNER.items():
        with py7zr.SevenZipFile(folder / f"{name}.7z", "w") as z:
            z.write(source / name, arcname=inner)
    return folder


def config(data: Path, work: Path) -> CompetitionConfig:
    return CompetitionConfig(data_dir=data, work_dir=work, runs_dir=work / "runs", submissions_dir=work / "subs")


def test_kaggle_archives_are_read_as_they_are_and_extracted_only_into_the_work_dir(simulated: Path, tmp_path: Path) -> None:
    data = as_7z(simulated, tmp_path / "kaggle")
    before = snapshot(data)
    cfg = config(data, tmp_path / "work")

    assert {f.form for f in files.locate(data).values()} == {"7z"}
    train, test = load_train(cfg), load_test(cfg)
    assert (len(train), len(test)) == (24, 12)
    assert train.fingerprint == read_dataset(simulated / "train.json", "train").fingerprint  # the data's hash, whatever the container
    sample = files.sample_submission(cfg)
    assert sample.read_bytes() == (simulated / "sample_submission.csv").read_bytes()
    assert sample.is_relative_to(cfg.cache_dir / "extracted")
    assert snapshot(data) == before  # nothing written beside the user's archives

    extracted = sorted((cfg.cache_dir / "extracted").glob("*.7z-*"))
    assert len(extracted) == 3
    stamps = [p.stat().st_mtime_ns for p in extracted]
    assert files.resolve(cfg, "train.json") == files.resolve(cfg, "train.json")
    assert [p.stat().st_mtime_ns for p in extracted] == stamps  # extracted once


def test_the_official_clients_zip_is_read_as_it_is(simulated: Path, tmp_path: Path) -> None:
    packed = as_7z(simulated, tmp_path / "packed")
    data = tmp_path / "download"
    data.mkdir()
    with zipfile.ZipFile(data / "statoil-iceberg-classifier-challenge.zip", "w") as z:
        for archive in packed.iterdir():
            z.write(archive, arcname=archive.name)
    cfg = config(data, tmp_path / "work")

    assert {f.form for f in files.locate(data).values()} == {"zip"}
    assert len(load_train(cfg)) == 24 and len(load_test(cfg)) == 12
    assert files.sample_submission(cfg).read_bytes() == (simulated / "sample_submission.csv").read_bytes()
    assert sorted(p.name for p in data.iterdir()) == ["statoil-iceberg-classifier-challenge.zip"]


def test_a_plain_file_beside_the_same_archive_is_read_with_one_note(simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = as_7z(simulated, tmp_path / "both")
    shutil.copy(simulated / "train.json", data / "train.json")  # extracted by hand beside its archive
    cfg = config(data, tmp_path / "work")
    capsys.readouterr()
    assert files.locate(data)["train.json"].form == "plain"
    assert files.resolve(cfg, "train.json") == data / "train.json"
    assert files.resolve(cfg, "train.json") == data / "train.json"
    notes = [line for line in capsys.readouterr().err.splitlines() if "note" in line]
    assert notes == [f"note: reading {data / 'train.json'}; train.json.7z beside it holds the same file and is ignored"]  # once


def test_a_plain_file_beside_an_archive_of_another_file_is_refused_naming_both(simulated: Path, tmp_path: Path) -> None:
    data = as_7z(simulated, tmp_path / "both")
    shutil.copy(simulated / "test.json", data / "train.json")  # another file under the archive's name
    before = snapshot(data)
    with pytest.raises(
        DataError, match=r"both/: train.json \([0-9,]+ bytes\) and train.json.7z \(holding [0-9,]+ bytes\) are different files.*move away the one"
    ) as refused:
        load_train(config(data, tmp_path / "work"))
    assert str(refused.value).endswith("(the harness never changes or deletes either)")  # cache/ and .folds.lock may go into the folder
    assert snapshot(data) == before


def test_7z_without_py7zr_uses_the_7z_program(simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kaggle's image has the 7z program but not py7zr."""
    if shutil.which("7z") is None and shutil.which("7za") is None:
        pytest.skip("no 7z program here (make setup installs p7zip-full where apt-get can)")
    monkeypatch.setitem(sys.modules, "py7zr", None)  # import fails as on Kaggle
    cfg = config(as_7z(simulated, tmp_path / "kaggle"), tmp_path / "work")
    assert len(load_train(cfg)) == 24


def test_without_py7zr_or_7z_program_the_error_says_what_to_install(simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "py7zr", None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    cfg = config(as_7z(simulated, tmp_path / "kaggle"), tmp_path / "work")
    with pytest.raises(DataError, match=r"train\.json\.7z: reading \.7z archives needs the py7zr package or the 7z program"):
        load_train(cfg)
    assert not list((cfg.cache_dir / "extracted").glob("*.7z-*"))  # no half-extracted folder is kept


def test_an_archive_without_the_file_names_the_archive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "other.json").write_text("[]")
    with py7zr.SevenZipFile(data / "train.json.7z", "w") as z:
        z.write(tmp_path / "other.json", arcname="data/processed/other.json")
    with pytest.raises(DataError, match=r"train\.json\.7z: expected exactly one train\.json inside the archive, found 0"):
        files.resolve(config(data, tmp_path / "work"), "train.json")


def test_a_missing_file_says_what_is_there_and_what_is_accepted(simulated: Path, tmp_path: Path) -> None:
    data = as_7z(simulated, tmp_path / "kaggle")
    (data / "test.json.7z").unlink()
    cfg = config(data, tmp_path / "work")
    with pytest.raises(
        MissingArtefactError, match=r"no test\.json \(it holds sample_submission\.csv\.7z, train\.json\.7z\)\. Accepted: the plain files, Kaggle's \.7z"
    ):
        load_test(cfg)
    with pytest.raises(MissingArtefactError, match=r"no test\.json"):
        ensure_data(cfg)  # `make all` never simulates beside a partial download
    assert sorted(p.name for p in data.iterdir()) == ["sample_submission.csv.7z", "train.json.7z"]


def test_make_all_simulates_only_into_a_folder_without_competition_files(simulated: Path, tmp_path: Path) -> None:
    data = as_7z(simulated, tmp_path / "kaggle")
    before = snapshot(data)
    ensure_data(config(data, tmp_path / "work"))
    assert snapshot(data) == before

    empty = config(tmp_path / "fresh", tmp_path / "work2").model_copy(update={"simulate": SimulateConfig(n_train=20, n_test=10, seed=1)})
    ensure_data(empty)
    assert {p.name for p in empty.data_dir.iterdir()} == {"train.json", "test.json", "sample_submission.csv", "hidden"}


@pytest.mark.parametrize("form", ["7z", "plain"])
def test_the_simulator_never_writes_over_competition_files_it_did_not_write(simulated: Path, tmp_path: Path, form: str) -> None:
    if form == "7z":
        data = as_7z(simulated, tmp_path / "theirs")
    else:
        data = tmp_path / "theirs"
        data.mkdir()
        shutil.copy(simulated / "train.json", data / "train.json")
    before = snapshot(data)
    cfg = config(data, tmp_path / "work").model_copy(update={"simulate": SimulateConfig(n_train=20, n_test=10, seed=1)})
    with pytest.raises(DataError, match=r"holds competition files the simulator did not write \(.*train\.json.*simulate into another folder"):
        write_simulated(cfg)
    assert snapshot(data) == before

    done = subprocess.run([sys.executable, "-m", "competition", "simulate", f"data_dir={data}", "simulate.n_train=20", "simulate.n_test=10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr and "simulator did not write" in done.stderr
    assert snapshot(data) == before


def test_the_simulator_may_rewrite_its_own_folder(tmp_path: Path) -> None:
    cfg = config(tmp_path / "sim", tmp_path / "work").model_copy(update={"simulate": SimulateConfig(n_train=20, n_test=10, seed=1)})
    write_simulated(cfg)
    write_simulated(cfg.model_copy(update={"simulate": SimulateConfig(n_train=22, n_test=10, seed=2)}))
    assert len(load_train(cfg)) == 22


def test_the_hidden_solution_belongs_only_to_the_test_data_it_was_written_for(simulated: Path, tmp_path: Path) -> None:
    data = tmp_path / "sim"
    shutil.copytree(simulated, data)
    cfg = config(data, tmp_path / "work")
    test = load_test(cfg)
    assert files.simulated_solution(cfg, test.fingerprint) == cfg.solution_csv
    assert files.describe(cfg, "a", test.fingerprint)["kind"] == "simulated"
    assert "simulated competition" in data_statement(cfg, files.describe(cfg, "a", test.fingerprint))

    other = tmp_path / "other"
    write_simulated(config(other, tmp_path / "work3").model_copy(update={"simulate": SimulateConfig(n_train=20, n_test=10, seed=9)}))
    shutil.copy(other / "test.json", data / "test.json")  # real or other data put where the simulation was
    shutil.copy(other / "sample_submission.csv", data / "sample_submission.csv")
    new_test = load_test(cfg)
    assert files.simulated_solution(cfg, new_test.fingerprint) is None
    assert files.describe(cfg, "a", new_test.fingerprint)["kind"] == "real"
    assert "real data (no offline scoring)" in data_statement(cfg, files.describe(cfg, "a", new_test.fingerprint))


def test_a_damaged_simulator_marker_is_refused_in_one_line_naming_it(simulated: Path, tmp_path: Path) -> None:
    data = tmp_path / "sim"
    shutil.copytree(simulated, data)
    cfg = config(data, tmp_path / "work")
    marker = data / "hidden" / "simulated.json"
    marker.write_text(json.dumps({"simulate": {}, "test_fingerprint": 7}))
    with pytest.raises(DataError, match=r"simulated.json: field 'test_fingerprint': .*the simulator's marker is damaged") as refused:
        files.data_kind(cfg, load_test(cfg).fingerprint)
    assert "\n" not in str(refused.value)
    marker.write_text("{")
    with pytest.raises(DataError, match=r"simulated.json: not valid JSON .*delete the folder and simulate again; else delete"):
        files.check_simulation_target(cfg)


def test_a_damaged_index_of_extracted_archives_is_rebuilt_with_a_note(simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(as_7z(simulated, tmp_path / "kaggle"), tmp_path / "work")
    first = files.resolve(cfg, "train.json")
    index = cfg.cache_dir / "extracted" / "index.json"
    index.write_text('{"stat": [1, 2], "hash": "old layout"}')
    capsys.readouterr()

    assert files.resolve(cfg, "train.json") == first  # the same extraction, found by the archive's hash
    assert f"{index}: field " in capsys.readouterr().err
    archive = (cfg.data_dir / "train.json.7z").resolve()
    assert json.loads(index.read_text())[str(archive)]["fingerprint"] == first.relative_to(index.parent).parts[0].rpartition("-")[2]  # rewritten whole


# -- records as pandas writes them back (../shared/cases: pandas_resaved) ---------------------------------


def test_labels_as_floats_and_null_angles_are_read_as_json_means_them(tmp_path: Path, make_records) -> None:
    records = make_records(6)
    for r in records:
        r["is_iceberg"] = float(r["is_iceberg"])
    records[2]["inc_angle"] = None
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    data = read_dataset(path, "train")
    assert data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert math.isnan(data.angle[2]) and math.isnan(data.angle[1])  # null like "na"


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [("is_iceberg", 0.5, "got 0.5"), ("is_iceberg", None, "got null"), ("is_iceberg", True, "got true"),
     ("is_iceberg", "1", 'got "1"'), ("inc_angle", "43.9", 'got "43.9"'), ("inc_angle", False, "got false")],
)  # fmt: skip
def test_refusals_speak_json_not_python(tmp_path: Path, make_records, field: str, value: object, said: str) -> None:
    records = make_records(4)
    records[3][field] = value
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        read_dataset(path, "train")
    message = str(err.value)
    assert f"record 3 (id \"tr000003\"), field '{field}'" in message and said in message
    assert "None" not in message and "True" not in message and "False" not in message


# -- a data folder whose files contradict each other (found by a newcomer's tries) ------------------------


def _copy(simulated: Path, tmp_path: Path) -> CompetitionConfig:
    data = tmp_path / "data"
    shutil.copytree(simulated, data, ignore=shutil.ignore_patterns("hidden"))
    return config(data, tmp_path / "work")


def test_a_sample_submission_of_other_test_data_is_refused_before_any_work(simulated: Path, tmp_path: Path) -> None:
    from competition.data.loader import load_competition

    cfg = _copy(simulated, tmp_path)
    lines = (cfg.data_dir / "sample_submission.csv").read_text().splitlines()
    (cfg.data_dir / "sample_submission.csv").write_text("\n".join([*lines[:-3], "x1,0.5", "x2,0.5"]) + "\n")
    with pytest.raises(
        DataError, match=r"the sample submission and test\.json disagree \(2 listed ids not in test\.json, e\.g\. \"x1\", \"x2\"; 3 test ids not listed"
    ):
        load_competition(cfg)


def test_ids_in_both_train_and_test_are_refused(simulated: Path, tmp_path: Path) -> None:
    from competition.data.loader import load_competition

    cfg = _copy(simulated, tmp_path)
    train = json.loads((cfg.data_dir / "train.json").read_text())
    test = json.loads((cfg.data_dir / "test.json").read_text())
    test[0]["id"] = train[4]["id"]
    (cfg.data_dir / "test.json").write_text(json.dumps(test))
    sample = (cfg.data_dir / "sample_submission.csv").read_text().splitlines()
    (cfg.data_dir / "sample_submission.csv").write_text("\n".join([sample[0], f"{train[4]['id']},0.5", *sample[2:]]) + "\n")
    with pytest.raises(DataError, match=rf"1 ids are in both train\.json and test\.json \(e\.g\. \"{train[4]['id']}\"\): test images must be unseen"):
        load_competition(cfg)
