"""Archives: checks that a zip or tar file is the archive expected, and extraction that no
entry can escape from (absolute paths, '..', links, special files) and that refuses what would
not fit (a zip bomb, a full disk), unpacked in a hidden sibling folder and moved in when whole.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from fetching import DownloadError, SourceError, disk_full_is_fatal, md5_of_stream, require_md5

TAR_EXTRACT_OPTIONS = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


# ---------------------------------------------------------------- verification


def archive_verifier(md5: str | None = None) -> Callable[[Path], None]:
    """A check that a file is a readable zip or tar archive (with this MD5, when given)."""
    def verify(path: Path) -> None:
        if md5 is not None:
            with open(path, "rb") as stream:
                require_md5(path, md5, md5_of_stream(stream))
        if not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
            raise SourceError(f"{path.name} is not a zip or tar archive")
    return verify


def tar_layout_verifier(top: str, folders: Sequence[str]) -> Callable[[Path], None]:
    """A check that a tar archive reads to its end (a .tar.xz's own integrity checks included)
    and holds each of ``top/<folder>/``."""
    def verify(path: Path) -> None:
        try:
            with tarfile.open(path) as tar:
                names = tar.getnames()
        except (tarfile.TarError, lzma.LZMAError, EOFError, zlib.error, OSError) as exc:
            raise SourceError(f"{path.name} is not a complete tar archive ({exc})") from None
        for folder in folders:
            prefix = f"{top}/{folder}/"
            if not any(name.startswith(prefix) for name in names):
                raise SourceError(f"{path.name} holds no {prefix}: not the expected archive")
    return verify


# ---------------------------------------------------------------- safe extraction


def unsafe_entry_reason(name: str) -> str | None:
    """Why an archive entry name could land outside the target folder, or None if it cannot."""
    if not name:
        return "an empty name"
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive:
        return "an absolute path"
    if ".." in posix.parts:
        return "a path with '..'"
    return None


def zip_entry_problem(info: zipfile.ZipInfo) -> str | None:
    """What makes a zip entry unsafe to extract, or None."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symlink"
    return unsafe_entry_reason(info.filename)


def tar_entry_problem(member: tarfile.TarInfo) -> str | None:
    """What makes a tar entry unsafe to extract, or None."""
    if member.issym():
        return "a symlink"
    if member.islnk():
        return "a hardlink"
    if not (member.isfile() or member.isdir()):
        return "a device or special file"
    return unsafe_entry_reason(member.name)


def refuse_unsafe_entries(archive: Path, target: Path, entries: list[tuple[str, str | None]]):
    """Raise DownloadError naming the first unsafe (name, problem) entry, if any."""
    for name, problem in entries:
        if problem:
            raise DownloadError(f"refusing to extract {archive}: entry {name!r} is {problem} "
                                f"(could land outside {target}); nothing was extracted")


MAX_EXPANSION = 100
"""The most an archive may expand to, as a multiple of its size (MVTec's xz tars: under 10)."""


def refuse_oversized(archive: Path, target: Path, declared: int) -> None:
    """DownloadError when an archive's entries declare more bytes than MAX_EXPANSION times
    the archive, or than the free space where they would go (a zip bomb, or a full disk)."""
    size = archive.stat().st_size
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if declared > MAX_EXPANSION * max(size, 1) or declared > free:
        raise DownloadError(f"refusing to extract {archive}: its entries declare {declared} "
                            f"bytes, {declared / max(size, 1):.0f} times its {size} bytes "
                            f"({free} bytes free at {existing}); nothing was extracted")


def archive_entries(handle) -> list[tuple[str, str | None, int]]:
    """(name, what makes it unsafe or None, declared size) of every entry of an open zip or tar
    archive."""
    if isinstance(handle, zipfile.ZipFile):
        return [(i.filename, zip_entry_problem(i), i.file_size) for i in handle.infolist()]
    return [(m.name, tar_entry_problem(m), m.size) for m in handle.getmembers()]


def open_archive(archive: Path):
    """``archive`` opened as a zip or tar file; DownloadError when it is neither."""
    if zipfile.is_zipfile(archive):
        return zipfile.ZipFile(archive)
    if tarfile.is_tarfile(archive):
        return tarfile.open(archive)
    raise DownloadError(f"{archive} is not a zip or tar archive")


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a zip or tar archive into target, after checking that no entry can escape it
    and that what the entries declare fits (``refuse_oversized``)."""
    archive, target = Path(archive), Path(target)
    with open_archive(archive) as handle:
        entries = archive_entries(handle)
        refuse_unsafe_entries(archive, target, [(name, problem) for name, problem, _ in entries])
        refuse_oversized(archive, target, sum(size for _, _, size in entries))
        target.mkdir(parents=True, exist_ok=True)
        if isinstance(handle, zipfile.ZipFile):
            handle.extractall(target)
        else:
            handle.extractall(target, members=handle.getmembers(), **TAR_EXTRACT_OPTIONS)
    return target


def replace_path(source: Path, dest: Path) -> None:
    """Move source onto dest, removing whatever dest was."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    os.replace(source, dest)


def extract_into(archive: Path, target: Path) -> None:
    """Extract archive in a hidden sibling of target, then move its top-level entries in."""
    staging = target.parent / f".{target.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with disk_full_is_fatal(staging):
            safe_extract(archive, staging)
        for entry in staging.iterdir():
            replace_path(entry, target / entry.name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DownloadError(f"{archive} is damaged ({exc}); delete it and run again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
