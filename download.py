"""Fetch, verify and extract the datasets main.py reads into <data_dir>/<name>/.

    python download.py mnist celebA lsun mvtec [--category NAME[,NAME]] [--mirror URL]
        [--from PATH]

Every file streams to `<file>.part` (resumed with an HTTP Range request when one exists), is
verified, and only then renamed into place; archives are unpacked in a hidden sibling folder and
moved in when complete. An interrupted or failed run therefore never leaves anything that main.py
would read as data.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import lzma
import math
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from tqdm import tqdm

DATASETS = ("mnist", "celebA", "lsun", "mvtec")

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

CELEBA_ZIP = "img_align_celeba.zip"
CELEBA_MD5 = "00d2c5bc6d35e252742224ab0c1e8fcb"
CELEBA_DRIVE_ID = "0B7EVK8r0v71pZjFTYXZWM3FlRnM"
CELEBA_URLS = (
    f"https://drive.google.com/uc?export=download&id={CELEBA_DRIVE_ID}",
    f"https://drive.usercontent.google.com/download?export=download&id={CELEBA_DRIVE_ID}",
)
DRIVE_HOSTS = frozenset({"drive.google.com", "drive.usercontent.google.com", "docs.google.com"})

LSUN_CATEGORIES_URL = "http://dl.yf.io/lsun/categories.txt"
LSUN_SCENES_URL = "http://dl.yf.io/lsun/scenes/"
LSUN_SPLITS = ("train", "val")

MVTEC_SHARE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
MVTEC_URLS = {category: f"{share}{part}/{category}.tar.xz" for category, share, part in (
    ("bottle", MVTEC_SHARE, "420937370-1629951468"),
    ("cable", MVTEC_SHARE, "420937413-1629951498"),
    ("capsule", MVTEC_SHARE, "420937454-1629951595"),
    ("carpet", MVTEC_SHARE, "420937484-1629951672"),
    ("grid", MVTEC_SHARE, "420937487-1629951814"),
    ("hazelnut", MVTEC_SHARE, "420937545-1629951845"),
    ("leather", MVTEC_SHARE, "420937607-1629951964"),
    ("metal_nut", MVTEC_SHARE, "420937637-1629952063"),
    ("pill", "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/",
     "420938129-1629953099"),
    ("screw", MVTEC_SHARE, "420938130-1629953152"),
    ("tile", MVTEC_SHARE, "420938133-1629953189"),
    ("toothbrush", MVTEC_SHARE, "420938134-1629953256"),
    ("transistor", MVTEC_SHARE, "420938166-1629953277"),
    ("wood", MVTEC_SHARE, "420938383-1629953354"),
    ("zipper", MVTEC_SHARE, "420938385-1629953449"),
)}
"""The MVTec AD category archives as MVTec's download page links them (no checksums published)."""
MVTEC_LAYOUT = ("train/good", "test", "ground_truth")

PART_SUFFIX = ".part"
DONE_MARKER = ".downloaded"
CHUNK_BYTES = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
PLAIN_ENCODING = {"Accept-Encoding": "identity"}
TAR_EXTRACT_OPTIONS = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class DownloadError(Exception):
    """A failure reported to the user as one line on stderr (exit code 1)."""


class SourceError(DownloadError):
    """One source (a mirror or a local path) failed; another source may still work."""


class TransientError(SourceError):
    """A failure worth retrying on the same source (server busy, connection cut)."""


@dataclass(frozen=True)
class FetchOptions:
    """How requests are made: tries per source, back-off base and (connect, read) timeouts in
    seconds, the read size (what an interrupted transfer can lose of its last read), the
    seconds one file may take from one source over all its tries (``deadline``; then the next
    source is tried) and between two 'still waiting' lines (``heartbeat``)."""

    retries: int = 3
    backoff: float = 1.0
    timeout: tuple[float, float] = (10.0, 60.0)
    chunk_bytes: int = 1 << 16
    deadline: float = 3600.0
    heartbeat: float = 15.0
    session: requests.Session = field(default_factory=requests.Session)


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset: its file name, the URLs to try in order, its MD5 if known,
    and a check of its contents (``layout``: raises SourceError) where one is known."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    layout: Callable[[Path], None] | None = None

    def verifier(self, check_md5: bool = True) -> Callable[[Path], None]:
        """The checks a copy of this archive must pass (its MD5 only when ``check_md5``)."""
        def verify(path: Path) -> None:
            archive_verifier(self.md5 if check_md5 else None)(path)
            if self.layout is not None:
                self.layout(path)
        return verify


# ---------------------------------------------------------------- small helpers


def part_path(dest: Path) -> Path:
    """The temporary file a download of dest streams into."""
    return dest.with_name(dest.name + PART_SUFFIX)


def join_url(base: str, name: str) -> str:
    """base (a folder URL, with or without the trailing slash) followed by name."""
    return base.rstrip("/") + "/" + name


def archive_url(mirror: str, name: str) -> str:
    """A mirror given as a file URL is used as is; a folder URL gets name appended."""
    parts = urlsplit(mirror)
    looks_like_file = parts.query or "." in parts.path.rsplit("/", 1)[-1]
    return mirror if looks_like_file else join_url(mirror, name)


def with_query(url: str, **params: str) -> str:
    """url with params added to (or replacing those in) its query string."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | params
    return urlunsplit(parts._replace(query=urlencode(query)))


def md5_of_stream(stream) -> str:
    """Hex MD5 of everything readable from a binary stream."""
    digest = hashlib.md5()
    for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()


def is_gzip_name(path: Path) -> bool:
    """Whether path (or the file its .part becomes) is named as gzip-compressed."""
    return path.name.removesuffix(PART_SUFFIX).endswith(".gz")


def describe_failure(exc: Exception) -> str:
    """A short, single-line reason for a network failure."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken during the transfer"
    if isinstance(exc, requests.ConnectionError):
        match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
        return f"connection failed: {match.group(1).strip()}" if match else "connection failed"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def disk_full_is_fatal(path: Path) -> Iterator[None]:
    """Turn 'no space left on device' while writing path into a DownloadError."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(f"disk full (no space left on device) while writing {path}") from None
        raise


# ---------------------------------------------------------------- HTTP download


def with_retries(action: Callable[[], object], options: FetchOptions,
                 deadline_at: float = math.inf):
    """Call action(), retrying network failures with exponential back-off; SourceError at last,
    or once the monotonic clock passes deadline_at."""
    attempt = 1
    while True:
        try:
            return action()
        except (requests.RequestException, TransientError) as exc:
            if time.monotonic() >= deadline_at:
                raise SourceError(f"not finished within the {options.deadline:g} s deadline "
                                  f"({describe_failure(exc)})") from None
            if attempt >= options.retries:
                raise SourceError(describe_failure(exc)) from None
        time.sleep(min(options.backoff * 2 ** (attempt - 1),
                       max(0.0, deadline_at - time.monotonic())))
        attempt += 1


class Heartbeat:
    """Prints a 'still waiting' line every ``interval`` seconds while a transfer is slow or
    silent (progress bars are off when stdout is not a terminal), until ``stop``."""

    def __init__(self, label: str, interval: float):
        self.label, self.interval = label, interval
        self.received = 0
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            print(f"  still waiting for {self.label}: {self.received} bytes in "
                  f"{time.monotonic() - self.started:.0f} s", flush=True)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def raise_for_http_status(resp: requests.Response) -> None:
    """TransientError for statuses worth retrying, SourceError for other HTTP errors."""
    if resp.status_code in RETRY_STATUSES:
        raise TransientError(f"HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise SourceError(f"HTTP {resp.status_code}")


def content_range(resp: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    match = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def resume_offset(resp: requests.Response, offset: int, part: Path) -> int:
    """Where the body of resp starts in the file: offset for a matching 206, else 0."""
    if resp.status_code != 206:
        return 0
    first, _ = content_range(resp)
    if first != offset:
        part.unlink(missing_ok=True)
        raise TransientError(f"server resumed at byte {first}, not {offset}; restarting")
    return offset


def write_body(resp: requests.Response, part: Path, start: int, label: str,
               chunk_bytes: int, heartbeat: Heartbeat) -> None:
    """Stream the body of resp into part from byte start, with a progress bar."""
    expected = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers else None
    total = start + expected if expected is not None else None
    written = 0
    with (
        disk_full_is_fatal(part),
        open(part, "ab" if start else "wb") as out,
        tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
             desc=label, disable=None) as bar,
    ):
        for chunk in resp.iter_content(chunk_bytes):
            out.write(chunk)
            bar.update(len(chunk))
            written += len(chunk)
            heartbeat.received = start + written
    if expected is not None and written < expected:
        raise TransientError(f"connection closed after {start + written} of {total} bytes")


def download_once(url: str, part: Path, options: FetchOptions,
                  deadline_at: float = math.inf) -> None:
    """One request for url, appending to part when the server honours the Range request; its
    reads are cut off when the monotonic clock passes deadline_at."""
    if urlsplit(url).hostname in DRIVE_HOSTS:
        url = confirm_drive_download(url, options)
    offset = part.stat().st_size if part.exists() else 0
    headers = PLAIN_ENCODING | ({"Range": f"bytes={offset}-"} if offset else {})
    heartbeat = Heartbeat(urlsplit(url).netloc, options.heartbeat)
    heartbeat.received = offset
    try:
        with options.session.get(url, headers=headers, stream=True,
                                 timeout=options.timeout) as resp:
            if resp.status_code == 416:
                if content_range(resp)[1] == offset:
                    return
                part.unlink(missing_ok=True)
                raise TransientError("stored part does not fit the file; restarting")
            raise_for_http_status(resp)
            label = part.name.removesuffix(PART_SUFFIX)
            cutoff = threading.Timer(max(0.0, deadline_at - time.monotonic()), resp.raw.shutdown)
            cutoff.daemon = True
            cutoff.start()
            try:
                write_body(resp, part, resume_offset(resp, offset, part), label,
                           options.chunk_bytes, heartbeat)
            finally:
                cutoff.cancel()
    finally:
        heartbeat.stop()


def verify_part(part: Path, verify: Callable[[Path], None] | None) -> None:
    """Run verify on part; a part that fails it is removed."""
    if verify is None:
        return
    try:
        verify(part)
    except SourceError:
        part.unlink(missing_ok=True)
        raise


def fetch(url: str, dest: Path, verify: Callable[[Path], None] | None = None,
          options: FetchOptions | None = None) -> Path:
    """Download url to dest: stream to dest.part (resuming it), verify, rename into place."""
    options = options or FetchOptions()
    dest = Path(dest)
    part = part_path(dest)
    resumed = part.exists() and part.stat().st_size > 0
    deadline_at = time.monotonic() + options.deadline

    def download() -> None:
        if time.monotonic() >= deadline_at:
            raise SourceError(f"not finished within the {options.deadline:g} s deadline")
        download_once(url, part, options, deadline_at)

    with_retries(download, options, deadline_at)
    try:
        verify_part(part, verify)
    except SourceError:
        if not resumed:
            raise
        with_retries(download, options, deadline_at)
        verify_part(part, verify)
    os.replace(part, dest)
    return dest


def fetch_first(urls: Sequence[str], dest: Path, verify: Callable[[Path], None] | None = None,
                options: FetchOptions | None = None) -> Path:
    """Try urls in order; return dest once one of them delivers a verified file."""
    failures = []
    for url in urls:
        print(f"downloading {url}")
        try:
            return fetch(url, dest, verify, options)
        except SourceError as exc:
            print(f"  failed: {exc}")
            failures.append(f"{url} ({exc})")
    raise DownloadError(f"could not download {Path(dest).name}; tried: " + "; ".join(failures))


# ---------------------------------------------------------------- Google Drive


class DriveFormParser(HTMLParser):
    """Collects the action and fields of Drive's 'download anyway' form."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and values.get("id") == "download-form":
            self.action = values.get("action") or ""
            self.in_form = True
        elif tag == "input" and self.in_form and values.get("name"):
            self.fields[values["name"]] = values.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.in_form = False


def drive_form_url(page: str, page_url: str) -> str | None:
    """The URL the 'download anyway' form of a Drive warning page submits to, if any."""
    parser = DriveFormParser()
    parser.feed(page)
    if parser.action is None:
        return None
    return with_query(urljoin(page_url, parser.action), **parser.fields)


def confirm_drive_download(url: str, options: FetchOptions) -> str:
    """The URL that streams a Google Drive file, past the large-file virus-scan warning."""
    with options.session.get(url, headers=PLAIN_ENCODING, stream=True,
                             timeout=options.timeout) as resp:
        raise_for_http_status(resp)
        if "text/html" not in resp.headers.get("Content-Type", ""):
            return url
        tokens = [v for k, v in resp.cookies.items() if k.startswith("download_warning")]
        page = resp.text
    if tokens:
        return with_query(url, confirm=tokens[0])
    form_url = drive_form_url(page, url)
    if form_url:
        return form_url
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        return with_query(url, confirm=match.group(1))
    if "quota" in page.lower():
        raise SourceError("Google Drive download quota exceeded; try later or use --mirror/--from")
    raise SourceError("Google Drive returned a page without a download link")


# ---------------------------------------------------------------- verification


def idx_md5(path: Path) -> str:
    """MD5 of an idx file's decompressed content (gzip-compressed when named .gz)."""
    try:
        with (gzip.open(path, "rb") if is_gzip_name(path) else open(path, "rb")) as stream:
            return md5_of_stream(stream)
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path.name} is not a readable gzip file ({exc})") from None


def idx_verifier(md5: str) -> Callable[[Path], None]:
    """A check that an idx file (plain or .gz) decompresses to content with this MD5."""
    def verify(path: Path) -> None:
        actual = idx_md5(path)
        if actual != md5:
            raise SourceError(f"MD5 mismatch for {path.name}: expected {md5}, got {actual}")
    return verify


def archive_verifier(md5: str | None = None) -> Callable[[Path], None]:
    """A check that a file is a readable zip or tar archive (with this MD5, when given)."""
    def verify(path: Path) -> None:
        if md5 is not None:
            with open(path, "rb") as stream:
                actual = md5_of_stream(stream)
            if actual != md5:
                raise SourceError(f"MD5 mismatch for {path.name}: expected {md5}, got {actual}")
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


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a zip or tar archive into target, after checking that no entry can escape it
    and that what the entries declare fits (``refuse_oversized``)."""
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            refuse_unsafe_entries(archive, target,
                                  [(i.filename, zip_entry_problem(i)) for i in infos])
            refuse_oversized(archive, target, sum(i.file_size for i in infos))
            target.mkdir(parents=True, exist_ok=True)
            zf.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            refuse_unsafe_entries(archive, target,
                                  [(m.name, tar_entry_problem(m)) for m in members])
            refuse_oversized(archive, target, sum(m.size for m in members))
            target.mkdir(parents=True, exist_ok=True)
            tf.extractall(target, members=members, **TAR_EXTRACT_OPTIONS)
    else:
        raise DownloadError(f"{archive} is not a zip or tar archive")
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


# ---------------------------------------------------------------- local sources (--from)


def find_local(source: Path, names: Sequence[str]) -> Path | None:
    """The file source is, or the first file under folder source, named one of names."""
    if source.is_file():
        return source if source.name in names else None
    for name in names:
        hits = sorted(p for p in source.rglob(name) if p.is_file())
        if hits:
            return hits[0]
    return None


def copy_local(source: Path, dest: Path, verify: Callable[[Path], None]) -> Path:
    """Copy source to dest via dest.part (gzip-compressing when only dest is .gz), verified."""
    part = part_path(dest)
    compress = is_gzip_name(dest) and not is_gzip_name(source)
    with (
        disk_full_is_fatal(part),
        open(source, "rb") as src,
        (gzip.open(part, "wb") if compress else open(part, "wb")) as out,
    ):
        shutil.copyfileobj(src, out, CHUNK_BYTES)
    try:
        verify_part(part, verify)
    except SourceError as exc:
        raise DownloadError(f"{source}: {exc}") from None
    os.replace(part, dest)
    return dest


@contextmanager
def local_folder(source: Path, scratch_parent: Path) -> Iterator[Path]:
    """source itself when it is a folder; an archive is unpacked into a hidden scratch folder."""
    if not source.exists():
        raise DownloadError(f"--from {source}: no such file or folder")
    if source.is_dir():
        yield source
        return
    with tempfile.TemporaryDirectory(prefix=".from-", dir=scratch_parent) as scratch:
        with disk_full_is_fatal(Path(scratch)):
            safe_extract(source, Path(scratch))
        yield Path(scratch)


# ---------------------------------------------------------------- MNIST


def present_idx_file(target: Path, name: str, md5: str) -> Path | None:
    """The verified copy (name.gz or plain name) already in target; a corrupt one is removed."""
    for candidate in (target / f"{name}.gz", target / name):
        if not candidate.is_file():
            continue
        try:
            idx_verifier(md5)(candidate)
            return candidate
        except SourceError as exc:
            print(f"mnist: {exc}; replacing it")
            candidate.unlink()
    return None


def download_mnist(data_dir: Path | str, mirrors: Sequence[str] = MNIST_MIRRORS,
                   md5s: dict[str, str] = MNIST_MD5, from_path: Path | str | None = None,
                   options: FetchOptions | None = None) -> Path:
    """Put the MNIST idx files, gzipped and MD5-verified, into <data_dir>/mnist/."""
    target = Path(data_dir) / "mnist"
    target.mkdir(parents=True, exist_ok=True)
    missing = {}
    for name, md5 in md5s.items():
        found = present_idx_file(target, name, md5)
        if found:
            print(f"mnist: {found} found, skip")
        else:
            missing[name] = md5
    if not missing:
        return target
    if from_path is None:
        for name, md5 in missing.items():
            urls = [join_url(mirror, f"{name}.gz") for mirror in mirrors]
            fetch_first(urls, target / f"{name}.gz", idx_verifier(md5), options)
        return target
    with local_folder(Path(from_path), target.parent) as folder:
        for name, md5 in missing.items():
            source = find_local(folder, (f"{name}.gz", name))
            if source is None:
                raise DownloadError(f"--from {from_path} holds no {name}.gz or {name}")
            print(f"copying {source}")
            copy_local(source, target / f"{name}.gz", idx_verifier(md5))
    return target


# ---------------------------------------------------------------- archive datasets


def completed_archives(target: Path) -> set[str]:
    """Names of the archives already extracted into target."""
    marker = target / DONE_MARKER
    return set(marker.read_text().split()) if marker.is_file() else set()


def mark_completed(target: Path, name: str) -> None:
    """Record that archive name has been fully extracted into target."""
    with open(target / DONE_MARKER, "a") as marker:
        marker.write(name + "\n")


def obtain_archive(archive: Archive, target: Path, from_path: Path | None,
                   single: bool, options: FetchOptions | None) -> Path:
    """A verified local copy of archive: from --from, a previous download, or the network."""
    if from_path is not None:
        names = (archive.name, from_path.name) if single and from_path.is_file() else (archive.name,)
        source = find_local(from_path, names)
        if source is None:
            raise DownloadError(f"--from {from_path} holds no {archive.name}")
        try:
            archive.verifier(check_md5=False)(source)
        except SourceError as exc:
            raise DownloadError(f"{source}: {exc}") from None
        return source
    dest = target / archive.name
    if dest.is_file():
        return dest
    return fetch_first(archive.urls, dest, archive.verifier(), options)


def install_archives(target: Path, archives: Sequence[Archive], from_path: Path | str | None,
                     options: FetchOptions | None) -> Path:
    """Download (or take from --from), verify and extract each archive into target once."""
    target.mkdir(parents=True, exist_ok=True)
    from_path = Path(from_path) if from_path is not None else None
    if from_path is not None and not from_path.exists():
        raise DownloadError(f"--from {from_path}: no such file or folder")
    for archive in archives:
        if archive.name in completed_archives(target):
            print(f"{target.name}: {archive.name} found (extracted in {target}), skip")
            continue
        source = obtain_archive(archive, target, from_path, len(archives) == 1, options)
        print(f"extracting {source} into {target}")
        extract_into(source, target)
        mark_completed(target, archive.name)
        if from_path is None:
            source.unlink()
    return target


def download_celeba(data_dir: Path | str, mirrors: Sequence[str] = (),
                    from_path: Path | str | None = None, md5: str | None = CELEBA_MD5,
                    options: FetchOptions | None = None) -> Path:
    """Put the aligned CelebA jpgs into <data_dir>/celebA/ (mirrors first, then Google Drive)."""
    target = Path(data_dir) / "celebA"
    if not (target / DONE_MARKER).exists() and target.is_dir() and any(target.rglob("*.jpg")):
        print(f"celebA: {target} already holds images, skip (delete it to download again)")
        return target
    urls = tuple(archive_url(mirror, CELEBA_ZIP) for mirror in mirrors) + CELEBA_URLS
    return install_archives(target, [Archive(CELEBA_ZIP, urls, md5)], from_path, options)


def check_lsun_category(category: str, categories_url: str, options: FetchOptions) -> None:
    """Refuse a category missing from the published list; go on if the list is unreachable."""
    def get_categories() -> list[str]:
        with options.session.get(categories_url, headers=PLAIN_ENCODING,
                                 timeout=options.timeout) as resp:
            raise_for_http_status(resp)
            return resp.text.split()
    try:
        categories = with_retries(get_categories, options)
    except SourceError as exc:
        print(f"lsun: could not read the category list ({exc}); trying {category!r} anyway")
        return
    if category not in categories:
        raise DownloadError(f"unknown LSUN category {category!r}; "
                            f"choose from: {', '.join(categories)}")


def download_lsun(data_dir: Path | str, category: str = "bedroom", mirrors: Sequence[str] = (),
                  from_path: Path | str | None = None,
                  categories_url: str = LSUN_CATEGORIES_URL,
                  options: FetchOptions | None = None) -> Path:
    """Put the LSUN <category> train and val LMDB folders into <data_dir>/lsun/."""
    options = options or FetchOptions()
    target = Path(data_dir) / "lsun"
    names = [f"{category}_{split}_lmdb.zip" for split in LSUN_SPLITS]
    if from_path is None and not set(names) <= completed_archives(target):
        check_lsun_category(category, categories_url, options)
    archives = [Archive(name, tuple(archive_url(m, name) for m in (*mirrors, LSUN_SCENES_URL)))
                for name in names]
    return install_archives(target, archives, from_path, options)


def mvtec_categories(text: str | None) -> list[str]:
    """The MVTec AD categories named in a comma list (any case); all 15 for None."""
    if text is None:
        return list(MVTEC_URLS)
    categories = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [c for c in categories if c not in MVTEC_URLS]
    if unknown or not categories:
        raise DownloadError(f"unknown MVTec AD category {', '.join(unknown) or repr(text)}; "
                            f"choose from: {', '.join(MVTEC_URLS)}")
    return list(dict.fromkeys(categories))


def download_mvtec(data_dir: Path | str, categories: Sequence[str] = tuple(MVTEC_URLS),
                   mirrors: Sequence[str] = (), from_path: Path | str | None = None,
                   options: FetchOptions | None = None) -> Path:
    """Put MVTec AD categories into <data_dir>/mvtec/<category>/ (train/, test/, ground_truth/).

    MVTec publishes no checksums: each archive must read to its end (xz's integrity checks)
    and hold the category's train/good/, test/ and ground_truth/ folders.
    """
    archives = [Archive(f"{category}.tar.xz",
                        (*(archive_url(m, f"{category}.tar.xz") for m in mirrors),
                         MVTEC_URLS[category]),
                        layout=tar_layout_verifier(category, MVTEC_LAYOUT))
                for category in categories]
    return install_archives(Path(data_dir) / "mvtec", archives, from_path, options)


# ---------------------------------------------------------------- command line


def dataset_name(text: str) -> str:
    """The canonical spelling of a dataset name given in any case (unknown names unchanged)."""
    return {name.lower(): name for name in DATASETS}.get(text.lower(), text)


def http_url(text: str) -> str:
    """An http(s) URL, for --mirror."""
    if urlsplit(text).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Download, verify and extract datasets into <data_dir>/<name>/.")
    parser.add_argument("datasets", nargs="+", type=dataset_name, choices=DATASETS,
                        metavar="{mnist,celebA,lsun,mvtec}", help="datasets to fetch (any case)")
    parser.add_argument("--data_dir", default="data", help="where datasets live (default: data)")
    parser.add_argument("--category", default=None,
                        help="LSUN category (default: bedroom); MVTec AD categories, a comma "
                             "list (default: all 15)")
    parser.add_argument("--mirror", action="append", default=[], type=http_url, metavar="URL",
                        help="extra mirror tried before the built-in ones (repeatable); "
                             "a folder URL gets the file name appended")
    parser.add_argument("--from", dest="from_path", metavar="PATH",
                        help="local folder or archive holding the files (no network used)")
    parser.add_argument("--retries", type=positive_int, default=3,
                        help="tries per URL before moving on (default: 3)")
    parser.add_argument("--deadline", type=positive_int, default=3600,
                        help="seconds one file may take from one URL, all tries together, "
                             "before moving on (default: 3600)")
    return parser


def install(name: str, args: argparse.Namespace, options: FetchOptions) -> Path:
    """Fetch one dataset as the parsed command line asks."""
    if name == "mnist":
        return download_mnist(args.data_dir, [*args.mirror, *MNIST_MIRRORS],
                              from_path=args.from_path, options=options)
    if name == "celebA":
        return download_celeba(args.data_dir, args.mirror, args.from_path, options=options)
    if name == "mvtec":
        return download_mvtec(args.data_dir, mvtec_categories(args.category), args.mirror,
                              args.from_path, options=options)
    return download_lsun(args.data_dir, args.category or "bedroom", args.mirror, args.from_path,
                         options=options)


def report_failure(message: str, code: int = 1) -> int:
    """Print message as the one error line on stderr and return the exit code."""
    print(f"download.py: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    options = FetchOptions(retries=args.retries, deadline=float(args.deadline))
    try:
        for name in dict.fromkeys(args.datasets):
            print(f"{name}: ready in {install(name, args, options)}")
    except DownloadError as exc:
        return report_failure(str(exc))
    except OSError as exc:
        reason = "disk full (no space left on device)" if exc.errno == errno.ENOSPC else exc
        return report_failure(str(reason))
    except KeyboardInterrupt:
        return report_failure("interrupted; partial downloads are kept as *.part and resumed "
                              "by the next run", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
