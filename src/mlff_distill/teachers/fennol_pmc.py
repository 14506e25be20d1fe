"""FeNNol-PMC models by name: find their ``.fnx`` files locally or download them, checked.

The FeNNol Pre-trained Models Collection (github.com/thomasple/FeNNol-PMC) is pinned to one commit;
``fennol_pmc_manifest.tsv`` (shipped with this package) lists each model name's files with the git
blob SHA-1 GitHub serves them under and, for files kept in Git LFS, their SHA-256 and size.
A file is looked for, in order, in the models directory (``<models_dir>/fennol-pmc/<path in repo>``,
or without the repo's ``ANI/`` folder: ``<models_dir>/fennol-pmc/ANI1X/...``), in the user cache
(``<cache_dir>/fennol-pmc/<path in repo>``), then downloaded from GitHub at the pinned commit into
the cache. Every file is checked against the manifest before it is used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher

REPO = "thomasple/FeNNol-PMC"
COMMIT = "7448eec72cc26c8e600bc414a72ab19cfa5db2d7"
RAW_BASE_URL = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}"
LFS_BASE_URL = f"https://media.githubusercontent.com/media/{REPO}/{COMMIT}"
DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation (connect, each read)
SUBDIR = "fennol-pmc"
SHORT_LAYOUT_PREFIX = "ANI/"  # ../shared/teachers keeps ANI/ANI1X/ as fennol-pmc/ANI1X/
# Elements a model was trained on where its description does not name them (MACE-OFF23 paper).
MACE_OFF23_SPECIES = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)  # H C N O F P S Cl Br I
TRAINED_SPECIES = {f"mace-off23-{size}": MACE_OFF23_SPECIES for size in ("small", "medium", "large")}


@dataclass(frozen=True)
class PmcFile:
    """One ``.fnx`` of FeNNol-PMC and what its content must hash to."""

    path: str  # inside the repository, e.g. "ANI/ANI1X/ani1x_model0.fnx"
    git_blob_sha1: str  # of the file in git (for an LFS file: of its pointer)
    lfs_sha256: str | None = None  # content SHA-256 of a Git LFS file
    lfs_size: int | None = None  # content size in bytes of a Git LFS file

    def url(self, raw_base_url: str = RAW_BASE_URL, lfs_base_url: str = LFS_BASE_URL) -> str:
        """Where GitHub serves the content at the pinned commit."""
        return f"{lfs_base_url if self.lfs_sha256 else raw_base_url}/{self.path}"

    def mismatch(self, path: Path) -> str | None:
        """Why ``path`` is not this file (size or checksum), or None when it is."""
        size = path.stat().st_size
        if self.lfs_sha256:
            if size != self.lfs_size:
                return f"size {size} bytes differs from FeNNol-PMC's {self.lfs_size}"
            actual, expected, kind = _digest(path, hashlib.sha256()), self.lfs_sha256, "SHA-256"
        else:
            blob = hashlib.sha1(b"blob %d\0" % size)
            actual, expected, kind = _digest(path, blob), self.git_blob_sha1, "git blob SHA-1"
        if actual == expected:
            return None
        return f"{kind} {actual} differs from FeNNol-PMC's {expected}"


def fennol_pmc_manifest() -> dict[str, list[PmcFile]]:
    """Model name -> its files, from the manifest shipped with the package."""
    text = resources.files("mlff_distill.teachers").joinpath("fennol_pmc_manifest.tsv").read_text()
    table: dict[str, list[PmcFile]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, path, sha1, lfs_sha256, lfs_size = line.split("\t")
            table.setdefault(name, []).append(
                PmcFile(path, sha1, lfs_sha256 or None, int(lfs_size) if lfs_size else None)
            )
    return table


def resolve_fennol_pmc(
    name: str,
    models_dir: Path | None,
    cache_dir: Path,
    raw_base_url: str = RAW_BASE_URL,
    lfs_base_url: str = LFS_BASE_URL,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> list[Path]:
    """Checked local paths of the ``.fnx`` files of FeNNol-PMC model ``name``, in manifest order.

    Looks in ``models_dir``, then ``cache_dir``, then downloads into ``cache_dir``. Raises
    ValueError for an unknown name or a local or downloaded file whose size or checksum is wrong;
    FileNotFoundError when a download fails, naming each missing file, its URL and where to place
    it (after the first failed download no further one is tried).
    """
    table = fennol_pmc_manifest()
    if name not in table:
        raise ValueError(f"unknown FeNNol-PMC model {name!r}; known: {', '.join(table)}")
    found: list[Path] = []
    missing: list[str] = []
    download_error: str | None = None
    for entry in table[name]:
        url = entry.url(raw_base_url, lfs_base_url)
        cached = Path(cache_dir) / SUBDIR / entry.path
        candidates = [*_models_dir_candidates(models_dir, entry), cached]
        local = next((p for p in candidates if p.is_file()), None)
        if local is not None:
            problem = entry.mismatch(local)
            if problem:
                raise ValueError(
                    f"{local}: {problem} (FeNNol-PMC {entry.path} at commit "
                    f"{COMMIT}); delete it or replace it with the file from {url}"
                )
        elif download_error is None:
            try:
                local = _download(entry, url, cached, timeout_s)
            except OSError as error:
                download_error = f"{type(error).__name__}: {error}"
        if local is None:
            missing.append(_placement_hint(entry, models_dir, cached, url))
        else:
            found.append(local)
    if missing:
        raise FileNotFoundError(
            f"FeNNol-PMC model {name!r}: {len(missing)} file(s) not found locally and the download "
            f"failed ({download_error}). Fetch each and place it at one of the paths given:\n" + "\n".join(missing)
        )
    return found


def load_fennol_pmc_teacher(
    name: str, models_dir: Path | None, cache_dir: Path, batch_size: int = 32, float64: bool = False
):
    """The FeNNol-PMC model ``name`` as a `FennolEnsembleTeacher` named ``fennol-pmc/<name>``."""
    files = resolve_fennol_pmc(name, models_dir, cache_dir)
    return FennolEnsembleTeacher(
        files, name=f"{SUBDIR}/{name}", batch_size=batch_size, float64=float64, species=TRAINED_SPECIES.get(name)
    )


def _models_dir_candidates(models_dir: Path | None, entry: PmcFile) -> list[Path]:
    """Where ``entry`` may lie in the models directory: the repo's path, or the short layout."""
    if models_dir is None:
        return []
    base = Path(models_dir) / SUBDIR
    paths = [base / entry.path]
    if entry.path.startswith(SHORT_LAYOUT_PREFIX):
        paths.append(base / entry.path[len(SHORT_LAYOUT_PREFIX) :])
    return paths


def _placement_hint(entry: PmcFile, models_dir: Path | None, cached: Path, url: str) -> str:
    """One line: the URL of ``entry`` and where to put it."""
    in_models = (
        str(Path(models_dir) / SUBDIR / entry.path) if models_dir is not None else f"<models_dir>/{SUBDIR}/{entry.path}"
    )
    return f"  {url} -> {in_models} or {cached}" + (" (Git LFS file)" if entry.lfs_sha256 else "")


def _download(entry: PmcFile, url: str, destination: Path, timeout_s: float) -> Path:
    """Fetch ``url`` into ``destination`` atomically, only if it matches ``entry``: written to a
    temporary file beside it, checked, then renamed. Raises ValueError for a wrong checksum."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        problem = entry.mismatch(Path(temporary))
        if problem:
            raise ValueError(f"download of {url}: {problem}; nothing was written to {destination}")
        os.replace(temporary, destination)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return destination


def _digest(path: Path, hasher) -> str:
    """Hex digest of ``hasher`` updated with the bytes of ``path``."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
