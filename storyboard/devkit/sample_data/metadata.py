"""The raw metadata of the sample set: canonical titles, two overlapping crawls, and the planted faults.

Every record is written the way crawlers really write them: titles spelled many ways, Korean captions
with HTML remnants and emoji, tags as a list or as one comma-separated string in the vocabulary's real
Korean spellings (spacing varied), fields the pipeline does not know. Exactly five records are
rejectable, one per fault (see ``FAULTS``); everything else must survive every stage.

Reading order matters for which copy of a duplicate is kept: a stage reads ``crawl_a.jsonl`` before
``crawl_b.jsonl`` (sorted names) and keeps the first, so every planted duplicate sits in crawl_b.
"""
from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from storyboard.core.vocabulary import Vocabulary

CRAWLS = ("crawl_a.jsonl", "crawl_b.jsonl")
# fault name -> (reject reason, stage that rejects it)
FAULTS = {
    "duplicate_record": ("duplicate", "collect"),
    "duplicate_image": ("duplicate", "collect"),
    "missing_image": ("missing_image", "collect"),
    "malformed_json": ("malformed_json", "collect"),
    "conflicting_labels": ("conflicting_labels", "tags"),
}


@dataclass(frozen=True)
class Film:
    title: str            # canonical (English) title
    original: str         # Korean title
    year: int
    aliases: tuple[str, ...]
    folder: str           # stills folder under images/
    still_name: str       # file stem pattern of a still; {n} counts from 1
    conti_name: str       # path pattern of a storyboard frame under images/
    director: str


FILMS = (
    Film("Parasite", "기생충", 2019, ("Gisaengchung", "패러사이트"), "기생충", "장면 {n:02d}",
         "conti/기생충_콘티_{n:02d}", "봉준호"),
    Film("Oldboy", "올드보이", 2003, ("Old Boy", "Oldeuboi"), "oldboy", "oldboy_still_{n:03d}",
         "conti/oldboy_conti_{n:02d}", "박찬욱"),
    Film("Memories of Murder", "살인의 추억", 2003, ("Salinui chueok",), "살인의 추억", "스틸 {n}",
         "conti/살인의 추억 콘티 {n}", "봉준호"),
    Film("The Host", "괴물", 2006, ("Gwoemul",), "The Host", "the-host-{n:02d}", "conti/the_host_sb{n:02d}", "봉준호"),
    Film("The Handmaiden", "아가씨", 2016, ("Agassi",), "아가씨", "아가씨_{n:02d}",
         "conti/아가씨 콘티 {n:02d}", "박찬욱"),
    Film("Burning", "버닝", 2018, ("Beoning",), "Burning (2018)", "IMG_10{n:02d}",
         "conti/burning_conti_{n:02d}", "이창동"),
)
FILM_BY_TITLE = {f.title: f for f in FILMS}


def titles_csv() -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["title", "original_title", "year", "aliases"])
    for film in FILMS:
        writer.writerow([film.title, film.original, film.year, "|".join((film.original,) + film.aliases)])
    return buffer.getvalue().encode("utf-8")


def _fullwidth(text: str) -> str:
    """ASCII letters, digits and brackets as their full-width forms (NFKC undoes this)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


def title_variant(film: Film, k: int) -> str:
    """The k-th way a crawl spells the title; cycling k makes every spelling appear."""
    spaced = film.original if " " in film.original else film.title
    variants = [
        film.original,
        f"{film.original} ({film.year})",
        film.title,
        f"{film.title} ({film.year})",
        spaced.replace(" ", "  ") if " " in spaced else f"{film.original}  ({film.year})",
        _fullwidth(film.title) if k % 2 else f"{film.original}{_fullwidth(f'({film.year})')}",
        film.original.replace(" ", "") if " " in film.original else film.title.lower(),
        f" {film.original} ",
    ]
    return variants[k % len(variants)]


def title_key(text: str) -> str:
    """The loosest sensible comparison key: NFKC, case-folded, year and non-word characters dropped.
    Every planted spelling reduces to the key of its canonical title (the tests check this)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\(\s*\d{4}\s*\)", "", text)
    return re.sub(r"[\W_]+", "", text)


SUBJECTS = ["여자가", "그녀가", "주인공이", "한 사람이", "그 여자가"]
ACTIONS = ["걷는다", "서 있다", "누군가를 바라본다", "뒤를 돌아본다", "전화를 받는다", "미소 짓는다", "생각에 잠긴다",
           "무언가를 기다린다"]
PLACES = {  # scene feature -> where the caption says it happens
    "river": "강을 따라", "road": "길 위에서", "tree": "나무 아래에서", "building": "건물 앞에서",
    "sky": "하늘 아래에서",
    "ground": "들판에서", "window": "창가에서", "door": "문 앞에서", "sofa": "소파 옆에서", "table": "식탁 옆에서",
    "lamp": "스탠드 불빛 아래에서", "cabinet": "방 안에서", "ceiling": "천장 아래에서", "rug": "카펫 위에서",
    "floor": "방 안에서",
}
WHEN = ["", "", "비 오는 밤, ", "이른 아침 ", "해 질 무렵 ", "늦은 오후 "]
EMOJI = ["😢", "🎬", "✨", "🔥", "👀"]
EXTRA_TAGS = ["명장면", "스틸컷", "고화질", "영화", "한국영화", "#명장면", "배경화면"]


def caption(rng: np.random.Generator, features: list[str], film: Film, kind: str) -> str:
    """A Korean caption of what is in the picture, with the noise real captions carry."""
    places = [PLACES[f] for f in features if f in PLACES] or ["어딘가에서"]
    place = places[int(rng.integers(len(places)))]
    action = "걷는다" if place == "강을 따라" else str(rng.choice(ACTIONS))
    text = f"{rng.choice(WHEN)}{rng.choice(SUBJECTS)} {place} {action}"
    noise = rng.random(6)
    if kind == "conti":
        text = f"콘티 - {text}"
    if noise[0] < 0.25:
        text = f"[{'콘티' if kind == 'conti' else '스틸컷'}] {text}"
    if noise[1] < 0.2:
        text = text.replace(", ", " &amp; ", 1) if ", " in text else f"{text} &amp; 긴장감"
    if noise[2] < 0.2:
        text = f"{text}<br>{film.original}의 한 장면"
    if noise[3] < 0.25:
        text += str(rng.choice(["!!!", "...", "??", "!!"]))
    if noise[4] < 0.2:
        text += " " + str(rng.choice(EMOJI))
    if noise[5] < 0.3:
        text += f" #{film.original.replace(' ', '')}"
    return text


def _respace(rng: np.random.Generator, spelling: str) -> str:
    """Spacing as people type it: 풀샷 / 풀 샷, 익스트림 클로즈업 / 익스트림클로즈업."""
    if " " in spelling and rng.random() < 0.4:
        return spelling.replace(" ", "")
    if " " not in spelling and len(spelling) >= 3 and rng.random() < 0.3:
        cut = len(spelling) - 1 if spelling.endswith(("샷", "숏")) else 2
        return spelling[:cut] + " " + spelling[cut:]
    return spelling


def spell(rng: np.random.Generator, vocab: Vocabulary, kind: str, key: str, abbrev_rate: float) -> str:
    """One tag for a label, in one of its real spellings; checked against the vocabulary's matcher."""
    term = vocab.get(kind, key)
    if term.abbrev and rng.random() < abbrev_rate:
        return str(rng.choice(term.abbrev))
    base = str(rng.choice(term.ko))
    spelled = _respace(rng, base)
    return spelled if vocab.lookup(spelled, kind) is term else base


def tags(rng: np.random.Generator, vocab: Vocabulary, labels: dict, film: Film) -> list[str]:
    """Tags naming the labels that are not None, plus tags no label stage should care about."""
    out = []
    if labels["shot_size"]:
        out.append(spell(rng, vocab, "shot_size", labels["shot_size"], 0.2))
    if labels["angle"]:
        out.append(spell(rng, vocab, "angle", labels["angle"], 0.0))
    if labels["location"]:
        out.append(spell(rng, vocab, "location", labels["location"], 0.15))
    extras = [film.original, film.director] + EXTRA_TAGS
    out += [str(t) for t in rng.choice(extras, size=int(rng.integers(1, 4)), replace=False)]
    return [out[int(i)] for i in rng.permutation(len(out))]


def tags_field(rng: np.random.Generator, tag_list: list[str], crawl: str):
    """crawl_a mostly sends a JSON list, crawl_b mostly one comma-separated string."""
    as_string = rng.random() < (0.2 if crawl == CRAWLS[0] else 0.8)
    return str(rng.choice([", ", ",", " , "])).join(tag_list) if as_string else list(tag_list)
