"""scripts/gpu/publish_authors.py: an authors.sh call's files published without overwriting anything."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("publish_authors", REPO / "scripts" / "gpu" / "publish_authors.py")
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)

PARALLEL = ("GRADSIFT_CACHE=/root/gradsift-cache python3 -m gradsift.parallel --workers 2 --each +table2_authors=l1 "
            "--each +table2_authors=tracin --out $OUT/parallel.json -- experiment=table2_cifar10n_authors "
            "data.source=jpeg data.noise=worst seed=1 retrain_from=/x\n")


def _call(folder: Path, files: dict[str, bytes], command: str = PARALLEL, parallel: bytes | None = b"{}") -> Path:
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "results.tgz").write_bytes(buf.getvalue())
    (folder / "command.txt").write_text(command)
    (folder / "progress.txt").write_text("exit 0 at 300 s\n")
    if parallel is not None:
        (folder / "parallel.json").write_bytes(parallel)
    return folder


def test_calls_are_published_in_order_without_overwriting(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "parallel_worst_s1.log.tail").write_text("an earlier call's log\n")
    (runs / "COMMANDS.txt").write_text("== call old\n")
    rec = json.dumps({"status": "ok"}).encode()
    a = _call(tmp_path / "a", {"./authors_worst_s1_l1/0_x/result.json": rec, "./parallel_worst_s1.log.tail": b"new\n",
                               "./authors_worst_s1_l1/multirun.yaml": b"a: 1\n"})
    # a later call of the same warm machine brings the first call's files again, and its own
    b = _call(tmp_path / "b", {"./authors_worst_s1_l1/0_x/result.json": rec, "./parallel_worst_s1.log.tail": b"new\n",
                               "./authors_worst_s1_l1/multirun.yaml": b"a: 2\n",
                               "./authors_worst_s1_tracin/0_y/result.json": rec},
              command="python3 experiments/run.py -m seed=1\n", parallel=None)
    assert publish.main([str(a), str(b), "--label", "2026-12-05 (H200, code abc)", "--runs", str(runs),
                         "--no-summaries"]) == 0
    assert (runs / "parallel_worst_s1.log.tail").read_text() == "an earlier call's log\n"  # kept
    assert (runs / "parallel_worst_s1.20261205a.log.tail").read_text() == "new\n"  # beside it
    assert not (runs / "parallel_worst_s1.20261205b.log.tail").exists()  # brought back again: not a third copy
    assert (runs / "authors_worst_s1_l1" / "multirun.yaml").read_text() == "a: 1\n"  # the first one stays
    assert (runs / "authors_worst_s1_tracin" / "0_y" / "result.json").exists()
    assert (runs / "parallel_worst_s1_l1_tracin.json").read_text() == "{}"
    commands = (runs / "COMMANDS.txt").read_text()
    assert commands.startswith("== call old\n== call 2026-12-05 (H200, code abc) a\nGRADSIFT_CACHE=")
    assert "== call 2026-12-05 (H200, code abc) b\npython3 experiments/run.py" in commands
    assert (runs / "progress.txt").read_text().count("exit 0 at 300 s") == 2


def test_a_different_result_in_a_published_job_folder_stops_it(tmp_path):
    runs = tmp_path / "runs"
    (runs / "authors_worst_s1_l1" / "0_x").mkdir(parents=True)
    (runs / "authors_worst_s1_l1" / "0_x" / "result.json").write_text('{"status": "ok", "old": 1}')
    c = _call(tmp_path / "c", {"./authors_worst_s1_tracin/0_y/result.json": b"{}",  # fine, but in a refused archive
                               "./authors_worst_s1_l1/0_x/result.json": b'{"status": "ok"}'})
    with pytest.raises(FileExistsError, match="nothing overwritten"):
        publish.publish_call(c, runs, "x a", "xa")
    assert json.loads((runs / "authors_worst_s1_l1" / "0_x" / "result.json").read_text())["old"] == 1
    assert not (runs / "authors_worst_s1_tracin").exists() and not (runs / "COMMANDS.txt").exists()
    with pytest.raises(FileNotFoundError, match="command.txt: missing"):
        publish.publish_call(tmp_path / "nothing", runs, "x b", "xb")


def test_parallel_name_reads_noise_seed_and_methods():
    assert publish.parallel_name(PARALLEL) == "parallel_worst_s1_l1_tracin.json"
    assert publish.parallel_name("python3 experiments/run.py -m\n") is None


def test_a_sweep_run_again_is_published_under_the_name_given(tmp_path):
    runs = tmp_path / "runs"
    old = runs / "authors_base_worst_s0" / "0_x"
    old.mkdir(parents=True)
    (old / "result.json").write_text('{"status": "ok", "base": "first"}')
    (runs / "authors_base_worst_s0.log.tail").write_text("first\n")
    again = {"./authors_base_worst_s0/0_x/result.json": b'{"status": "ok", "base": "second"}',
             "./authors_base_worst_s0.log.tail": b"second\n",
             "./authors_worst_s0_l1/0_y/result.json": b'{"status": "ok"}'}
    a = _call(tmp_path / "a", again, command="python3 experiments/run.py -m seed=0\n", parallel=None)
    with pytest.raises(FileExistsError, match="--rename authors_base_worst_s0=<new name>"):
        publish.publish_call(a, runs, "x a", "xa")
    b = _call(tmp_path / "b", {"./authors_worst_s0_tracin/0_z/result.json": b"{}", **again},
              command="python3 experiments/run.py -m seed=0\n", parallel=None)
    c = _call(tmp_path / "c", {"./authors_worst_s1_l2/0_w/result.json": b"{}"},
              command="python3 experiments/run.py -m seed=1\n", parallel=None)
    assert publish.main([str(a), str(b), str(c), "--label", "2026-12-06 (H200, code abc)", "--runs", str(runs),
                         "--no-summaries", "--rename", "authors_base_worst_s0=authors_base_worst_s0_20261206"]) == 0
    assert json.loads((old / "result.json").read_text())["base"] == "first"  # kept
    new = runs / "authors_base_worst_s0_20261206"
    assert json.loads((new / "0_x" / "result.json").read_text())["base"] == "second"
    assert (runs / "authors_base_worst_s0_20261206.log.tail").read_text() == "second\n"
    assert (runs / "authors_base_worst_s0.log.tail").read_text() == "first\n"
    assert (runs / "authors_worst_s0_tracin" / "0_z" / "result.json").exists()  # other folders keep their names
    commands = (runs / "COMMANDS.txt").read_text()
    assert commands.count("(published as: authors_base_worst_s0 -> authors_base_worst_s0_20261206)") == 2  # a, b
    assert "code abc) c\n" in commands  # c brought no such folder: no note
    with pytest.raises(SystemExit):
        publish.main([str(c), "--label", "x", "--runs", str(runs), "--rename", "authors_base_worst_s0"])


def test_the_control_the_summaries_pair_with_is_the_random_presets_row():
    import yaml

    preset = yaml.safe_load((REPO / "src" / "gradsift" / "conf" / "table2_authors" / "random.yaml").read_text())
    assert publish.CONTROL == preset["method"]


def test_parallel_name_of_a_mixed_call_names_each_job():
    mixed = ("GRADSIFT_CACHE=/c python3 -m gradsift.parallel --workers 3 --each data.noise=worst\\ seed=1\\ "
             "+table2_authors=random\\ retrain_from=/a --each data.noise=aggregate\\ seed=0\\ +table2_authors=none\\ "
             "retrain_from=/b --out $OUT/parallel.json -- experiment=table2_cifar10n_authors data.source=jpeg\n")
    assert publish.parallel_name(mixed) == "parallel_mix_worst_s1_random_aggregate_s0_none.json"
    same = mixed.replace("aggregate\\ seed=0", "worst\\ seed=1")  # one (noise, seed): the usual name
    assert publish.parallel_name(same) == "parallel_worst_s1_random_none.json"
