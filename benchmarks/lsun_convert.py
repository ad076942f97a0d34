"""Seconds to convert LSUN-like LMDB records into image files (``lsun.convert_lmdb``).

    python benchmarks/lsun_convert.py [--records 10000] [--webp_share 0.1]
        [--work_dir out/lsun_convert]

Writes an LMDB of ``--records`` 256x256 photographs-like images (smoothed noise, JPEG quality
75 as LSUN's, a ``--webp_share`` of them WebP), then converts it into a folder twice: once
from scratch, once more with every file already there (what resuming costs). Prints JSON with
both times, records per second and the peak memory of the process.
"""

import argparse
import io
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lsun


def encoded_images(count, webp_share, seed=0):
    """``count`` encoded 256x256 RGB images: JPEG, a share of them WebP."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        image = Image.fromarray(noise).resize((256, 256), Image.BICUBIC).filter(
            ImageFilter.GaussianBlur(2))
        out = io.BytesIO()
        image.save(out, "WEBP" if rng.random() < webp_share else "JPEG", quality=75)
        yield f"{index:040x}".encode(), out.getvalue()


def main(argv=None):
    import lmdb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--webp_share", type=float, default=0.1)
    parser.add_argument("--work_dir", default="out/lsun_convert")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "lmdb").mkdir(parents=True)
    environment = lmdb.open(str(work / "lmdb"), map_size=1 << 34)
    with environment.begin(write=True) as transaction:
        for key, value in encoded_images(args.records, args.webp_share):
            transaction.put(key, value)
    environment.close()
    started = time.perf_counter()
    first = lsun.convert_lmdb(work / "lmdb", work / "images")
    fresh = time.perf_counter() - started
    started = time.perf_counter()
    again = lsun.convert_lmdb(work / "lmdb", work / "images")
    resumed = time.perf_counter() - started
    print(json.dumps({"records": args.records, "webp_share": args.webp_share,
                      "written": first.written, "damaged": first.damaged,
                      "seconds": round(fresh, 2), "records_per_second": round(args.records / fresh),
                      "seconds_all_there": round(resumed, 2), "existing": again.existing,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024)}, indent=2))


if __name__ == "__main__":
    main()
