"""Saves survive power loss, not just SIGKILL: files are fsynced, then the directory that holds
them, then the rename that publishes them (the parent directory), and only then a pointer such
as PPO's `latest`. Checked by recording every `os.fsync` (by path) and every rename in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def journal(monkeypatch):
    """Ordered ("fsync", path) and ("rename", src, dst) events of this process."""
    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def fsynced(events) -> list[str]:
    return [event[1] for event in events if event[0] == "fsync"]


def index_of(events, predicate) -> int:
    return next(i for i, event in enumerate(events) if predicate(event))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_atomic_directory_fsyncs_files_then_directories_then_the_parent(tmp_path, journal, monkeypatch, exchange):
    from chimed_ray.utils import files

    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    target = tmp_path / "final"
    target.mkdir()  # an older checkpoint that the save replaces
    (target / "old.txt").write_text("old")
    journal.clear()
    with files.atomic_directory(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "model.safetensors").write_bytes(b"w" * 100)
        (tmp / "sub" / "shard.bin").write_bytes(b"s" * 10)
    assert (target / "model.safetensors").read_bytes() == b"w" * 100 and not (target / "old.txt").exists()

    paths = fsynced(journal)
    tmp_name = str(tmp)
    shard, weights = paths.index(f"{tmp_name}/sub/shard.bin"), paths.index(f"{tmp_name}/model.safetensors")
    sub_dir, tmp_dir = paths.index(f"{tmp_name}/sub"), paths.index(tmp_name)
    assert shard < sub_dir < tmp_dir and weights < tmp_dir  # files before the directories holding them
    # The parent is fsynced after the rename that published the new directory, so an OS crash
    # cannot undo the rename; with renameat2 there is no os.replace to see, only the parent sync.
    parent_sync = max(i for i, event in enumerate(journal) if event == ("fsync", str(tmp_path)))
    assert parent_sync > index_of(journal, lambda e: e == ("fsync", tmp_name))
    if not exchange:
        published = index_of(journal, lambda e: e[0] == "rename" and e[2] == str(target))
        assert index_of(journal, lambda e: e == ("fsync", tmp_name)) < published < parent_sync


def test_atomic_write_text_fsyncs_the_file_then_its_directory(tmp_path, journal):
    from chimed_ray.utils.files import atomic_write_text

    atomic_write_text(tmp_path / "latest", "step_000002")
    renamed = index_of(journal, lambda e: e[0] == "rename" and e[2] == str(tmp_path / "latest"))
    file_sync = index_of(journal, lambda e: e[0] == "fsync" and Path(e[1]).name.startswith(".latest."))
    dir_sync = index_of(journal, lambda e: e == ("fsync", str(tmp_path)))
    assert file_sync < renamed < dir_sync


def test_ppo_checkpoint_is_durable_before_latest_points_at_it(tmp_path, journal, monkeypatch):
    """driver_state.json and every shard are on disk, and the checkpoint's name is in its parent,
    before `latest` names it: after an OS crash `latest` never points at an empty directory."""
    from chimed_ray.distributed import group
    from chimed_ray.trainers import ppo_state

    class Writer:
        def async_run(self, method, path):
            Path(path).mkdir(parents=True)
            (Path(path) / "mp_rank_00_model_states.pt").write_bytes(b"m" * 64)
            return []

    monkeypatch.setattr(group, "gather", list)
    groups = type("Groups", (), {"policy": Writer(), "critic": Writer()})()
    target = ppo_state.save_checkpoint(groups, ppo_state.DriverState(step=3), tmp_path, keep=2)
    root = target.parent

    state_sync = index_of(journal, lambda e: e[0] == "fsync" and e[1].endswith("/" + ppo_state.STATE_FILE))
    shard_syncs = [i for i, e in enumerate(journal) if e[0] == "fsync" and e[1].endswith("model_states.pt")]
    checkpoint_dir_sync = index_of(journal, lambda e: e[0] == "fsync" and Path(e[1]).name.startswith(f".{target.name}.tmp-"))
    root_sync = index_of(journal, lambda e: e == ("fsync", str(root)))
    latest_published = index_of(journal, lambda e: e[0] == "rename" and e[2] == str(root / ppo_state.LATEST))
    assert len(shard_syncs) == 2
    assert max(shard_syncs + [state_sync]) < checkpoint_dir_sync < root_sync < latest_published
    last_root_sync = max(i for i, e in enumerate(journal) if e == ("fsync", str(root)))
    assert last_root_sync > latest_published  # the pointer's own rename is durable too
    assert (root / ppo_state.LATEST).read_text() == target.name
