import pytest

from purify_assets.core.landing import (
    LandingError, archive_file, archived_batches, batch_key_for, find_batch, resolve_inside, scan_landing, slugify,
)


def test_same_content_is_one_batch_whatever_the_name(tmp_path):
    landing, archive = tmp_path / "landing", tmp_path / "archive"
    landing.mkdir()
    (landing / "a.jsonl").write_text('{"text": "hello"}\n', "utf-8")
    new, seen = scan_landing(landing, archive)
    assert len(new) == 1
    (landing / "copy of a.jsonl").write_text('{"text": "hello"}\n', "utf-8")
    again, seen = scan_landing(landing, archive, seen)
    assert again == []
    (landing / "b.jsonl").write_text('{"text": "other"}\n', "utf-8")
    third, _ = scan_landing(landing, archive, seen)
    assert [b.original_name for b in third] == ["b.jsonl"]
    assert len(archived_batches(archive)) == 2


def test_archive_is_byte_identical_and_findable(tmp_path):
    src = tmp_path / "데이터 파일 (1).csv"
    payload = "\ufeffq,a\n안녕,hi\n".encode("utf-8")
    src.write_bytes(payload)
    batch, created = archive_file(src, tmp_path / "archive")
    assert created
    assert open(batch.archived_path, "rb").read() == payload
    assert find_batch(tmp_path / "archive", batch.batch_key) == batch
    assert batch.batch_key.endswith(batch.sha256[:12])


def test_batch_keys_are_safe_for_partitions_and_sql():
    key = batch_key_for("x'; DROP TABLE raw_rows; --.jsonl", "ab" * 32)
    assert "'" not in key and " " not in key and ";" not in key
    assert slugify("../../etc/passwd") == "passwd"
    assert slugify("".join(["한글"])) == "batch"


def test_unknown_or_malformed_batch_keys_are_clear_errors(tmp_path):
    with pytest.raises(LandingError, match="not a purify batch key"):
        find_batch(tmp_path, "../../x")
    with pytest.raises(LandingError, match="no archived file"):
        find_batch(tmp_path, "missing-0123456789ab")


def test_paths_outside_a_folder_are_refused(tmp_path):
    with pytest.raises(LandingError, match="outside"):
        resolve_inside(tmp_path, "../elsewhere.jsonl")
    assert resolve_inside(tmp_path, "inside.jsonl") == (tmp_path / "inside.jsonl").resolve()


def test_mapping_file_beside_the_landed_file_is_kept(tmp_path):
    src = tmp_path / "qa.csv"
    src.write_text("Q,A\nx,y\n", "utf-8")
    (tmp_path / "qa.csv.mapping.json").write_text('{"instruction": "Q", "output": "A"}', "utf-8")
    batch, _ = archive_file(src, tmp_path / "archive")
    assert batch.mapping == {"instruction": "Q", "output": "A"}
