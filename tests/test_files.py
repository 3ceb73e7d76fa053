"""The one atomic writer (`kdistill.files`): a failed write, however torch wraps it, is one line
naming the file and what is intact, and leaves the previous file and no temporary file."""

import errno
import io

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.files import WriteFailed, atomic_write, atomic_write_bytes, atomic_write_text, reported_write
from kdistill.models.checkpoint import atomic_save


class FullDisk(io.RawIOBase):
    """A file that takes `room` bytes, then raises ENOSPC as a full disk does."""

    def __init__(self, room: int):
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


TORCH_SAVE = torch.save


def torch_save_on_a_full_disk(obj, file) -> None:
    TORCH_SAVE(obj, FullDisk(room=2000))  # past torch's first record: it raises RuntimeError


def torch_save_on_a_disk_full_at_once(obj, file) -> None:
    TORCH_SAVE(obj, FullDisk(room=10))  # its first write: the OSError itself


def test_torch_wraps_a_full_disk_in_a_runtime_error():
    with pytest.raises(RuntimeError, match="unexpected pos") as raised:
        torch_save_on_a_full_disk({"w": torch.zeros(10_000)}, None)
    assert isinstance(raised.value.__context__, OSError)  # what the writer reads the reason from


@pytest.mark.parametrize("save", [torch_save_on_a_full_disk, torch_save_on_a_disk_full_at_once])
def test_a_full_disk_under_torch_save_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, save):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, path)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(WriteFailed) as raised:
        atomic_save({"w": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert str(raised.value) == f"no space left on device while writing {path}; the previous checkpoint.pt is untouched"
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_torch_failing_without_an_os_error_still_is_one_line(tmp_path, monkeypatch):
    def save(obj, file):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(WriteFailed, match=r"^the write failed \(the disk may be full\) while writing .*w\.pt; "
                                          r"no w\.pt was written$"):
        atomic_save({}, tmp_path / "w.pt")
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_name_their_reason_and_what_is_intact(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("kdistill.files.os.fsync", failing_fsync)
    with pytest.raises(WriteFailed) as raised:
        atomic_write_text(path, "new", intact="the run's checkpoint is intact")
    assert str(raised.value) == f"input/output error while writing {path}; the run's checkpoint is intact"
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_an_error_of_the_content_is_not_a_write_failure(tmp_path):
    def broken(file):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "a", broken)
    assert list(tmp_path.iterdir()) == []


def test_exclusive_creates_only_if_absent(tmp_path):
    path = tmp_path / "manifest.json"
    assert atomic_write_bytes(path, b"first", exclusive=True)
    assert not atomic_write_bytes(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first" and list(tmp_path.iterdir()) == [path]


def test_a_write_failure_is_a_user_error():
    assert issubclass(WriteFailed, KdistillError)  # the CLI prints it as one line, exit 2


def test_the_callers_word_on_what_is_intact_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", torch_save_on_a_disk_full_at_once)
    with pytest.raises(WriteFailed) as raised, reported_write(tmp_path / "run", "the run's checkpoint is intact"):
        atomic_save({}, tmp_path / "w.pt")
    assert str(raised.value) == (f"no space left on device while writing {tmp_path / 'w.pt'}; "
                                 "the run's checkpoint is intact")
