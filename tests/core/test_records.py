"""Records: reading JSONL as users write it, path guard, atomic writes, the accounting rule."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from storyboard.core.records import (
    AccountingError,
    RecordError,
    StageRecords,
    atomic_write,
    check_fields,
    load_jsonl,
    read_jsonl,
    rejects_path_for,
    resolve_under,
    write_jsonl,
)


def test_round_trip_keeps_unknown_fields_and_korean(tmp_path):
    records = [
        {"id": "a", "image": "기생충/장면 01.jpg", "caption_ko": "남자가 강을 따라 걷는다", "mystery": {"x": [1, 2]}},
        {"id": "b", "image": "b.png", "shot_size": None, "extra_float": 1.5},
    ]
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, records) == 2
    assert load_jsonl(path) == records
    # Korean stays readable in the file, not \u escapes.
    assert "남자가" in path.read_text(encoding="utf-8")


def test_reads_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    body = '{"id": "1"}\r\n\r\n   \r\n{"id": "2", "t": "풀샷"}\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    items = list(read_jsonl(path))
    assert [i.record for i in items] == [{"id": "1"}, {"id": "2", "t": "풀샷"}]
    assert [i.line for i in items] == [1, 4]


def test_reads_utf16_with_bom(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes('{"id": "한글"}\r\n{"id": "2"}\r\n'.encode("utf-16"))
    assert [i.record["id"] for i in read_jsonl(path)] == ["한글", "2"]


def test_malformed_line_reported_with_number(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "1"}\n{"id": "2", \n[1, 2]\n"text"\n{"id": "5"}\n', encoding="utf-8")
    items = list(read_jsonl(path))
    bad = [(i.line, i.error.reason) for i in items if i.error]
    assert bad == [(2, "malformed_json"), (3, "malformed_json"), (4, "malformed_json")]
    assert "line 2" in items[1].error.detail
    assert "array" in items[2].error.detail
    with pytest.raises(RecordError, match="line 2"):
        load_jsonl(path)


def test_invalid_utf8_line_is_malformed_not_a_crash(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "1"}\n{"id": "\xff\xfe"}\n')
    items = list(read_jsonl(path))
    assert items[0].record == {"id": "1"}
    assert items[1].error.reason == "malformed_json" and "UTF-8" in items[1].error.detail


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.png", "a/../../outside.png", "C:\\x.png",
                                 "\\\\server\\share\\x.png"])
def test_path_guard_refuses_escapes(tmp_path, bad):
    with pytest.raises(RecordError) as err:
        resolve_under(tmp_path, bad)
    assert err.value.reason == "path_escape"


def test_path_guard_refuses_symlink_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "link.png")
    with pytest.raises(RecordError, match="leaves the data root"):
        resolve_under(root, "link.png")


def test_path_guard_allows_inside_paths(tmp_path):
    assert resolve_under(tmp_path, "기생충/장면 01.jpg") == tmp_path / "기생충" / "장면 01.jpg"
    assert resolve_under(tmp_path, "a/../b.png") == tmp_path / "b.png"
    assert resolve_under(tmp_path, "a\\b.png") == tmp_path / "a" / "b.png"
    with pytest.raises(RecordError) as err:
        resolve_under(tmp_path, "")
    assert err.value.reason == "missing_field"


def test_check_fields_types():
    check_fields({"title": "x", "tags_ko": ["a"]}, required=["title"], optional=["tags_ko"])
    with pytest.raises(RecordError) as err:
        check_fields({"title": 3}, required=["title"])
    assert err.value.reason == "wrong_type"
    with pytest.raises(RecordError) as err:
        check_fields({"title": ["a", "b"]}, required=["title"])
    assert err.value.reason == "wrong_type"
    with pytest.raises(RecordError) as err:
        check_fields({"title": ""}, required=["title"])
    assert err.value.reason == "missing_field"
    with pytest.raises(RecordError) as err:
        check_fields({"title_score": True}, optional=["title_score"])
    assert err.value.reason == "wrong_type"


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_killed_writer_leaves_no_partial_file(tmp_path):
    """A process killed mid-write (SIGKILL, no cleanup) leaves the old file whole."""
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [{"id": "old"}])
    script = textwrap.dedent(f"""
        import os, signal
        from storyboard.core.records import write_jsonl
        def records():
            for i in range(1000):
                if i == 500:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield {{"id": i}}
        write_jsonl({str(path)!r}, records())
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert load_jsonl(path) == [{"id": "old"}]


def test_rejects_path_rule(tmp_path):
    assert rejects_path_for(tmp_path / "metadata_clean.jsonl") == tmp_path / "metadata_clean.rejects.jsonl"
    assert rejects_path_for(tmp_path / "Dataset_fin") == tmp_path / "Dataset_fin" / "rejects.jsonl"


def _mixed_input(path):
    path.write_text(
        '{"id": "1", "title": "a"}\n'
        "not json\n"
        '{"id": "2"}\n'
        '{"id": "3", "title": 7}\n'
        '{"id": "4", "title": "d"}\n',
        encoding="utf-8",
    )


def test_accounting_rule_on_mixed_input(tmp_path):
    source = tmp_path / "raw.jsonl"
    _mixed_input(source)
    out = tmp_path / "clean.jsonl"
    with StageRecords(out, stage="test", config={"k": 1}) as stage:
        for item in stage.read_from(source):
            try:
                check_fields(item.record, required=["title"])
            except RecordError as err:
                stage.reject_item(item, err)
                continue
            stage.accept(item.record)
    kept = load_jsonl(out)
    rejects = load_jsonl(tmp_path / "clean.rejects.jsonl")
    assert [r["id"] for r in kept] == ["1", "4"]
    assert sorted(r["reason"] for r in rejects) == ["malformed_json", "missing_field", "wrong_type"]
    malformed = next(r for r in rejects if r["reason"] == "malformed_json")
    assert malformed["line"] == 2 and malformed["raw"] == "not json"
    # Every input line is in exactly one file.
    ids_out = {r["id"] for r in kept}
    ids_rej = {r["record"]["id"] for r in rejects if "record" in r}
    assert not ids_out & ids_rej and len(kept) + len(rejects) == 5
    run = json.loads((tmp_path / "clean.run.json").read_text(encoding="utf-8"))
    assert run["summary"]["read"] == 5 and run["summary"]["written"] == 2 and run["config"] == {"k": 1}
    assert "rejected" in stage.summary_table()


def test_accounting_catches_a_lost_record_and_writes_nothing(tmp_path):
    source = tmp_path / "raw.jsonl"
    _mixed_input(source)
    out = tmp_path / "clean.jsonl"
    with pytest.raises(AccountingError, match="read 5"), StageRecords(out, stage="lossy") as stage:
        for _item in stage.read_from(source):
            pass  # forgets to accept or reject
    assert not out.exists() and not (tmp_path / "clean.rejects.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.jsonl"]


def test_stage_error_keeps_previous_outputs(tmp_path):
    out = tmp_path / "clean.jsonl"
    write_jsonl(out, [{"id": "good"}])
    with pytest.raises(ValueError), StageRecords(out, stage="boom") as stage:
        stage.count_read()
        stage.accept({"id": "new"})
        raise ValueError("crash mid-stage")
    assert load_jsonl(out) == [{"id": "good"}]


def test_folder_output_and_repeats(tmp_path):
    folder = tmp_path / "Dataset_fin"
    with StageRecords(folder, stage="balance") as stage:
        stage.count_read(2)
        stage.accept({"id": "a"})
        stage.accept({"id": "a"}, repeat=True)
        stage.reject("duplicate", "same as a", record={"id": "b"})
    assert [r["id"] for r in load_jsonl(folder / "metadata.jsonl")] == ["a", "a"]
    assert load_jsonl(folder / "rejects.jsonl")[0]["reason"] == "duplicate"
    assert (folder / "run.json").exists()


def test_unknown_reason_is_a_bug(tmp_path):
    with pytest.raises(ValueError):
        RecordError("because", "x")


def test_atomic_dir_swaps_whole_folders(tmp_path):
    from storyboard.core.records import atomic_dir

    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (final / "a.txt").read_text() == "one"
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folders left


def test_harmonize_field_types_for_columnar_readers():
    from storyboard.core.records import harmonize_field_types

    records = [{"scene": "S#12", "n": 1, "tags": ["a"]}, {"scene": 12, "n": 2.5, "tags": None},
               {"scene": None, "n": 3, "meta": {"k": 1}}, {"meta": "x"}]
    assert harmonize_field_types(records) == ["meta", "scene"]
    assert [r.get("scene") for r in records] == ["S#12", "12", None, None]
    assert [r.get("n") for r in records] == [1, 2.5, 3, None]  # ints and floats are one type
    assert records[2]["meta"] == '{"k": 1}' and records[3]["meta"] == "x"
