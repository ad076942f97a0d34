"""HTTP fetching: one file from a list of URLs to a local path, verified, resumable and with a
deadline, and the errors every step of a download reports.

Each try streams to ``<file>.part`` (resumed with an HTTP Range request when one exists, with a
'still waiting' line while the server is slow), the finished part is verified and only then
renamed into place, so a failed or interrupted fetch never leaves a file that looks complete.
Google Drive links are followed past the large-file warning page.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from tqdm import tqdm

DRIVE_HOSTS = frozenset({"drive.google.com", "drive.usercontent.google.com", "docs.google.com"})
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
PLAIN_ENCODING = {"Accept-Encoding": "identity"}


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
    source is tried) and between two 'still waiting' lines (``heartbeat``). A source that sends
    fewer than ``min_rate`` bytes a second over ``stall_seconds`` is abandoned at once for the
    next one (0: never)."""

    retries: int = 3
    backoff: float = 1.0
    timeout: tuple[float, float] = (10.0, 60.0)
    chunk_bytes: int = 1 << 16
    deadline: float = 3600.0
    heartbeat: float = 15.0
    min_rate: float = 1024.0
    stall_seconds: float = 60.0
    session: requests.Session = field(default_factory=requests.Session)


# ---------------------------------------------------------------- small helpers


def part_path(dest: Path) -> Path:
    """The temporary file a download of dest streams into."""
    return dest.with_name(dest.name + PART_SUFFIX)


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


def require_md5(path: Path, expected: str, actual: str) -> None:
    """SourceError unless actual, the MD5 measured for path, is the expected one."""
    if actual != expected:
        raise SourceError(f"MD5 mismatch for {path.name}: expected {expected}, got {actual}")


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
            message = f"disk full (no space left on device) while writing {path}"
            raise DownloadError(message) from None
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


class StallWatch:
    """Watches a transfer's byte count (``heartbeat.received``) and shuts its connection when
    fewer than ``min_rate`` bytes a second arrived over the last ``window`` seconds; ``stalled``
    then says so, for the caller to give the source up."""

    def __init__(self, resp: requests.Response, heartbeat: Heartbeat, min_rate: float,
                 window: float):
        self.resp, self.heartbeat = resp, heartbeat
        self.min_rate, self.window = min_rate, window
        self.stalled = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if min_rate > 0 and window > 0:
            self.thread.start()

    def _run(self) -> None:
        samples = [(time.monotonic(), self.heartbeat.received)]
        while not self.done.wait(min(1.0, self.window / 4)):
            now, received = time.monotonic(), self.heartbeat.received
            samples.append((now, received))
            while len(samples) > 1 and samples[1][0] <= now - self.window:
                samples.pop(0)
            start, before = samples[0]
            if now - start >= self.window and received - before < self.min_rate * self.window:
                self.stalled = True
                self.resp.raw.shutdown()
                return

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def reason(self) -> str:
        return (f"abandoned: under {self.min_rate:g} bytes/s for {self.window:g} s "
                f"({self.heartbeat.received} bytes in all)")


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
            watch = StallWatch(resp, heartbeat, options.min_rate, options.stall_seconds)
            try:
                write_body(resp, part, resume_offset(resp, offset, part), label,
                           options.chunk_bytes, heartbeat)
            except (requests.RequestException, TransientError, OSError):
                if watch.stalled:
                    raise SourceError(watch.reason()) from None
                raise
            finally:
                watch.stop()
                cutoff.cancel()
            if watch.stalled:
                raise SourceError(watch.reason())
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
