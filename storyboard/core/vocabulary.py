"""The shot vocabulary: shot sizes, camera angles, locations, their Korean and English spellings,
and each shot size's trigger token and initializer words.

The built-in table is ``storyboard/core/data/vocabulary.json``; a user's JSON file of the same layout
extends it (terms merged by key) or replaces it (``"replace": true``). Tag cleaning, translation,
clustering, training, inference and validation all read it through ``load_vocabulary``.

Matching rules (so the table lists each spelling once):
* text is NFKC-normalised first (full-width letters become ASCII, curly apostrophes straight);
* Korean spellings match with or without spaces, hyphens or underscores between syllables
  (풀샷 = 풀 샷, 클로즈업 = 클로즈-업), and 샷 / 숏 / 쇼트 are interchangeable (풀샷 = 풀숏 = 풀쇼트); after
  a Korean stem the English word works too (풀shot, 풀 Shot);
* English spellings match case-insensitively on word boundaries, with space, hyphen or underscore
  between words (close-up = close up = closeup = CLOSE_UP); a final "shot" may be written in Korean
  (full샷, full 숏);
* abbreviations (CU, MS, INT, ...) match in capitals only, as whole words, with optional dots
  (C.U., M.S., E.C.U.);
* in free text the longest spelling wins (미디엄 클로즈업 is a medium close-up, not a close-up);
* ``not_terms`` lists words that hold a spelling but mean something else (조감독, an assistant
  director, holds 조감, a bird's-eye view): text inside one of them names no term.

Speed: the one big alternation (about 200 spellings) costs ~13 µs per character when tried at
every position, so ``_Matcher`` only tries it where a spelling can start. Every spelling's pattern
begins with one consuming character (its "first": a Korean syllable, a case-insensitive English
letter, a capital, ``<``), so a position whose character matches no first cannot start a match, and
at a position that does, only the spellings whose first matches can, in their original order: the
same first-wins result as the full alternation. Both tests are done by the regex engine itself
(same flags as the spelling), so case-folding oddities (``İ`` matches ``(?i:i)``) stay the same.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from storyboard.core.cli import UserError
from storyboard.core.records import read_json_object

# JSON section -> the record field it fills.
KINDS: dict[str, str] = {"shot_sizes": "shot_size", "angles": "angle", "locations": "location"}
_SHOT_SUFFIXES = ("샷", "숏", "쇼트")
_KO_SHOT_WORDS = r"샷|숏|쇼[\s\-_]*트"
_KO_SUFFIX = f"(?:{_KO_SHOT_WORDS})"
_KO_SUFFIX_OR_SHOT = f"(?:{_KO_SHOT_WORDS}|(?i:shot))"  # after a Korean stem: 풀shot, 풀 Shot
_KO_GAP = r"[\s\-_]*"  # between the syllables of a Korean spelling: 풀 샷, 클로즈-업
_HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")


@dataclass(frozen=True)
class Term:
    """One vocabulary entry. ``kind`` is the record field it fills: shot_size, angle or location."""

    kind: str
    key: str
    name: str
    ko: tuple[str, ...] = ()
    en: tuple[str, ...] = ()
    abbrev: tuple[str, ...] = ()
    token: str | None = None
    initializer: str | None = None

    @property
    def token_stem(self) -> str | None:
        """``<fs_trg>`` -> ``fs_trg``: the name of the token's embedding file."""
        return self.token.strip("<>") if self.token else None


@dataclass(frozen=True)
class TermMatch:
    term: Term
    start: int
    end: int
    text: str


def normalize_text(text: str) -> str:
    """NFKC, straight apostrophes, single spaces: the form every lookup sees."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\s+", " ", text).strip()


# A spelling's pattern and its "first": (characters, ignore case) that the first character of any
# match is one of, read by the same engine with the same flags; None when a match may be empty or
# start elsewhere (then the vocabulary falls back to the full scan, see ``_Matcher``).
First = tuple[str, bool] | None


def _korean_pattern(spelling: str) -> tuple[str, First]:
    chars = spelling.replace(" ", "")
    for suffix in _SHOT_SUFFIXES:  # treat every shot suffix as one symbol
        chars = chars.replace(suffix, "\0")
    parts = [(_KO_SUFFIX_OR_SHOT if i else _KO_SUFFIX) if c == "\0" else re.escape(c) for i, c in enumerate(chars)]
    first = ("샷숏쇼" if chars[0] == "\0" else chars[0], False) if chars else None
    return _KO_GAP.join(parts), first


def _english_pattern(spelling: str) -> tuple[str, First]:
    words = [w for w in re.split(r"[\s\-_]+", spelling.lower()) if w]
    parts = [re.escape(w).replace("'", "'?") for w in words]
    if len(words) > 1 and words[-1] == "shot":
        parts[-1] = f"(?:shot|{_KO_SHOT_WORDS})"  # full샷, full 숏: the English stem, the Korean word
    # A leading apostrophe is optional, so such a match starts at the letter after it: no single first.
    first = (words[0][0], True) if words and words[0][0] != "'" else None
    return r"(?i:(?<![a-z0-9])" + r"[\s\-_]*".join(parts) + r"(?![a-z0-9]))", first


def _abbrev_pattern(spelling: str) -> tuple[str, First]:
    first = (spelling[0], False) if spelling else None
    letters = r"\.?".join(re.escape(c) for c in spelling) if spelling.isalpha() else re.escape(spelling)
    return r"(?<![A-Za-z0-9])" + letters + r"\.?(?![A-Za-z0-9])", first  # CU, CU., C.U.


def _first_regex(chars: str, ignore_case: bool) -> str:
    """One character out of ``chars``; the sre parser turns the branches into a set either way."""
    body = "|".join(re.escape(c) for c in sorted(set(chars))) or r"(?!x)x"
    return f"(?i:{body})" if ignore_case else f"(?:{body})"


class _Matcher:
    """One kind's spellings: the full alternation (``pattern``, the definition of a match) and the
    first-character dispatch that ``finditer`` / ``fullmatch`` use to give its results faster."""

    def __init__(self, alternatives: list[tuple[str, First, Term]]):
        self.groups = {f"t{i}": term for i, (_, _, term) in enumerate(alternatives)}
        self._named = [f"(?P<t{i}>{pattern})" for i, (pattern, _, _) in enumerate(alternatives)]
        self.pattern = re.compile("|".join(self._named) or r"(?!x)x")
        firsts = [first for _, first, _ in alternatives]
        self._finder = None  # None: some spelling has no first, so every position is a candidate
        self._firsts: dict[str, tuple[re.Pattern, list[int]]] = {}  # first regex -> (compiled, spellings)
        if all(firsts):
            for i, (chars, ignore_case) in enumerate(firsts):
                regex = _first_regex(chars, ignore_case)
                self._firsts.setdefault(regex, (re.compile(regex), []))[1].append(i)
            plain = "".join(chars for chars, ignore_case in firsts if not ignore_case)
            folded = "".join(chars for chars, ignore_case in firsts if ignore_case)
            self._finder = re.compile(f"{_first_regex(plain, False)}|{_first_regex(folded, True)}")
        # Filled lazily: only characters the finder can return ever get here, so both stay small.
        self._by_char: dict[str, re.Pattern] = {}
        self._by_spellings: dict[tuple[int, ...], re.Pattern] = {}

    def _starting_with(self, char: str) -> re.Pattern:
        """The alternation of the spellings whose first matches ``char``, in their original order."""
        sub = self._by_char.get(char)
        if sub is None:
            chosen = tuple(sorted(i for regex, spellings in self._firsts.values() if regex.fullmatch(char)
                                  for i in spellings))
            sub = self._by_spellings.get(chosen)
            if sub is None:
                sub = re.compile("|".join(self._named[i] for i in chosen) or r"(?!x)x")
                self._by_spellings[chosen] = sub
            self._by_char[char] = sub
        return sub

    def finditer(self, text: str) -> Iterator[re.Match]:
        """The matches of ``pattern.finditer(text)``, trying the alternation only where one can start.
        No spelling matches empty here (each consumes its first), so a match always moves on."""
        if self._finder is None:
            yield from self.pattern.finditer(text)
            return
        search, pos = self._finder.search, 0
        while (hit := search(text, pos)) is not None:
            start = hit.start()
            # match(text, start) still sees text before start, so the look-behinds behave as in finditer.
            match = self._starting_with(text[start]).match(text, start)
            if match is None:
                pos = start + 1
            else:
                yield match
                pos = match.end()

    def fullmatch(self, text: str) -> re.Match | None:
        if self._finder is None:
            return self.pattern.fullmatch(text)
        if not text or not self._finder.match(text):
            return None
        return self._starting_with(text[0]).fullmatch(text)


@dataclass
class Vocabulary:
    """The parsed table plus the compiled matchers. Build with ``load_vocabulary``."""

    data: dict
    terms: tuple[Term, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.terms = tuple(_parse_terms(self.data))
        self._by_key = {(t.kind, t.key): t for t in self.terms}
        self._by_token = {t.token: t for t in self.terms if t.token}
        self._matchers = {kind: _compile(self.terms, kind) for kind in (None, *KINDS.values())}
        self._not_terms = _compile_not_terms(self.data.get("not_terms", []))

    # -- lists ----------------------------------------------------------------------------
    def of_kind(self, kind: str) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.kind == kind)

    @property
    def shot_sizes(self) -> tuple[Term, ...]:
        """Tightest to widest, in table order."""
        return self.of_kind("shot_size")

    @property
    def angles(self) -> tuple[Term, ...]:
        return self.of_kind("angle")

    @property
    def locations(self) -> tuple[Term, ...]:
        return self.of_kind("location")

    @property
    def trigger_tokens(self) -> dict[str, Term]:
        """Trigger token -> shot size term."""
        return dict(self._by_token)

    # -- lookups --------------------------------------------------------------------------
    def get(self, kind: str, key: str) -> Term:
        try:
            return self._by_key[(kind, key)]
        except KeyError:
            known = ", ".join(t.key for t in self.of_kind(kind))
            raise UserError(f"unknown {kind} {key!r}; known: {known}") from None

    def lookup(self, text: object, kind: str | None = None) -> Term | None:
        """The term a whole string names (a key, token, name or any spelling), else None."""
        if not isinstance(text, str):
            return None
        norm = normalize_text(text)
        for term in self.terms:
            if (kind is None or term.kind == kind) and norm in (term.key, term.token):
                return term
        matcher = self._matchers[kind]
        match = matcher.fullmatch(norm)
        return matcher.groups[match.lastgroup] if match else None

    def find(self, text: str, kind: str | None = None) -> list[TermMatch]:
        """Every vocabulary term in free text, left to right, longest spelling first, no overlaps.
        Offsets refer to ``normalize_text(text)``."""
        norm = normalize_text(text)
        matcher = self._matchers[kind]
        groups = matcher.groups
        found = [TermMatch(groups[m.lastgroup], m.start(), m.end(), m.group()) for m in matcher.finditer(norm)]
        if found and self._not_terms is not None:
            blocked = [m.span() for m in self._not_terms.finditer(norm)]
            found = [f for f in found if not any(start < f.end and f.start < end for start, end in blocked)]
        return found

    def shot_for_token(self, token: str) -> Term | None:
        return self._by_token.get(token)

    def prompt_words(self, shot: str | None = None, angle: str | None = None, location: str | None = None) -> list[str]:
        """English words for a record's labels, e.g. ["full shot", "eye level", "outdoor"]."""
        words = []
        for kind, key in (("shot_size", shot), ("angle", angle), ("location", location)):
            if key:
                words.append(self.get(kind, key).name)
        return words


def _parse_terms(data: dict) -> Iterable[Term]:
    seen_tokens: dict[str, str] = {}
    for section, kind in KINDS.items():
        for entry in data.get(section, []):
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise UserError(f"vocabulary: every entry of {section!r} needs a string 'key' (got {entry!r})")
            key = entry["key"]
            term = Term(
                kind=kind, key=key, name=str(entry.get("name") or key.replace("_", " ")),
                ko=tuple(entry.get("ko", ())), en=tuple(entry.get("en", ())), abbrev=tuple(entry.get("abbrev", ())),
                token=entry.get("token"), initializer=entry.get("initializer"),
            )
            if kind == "shot_size":
                if not term.token or not re.fullmatch(r"<[^<>\s]+>", term.token):
                    raise UserError(f"vocabulary: shot size {key!r} needs a token like <xx_trg> (got {term.token!r})")
                if not term.initializer:
                    raise UserError(f"vocabulary: shot size {key!r} needs initializer words")
                if term.token in seen_tokens:
                    raise UserError(f"vocabulary: token {term.token} is used by both {seen_tokens[term.token]!r} "
                                    f"and {key!r}")
                seen_tokens[term.token] = key
            yield term


def _spellings(term: Term) -> Iterable[tuple[str, First, str]]:
    """(pattern, first, canonical spelling) for every way a term may be written."""
    for s in (term.name, *term.en):
        yield *_english_pattern(normalize_text(s)), normalize_text(s).lower()
    for s in term.ko:
        s = normalize_text(s)
        if _HANGUL.search(s):
            yield *_korean_pattern(s), s.replace(" ", "")
        else:
            yield *_english_pattern(s), s.lower()
    for s in term.abbrev:
        yield *_abbrev_pattern(normalize_text(s)), s
    if term.token:
        yield re.escape(term.token), (term.token[0], False), term.token


def _compile(terms: tuple[Term, ...], kind: str | None) -> _Matcher:
    """One alternation over all spellings, longest first, each in a named group naming its term."""
    owners: dict[tuple[str, str], Term] = {}
    alternatives = []
    for term in terms:
        if kind is not None and term.kind != kind:
            continue
        for pattern, first, canonical in _spellings(term):
            owner = owners.setdefault((term.kind if kind else "*", canonical), term)
            if owner is not term:
                raise UserError(
                    f"vocabulary: {canonical!r} names both {owner.kind} {owner.key!r} and {term.kind} {term.key!r}")
            alternatives.append((len(canonical), pattern, first, term))
    alternatives.sort(key=lambda a: -a[0])
    return _Matcher([(pattern, first, term) for _, pattern, first, term in alternatives])


def _compile_not_terms(words: object) -> re.Pattern | None:
    """One pattern for the words that hold a spelling but name no term, matched as spellings are."""
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise UserError(f"vocabulary: 'not_terms' must be a list of words (got {words!r})")
    patterns = []
    for word in sorted({normalize_text(w) for w in words}, key=len, reverse=True):
        patterns.append((_korean_pattern if _HANGUL.search(word) else _english_pattern)(word)[0])
    return re.compile("|".join(patterns)) if patterns else None


def _merge(base: dict, extra: dict) -> dict:
    """Extend ``base`` with a user table: entries merged by key, lists unioned, scalars replaced."""
    merged = {section: [dict(e) for e in base.get(section, [])] for section in KINDS}
    for section in KINDS:
        by_key = {e["key"]: e for e in merged[section]}
        for entry in extra.get(section, []):
            if not isinstance(entry, dict) or "key" not in entry:
                raise UserError(f"vocabulary: every entry of {section!r} needs a 'key' (got {entry!r})")
            target = by_key.get(entry["key"])
            if target is None:
                merged[section].append(dict(entry))
                by_key[entry["key"]] = merged[section][-1]
                continue
            for name, value in entry.items():
                if isinstance(value, list):
                    target[name] = list(dict.fromkeys([*target.get(name, []), *value]))
                else:
                    target[name] = value
    extra_not_terms = extra.get("not_terms", [])
    if not isinstance(extra_not_terms, list):
        raise UserError(f"vocabulary: 'not_terms' must be a list of words (got {extra_not_terms!r})")
    merged["not_terms"] = list(dict.fromkeys([*base.get("not_terms", []), *extra_not_terms]))
    return merged


def builtin_table() -> dict:
    text = resources.files("storyboard.core").joinpath("data/vocabulary.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=8)
def _load_cached(path: str | None) -> Vocabulary:
    table = builtin_table()
    if path is None:
        return Vocabulary(table)
    user = read_json_object(path, "vocabulary file")
    if user.get("replace"):
        return Vocabulary({s: user.get(s, []) for s in (*KINDS, "not_terms")})
    return Vocabulary(_merge(table, user))


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """The built-in vocabulary, extended or replaced by the JSON file at ``path`` when given."""
    return _load_cached(str(Path(path).resolve()) if path else None)
