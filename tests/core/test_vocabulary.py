"""Shot vocabulary: every Korean variant, English spellings, abbreviations, tokens, user extension."""
import json
import random
import re

import pytest

from storyboard.core.cli import UserError
from storyboard.core.vocabulary import KINDS, TermMatch, builtin_table, load_vocabulary, normalize_text

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
    ('{"not_terms": "조감독"}', "'not_terms' must be a list"),
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


# -- the first-character dispatch of Vocabulary.find / lookup against the plain full-regex scan -----------

def reference_find(vocab, text, kind=None):
    """The scan before the dispatch: the one big alternation tried at every position (``finditer``)."""
    matcher = vocab._matchers[kind]
    return [TermMatch(matcher.groups[m.lastgroup], m.start(), m.end(), m.group())
            for m in matcher.pattern.finditer(normalize_text(text))]


def reference_lookup(vocab, text, kind=None):
    """``lookup`` before the dispatch: keys and tokens, else a full match of the big alternation."""
    norm = normalize_text(text)
    for term in vocab.terms:
        if (kind is None or term.kind == kind) and norm in (term.key, term.token):
            return term
    matcher = vocab._matchers[kind]
    match = matcher.pattern.fullmatch(norm)
    return matcher.groups[match.lastgroup] if match else None


# Characters the regex engine folds onto ASCII letters (İ and ı match (?i:i)) or that NFKC maps to them.
ODD_CASE = {"i": ["İ", "ı"], "k": ["\u212a"], "s": ["\u017f"], "f": ["Ｆ"], "c": ["ｃ"]}
KOREAN_FILLER = ["남자가", "가족이", "사람", "아이가", "수", "기", "내", "하는", "전", "부", "정", "상", "로", "원",
                 "으로", "에서", "바다", "미소", "풀밭", "샷", "숏", "쇼", "트", "클", "근", "실", "야", "옥", "니"]
ENGLISH_FILLER = ["the", "man", "closet", "mid", "medium", "wide", "ms", "fs", "cu", "Int", "ext", "high", "low",
                  "eye", "bird", "birds", "worm", "over", "top", "Dutch", "indoorsy", "exteriors", "shot", "up"]
PUNCT = ["", " ", "  ", ", ", ".", "-", "_", "#", "[", "]", "(", ")", "!!", "\u3000", "\t", "/", "'", "’", "0", "7"]


def _variants(vocab, rng):
    """Every spelling of every term, with spacing / suffix / case variants and near-misses."""
    for term in vocab.terms:
        for ko in term.ko:
            yield ko
            yield " ".join(ko.replace(" ", ""))
            for a, b in (("샷", "숏"), ("샷", "쇼트"), ("숏", "쇼 트"), ("숏", "샷")):
                yield ko.replace(a, b)
            yield ko + "으로"
            yield "대" + ko
            yield ko[:-1]
        for en in (term.name, *term.en):
            words = en.replace("-", " ").split()
            for sep in (" ", "-", "_", "", "  ", "- "):
                yield sep.join(words)
            yield en.upper()
            yield en.title()
            yield "".join(c.upper() if rng.random() < 0.5 else c for c in en)
            yield en.replace("'", "’")
            yield en.replace("'", "")
            yield "x" + en
            yield en + "s"
            yield en + "9"
            yield en[:-1]
            first = en[0].lower()
            for odd in ODD_CASE.get(first, []):
                yield odd + en[1:]
        for ab in term.abbrev:
            yield from (ab, ab + ".", ab.lower(), ab.capitalize(), "x" + ab, ab + "s", ab + "2",
                        "".join(f"{c}." for c in ab))
        if term.token:
            yield from (term.token, term.token.upper(), term.token[1:], "<" + term.token)


def generated_texts(vocab, count, seed):
    rng = random.Random(seed)
    pieces = list(_variants(vocab, rng)) + KOREAN_FILLER + ENGLISH_FILLER
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 8)):
            parts.append(rng.choice(pieces))
            parts.append(rng.choice(PUNCT))
        yield "".join(parts)


def assert_same_as_full_scan(vocab, texts, kinds):
    for kind in kinds:
        matcher = vocab._matchers[kind]
        first_of = {f"t{i}": regex for regex, spellings in matcher._firsts.values() for i in spellings}
        for text in texts:
            norm = normalize_text(text)
            expected = list(matcher.pattern.finditer(norm))
            # The same spelling (named group) at the same span, not only the same term.
            assert [(m.lastgroup, m.span()) for m in matcher.finditer(norm)] == \
                [(m.lastgroup, m.span()) for m in expected], (text, kind)
            assert vocab.find(text, kind) == reference_find(vocab, text, kind), (text, kind)
            assert vocab.lookup(text, kind) == reference_lookup(vocab, text, kind), (text, kind)
            if matcher._finder is not None:  # each match starts with a character its spelling's first claims
                for m in expected:
                    assert first_of[m.lastgroup].fullmatch(m.group()[0]), (text, m)


def test_find_matches_full_scan_on_generated_text():
    texts = list(generated_texts(VOCAB, 2500, seed=1))
    assert sum(bool(reference_find(VOCAB, t)) for t in texts) > 2000  # the texts do hold terms
    assert_same_as_full_scan(VOCAB, texts, [None])
    assert_same_as_full_scan(VOCAB, texts[:400], list(KINDS.values()))


def test_find_matches_full_scan_on_every_single_variant():
    rng = random.Random(2)
    pieces = list(_variants(VOCAB, rng))
    assert_same_as_full_scan(VOCAB, pieces + [f"[{p}]" for p in pieces] + [f"{p} {p}" for p in pieces], [None])


def _user_vocabulary(tmp_path, extra):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(extra, ensure_ascii=False), encoding="utf-8")
    return load_vocabulary(path)


USER_TERMS = {"shot_sizes": [
    {"key": "full", "ko": ["온몸샷", "샷건 풀"], "en": ["2-shot wide", "insert shot"], "abbrev": ["FS2"]},
    {"key": "over_shoulder", "name": "over-the-shoulder shot", "token": "<ots_trg>", "initializer": "over shoulder",
     "ko": ["오버숄더", "OTS샷", "숄더 숏"], "en": ["ots", "İnsert close"], "abbrev": ["OTS", "O/S"]},
], "locations": [
    {"key": "studio", "ko": ["스튜디오", "세트장"], "en": ["studio", "sound stage"], "abbrev": ["STU"]},
]}


def test_find_matches_full_scan_on_user_vocabulary(tmp_path):
    vocab = _user_vocabulary(tmp_path, USER_TERMS)
    assert vocab._matchers[None]._finder is not None  # the dispatch is in use
    texts = list(generated_texts(vocab, 1500, seed=3))
    assert_same_as_full_scan(vocab, texts, [None])
    assert_same_as_full_scan(vocab, texts[:300], list(KINDS.values()))
    assert [m.term.key for m in vocab.find("샷 건 풀, İNSERT SHOT, O/S.")] == ["full", "full", "over_shoulder"]


def test_spelling_without_a_first_character_falls_back_to_the_full_scan(tmp_path):
    """A leading apostrophe is optional, so such a spelling has no single first character."""
    vocab = _user_vocabulary(tmp_path, {"angles": [{"key": "tilt", "en": ["'til shot", "tilt"], "ko": ["틸트"]}]})
    assert vocab._matchers[None]._finder is None and vocab._matchers["shot_size"]._finder is not None
    assert [m.text for m in vocab.find("til shot, 'til shot")] == ["til shot", "'til shot"]
    assert_same_as_full_scan(vocab, list(generated_texts(vocab, 300, seed=4)), [None, "shot_size"])


def test_not_terms_block_what_they_contain_and_a_user_file_adds_to_them(tmp_path):
    """조감독 (assistant director) holds 조감 (bird's-eye view): the built-in not_terms block it, a user
    file adds its own, and without the list (a replacing file that has none) the spelling is found."""
    assert [m.term.key for m in VOCAB.find("조감독이 조감으로 찍었다")] == ["birds_eye"]
    assert [m.term.key for m in VOCAB.find("they close up shop")] == ["close_up"]
    (tmp_path / "extend").mkdir()
    (tmp_path / "replace").mkdir()
    extended = _user_vocabulary(tmp_path / "extend", {"not_terms": ["close up shop"]})
    assert extended.find("they close up shop") == [] and extended.find("조감독") == []
    assert [m.term.key for m in extended.find("a close up, then they close up shop")] == ["close_up"]
    angles_only = {"replace": True, "angles": [{"key": "birds_eye", "ko": ["조감"]}]}
    assert [m.term.key for m in _user_vocabulary(tmp_path / "replace", angles_only).find("조감독")] == ["birds_eye"]


@pytest.mark.parametrize("user", [False, True])
def test_finder_is_exactly_the_union_of_first_characters(tmp_path, user):
    """Over every code point: the merged finder finds the characters some spelling's own first matches."""
    vocab = _user_vocabulary(tmp_path, USER_TERMS) if user else VOCAB
    everything = "".join(map(chr, range(0x110000)))
    for kind in (None, *KINDS.values()):
        matcher = vocab._matchers[kind]
        union = "|".join(regex for regex in matcher._firsts)
        assert set(matcher._finder.findall(everything)) == set(re.findall(union, everything)), kind
    assert {"İ", "ı", "I", "i"} <= set(vocab._matchers[None]._finder.findall(everything))
