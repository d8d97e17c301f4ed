"""The dataset registry at work: find a dataset's files, verify them, download them.

The registry itself is ``conf/datasets/*.yaml`` (one configuration layer per dataset). Files are read
from ``data.local_dir`` when it is set, else from the download cache filled by ``p4r data fetch``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from persona4rec.config import Config, DataConfig, DatasetFile
from persona4rec.errors import DatasetError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedFile:
    role: str  # "reviews" or "metadata"
    spec: DatasetFile
    path: Path | None  # None: an optional file that is absent

    def describe(self) -> dict[str, object]:
        return {"role": self.role, "file": self.spec.filename, "path": str(self.path) if self.path else None}


def data_dir(cfg: Config) -> Path:
    """Where this dataset's files are read from."""
    if cfg.data.local_dir:
        return Path(cfg.data.local_dir).expanduser().resolve()
    return Path(cfg.data.cache_dir).expanduser() / cfg.artifacts_root.name


def resolve_files(cfg: Config) -> list[ResolvedFile]:
    """The dataset's files on disk; a clear error says how to get a missing required file."""
    folder = data_dir(cfg)
    out = []
    for role, spec in _files(cfg.data):
        path = folder / spec.filename
        if path.is_file():
            out.append(ResolvedFile(role, spec, path))
        elif spec.optional:
            out.append(ResolvedFile(role, spec, None))
        else:
            raise DatasetError(_missing_message(cfg, spec, path))
    return out


def _files(data: DataConfig) -> list[tuple[str, DatasetFile]]:
    files = [("reviews", data.reviews)]
    if data.metadata is not None:
        files.append(("metadata", data.metadata))
    return files


def _missing_message(cfg: Config, spec: DatasetFile, path: Path) -> str:
    msg = f"dataset {cfg.dataset}: {path} not found."
    if cfg.data.manual_download:
        msg += f" This dataset is a manual download ({cfg.data.homepage}); set data.local_dir to its folder."
    elif cfg.data.local_dir:
        msg += " data.local_dir is set, so nothing is downloaded; check the folder or unset data.local_dir."
    else:
        msg += f" Run `p4r data fetch {cfg.dataset}` or set data.local_dir to a folder holding {spec.filename}."
    return msg


def sha256_file(path: Path, *, cache: Path | None = None, progress: bool = False) -> str:
    """sha256 of a file; with ``cache``, reuse a digest recorded for the same path, size and mtime."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    known: dict[str, str] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            known = {}
        if key in known:
            return known[key]
    digest = hashlib.sha256()
    with (
        path.open("rb") as fh,
        tqdm(
            total=stat.st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress, leave=False
        ) as bar,
    ):
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    hexdigest = digest.hexdigest()
    if cache is not None:
        known[key] = hexdigest
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, cache)
    return hexdigest


def checked_inputs(cfg: Config, files: list[ResolvedFile], *, progress: bool = False) -> list[dict[str, object]]:
    """Checksums of the present files, verified against the registry when it knows them."""
    cache = cfg.artifacts_root.parent / ".checksums.json"
    records = []
    for f in files:
        if f.path is None:
            continue
        digest = sha256_file(f.path, cache=cache, progress=progress)
        expected = f.spec.sha256
        if cfg.data.verify_checksums and expected and digest != expected:
            raise DatasetError(
                f"dataset {cfg.dataset}: {f.path} has sha256 {digest}, the registry expects {expected}. "
                "The file is corrupt or a different release; re-fetch it, or set data.verify_checksums=false."
            )
        records.append(
            {
                "role": f.role,
                "file": f.spec.filename,
                "path": str(f.path),
                "bytes": f.path.stat().st_size,
                "sha256": digest,
                "verified": bool(expected) and cfg.data.verify_checksums,
            }
        )
    return records


def fetch(cfg: Config, *, dest: Path | None = None, progress: bool = True) -> list[Path]:
    """Download the dataset's files (resumable per file), verify their checksums, return their paths."""
    if cfg.data.manual_download:
        raise DatasetError(
            f"dataset {cfg.dataset} cannot be downloaded automatically: its terms require a manual download "
            f"from {cfg.data.homepage}. Unpack it and set data.local_dir to the folder."
        )
    folder = dest or data_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for role, spec in _files(cfg.data):
        if spec.url is None:
            raise DatasetError(f"dataset {cfg.dataset}: {role} file {spec.filename} has no download address")
        target = folder / spec.filename
        if not target.is_file():
            try:
                _download(spec.url, target, progress=progress)
            except (OSError, ValueError) as exc:
                if spec.optional:
                    print(f"note: optional {role} file not downloaded ({exc}); continuing without it")
                    continue
                raise DatasetError(f"dataset {cfg.dataset}: downloading {spec.url} failed: {exc}") from exc
        digest = sha256_file(target, progress=progress)
        if spec.sha256 and digest != spec.sha256:
            bad = target.with_suffix(target.suffix + ".bad")
            os.replace(target, bad)
            raise DatasetError(
                f"dataset {cfg.dataset}: {spec.url} downloaded with sha256 {digest}, expected {spec.sha256}; "
                f"kept as {bad} for inspection"
            )
        if not spec.sha256:
            print(f"note: {spec.filename} has no published checksum; recorded sha256 {digest}")
        paths.append(target)
    return paths


def _download(url: str, target: Path, *, progress: bool) -> None:
    partial = target.with_suffix(target.suffix + ".part")
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (addresses come from the registry)
        if start and response.status != 206:  # server ignored the range: start over
            start = 0
        total = response.length + start if response.length is not None else None
        mode = "ab" if start else "wb"
        with (
            partial.open(mode) as out,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar,
        ):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    shutil.move(partial, target)
