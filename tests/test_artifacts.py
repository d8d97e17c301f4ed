"""Versioned stage outputs: atomic publish, CURRENT pointer, crash leftovers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from persona4rec.artifacts import Manifest, StageStore, Timer, fingerprint


def _manifest(fp: str) -> Manifest:
    return Manifest(stage="s", fingerprint=fp, config_hash="c", stage_config={}, inputs=[])


def test_publish_then_complete_and_current(tmp_path):
    store = StageStore(tmp_path / "stage")
    fp = fingerprint("s", 1, {"k": 1}, [{"sha256": "abc"}])
    assert store.complete(fp) is None and store.current() is None
    tmp = store.begin(fp)
    (tmp / "table").write_text("rows")
    _manifest(fp).write(tmp)
    final = store.publish(tmp, fp)
    assert store.complete(fp) == final == store.current()
    assert (final / "table").read_text() == "rows"


def test_fingerprint_depends_on_config_inputs_and_version():
    base = fingerprint("s", 1, {"k": 1}, [{"sha256": "abc"}])
    assert base == fingerprint("s", 1, {"k": 1}, [{"sha256": "abc"}])
    assert base != fingerprint("s", 2, {"k": 1}, [{"sha256": "abc"}])
    assert base != fingerprint("s", 1, {"k": 2}, [{"sha256": "abc"}])
    assert base != fingerprint("s", 1, {"k": 1}, [{"sha256": "abd"}])


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    store = StageStore(tmp_path / "stage")
    fp = "f" * 64
    leftover = store.begin(fp)  # a run that died before publishing
    (leftover / "half").write_text("x")
    store.version_dir(fp).mkdir()  # and a final-named folder without a manifest
    assert store.complete(fp) is None
    tmp = store.begin(fp)
    assert not leftover.exists()
    _manifest(fp).write(tmp)
    assert store.publish(tmp, fp) == store.complete(fp)


def test_manifest_of_another_fingerprint_is_not_complete(tmp_path):
    store = StageStore(tmp_path / "stage")
    fp, other = "a" * 64, "a" * 16 + "b" * 48  # same 16-char folder prefix
    tmp = store.begin(fp)
    _manifest(fp).write(tmp)
    store.publish(tmp, fp)
    assert store.complete(other) is None


def test_timer_peak_memory_counts_child_processes_and_round_trips(tmp_path):
    """A child holding ~300 MB during a span shows in that span's peak, not in a span before it."""
    timer = Timer(sample_s=0.05)
    with timer("idle"):
        time.sleep(0.2)
    hold = "b = bytearray(300 * 2**20); import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); input()"
    with timer("child"):
        child = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.3)
        child.communicate("")
    assert set(timer.timings) == set(timer.peak_rss_mb) == {"idle", "child"}
    assert timer.peak_rss_mb["child"] - timer.peak_rss_mb["idle"] > 250
    m = _manifest("f")
    m.record(timer)
    m.write(tmp_path)
    assert Manifest.read(tmp_path).peak_rss_mb == timer.peak_rss_mb


def test_manifest_written_before_peak_memory_existed_still_reads(tmp_path):
    m = _manifest("f")
    data = dict(m.__dict__)
    del data["peak_rss_mb"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert Manifest.read(tmp_path).peak_rss_mb == {}
