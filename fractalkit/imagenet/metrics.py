"""Sample-quality metrics: FID, Inception Score and precision/recall, as the paper reports them.

Shape letters: N images, D feature width (2048 for Inception's pool features), K classes (1008
for Inception's logits).

The paper's Table 4 numbers come from the original's evaluation: Inception-v3 (the 2015-12-05
TensorFlow graph every FID paper uses) features of 50,000 samples, against precomputed ImageNet
reference statistics (``adm_in64_stats.npz`` / ``adm_in256_stats.npz``, from ADM's reference
batches). The formulas here are those of ADM's evaluator and torch-fidelity:

- **FID** (Heusel et al. 2017): ``|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` of the
  Gaussian fitted to each feature set (``scipy.linalg.sqrtm``, float64).
- **Inception Score** (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over splits of
  5,000 images, averaged (ADM's evaluator).
- **Precision / recall** (Kynkäänniemi et al. 2019): the fraction of samples inside the real
  features' k-nearest-neighbour manifold (k = 3), and of real images inside the samples'.

The feature network is anything that maps uint8 ``[N, 3, H, W]`` images to ``(features [N, D],
probabilities [N, K])`` (:class:`FeatureExtractor`); :class:`InceptionV3` is the real one, read
from a local TorchScript file (``inception-2015-12-05.pt``, the NVIDIA port of the TF graph that
StyleGAN2-ADA and EDM use; it needs no torchvision) or downloaded once when online. Tests use a
small stand-in network.

Reference statistics (:func:`load_reference`): an ``.npz`` holding ``mu`` ``[D]`` and ``sigma``
``[D, D]`` (the original's ``adm_in64_stats.npz``, torch-fidelity's format; ADM's
``VIRTUAL_*.npz`` adds ``mu_s``/``sigma_s``, ignored), and/or ``arr_0``, uint8 ``[N, H, W, 3]``
reference images (ADM's reference batches), which precision/recall need.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fractalkit.validation import check_count, file_sha256

__all__ = [
    "INCEPTION_ENV",
    "INCEPTION_RECORD",
    "INCEPTION_SHA256",
    "INCEPTION_SHA256_ENV",
    "INCEPTION_URL",
    "FeatureExtractor",
    "FeatureSet",
    "InceptionV3",
    "Reference",
    "evaluate",
    "extract_features",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "load_reference",
    "merged_name",
    "precision_recall",
    "sample_images",
    "sample_labels",
    "save_reference",
]

#: Where the TorchScript Inception-v3 (FID's network) is published (StyleGAN2-ADA's metrics).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
#: Environment variable naming a local copy of that file.
INCEPTION_ENV = "FRACTALKIT_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"
#: SHA-256 of the published Inception file, when known. It is None: no source we could check
#: (StyleGAN2-ADA, EDM, clean-fid and torch-fidelity publish the URL, not a hash) records it, and
#: a guessed value would refuse the real file. In its place the hash is recorded on first use
#: (:data:`INCEPTION_RECORD` in the cache root) and every later load is checked against it;
#: ``InceptionV3(sha256=...)`` or ``$FRACTALKIT_INCEPTION_SHA256`` pins it outright.
INCEPTION_SHA256: str | None = None
#: Environment variable pinning the Inception file's SHA-256 (64 hex digits).
INCEPTION_SHA256_ENV = "FRACTALKIT_INCEPTION_SHA256"
#: File in the cache root holding the SHA-256 recorded the first time an Inception file loaded.
INCEPTION_RECORD = "inception-2015-12-05.pt.sha256.json"


class FeatureExtractor(Protocol):
    """Maps uint8 images ``[N, 3, H, W]`` to ``(features [N, D], probabilities [N, K])``."""

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features and class probabilities (rows sum to 1) of a batch."""
        ...


# ---- the formulas ------------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1, mu2: means ``[D]``.
        sigma1, sigma2: covariances ``[D, D]``.

    Returns:
        The squared distance (FID when the Gaussians are fitted to Inception features).

    Raises:
        ValueError: shapes disagree or an input is not finite.
        TypeError: an input is not an array of numbers.
    """
    import scipy.linalg

    try:
        mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
        sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"frechet_distance: mu and sigma must be arrays of numbers ({err})") from None
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes disagree: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} "
            f"vs {sigma2.shape} (feature sets from different networks?)"
        )
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"frechet_distance: {name} has non-finite entries")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular (fewer samples than D): handled just below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # singular product: regularise as ADM's evaluator does
        offset = np.eye(d) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)  # imaginary parts are rounding noise
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _gaussian(features: np.ndarray, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    features = _features(features, what)
    if features.shape[0] < 2:
        raise ValueError(f"{what}: need at least 2 feature vectors [N, D], got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def _features(a: np.ndarray | Tensor, what: str) -> np.ndarray:
    """float64 ``[N, D]`` features, checked: two axes, D >= 1, finite (NaN features refused)."""
    try:
        f = np.asarray(_numpy(a), np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what}: expected float features [N, D], got {type(a).__name__} ({err})") from None
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"{what}: expected features [N, D], got shape {list(f.shape)}")
    if not np.isfinite(f).all():
        row = int(np.argwhere(~np.isfinite(f))[0][0])
        raise ValueError(
            f"{what}: the features hold NaN or inf (first in row {row}); drop those images or "
            "fix the feature network"
        )
    return f


def fid_from_features(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]`` (each fitted by a Gaussian).

    Raises:
        ValueError: fewer than 2 rows, not two axes, or non-finite features.
    """
    return frechet_distance(*_gaussian(a, "fid_from_features: a"), *_gaussian(b, "fid_from_features: b"))


def inception_score(probs: np.ndarray | Tensor, split_size: int = 5000) -> float:
    """Inception Score of class probabilities ``[N, K]``: ``exp(mean KL(p(y|x) || p(y)))`` per split
    of ``split_size`` images, averaged over splits (ADM's evaluator; 50,000 samples: 10 splits).

    Args:
        probs: ``[N, K]`` class probabilities, N >= 1.
        split_size: images per split, >= 1 (the last split may be smaller).

    Raises:
        ValueError: not ``[N, K]`` probabilities (non-negative, rows summing to 1), or
            ``split_size`` below 1.
        TypeError: ``split_size`` not an integer.
    """
    split_size = check_count("inception_score", "split_size", split_size)
    try:
        p = np.asarray(_numpy(probs), np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"inception_score: probs must be numbers [N, K], got {type(probs).__name__} ({err})") from None
    if p.ndim != 2 or p.shape[0] < 1 or (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-3):
        raise ValueError(f"inception_score: expected probabilities [N, K] with rows summing to 1, got {p.shape}")
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log 0 = 0
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def _radii(features: Tensor, k: int, batch: int) -> Tensor:
    out = []
    for i in range(0, len(features), batch):
        d = torch.cdist(features[i : i + batch], features)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: each point is its own nearest neighbour
    return torch.cat(out)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, batch: int) -> Tensor:
    out = []
    for i in range(0, len(points), batch):
        d = torch.cdist(points[i : i + batch], centres)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(
    real: np.ndarray | Tensor, fake: np.ndarray | Tensor, k: int = 3, batch: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets ``[N, D]``, ``[M, D]``.

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: the fraction of ``fake`` inside the real manifold; recall: the fraction
    of ``real`` inside the fake one.

    Args:
        real, fake: features ``[N, D]`` and ``[M, D]``, finite.
        k: the neighbour that sets each ball's radius, ``1 <= k < min(N, M)``.
        batch: rows per distance block (memory ``batch * max(N, M)`` floats), >= 1.

    Returns:
        ``(precision, recall)`` in ``[0, 1]``.

    Raises:
        ValueError: shapes that disagree, too few rows for k, non-finite features, k or batch
            below 1.
        TypeError: k or batch not an integer.
    """
    k = check_count("precision_recall", "k", k)
    batch = check_count("precision_recall", "batch", batch)
    r = torch.as_tensor(_features(real, "precision_recall: real"))
    f = torch.as_tensor(_features(fake, "precision_recall: fake"))
    if r.shape[1] != f.shape[1] or min(len(r), len(f)) <= k:
        raise ValueError(
            f"precision_recall: need [N, D] and [M, D] with N, M > k={k}, got {tuple(r.shape)}, "
            f"{tuple(f.shape)}"
        )
    precision = _inside(f, r, _radii(r, k, batch), batch).double().mean().item()
    recall = _inside(r, f, _radii(f, k, batch), batch).double().mean().item()
    return precision, recall


def _numpy(a: np.ndarray | Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


# ---- features ----------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Features and class probabilities of a set of images.

    Attributes:
        features: float64 ``[N, D]``.
        probs: float64 ``[N, K]``.
    """

    features: np.ndarray
    probs: np.ndarray


def extract_features(
    extractor: FeatureExtractor | Callable[[Tensor], tuple[Tensor, Tensor]],
    images: Tensor | np.ndarray | Iterable[Tensor],
    *,
    batch: int = 100,
    progress: bool = False,
) -> FeatureSet:
    """Run ``extractor`` over uint8 images ``[N, 3, H, W]`` (or batches of them).

    Args:
        extractor: e.g. :class:`InceptionV3`.
        images: a tensor/array ``[N, 3, H, W]`` with values in 0..255, or an iterable of batches.
        batch: batch size when ``images`` is one tensor.
        progress: show a tqdm bar.

    Raises:
        ValueError: values outside 0..255, a wrong shape, non-finite values; an extractor that
            does not return ``(features [n, D], probabilities [n, K])`` for a batch of n;
            ``batch`` below 1.
        TypeError: ``batch`` not an integer.
    """
    from tqdm.auto import tqdm

    batch = check_count("extract_features", "batch", batch)
    if isinstance(images, np.ndarray | Tensor):
        images = torch.as_tensor(images)
        batches: Iterable[Tensor] = images.split(batch)
        total = (len(images) + batch - 1) // batch
    else:
        batches, total = images, None
    feats, probs = [], []
    for x in tqdm(batches, total=total, disable=not progress, desc="features"):
        x = torch.as_tensor(x)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"extract_features: expected images [N, 3, H, W], got {list(x.shape)}")
        if x.shape[0] == 0:  # an empty batch adds nothing (all empty: "no images" below)
            continue
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("extract_features: images hold non-finite values")
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"extract_features: values must lie in 0..255, got [{x.min()}, {x.max()}]")
        with torch.no_grad():
            out = extractor(x.to(torch.uint8))
        if not (isinstance(out, tuple | list) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)
                and all(t.dim() == 2 and t.shape[0] == x.shape[0] for t in out)):
            got = [list(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in out] \
                if isinstance(out, tuple | list) else type(out).__name__
            raise ValueError(
                f"extract_features: the extractor {type(extractor).__name__} must return (features "
                f"[{x.shape[0]}, D], probabilities [{x.shape[0]}, K]) for {x.shape[0]} images, got {got}"
            )
        f, p = out
        feats.append(f.double().cpu().numpy())
        probs.append(p.double().cpu().numpy())
    if not feats:
        raise ValueError("extract_features: no images")
    return FeatureSet(np.concatenate(feats), np.concatenate(probs))


class InceptionV3:
    """Inception-v3 as FID uses it: pool features ``[N, 2048]`` and class probabilities
    ``[N, 1008]`` (no output bias, as the original IS), from the TorchScript file
    ``inception-2015-12-05.pt`` (images of any size are resized to 299x299 inside).

    The file is TorchScript, i.e. executable code, so its SHA-256 is checked before
    ``torch.jit.load``: against ``sha256`` (or ``$FRACTALKIT_INCEPTION_SHA256``, or
    :data:`INCEPTION_SHA256`) when given, else against the hash recorded the first time an
    Inception file loaded on this machine (:data:`INCEPTION_RECORD` in the cache root; the first
    load records it).

    Args:
        path: the file; default ``$FRACTALKIT_INCEPTION``, else ``<fractalkit cache>/
            inception-2015-12-05.pt``.
        download: fetch :data:`INCEPTION_URL` into that place if the file is missing (needs the
            network; about 100 MB).
        device: where to run it.
        sha256: the file's expected SHA-256 (64 hex digits); None: the environment variable,
            the pinned constant, or the recorded hash.

    Raises:
        FileNotFoundError: the file is missing and ``download`` is False (the message says where
            to get it and where to put it).
        ValueError: the file's SHA-256 differs from the expected or recorded one, or the file
            is not a TorchScript Inception network (the message names the file and the fix).
    """

    def __init__(
        self, path: str | os.PathLike | None = None, *, download: bool = False, device: str = "cpu",
        sha256: str | None = None,
    ):
        path = self.default_path() if path is None else Path(path)
        expected = _expected_sha256(sha256)
        if not path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"Inception-v3 weights not found at {path}. Download {INCEPTION_URL} (about "
                    f"100 MB) and put it there, or set ${INCEPTION_ENV} to its path, or pass "
                    "download=True (--download-inception) on a machine with internet access"
                )
            from fractalkit.hub import download as fetch

            fetch(INCEPTION_URL, path, desc="inception-2015-12-05.pt")
        self.path = path
        self.device = torch.device(device)
        to_record = _verify_inception(path, expected)
        try:
            with warnings.catch_warnings():  # the published file is TorchScript: nothing to switch to
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as err:  # torch's RuntimeError/ValueError for a file that is not TorchScript
            raise ValueError(
                f"Inception-v3: {path} is not a loadable TorchScript file ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Delete it and download "
                f"{INCEPTION_URL} again (or pass download=True)"
            ) from err
        if to_record is not None:  # first use, and it loaded: later loads are checked against it
            _record_inception(path, to_record)

    @staticmethod
    def default_path() -> Path:
        """``$FRACTALKIT_INCEPTION``, else ``<fractalkit cache>/inception-2015-12-05.pt``."""
        from fractalkit.hub import cache_dir

        env = os.environ.get(INCEPTION_ENV)
        return Path(env) if env else cache_dir() / INCEPTION_FILE

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[N, 2048]`` and probabilities ``[N, 1008]`` of uint8 ``[N, 3, H, W]`` images."""
        x = images.to(self.device)
        features = self.net(x, return_features=True)
        probs = self.net(x, no_output_bias=True)
        return features, probs


def _expected_sha256(sha256: str | None) -> str | None:
    """The pinned hash: the argument, else ``$FRACTALKIT_INCEPTION_SHA256``, else the constant."""
    for where, value in (("sha256", sha256), (f"${INCEPTION_SHA256_ENV}", os.environ.get(INCEPTION_SHA256_ENV)),
                         ("INCEPTION_SHA256", INCEPTION_SHA256)):
        if value is None or value == "":
            continue
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError(f"Inception-v3: {where} must be 64 hex digits (a SHA-256), got {value!r}")
        return value.lower()
    return None


def _verify_inception(path: Path, expected: str | None) -> str | None:
    """Check the Inception file's SHA-256 against ``expected`` or the recorded hash, before any of
    its code is loaded; returns the hash to record when neither exists (first use), else None."""
    from fractalkit.hub import cache_dir

    actual = file_sha256(path)
    fix = (f"Delete {path} and download {INCEPTION_URL} again (or pass download=True)")
    if expected is not None:
        if actual != expected:
            raise ValueError(
                f"Inception-v3: {path} has SHA-256 {actual}, not the pinned {expected}: it is not "
                f"the published network (corrupted or replaced). {fix}"
            )
        return None
    record = cache_dir() / INCEPTION_RECORD
    if record.is_file():
        try:
            recorded = json.loads(record.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"Inception-v3: the recorded hash {record} is unreadable ({err}); delete it (the "
                "next load records the file's hash again)"
            ) from None
        if actual != recorded:
            raise ValueError(
                f"Inception-v3: {path} has SHA-256 {actual}, but the Inception file first loaded "
                f"here had {recorded} (recorded in {record}): it changed (corrupted or replaced). "
                f"{fix}; if you trust this file, delete {record} to record it instead"
            )
        return None
    return actual


def _record_inception(path: Path, actual: str) -> None:
    """Record the SHA-256 of the first Inception file that loaded (atomically; a read-only cache
    only loses the record)."""
    from fractalkit.hub import cache_dir

    record = cache_dir() / INCEPTION_RECORD
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sha256": actual, "file": str(path), "url": INCEPTION_URL}, indent=2) + "\n")
        os.replace(tmp, record)
    except OSError:
        pass


def _read_npz(path: Path, what: str, fix: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles), or one ValueError naming the file and ``fix``
    in place of numpy's and zipfile's errors (truncated, not a zip, object arrays, bad headers)."""
    try:
        with open(path, "rb") as f:  # our own handle: numpy leaves its own open on some errors
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with data:
                return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise ValueError(f"{what}: {path} is not a readable .npz file ({type(err).__name__}: {err}); {fix}") from None


# ---- reference statistics ----------------------------------------------------------------------


@dataclass
class Reference:
    """Reference statistics of real images.

    Attributes:
        mu: ``[D]`` feature mean.
        sigma: ``[D, D]`` feature covariance.
        features: ``[N, D]`` features of the reference images, if known (precision/recall).
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None


def load_reference(
    path: str | os.PathLike, extractor: FeatureExtractor | None = None, *, batch: int = 100,
    progress: bool = False,
) -> Reference:
    """Read reference statistics: ``mu``/``sigma`` and/or ``arr_0`` images from an ``.npz``.

    Images (``arr_0``, uint8 ``[N, H, W, 3]`` as in ADM's reference batches) are passed through
    ``extractor``; if the file also has ``mu``/``sigma`` those are used for FID.

    Raises:
        FileNotFoundError: no such file.
        ValueError: neither ``mu``/``sigma`` nor ``arr_0``; images but no extractor; bad shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference statistics: no file at {path} (the original's adm_in64_stats.npz / "
            "adm_in256_stats.npz, or an ADM reference batch VIRTUAL_imagenet64_labeled.npz)"
        )
    data = _read_npz(path, "reference statistics", "write it again (save_reference) or fetch the original file again")
    keys = set(data)
    features = None
    if "arr_0" in keys:
        if extractor is None:
            raise ValueError(f"{path} holds reference images (arr_0): pass a feature extractor")
        images = data["arr_0"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{path}: arr_0 must be uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        features = extract_features(extractor, torch.from_numpy(images).permute(0, 3, 1, 2),
                                    batch=batch, progress=progress).features
    if {"mu", "sigma"} <= keys:
        try:
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: mu and sigma must be float arrays ({err})") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError(f"{path}: mu or sigma holds NaN or inf; write the statistics again")
    elif features is not None:
        mu, sigma = _gaussian(features)
    else:
        raise ValueError(f"{path} holds neither mu/sigma nor arr_0 images (keys: {sorted(keys)})")
    return Reference(mu, sigma, features)


def save_reference(path: str | os.PathLike, features: np.ndarray | Tensor) -> Reference:
    """Write ``mu``/``sigma`` (the original's npz format) of features ``[N, D]`` (N >= 2,
    finite) to ``path``."""
    mu, sigma = _gaussian(features, "save_reference")
    np.savez(path, mu=mu, sigma=sigma)
    return Reference(mu, sigma, _numpy(features))


def evaluate(samples: FeatureSet, reference: Reference, *, split_size: int = 5000, k: int = 3) -> dict[str, float]:
    """FID, Inception Score and (when the reference has features) precision/recall of samples.

    Returns:
        ``{"fid", "inception_score", "num_samples"}`` plus ``"precision"``, ``"recall"``.

    Raises:
        ValueError, TypeError: as :func:`inception_score` and :func:`precision_recall` for
            ``split_size`` and ``k``; fewer than 2 samples; non-finite features.
    """
    split_size = check_count("evaluate", "split_size", split_size)
    k = check_count("evaluate", "k", k)
    mu, sigma = _gaussian(samples.features, "evaluate: samples.features")
    out = {
        "fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "inception_score": inception_score(samples.probs, split_size),
        "num_samples": len(samples.features),
    }
    if reference.features is not None:
        out["precision"], out["recall"] = precision_recall(reference.features, samples.features, k)
    return out


# ---- sampling for evaluation -------------------------------------------------------------------


def _process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(fallback: torch.device) -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device()) if fallback.type != "cuda" else fallback
    return torch.device("cpu")


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically: a temporary file beside it, flushed to disk, then renamed."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def merged_name(num_samples: int, event_shape) -> str:
    """The name the scripts give the file of all samples beside the batch files:
    ``merged_<N>x<H>x<W>x3.npz`` (``event_shape`` is ``[3, H, W]``; ADM's sampling scripts write
    ``samples_<N>x<H>x<W>x3.npz``, which would read as a batch file here)."""
    c, h, w = tuple(event_shape)
    return f"merged_{num_samples}x{h}x{w}x{c}.npz"


def sample_labels(model, start: int, n: int, device: str | torch.device = "cpu") -> Tensor | None:
    """The class labels :func:`sample_images` gives images ``start .. start + n - 1``:
    ``i % num_classes`` (balanced, as the original's evaluation); None for an unconditional model.

    Returns:
        int64 ``[n]`` on ``device``, or None.
    """
    if not model.num_classes:
        return None
    return torch.arange(start, start + n, device=device) % model.num_classes


def sample_images(
    model,
    num_samples: int,
    *,
    options=None,
    batch: int = 64,
    seed: int = 0,
    folder: str | os.PathLike | None = None,
    progress: bool = True,
    out: str | os.PathLike | None = None,
) -> Tensor | None:
    """Draw ``num_samples`` images for evaluation, class labels ``i % num_classes`` (balanced, as
    the original's evaluation), batch ``b`` from seed ``seed + b``; resumable; spread over the
    processes of a ``torchrun`` job.

    Batches are fixed: batch ``b`` holds images ``b * batch`` to ``(b + 1) * batch - 1`` (the last
    one fewer) and is drawn from a generator seeded with ``seed + b``, whatever the number of
    processes. Under an initialised process group of ``W`` processes, rank ``r`` draws batches
    ``b`` with ``b % W == r``; the batches are then gathered on rank 0 in order. One process and
    ``W`` processes therefore give the same images, bit for bit, on the same kind of device
    (``batch`` and ``seed`` must be the same).

    With ``folder``, each finished batch is written as ``samples_<start>_<n>.npz`` (uint8
    ``arr_0`` ``[n, H, W, 3]``, ADM's sample format; written to a temporary file, flushed and
    renamed, so a killed process never leaves half a file) and batches already there are read
    instead of drawn: an interrupted run (or one of its ranks) continues where it stopped and
    gives the same images, even with another number of processes. Under several processes on
    several machines, ``folder`` may be local to each machine or shared.

    Args:
        model: a :class:`fractalkit.Fractal` over ``[3, H, W]`` images (eval mode), on this
            process's device (under NCCL, ``cuda:LOCAL_RANK``).
        num_samples: N.
        options: :class:`fractalkit.SampleOptions` (default ``model.pretrained_options``).
        batch: images per call to ``model.sample``.
        seed: the base seed.
        folder: where to keep finished batches (None: keep nothing).
        progress: show a tqdm bar over images (on rank 0 only, counting its own share).
        out: also write all N images as one ADM-format ``.npz`` here (``arr_0`` uint8
            ``[N, H, W, 3]``, and ``arr_1`` int64 ``[N]`` class labels for a class-conditional
            model); under several processes rank 0 writes it once every rank has finished, and
            every rank returns after it is written.

    Returns:
        uint8 ``[N, 3, H, W]``; under several processes on rank 0 only (every other rank
        returns None after the merge).

    Raises:
        ValueError, TypeError: ``num_samples`` or ``batch`` not an integer >= 1, ``seed`` not
            an integer; a batch file in ``folder`` that is unreadable or does not hold the
            images its name promises (the message names the file: delete it to draw it again).
    """
    from tqdm.auto import tqdm

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"sample_images: num_samples must be a positive int, got {num_samples!r}")
    batch = check_count("sample_images", "batch", batch)
    seed = check_count("sample_images", "seed", seed, minimum=0)
    options = options if options is not None else getattr(model, "pretrained_options", None)
    device = next(model.parameters()).device
    rank, world = _process_group()
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    starts = list(range(0, num_samples, batch))
    mine = [b for b in range(len(starts)) if b % world == rank]
    own: dict[int, Tensor] = {}
    share = sum(min(batch, num_samples - starts[b]) for b in mine)
    with tqdm(total=share, unit="img", desc="sampling", disable=not progress or rank != 0) as bar:
        for b in mine:
            start = starts[b]
            n = min(batch, num_samples - start)
            path = Path(folder) / f"samples_{start:06d}_{n}.npz" if folder is not None else None
            if path is not None and path.is_file():
                images = _resumed_batch(path, n, tuple(model.event_shape))
            else:
                y = sample_labels(model, start, n, device)
                g = torch.Generator(device=device).manual_seed(seed + b)
                images = model.sample(n, y=y, options=options, generator=g).clamp(0, 255).to(torch.uint8).cpu()
                if path is not None:
                    _write_npz(path, arr_0=images.permute(0, 2, 3, 1).numpy())
            own[b] = images
            bar.update(n)
    if world > 1:
        merged = _gather_batches(own, starts, num_samples, batch, tuple(model.event_shape), device)
    else:
        merged = torch.cat([own[b] for b in range(len(starts))])
    if out is not None and rank == 0:
        labels = sample_labels(model, 0, num_samples)
        arrays = {"arr_0": merged.permute(0, 2, 3, 1).numpy()}
        if labels is not None:
            arrays["arr_1"] = labels.numpy()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        _write_npz(Path(out), **arrays)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the merged file exists before any rank goes on
    return merged if rank == 0 else None


def _gather_batches(
    own: dict[int, Tensor], starts: list[int], num_samples: int, batch: int, shape: tuple[int, ...],
    device: torch.device,
) -> Tensor | None:
    """Gather every rank's batches (batch ``b`` on rank ``b % W``) on rank 0, in batch order.

    One round per ``W`` batches: each rank sends its batch of the round, padded to ``batch``
    images (an empty one when it has none left), and rank 0 keeps the real images.

    Returns:
        uint8 ``[N, *shape]`` on rank 0, None elsewhere.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    comm = _comm_device(device)
    parts = []
    for first in range(0, len(starts), world):
        b = first + rank
        buf = torch.zeros(batch, *shape, dtype=torch.uint8, device=comm)
        if b < len(starts):
            buf[: len(own[b])] = own[b].to(comm)
        bufs = [torch.empty_like(buf) for _ in range(world)] if rank == 0 else None
        dist.gather(buf, bufs, dst=0)
        if rank == 0:
            for i, got in enumerate(bufs):
                if first + i < len(starts):
                    parts.append(got[: min(batch, num_samples - starts[first + i])].cpu())
    return torch.cat(parts) if rank == 0 else None


def _resumed_batch(path: Path, n: int, event_shape: tuple[int, ...]) -> Tensor:
    """The ``n`` images ``[n, 3, H, W]`` a finished batch file holds, checked against its name
    and the model (a file from another run, model or batch size is refused, never trimmed)."""
    fix = "delete it to draw that batch again (or use a fresh --samples-dir / folder)"
    data = _read_npz(path, "sample_images", fix)
    images = data.get("arr_0")
    c, h, w = event_shape if len(event_shape) == 3 else (None, None, None)
    if images is None or images.dtype != np.uint8 or images.shape != (n, h, w, c):
        got = "no arr_0" if images is None else f"{images.dtype} {list(images.shape)}"
        raise ValueError(
            f"sample_images: {path} should hold {n} uint8 images [{n}, {h}, {w}, {c}] (this "
            f"model's, batch of {n}) but holds {got}: it is from another run, model or batch "
            f"size; {fix}"
        )
    return torch.from_numpy(images).permute(0, 3, 1, 2)
