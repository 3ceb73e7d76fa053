"""The published CIFAR-100 teachers in one step: mdistiller's release archive, fetched once,
checked, unpacked into a cache, loaded from there (`teacher=resnet32x4 teacher_pretrained=true`,
or `kdistill teachers fetch`).

    $KDISTILL_HOME/cifar100_teachers/         (KDISTILL_HOME: default $XDG_CACHE_HOME/kdistill,
        cifar_teachers.tar                     or ~/.cache/kdistill)
        manifest.json                          the archive's URL and sha256, each teacher file's sha256
        <arch>_vanilla/ckpt_epoch_240.pth      the teachers, as the archive holds them

The archive's checksum: mdistiller publishes none, and none could be confirmed offline when this
was written, so kdistill pins no value. The first download that verifies (a tar holding the six
teacher files, each read as tensors only and loading strictly into its zoo model with 100
classes) has its sha256 recorded in manifest.json; every later download or archive placed by
hand must have that sha256, and every teacher file its recorded one (trust on first use).

Unpacking is safe by construction: only the six expected members are read, only if they are
regular files (never links or devices), and each is written under a name kdistill builds, so no
member name can reach outside the cache. `KDISTILL_TEACHERS_URL` points at a mirror.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from kdistill.errors import KdistillError, first_line
from kdistill.files import atomic_write, atomic_write_bytes, atomic_write_text
from kdistill.models.checkpoint import load_state_into, read_state_dict

TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
URL_VARIABLE = "KDISTILL_TEACHERS_URL"
HOME_VARIABLE = "KDISTILL_HOME"
ARCHIVE_FILE = "cifar_teachers.tar"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".fetch.lock"
# The archive's teachers (the zoo names), each at cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth.
CIFAR100_TEACHERS = ("wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50")
CIFAR100_CLASSES = 100
HASH_CHUNK = 1 << 20
ARCHIVE_DIGEST_SOURCE = "recorded at its first verified download"


def kdistill_home() -> Path:
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "kdistill"


def teachers_folder() -> Path:
    return kdistill_home() / "cifar100_teachers"


def teachers_url() -> str:
    return os.environ.get(URL_VARIABLE) or TEACHERS_URL


def member_name(arch: str) -> str:
    """Where the archive holds `arch`'s weights, and where the cache keeps them."""
    return f"{arch}_vanilla/ckpt_epoch_240.pth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), dict):
        raise KdistillError(f"{path} is not a kdistill teachers manifest: delete {folder} to fetch the teachers again")
    return manifest


@contextlib.contextmanager
def _fetch_lock(folder: Path) -> Iterator[None]:
    """One fetch at a time (grid runs may start together); the others wait, then find the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(url: str, archive: Path) -> None:
    """`url` into `archive` (renamed into place when whole), with a progress bar."""
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (https, or a file:// mirror)
    except (urllib.error.URLError, OSError, ValueError) as error:  # offline, a bad mirror URL
        raise KdistillError(f"cannot download the CIFAR-100 teachers from {url} ({first_line(error)}): download "
                            f"that file elsewhere and put it at {archive}") from None

    def copy(file: IO) -> None:
        size = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {archive.name}", leave=False,
                  disable=not sys.stderr.isatty()) as bar:
            while chunk := response.read(HASH_CHUNK):
                file.write(chunk)
                bar.update(len(chunk))

    with response:
        atomic_write(archive, copy)


def _wrong_archive(archive: Path, digest: str, reason: str) -> KdistillError:
    return KdistillError(f"{archive} (sha256 {digest}) is not the published CIFAR-100 teachers archive: {reason}; "
                         f"delete it and run again to download {teachers_url()}")


def _unpack(archive: Path, digest: str, folder: Path) -> dict[str, str]:
    """Write the teachers' files from `archive` into `folder` and check each; their sha256 by member."""
    from kdistill.models import create_model

    wanted = {member_name(arch): arch for arch in CIFAR100_TEACHERS}
    digests = {}
    try:
        with tarfile.open(archive) as tar:
            found = {}
            for member in tar.getmembers():
                name = member.name.removeprefix("./").removeprefix("cifar_teachers/")
                if name in wanted:
                    if not member.isfile():
                        raise _wrong_archive(archive, digest, f"{member.name} is a link or a special file, not a file")
                    found[name] = member
            missing = sorted(set(wanted) - set(found))
            if missing:
                raise _wrong_archive(archive, digest, f"it lacks cifar_teachers/{missing[0]}"
                                                      + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
            for name, member in found.items():
                data = tar.extractfile(member).read()
                target = folder / name  # a name kdistill built: no member name decides where a file goes
                atomic_write_bytes(target, data)
                digests[name] = hashlib.sha256(data).hexdigest()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise _wrong_archive(archive, digest, f"not a readable tar archive ({first_line(error)})") from None
    for name, arch in wanted.items():
        try:  # tensors only (weights_only=True), and they must fit the zoo model of that name
            load_state_into(create_model(arch, num_classes=CIFAR100_CLASSES), read_state_dict(folder / name),
                            folder / name)
        except KdistillError as error:
            for written in wanted:
                (folder / written).unlink(missing_ok=True)
            raise _wrong_archive(archive, digest, f"its {name} does not load: {error}") from None
    return digests


def _checked_member(folder: Path, manifest: dict[str, Any], arch: str) -> Path | None:
    """The cached file of `arch` when it is there with its recorded sha256; None when absent."""
    path = folder / member_name(arch)
    recorded = manifest["members"].get(member_name(arch))
    if not path.is_file() or recorded is None:
        return None
    actual = sha256_of(path)
    if actual != recorded:
        raise KdistillError(f"{path} has sha256 {actual}, not the {recorded} recorded when it was unpacked "
                            f"(changed or damaged since): delete it and run again to unpack it anew")
    return path


def fetch_teachers(names: list[str] | None = None, report=print) -> dict[str, Path]:
    """The cached weight file of each teacher in `names` (default: all six), fetching and
    unpacking the archive first when the cache lacks one; `report` gets what was done."""
    names = list(names or CIFAR100_TEACHERS)
    for name in names:
        if name not in CIFAR100_TEACHERS:
            raise KdistillError(f"'{name}' is not a published CIFAR-100 teacher: use one of "
                                f"{', '.join(CIFAR100_TEACHERS)}")
    folder = teachers_folder()
    manifest = _read_manifest(folder)
    if manifest is not None:
        cached = {name: _checked_member(folder, manifest, name) for name in names}
        if all(cached.values()):
            return cached
    with _fetch_lock(folder):
        manifest = _read_manifest(folder)  # another process may have fetched meanwhile
        archive = folder / ARCHIVE_FILE
        url = teachers_url()
        if not archive.is_file():
            report(f"downloading the CIFAR-100 teachers (mdistiller's release archive) from {url}")
            _download(url, archive)
        digest = sha256_of(archive)
        expected = manifest["archive_sha256"] if manifest else None
        if expected is not None and digest != expected:
            raise KdistillError(f"{archive} has sha256 {digest}, not the {expected} {ARCHIVE_DIGEST_SOURCE} "
                                f"({manifest.get('recorded_at')}): it is damaged or another file; delete it and run "
                                f"again to download {url}")
        members = _unpack(archive, digest, folder)
        if manifest is None:
            manifest = {"url": url, "archive_sha256": digest, "recorded_at": datetime.now(timezone.utc).isoformat(),
                        "checksum_source": ARCHIVE_DIGEST_SOURCE + " (mdistiller publishes none)", "members": members}
            atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
            report(f"CIFAR-100 teachers unpacked into {folder}; archive sha256 {digest} recorded")
        return {name: _checked_member(folder, manifest, name) for name in names}


def published_teacher_file(arch: str) -> Path:
    """The weight file of the published CIFAR-100 teacher `arch`, fetched on first use."""
    return fetch_teachers([arch], report=lambda line: print(f"kdistill: {line}", file=sys.stderr, flush=True))[arch]


__all__ = ["CIFAR100_TEACHERS", "TEACHERS_URL", "fetch_teachers", "published_teacher_file", "teachers_folder"]
