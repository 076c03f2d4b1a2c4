"""Film titles: the canonical list (CSV or JSONL) and matching a crawled title onto it.

The list has one film per row: ``title`` (canonical, usually English), ``original_title`` (Korean),
``year`` and ``aliases`` (``|``-separated in CSV, a list or a ``|`` string in JSONL). Any of the
spellings of a film may match.

Matching a crawled title (``TitleIndex.match``):
1. *keys*: the title is normalised (``textnorm.normalize``, casefold), a year in brackets
   (``기생충 (2019)``, ``[2019]``) is taken out and kept, punctuation dropped and spaces removed, so
   ``살인의  추억``, ``살인의추억`` and ``살인의 추억!`` share the key ``살인의추억``. A second key also drops
   any other bracketed part (``기생충 (흑백판)`` -> ``기생충``).
2. *exact*: a key equal to a spelling's key matches with score 100.
3. *fuzzy*: otherwise rapidfuzz's ``fuzz.ratio`` against every spelling's key, compared on Hangul
   decomposed into jamo (NFD), so one wrong vowel costs one letter, not a whole syllable. The best
   film must reach ``min_score``.
4. *year*: when the crawled title carries a year, candidates of another year are dropped as long as
   one of the right year remains (``Oldboy (2013)`` picks the remake).
5. *ambiguity*: two different films within ``margin`` points of the best (or two films sharing an
   exact key, with no year to choose) make the title ambiguous; nothing is guessed.
"""
from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rapidfuzz import fuzz, process

from storyboard.core.cli import UserError
from storyboard.core.records import read_jsonl
from storyboard.core.textnorm import normalize

DEFAULT_MIN_SCORE = 85.0  # fuzzy matches below this are unmatched
DEFAULT_MARGIN = 3.0  # two films this close to the best make a title ambiguous
TITLE_COLUMNS = ("title", "original_title", "year", "aliases")

_YEAR_IN_BRACKETS = re.compile(r"[(\[{]\s*((?:18|19|20)\d\d)\s*[)\]}]")
_BRACKETED = re.compile(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}|【[^】]*】|〈[^〉]*〉|《[^》]*》|<[^<>]*>")
_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class TitleEntry:
    """One film of the canonical list. ``line`` is where it was read, for error messages."""

    title: str
    original_title: str | None = None
    year: int | None = None
    aliases: tuple[str, ...] = ()
    line: int = 0

    @property
    def spellings(self) -> tuple[str, ...]:
        return tuple(s for s in (self.title, self.original_title, *self.aliases) if s)

    def describe(self, score: float | None = None) -> dict:
        out = {"title": self.title, "original_title": self.original_title, "year": self.year}
        if score is not None:
            out["score"] = round(score, 1)
        return out


@dataclass
class TitleMatch:
    """The outcome for one crawled title: ``how`` is exact, fuzzy, unmatched or ambiguous."""

    how: str
    entry: TitleEntry | None = None
    score: float = 0.0
    candidates: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.entry is not None


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------
def split_year(text: str) -> tuple[str, int | None]:
    """``"기생충 (2019)"`` -> ``("기생충", 2019)``; the last bracketed year wins."""
    years = _YEAR_IN_BRACKETS.findall(text)
    return _YEAR_IN_BRACKETS.sub(" ", text), (int(years[-1]) if years else None)


def title_keys(text: str) -> tuple[str, ...]:
    """The exact-match keys of a title, most specific first (see the module docstring)."""
    text, _ = split_year(normalize(text).casefold())
    keys = [_NOT_WORD.sub("", text), _NOT_WORD.sub("", _BRACKETED.sub(" ", text))]
    return tuple(k for k in dict.fromkeys(keys) if k)


def _fuzzy_form(key: str) -> str:
    return unicodedata.normalize("NFD", key)


# --------------------------------------------------------------------------------------------
# Index and matching
# --------------------------------------------------------------------------------------------
class TitleIndex:
    """All spellings of all films, keyed for exact lookups and for rapidfuzz."""

    def __init__(self, entries: Iterable[TitleEntry], min_score: float = DEFAULT_MIN_SCORE,
                 margin: float = DEFAULT_MARGIN):
        self.entries = list(entries)
        self.min_score = float(min_score)
        self.margin = float(margin)
        self._exact: dict[str, list[int]] = {}
        for i, entry in enumerate(self.entries):
            for spelling in entry.spellings:
                for key in title_keys(spelling):
                    owners = self._exact.setdefault(key, [])
                    if i not in owners:
                        owners.append(i)
        self._fuzzy_keys = list(self._exact)
        self._fuzzy_forms = [_fuzzy_form(k) for k in self._fuzzy_keys]
        self._cache: dict[str, TitleMatch] = {}

    def match(self, title: str) -> TitleMatch:
        """Match one crawled title; results are cached per distinct title."""
        found = self._cache.get(title)
        if found is None:
            found = self._cache[title] = self._match(title)
        return found

    def _match(self, title: str) -> TitleMatch:
        _, year = split_year(normalize(title))
        keys = title_keys(title)
        if not keys:
            return TitleMatch("unmatched")
        for key in keys:
            owners = self._exact.get(key)
            if owners:
                scored = dict.fromkeys(owners, 100.0)
                return self._decide(self._by_year(scored, year), "exact")
        scored: dict[int, float] = {}
        for key in keys:
            for _, score, pos in process.extract(_fuzzy_form(key), self._fuzzy_forms, scorer=fuzz.ratio,
                                                 limit=None, score_cutoff=self.min_score - self.margin):
                for i in self._exact[self._fuzzy_keys[pos]]:
                    scored[i] = max(scored.get(i, 0.0), float(score))
        match = self._decide(self._by_year(scored, year), "fuzzy")
        if match.how == "unmatched" and not match.candidates:
            match.candidates = self._nearest(keys[-1])
        return match

    def _nearest(self, key: str, limit: int = 3) -> list[dict]:
        """The closest films below the cut-off, so a reject shows what was weighed."""
        best: dict[int, float] = {}
        for _, score, pos in process.extract(_fuzzy_form(key), self._fuzzy_forms, scorer=fuzz.ratio, limit=limit * 3):
            for i in self._exact[self._fuzzy_keys[pos]]:
                best[i] = max(best.get(i, 0.0), float(score))
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [self.entries[i].describe(s) for i, s in ranked]

    def _by_year(self, scored: dict[int, float], year: int | None) -> dict[int, float]:
        if year is None:
            return scored
        same = {i: s for i, s in scored.items() if self.entries[i].year == year}
        return same or scored

    def _decide(self, scored: dict[int, float], how: str) -> TitleMatch:
        ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))
        candidates = [self.entries[i].describe(s) for i, s in ranked[:5]]
        if not ranked or ranked[0][1] < self.min_score:
            return TitleMatch("unmatched", score=ranked[0][1] if ranked else 0.0, candidates=candidates)
        best_i, best = ranked[0]
        rivals = [i for i, s in ranked[1:] if s >= best - self.margin]
        if rivals:
            return TitleMatch("ambiguous", score=best, candidates=candidates)
        return TitleMatch(how, self.entries[best_i], best, candidates)


# --------------------------------------------------------------------------------------------
# Loading the list
# --------------------------------------------------------------------------------------------
def _entry_from_row(row: dict, file_name: str, line: int) -> TitleEntry:
    """Validate one row; raises ``UserError`` naming the file and line."""
    where = f"{file_name} line {line}"

    def text(name: str) -> str | None:
        value = row.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise UserError(f"{where}: {name!r} should be text, got {type(value).__name__}")
        return normalize(value) or None

    title = text("title")
    if not title:
        raise UserError(f"{where}: the canonical 'title' is empty")
    year_value = row.get("year")
    year = None
    if isinstance(year_value, int) and not isinstance(year_value, bool):
        year = year_value
    elif isinstance(year_value, str) and normalize(year_value):
        if not re.fullmatch(r"\d{4}", normalize(year_value)):
            raise UserError(f"{where}: year {year_value!r} is not a four-digit year")
        year = int(normalize(year_value))
    elif year_value not in (None, ""):
        raise UserError(f"{where}: year {year_value!r} is not a four-digit year")
    aliases = row.get("aliases") or []
    if isinstance(aliases, str):
        aliases = aliases.split("|")
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f"{where}: 'aliases' should be a list of text or a '|'-separated string")
    aliases = tuple(a for a in (normalize(a) for a in aliases) if a)
    return TitleEntry(title, text("original_title"), year, aliases, line=line)


def _csv_rows(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames
            if not header:
                raise UserError(f"titles file {path} is empty")
            header = [h.strip() for h in header]
            reader.fieldnames = header
            if "title" not in header:
                raise UserError(f"titles file {path}: no 'title' column in the header (found: {', '.join(header)})")
            for row in reader:
                where = f"{path.name} line {reader.line_num}"
                if None in row:
                    raise UserError(f"{where}: {len(header) + len(row[None])} fields, the header has {len(header)}")
                if all(v in (None, "") or not v.strip() for v in row.values()):
                    continue
                yield reader.line_num, row
        except csv.Error as exc:
            raise UserError(f"titles file {path} line {reader.line_num}: not valid CSV ({exc})") from None
        except UnicodeDecodeError:
            raise UserError(f"titles file {path} is not UTF-8 text") from None


def _jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    for item in read_jsonl(path):
        if item.error:
            raise UserError(f"titles file {path}: {item.error.detail}")
        yield item.line, item.record


def load_titles(path: str | Path) -> list[TitleEntry]:
    """Read the canonical list; a bad row is one clear ``UserError`` (file, line, what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"titles file not found: {path}")
    rows = _jsonl_rows(path) if path.suffix.lower() in (".jsonl", ".json") else _csv_rows(path)
    entries: list[TitleEntry] = []
    seen: dict[tuple[str, int | None], int] = {}
    for line, row in rows:
        entry = _entry_from_row(row, path.name, line)
        ident = (entry.title.casefold(), entry.year)
        if ident in seen:
            raise UserError(f"{path.name} line {line}: {entry.title!r} ({entry.year}) is already listed "
                            f"on line {seen[ident]}")
        seen[ident] = line
        entries.append(entry)
    if not entries:
        raise UserError(f"titles file {path} holds no titles")
    return entries
