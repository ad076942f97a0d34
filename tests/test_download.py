"""download.py, fetching.py and archives.py against a loopback HTTP server: mirrors, resume,
verification, safe extraction."""

import gzip
import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import read_scores, serving
from PIL import Image

import archives
import download
import fetching

FAST = {"retries": 2, "backoff": 0.0, "timeout": (2.0, 5.0), "chunk_bytes": 16}


@pytest.fixture
def options():
    return fetching.FetchOptions(**FAST)


def tiny_idx_files(count=10):
    """Small valid MNIST idx files: {name: raw bytes}."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8).tobytes()
    labels = rng.integers(0, 10, count, dtype=np.uint8).tobytes()
    image_header = struct.pack(">IIII", 2051, count, 28, 28)
    label_header = struct.pack(">II", 2049, count)
    return {
        "train-images-idx3-ubyte": image_header + images,
        "train-labels-idx1-ubyte": label_header + labels,
        "t10k-images-idx3-ubyte": image_header + images[::-1],
        "t10k-labels-idx1-ubyte": label_header + labels[::-1],
    }


@pytest.fixture
def mnist(server):
    """Tiny MNIST served gzipped under /mnist/: (raw files, their MD5s, the base URL)."""
    raw = tiny_idx_files()
    for name, content in raw.items():
        server.add(f"/mnist/{name}.gz", gzip.compress(content, mtime=0))
    md5s = {name: hashlib.md5(content).hexdigest() for name, content in raw.items()}
    return raw, md5s, server.url("/mnist/")


def assert_mnist_installed(data_dir, raw):
    target = Path(data_dir) / "mnist"
    for name, content in raw.items():
        assert gzip.decompress((target / f"{name}.gz").read_bytes()) == content
    assert not list(target.glob("*.part"))


def test_mnist_download_verifies_and_stores_gzipped(tmp_path, mnist, options):
    raw, md5s, base = mnist
    download.download_mnist(tmp_path, [base], md5s=md5s, options=options)
    assert_mnist_installed(tmp_path, raw)


def test_resume_appends_to_partial_file(tmp_path, server, mnist, options):
    raw, md5s, base = mnist
    name = "train-images-idx3-ubyte.gz"
    served = server.files[f"/mnist/{name}"][0]
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / f"{name}.part").write_bytes(served[:100])
    download.download_mnist(tmp_path, [base], md5s=md5s, options=options)
    assert server.ranges_for(f"/mnist/{name}") == ["bytes=100-"]
    assert_mnist_installed(tmp_path, raw)


def test_full_reply_to_range_request_restarts_from_zero(tmp_path, server, mnist, options):
    raw, md5s, base = mnist
    server.ignore_range = True
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz.part").write_bytes(b"garbage")
    download.download_mnist(tmp_path, [base], md5s=md5s, options=options)
    assert server.ranges_for("/mnist/t10k-labels-idx1-ubyte.gz") == ["bytes=7-"]
    assert_mnist_installed(tmp_path, raw)


def test_cut_transfer_leaves_only_part_then_resumes(tmp_path, server, mnist, options):
    raw, md5s, base = mnist
    dest = tmp_path / "train-labels-idx1-ubyte.gz"
    verify = download.idx_verifier(md5s["train-labels-idx1-ubyte"])
    url = base + dest.name
    server.truncate_at = 20
    with pytest.raises(fetching.SourceError, match="connection"):
        fetching.fetch(url, dest, verify, fetching.FetchOptions(**FAST))
    assert not dest.exists()
    assert fetching.part_path(dest).stat().st_size > 0
    server.truncate_at = None
    fetching.fetch(url, dest, verify, options)
    assert server.ranges_for("/mnist/" + dest.name)
    assert gzip.decompress(dest.read_bytes()) == raw["train-labels-idx1-ubyte"]


def test_complete_partial_file_is_verified_without_refetch(tmp_path, server, mnist, options):
    raw, md5s, base = mnist
    dest = tmp_path / "t10k-labels-idx1-ubyte.gz"
    fetching.part_path(dest).write_bytes(server.files["/mnist/" + dest.name][0])
    fetching.fetch(base + dest.name, dest, download.idx_verifier(md5s[dest.stem]), options)
    assert len(server.requests) == 1
    assert gzip.decompress(dest.read_bytes()) == raw["t10k-labels-idx1-ubyte"]


def test_stale_partial_from_other_source_is_discarded(tmp_path, server, mnist, options):
    raw, md5s, base = mnist
    dest = tmp_path / "train-images-idx3-ubyte.gz"
    fetching.part_path(dest).write_bytes(b"x" * 50)
    fetching.fetch(base + dest.name, dest, download.idx_verifier(md5s[dest.stem]), options)
    assert [rng for _, rng in server.requests] == ["bytes=50-", None]
    assert gzip.decompress(dest.read_bytes()) == raw["train-images-idx3-ubyte"]


def test_corrupt_existing_file_is_replaced(tmp_path, mnist, options):
    raw, md5s, base = mnist
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(b"not mnist")
    download.download_mnist(tmp_path, [base], md5s=md5s, options=options)
    assert not (tmp_path / "mnist" / "train-labels-idx1-ubyte").exists()
    assert_mnist_installed(tmp_path, raw)


def test_checksum_mismatch_rejected_and_file_removed(tmp_path, mnist, options):
    _, md5s, base = mnist
    wrong = dict(md5s, **{"t10k-images-idx3-ubyte": "0" * 32})
    with pytest.raises(fetching.DownloadError, match="MD5 mismatch"):
        download.download_mnist(tmp_path, [base], md5s=wrong, options=options)
    target = tmp_path / "mnist"
    assert not (target / "t10k-images-idx3-ubyte.gz").exists()
    assert not (target / "t10k-images-idx3-ubyte.gz.part").exists()


def test_first_mirror_down_second_used(tmp_path, closed_url, mnist, options):
    raw, md5s, base = mnist
    download.download_mnist(tmp_path, [closed_url, base], md5s=md5s, options=options)
    assert_mnist_installed(tmp_path, raw)


def test_server_errors_are_retried(tmp_path, server, mnist):
    raw, md5s, base = mnist
    server.failures["/mnist/train-labels-idx1-ubyte.gz"] = 2
    options = fetching.FetchOptions(**(FAST | {"retries": 3}))
    download.download_mnist(tmp_path, [base], md5s=md5s, options=options)
    assert_mnist_installed(tmp_path, raw)


def test_every_mirror_down_lists_what_was_tried(tmp_path, server, closed_url, mnist, options):
    _, md5s, _ = mnist
    missing = server.url("/nowhere/")
    with pytest.raises(fetching.DownloadError) as error:
        download.download_mnist(tmp_path, [closed_url, missing], md5s=md5s, options=options)
    message = str(error.value)
    assert "tried" in message and "\n" not in message
    assert f"{closed_url}train-images-idx3-ubyte.gz (connection failed" in message
    assert f"{missing}train-images-idx3-ubyte.gz (HTTP 404)" in message
    assert not list((tmp_path / "mnist").iterdir())


def test_main_reports_unreachable_mirrors_in_one_line(tmp_path, closed_url, capsys, monkeypatch):
    monkeypatch.setattr(download, "MNIST_MIRRORS", ())
    argv = ["MNIST", "--data_dir", str(tmp_path), "--mirror", closed_url, "--retries", "1"]
    assert download.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("download.py: error: could not download")
    assert closed_url in err


def test_main_missing_from_path_exits_1(tmp_path, capsys):
    argv = ["mnist", "--data_dir", str(tmp_path), "--from", str(tmp_path / "absent")]
    assert download.main(argv) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_rejects_local_files_failing_the_real_md5(tmp_path):
    source = tmp_path / "offline"
    source.mkdir()
    for name, content in tiny_idx_files().items():
        (source / f"{name}.gz").write_bytes(gzip.compress(content))
    command = [sys.executable, download.__file__, "mnist", "--from", str(source),
               "--data_dir", str(tmp_path / "data")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert "MD5 mismatch" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "data" / "mnist").iterdir())


def test_unknown_dataset_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        download.main(["cifar10"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dataset_names_are_case_insensitive():
    args = download.build_parser().parse_args(["CELEBA", "celeba", "Lsun", "mnist"])
    assert args.datasets == ["celebA", "celebA", "lsun", "mnist"]


def test_verified_dataset_is_skipped(tmp_path, server, closed_url, mnist, options, capsys):
    raw, md5s, base = mnist
    download.download_mnist(tmp_path, [base], md5s=md5s, options=options)
    served = len(server.requests)
    download.download_mnist(tmp_path, [closed_url], md5s=md5s, options=options)
    assert len(server.requests) == served
    assert capsys.readouterr().out.count("found, skip") == len(raw)


@pytest.mark.parametrize("compressed", [True, False])
def test_from_local_folder(tmp_path, compressed):
    raw = tiny_idx_files()
    source = tmp_path / "offline"
    source.mkdir()
    for name, content in raw.items():
        if compressed:
            (source / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (source / name).write_bytes(content)
    md5s = {name: hashlib.md5(content).hexdigest() for name, content in raw.items()}
    download.download_mnist(tmp_path / "data", (), md5s=md5s, from_path=source)
    assert_mnist_installed(tmp_path / "data", raw)


def test_from_local_archive(tmp_path):
    raw = tiny_idx_files()
    archive = tmp_path / "mnist.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, content in raw.items():
            info = tarfile.TarInfo(f"mnist/{name}.gz")
            packed = gzip.compress(content)
            info.size = len(packed)
            tf.addfile(info, io.BytesIO(packed))
    md5s = {name: hashlib.md5(content).hexdigest() for name, content in raw.items()}
    download.download_mnist(tmp_path / "data", (), md5s=md5s, from_path=archive)
    assert_mnist_installed(tmp_path / "data", raw)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mnist"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_one_clear_error(tmp_path, mnist, options):
    base = mnist[2]
    dest = tmp_path / "train-images-idx3-ubyte.gz"
    fetching.part_path(dest).symlink_to("/dev/full")
    with pytest.raises(fetching.DownloadError, match="disk full") as error:
        fetching.fetch_first([base + dest.name], dest, options=options)
    assert not isinstance(error.value, fetching.SourceError)
    assert not dest.exists()


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def symlink_zip_entry(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("bad_entry", [
    zipfile.ZipInfo("../evil"),
    zipfile.ZipInfo("/tmp/evil"),
    symlink_zip_entry("link"),
])
def test_zip_escaping_target_is_refused(tmp_path, bad_entry):
    archive = make_zip(tmp_path / "bad.zip", [(zipfile.ZipInfo("ok.txt"), b"ok"),
                                                (bad_entry, b"/etc/passwd")])
    target = tmp_path / "box" / "out"
    with pytest.raises(fetching.DownloadError, match="refusing to extract"):
        archives.safe_extract(archive, target)
    assert not target.exists()
    assert not (tmp_path / "box" / "evil").exists()


def tar_member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize("bad_member", [
    tar_member("/tmp/evil"),
    tar_member("sub/../../evil"),
    tar_member("link", tarfile.SYMTYPE, "/etc/passwd"),
    tar_member("hard", tarfile.LNKTYPE, "/etc/passwd"),
])
def test_tar_escaping_target_is_refused(tmp_path, bad_member):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        tf.addfile(tar_member("ok.txt"), io.BytesIO(b""))
        tf.addfile(bad_member, io.BytesIO(b""))
    target = tmp_path / "box" / "out"
    with pytest.raises(fetching.DownloadError, match="refusing to extract"):
        archives.safe_extract(archive, target)
    assert not target.exists()


def celeba_zip(path):
    jpg = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
    names = [f"img_align_celeba/{i:06d}.jpg" for i in (1, 2, 3)]
    return make_zip(path, [(zipfile.ZipInfo(name), jpg) for name in names])


def test_celeba_from_mirror_extracted_then_skipped(tmp_path, server, options, capsys):
    body = celeba_zip(tmp_path / "served.zip").read_bytes()
    server.add(f"/celeba/{download.CELEBA_ZIP}", body)
    md5 = hashlib.md5(body).hexdigest()
    data = tmp_path / "data"
    download.download_celeba(data, [server.url("/celeba/")], md5=md5, options=options)
    target = data / "celebA"
    assert len(list(target.rglob("*.jpg"))) == 3
    assert sorted(p.name for p in data.iterdir()) == ["celebA"]
    assert not (target / download.CELEBA_ZIP).exists()
    download.download_celeba(data, [server.url("/celeba/")], md5=md5, options=options)
    assert "found" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_celeba_from_local_zip(tmp_path):
    archive = celeba_zip(tmp_path / "celeba.zip")
    download.download_celeba(tmp_path / "data", from_path=archive)
    assert len(list((tmp_path / "data" / "celebA").rglob("*.jpg"))) == 3
    assert archive.exists()


def lsun_records(count=5, size=40):
    """LSUN-like records: JPEG and WebP encodings of small RGB images, and one damaged record
    (a JPEG cut short) in the middle; {key: bytes}."""
    rng = np.random.default_rng(0)
    records = {}
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        encoded = io.BytesIO()
        Image.fromarray(pixels).save(encoded, "WEBP" if index % 2 else "JPEG")
        records[f"{index:040x}".encode()] = encoded.getvalue()
    records[f"{count // 2:039x}f".encode()] = records[f"{0:040x}".encode()][:200]
    return records


def write_lmdb(folder, records):
    """An LMDB database in ``folder`` holding ``records``, as LSUN ships them."""
    import lmdb

    Path(folder).mkdir(parents=True)
    environment = lmdb.open(str(folder), map_size=1 << 24)
    with environment.begin(write=True) as transaction:
        for key, value in records.items():
            transaction.put(key, value)
    environment.close()
    return folder


def zipped_lmdb(tmp_path, name, records):
    """A zip of an LMDB folder ``name`` holding ``records`` (as LSUN's <name>.zip)."""
    folder = write_lmdb(tmp_path / "lmdb" / name, records)
    return make_zip(tmp_path / f"{name}.zip",
                    [(zipfile.ZipInfo(f"{name}/{path.name}"), path.read_bytes())
                     for path in sorted(folder.iterdir())])


def test_lsun_category_is_downloaded_and_converted_to_images(tmp_path, server, options):
    server.add("/lsun/categories.txt", b"bedroom\nkitchen\n", "text/plain")
    records = lsun_records()
    for split in download.LSUN_SPLITS:
        name = f"bedroom_{split}_lmdb"
        server.add(f"/lsun/{name}.zip", zipped_lmdb(tmp_path, name, records).read_bytes())
    images = download.download_lsun(tmp_path / "data", "bedroom", [server.url("/lsun/")],
                                    categories_url=server.url("/lsun/categories.txt"),
                                    options=options)
    target = tmp_path / "data" / "lsun"
    assert (target / "bedroom_train_lmdb" / "data.mdb").is_file()
    assert (target / "bedroom_val_lmdb" / "data.mdb").is_file()
    assert images == tmp_path / "data" / "lsun_bedroom"
    files = sorted(images.iterdir())
    assert len(files) == 5 and all(f.suffix == ".jpg" for f in files)
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (48, 40)
    jpeg_key = f"{0:040x}"
    assert (images / f"{jpeg_key}.jpg").read_bytes() == records[jpeg_key.encode()]


def test_lsun_unknown_category_refused(tmp_path, server, options):
    server.add("/lsun/categories.txt", b"bedroom\nkitchen\n", "text/plain")
    with pytest.raises(fetching.DownloadError, match="choose from: bedroom, kitchen"):
        download.download_lsun(tmp_path, "bedrom", [server.url("/lsun/")],
                               categories_url=server.url("/lsun/categories.txt"), options=options)


def test_drive_warning_cookie_gives_confirm_token(server, options):
    page = b"<html>Google Drive can't scan this file for viruses.</html>"
    server.add("/uc?id=abc", page, "text/html; charset=utf-8")
    server.cookie = "download_warning_123=TOKEN"
    url = fetching.confirm_drive_download(server.url("/uc?id=abc"), options)
    assert url.endswith("/uc?id=abc&confirm=TOKEN")


def test_drive_warning_form_is_followed(server, options):
    page = (b'<form id="download-form" action="/download" method="get">'
            b'<input type="submit" value="Download anyway">'
            b'<input type="hidden" name="id" value="abc">'
            b'<input type="hidden" name="confirm" value="t">'
            b'<input type="hidden" name="uuid" value="u-1"></form>')
    server.add("/uc?id=abc", page, "text/html")
    url = fetching.confirm_drive_download(server.url("/uc?id=abc"), options)
    assert url == server.url("/download?id=abc&confirm=t&uuid=u-1")


def test_drive_quota_page_is_a_source_error(server, options):
    server.add("/uc?id=abc", b"<html>Download quota exceeded for this file</html>", "text/html")
    with pytest.raises(fetching.SourceError, match="quota"):
        fetching.confirm_drive_download(server.url("/uc?id=abc"), options)


def test_drive_binary_reply_is_the_file(server, options):
    server.add("/uc?id=abc", b"PK\x03\x04")
    assert fetching.confirm_drive_download(server.url("/uc?id=abc"), options).endswith("id=abc")


def mvtec_tar_xz(path, category="bottle", extra=()):
    """A small .tar.xz laid out as an MVTec AD category archive (plus ``extra`` members)."""
    def png(value):
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(out, format="PNG")
        return out.getvalue()

    files = {f"{category}/license.txt": b"CC BY-NC-SA 4.0",
             f"{category}/train/good/000.png": png(10),
             f"{category}/test/good/000.png": png(12),
             f"{category}/test/broken/000.png": png(200),
             f"{category}/ground_truth/broken/000_mask.png": png(255)}
    with tarfile.open(path, "w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for member, body in extra:
            tar.addfile(member, io.BytesIO(body))
    return path


def test_mvtec_category_fetched_verified_and_extracted(tmp_path, server, options, capsys):
    body = mvtec_tar_xz(tmp_path / "bottle.tar.xz").read_bytes()
    server.add("/mvtec/bottle.tar.xz", body)
    target = download.download_mvtec(tmp_path / "data", ["bottle"], [server.url("/mvtec/")],
                                     options=options)
    category = target / "bottle"
    assert (category / "train" / "good" / "000.png").is_file()
    assert (category / "ground_truth" / "broken" / "000_mask.png").is_file()
    assert not list(target.glob("*.tar.xz*"))
    download.download_mvtec(tmp_path / "data", ["bottle"], [server.url("/mvtec/")],
                            options=options)
    assert "bottle.tar.xz found" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_mvtec_corrupt_archive_is_refused_and_nothing_kept(tmp_path, server, closed_url,
                                                          options, monkeypatch):
    monkeypatch.setitem(download.MVTEC_URLS, "bottle", closed_url + "bottle.tar.xz")
    body = bytearray(mvtec_tar_xz(tmp_path / "bottle.tar.xz").read_bytes())
    body[len(body) // 2] ^= 0xFF  # one flipped byte: xz's integrity checks catch it
    server.add("/mvtec/bottle.tar.xz", bytes(body))
    wrong = tmp_path / "wrong.tar.xz"
    with tarfile.open(wrong, "w:xz") as tar:
        tar.addfile(tarfile.TarInfo("other/readme.txt"), io.BytesIO(b""))
    server.add("/other/bottle.tar.xz", wrong.read_bytes())
    server.add("/cut/bottle.tar.xz", bytes(body[:-200]))
    with pytest.raises(fetching.DownloadError) as error:
        download.download_mvtec(tmp_path / "data", ["bottle"],
                                [server.url(f"/{m}/") for m in ("mvtec", "other", "cut")],
                                options=options)
    message = str(error.value)
    assert "/mvtec/bottle.tar.xz (bottle.tar.xz.part is not a" in message
    assert "holds no bottle/train/good/" in message and "connection failed" in message
    assert "/cut/bottle.tar.xz (bottle.tar.xz.part is not a complete tar archive" in message
    assert [p.name for p in (tmp_path / "data" / "mvtec").iterdir()] == []


def test_mvtec_entry_escaping_the_target_is_refused(tmp_path, server, options):
    evil = tarfile.TarInfo("../evil.txt")
    evil.size = 4
    body = mvtec_tar_xz(tmp_path / "bottle.tar.xz", extra=[(evil, b"evil")]).read_bytes()
    server.add("/mvtec/bottle.tar.xz", body)
    with pytest.raises(fetching.DownloadError, match="refusing to extract .*'../evil.txt'"):
        download.download_mvtec(tmp_path / "data", ["bottle"], [server.url("/mvtec/")],
                                options=options)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (tmp_path / "data" / "mvtec" / "bottle").exists()


def test_mvtec_cli_categories_from_a_local_folder(tmp_path, capsys):
    local = tmp_path / "archives"
    local.mkdir()
    for category in ("bottle", "carpet"):
        mvtec_tar_xz(local / f"{category}.tar.xz", category)
    data = tmp_path / "data"
    assert download.main(["mvtec", "--category", "Bottle,carpet", "--from", str(local),
                          "--data_dir", str(data)]) == 0
    assert sorted(p.name for p in (data / "mvtec").iterdir() if not p.name.startswith(".")) == [
        "bottle", "carpet"]
    assert download.main(["mvtec", "--category", "bottel", "--data_dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown MVTec AD category bottel; choose from: bottle," in err
    assert set(download.MVTEC_URLS) == {
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper"}


class PacedHandler(BaseHTTPRequestHandler):
    """Serves server.body at server.rate bytes a second (in small pieces), whatever the path."""

    def do_GET(self):
        body, rate = self.server.body, self.server.rate
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        piece = max(1, int(rate / 10))
        try:
            for start in range(0, len(body), piece):
                self.wfile.write(body[start:start + piece])
                self.wfile.flush()
                time.sleep(piece / rate)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def paced():
    """A loopback server sending its ``body`` at its ``rate`` bytes a second."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PacedHandler)
    httpd.daemon_threads = True
    with serving(httpd):
        yield httpd


def test_a_trickling_source_is_abandoned_for_the_next(tmp_path, paced, server, capsys):
    body = bytes(range(256)) * 40
    paced.body, paced.rate = body, 20  # 20 bytes/s: 10 KB would take over 8 minutes
    server.add("/good/file.bin", body)
    options = fetching.FetchOptions(**{**FAST, "min_rate": 1024, "stall_seconds": 1.5})
    trickle = f"http://127.0.0.1:{paced.server_address[1]}/file.bin"
    started = time.monotonic()
    dest = fetching.fetch_first([trickle, server.url("/good/file.bin")], tmp_path / "file.bin",
                                options=options)
    assert time.monotonic() - started < 30
    assert dest.read_bytes() == body
    assert "abandoned: under 1024 bytes/s for 1.5 s" in capsys.readouterr().out


def test_a_slow_but_steady_source_completes(tmp_path, paced):
    body = bytes(range(256)) * 160  # 40 KB at 20 KB/s
    paced.body, paced.rate = body, 20_000
    options = fetching.FetchOptions(**{**FAST, "min_rate": 1024, "stall_seconds": 1.0})
    url = f"http://127.0.0.1:{paced.server_address[1]}/file.bin"
    assert fetching.fetch(url, tmp_path / "file.bin", options=options).read_bytes() == body


def test_download_flags_for_stalls_are_checked(capsys):
    for flag, value in (("--min_rate", "-1"), ("--stall_seconds", "nan")):
        with pytest.raises(SystemExit) as stop:
            download.build_parser().parse_args(["mnist", flag, value])
        assert stop.value.code == 2
        assert "must be a finite number >= 0" in capsys.readouterr().err


def test_lsun_conversion_resumes_counts_damage_and_stops_at_the_limit(tmp_path):
    import lsun

    source = write_lmdb(tmp_path / "bedroom_train_lmdb", lsun_records(count=7))
    target = tmp_path / "lsun_bedroom"
    first = lsun.convert_lmdb(source, target, limit=3)  # an interrupted run, in effect
    assert (first.written, first.existing) == (3, 0)
    (target / ".half.jpg.tmp").write_bytes(b"partial")  # what a kill mid-write leaves
    before = {path.name: path.stat().st_mtime_ns for path in target.iterdir()}
    rest = lsun.convert_lmdb(source, target)
    assert (rest.written, rest.existing, rest.damaged) == (4, 3, 1)
    assert sorted(p.name for p in target.iterdir()) == sorted(
        f"{index:040x}.jpg" for index in range(7))
    assert all(target.joinpath(name).stat().st_mtime_ns == stamp
               for name, stamp in before.items() if name.endswith(".jpg"))
    again = lsun.convert_lmdb(source, target, limit=2)
    assert (again.written, again.existing, again.images) == (0, 2, 2)


def test_main_trains_and_scores_on_a_converted_lsun_folder(tmp_path):
    import lsun
    import main

    source = write_lmdb(tmp_path / "bedroom_train_lmdb", lsun_records(count=24, size=32))
    assert lsun.convert_lmdb(source, tmp_path / "data" / "lsun_bedroom").images == 24
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    shutil.copy(next((tmp_path / "data" / "lsun_bedroom").glob("*.jpg")), test_dir / "x.jpg")
    flags = ["--dataset", "lsun_bedroom", "--data_dir", str(tmp_path / "data"),
             "--input_height", "32", "--output_height", "16", "--batch_size", "8",
             "--z_dim", "8", "--gf_dim", "8", "--df_dim", "8", "--epoch", "1", "--retries", "0",
             "--checkpoint_dir", str(tmp_path / "checkpoint"), "--sample_dir",
             str(tmp_path / "samples"), "--log_dir", str(tmp_path / "logs"), "--no_figures"]
    assert main.main([*flags, "--train", "--anomaly_test", "--test_dir", str(test_dir),
                      "--test_epoch", "1"]) == 0
    assert (test_dir / "test_result" / "scores.csv").is_file()


def face_jpeg(rng, anomalous=False):
    """A 178x218 JPEG laid out as celebA's aligned faces: a bright oval in the middle of a
    noisy background (a dark bar across it when ``anomalous``)."""
    yy, xx = np.mgrid[0:218, 0:178]
    face = ((yy - 120) / 55.0) ** 2 + ((xx - 89) / 42.0) ** 2 < 1
    pixels = rng.normal(60, 20, (218, 178, 3)) + 140 * face[..., None]
    if anomalous:
        pixels[100:115, 40:140] = 10
    encoded = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(encoded, "JPEG")
    return encoded.getvalue()


def test_celeba_downloads_then_trains_and_scores_on_its_centre_crop(tmp_path, server, options):
    import main

    rng = np.random.default_rng(0)
    archive = make_zip(tmp_path / "served.zip", [
        (zipfile.ZipInfo(f"img_align_celeba/{index:06d}.jpg"), face_jpeg(rng))
        for index in range(1, 25)])
    body = archive.read_bytes()
    server.add(f"/celeba/{download.CELEBA_ZIP}", body)
    data = tmp_path / "data"
    download.download_celeba(data, [server.url("/celeba/")], md5=hashlib.md5(body).hexdigest(),
                             options=options)
    assert len(list((data / "celebA").rglob("*.jpg"))) == 24
    for folder, anomalous in (("normal", False), ("anomaly", True)):
        (tmp_path / "test" / folder).mkdir(parents=True)
        for index in range(2):
            (tmp_path / "test" / folder / f"{index}.jpg").write_bytes(face_jpeg(rng, anomalous))
    flags = ["--dataset", "celebA", "--data_dir", str(data), "--input_height", "108", "--crop",
             "--output_height", "16", "--batch_size", "8", "--z_dim", "8", "--gf_dim", "8",
             "--df_dim", "8", "--epoch", "1", "--retries", "0", "--no_figures",
             "--checkpoint_dir", str(tmp_path / "checkpoint"), "--sample_dir",
             str(tmp_path / "samples"), "--log_dir", str(tmp_path / "logs")]
    assert main.main([*flags, "--train"]) == 0
    assert main.main([*flags, "--anomaly_test", "--test_dir", str(tmp_path / "test"),
                      "--test_epoch", "1"]) == 0
    result = tmp_path / "test" / "test_result"
    assert len(read_scores(result)) == 4
    with Image.open(result / "AD_0_anomaly_0.png") as fake:
        assert fake.size == (16, 16)
