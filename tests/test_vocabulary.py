"""Shot vocabulary: every Korean variant, English spellings, abbreviations, tokens, user extension."""
import json

import pytest

from storyboard.cli import UserError
from storyboard.vocabulary import builtin_table, load_vocabulary, normalize_text

VOCAB = load_vocabulary()

# The variants people really type (issue 2), each with the label it must map to.
TYPED = {
    "풀샷": "full", "풀 샷": "full", "풀숏": "full", "풀 숏": "full", "풀쇼트": "full", "전신 샷": "full",
    "미디엄샷": "medium", "미디엄 숏": "medium", "미디엄": "medium", "웨이스트 샷": "medium",
    "바스트샷": "medium_close_up", "바스트 숏": "medium_close_up", "미디엄 클로즈업": "medium_close_up",
    "클로즈업": "close_up", "클로즈 업": "close_up", "클로즈업 샷": "close_up",
    "익스트림 클로즈업": "extreme_close_up", "익스트림클로즈업": "extreme_close_up",
    "롱샷": "long", "롱 숏": "long", "와이드 샷": "long",
    "익스트림 롱샷": "extreme_long", "익스트림 롱 숏": "extreme_long",
    "니샷": "medium_long", "미디엄 롱샷": "medium_long",
    "FS": "full", "MS": "medium", "CU": "close_up", "ECU": "extreme_close_up", "LS": "long",
    "MCU": "medium_close_up", "ELS": "extreme_long", "MLS": "medium_long",
    "full shot": "full", "Full Shot": "full", "close up": "close_up", "close-up": "close_up",
    "closeup": "close_up", "medium shot": "medium", "extreme long shot": "extreme_long",
    "ＦＳ": "full", "<fs_trg>": "full", "<ms_trg>": "medium", "full_shot": "full",
}
ANGLES = {
    "아이레벨": "eye_level", "아이 레벨": "eye_level", "눈높이": "eye_level", "Eye level": "eye_level",
    "하이앵글": "high", "하이 앵글": "high", "부감": "high", "high angle": "high",
    "로우앵글": "low", "로우 앵글": "low", "앙각": "low", "low-angle": "low",
    "조감": "birds_eye", "수직 부감": "birds_eye", "bird's-eye view": "birds_eye", "bird’s eye view": "birds_eye",
    "웜즈아이뷰": "worms_eye", "worm's eye view": "worms_eye", "더치앵글": "dutch", "dutch angle": "dutch",
}
LOCATIONS = {"실내": "indoor", "실외": "outdoor", "야외": "outdoor", "옥외": "outdoor", "INT.": "indoor",
             "EXT": "outdoor", "outdoor": "outdoor", "Indoors": "indoor"}


@pytest.mark.parametrize("text,key", sorted(TYPED.items()))
def test_shot_size_variants(text, key):
    term = VOCAB.lookup(text)
    assert term is not None and (term.kind, term.key) == ("shot_size", key)


@pytest.mark.parametrize("text,key", sorted(ANGLES.items()))
def test_angle_variants(text, key):
    term = VOCAB.lookup(text)
    assert term is not None and (term.kind, term.key) == ("angle", key)


@pytest.mark.parametrize("text,key", sorted(LOCATIONS.items()))
def test_location_variants(text, key):
    term = VOCAB.lookup(text)
    assert term is not None and (term.kind, term.key) == ("location", key)


def test_every_listed_spelling_maps_to_its_own_term():
    """Every spelling in the table, and its spaced / shot-suffix variants, maps back to its term."""
    for term in VOCAB.terms:
        for spelling in (*term.ko, *term.en, *term.abbrev, term.name, term.token or term.name):
            assert VOCAB.lookup(spelling) == term, spelling
            assert VOCAB.lookup(spelling, kind=term.kind) == term, spelling
        for ko in term.ko:
            spaced = " ".join(ko.replace(" ", ""))  # 풀샷 -> 풀 샷
            assert VOCAB.lookup(spaced) == term, spaced


def test_lookup_rejects_non_terms():
    for text in ["", "남자", "medium-sized dog", "fs", "LA", None, 3, ["풀샷"]]:
        assert VOCAB.lookup(text) is None, text


def test_find_in_free_text_longest_first():
    found = VOCAB.find("[스틸컷] 미디엄 클로즈업, 로우 앵글, 실내!! 남자가 풀 샷으로 걷는다 #EXT. MS")
    assert [(m.term.kind, m.term.key) for m in found] == [
        ("shot_size", "medium_close_up"), ("angle", "low"), ("location", "indoor"),
        ("shot_size", "full"), ("location", "outdoor"), ("shot_size", "medium"),
    ]
    assert [m.term.key for m in VOCAB.find("익스트림 롱샷, 수직 부감", kind="shot_size")] == ["extreme_long"]
    # Lowercase abbreviations and substrings of English words are not terms.
    assert VOCAB.find("programs ms word, fsck, closeups") == []


def test_tokens_and_initializers():
    tokens = VOCAB.trigger_tokens
    assert len(tokens) == len(VOCAB.shot_sizes) == 8
    assert tokens["<fs_trg>"].initializer == "full shot"
    assert tokens["<ms_trg>"].initializer == "medium shot"
    assert tokens["<cu_trg>"].initializer == "close-up"
    assert VOCAB.get("shot_size", "full").token_stem == "fs_trg"
    assert VOCAB.prompt_words("full", "eye_level", "outdoor") == ["full shot", "eye level", "outdoor"]
    assert [t.key for t in VOCAB.shot_sizes][0] == "extreme_close_up"
    assert [t.key for t in VOCAB.shot_sizes][-1] == "extreme_long"


def test_normalize_text():
    assert normalize_text("  ＦＳ\u3000풀   샷 ") == "FS 풀 샷"


def test_user_file_extends(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({
        "shot_sizes": [
            {"key": "full", "ko": ["온몸샷"]},
            {"key": "over_shoulder", "name": "over-the-shoulder shot", "token": "<ots_trg>",
             "initializer": "over the shoulder", "ko": ["오버숄더"], "abbrev": ["OTS"]},
        ]
    }, ensure_ascii=False), encoding="utf-8")
    vocab = load_vocabulary(path)
    assert vocab.lookup("온몸 샷").key == "full"
    assert vocab.lookup("풀샷").key == "full"  # built-in spellings kept
    assert vocab.lookup("OTS").token == "<ots_trg>"
    assert len(vocab.trigger_tokens) == 9


def test_user_file_replaces(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({
        "replace": True,
        "shot_sizes": [{"key": "wide", "token": "<w_trg>", "initializer": "wide shot", "ko": ["와이드"]}],
    }), encoding="utf-8")
    vocab = load_vocabulary(path)
    assert [t.key for t in vocab.shot_sizes] == ["wide"]
    assert vocab.lookup("풀샷") is None


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('["a"]', "JSON object"),
    ('{"shot_sizes": [{"key": "x", "token": "<fs_trg>", "initializer": "x"}]}', "used by both"),
    ('{"shot_sizes": [{"key": "x", "initializer": "x"}]}', "needs a token"),
    ('{"angles": [{"key": "x", "ko": ["풀샷"]}]}', "names both"),
])
def test_user_file_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        load_vocabulary(path)
    assert "\n" not in str(err.value)


def test_missing_user_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_vocabulary(tmp_path / "nope.json")


def test_builtin_table_is_the_one_source():
    table = builtin_table()
    assert [e["key"] for e in table["shot_sizes"]] == [t.key for t in VOCAB.shot_sizes]
