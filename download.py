"""The datasets main.py reads, put into <data_dir>/<name>/: MNIST, celebA, LSUN and MVTec AD
(their URLs, mirrors, checksums and layouts), copies from a local folder or archive (``--from``),
and the command line.

    python download.py mnist celebA lsun mvtec [--category NAME[,NAME]] [--mirror URL]
        [--from PATH] [--limit N]

LSUN's LMDB records are then written as images into <data_dir>/lsun_<category>/ (lsun.py).

Files are fetched by fetching.py (verified before they are renamed into place) and archives
unpacked by archives.py (moved in when complete), so an interrupted or failed run never leaves
anything that main.py would read as data.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import lsun
from archives import archive_verifier, extract_into, safe_extract, tar_layout_verifier
from fetching import (
    CHUNK_BYTES,
    PART_SUFFIX,
    PLAIN_ENCODING,
    DownloadError,
    FetchOptions,
    SourceError,
    disk_full_is_fatal,
    fetch_first,
    md5_of_stream,
    part_path,
    raise_for_http_status,
    require_md5,
    verify_part,
    with_retries,
)

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

DONE_MARKER = ".downloaded"


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


def join_url(base: str, name: str) -> str:
    """base (a folder URL, with or without the trailing slash) followed by name."""
    return base.rstrip("/") + "/" + name


def archive_url(mirror: str, name: str) -> str:
    """A mirror given as a file URL is used as is; a folder URL gets name appended."""
    parts = urlsplit(mirror)
    looks_like_file = parts.query or "." in parts.path.rsplit("/", 1)[-1]
    return mirror if looks_like_file else join_url(mirror, name)


def is_gzip_name(path: Path) -> bool:
    """Whether path (or the file its .part becomes) is named as gzip-compressed."""
    return path.name.removesuffix(PART_SUFFIX).endswith(".gz")


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
        require_md5(path, md5, idx_md5(path))
    return verify


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
        file_given = single and from_path.is_file()
        names = (archive.name, from_path.name) if file_given else (archive.name,)
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
                  options: FetchOptions | None = None, limit: int | None = None) -> Path:
    """Put the LSUN <category> train and val LMDB folders into <data_dir>/lsun/, then the train
    split's images into <data_dir>/lsun_<category>/ (at most ``limit``; resumed when run
    again), the folder ``main.py --dataset lsun_<category>`` trains on."""
    options = options or FetchOptions()
    target = Path(data_dir) / "lsun"
    names = [f"{category}_{split}_lmdb.zip" for split in LSUN_SPLITS]
    if from_path is None and not set(names) <= completed_archives(target):
        check_lsun_category(category, categories_url, options)
    archives = [Archive(name, tuple(archive_url(m, name) for m in (*mirrors, LSUN_SCENES_URL)))
                for name in names]
    install_archives(target, archives, from_path, options)
    return convert_lsun(target / f"{category}_train_lmdb", Path(data_dir) / f"lsun_{category}",
                        limit)


def convert_lsun(source: Path, images: Path, limit: int | None) -> Path:
    """The LMDB folder ``source`` converted into the image folder ``images``
    (``lsun.convert_lmdb``), with one line saying what was done."""
    import lmdb

    try:
        done = lsun.convert_lmdb(source, images, limit)
    except lmdb.Error as exc:
        raise DownloadError(f"{source} is not a readable LMDB database ({exc}): delete "
                            f"{source.parent} and download again") from None
    print(f"lsun: {done.images} images in {images} ({done.written} written now, "
          f"{done.existing} already there, {done.damaged} damaged records skipped)")
    return images


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


def non_negative_float(text: str) -> float:
    """A finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
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
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="lsun: stop converting once the image folder holds this many "
                             "(bedroom alone is 3 million; default: all)")
    parser.add_argument("--min_rate", type=non_negative_float, default=1024,
                        help="bytes per second under which a URL is given up for the next one, "
                             "once --stall_seconds have passed (default: 1024; 0: never)")
    parser.add_argument("--stall_seconds", type=non_negative_float, default=60,
                        help="seconds over which --min_rate is measured (default: 60)")
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
                         options=options, limit=args.limit)


def report_failure(message: str, code: int = 1) -> int:
    """Print message as the one error line on stderr and return the exit code."""
    print(f"download.py: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    options = FetchOptions(retries=args.retries, deadline=float(args.deadline),
                           min_rate=args.min_rate, stall_seconds=args.stall_seconds)
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
