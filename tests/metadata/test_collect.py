"""Collect stage: title matching, dedupe by content, every reject reason, bad input, idempotence."""
from __future__ import annotations

import hashlib
import json
import shutil
import unicodedata
from pathlib import Path

import pytest

from storyboard.core.cli import UserError
from storyboard.core.records import RecordError
from storyboard.core.textnorm import normalize
from storyboard.metadata.collect import CollectConfig, collect
from storyboard.metadata.raw_fields import map_raw_text_fields
from storyboard.metadata.titles import TitleEntry, TitleIndex, load_titles, title_keys

from metadata_helpers import COLLECT, EXPECTED, TITLES_CSV, collect_sample, make_crawl, outcome_by_ref, sample_truth
from support import read_jsonl, run_front_door

ENTRIES = [
    TitleEntry("Parasite", "기생충", 2019, ("Gisaengchung",)),
    TitleEntry("Memories of Murder", "살인의 추억", 2003),
    TitleEntry("Oldboy", "올드보이", 2003),
    TitleEntry("Oldboy", "올드보이", 2013),
]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> Path:
    return make_crawl(tmp_path_factory.mktemp("crawl"))


@pytest.fixture(scope="module")
def collected(crawl, tmp_path_factory) -> Path:
    """The front door run once on the hand-made crawl; returns the output path."""
    out = tmp_path_factory.mktemp("collected") / "metadata_raw.jsonl"
    proc = run_front_door(COLLECT, "--input", crawl / "raw", "--image-root", crawl / "images",
                      "--titles", crawl / "titles.csv", "--output", out, cwd=crawl)
    assert proc.returncode == 0, proc.stderr
    assert "read" in proc.stdout and "duplicate" in proc.stdout  # the summary table
    return out


# --------------------------------------------------------------------------------------------
# Titles
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, title, year, how", [
    ("기생충 (2019)", "Parasite", 2019, "exact"),
    ("Parasite", "Parasite", 2019, "exact"),
    ("ＰＡＲＡＳＩＴＥ", "Parasite", 2019, "exact"),
    ("parasite!", "Parasite", 2019, "exact"),
    ("Gisaengchung", "Parasite", 2019, "exact"),
    ("기생충 (흑백판)", "Parasite", 2019, "exact"),
    ("살인의  추억", "Memories of Murder", 2003, "exact"),
    ("살인의추억", "Memories of Murder", 2003, "exact"),
    ("살인의　추억", "Memories of Murder", 2003, "exact"),  # ideographic space
    ("살인의 추역", "Memories of Murder", 2003, "fuzzy"),  # one wrong vowel
    ("Memories of Murdr", "Memories of Murder", 2003, "fuzzy"),
    ("Parasit", "Parasite", 2019, "fuzzy"),
    ("Oldboy (2013)", "Oldboy", 2013, "exact"),
    ("올드 보이 [2003]", "Oldboy", 2003, "exact"),
])
def test_title_variants_match(raw, title, year, how):
    match = TitleIndex(ENTRIES).match(raw)
    assert (match.how, match.entry.title, match.entry.year) == (how, title, year)
    assert (match.score == 100) == (how == "exact") and match.score >= 85


def test_ambiguous_and_unmatched_titles_carry_candidates():
    index = TitleIndex(ENTRIES)
    ambiguous = index.match("Oldboy")
    assert ambiguous.how == "ambiguous" and {c["year"] for c in ambiguous.candidates} == {2003, 2013}
    unmatched = index.match("괴물")
    assert unmatched.how == "unmatched" and unmatched.entry is None and unmatched.candidates
    assert all(c["score"] < 85 for c in unmatched.candidates)


def test_fuzzy_matching_uses_rapidfuzz_with_threshold():
    strict = TitleIndex(ENTRIES, min_score=99)
    assert strict.match("Parasit").how == "unmatched"
    assert title_keys("살인의  추억 (2003)") == title_keys("살인의추억")


def test_titles_jsonl_and_csv_load_the_same(tmp_path):
    csv_path = tmp_path / "titles.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + TITLES_CSV.replace("\n", "\r\n").encode())  # BOM + CRLF
    jsonl = tmp_path / "titles.jsonl"
    jsonl.write_text("\n".join(json.dumps(
        {"title": e.title, "original_title": e.original_title, "year": e.year, "aliases": list(e.aliases)},
        ensure_ascii=False) for e in load_titles(csv_path)), encoding="utf-8")
    strip = lambda entries: [(e.title, e.original_title, e.year, e.aliases) for e in entries]
    assert strip(load_titles(csv_path)) == strip(load_titles(jsonl))
    assert load_titles(csv_path)[0].aliases == ("Gisaengchung", "패러사이트")


@pytest.mark.parametrize("body, message", [
    ("title,original_title,year\nParasite,기생충,2019,extra\n", "titles.csv line 2: 4 fields, the header has 3"),
    ("title,original_title,year\n,기생충,2019\n", "titles.csv line 2: the canonical 'title' is empty"),
    ("title,original_title,year\nParasite,기생충,twenty\n",
     "titles.csv line 2: year 'twenty' is not a four-digit year"),
    ("name,year\nParasite,2019\n", "no 'title' column"),
    ("title,year\nParasite,2019\nParasite,2019\n", "'Parasite' (2019) is already listed on line 2"),
    ("", "is empty"),
])
def test_bad_titles_file_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "titles.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_titles(path)


def test_bad_titles_row_through_the_front_door(crawl, tmp_path):
    bad = tmp_path / "titles.csv"
    bad.write_text(TITLES_CSV + "Mother,마더,20o9,\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run_front_door(COLLECT, "--input", crawl / "raw", "--image-root", crawl / "images", "--titles", bad,
                      "--output", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "collect_title_matches.py: error: titles.csv line 6: year '20o9' is not a four-digit year"]
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# The stage on the hand-made crawl
# --------------------------------------------------------------------------------------------
def test_every_line_has_its_expected_outcome(collected):
    rejects = collected.with_name("metadata_raw.rejects.jsonl")
    assert outcome_by_ref(collected, rejects) == EXPECTED
    summary = json.loads(collected.with_name("metadata_raw.run.json").read_text(encoding="utf-8"))["summary"]
    assert summary["read"] == len(EXPECTED) == summary["written"] + summary["rejected"]


def test_kept_records_fields(collected, crawl):
    by_ref = {r["raw_ref"]: r for r in read_jsonl(collected)}
    first = by_ref["crawl_a.jsonl:1"]
    # raw caption/tags renamed and normalised; the extra fields travel untouched
    assert first["caption_ko"].startswith("남자가 <b>강</b>을")
    assert first["tags_ko"] == ["풀 샷", "야외"]
    assert "caption" not in first and "tags" not in first
    assert (first["source_url"], first["scene"], first["crawled_at"]) == \
        ("https://example.org/1", 12, "2024-05-01T10:00:00")
    assert (first["title"], first["title_canonical"], first["title_score"], first["title_year"]) == (
        "기생충 (2019)", "Parasite", 100.0, 2019)
    digest = hashlib.sha256((crawl / "images" / "기생충" / "장면 01.png").read_bytes()).hexdigest()
    assert first["id"] == digest[:16]
    assert by_ref["crawl_a.jsonl:2"]["image"] == "살인의 추억/논두렁 컷.jpg"
    fuzzy = by_ref["crawl_b.jsonl:4"]
    assert fuzzy["title_canonical"] == "Parasite" and 85 <= fuzzy["title_score"] < 100
    assert fuzzy["tags_ko"] == ["바스트샷"]
    assert by_ref["crawl_a.jsonl:17"]["title_year"] == 2013
    ids = [r["id"] for r in read_jsonl(collected)]
    assert len(ids) == len(set(ids))


def test_same_image_under_another_name_keeps_richest_and_merges(collected):
    kept = {r["raw_ref"]: r for r in read_jsonl(collected)}["crawl_a.jsonl:4"]
    assert kept["image"] == "b copy.png"
    assert kept["caption_ko"] == "가족이 계단을 내려온다"
    assert "caption_ko_alternatives" not in kept  # the poorer record had no caption
    assert kept["tags_ko"] == ["미디엄 샷", "실내", "미디엄샷"]
    assert kept["merged_from"] == ["crawl_a.jsonl:3"]
    rejects = read_jsonl(collected.with_name("metadata_raw.rejects.jsonl"))
    dup = next(e for e in rejects if e["reason"] == "duplicate" and e["line"] == 3)
    assert "crawl_a.jsonl:4" in dup["detail"] and dup["kept_id"] == kept["id"]


def test_exact_duplicate_keeps_the_first_read(collected):
    rejects = read_jsonl(collected.with_name("metadata_raw.rejects.jsonl"))
    dup = next(e for e in rejects if e["reason"] == "duplicate" and "crawl_b" in e["source"])
    assert dup["line"] == 1 and "crawl_a.jsonl:1" in dup["detail"]


def test_richer_duplicate_later_in_the_stream_wins(tmp_path):
    """The first record is 'best so far' in pass 1 but loses later: it must end in rejects only."""
    root = make_crawl(tmp_path)
    lines = [{"image": "b.png", "title": "Parasite", "extra": 1, "more": 2},
             {"image": "b.png", "title": "Parasite", "caption": "가족", "tags": ["실내"]},
             {"image": "b copy.png", "title": "Parasite", "caption": "가족이 계단을 내려온다", "tags": ["실내", "밤"]}]
    raw = tmp_path / "one.jsonl"
    raw.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines), encoding="utf-8")
    stage = collect(CollectConfig([raw], root / "images", tmp_path / "out.jsonl", titles=root / "titles.csv"))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["raw_ref"] for r in out] == ["one.jsonl:2"]  # richer than line 1, read before line 3
    assert out[0]["merged_from"] == ["one.jsonl:1", "one.jsonl:3"]
    assert out[0]["caption_ko_alternatives"] == ["가족이 계단을 내려온다"] and out[0]["tags_ko"] == ["실내", "밤"]
    assert stage.rejected_by_reason == {"duplicate": 2}


def test_without_titles_list_titles_pass_through(crawl, tmp_path):
    out = tmp_path / "out.jsonl"
    collect(CollectConfig([crawl / "raw" / "crawl_a.jsonl"], crawl / "images", out))
    by_ref = {r["raw_ref"]: r for r in read_jsonl(out)}
    assert by_ref["crawl_a.jsonl:2"]["title_canonical"] == "살인의 추억"
    assert by_ref["crawl_a.jsonl:2"]["title_score"] is None
    assert "crawl_a.jsonl:15" in by_ref  # 괴물 is not checked against anything


def test_collect_is_idempotent_on_its_own_output(collected, crawl, tmp_path):
    again = tmp_path / "again.jsonl"
    proc = run_front_door(COLLECT, "--input", collected, "--image-root", crawl / "images",
                          "--titles", crawl / "titles.csv", "--output", again, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert again.read_text(encoding="utf-8") == collected.read_text(encoding="utf-8")
    assert read_jsonl(again.with_name("again.rejects.jsonl")) == []


def test_nfd_file_name_found_from_nfc_record(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    nfd_name = unicodedata.normalize("NFD", "살인의 추억 컷.png")
    shutil.copy(make_crawl(tmp_path / "c") / "images" / "b.png", images / nfd_name)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"image": "살인의 추억 컷.png", "title": "살인의추억"}, ensure_ascii=False),
                   encoding="utf-8")
    stage = collect(CollectConfig([raw], images, tmp_path / "out.jsonl"))
    assert stage.written == 1
    record = read_jsonl(tmp_path / "out.jsonl")[0]
    assert record["image"] == nfd_name and record["image_raw"] == "살인의 추억 컷.png"


def test_map_raw_text_fields():
    record = map_raw_text_fields({"caption": "  풀샷　입니다 ", "tags": "풀 샷, 야외 / 밤", "x": [1]})
    assert record == {"caption_ko": "풀샷 입니다", "tags_ko": ["풀 샷", "야외", "밤"], "x": [1]}
    with pytest.raises(RecordError) as err:
        map_raw_text_fields({"caption": 3})
    assert err.value.reason == "wrong_type"
    assert normalize("ＡＢＣ（２０１９）\u200b  x") == "ABC(2019) x"


# --------------------------------------------------------------------------------------------
# The sample data set (storyboard.devkit.sample_data): planted faults and nothing else
# --------------------------------------------------------------------------------------------
def test_sample_data_collect_matches_ground_truth(sample_data, tmp_path):
    truth = sample_truth(sample_data)
    out_dir = collect_sample(sample_data, tmp_path)
    output = out_dir / "metadata_raw.jsonl"
    got = outcome_by_ref(output, out_dir / "metadata_raw.rejects.jsonl")
    expected = {key: (t["expected"] if t["stage"] == "collect" else "kept") for key, t in truth["records"].items()}
    assert got == expected
    planted = {f"{f['source']}:{f['line']}": f["expected_reason"] for f in truth["faults"] if f["stage"] == "collect"}
    assert {k: v for k, v in got.items() if v != "kept"} == planted
    for record in read_jsonl(output):
        t = truth["records"][record["raw_ref"]]
        image = truth["images"][t["image"]]
        assert record["title_canonical"] == t["title"]
        assert record["id"] == image["sha256"][:16]
        if t["expected"] == "kept":  # kept_record is the record that survives every stage
            assert image["kept_record"] == record["raw_ref"]
    summary = json.loads((out_dir / "metadata_raw.run.json").read_text(encoding="utf-8"))["summary"]
    assert summary["read"] == len(truth["records"])


# --------------------------------------------------------------------------------------------
# Bad input through the front door
# --------------------------------------------------------------------------------------------
def test_empty_input_is_one_line_and_keeps_the_old_output(crawl, tmp_path):
    out = tmp_path / "metadata_raw.jsonl"
    out.write_text('{"keep": "me"}\n', encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\xef\xbb\xbf\r\n  \r\n")
    proc = run_front_door(COLLECT, "--input", empty, "--image-root", crawl / "images", "--output", out, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "collect_title_matches.py: error: no records to collect: empty.jsonl is empty"
    assert out.read_text(encoding="utf-8") == '{"keep": "me"}\n'


@pytest.mark.parametrize("args, message", [
    (["--input", "nope.jsonl"], "input not found: nope.jsonl"),
    (["--image-root", "no_such_folder"], "image root is not a folder: no_such_folder"),
    (["--titles", "missing.csv"], "titles file not found: missing.csv"),
])
def test_bad_paths_are_one_line(crawl, tmp_path, args, message):
    base = {"--input": str(crawl / "raw"), "--image-root": str(crawl / "images"), "--output": str(tmp_path / "o.jsonl")}
    base.update(dict(zip(args[::2], args[1::2])))
    proc = run_front_door(COLLECT, *[x for kv in base.items() for x in kv], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"collect_title_matches.py: error: {message}"


def test_korean_and_spaced_file_names_and_symlink_escape(crawl, tmp_path):
    images = tmp_path / "이미지 폴더"
    shutil.copytree(crawl / "images", images)
    (images / "밖으로.png").symlink_to(crawl / "titles.csv")  # inside the root by name, outside in fact
    raw = tmp_path / "크롤 데이터.jsonl"
    raw.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"image": "기생충/장면 01.png", "title": "기생충"},
        {"image": "밖으로.png", "title": "기생충"},
        {"image": "살인의 추억\\논두렁 컷.jpg", "title": "살인의 추억"},  # a Windows separator
    ]), encoding="utf-8")
    out = tmp_path / "출력 폴더" / "메타 데이터.jsonl"
    proc = run_front_door(COLLECT, "--input", raw, "--image-root", images, "--titles", crawl / "titles.csv",
                      "--output", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [(r["raw_ref"], r["image"]) for r in read_jsonl(out)] == [
        ("크롤 데이터.jsonl:1", "기생충/장면 01.png"), ("크롤 데이터.jsonl:3", "살인의 추억/논두렁 컷.jpg")]
    assert [e["reason"] for e in read_jsonl(out.with_name("메타 데이터.rejects.jsonl"))] == ["path_escape"]


def test_help_works(tmp_path):
    proc = run_front_door(COLLECT, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--titles" in proc.stdout and "--image-root" in proc.stdout
