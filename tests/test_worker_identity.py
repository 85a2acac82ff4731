"""A worker's name and instance key on its host (farmhand.workers.identity): distinct names for workers started
without --name, the same name and key back after a restart, a clear refusal for a name another worker holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farmhand.workers.identity import NameTaken, StateDirError, claim, host_name, server_key


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


def test_a_state_folder_that_cannot_be_used_is_an_error_and_the_default_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StateDirError, match="no folder to keep the worker's name in"):
        claim("r1", blocker / "sub")
    # the default folder unwritable (a read-only home): the temporary one is used, names still guarded
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    monkeypatch.setattr("farmhand.workers.identity.fallback_state_dir", lambda: tmp_path / "tmp-state")
    first, second = claim(None), claim(None)
    try:
        assert first.name != second.name and (tmp_path / "tmp-state" / f"{first.name}.lock").exists()
    finally:
        first.release()
        second.release()


def test_the_server_is_known_by_its_address() -> None:
    assert server_key("localhost", 51000) in ("127.0.0.1:51000", "::1:51000")
    assert server_key("127.0.0.1", 51000) == "127.0.0.1:51000"


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
