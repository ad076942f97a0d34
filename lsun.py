"""LSUN's LMDB databases as image files the trainer reads: ``convert_lmdb``.

LSUN ships each category as an LMDB whose records are encoded images (JPEG, some WebP).
Records are streamed one at a time in key order (memory stays flat whatever the size), each
written whole under a name made from its key (a temporary name, then renamed), so that an
interrupted conversion resumes where it stopped: files already there are kept. JPEG records are
written as they are; others are re-encoded as JPEG (quality 95), so that the whole folder
matches main.py's default pattern '*.jpg'. A record Pillow cannot decode is skipped and counted.
"""

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

JPEG_QUALITY = 95


@dataclass
class Conversion:
    """What a conversion did: files written now, files already there, damaged records."""

    written: int = 0
    existing: int = 0
    damaged: int = 0

    @property
    def images(self):
        return self.written + self.existing


def record_name(key):
    """A file stem for an LMDB key: the key itself when it is a plain name, else its hex."""
    text = key.decode("ascii", errors="replace")
    return text if re.fullmatch(r"[0-9A-Za-z_-]{1,128}", text) else key.hex()


def jpeg_bytes(value):
    """The record ``value`` as JPEG bytes (JPEG records unchanged), or None when it cannot be
    decoded."""
    try:
        with Image.open(io.BytesIO(value)) as image:
            image.load()
            if image.format == "JPEG":
                return value
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def convert_lmdb(source, target, limit=None):
    """Writes the records of the LMDB folder ``source`` as ``target``/<key>.jpg, until the
    folder holds ``limit`` images (None: all); returns a ``Conversion``."""
    import lmdb

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob(".*.jpg.tmp"):
        stale.unlink()
    done = Conversion()
    environment = lmdb.open(str(source), readonly=True, lock=False, readahead=False,
                            max_readers=1, subdir=Path(source).is_dir())
    try:
        total = environment.stat()["entries"]
        with environment.begin(write=False) as transaction:
            bar = tqdm(transaction.cursor(), total=total if limit is None else min(total, limit),
                       unit="image", desc=f"converting {Path(source).name}", leave=False)
            for key, value in bar:
                if limit is not None and done.images >= limit:
                    break
                path = target / f"{record_name(key)}.jpg"
                if path.exists():
                    done.existing += 1
                    continue
                data = jpeg_bytes(value)
                if data is None:
                    done.damaged += 1
                    continue
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
                done.written += 1
    finally:
        environment.close()
    return done
