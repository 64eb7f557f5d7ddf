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

import dataclasses
import hashlib
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
from fractalkit.validation import read_json_file

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "RELEASES",
    "USER_AGENT",
    "PretrainedError",
    "Release",
    "cache_dir",
    "download",
    "from_pretrained",
    "load_sampling_options",
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
        size_mb: its approximate size in MB (10^6 bytes), for messages.
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
        folder: the cache subfolder the release lives in (``<cache>/<folder>/<name>/``).
    """

    name: str
    url: str
    size_mb: float
    convert: Callable[[Path, type], Any] | None = None
    verify: Callable[[Any], None] | None = None
    num_params: int | None = None
    title: str = ""
    sampling: SampleOptions | None = None
    published: bool = False
    notes: str = ""
    folder: str = "fractalgen"


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


def download(
    url: str, dest: str | os.PathLike, *, progress: bool = True, desc: str | None = None,
    timeout: float = 60.0, chunk_bytes: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming an interrupted earlier attempt.

    Bytes go to ``dest + ".partial"``; only a complete file (as many bytes as the server
    announced) is renamed to ``dest``. If a partial file exists, the request asks for the rest
    (HTTP ``Range``); a server that answers with the whole file restarts it from zero.

    Args:
        url: the address (requested as given, with :data:`USER_AGENT`).
        dest: the file to write.
        progress: show a tqdm bar (size, rate, ETA) on stderr.
        desc: the bar's label.
        timeout: seconds to wait for the server on each read.
        chunk_bytes: read size.

    Returns:
        ``dest`` as a Path.

    Raises:
        OSError: the network or the server failed (``urllib.error.URLError``, a dropped
            connection); the partial file is kept for the next attempt to resume.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the partial file is bad, restart
            partial.unlink()
            return download(url, dest, progress=progress, desc=desc, timeout=timeout, chunk_bytes=chunk_bytes)
        raise
    with response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc or dest.name, disable=not progress, dynamic_ncols=True,
        ) as bar:
            while chunk := response.read(chunk_bytes):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    size = partial.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)
    os.replace(partial, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


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

    Args:
        model: the model (a :class:`fractalkit.Fractal`).
        folder: created if needed; existing files of these names are replaced (each atomically).
        sampling: the settings to draw samples with (default: the model's ``pretrained_options``
            if it has them, else none are written).
        description: one paragraph for the model card.
        published: whether ``sampling`` are settings published with the model (model card).

    Returns:
        ``folder`` as a Path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sampling = sampling if sampling is not None else getattr(model, "pretrained_options", None)
    model.save(folder / WEIGHTS_FILE)
    _write(folder / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2) + "\n")
    if sampling is not None:
        payload = {"options": _options_dict(sampling), "published": published}
        _write(folder / SAMPLING_FILE, json.dumps(payload, indent=2) + "\n")
    _write(folder / CARD_FILE, _model_card(model, sampling, description, published))
    return folder


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
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


def _offline_message(release: Release, folder: Path, reason: str) -> str:
    return (
        f"{release.name} is not in the cache and cannot be downloaded ({reason}).\n"
        f"Download the original {release.title or release.name} checkpoint (about "
        f"{release.size_mb:,.0f} MB) from\n  {release.url}\n"
        f"(e.g. wget -O {ORIGINAL_FILE} '{release.url}') and put it at\n"
        f"  {folder / ORIGINAL_FILE}\n"
        f"(or choose the cache with cache_dir=... or ${CACHE_ENV}); the next "
        f"Fractal.from_pretrained({release.name!r}) converts it once and loads it without the network."
    )


def _convert_release(release: Release, original: Path, cls: type) -> Any:
    what = f"the file for {release.name!r} ({original}, from {release.url})"
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
    return model


def _locked(folder: Path):
    """One process at a time fetches and converts a model; the others wait, then find it cached."""
    return waiting_lock(folder)


def _released(release: Release, root: Path, offline: bool, progress: bool, keep_original: bool,
              device: str, cls: type) -> Any:
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
        return _load_folder(folder, device, cls)
    if offline and not (folder / ORIGINAL_FILE).is_file():
        raise PretrainedError(_offline_message(release, folder, "offline mode is on"))
    with _locked(folder):
        return _fetch_and_convert(release, folder, progress, keep_original, device, cls)


def _fetch_and_convert(release: Release, folder: Path, progress: bool, keep_original: bool,
                       device: str, cls: type) -> Any:
    if (folder / WEIGHTS_FILE).is_file():  # another process finished while this one waited
        return _load_folder(folder, device, cls)
    original = folder / ORIGINAL_FILE
    if not original.is_file():
        try:
            download(release.url, original, progress=progress,
                     desc=f"{release.name} ({release.size_mb:,.0f} MB)")
        except (OSError, http.client.HTTPException) as err:
            partial = original.with_name(original.name + ".partial")
            kept = f"; {partial} is kept and the next call resumes it" if partial.exists() else ""
            raise PretrainedError(_offline_message(release, folder, f"{type(err).__name__}: {err}{kept}")) from err
    try:
        model = _convert_release(release, original, cls)
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
        _write(tmp / SOURCE_FILE, json.dumps(
            {"url": release.url, "bytes": original.stat().st_size, "sha256": _sha256(original)}, indent=2) + "\n")
        # The weights go last: their presence is what marks the cached folder complete.
        for name in sorted(os.listdir(tmp), key=lambda n: n == WEIGHTS_FILE):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model  # its weights may map the original: freed before the folder is read (one copy)
    if not keep_original:
        original.unlink()
    return _load_folder(folder, device, cls)


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

    Returns:
        The model.

    Raises:
        PretrainedError: nothing of that name; offline (or the download failed) with no cached
            copy (the message says what to download, from where, and where to put it); a
            downloaded file that is not the named model (it is deleted).
    """
    cls = _model_class(cls)
    path = Path(name_or_path)
    if path.is_dir():
        return _load_folder(path, device, cls)
    if path.is_file():
        raise PretrainedError(
            f"from_pretrained: {path} is a file; pass the folder save_pretrained wrote, load a "
            "fractalkit .safetensors file with Fractal.load, or convert an original .pth with "
            "fractalkit-convert-fractalgen convert IN OUT"
        )
    name = str(name_or_path)
    if name in RELEASES:
        return _released(RELEASES[name], _cache_root(cache_dir), _offline(offline),
                         progress, keep_original, device, cls)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        _check_hub_id(name)
        return _load_folder(_hub_snapshot(name, cache_dir, _offline(offline), revision, token), device, cls)
    raise PretrainedError(
        f"from_pretrained: {name!r} is not a folder, a released model ({sorted(RELEASES)}) or a "
        "Hugging Face Hub id ('owner/name')"
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
