"""Translate stage (02): vocabulary words by table, free text by backend, the tiny Marian folder,
batching, the cache across runs, idempotence, bad input, the seed's command line."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from storyboard.core.records import RecordError
from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.tiny_marian import build_tiny_marian
from storyboard.metadata.marian import MarianTranslator
from storyboard.metadata.translate import (
    KeepKorean,
    TranslationCache,
    check_record,
    prompt_text,
    strip_vocabulary_words,
    translate_records,
)

from metadata_helpers import TRANSLATE, seed_layout
from support import read_jsonl, run_front_door

VOCAB = load_vocabulary()
OPUS_MT_FILES = {"source.spm", "target.spm", "vocab.json", "tokenizer_config.json", "config.json",
                 "model.safetensors", "generation_config.json"}

RECORDS = [
    {"id": "a", "image": "a.png", "caption_ko": "풀샷으로 잡은 강가를 걷는 남자", "tags_ko": ["풀샷", "실외", "강"],
     "shot_size": "full", "angle": "eye_level", "location": "outdoor", "scene": 4},
    {"id": "b", "image": "b.png", "caption_ko": "형사가 논두렁을 본다", "tags_ko": ["클로즈업", "밤"],
     "shot_size": "close_up", "angle": None, "location": None},
    {"id": "c", "image": "c.png", "caption_ko": "형사가 논두렁을 본다", "tags_ko": ["강"],  # same caption as b
     "shot_size": None, "angle": None, "location": None},
    {"id": "d", "image": "d.png", "caption_ko": "", "tags_ko": [], "shot_size": "long"},
    {"id": "e", "image": "e.png", "caption_ko": "익스트림 롱샷 속 작은 기차", "tags_ko": [],
     "shot_size": "extreme_long"},
]


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "marian_ko_en"
    build_tiny_marian(folder, seed=0)
    return folder


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def test_vocabulary_words_never_reach_the_model():
    assert strip_vocabulary_words("풀샷으로 잡은 강가를 걷는 남자", VOCAB) == "잡은 강가를 걷는 남자"
    assert strip_vocabulary_words("익스트림 롱샷 속 작은 기차", VOCAB) == "속 작은 기차"
    assert strip_vocabulary_words("하이 앵글, 야외에서 본 거리", VOCAB) == "본 거리"
    assert strip_vocabulary_words("형사가 논두렁을 본다", VOCAB) == "형사가 논두렁을 본다"


def test_prompt_text():
    assert prompt_text(["full shot", "eye level", "outdoor", "A man walks along the river."]) == \
        "full shot, eye level, outdoor, a man walks along the river"
    assert prompt_text(["close-up", None, "", "NASA rocket"]) == "close-up, NASA rocket"


def test_check_record_rejects_wrong_types():
    for bad in ({"caption_ko": 7}, {"tags_ko": "ok", "shot_size": 3}, {"shot_size": "huge"}, {"tags_ko": [1]}):
        with pytest.raises(RecordError) as err:
            check_record(bad, VOCAB)
        assert err.value.reason == "wrong_type"


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_tiny_marian_has_the_opus_mt_layout_and_is_deterministic(marian, tmp_path):
    assert {p.name for p in marian.iterdir()} >= OPUS_MT_FILES
    from transformers import MarianMTModel, MarianTokenizer

    tokenizer = MarianTokenizer.from_pretrained(marian)
    model = MarianMTModel.from_pretrained(marian)
    assert model.config.vocab_size == len(tokenizer.get_vocab())
    ids = tokenizer(["남자가 강을 따라 걷는다"]).input_ids[0]
    assert tokenizer.unk_token_id not in ids  # the real SentencePiece vocabulary covers the captions
    again = tmp_path / "again"
    build_tiny_marian(again, seed=0)
    for name in OPUS_MT_FILES:
        assert (again / name).read_bytes() == (marian / name).read_bytes(), name


def test_batching_keeps_order_and_results(marian):
    texts = ["형사가 논두렁을 본다", "비", "남자가 강을 따라 천천히 걷는다", "밤", "아이가 계단을 뛰어 내려온다"]
    one = MarianTranslator(marian, batch_size=1, device="cpu")
    three = MarianTranslator(marian, batch_size=3, device="cpu")
    assert one.translate(texts) == three.translate(texts)
    assert (one.batches, three.batches) == (5, 2)
    assert one.fingerprint == three.fingerprint
    assert MarianTranslator(marian, device="cpu", max_new_tokens=4).fingerprint != one.fingerprint


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def test_table_backend(tmp_path):
    source = _write(tmp_path / "clean.jsonl", RECORDS)
    stage = translate_records(source, tmp_path / "out.jsonl", None, VOCAB, None, None)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert out["a"]["text"] == "full shot, eye level, outdoor"
    assert out["a"]["caption_en"] is None and out["a"]["tags_en"] == ["full shot", "outdoor"]
    assert out["a"]["caption_ko"] == RECORDS[0]["caption_ko"] and out["a"]["scene"] == 4
    assert out["c"]["text"] == "" and out["d"]["text"] == "long shot"
    assert stage.extra["backend"] == "table" and stage.written == 5


def test_none_backend_keeps_korean(tmp_path):
    source = _write(tmp_path / "clean.jsonl", RECORDS)
    translate_records(source, tmp_path / "out.jsonl", None, VOCAB, KeepKorean(), None)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert out["a"]["text"] == "full shot, eye level, outdoor, 잡은 강가를 걷는 남자"
    assert out["b"]["caption_en"] == "형사가 논두렁을 본다" and out["b"]["tags_en"] == ["close-up", "밤"]


def test_marian_backend_cache_and_idempotence(marian, tmp_path):
    source = _write(tmp_path / "clean.jsonl", RECORDS)
    cache_path = tmp_path / "cache.jsonl"
    translator = MarianTranslator(marian, batch_size=2, device="cpu")
    first = translate_records(source, tmp_path / "out.jsonl", None, VOCAB, translator,
                              TranslationCache(cache_path, "marian", translator.fingerprint))
    # captions of a, b, c (= b), e (d has none) + the tags 강 (a, c) and 밤 (b): 5 unique of 7
    assert (first.extra["texts to translate"], first.extra["translated now"], first.extra["cache hits"]) == (7, 5, 2)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert out["b"]["caption_en"] == out["c"]["caption_en"]
    assert out["a"]["text"].startswith("full shot, eye level, outdoor")
    assert out["d"]["caption_en"] == "" and out["d"]["text"] == "long shot"
    cache_lines = read_jsonl(cache_path)
    assert len(cache_lines) == 5 and {c["model"] for c in cache_lines} == {translator.fingerprint}

    # second run: nothing re-translated, same output
    second = translate_records(source, tmp_path / "out2.jsonl", None, VOCAB, translator,
                               TranslationCache(cache_path, "marian", translator.fingerprint))
    assert (second.extra["translated now"], second.extra["cache hits"]) == (0, 7)
    assert (tmp_path / "out2.jsonl").read_text(encoding="utf-8") == (tmp_path / "out.jsonl").read_text(encoding="utf-8")

    # the stage on its own output gives the same output
    third = translate_records(tmp_path / "out.jsonl", tmp_path / "out3.jsonl", None, VOCAB, translator,
                              TranslationCache(cache_path, "marian", translator.fingerprint))
    assert third.extra["translated now"] == 0
    assert (tmp_path / "out3.jsonl").read_text(encoding="utf-8") == (tmp_path / "out.jsonl").read_text(encoding="utf-8")

    # another model (other fingerprint) does not reuse these entries, and keeps them in the file
    other = TranslationCache(cache_path, "marian", "another-model")
    assert other.get("형사가 논두렁을 본다") is None and other.loaded == 5


def test_damaged_cache_line_costs_only_a_retranslation(marian, tmp_path):
    source = _write(tmp_path / "clean.jsonl", RECORDS[1:2])
    translator = MarianTranslator(marian, device="cpu")
    cache_path = tmp_path / "cache.jsonl"
    cache_path.write_text('{"backend": "marian", "model": "x", "source": "a", "target": "b"}\n{broken\n',
                          encoding="utf-8")
    stage = translate_records(source, tmp_path / "out.jsonl", None, VOCAB, translator,
                              TranslationCache(cache_path, "marian", translator.fingerprint))
    assert stage.extra["cache lines ignored (damaged)"] == 1 and stage.extra["translated now"] == 2
    assert len(read_jsonl(cache_path)) == 3  # the good foreign line kept, the two new ones added


@pytest.fixture()
def seed_folder(tmp_path) -> Path:
    folder = seed_layout(tmp_path, TRANSLATE)
    _write(folder / "metadata_clean.jsonl", RECORDS + [{"id": "bad", "caption_ko": 12}, '{"id": '])
    return folder


def test_seed_command_line_verbatim(seed_folder):
    proc = run_front_door("02_translate.py", "--input", "metadata_clean.jsonl", "--output", "metadata_translated.jsonl",
                      cwd=seed_folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("translate: metadata_translated.jsonl")
    out = read_jsonl(seed_folder / "metadata_translated.jsonl")
    assert [r["id"] for r in out] == ["a", "b", "c", "d", "e"]
    rejects = read_jsonl(seed_folder / "metadata_translated.rejects.jsonl")
    assert sorted(e["reason"] for e in rejects) == ["malformed_json", "wrong_type"]


def test_front_door_marian_twice_uses_the_cache(seed_folder, marian, capsys, monkeypatch):
    args = ["--input", "metadata_clean.jsonl", "--output", "metadata_translated.jsonl", "--backend", "marian",
            "--model", str(marian), "--batch-size", "4"]
    first = run_front_door("02_translate.py", *args, cwd=seed_folder)
    assert first.returncode == 0, first.stderr
    assert (seed_folder / "translation_cache.jsonl").is_file()
    # The second run goes through the same front door in this process (saves a torch import).
    spec = importlib.util.spec_from_file_location("translate_front_door", TRANSLATE)
    front_door = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(front_door)
    monkeypatch.chdir(seed_folder)
    assert front_door.main(args) == 0
    table = capsys.readouterr().out
    rows = dict(line.rsplit(None, 1) for line in table.splitlines()[2:] if line.strip() and not line.startswith("-"))
    assert rows["translated now"] == "0" and rows["cache hits"] == "7"
    run_info = json.loads((seed_folder / "metadata_translated.run.json").read_text(encoding="utf-8"))
    assert run_info["config"]["backend"] == "marian" and run_info["config"]["device"] == "cpu"


@pytest.mark.parametrize("args, message", [
    (["--backend", "marian"], "--backend marian needs --model PATH (a local opus-mt-ko-en style folder)"),
    (["--backend", "marian", "--model", "nowhere"], "--model nowhere: not a MarianMT folder"),
    (["--input", "empty.jsonl"], "input empty.jsonl is empty: no records to translate (the output was left as it was)"),
])
def test_bad_arguments_are_one_line(seed_folder, args, message):
    (seed_folder / "empty.jsonl").write_bytes(b"\xef\xbb\xbf\r\n")
    (seed_folder / "metadata_translated.jsonl").write_text("keep\n", encoding="utf-8")
    proc = run_front_door("02_translate.py", *args, cwd=seed_folder)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"02_translate.py: error: {message}")
    assert (seed_folder / "metadata_translated.jsonl").read_text(encoding="utf-8") == "keep\n"
