"""Downloads from servers that misbehave, the mirror setting, and corrupted released files
(issue 21 classes 2 and 3, issue 22 item 4's mirror).

A hostile HTTP server on 127.0.0.1 (a thread of this process) serves the tiny AR fixture in the
original's format (tests/fixtures/fractalgen, through tests/test_hub.py's helpers) and misbehaves
on request: a body without ``Content-Length`` that goes on past the bound, a trickle that never
stalls, a ``Content-Length`` that is not a byte count, a body longer than announced, a redirect
loop, and files of the right size with random or zeroed bytes in their tensors. Each case asserts
the bound or the deadline, the error a user sees, that nothing is cached (no converted model, no
kept file beyond a resumable partial), and that the next call against a good server recovers.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_hub import TINY_AR_PARAMS, TINY_HEADS, _original_bytes

from fractalkit import Fractal, hub
from fractalkit.imagenet.releases import fractalgen_release

NAME = "tiny-ar-hostile"
FILE = f"/{NAME}.pth"


class HostileServer:
    """Serves ``good`` at every path, honestly (with Range support) or per ``self.mode``."""

    def __init__(self, good: bytes):
        self.good = good
        self.mode = "good"
        self.body: bytes | None = None  # what "good" and "extra" serve instead of ``good``
        self.sent = 0  # bytes of body written in the current mode
        self.requests: list[tuple[str, str | None]] = []
        self.length = ""  # the Content-Length header of the "bad-length" mode
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.body if server.body is not None else server.good
                mode = server.mode
                try:
                    if mode == "redirect-loop":
                        self.send_response(302)
                        self.send_header("Location", self.path)
                        self.end_headers()
                    elif mode == "no-length":  # streams without a size, far past the file
                        self.send_response(200)
                        self.end_headers()
                        block = b"\x00" * (1 << 16)
                        for _ in range(1024):  # 64 MiB, as in the issue
                            self.wfile.write(block)
                            server.sent += len(block)
                    elif mode in ("chunked", "chunked-endless"):  # no Content-Length either
                        self.protocol_version = "HTTP/1.1"
                        self.send_response(200)
                        self.send_header("Transfer-Encoding", "chunked")
                        self.send_header("Connection", "close")
                        self.end_headers()
                        rounds = 1024 if mode == "chunked-endless" else 1
                        for _ in range(rounds):
                            for i in range(0, len(data), 1 << 16):
                                block = data[i:i + (1 << 16)]
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                                server.sent += len(block)
                        self.wfile.write(b"0\r\n\r\n")
                    elif mode == "trickle":  # 1 KB at a time: the stall timeout never fires
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        for i in range(0, len(data), 1024):
                            self.wfile.write(data[i:i + 1024])
                            self.wfile.flush()
                            server.sent += 1024
                            time.sleep(0.05)
                    elif mode == "bad-length":
                        self.send_response(200)
                        self.send_header("Content-Length", server.length)
                        self.end_headers()
                        self.wfile.write(data)
                    elif mode == "extra":  # announces the file, sends more
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data + b"\x00" * 4096)
                    else:
                        start, status = 0, 200
                        rng = self.headers.get("Range")
                        if rng:
                            start, status = int(rng.split("=")[1].split("-")[0]), 206
                        self.send_response(status)
                        self.send_header("Content-Length", str(len(data) - start))
                        if status == 206:
                            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                        self.end_headers()
                        self.wfile.write(data[start:])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the bounds are for

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    return _original_bytes(tmp_path_factory.mktemp("original"), "tiny_ar_16")


@pytest.fixture
def server(good_bytes):
    s = HostileServer(good_bytes)
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(root))
    for var in (hub.OFFLINE_ENV, "HF_HUB_OFFLINE", "FRACTALKIT_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    return root


@pytest.fixture
def release(server, cache, monkeypatch):
    rel = fractalgen_release(NAME, server.url + FILE, len(server.good), heads=TINY_HEADS,
                             num_params=TINY_AR_PARAMS, title="Tiny AR")
    monkeypatch.setitem(hub.RELEASES, NAME, rel)
    return rel


def _folder(cache: Path) -> Path:
    return cache / "fractalgen" / NAME


def _nothing_cached(cache: Path, *, partial_ok: bool = False) -> None:
    folder = _folder(cache)
    names = {p.name for p in folder.iterdir()} - {".lock"} if folder.exists() else set()
    if partial_ok:
        names -= {hub.ORIGINAL_FILE + ".partial"}
    assert names == set(), f"left in the cache: {names}"


def _recovers(server: HostileServer, cache: Path, **kwargs) -> None:
    """The next call against a good server downloads, converts and loads the model."""
    server.mode, server.body = "good", None
    model = Fractal.from_pretrained(NAME, progress=False, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == TINY_AR_PARAMS
    assert (_folder(cache) / "model.safetensors").is_file()
    assert not (_folder(cache) / (hub.ORIGINAL_FILE + ".partial")).exists()


# ---- the bound, the deadline, the protocol --------------------------------------------------


def test_a_body_without_length_is_cut_off_at_the_bound(release, server, cache):
    bound = hub.download_limit(release)
    assert bound < len(server.good) * 1.05 + (1 << 20) + 1
    server.mode = "no-length"
    with pytest.raises(hub.PretrainedError, match="more than the bound") as err:
        Fractal.from_pretrained(NAME, progress=False)
    assert f"{bound:,}" in str(err.value) and "max_bytes=" in str(err.value)
    assert isinstance(err.value.__cause__, hub.DownloadError)
    assert server.sent < 64 << 20  # the client stopped reading long before the 64 MiB were sent
    _nothing_cached(cache)
    _recovers(server, cache)


def test_a_chunked_body_is_read_within_the_bound(release, server, cache):
    server.mode = "chunked-endless"
    with pytest.raises(hub.PretrainedError, match="more than the bound"):
        Fractal.from_pretrained(NAME, progress=False)
    _nothing_cached(cache)
    server.mode = "chunked"  # the file itself, chunked: decoded, not framed
    model = Fractal.from_pretrained(NAME, progress=False)
    assert sum(p.numel() for p in model.parameters()) == TINY_AR_PARAMS


def test_a_user_bound_applies_too(release, server, cache):
    with pytest.raises(hub.PretrainedError, match="more than the bound of 1,000 bytes"):
        Fractal.from_pretrained(NAME, progress=False, max_bytes=1000)
    _nothing_cached(cache)
    _recovers(server, cache)


def test_a_trickle_ends_at_the_deadline_and_the_next_call_resumes(release, server, cache):
    server.mode = "trickle"
    start = time.monotonic()
    with pytest.raises(hub.PretrainedError, match="within its deadline of 1 s") as err:
        Fractal.from_pretrained(NAME, progress=False, deadline=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 5, elapsed  # the deadline fires, not the 60 s stall timeout
    assert "resumes" in str(err.value)
    _nothing_cached(cache, partial_ok=True)
    kept = (_folder(cache) / (hub.ORIGINAL_FILE + ".partial")).stat().st_size
    assert 0 < kept < len(server.good)
    _recovers(server, cache)
    assert server.requests[-1][1] == f"bytes={kept}-"  # resumed, not restarted


@pytest.mark.parametrize("length", ["lots", "-5", "1e6", "12, 13", "99999999999999999999"])
def test_a_content_length_that_is_not_a_byte_count_within_the_bound_is_refused(release, server, cache, length):
    server.mode, server.length = "bad-length", length
    with pytest.raises(hub.PretrainedError) as err:
        Fractal.from_pretrained(NAME, progress=False)
    message = str(err.value)
    if length.isdigit():
        assert "more than the bound" in message and f"{int(length):,}" in message
    else:
        assert "not one byte count" in message and repr(length) in message
    assert "ValueError" not in message and "invalid literal" not in message
    _nothing_cached(cache)
    _recovers(server, cache)


def test_a_body_longer_than_its_content_length_is_refused(release, server, cache):
    server.mode = "extra"
    with pytest.raises(hub.PretrainedError, match="more bytes than its Content-Length"):
        Fractal.from_pretrained(NAME, progress=False)
    _nothing_cached(cache)
    _recovers(server, cache)


def test_a_redirect_loop_is_reported_as_one(release, server, cache):
    server.mode = "redirect-loop"
    with pytest.raises(hub.PretrainedError, match="redirected more than 10 times or in a loop") as err:
        Fractal.from_pretrained(NAME, progress=False)
    assert "HTTP 302" in str(err.value)
    assert len(server.requests) <= 11  # urllib's own bounds (10 redirects, 4 to one address)
    _nothing_cached(cache)
    _recovers(server, cache)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_bytes": 0}, "max_bytes must be a positive"), ({"max_bytes": 1.5e6}, "max_bytes must be a positive"),
    ({"deadline": 0}, "deadline must be a positive"), ({"deadline": "60"}, "deadline must be a positive"),
])
def test_from_pretrained_checks_its_bounds_before_anything(release, server, cache, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Fractal.from_pretrained(NAME, progress=False, **kwargs)
    assert server.requests == [] and not cache.exists()


def test_download_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_bytes must be a positive"):
        hub.download("http://127.0.0.1:9/x", tmp_path / "x", max_bytes=0)
    with pytest.raises(ValueError, match="deadline must be a positive"):
        hub.download("http://127.0.0.1:9/x", tmp_path / "x", deadline=-1)


# ---- corruption with the right size ---------------------------------------------------------


def _largest_tensor_span(data: bytes) -> tuple[int, int]:
    """(offset, length) of the largest stored tensor's bytes inside a torch zip checkpoint."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    header = data[info.header_offset:info.header_offset + 30]
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _random_bytes(data: bytes) -> bytes:
    offset, length = _largest_tensor_span(data)
    noise = torch.randint(0, 256, (length // 2,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    start = offset + length // 4
    return data[:start] + noise.numpy().tobytes() + data[start + length // 2:]


def _zeroed_bytes(data: bytes) -> bytes:
    offset, length = _largest_tensor_span(data)
    return data[:offset] + bytes(length) + data[offset + length:]


@pytest.mark.parametrize("corrupt", [_random_bytes, _zeroed_bytes], ids=["random", "zeroed"])
def test_a_file_corrupted_in_transit_with_the_right_size_is_never_cached(release, server, cache, corrupt):
    server.body = corrupt(server.good)
    assert len(server.body) == len(server.good)
    with pytest.raises(hub.PretrainedError) as err:
        Fractal.from_pretrained(NAME, progress=False)
    message = str(err.value)
    assert NAME in message and "is damaged" in message and "nothing is cached" in message
    _nothing_cached(cache)  # neither the file nor a converted model
    _recovers(server, cache)


@pytest.mark.parametrize("cut", [1, 4096, "half"])
def test_a_file_of_the_wrong_size_is_refused_before_conversion(release, server, cache, monkeypatch, cut):
    cut = len(server.good) // 2 if cut == "half" else cut
    server.body = server.good[:-cut]  # a complete answer of a shorter file (a wrong mirror copy)
    converted = []
    monkeypatch.setattr(hub, "_convert_release", lambda *a, **k: converted.append(a))
    with pytest.raises(hub.PretrainedError, match="is not a complete tiny-ar-hostile checkpoint") as err:
        Fractal.from_pretrained(NAME, progress=False)
    assert f"{len(server.body):,} bytes" in str(err.value) and f"{len(server.good):,} bytes" in str(err.value)
    assert converted == []
    _nothing_cached(cache)
    monkeypatch.undo()
    monkeypatch.setitem(hub.RELEASES, NAME, release)
    monkeypatch.setenv(hub.CACHE_ENV, str(cache))
    _recovers(server, cache)


# ---- the mirror setting ---------------------------------------------------------------------


def _mirrored(server: HostileServer) -> str:
    path = f"/mirror/fractalgen/{NAME}/checkpoint-last.pth"
    return server.url + "/mirror", path


@pytest.mark.parametrize("how", ["argument", "environment", "folder"])
def test_a_mirror_replaces_the_authors_address(release, server, cache, monkeypatch, tmp_path, how):
    monkeypatch.setitem(hub.RELEASES, NAME, fractalgen_release(
        NAME, "http://127.0.0.1:9/unreachable.pth", len(server.good), heads=TINY_HEADS,
        num_params=TINY_AR_PARAMS))
    base, path = _mirrored(server)
    kwargs = {}
    if how == "argument":
        kwargs["mirror"] = base
    elif how == "environment":
        monkeypatch.setenv(hub.MIRROR_ENV, base + "/")
    else:  # a folder on a shared disk, laid out like the cache
        local = tmp_path / "shared-disk"
        (local / "fractalgen" / NAME).mkdir(parents=True)
        (local / "fractalgen" / NAME / hub.ORIGINAL_FILE).write_bytes(server.good)
        kwargs["mirror"] = str(local)
    model = Fractal.from_pretrained(NAME, progress=False, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == TINY_AR_PARAMS
    if how != "folder":
        assert [r[0] for r in server.requests] == [path]
    import json

    source = json.loads((_folder(cache) / hub.SOURCE_FILE).read_text())
    assert source["url"].endswith(f"/fractalgen/{NAME}/checkpoint-last.pth")


def test_an_empty_mirror_argument_means_the_authors_address(release, server, cache, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, "http://127.0.0.1:9/nowhere")
    Fractal.from_pretrained(NAME, progress=False, mirror="")
    assert [r[0] for r in server.requests] == [FILE]


def test_the_offline_message_names_the_mirror_setting_and_the_size(release, cache, monkeypatch):
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(hub.PretrainedError) as err:
        Fractal.from_pretrained(NAME)
    message = str(err.value)
    assert hub.MIRROR_ENV in message and f"fractalgen/{NAME}/checkpoint-last.pth" in message
    assert hub.human_size(release.size_bytes) in message


def test_paper_release_sizes_are_in_the_files_units():
    """The original counts MiB: FractalMAR-64's "1,650 MB" is 1.73 GB."""
    sizes = {name: hub.RELEASES[name].size_text for name in
             ("fractalar-in64", "fractalmar-in64", "fractalmar-base-in256",
              "fractalmar-large-in256", "fractalmar-huge-in256")}
    assert sizes == {"fractalar-in64": "about 1.77 GB", "fractalmar-in64": "about 1.73 GB",
                     "fractalmar-base-in256": "about 747 MB", "fractalmar-large-in256": "about 1.75 GB",
                     "fractalmar-huge-in256": "about 3.40 GB"}
    mar = hub.RELEASES["fractalmar-in64"]
    assert mar.size_bytes == 1650 * 2**20 and mar.size_tolerance == 2**20
    # every released file holds at least its float32 weights
    for name in sizes:
        rel = hub.RELEASES[name]
        assert rel.size_bytes + rel.size_tolerance > 4 * rel.num_params
    # the docs' table states the same sizes
    table = (Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md").read_text()
    for name, text in sizes.items():
        assert f"| `{name}` |" in table and f"| {text.removeprefix('about ')} |" in table.split(f"| `{name}` |")[1].split("\n")[0]


@pytest.mark.parametrize("size", [0.9, 1.5e9, True, -1, 0])
def test_a_release_size_must_be_whole_bytes(size):
    with pytest.raises((TypeError, ValueError), match="size_bytes"):
        hub.Release("x", "http://example.invalid/x.pth", size)


# ---- the cache: verified against source.json on every load --------------------------------------


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _zero_the_weights(path: Path) -> None:
    """Every tensor's bytes zeroed; the header (names, shapes, config) and the size kept."""
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[:header] + bytes(len(data) - header))


def _edit_config(path: Path) -> None:
    import json

    config = json.loads(path.read_text())
    config["num_classes"] = 10  # a hand edit the weights do not have
    path.write_text(json.dumps(config, indent=2) + "\n")


CACHE_DAMAGE = {
    "bit-flip": ("model.safetensors", _flip_a_bit, "does not have the SHA-256"),
    "truncated": ("model.safetensors", _truncate, "model.safetensors has"),
    "zeroed-weights": ("model.safetensors", _zero_the_weights, "does not have the SHA-256"),
    "deleted-source": ("source.json", Path.unlink, "has no source.json"),
    "source-not-json": ("source.json", lambda p: p.write_text("{not json"), "not readable JSON"),
    "edited-config": ("config.json", _edit_config, "config.json"),
    "deleted-config": ("config.json", Path.unlink, "config.json is missing"),
    "added-sampling": ("sampling.json", lambda p: p.write_text('{"options": {"guidance": 3.0}}'),
                       "sampling.json is not one of the files"),
}


@pytest.mark.parametrize("case", sorted(CACHE_DAMAGE))
def test_a_damaged_cache_names_the_folder_and_the_fix(release, server, cache, case):
    Fractal.from_pretrained(NAME, progress=False)
    folder = _folder(cache)
    name, damage, detail = CACHE_DAMAGE[case]
    damage(folder / name)
    with pytest.raises(hub.PretrainedError) as err:
        Fractal.from_pretrained(NAME, progress=False, offline=True)
    message = str(err.value)
    assert str(folder) in message and detail in message, message
    assert "Delete the folder" in message and "downloads and converts it again" in message
    assert "diverged" not in message
    import shutil

    shutil.rmtree(folder)  # what the message says to do
    requests = len(server.requests)
    _recovers(server, cache)
    assert len(server.requests) == requests + 1


def test_a_cache_of_an_older_version_is_recorded_on_first_use_then_verified(release, server, cache):
    import json

    Fractal.from_pretrained(NAME, progress=False)
    folder = _folder(cache)
    source = folder / hub.SOURCE_FILE
    record = json.loads(source.read_text())
    assert set(record["files"]) == {"config.json", "model.safetensors"}
    assert record["files"]["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    assert record["bytes"] == len(server.good)  # the original's size and hash stay recorded
    del record["files"]  # as fractalkit wrote it before
    source.write_text(json.dumps(record))
    Fractal.from_pretrained(NAME, offline=True)
    assert "files" in json.loads(source.read_text())
    _flip_a_bit(folder / "model.safetensors")
    with pytest.raises(hub.PretrainedError, match="does not have the SHA-256"):
        Fractal.from_pretrained(NAME, offline=True)


def _nan_weights(path: Path) -> None:
    """Every tensor's bytes 0xFF (NaN in float32), as random bytes from a transfer would give."""
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[:header] + b"\xff" * (len(data) - header))


@pytest.mark.parametrize(("damage", "detail"), [(_zero_the_weights, "exact zeros"), (_nan_weights, "NaN")],
                         ids=["zeroed", "nan"])
def test_a_damaged_cache_of_an_older_version_is_caught_on_first_use(release, server, cache, damage, detail):
    """Weights damaged in a cache an older fractalkit wrote (no check, no hashes) load no more."""
    import json

    Fractal.from_pretrained(NAME, progress=False)
    folder = _folder(cache)
    damage(folder / "model.safetensors")
    source = folder / hub.SOURCE_FILE
    record = json.loads(source.read_text())
    del record["files"]
    source.write_text(json.dumps(record))
    with pytest.raises(hub.PretrainedError, match=detail) as err:
        Fractal.from_pretrained(NAME, offline=True)
    assert str(folder) in str(err.value) and "Delete the folder" in str(err.value)
    assert "diverged" not in str(err.value) and "earlier checkpoint" not in str(err.value)
    assert "files" not in json.loads(source.read_text())  # nothing recorded for a bad folder
