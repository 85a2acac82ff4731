"""A worker's name and instance key on its host (farmhand.workers.identity): distinct names for workers started
without --name, the same name and key back after a restart, a clear refusal for a name another worker holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farmhand.workers.identity import NameTaken, claim, host_name


def test_workers_without_a_name_take_the_host_series_in_order_and_get_theirs_back(tmp_path: Path) -> None:
    host = host_name()
    first, second = claim(None, tmp_path), claim(None, tmp_path)
    try:
        assert (first.name, second.name) == (host, f"{host}-2")
        assert len(first.instance) == 32 and first.instance != second.instance
        key = first.instance
        first.release()
        again = claim(None, tmp_path)  # the lowest free name, with the key it had
        assert (again.name, again.instance) == (host, key)
        third = claim(None, tmp_path)
        assert third.name == f"{host}-3"
        third.release()
        again.release()
    finally:
        second.release()


def test_a_name_held_by_another_worker_of_the_host_is_refused_with_its_process(tmp_path: Path) -> None:
    held = claim("r7", tmp_path)
    try:
        with pytest.raises(NameTaken, match=rf"already runs as 'r7' \(process {os.getpid()}\)"):
            claim("r7", tmp_path)
        assert oct((tmp_path / "r7.key").stat().st_mode & 0o777) == "0o600"
    finally:
        held.release()
    assert claim("r7", tmp_path).instance == held.instance


def test_without_a_writable_state_folder_the_name_is_used_unguarded(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    identity = claim("r1", blocker / "sub")
    assert identity.name == "r1" and len(identity.instance) == 32


def test_names_are_held_per_server(tmp_path: Path) -> None:
    a = claim("r1", tmp_path, "127.0.0.1:51000")
    b = claim("r1", tmp_path, "127.0.0.2:51000")  # another farm's r1: no clash on this host
    try:
        assert a.instance != b.instance
        with pytest.raises(NameTaken):
            claim("r1", tmp_path, "127.0.0.1:51000")
    finally:
        a.release()
        b.release()
