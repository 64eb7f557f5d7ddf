"""Pretrained models: the released FractalGen checkpoints by name, Hub-style folders, the Hub.

:func:`from_pretrained` (also ``Fractal.from_pretrained``) takes one of three things:

- **a folder** written by :func:`save_pretrained` (``config.json``, ``model.safetensors``,
  ``sampling.json``, ``README.md``);
- **a released model's name** (:data:`RELEASES`; :mod:`fractalkit.imagenet` registers the five
  paper models when ``fractalkit`` is imported: ``"fractalar-in64"``, ``"fractalmar-in64"``,
  ``"fractalmar-base-in256"``, ``"fractalmar-large-in256"``, ``"fractalmar-huge-in256"``): the
  original file is downloaded once from the address its authors publish (with a progress bar),
  converted once by the release's own ``convert`` callable (for the paper models,
  :mod:`fractalkit.imagenet.convert`: no pickle code runs), checked (the parameter count, then
  the release's ``verify`` callable: every tensor's name and shape against the preset) and
  cached as a folder; later calls load the folder and touch no network;
- **a Hugging Face Hub repository id** (``"owner/name"``), fetched with
  ``huggingface_hub.snapshot_download`` into the Hub's own cache.

The cache folder is ``cache_dir=``, else ``$FRACTALKIT_CACHE``, else
``$XDG_CACHE_HOME/fractalkit`` (``~/.cache/fractalkit``). A released model lives in
``<cache>/fractalgen/<name>/``; to install one by hand (a machine without internet), put the
original ``checkpoint-last.pth`` there: the next call converts it.

Released files are fetched within bounds (:func:`download`: the release's size plus a margin,
an overall deadline, strict ``Content-Length``) from the authors' address or a mirror
(``mirror=`` or ``$FRACTALKIT_MIRROR``, laid out like the cache: :func:`mirror_url`). A file
whose size is not the release's, that does not convert, or whose weights fail
:func:`check_weights` is deleted and nothing is cached. The cached folder's ``source.json``
records the size and SHA-256 of each file it loads; every later load checks them, and a damaged
folder raises a :class:`PretrainedError` naming it (delete it: the next call fetches again).

This module sits below :class:`fractalkit.Fractal` (it never imports it, nor any wing): the
model class comes in as ``cls`` (``Fractal.from_pretrained`` passes itself; a plain
:func:`from_pretrained` call uses the class ``fractalkit`` registers with
:func:`set_default_model_class`), and folders load through that class's ``load``
(:mod:`fractalkit.persistence`).

Example::

    model = Fractal.from_pretrained("fractalmar-in64")
    images = model.sample(y=torch.tensor([207]), options=model.pretrained_options)
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fractalkit.config import FractalConfig
from fractalkit.filelock import waiting_lock
from fractalkit.protocol import SampleOptions
from fractalkit.validation import file_sha256, read_json_file

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "OFFLINE_ENV",
    "RELEASES",
    "USER_AGENT",
    "DownloadError",
    "PretrainedError",
    "Release",
    "cache_dir",
    "check_weights",
    "default_deadline",
    "download",
    "download_limit",
    "from_pretrained",
    "human_size",
    "load_sampling_options",
    "mirror_url",
    "push_to_hub",
    "register_release",
    "save_pretrained",
    "set_default_model_class",
]

#: Environment variable naming the cache folder (``cache_dir=`` overrides it).
CACHE_ENV = "FRACTALKIT_CACHE"
#: Set to ``1`` to forbid network access (``HF_HUB_OFFLINE=1`` counts too).
OFFLINE_ENV = "FRACTALKIT_OFFLINE"
#: The original's download script fetches the released files with wget; Dropbox serves the file
#: itself (not a web page) to this user agent.
USER_AGENT = "Wget/1.16 (linux-gnu)"
CONFIG_FILE, WEIGHTS_FILE, SAMPLING_FILE, CARD_FILE = (
    "config.json", "model.safetensors", "sampling.json", "README.md"
)
ORIGINAL_FILE = "checkpoint-last.pth"
SOURCE_FILE = "source.json"


class PretrainedError(RuntimeError):
    """A pretrained model cannot be found, downloaded, verified or loaded (the message says why
    and what to do)."""


@dataclass(frozen=True)
class Release:
    """A released file that :func:`from_pretrained` can fetch by name, and how to load it.

    The Hub code knows nothing about any particular model family: a release carries the
    callables that turn its downloaded file into a model and check it (a wing registers its
    releases with :func:`register_release`; :mod:`fractalkit.imagenet` does for the paper models).

    Attributes:
        name: the name users pass.
        url: where its authors publish the file.
        size_bytes: the file's size in bytes (exact, or within ``size_tolerance``). A download
            is cut off past this size plus a margin (:func:`download_limit`), and a downloaded
            file whose size differs by more than ``size_tolerance`` is refused before it is
            converted (it is deleted).
        convert: ``convert(path, cls) -> model``: the downloaded file at ``path`` as an instance
            of the model class ``cls``; raises ``ValueError`` for a file that is not this release.
        verify: ``verify(model)``, run after the parameter count is checked; raises
            ``ValueError`` when the converted model is not the release (e.g. a tensor of the
            wrong shape). None: no further check.
        num_params: the parameter count the converted model must have (None: not checked).
        title: a human name for messages and the model card.
        sampling: the sampling settings stored with the converted model (None: none).
        published: whether ``sampling`` are the settings published with the release.
        notes: one paragraph for the model card (e.g. where the sampling settings come from).
        folder: the cache subfolder the release lives in (``<cache>/<folder>/<name>/``), and the
            same path under a mirror (``<mirror>/<folder>/<name>/checkpoint-last.pth``).
        size_tolerance: how many bytes the true file may differ from ``size_bytes`` (0: the
            size is exact; the paper models' sizes are published in whole MiB: 1 MiB).
        check_weights: check the converted weights' statistics before caching (every parameter
            finite, at most :data:`WEIGHT_ABS_MAX` in magnitude, matrices not mostly exact zeros
            or constant; see :func:`check_weights`). Turn off only for a model that legitimately
            holds such tensors.

    Raises:
        TypeError: ``size_bytes`` or ``size_tolerance`` is not a whole number of bytes (a
            float, e.g. a size in MB from older versions).
        ValueError: ``size_bytes`` is not positive, or ``size_tolerance`` is negative.
    """

    name: str
    url: str
    size_bytes: int
    convert: Callable[[Path, type], Any] | None = None
    verify: Callable[[Any], None] | None = None
    num_params: int | None = None
    title: str = ""
    sampling: SampleOptions | None = None
    published: bool = False
    notes: str = ""
    folder: str = "fractalgen"
    size_tolerance: int = 0
    check_weights: bool = True

    def __post_init__(self) -> None:
        for what in ("size_bytes", "size_tolerance"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"Release {self.name!r}: {what} is the file's size in bytes, a whole number; got "
                    f"{value!r} (a size in MB? pass e.g. 650_000_000 for 650 MB)"
                )
        if self.size_bytes <= 0 or self.size_tolerance < 0:
            raise ValueError(
                f"Release {self.name!r}: size_bytes must be positive and size_tolerance at least 0 "
                f"(got {self.size_bytes}, {self.size_tolerance})"
            )

    @property
    def size_mb(self) -> float:
        """The size in MB (10^6 bytes); kept for older code: prefer :attr:`size_bytes`."""
        return self.size_bytes / 1e6

    @property
    def size_text(self) -> str:
        """The size for people, in the file's units: ``"1.73 GB"`` (``"about ..."`` when inexact)."""
        text = human_size(self.size_bytes)
        return f"about {text}" if self.size_tolerance else text


def human_size(num_bytes: int) -> str:
    """``num_bytes`` in decimal units as file listings show them: ``"1.73 GB"``, ``"747 MB"``.

    Args:
        num_bytes: a size in bytes (>= 0).
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            value = num_bytes / scale
            digits = 0 if value >= 100 else 1 if value >= 10 else 2
            return f"{value:.{digits}f} {unit}"
    return f"{num_bytes} bytes"


#: The releases :func:`from_pretrained` can fetch by name (:func:`register_release` adds one;
#: importing ``fractalkit`` registers the five paper models, see :mod:`fractalkit.imagenet`).
RELEASES: dict[str, Release] = {}

_default_model_class: list[type] = []


def set_default_model_class(cls: type) -> None:
    """The model class a plain :func:`from_pretrained` call builds (``fractalkit`` registers
    :class:`fractalkit.Fractal` when imported; ``Fractal.from_pretrained`` passes its own class).

    Args:
        cls: a class with ``load(path, *, device)`` and ``from_config``.
    """
    if not callable(getattr(cls, "load", None)):
        raise TypeError(f"set_default_model_class: {cls!r} has no load(path, device=...) method")
    _default_model_class[:] = [cls]


def _model_class(cls: type | None) -> type:
    if cls is not None:
        return cls
    if not _default_model_class:
        raise PretrainedError(
            "from_pretrained: no model class given and none registered; call "
            "fractalkit.Fractal.from_pretrained(...) (or pass cls=fractalkit.Fractal)"
        )
    return _default_model_class[0]


def register_release(release: Release) -> None:
    """Make ``release`` fetchable by name (e.g. a mirror, or a test server's file).

    Raises:
        ValueError: the name is taken by a different release, the release has no ``convert``
            callable (nothing would say how to turn its file into a model), or its ``name`` or
            ``folder`` is not one plain folder name (``..``, ``/`` or an absolute path would put
            the cache outside the cache root).
    """
    for what in ("name", "folder"):
        _check_cache_name(getattr(release, what), f"register_release: Release.{what}", ValueError)
    if not callable(release.convert):
        raise ValueError(
            f"register_release: {release.name!r} needs a convert callable (path, cls) -> model "
            "that turns its downloaded file into a model"
        )
    old = RELEASES.get(release.name)
    if old is not None and old != release:
        raise ValueError(f"register_release: {release.name!r} is already registered as {old}")
    RELEASES[release.name] = release


#: What a release name or cache folder may be: one plain folder name (letters, digits, ``._-``).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def _check_cache_name(name: Any, what: str, error: type[Exception]) -> None:
    """Refuse a name that is not one plain folder name: a release's name and folder become
    ``<cache>/<folder>/<name>/``, so ``..``, a separator or an absolute path would escape it."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise error(
            f"{what} {name!r} is not a plain folder name (letters, digits, '.', '_', '-'; no "
            "'/', '..' or absolute path): it names a folder inside the cache root"
        )


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``root``."""
    return path.resolve().is_relative_to(root.resolve())


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache root: ``path``, else ``$FRACTALKIT_CACHE``, else ``$XDG_CACHE_HOME/fractalkit``."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fractalkit"


_cache_root = cache_dir  # from_pretrained's argument shadows the name


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


# ---- downloading ------------------------------------------------------------------------------

#: A download may run this far past the release's declared size (plus its tolerance) before it is
#: cut off: 5% and 1 MiB (:func:`download_limit`).
SIZE_MARGIN = (0.05, 1 << 20)
#: The slowest average rate a default deadline allows (bytes per second), after
#: :data:`DEADLINE_GRACE` seconds: a 1.73 GB file gets about 5 hours (:func:`default_deadline`).
MIN_RATE = 100_000
DEADLINE_GRACE = 600.0
_MIB = 1 << 20


class DownloadError(OSError):
    """A server's answer is not the file :func:`download` asked for, or did not come in time:
    larger than the bound, a ``Content-Length`` that is not a byte count, more bytes than it
    announced, a redirect loop, past the deadline, a stalled connection. The message says what
    the server did and what to do; :func:`from_pretrained` turns it into a
    :class:`PretrainedError`.

    Attributes:
        partial_kept: whether the partial file was kept for the next attempt to resume (a
            deadline or a stall); a server that broke the protocol leaves nothing behind.
    """

    def __init__(self, message: str, *, partial_kept: bool = False):
        super().__init__(message)
        self.partial_kept = partial_kept


def download_limit(release: Release) -> int:
    """The most bytes a download of ``release`` may bring: its declared size and tolerance plus
    :data:`SIZE_MARGIN` (5% and 1 MiB)."""
    share, extra = SIZE_MARGIN
    return int((release.size_bytes + release.size_tolerance) * (1 + share)) + extra


def default_deadline(max_bytes: int) -> float:
    """The overall deadline (seconds) of a download of at most ``max_bytes``:
    :data:`DEADLINE_GRACE` plus the time at :data:`MIN_RATE`."""
    return DEADLINE_GRACE + max_bytes / MIN_RATE


def _content_length(response: Any, url: str) -> int | None:
    """The response's ``Content-Length`` as a byte count (None: absent), parsed strictly."""
    values = response.headers.get_all("Content-Length") or []
    if not values:
        return None
    texts = {str(v).strip() for v in values}
    if len(texts) != 1 or not all(t.isascii() and t.isdigit() for t in texts):
        raise DownloadError(
            f"{url}: the server sent Content-Length {', '.join(repr(str(v)) for v in values)}, "
            "which is not one byte count; the server (or a proxy in between) is broken: try "
            "again later or download from another address (a mirror)"
        )
    return int(texts.pop())


def _socket(response: Any) -> Any:
    """The response's socket (to shorten its timeout as the deadline nears), or None."""
    raw = getattr(getattr(response, "fp", None), "raw", None)
    return getattr(raw, "_sock", None)


def download(
    url: str, dest: str | os.PathLike, *, progress: bool = True, desc: str | None = None,
    timeout: float = 60.0, chunk_bytes: int = 1 << 20, max_bytes: int | None = None,
    deadline: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, within bounds, resuming an interrupted attempt.

    Bytes go to ``dest + ".partial"``; only a complete file (as many bytes as the server
    announced) is renamed to ``dest``. If a partial file exists, the request asks for the rest
    (HTTP ``Range``); a server that answers with the whole file (or another range) restarts it
    from zero.

    Bounds: at most ``max_bytes`` in all (a larger ``Content-Length`` is refused before any
    byte is read, a body without one is cut off at the bound), the whole call within
    ``deadline`` seconds (a trickle that never stalls still ends), and no read waiting more than
    ``timeout`` seconds. ``Content-Length`` must be one byte count; a body longer than it is
    refused; urllib follows at most 10 redirects (a loop is reported as one).

    Args:
        url: the address (``http(s)://`` or ``file://``; requested with :data:`USER_AGENT`).
        dest: the file to write.
        progress: show a tqdm bar (size, rate, ETA) on stderr.
        desc: the bar's label.
        timeout: seconds to wait for the server on each read (a stall).
        chunk_bytes: read size.
        max_bytes: the most bytes the file may have (None: no bound).
        deadline: seconds the whole download may take (None: no deadline).

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: the bound, the deadline or a stall was hit, or the server broke the
            protocol (see the class); the partial file is kept only after a deadline or stall.
        OSError: the network or the server failed otherwise (``urllib.error.URLError``,
            ``urllib.error.HTTPError``, a dropped connection: ``http.client.IncompleteRead``
            is an ``HTTPException``); the partial file is kept for the next attempt to resume.
    """
    import time

    from tqdm.auto import tqdm

    start = time.monotonic()
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ValueError(f"download: max_bytes must be a positive number of bytes, got {max_bytes!r}")
    if deadline is not None and not deadline > 0:
        raise ValueError(f"download: deadline must be a positive number of seconds, got {deadline!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")

    def left() -> float | None:
        return None if deadline is None else deadline - (time.monotonic() - start)

    def late(got: int) -> DownloadError:
        return DownloadError(
            f"{url}: the download did not finish within its deadline of {deadline:g} s "
            f"({got:,} bytes in {time.monotonic() - start:.1f} s: the server is too slow or "
            "trickles); the partial file is kept and the next call resumes it: try again later, "
            "use a mirror, or allow more time (deadline=...)", partial_kept=True)

    def refuse(message: str) -> DownloadError:
        partial.unlink(missing_ok=True)  # a server that breaks the protocol leaves nothing behind
        return DownloadError(f"{url}: {message}")

    def retry_from_zero() -> Path:
        partial.unlink(missing_ok=True)
        remaining = left()
        return download(url, dest, progress=progress, desc=desc, timeout=timeout, chunk_bytes=chunk_bytes,
                        max_bytes=max_bytes, deadline=None if remaining is None else max(remaining, 1e-3))

    have = partial.stat().st_size if partial.exists() else 0
    if max_bytes is not None and have > max_bytes:
        partial.unlink()
        have = 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    remaining = left()
    if remaining is not None and remaining <= 0:
        raise late(have)
    try:
        response = urllib.request.urlopen(request, timeout=timeout if remaining is None else min(timeout, remaining))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the partial file is bad, restart
            return retry_from_zero()
        if urllib.request.HTTPRedirectHandler.inf_msg in str(err.msg):
            raise DownloadError(
                f"{url}: the server redirected more than "
                f"{urllib.request.HTTPRedirectHandler.max_redirections} times or in a loop (the "
                f"last answer: HTTP {err.code} {err.reason}); the address is wrong or the server "
                "misconfigured: check the address (or the mirror setting) in a browser") from err
        raise
    except TimeoutError as err:
        if left() is not None and left() <= 0:
            raise late(have) from err
        raise
    with response:
        status = getattr(response, "status", None) or 200
        length = _content_length(response, url)
        if have and status == 206:
            match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", response.headers.get("Content-Range") or "")
            if match is None or int(match.group(1)) != have:  # not the rest of this file
                response.close()
                return retry_from_zero()
        elif have:  # the server ignored the range: start again
            have = 0
        total = have + length if length is not None else None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise refuse(
                f"the server announces {total:,} bytes (Content-Length), more than the bound of "
                f"{max_bytes:,} bytes ({human_size(max_bytes)}): this is not the file expected (a wrong "
                "address or mirror?); check the address, or raise the bound with max_bytes=...")
        if isinstance(response, http.client.HTTPResponse) and not response.chunked and response.fp is not None:
            # Read the stream itself, not response.read: http.client stops at Content-Length and
            # silently drops what follows, so a body longer than announced would go unnoticed.
            read = response.fp.read1
        elif isinstance(response, http.client.HTTPResponse):  # chunked: http.client decodes
            read = response.read1
        else:  # file://
            fp = getattr(response, "fp", None)
            read = getattr(fp, "read1", None) or response.read
        sock = _socket(response)
        got = have
        with open(partial, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc or dest.name, disable=not progress, dynamic_ncols=True,
        ) as bar:
            while True:
                want = chunk_bytes if total is None else min(chunk_bytes, total - got)
                if want <= 0:
                    break
                remaining = left()
                if remaining is not None and remaining <= 0:
                    raise late(got)
                if sock is not None:
                    sock.settimeout(timeout if remaining is None else max(min(timeout, remaining), 1e-3))
                try:
                    chunk = read(want)
                except TimeoutError as err:
                    remaining = left()
                    if remaining is not None and remaining <= 0:
                        raise late(got) from err
                    raise DownloadError(
                        f"{url}: the server sent nothing for {timeout:g} s ({got:,} bytes so far); "
                        "the partial file is kept and the next call resumes it: try again later",
                        partial_kept=True) from err
                if not chunk:
                    break
                got += len(chunk)
                if max_bytes is not None and got > max_bytes:
                    f.close()
                    raise refuse(
                        f"the server sent more than the bound of {max_bytes:,} bytes "
                        f"({human_size(max_bytes)}) without announcing a size: this is not the file "
                        "expected (a wrong address or mirror?); nothing is kept: check the address, "
                        "or raise the bound with max_bytes=...")
                f.write(chunk)
                bar.update(len(chunk))
            if total is not None and got == total and read is not response.read:
                # all announced bytes are in: the stream must end here (urllib asks the server
                # to close the connection after the body)
                if sock is not None:
                    sock.settimeout(1.0)
                try:
                    extra = read(1)
                except (TimeoutError, OSError, ValueError):
                    extra = b""  # nothing more came: a server that keeps the connection open
                if extra:
                    f.close()
                    raise refuse(
                        f"the server sent more bytes than its Content-Length of {length:,}: the "
                        "answer is broken (a misconfigured server or proxy); nothing is kept: try "
                        "again later or use another address")
            f.flush()
            os.fsync(f.fileno())
    size = partial.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)
    os.replace(partial, dest)
    return dest


# ---- folders ------------------------------------------------------------------------------------


def _options_dict(options: SampleOptions) -> dict[str, Any]:
    out = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "callback"}
    if out["steps"] is not None:
        out["steps"] = list(out["steps"])
    return out


#: bounds on sampling settings read from a file (a user may pass anything in code): far past
#: any published setting, short of ones that overflow the logits or never finish
FILE_GUIDANCE_MAX = 100.0
FILE_TEMPERATURE_RANGE = (1e-3, 100.0)
#: steps per level a file may set even without a model to compare with (with one: its children)
FILE_STEPS_MAX = 1 << 20
#: the options a file may set; callables (``callback``, ``constraint``) are never read from files
FILE_OPTION_NAMES = frozenset(
    f.name for f in dataclasses.fields(SampleOptions) if f.name not in ("callback", "constraint")
)


def _file_options(path: Path, options: Any, config: FractalConfig | None) -> SampleOptions:
    """``options`` (a sampling file's ``"options"`` entry) as SampleOptions, within the bounds a
    file may set: known names only (no callables), steps at most one per level and at most the
    level's children, guidance and temperature within sane ranges.

    Raises:
        PretrainedError: naming ``path``, the option and the bound.
    """
    def refuse(what: str) -> PretrainedError:
        return PretrainedError(f"{path}: sampling option {what}; fix or delete the file")

    if not isinstance(options, dict):
        raise refuse(f"'options' must be a JSON object, got {type(options).__name__}")
    callables = sorted(k for k in ("callback", "constraint") if options.get(k) is not None)
    if callables:  # files written by save_pretrained hold "constraint": null, which is fine
        raise refuse(f"{callables} must be null: callables are never read from files "
                     "(pass them in code, e.g. SampleOptions.make(model.pretrained_options, ...))")
    options = {k: v for k, v in options.items() if k not in ("callback", "constraint")}
    unknown = sorted(set(options) - FILE_OPTION_NAMES)
    if unknown:
        raise refuse(f"name(s) {unknown} unknown (valid: {sorted(FILE_OPTION_NAMES)})")
    if "kv_cache" in options and not isinstance(options["kv_cache"], bool):
        raise refuse(f"kv_cache must be true or false, got {options['kv_cache']!r}")
    try:
        parsed = SampleOptions(**options)
    except (ValueError, TypeError) as err:
        raise refuse(f"values are invalid: {err}") from err
    if parsed.guidance > FILE_GUIDANCE_MAX:
        raise refuse(f"guidance {parsed.guidance} is above {FILE_GUIDANCE_MAX}")
    low, high = FILE_TEMPERATURE_RANGE
    if not low <= parsed.temperature <= high:
        raise refuse(f"temperature {parsed.temperature} is outside [{low}, {high}]")
    too_many = [n for n in parsed.steps or () if n is not None and n > FILE_STEPS_MAX]
    if too_many:
        raise refuse(f"steps {list(parsed.steps or ())} has an entry above {FILE_STEPS_MAX:,}")
    if parsed.steps is not None and config is not None:
        children = [partitioner.num_children for partitioner, _ in config.levels]
        if len(parsed.steps) > len(children):
            raise refuse(f"steps {list(parsed.steps)} has more entries than the model's "
                         f"{len(children)} level(s)")
        for i, (steps, k) in enumerate(zip(parsed.steps, children, strict=False)):
            if steps is not None and steps > k:
                raise refuse(f"steps[{i}] = {steps} is more than level {i}'s {k} children")
    return parsed


def load_sampling_options(
    folder: str | os.PathLike, config: FractalConfig | None = None
) -> SampleOptions | None:
    """The :class:`fractalkit.SampleOptions` stored in a :func:`save_pretrained` folder, or None.

    Args:
        folder: the model folder.
        config: the model's config; with it, ``steps`` are also bounded by each level's
            number of children (at most one child per step is ever needed).

    Raises:
        PretrainedError: not a sampling file, or an option out of bounds (see
            :data:`FILE_GUIDANCE_MAX`, :data:`FILE_TEMPERATURE_RANGE`); names the file.
    """
    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return None
    fix = ("delete it (the model then loads without stored options) or write the folder "
           "again with save_pretrained")
    data = read_json_file(path, owner="load_sampling_options", fix=fix, error=PretrainedError)
    try:
        options = data["options"]
    except (KeyError, TypeError) as err:
        raise PretrainedError(f"{path} is not a fractalkit sampling file (no 'options': {err}); {fix}") from err
    return _file_options(path, options, config)


def save_pretrained(
    model: Any,
    folder: str | os.PathLike,
    *,
    sampling: SampleOptions | None = None,
    description: str = "",
    published: bool = False,
) -> Path:
    """Write ``model`` as a Hub-style folder: config.json, model.safetensors, sampling.json, README.md.

    ``model.safetensors`` is :meth:`fractalkit.Fractal.save`'s file (it carries the config too);
    ``config.json`` repeats the config for people and the Hub's file browser.

    The folder is replaced as a whole, atomically: the new files are written into a sibling
    temporary folder (``.<name>.new-*``), which then takes the folder's place (an atomic
    exchange where the system has one, else: the old folder renamed aside, the new one renamed
    in, the old removed). A crash or a full disk at any point leaves the old model or the new
    one; after a crash in the instant between the two renames the old folder waits beside as
    ``.<name>.old-*`` and :func:`from_pretrained` of the folder says so. A folder that cannot
    be renamed (a mount point), or whose parent may not be written, has its files replaced one by
    one instead, each atomically. Other files in an
    existing folder are carried over (hard links where possible); the names written here, and
    ``sampling.json`` when no sampling is given, come from the new model only.

    Args:
        model: the model (a :class:`fractalkit.Fractal`).
        folder: the folder to write (created if needed, with its parents).
        sampling: the settings to draw samples with (default: the model's ``pretrained_options``
            if it has them, else none are written).
        description: one paragraph for the model card.
        published: whether ``sampling`` are settings published with the model (model card).

    Returns:
        ``folder`` as a Path.

    Raises:
        OSError: the disk is full or not writable; the folder is as it was before the call.
    """
    folder = Path(folder)
    if folder.is_symlink():  # replace what the link points to, keep the link
        folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save_pretrained: {folder} is a file, not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    sampling = sampling if sampling is not None else getattr(model, "pretrained_options", None)
    try:
        new, inside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent)), False
    except PermissionError:  # a folder of ours in a parent we may not write: file by file
        if not folder.is_dir():
            raise
        new, inside = Path(tempfile.mkdtemp(prefix=".new-", dir=folder)), True
    try:
        if folder.is_dir() and not inside:  # keep what else the folder holds
            for entry in os.listdir(folder):
                if entry not in _HUB_FILES:
                    _carry(folder / entry, new / entry)
        model.save(new / WEIGHTS_FILE)
        _write(new / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2) + "\n")
        if sampling is not None:
            payload = {"options": _options_dict(sampling), "published": published}
            _write(new / SAMPLING_FILE, json.dumps(payload, indent=2) + "\n")
        _write(new / CARD_FILE, _model_card(model, sampling, description, published))
        if inside:
            _replace_files(new, folder)
        else:
            _swap_in(new, folder)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return folder


def _carry(src: Path, dst: Path) -> None:
    """Copy ``src`` (a file or folder) to ``dst``, hard-linking files where possible."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        link(str(src), str(dst))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new: Path, folder: Path) -> None:
    """Put the complete folder ``new`` at ``folder``; whatever was there is removed."""
    _fsync_dir(new)
    if not folder.exists():
        os.rename(new, folder)
    elif not any(folder.iterdir()):
        os.replace(new, folder)  # an empty folder is replaced in one rename
    elif _exchange(new, folder):
        shutil.rmtree(new)  # now the old folder
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        try:
            os.replace(folder, aside)  # replaces the empty placeholder
        except OSError:  # a folder that cannot be renamed (a mount point): file by file
            os.rmdir(aside)
            _replace_files(new, folder)
            return
        try:
            os.rename(new, folder)
        except OSError:
            os.replace(aside, folder)  # put the old model back
            raise
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(folder.parent)


def _replace_files(new: Path, folder: Path) -> None:
    """The fallback of :func:`_swap_in` for a folder that cannot be renamed: each file replaced
    atomically, the weights last; the written names the new folder lacks are removed."""
    names = sorted(os.listdir(new), key=lambda n: n == WEIGHTS_FILE)
    for name in names:
        if name in _HUB_FILES:
            os.replace(new / name, folder / name)
    for name in _HUB_FILES:
        if name not in names and (folder / name).is_file():
            (folder / name).unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _model_card(model: Any, sampling: SampleOptions | None, description: str, published: bool) -> str:
    params = sum(p.numel() for p in model.parameters())
    shape = "x".join(str(s) for s in model.event_shape)
    lines = [
        "---", "library_name: fractalkit", "tags:", "- fractalkit", "- fractal-generative-model", "---", "",
        "# fractalkit model", "", description or "A fractal generative model saved with fractalkit.", "",
        f"- event shape: {shape}, values 0..{model.num_values - 1}",
        f"- classes: {model.num_classes or 'none (unconditional)'}",
        f"- parameters: {params:,}",
        f"- levels: {len(model.levels) - 1}, then the leaf",
    ]
    if sampling is not None:
        what = "published sampling settings" if published else "sampling settings"
        lines.append(f"- {what}: `{json.dumps(_options_dict(sampling))}`")
    lines += [
        "", "## Use", "", "```python", "import torch", "from fractalkit import Fractal", "",
        'model = Fractal.from_pretrained("<this folder or repo id>")',
        "x = model.sample(4, y=torch.arange(4) if model.num_classes else None,"
        " options=model.pretrained_options)" if model.num_classes else
        "x = model.sample(4, options=model.pretrained_options)",
        "```", "",
    ]
    return "\n".join(lines)


def _folder_config(path: Path) -> FractalConfig | None:
    """The config a folder's config.json describes (older versions through the one conversion),
    or None when it describes none."""
    data = read_json_file(path, owner="from_pretrained", error=PretrainedError,
                          fix="the folder was edited or half-written: write it again with save_pretrained")
    try:
        return FractalConfig.from_dict(data)
    except (ValueError, TypeError, KeyError):
        return None


def _load_folder(folder: Path, device: str, cls: type) -> Any:
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PretrainedError(
            f"{folder} is not a fractalkit model folder: it has no {WEIGHTS_FILE} "
            "(write one with model.save_pretrained(folder))"
        )
    model = cls.load(weights, device=device)  # the class's loader: fractalkit.persistence
    config_path = folder / CONFIG_FILE
    if config_path.is_file() and _folder_config(config_path) != model.config:
        raise PretrainedError(
            f"{config_path} disagrees with the config inside {weights}; the folder was edited "
            "by hand or half-written: write it again with save_pretrained"
        )
    model.pretrained_options = load_sampling_options(folder, model.config)
    return model.eval()


# ---- released checkpoints ----------------------------------------------------------------------

#: Environment variable naming a mirror of the released files (``mirror=`` overrides it).
MIRROR_ENV = "FRACTALKIT_MIRROR"
#: The largest magnitude a converted parameter may hold (:func:`check_weights`).
WEIGHT_ABS_MAX = 1e4
#: The largest share of exact zeros a converted weight matrix may hold (:func:`check_weights`).
WEIGHT_ZERO_SHARE_MAX = 0.5


def mirror_url(release: Release, mirror: str | os.PathLike) -> str:
    """The address of ``release``'s file under ``mirror``.

    A mirror has the cache's layout: ``<mirror>/<folder>/<name>/checkpoint-last.pth`` (e.g.
    ``https://files.example.org/fractalkit/fractalgen/fractalmar-in64/checkpoint-last.pth``), so
    a cache filled with ``keep_original=True`` and served as it is (``python -m http.server``)
    is a mirror. ``mirror`` is a base address (``http://``, ``https://``, ``file://``) or a local
    folder.
    """
    base = os.fspath(mirror).rstrip("/")
    if "://" not in base:  # a folder on this machine (a shared disk)
        base = Path(base).expanduser().resolve().as_uri()
    return f"{base}/{release.folder}/{release.name}/{ORIGINAL_FILE}"


def _address(release: Release, mirror: str | os.PathLike | None) -> str:
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    return release.url if mirror in (None, "") else mirror_url(release, mirror)


def _offline_message(release: Release, folder: Path, reason: str, url: str | None = None) -> str:
    url = url or release.url
    return (
        f"{release.name} is not in the cache and cannot be downloaded ({reason}).\n"
        f"Download the original {release.title or release.name} checkpoint ({release.size_text}) from\n"
        f"  {url}\n"
        f"(e.g. wget -O {ORIGINAL_FILE} '{url}') and put it at\n"
        f"  {folder / ORIGINAL_FILE}\n"
        f"(or choose the cache with cache_dir=... or ${CACHE_ENV}; or fetch from a mirror that holds "
        f"<mirror>/{release.folder}/{release.name}/{ORIGINAL_FILE}: mirror=... or ${MIRROR_ENV}); the next "
        f"Fractal.from_pretrained({release.name!r}) converts it once and loads it without the network."
    )


def check_weights(model: Any) -> None:
    """Refuse weights no trained model has: the check of a converted release before caching.

    Every floating-point parameter must be finite and at most :data:`WEIGHT_ABS_MAX` in
    magnitude; every parameter matrix (2 or more dimensions, 256 or more elements) must not be
    constant, nor more than :data:`WEIGHT_ZERO_SHARE_MAX` exact zeros. Random bytes in a float
    tensor make NaN/inf or huge values; zeroed bytes make runs of exact zeros. Parameters on the
    meta device are skipped. Tensor by tensor: no copy of the whole model.

    Args:
        model: a ``torch.nn.Module``.

    Raises:
        ValueError: naming the first parameter that fails and how.
    """
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_meta or not p.is_floating_point() or p.numel() == 0:
                continue
            if not bool(torch.isfinite(p).all()):
                raise ValueError(f"parameter {name} holds NaN/inf values")
            biggest = float(p.abs().max())
            if biggest > WEIGHT_ABS_MAX:
                raise ValueError(f"parameter {name} holds a value of magnitude {biggest:.3g} "
                                 f"(more than {WEIGHT_ABS_MAX:g})")
            if p.dim() >= 2 and p.numel() >= 256:
                zeros = float((p == 0).sum()) / p.numel()
                if zeros > WEIGHT_ZERO_SHARE_MAX:
                    raise ValueError(f"weight matrix {name} {tuple(p.shape)} is {zeros:.0%} exact zeros")
                if float(p.float().std()) == 0.0:
                    raise ValueError(f"weight matrix {name} {tuple(p.shape)} is constant")


def _check_size(release: Release, original: Path, url: str) -> None:
    """Refuse a file whose size is not the release's (before it is converted)."""
    size = original.stat().st_size
    if abs(size - release.size_bytes) > release.size_tolerance:
        declared = f"{release.size_bytes:,} bytes" + (
            f" (within {release.size_tolerance:,})" if release.size_tolerance else "")
        raise PretrainedError(
            f"the file for {release.name!r} ({original}, from {url}) is not a complete "
            f"{release.name} checkpoint: it has {size:,} bytes ({human_size(size)}), the release "
            f"has {declared}; an incomplete or wrong file (it is deleted and nothing is cached: "
            "the next call downloads it again)")


def _convert_release(release: Release, original: Path, cls: type, url: str | None = None) -> Any:
    what = f"the file for {release.name!r} ({original}, from {url or release.url})"
    if release.convert is None:
        raise PretrainedError(f"{release.name!r} has no convert callable: register it with one")
    try:
        model = release.convert(original, cls)
    except ValueError as err:  # the release's converter refuses the file
        raise PretrainedError(f"{what} is not a {release.name} checkpoint: {err}") from err
    count = sum(p.numel() for p in model.parameters())
    if release.num_params is not None and count != release.num_params:
        raise PretrainedError(
            f"{what} is not a {release.name} checkpoint: it holds {count:,} parameters, "
            f"{release.name} has {release.num_params:,}"
        )
    if release.verify is not None:
        try:
            release.verify(model)
        except ValueError as err:
            raise PretrainedError(f"{what} {err}") from err
    if release.check_weights:
        try:
            check_weights(model)
        except ValueError as err:
            raise PretrainedError(
                f"{what} is damaged (corrupted in transit or on disk?): {err}; it is deleted and "
                "nothing is cached: the next call downloads it again") from err
    return model


def _locked(folder: Path):
    """One process at a time fetches and converts a model; the others wait, then find it cached."""
    return waiting_lock(folder)


def _damaged(release: Release, folder: Path, detail: str) -> PretrainedError:
    return PretrainedError(
        f"the cached copy of {release.name!r} in {folder} is damaged: {detail}. Delete the folder "
        f"(rm -r '{folder}'); the next from_pretrained({release.name!r}) downloads and converts it "
        "again"
    )


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _source_record(url: str, original: Path, folder: Path) -> str:
    """source.json: where the original came from (its size and SHA-256) and the size and
    SHA-256 of every file the cached folder loads, checked on every later load."""
    files = {n: _file_record(folder / n) for n in _CHECKED_FILES if (folder / n).is_file()}
    record = {"url": url, "bytes": original.stat().st_size, "sha256": file_sha256(original), "files": files}
    return json.dumps(record, indent=2) + "\n"


#: the files of a cached release that source.json records and every load checks
_CHECKED_FILES = ("config.json", "model.safetensors", "sampling.json")


def _verify_cached(release: Release, folder: Path) -> dict[str, Any] | None:
    """Check a cached release folder against its source.json: every recorded file present, the
    size first, then the SHA-256. Returns the record of a source.json of an older version (no
    ``files``), for :func:`_load_cached` to complete on this first use; else None."""
    source = folder / SOURCE_FILE
    if not source.is_file():
        raise _damaged(release, folder, f"it has no {SOURCE_FILE} (the record of its files)")
    try:
        record = json.loads(source.read_text(encoding="utf-8"))
        files = record.get("files") if isinstance(record, dict) else None
    except (ValueError, OSError) as err:
        raise _damaged(release, folder, f"{SOURCE_FILE} is not readable JSON ({err})") from err
    if not isinstance(record, dict):
        raise _damaged(release, folder, f"{SOURCE_FILE} is not a JSON object")
    if files is None:  # written by an older fractalkit: recorded on this first use
        return record
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise _damaged(release, folder, f"{SOURCE_FILE} records no {WEIGHTS_FILE}")
    for name in _CHECKED_FILES:
        path = folder / name
        if name not in files:
            if path.exists():
                raise _damaged(release, folder, f"{name} is not one of the files it was cached with")
            continue
        want = files[name]
        if not isinstance(want, dict) or not path.is_file():
            raise _damaged(release, folder, f"{name} is missing" if not path.is_file()
                           else f"{SOURCE_FILE} has a bad entry for {name}")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise _damaged(release, folder, f"{name} has {size:,} bytes, {SOURCE_FILE} records "
                           f"{want.get('bytes')!r} (truncated or replaced)")
    for name in _CHECKED_FILES:
        if name in files and file_sha256(folder / name) != files[name].get("sha256"):
            raise _damaged(release, folder, f"{name} does not have the SHA-256 {SOURCE_FILE} records "
                           "(its bytes changed since it was cached)")
    return None


def _load_cached(release: Release, folder: Path, device: str, cls: type) -> Any:
    """Load a cached release folder after checking it; any problem names the folder and the fix."""
    older = _verify_cached(release, folder)
    try:
        model = _load_folder(folder, device, cls)
        if older is not None and release.check_weights:  # cached before weights were checked
            check_weights(model)
    except (PretrainedError, ValueError, OSError, KeyError) as err:
        # the loader's hints are for a user's own files (a diverged run, an earlier checkpoint);
        # a cached release has one fix, which _damaged gives
        detail = re.sub(r"\s*\((saved from )?a diverged run\?\)|; load an earlier checkpoint", "", str(err))
        raise _damaged(release, folder, f"{type(err).__name__}: {detail}") from err
    if older is not None:  # record the files' sizes and hashes now, check them from now on
        older["files"] = {n: _file_record(folder / n) for n in _CHECKED_FILES if (folder / n).is_file()}
        with contextlib.suppress(OSError):  # a read-only cache, or another process at once
            _write(folder / SOURCE_FILE, json.dumps(older, indent=2) + "\n")
    return model


def _released(release: Release, root: Path, offline: bool, progress: bool, keep_original: bool,
              device: str, cls: type, *, url: str, max_bytes: int | None,
              deadline: float | None) -> Any:
    # register_release checks the names; a Release put into RELEASES by hand is checked here
    for what in ("name", "folder"):
        _check_cache_name(getattr(release, what), f"from_pretrained: release {what}", PretrainedError)
    folder = root / release.folder / release.name
    if not _inside(folder, root):
        raise PretrainedError(
            f"from_pretrained: the cache folder {folder} leads outside the cache root {root} "
            "(a symbolic link?); remove it or choose another cache with cache_dir=..."
        )
    if (folder / WEIGHTS_FILE).is_file():
        return _load_cached(release, folder, device, cls)
    if offline and not (folder / ORIGINAL_FILE).is_file():
        raise PretrainedError(_offline_message(release, folder, "offline mode is on", url))
    with _locked(folder):
        return _fetch_and_convert(release, folder, progress, keep_original, device, cls,
                                  url=url, max_bytes=max_bytes, deadline=deadline)


def _fetch_and_convert(release: Release, folder: Path, progress: bool, keep_original: bool,
                       device: str, cls: type, *, url: str | None = None,
                       max_bytes: int | None = None, deadline: float | None = None) -> Any:
    if (folder / WEIGHTS_FILE).is_file():  # another process finished while this one waited
        return _load_cached(release, folder, device, cls)
    url = url or release.url
    original = folder / ORIGINAL_FILE
    if not original.is_file():
        limit = max_bytes if max_bytes is not None else download_limit(release)
        try:
            download(url, original, progress=progress, desc=f"{release.name} ({release.size_text})",
                     max_bytes=limit, deadline=deadline if deadline is not None else default_deadline(limit))
        except (OSError, http.client.HTTPException) as err:
            partial = original.with_name(original.name + ".partial")
            kept = f"; {partial} is kept and the next call resumes it" if partial.exists() else ""
            raise PretrainedError(_offline_message(release, folder, f"{type(err).__name__}: {err}{kept}", url)) from err
    try:
        _check_size(release, original, url)
        model = _convert_release(release, original, cls, url)
    except PretrainedError:
        original.unlink()  # a wrong file must not poison the cache: the next call fetches again
        raise
    options = release.sampling
    # Write the converted folder beside, then rename: a crash leaves no half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{release.name}-", dir=folder))
    try:
        published = options is not None and release.published
        description = f"{release.title or release.name}, converted by fractalkit from {release.url}."
        if release.notes:
            description += f" {release.notes}"
        save_pretrained(model, tmp, sampling=options, published=published, description=description)
        _write(tmp / SOURCE_FILE, _source_record(url, original, tmp))
        # The weights go last: their presence is what marks the cached folder complete.
        for name in sorted(os.listdir(tmp), key=lambda n: n == WEIGHTS_FILE):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model  # its weights may map the original: freed before the folder is read (one copy)
    if not keep_original:
        original.unlink()
    return _load_cached(release, folder, device, cls)


# ---- the entry points ---------------------------------------------------------------------------

_HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, SAMPLING_FILE, CARD_FILE]


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
    keep_original: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str = "cpu",
    cls: type | None = None,
    mirror: str | os.PathLike | None = None,
    max_bytes: int | None = None,
    deadline: float | None = None,
) -> Any:
    """Load a pretrained :class:`fractalkit.Fractal`: a folder, a released name, or a Hub repo id.

    An existing folder wins; then a :data:`RELEASES` name; then ``"owner/name"`` is a Hub id.
    The returned model is in eval mode and carries ``model.pretrained_options``: the
    :class:`fractalkit.SampleOptions` stored with it (the published ones for the released
    models; None if the folder has none).

    Args:
        name_or_path: the folder, release name or Hub repository id.
        cache_dir: cache root for released models (default ``$FRACTALKIT_CACHE`` or
            ``~/.cache/fractalkit``); for Hub ids, passed to ``huggingface_hub`` (default: its
            own cache).
        offline: never touch the network (default: ``$FRACTALKIT_OFFLINE`` or
            ``$HF_HUB_OFFLINE`` set to 1).
        progress: show a download progress bar.
        keep_original: keep the downloaded ``.pth`` after conversion (default: delete it; the
            converted folder is what is loaded).
        revision, token: for Hub ids (a branch, tag or commit; an access token).
        device: where to put the weights.
        cls: the model class to build (``Fractal.from_pretrained`` passes its own; default: the
            class registered with :func:`set_default_model_class`, :class:`fractalkit.Fractal`).
        mirror: for released names, fetch from this mirror instead of the authors' address: a
            base address or local folder holding ``<mirror>/<folder>/<name>/checkpoint-last.pth``
            (the cache's layout, e.g. ``<mirror>/fractalgen/fractalmar-in64/checkpoint-last.pth``;
            see :func:`mirror_url`). Default: ``$FRACTALKIT_MIRROR``; ``""``: the authors' address
            even when the variable is set.
        max_bytes: for released names, the most bytes the download may bring (default: the
            release's size plus 5% and 1 MiB, :func:`download_limit`).
        deadline: for released names, seconds the whole download may take (default:
            :func:`default_deadline`, 10 minutes plus the time at 100 kB/s); a read that waits
            60 s for the server fails sooner.

    Returns:
        The model.

    Raises:
        PretrainedError: nothing of that name; offline (or the download failed: past the size
            bound or the deadline, a server breaking the protocol) with no cached copy (the
            message says what to download, from where, and where to put it); a downloaded file
            that is not the named model, or not complete, or with weights no trained model has
            (it is deleted and nothing is cached: the next call downloads it again); a cached
            folder that no longer matches the sizes and SHA-256 recorded in its ``source.json``
            (the message names the folder: delete it, the next call downloads it again).
    """
    cls = _model_class(cls)
    path = Path(name_or_path)
    if path.is_dir():
        return _load_folder(path, device, cls)
    _interrupted_save(path)
    if path.is_file():
        raise PretrainedError(
            f"from_pretrained: {path} is a file; pass the folder save_pretrained wrote, load a "
            "fractalkit .safetensors file with Fractal.load, or convert an original .pth with "
            "fractalkit-convert-fractalgen convert IN OUT"
        )
    name = str(name_or_path)
    if name in RELEASES:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
            raise ValueError(f"from_pretrained: max_bytes must be a positive number of bytes, got {max_bytes!r}")
        if deadline is not None and not (isinstance(deadline, int | float) and deadline > 0):
            raise ValueError(f"from_pretrained: deadline must be a positive number of seconds, got {deadline!r}")
        release = RELEASES[name]
        return _released(release, _cache_root(cache_dir), _offline(offline),
                         progress, keep_original, device, cls, url=_address(release, mirror),
                         max_bytes=max_bytes, deadline=deadline)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        _check_hub_id(name)
        return _load_folder(_hub_snapshot(name, cache_dir, _offline(offline), revision, token), device, cls)
    raise PretrainedError(
        f"from_pretrained: {name!r} is not a folder, a released model ({sorted(RELEASES)}) or a "
        "Hugging Face Hub id ('owner/name')"
    )


def _interrupted_save(path: Path) -> None:
    """A missing folder whose previous copy waits beside it (a crash in :func:`save_pretrained`
    between its two renames): say where it is."""
    if path.name and path.parent.is_dir():
        aside = sorted(path.parent.glob(f".{path.name}.old-*"))
        if aside and any((a / WEIGHTS_FILE).is_file() for a in aside):
            raise PretrainedError(
                f"from_pretrained: {path} is missing, and {aside[-1]} holds the model it held before "
                "a save_pretrained was interrupted: rename that folder back to "
                f"{path.name} (or save the model again)"
            )


def _check_hub_id(repo_id: str) -> None:
    """A Hub id is ``owner/name`` with plain names (the Hub's own rule): no ``..``, no empty part,
    nothing that could make a cache folder name outside the cache."""
    parts = repo_id.split("/")
    if len(parts) != 2 or any(not _SAFE_NAME.fullmatch(p) or ".." in p or "--" in p for p in parts):
        raise PretrainedError(
            f"from_pretrained: {repo_id!r} is not a Hugging Face Hub id ('owner/name' with letters, "
            "digits, '.', '_', '-'; no '..' or '--') and no folder of that name exists"
        )


def _hub_snapshot(repo_id: str, cache: str | os.PathLike | None, offline: bool,
                  revision: str | None, token: str | bool | None) -> Path:
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache, allow_patterns=_HUB_FILES,
            local_files_only=offline, token=token,
        )
    except Exception as err:  # the Hub's errors: not found, gated, offline without a copy
        raise PretrainedError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}); "
            "check the id, your network or token, or download the repository's "
            f"{', '.join(_HUB_FILES[:2])} into a folder and pass the folder"
        ) from err
    folder = Path(folder)
    if cache is not None and not _inside(folder, Path(cache).expanduser()):
        raise PretrainedError(
            f"the Hub snapshot of {repo_id!r} is at {folder}, outside the cache {cache}; "
            "remove that cache entry and fetch again"
        )
    return folder


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    sampling: SampleOptions | None = None,
    description: str = "",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload fractalkit model",
) -> str:
    """Upload ``model`` as a :func:`save_pretrained` folder to the Hub repository ``repo_id``.

    Creates the repository if needed (``huggingface_hub.HfApi.create_repo``) and uploads the
    folder in one commit (``upload_folder``). Needs a token with write access (``hf auth login``).

    Returns:
        The URL of the commit.
    """
    import huggingface_hub

    api = huggingface_hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, sampling=sampling, description=description)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
