"""from_pretrained / save_pretrained / push_to_hub (fractalkit.hub), with no network.

Released checkpoints: a local HTTP server on 127.0.0.1 (in this process) serves small checkpoints
written in the original's format (a pickled dict with ``model`` and an argparse ``Namespace``)
from the fixture state dicts in tests/fixtures/fractalgen; a test release entry points at it. Hub ids: the
``huggingface_hub`` calls are replaced by a local folder.
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fractalkit import Fractal, SampleOptions, hub
from fractalkit.imagenet import convert as fg
from fractalkit.imagenet.models import PAPER_MODELS
from fractalkit.imagenet.releases import fractalgen_release

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fractalgen"  # in the repository
TINY_HEADS = (4, 4, 2)
TINY_AR_PARAMS = 217_952
NAME = "tiny-ar-test"


def _fixture(name: str):
    from safetensors.torch import load_file

    folder = FIXTURES / name
    # part of the repository: a missing fixture is a failure, never a skip
    assert (folder / "state_dict.safetensors").exists(), f"fixture missing: {folder}"
    return load_file(str(folder / "state_dict.safetensors")), load_file(str(folder / "io.safetensors"))


def _original_bytes(tmp_path: Path, name: str) -> bytes:
    """A checkpoint as the original's training script writes it."""
    state, _ = _fixture(name)
    path = tmp_path / f"{name}.pth"
    args = argparse.Namespace(model="fractalar_in64", img_size=16, epochs=1)
    torch.save({"model": state, "args": args, "epoch": 0}, path)
    return path.read_bytes()


class Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support; can drop a response mid-file."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None, str | None]] = []
        self.drop_next_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range"), self.headers.get("User-Agent")))
                data = server.files.get(self.path.split("?")[0])
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                if server.drop_next_after is not None:
                    body, server.drop_next_after = body[: server.drop_next_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    files = {
        "/tiny_ar.pth": _original_bytes(tmp_path, "tiny_ar_16"),
        "/tiny_mar.pth": _original_bytes(tmp_path, "tiny_mar_16"),
        "/page.html": b"<!DOCTYPE html><html><body>Dropbox - sign in</body></html>" * 50,
    }
    s = Server(files)
    yield s
    s.close()


@pytest.fixture
def release(server, monkeypatch, tmp_path):
    """A test release of the tiny AR fixture at the local server; the cache in tmp_path."""
    size = len(server.files["/tiny_ar.pth"])
    rel = fractalgen_release(NAME, f"{server.url}/tiny_ar.pth?dl=0", size, heads=TINY_HEADS,
                             num_params=TINY_AR_PARAMS, title="Tiny AR")
    monkeypatch.setitem(hub.RELEASES, NAME, rel)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return rel


def _cached(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "fractalgen" / NAME


def _use(monkeypatch, release, path: str, server) -> None:
    """Point the test release at ``path``, declaring that file's size (the size check passes:
    the converter's own checks are what is tested)."""
    base = release.url.split("/tiny_ar.pth")[0]
    monkeypatch.setitem(hub.RELEASES, NAME, fractalgen_release(
        NAME, base + path, len(server.files[path]), heads=TINY_HEADS, num_params=TINY_AR_PARAMS))


def test_first_call_downloads_converts_caches_and_loads(release, server, tmp_path):
    model = Fractal.from_pretrained(NAME, progress=False)
    assert len(server.requests) == 1
    path, rng, agent = server.requests[0]
    assert path == "/tiny_ar.pth?dl=0" and rng is None and agent == hub.USER_AGENT
    folder = _cached(tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == [
        "README.md", "config.json", "model.safetensors", "source.json"]  # no sampling published
    # The converted model computes what the original computes (the fixture's logits).
    _, io = _fixture("tiny_ar_16")
    _, logits = fg.teacher_forced_leaf_logits(model, io["images"], None, [None])
    assert (logits - io["leaf_logits"]).abs().max().item() < 1e-5
    assert not model.training

    # Second call: no request at all, even with the network forbidden, and the same weights.
    again = Fractal.from_pretrained(NAME, progress=False, offline=True)
    assert len(server.requests) == 1
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_interrupted_download_leaves_no_corrupt_cache_and_resumes(release, server, tmp_path):
    size = len(server.files["/tiny_ar.pth"])
    server.drop_next_after = size // 3
    with pytest.raises(hub.PretrainedError, match="resumes"):
        Fractal.from_pretrained(NAME, progress=False)
    folder = _cached(tmp_path)
    assert not (folder / "model.safetensors").exists() and not (folder / hub.ORIGINAL_FILE).exists()
    assert (folder / (hub.ORIGINAL_FILE + ".partial")).stat().st_size == size // 3
    model = Fractal.from_pretrained(NAME, progress=False)
    assert server.requests[-1][1] == f"bytes={size // 3}-"  # resumed, not restarted
    _, io = _fixture("tiny_ar_16")
    _, logits = fg.teacher_forced_leaf_logits(model, io["images"], None, [None])
    assert (logits - io["leaf_logits"]).abs().max().item() < 1e-5
    assert not (folder / (hub.ORIGINAL_FILE + ".partial")).exists()


def test_server_ignoring_the_range_restarts_cleanly(release, server, tmp_path):
    folder = _cached(tmp_path)
    folder.mkdir(parents=True)
    (folder / (hub.ORIGINAL_FILE + ".partial")).write_bytes(b"garbage from an old attempt")
    # This server answers 206 only with a Range; make it ignore ranges for this test.
    server.files["/full.pth"] = server.files["/tiny_ar.pth"]
    original = hub.urllib.request.Request

    def no_range(url, headers=None, **kw):
        return original(url, headers={k: v for k, v in (headers or {}).items() if k != "Range"}, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub.urllib.request, "Request", no_range)
        model = Fractal.from_pretrained(NAME, progress=False)
    assert sum(p.numel() for p in model.parameters()) == TINY_AR_PARAMS


@pytest.mark.parametrize(("path", "match"), [
    ("/tiny_mar.pth", "155,008 parameters"),  # a FractalGen file, but another architecture
    ("/page.html", "not a PyTorch checkpoint"),  # e.g. a web page instead of the file
])
def test_wrong_files_give_clear_errors_naming_the_model(release, server, tmp_path, monkeypatch, path, match):
    _use(monkeypatch, release, path, server)
    with pytest.raises(hub.PretrainedError, match=match) as err:
        Fractal.from_pretrained(NAME, progress=False)
    assert f"not a {NAME} checkpoint" in str(err.value)
    folder = _cached(tmp_path)
    assert not (folder / "model.safetensors").exists()
    assert not (folder / hub.ORIGINAL_FILE).exists()  # deleted: the next call fetches again


def test_offline_without_cache_says_what_to_download_and_where(release, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(hub.PretrainedError) as err:
        Fractal.from_pretrained(NAME)
    message = str(err.value)
    target = _cached(tmp_path) / hub.ORIGINAL_FILE
    assert "offline mode is on" in message
    assert release.url in message and str(target) in message
    # Doing what it says works without the network.
    target.parent.mkdir(parents=True)
    target.write_bytes((tmp_path / "tiny_ar_16.pth").read_bytes())
    model = Fractal.from_pretrained(NAME)
    assert sum(p.numel() for p in model.parameters()) == TINY_AR_PARAMS


def test_unreachable_server_gives_the_same_instructions(release, tmp_path, monkeypatch):
    monkeypatch.setitem(hub.RELEASES, NAME, fractalgen_release(
        NAME, "http://127.0.0.1:9/nothing.pth", 900_000, heads=TINY_HEADS))
    with pytest.raises(hub.PretrainedError, match="cannot be downloaded") as err:
        Fractal.from_pretrained(NAME, progress=False, cache_dir=tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / "fractalgen" / NAME / hub.ORIGINAL_FILE) in str(err.value)


@pytest.mark.parametrize("name", sorted(fg.RELEASED))
def test_released_models_are_registered_against_their_presets(name):
    import json

    rel = hub.RELEASES[name]
    assert rel.convert.preset == name and rel.verify.preset == name
    assert rel.url.startswith("https://www.dropbox.com/scl/fi/")
    assert rel.num_params == fg.RELEASED[name].num_params
    # Derived from the one record: the address, the count and the published settings.
    assert rel.url == PAPER_MODELS[name].release.url and rel.published
    assert rel.sampling == fg.published_options(name)
    manifest = FIXTURES / "manifests" / (name.replace("-", "_") + ".json")
    if manifest.exists():
        assert json.loads(manifest.read_text())["num_params"] == rel.num_params


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(hub.PretrainedError, match="not a folder, a released model"):
        Fractal.from_pretrained(str(tmp_path / "missing-folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.PretrainedError, match=r"has no model\.safetensors"):
        Fractal.from_pretrained(tmp_path / "empty")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(hub.PretrainedError, match="is a file; pass the folder"):
        Fractal.from_pretrained(tmp_path / "model.safetensors")


# ---- Hub-style folders -----------------------------------------------------------------------


@pytest.fixture
def tiny_model():
    _fixture("tiny_mar_16")
    state, _ = _fixture("tiny_mar_16")
    return fg.load_fractalgen(state, heads=TINY_HEADS)


def test_save_pretrained_round_trip(tiny_model, tmp_path):
    options = SampleOptions(guidance=2.0, guidance_schedule="linear", temperature=0.9, steps=(4, 2))
    folder = tiny_model.save_pretrained(tmp_path / "m", sampling=options, description="tiny")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "sampling.json"]
    loaded = Fractal.from_pretrained(folder)
    assert loaded.pretrained_options == options
    _, io = _fixture("tiny_mar_16")
    x, y = io["images"], io["labels"]
    with torch.no_grad():
        orders = "identity"
        assert torch.equal(tiny_model.log_prob(x, y, orders=orders).value,
                           loaded.log_prob(x, y, orders=orders).value)
    a = tiny_model.eval().sample(y=y, options=options, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(y=y, options=loaded.pretrained_options, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_folder_with_edited_config_is_refused(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "m")
    (folder / "config.json").write_text('{"format": "fractalkit.Fractal", "levels": []}')
    with pytest.raises(hub.PretrainedError, match="disagrees"):
        Fractal.from_pretrained(folder)


def test_hub_id_goes_through_huggingface_hub(tiny_model, tmp_path, monkeypatch):
    import huggingface_hub

    folder = tiny_model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = Fractal.from_pretrained("someone/tiny-mar", revision="v1", offline=False)
    assert calls[0][0] == "someone/tiny-mar" and calls[0][1]["revision"] == "v1"
    assert "model.safetensors" in calls[0][1]["allow_patterns"]
    assert calls[0][1]["local_files_only"] is False
    assert model.config == tiny_model.config

    def failing(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no cached copy")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(hub.PretrainedError, match="someone/tiny-mar"):
        Fractal.from_pretrained("someone/tiny-mar", offline=True)


def test_push_to_hub_uploads_a_pretrained_folder(tiny_model, monkeypatch):
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = tiny_model.push_to_hub("me/tiny", sampling=SampleOptions(guidance=1.5), token="t")
    assert url.endswith("/commit/abc")
    assert seen["repo"] == ("me/tiny", None, True) and seen["token"] == "t"
    assert seen["files"] == ["README.md", "config.json", "model.safetensors", "sampling.json"]


@pytest.mark.parametrize(("classes", "count_known", "match"), [
    (1000, True, None),  # the preset itself: accepted
    (999, True, "442,067,200 parameters, fractalar-in64 has 442,068,224"),
    (999, False, "does not match the fractalar-in64 preset"),
])
def test_released_checkpoints_are_checked_against_the_preset(monkeypatch, tmp_path, classes, count_known, match):
    """The checks after conversion, on the meta device (the real file is 1.7 GB): the parameter
    count of the release, then every tensor's name and shape against the preset."""
    import dataclasses

    from fractalkit.imagenet.presets import get_preset

    def fake_load(path, *, preset=None, heads=None):
        config = {**get_preset(preset).config, "num_classes": classes}
        with torch.device("meta"):
            return Fractal.from_config(config)

    monkeypatch.setattr(fg, "load_fractalgen", fake_load)
    release = hub.RELEASES["fractalar-in64"]
    if not count_known:
        release = dataclasses.replace(release, num_params=None)
    if match is None:
        model = hub._convert_release(release, tmp_path / "checkpoint-last.pth", Fractal)
        assert sum(p.numel() for p in model.parameters()) == release.num_params
    else:
        with pytest.raises(hub.PretrainedError, match=match):
            hub._convert_release(release, tmp_path / "checkpoint-last.pth", Fractal)


def test_register_release(monkeypatch):
    monkeypatch.setattr(hub, "RELEASES", dict(hub.RELEASES))
    mirror = fractalgen_release("mirror-ar", "http://example.invalid/a.pth", 1_000_000, heads=TINY_HEADS)
    hub.register_release(mirror)
    hub.register_release(fractalgen_release("mirror-ar", "http://example.invalid/a.pth", 1_000_000,
                                            heads=TINY_HEADS))  # an equal entry again is fine
    assert hub.RELEASES["mirror-ar"] == mirror
    with pytest.raises(ValueError, match="already registered"):
        hub.register_release(fractalgen_release("mirror-ar", "http://example.invalid/b.pth", 1_000_000,
                                                heads=TINY_HEADS))
    with pytest.raises(ValueError, match="needs a convert callable"):
        hub.register_release(hub.Release("bare", "http://example.invalid/c.pth", 1_000_000))
    with pytest.raises(ValueError, match="needs a preset or heads"):
        fractalgen_release("bare", "http://example.invalid/c.pth", 1_000_000)


def test_hub_needs_no_fractal_and_loads_any_registered_kind(tiny_model, tmp_path, monkeypatch):
    """The generic Hub code builds the class it is given (``Fractal.from_pretrained`` passes its
    own; a subclass gets a subclass), and a release converts with its own callable."""

    class MyFractal(Fractal):
        pass

    folder = tiny_model.save_pretrained(tmp_path / "m")
    assert type(MyFractal.from_pretrained(folder)) is MyFractal
    assert type(hub.from_pretrained(folder)) is Fractal  # the class fractalkit registers
    seen = []

    def convert(path, cls):
        seen.append((Path(path).read_bytes(), cls))
        return tiny_model

    original = tmp_path / "cache" / "elsewhere" / "plain" / hub.ORIGINAL_FILE
    original.parent.mkdir(parents=True)
    original.write_bytes(b"anything the converter understands")
    monkeypatch.setattr(hub, "RELEASES", dict(hub.RELEASES))
    hub.register_release(hub.Release("plain", "http://example.invalid/p.bin", 34, convert=convert,
                                     folder="elsewhere", sampling=SampleOptions(guidance=1.5)))
    model = MyFractal.from_pretrained("plain", cache_dir=tmp_path / "cache", offline=True)
    assert seen == [(b"anything the converter understands", MyFractal)]
    assert model.pretrained_options == SampleOptions(guidance=1.5)
