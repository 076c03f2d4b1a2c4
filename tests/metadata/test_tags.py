"""Tag stage (01): cleaning Korean text, mapping every vocabulary spelling, conflicts, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from storyboard.core.records import RecordError
from storyboard.core.vocabulary import load_vocabulary
from storyboard.metadata.tags import clean_caption, clean_tags, preprocess_record

from metadata_helpers import COLLECT, TAGS, TRANSLATE, collect_sample, make_crawl, sample_truth, seed_layout
from support import read_jsonl, run_front_door

VOCAB = load_vocabulary()


def _variants(spelling: str) -> set[str]:
    """A spelling as people type it: as listed, without spaces, a space before 샷/숏, the other suffixes."""
    compact = spelling.replace(" ", "")
    out = {spelling, compact}
    for suffix in ("샷", "숏", "쇼트"):
        if compact.endswith(suffix):
            stem = compact[: -len(suffix)]
            out |= {stem + other for other in ("샷", "숏", "쇼트")} | {f"{stem} {suffix}"}
    return out


KOREAN_SPELLINGS = [(term.kind, term.key, variant) for term in VOCAB.terms for spelling in term.ko
                    for variant in sorted(_variants(spelling))]


@pytest.mark.parametrize("kind, key, tag", KOREAN_SPELLINGS, ids=[f"{k}-{t}" for _, k, t in KOREAN_SPELLINGS])
def test_every_korean_spelling_maps_onto_its_term(kind, key, tag):
    record, _ = preprocess_record({"tags_ko": [tag], "caption_ko": ""}, VOCAB)
    assert record[kind] == key
    term = VOCAB.get(kind, key)
    assert record["tags_ko"] == [term.ko[0]]  # spelling variants collapse to the first spelling
    assert record["labels_from"][kind] == "tags"


# Spellings as people really type them, written out by hand (not derived from the vocabulary table,
# unlike KOREAN_SPELLINGS above): spacing, mixed scripts, variant and mistaken spellings, punctuation
# and case, screenplay headings, and words that merely contain a spelling. Each with the labels it
# must give: (tag as typed, shot_size, angle, location).
REAL_WORLD_TAGS = [
    # spacing and separators
    ("풀 샷", "full", None, None), ("  풀샷  ", "full", None, None), ("클로즈 업 샷", "close_up", None, None),
    ("익스트림롱숏", "extreme_long", None, None), ("익스트림 롱 샷", "extreme_long", None, None),
    ("클로즈-업", "close_up", None, None), ("익스트림-롱샷", "extreme_long", None, None),
    ("하이 앵글", None, "high", None), ("버드 아이 뷰", None, "birds_eye", None), ("풀 쇼트", "full", None, None),
    # mixed scripts
    ("풀shot", "full", None, None), ("풀 Shot", "full", None, None), ("full샷", "full", None, None),
    ("FULL 숏", "full", None, None), ("close-up샷", "close_up", None, None), ("CU샷", "close_up", None, None),
    ("ＦＵＬＬ ＳＨＯＴ", "full", None, None), ("하이앵글/실내", None, "high", "indoor"),
    # variant and mistaken spellings
    ("미디움샷", "medium", None, None), ("클로우즈업", "close_up", None, None), ("로앵글", None, "low", None),
    ("버드아이뷰", None, "birds_eye", None), ("부감샷", None, "high", None), ("니 샷", "medium_long", None, None),
    ("와이드샷", "long", None, None), ("bust-shot", "medium_close_up", None, None), ("fullshot", "full", None, None),
    # punctuation, brackets, hashtags, case, abbreviations
    ("#클로즈업", "close_up", None, None), ("[풀샷]", "full", None, None), ("(풀샷)", "full", None, None),
    ("클로즈업샷!!", "close_up", None, None), ("Full-Shot", "full", None, None), ("FS.", "full", None, None),
    ("C.U.", "close_up", None, None), ("E.C.U.", "extreme_close_up", None, None), ("M.S", "medium", None, None),
    ("XCU", "extreme_close_up", None, None), ("Eye Level", None, "eye_level", None),
    # screenplay headings
    ("INT. 거실 - 밤", None, None, "indoor"), ("EXT. 골목 - 낮", None, None, "outdoor"), ("Int.", None, None, "indoor"),
    ("Ext.", None, None, "outdoor"), ("실외씬", None, None, "outdoor"),
    # words that contain a spelling, or look like one, but name nothing here
    ("조감독", None, None, None), ("부감독", None, None, None), ("미디엄 레어", None, None, None),
    ("쇼트트랙", None, None, None), ("샷건", None, None, None), ("롱패딩", None, None, None),
    ("풀이", None, None, None), ("원샷", None, None, None), ("CUT", None, None, None), ("MSG", None, None, None),
    ("ELSE", None, None, None), ("ms", None, None, None), ("m.s.", None, None, None), ("int", None, None, None),
]


@pytest.mark.parametrize("tag, shot, angle, location", REAL_WORLD_TAGS, ids=[t for t, *_ in REAL_WORLD_TAGS])
def test_real_world_spellings(tag, shot, angle, location):
    record, _ = preprocess_record({"tags_ko": [tag], "caption_ko": ""}, VOCAB)
    assert (record["shot_size"], record["angle"], record["location"]) == (shot, angle, location)


def test_real_world_captions():
    """Free text: labels inside sentences, particles attached, a not-term beside a real term."""
    cases = [("남자가 풀샷으로 걷는다", ("full", None, None)),
             ("조감독이 부감으로 찍은 골목, 실외", (None, "high", "outdoor")),
             ("조감독과 부감독이 본 장면", (None, None, None)),
             ("익스트림롱샷, 밤, 실외", ("extreme_long", None, "outdoor")),
             ("FS/eye-level/INT", ("full", "eye_level", "indoor")),
             ("바스트샷입니다", ("medium_close_up", None, None))]
    for caption, labels in cases:
        record, _ = preprocess_record({"tags_ko": [], "caption_ko": caption}, VOCAB)
        assert (record["shot_size"], record["angle"], record["location"]) == labels, caption


def test_spacing_variants_collapse_to_one_tag():
    assert clean_tags(["풀 샷", "풀샷", "풀숏", "#풀쇼트", "[풀샷]"], [], VOCAB) == ["풀샷"]
    assert clean_tags(["풀샷, 야외 #밤", "  비 "], ["야경"], VOCAB) == ["풀샷", "실외", "밤", "비", "야경"]


@pytest.mark.parametrize("raw, caption, hashtags", [
    ("남자가 <b>강</b>을 따라 걷는다!!!", "남자가 강을 따라 걷는다!", []),
    ("남자가&nbsp;걷는다 &amp;lt;끝&amp;gt;", "남자가 걷는다 <끝>", []),
    ("<p>첫 줄</p><br/>둘째 줄<!-- 주석 -->", "첫 줄 둘째 줄", []),
    ("웃는다 😀👍🏻❤️ 👨‍👩‍👧 좋다", "웃는다 좋다", []),
    ("강가를 걷는다 #풀샷 #야외", "강가를 걷는다", ["풀샷", "야외"]),
    ("[스포주의] 형사가 본다 【편집자 주】", "형사가 본다", []),
    ("정말?!?! 그래..... 응~~~ 왜???", "정말?! 그래... 응~ 왜?", []),
    ("ＡＢＣ　풀샷 (감독판)", "ABC 풀샷 (감독판)", []),
])
def test_caption_cleaning(raw, caption, hashtags):
    assert clean_caption(raw) == (caption, hashtags)
    assert clean_caption(caption)[0] == caption  # idempotent


def test_labels_from_tags_and_caption():
    record, _ = preprocess_record({"caption": "부감으로 본 <i>골목</i> #실내", "tags": "미디엄샷"}, VOCAB)
    assert (record["shot_size"], record["angle"], record["location"]) == ("medium", "high", "indoor")
    assert record["labels_from"] == {"shot_size": "tags", "angle": "caption", "location": "tags"}
    assert record["caption_ko"] == "부감으로 본 골목" and record["caption_ko_raw"] == "부감으로 본 <i>골목</i> #실내"
    assert record["tags_ko_raw"] == "미디엄샷" and record["tags_ko"] == ["미디엄샷", "실내"]


def test_two_shot_sizes_are_a_conflict():
    with pytest.raises(RecordError) as err:
        preprocess_record({"tags_ko": ["풀샷", "클로즈업"]}, VOCAB)
    assert err.value.reason == "conflicting_labels" and "close_up" in err.value.detail and "full" in err.value.detail
    with pytest.raises(RecordError):  # caption against tags counts too
        preprocess_record({"tags_ko": ["풀샷"], "caption_ko": "얼굴 클로즈업"}, VOCAB)
    record, _ = preprocess_record({"tags_ko": ["풀샷", "풀 샷", "전신샷"], "caption_ko": "풀숏"}, VOCAB)
    assert record["shot_size"] == "full"  # one size, several spellings: no conflict


def test_angle_conflict_leaves_null_and_says_so():
    record, labels = preprocess_record({"tags_ko": ["풀샷", "하이앵글", "로우앵글"]}, VOCAB)
    assert record["shot_size"] == "full" and record["angle"] is None
    assert record["label_conflicts"] == {"angle": ["high", "low"]}


def test_no_shot_size_is_kept_with_null():
    record, _ = preprocess_record({"caption_ko": "비 오는 밤", "tags_ko": []}, VOCAB)
    assert (record["shot_size"], record["angle"], record["location"]) == (None, None, None)


@pytest.mark.parametrize("record, reason", [
    ({"caption_ko": 5}, "wrong_type"),
    ({"caption_ko": "x", "tags_ko": {"a": 1}}, "wrong_type"),
    ({"tags_ko": ["풀샷", None]}, "wrong_type"),
    ({"tags": 3.5}, "wrong_type"),
    ({"shot_size": "gigantic"}, "wrong_type"),
    ({"shot_size": ["full"]}, "wrong_type"),
])
def test_wrong_types_are_rejected(record, reason):
    with pytest.raises(RecordError) as err:
        preprocess_record(record, VOCAB)
    assert err.value.reason == reason


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory) -> Path:
    """work/ laid out like the seed: collect's default output lands in Data_preprocessing_method/."""
    work = tmp_path_factory.mktemp("work")
    data = make_crawl(work / "sample_data")
    collect_dir = seed_layout(work, COLLECT)
    proc = run_front_door("collect_title_matches.py", "--input", data / "raw", "--image-root", data / "images",
                      "--titles", data / "titles.csv", cwd=collect_dir)
    assert proc.returncode == 0, proc.stderr
    folder = seed_layout(work, TAGS)
    assert (folder / "metadata_raw.jsonl").is_file()  # the default output path of collect
    return folder


def test_seed_command_line_verbatim(seed_folder):
    proc = run_front_door("01_preprocess_tags.py", "--input", "metadata_raw.jsonl", "--output", "metadata_clean.jsonl",
                      cwd=seed_folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("preprocess_tags: metadata_clean.jsonl")
    out = {r["raw_ref"]: r for r in read_jsonl(seed_folder / "metadata_clean.jsonl")}
    assert len(out) == len(read_jsonl(seed_folder / "metadata_raw.jsonl"))
    first = out["crawl_a.jsonl:1"]
    assert (first["shot_size"], first["location"], first["caption_ko"]) == \
        ("full", "outdoor", "남자가 강을 따라 걷는다!")
    assert first["tags_ko"] == ["풀샷", "실외"] and first["source_url"] == "https://example.org/1"
    assert out["crawl_a.jsonl:4"]["shot_size"] == "medium"
    assert out["crawl_b.jsonl:2"]["shot_size"] is None
    summary = json.loads((seed_folder / "metadata_clean.run.json").read_text(encoding="utf-8"))["summary"]
    assert summary["rejected"] == 0


def test_tags_stage_rejects_and_is_idempotent(seed_folder, tmp_path):
    raw = tmp_path / "in.jsonl"
    lines = read_jsonl(seed_folder / "metadata_raw.jsonl")
    lines.append({"id": "x1", "image": "c.png", "tags_ko": ["클로즈업", "롱샷"]})
    lines.append({"id": "x2", "image": "c.png", "caption_ko": ["not", "text"]})
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\r\n{broken\r\n"
    raw.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))  # BOM + CRLF, as Windows tools write it
    first = tmp_path / "clean.jsonl"
    proc = run_front_door(TAGS, "--input", raw, "--output", first, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reasons = {(e.get("record") or {}).get("id", e["reason"]): e["reason"]
               for e in read_jsonl(tmp_path / "clean.rejects.jsonl")}
    assert reasons == {"x1": "conflicting_labels", "x2": "wrong_type", "malformed_json": "malformed_json"}
    second = tmp_path / "clean2.jsonl"
    proc = run_front_door(TAGS, "--input", first, "--output", second, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert second.read_text(encoding="utf-8") == first.read_text(encoding="utf-8")


def test_empty_input_keeps_good_output(tmp_path):
    good = tmp_path / "metadata_clean.jsonl"
    good.write_text('{"id": "a"}\n', encoding="utf-8")
    (tmp_path / "metadata_raw.jsonl").write_text("\n\n", encoding="utf-8")
    proc = run_front_door(TAGS, "--input", "metadata_raw.jsonl", "--output", "metadata_clean.jsonl", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("01_preprocess_tags.py: error: input metadata_raw.jsonl is empty: "
                                   "no records to clean (the output was left as it was)")
    assert good.read_text(encoding="utf-8") == '{"id": "a"}\n'
    proc = run_front_door(TAGS, "--input", "nope.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "01_preprocess_tags.py: error: input not found: nope.jsonl"


def test_sample_data_tags_match_ground_truth(sample_data, tmp_path):
    """collect -> 01 (the seed's command line) -> 02 on the sample set: only the planted conflict is
    rejected here, and every label read from the tags is the one the generator planted."""
    truth = sample_truth(sample_data)
    folder = collect_sample(sample_data, tmp_path)
    seed_layout(tmp_path, TAGS, TRANSLATE)
    proc = run_front_door("01_preprocess_tags.py", "--input", "metadata_raw.jsonl", "--output", "metadata_clean.jsonl",
                      cwd=folder)
    assert proc.returncode == 0, proc.stderr
    rejects = read_jsonl(folder / "metadata_clean.rejects.jsonl")
    planted = {f"{f['source']}:{f['line']}": f["expected_reason"] for f in truth["faults"] if f["stage"] == "tags"}
    assert {e["record"]["raw_ref"]: e["reason"] for e in rejects} == planted
    clean = read_jsonl(folder / "metadata_clean.jsonl")
    assert len(clean) + len(rejects) == len(read_jsonl(folder / "metadata_raw.jsonl"))
    for record in clean:
        assert truth["records"][record["raw_ref"]]["expected"] == "kept"
        # the tags of a kept record include those merged in from its duplicates
        members = [truth["records"][key] for key in [record["raw_ref"], *record.get("merged_from", [])]]
        for name in ("shot_size", "angle", "location"):
            named = {m[f"tag_{name}"] for m in members} - {None}
            assert record[name] == (named.pop() if named else None), (record["raw_ref"], name)
    proc = run_front_door("02_translate.py", "--input", "metadata_clean.jsonl", "--output", "metadata_translated.jsonl",
                      cwd=folder)
    assert proc.returncode == 0, proc.stderr
    translated = read_jsonl(folder / "metadata_translated.jsonl")
    assert len(translated) == len(clean) and read_jsonl(folder / "metadata_translated.rejects.jsonl") == []
    for record in translated:
        words = VOCAB.prompt_words(record["shot_size"], record["angle"], record["location"])
        assert record["text"] == ", ".join(words)
