"""Checksums at load: the first load hashes every file of the variant; later loads trust a file whose identity on
disk (inode, size, mtime, ctime) is unchanged since it matched, and any change is caught again."""

from __future__ import annotations

import os
import shutil
import time

import pytest

import edgevlm
from edgevlm.engine import bundle as bundle_mod
from edgevlm.engine import verified


@pytest.fixture
def copy(tiny256, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVLM_CACHE", str(tmp_path / "cache"))
    return shutil.copytree(tiny256[1], tmp_path / "bundle")


def _hashed(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p, *a: calls.append(p.name) or real(p, *a))
    return calls


def test_second_load_hashes_nothing_and_full_hashes_everything(copy, monkeypatch):
    calls = _hashed(monkeypatch)
    edgevlm.load(copy, variant="q4")
    first = list(calls)
    assert "decoder_model_merged_q4.onnx" in first and "config.json" in first
    calls.clear()
    edgevlm.load(copy, variant="q4")
    assert calls == []
    edgevlm.load(copy, variant="q4", verify="full")
    assert sorted(calls) == sorted(first)
    assert (copy.parent / "cache" / "verified.json").is_file()


@pytest.mark.parametrize("change", ["same-size-rewrite", "times-put-back", "replaced"])
def test_a_changed_file_is_caught_after_it_was_trusted(copy, monkeypatch, change):
    edgevlm.load(copy, variant="q4")
    target = copy / "onnx" / "embed_tokens_q4.onnx"
    st = os.stat(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    time.sleep(0.01)
    if change == "replaced":
        tmp = target.with_name("x.tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, target)
    else:
        with open(target, "r+b") as f:  # in place: same inode, same size
            f.write(bytes(data))
        if change == "times-put-back":
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime still moves
    with pytest.raises(edgevlm.ModelError, match="does not match its checksum"):
        edgevlm.load(copy, variant="q4")


def test_an_unwritable_cache_only_means_hashing_again(copy, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("EDGEVLM_CACHE", str(blocker / "cache"))
    calls = _hashed(monkeypatch)
    edgevlm.load(copy, variant="q4")
    n = len(calls)
    edgevlm.load(copy, variant="q4")
    assert n and len(calls) == 2 * n
    assert verified.cache_dir() == blocker / "cache"
