"""The one atomic write helper: a failure mid-write leaves the old file as it was and no temporary file."""

from __future__ import annotations

import json
import threading

import pytest

from imgsynth.atomic_files import (atomic_folder, atomic_path, temporary_sibling, write_bytes_atomic,
                                   write_json_atomic, write_text_atomic)


class Interrupted(Exception):
    pass


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "record.json"
    target.write_text('{"old": true}', encoding="utf-8")
    with pytest.raises(Interrupted):
        with atomic_path(target) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write('{"new": ')  # half of the new content is on disk when the writer dies
                handle.flush()
                assert tmp.exists() and tmp.parent == target.parent
                raise Interrupted
    assert target.read_text(encoding="utf-8") == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_failing_serialiser_keeps_the_old_file(tmp_path):
    target = tmp_path / "record.json"
    write_json_atomic(target, {"a": 1}, indent=2)
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_the_helpers_write_exactly_the_bytes_given(tmp_path):
    assert write_text_atomic(tmp_path / "a.txt", "é\nline") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == "é\nline".encode("utf-8")
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "c.json", {"k": [1, 2]}, indent=2)
    # json.dumps' text exactly, with no newline added: files written before this helper stay byte-identical
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == json.dumps({"k": [1, 2]}, indent=2)
    write_text_atomic(tmp_path / "a.txt", "replaced")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json"]


def test_temporary_names_are_hidden_and_differ_between_threads(tmp_path):
    target = tmp_path / "shard-000001.jsonl"
    here = temporary_sibling(target)
    assert here.parent == tmp_path and here.name.startswith(".shard-000001.jsonl.") and here.name.endswith(".tmp")
    assert temporary_sibling(target, suffix=".png").name.endswith(".tmp.png")  # for writers that read the suffix
    other: list = []
    thread = threading.Thread(target=lambda: other.append(temporary_sibling(target)))
    thread.start()
    thread.join()
    assert other[0] != here


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(Interrupted):
        with atomic_folder(out) as partial:
            assert partial == tmp_path / ".export.partial" and partial.is_dir()
            (partial / "part-0").write_text("half", encoding="utf-8")
            raise Interrupted
    assert list(tmp_path.iterdir()) == []  # neither the target nor the partial folder

    (tmp_path / ".export.partial").mkdir()
    (tmp_path / ".export.partial" / "stale").write_text("from a killed writer", encoding="utf-8")
    out.mkdir()  # an empty folder the caller made is replaced
    with atomic_folder(out) as partial:
        (partial / "part-0").write_text("whole", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert sorted(p.name for p in out.iterdir()) == ["part-0"]
