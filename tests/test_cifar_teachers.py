"""The published CIFAR-100 teachers in one step, against an archive the test writes itself and
serves from a file:// URL: fetched once, its checksum recorded and checked, the cache used after,
a tampered, corrupted or hostile archive refused."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import RunsCommand, run_kdistill

from kdistill.cli import main
from kdistill.config.loading import load_config
from kdistill.loading import build_teacher
from kdistill.models import create_model
from kdistill.models.cifar_teachers import CIFAR100_TEACHERS, member_name, teachers_folder


def teacher_state(arch: str, value: float) -> dict[str, torch.Tensor]:
    """Weights of the right names and shapes, each one value broadcast (a few bytes in the file)."""
    return {key: torch.full((1,), value).expand(tensor.shape) if tensor.is_floating_point() else tensor
            for key, tensor in create_model(arch, num_classes=100).state_dict().items()}


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archive(path: Path, value: float = 0.5, replace: dict[str, bytes] | None = None,
                  extra=lambda tar: None) -> Path:
    """An archive laid out as mdistiller's: cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth."""
    with tarfile.open(path, "w") as tar:
        for arch in CIFAR100_TEACHERS:
            name = member_name(arch)
            data = (replace or {}).get(arch) or torch_bytes({"model": teacher_state(arch, value), "epoch": 240})
            add_file(tar, f"cifar_teachers/{name}", data)
        extra(tar)
    return path


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("published") / "cifar_teachers.tar")


@pytest.fixture
def served(tmp_path, monkeypatch, good_archive):
    """A fresh cache, and the server's copy of the archive (a file:// URL) the test may change."""
    server = tmp_path / "server" / "cifar_teachers.tar"
    server.parent.mkdir()
    server.write_bytes(good_archive.read_bytes())
    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KDISTILL_TEACHERS_URL", server.as_uri())
    return server


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(capsys, *names: str) -> tuple[int, str, str]:
    code = main(["teachers", "fetch", *names])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fetched_once_checksum_recorded_then_the_cache_serves(served, tmp_path, capsys, monkeypatch):
    result = run_kdistill("teachers", "fetch", "resnet32x4")  # the real entry point, in its own process
    assert result.returncode == 0, result.stderr
    assert f"downloading the CIFAR-100 teachers (mdistiller's release archive) from {served.as_uri()}" in result.stdout
    folder = teachers_folder()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["archive_sha256"] == sha256(served) and manifest["url"] == served.as_uri()
    assert f"resnet32x4: {folder / member_name('resnet32x4')}" in result.stdout

    served.unlink()  # the server is gone: a second use needs the cache only
    code, out, _ = fetch(capsys)
    assert code == 0 and "downloading" not in out and all(f"{arch}: " in out for arch in CIFAR100_TEACHERS)
    cfg = load_config(None, ["teacher=resnet32x4", "teacher_pretrained=true", "data.name=cifar100"])
    teacher = build_teacher(cfg, num_classes=100, in_chans=3)
    assert all(torch.all(value == 0.5) for value in teacher.state_dict().values() if value.is_floating_point())


def test_a_tampered_archive_is_refused_with_its_checksum(served, capsys):
    assert fetch(capsys, "wrn_40_2")[0] == 0
    folder = teachers_folder()
    recorded = json.loads((folder / "manifest.json").read_text())["archive_sha256"]
    # The server now serves other weights; the cache lost its files, so the archive is fetched again.
    write_archive(served, value=0.25)
    (folder / "cifar_teachers.tar").unlink()
    (folder / member_name("wrn_40_2")).unlink()
    code, _, err = fetch(capsys, "wrn_40_2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"has sha256 {sha256(served)}, not the {recorded} recorded at its first verified download" in err
    assert not (folder / member_name("wrn_40_2")).exists()


def test_a_teacher_file_changed_after_unpacking_is_refused(served, capsys):
    assert fetch(capsys, "resnet56")[0] == 0
    path = teachers_folder() / member_name("resnet56")
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    code, _, err = fetch(capsys, "resnet56")
    assert code == 2 and f"{path} has sha256 {sha256(path)}, not the" in err and "recorded when it was unpacked" in err


def test_a_corrupted_archive_is_refused_with_its_checksum(served, capsys):
    served.write_bytes(b"this is no tar archive " * 400)
    code, _, err = fetch(capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"(sha256 {sha256(served)}) is not the published CIFAR-100 teachers archive: not a readable tar" in err
    assert not (teachers_folder() / "manifest.json").exists()


def test_a_hostile_archive_runs_no_code_and_writes_nothing_outside_the_cache(served, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    outside = tmp_path / "escaped.pth"

    def traversal(tar: tarfile.TarFile) -> None:
        add_file(tar, f"../../../../../../../..{outside}", b"x")
        add_file(tar, str(outside), b"x")

    hostile = torch_bytes({"model": RunsCommand(f"touch {marker}")})
    write_archive(served, replace={"resnet110": hostile}, extra=traversal)
    code, _, err = fetch(capsys, "resnet110")
    assert code == 2 and "does not load" in err and "none of its code ran" in err
    assert not marker.exists() and not outside.exists()
    assert not (teachers_folder() / member_name("resnet110")).exists()  # what failed is not left in the cache

    def link(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    with tarfile.open(served, "w") as tar:
        link(tar)
    (teachers_folder() / "cifar_teachers.tar").unlink()  # as the refusal says
    code, _, err = fetch(capsys, "vgg13")
    assert code == 2 and "is a link or a special file" in err


def test_offline_is_one_line_naming_the_url_and_where_to_put_the_file(served, capsys):
    served.unlink()
    code, _, err = fetch(capsys, "ResNet50")
    archive = teachers_folder() / "cifar_teachers.tar"
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"cannot download the CIFAR-100 teachers from {served.as_uri()}" in err and f"put it at {archive}" in err


def test_an_unknown_teacher_is_one_line(served, capsys):
    code, _, err = fetch(capsys, "resnet33")
    assert code == 2 and "'resnet33' is not a published CIFAR-100 teacher: use one of wrn_40_2" in err
