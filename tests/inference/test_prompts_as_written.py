"""Prompts as users write them (storyboard.inference.prompts, prompt_language, inference_trigger.py):
shot words in English or Korean put their trigger in front, Korean is put in English with stage 02's
backends and cache, both prompts are kept, and disagreeing or untrained shots are one clear error."""
from __future__ import annotations

import json
import sys

import pytest

from storyboard.artifacts.read import Checkpoint
from storyboard.core.cli import UserError
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.pngmeta import read_png_metadata
from storyboard.inference.prompt_language import split_prompt, to_english
from storyboard.inference.prompts import UntrainedTriggerError, plan_trigger, prepare_prompt

from support import assert_one_line_error, read_jsonl, run_command
from trigger_helpers import INFERENCE, seed_root

KOREAN = "풀샷, 실외, 남자가 걷는다"


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.fixture
def ckpt(tmp_path) -> Checkpoint:
    """A checkpoint that trained <fs_trg> and <ms_trg> (the prompt rules need no files)."""
    return Checkpoint(path=tmp_path / "train_fs", name="train_fs", manifest={}, lora_file=None,
                      embeddings={"<fs_trg>": None, "<ms_trg>": None},
                      initializers={"<fs_trg>": "full shot", "<ms_trg>": "medium shot"},
                      text_encoder_dir=None, tokenizer_dir=None)


@pytest.mark.parametrize("prompt, expected", [
    ("full shot, outdoor, a man walking", "<fs_trg>, full shot, outdoor, a man walking"),
    ("a man walking, Full-Body Shot", "<fs_trg>, a man walking, Full-Body Shot"),
    ("FS, a man walking", "<fs_trg>, FS, a man walking"),
    ("a waist shot of a woman", "<ms_trg>, a waist shot of a woman"),
])
def test_shot_words_insert_their_trigger(vocab, ckpt, prompt, expected):
    assert prepare_prompt(prompt, None, vocab, ckpt) == expected
    # negative control: words that name no shot size get no trigger
    assert prepare_prompt("a man walking, outdoor", None, vocab, ckpt) == "a man walking, outdoor"
    # lower-case "fs" is not the abbreviation
    assert prepare_prompt("fs, a man", None, vocab, ckpt) == "fs, a man"


def test_plan_reads_korean_shot_words(vocab, ckpt):
    plan = plan_trigger(KOREAN, None, vocab, ckpt)
    assert (plan.token, plan.source, plan.found) == ("<fs_trg>", "words", "풀샷")
    assert plan_trigger("전신 숏, 남자", None, vocab, ckpt).token == "<fs_trg>"


def test_two_shots_that_disagree_are_one_error(vocab, ckpt):
    for prompt in ("full shot, a medium shot of a man", "풀샷, 미디엄샷", "<fs_trg>, medium shot"):
        with pytest.raises(UserError, match="two shot sizes"):
            prepare_prompt(prompt, None, vocab, ckpt)
    with pytest.raises(UserError, match="another shot size"):
        prepare_prompt("풀샷, 남자", "medium", vocab, ckpt)


def test_a_shot_the_checkpoint_did_not_train_is_one_error(vocab, ckpt):
    for prompt in ("close-up of a face", "클로즈업, 남자", "CU, a man"):
        with pytest.raises(UntrainedTriggerError) as err:
            prepare_prompt(prompt, None, vocab, ckpt)
        assert err.value.token == "<cu_trg>" and "not trained" in str(err.value)
        assert "<fs_trg> (full shot), <ms_trg> (medium shot)" in str(err.value)


def test_the_users_own_token_is_left_alone(vocab, ckpt):
    own = Checkpoint(path=ckpt.path, name="mine", manifest={}, lora_file=None, embeddings={"<my_trg>": None},
                     initializers={"<my_trg>": "my style"}, text_encoder_dir=None, tokenizer_dir=None)
    assert prepare_prompt("<my_trg>, full shot, a man", None, vocab, own) == "<my_trg>, full shot, a man"


def test_korean_parts_become_english_with_the_vocabulary(vocab):
    pieces = split_prompt(KOREAN + ", a red coat", vocab)
    assert [(p.kind, p.text) for p in pieces] == [
        ("term", "full shot"), ("term", "outdoor"), ("korean", "남자가 걷는다"), ("keep", "a red coat")]
    table = to_english(KOREAN, vocab, "table")
    assert (table.english, table.left_out) == ("full shot, outdoor", ["남자가", "걷는다"])
    kept = to_english(KOREAN, vocab, "none")
    assert kept.english == "full shot, outdoor, 남자가 걷는다" and not kept.left_out
    marian = to_english(KOREAN, vocab, "marian", lookup={"남자가 걷는다": "A man walks."}.__getitem__)
    assert marian.english == "full shot, outdoor, a man walks"
    # an English prompt is kept exactly as written
    assert to_english("Full Shot, A Man", vocab, "table").english == "Full Shot, A Man"


def test_korean_prompt_through_the_front_door(tmp_path, tiny_models, trained_checkpoint):
    """The issue's example, as a new user types it: translated, trigger inserted, both prompts kept,
    and the output table says so."""
    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    proc = run_command([sys.executable, INFERENCE, "--prompt", KOREAN, "--steps", "2",
                        "--output", "model_output/ko.png"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "<fs_trg> inserted (for '풀샷')" in proc.stdout
    assert "left out (--translate table knows only the vocabulary's words): 남자가 걷는다" in proc.stdout
    meta = read_png_metadata(root / "model_output/ko.png")
    [line] = read_jsonl(root / "model_output/ko.jsonl")
    for record in (meta, line):
        assert record["prompt_given"] == KOREAN
        assert record["prompt"] == "<fs_trg>, full shot, outdoor"
        assert record["trigger"]["inserted"] == "<fs_trg>" and record["trigger"]["from"] == "words"
        assert record["translation"] == {"backend": "table", "english": "full shot, outdoor",
                                         "left_out": ["남자가", "걷는다"]}
    # an English prompt with shot words gets its trigger too (the first example)
    proc = run_command([sys.executable, INFERENCE, "--prompt", "full shot, outdoor, a man walking", "--steps", "2",
                        "--output", "model_output/en.png"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    meta = read_png_metadata(root / "model_output/en.png")
    assert meta["prompt"] == "<fs_trg>, full shot, outdoor, a man walking" and "translation" not in meta


def test_marian_translation_goes_through_the_cache(tmp_path, tiny_models, trained_checkpoint):
    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    argv = [sys.executable, INFERENCE, "--prompt", KOREAN, "--translate", "marian", "--translate-model",
            tiny_models / "marian_ko_en", "--steps", "1", "--output", "model_output/m.png"]
    first = run_command(argv, cwd=root)
    assert first.returncode == 0, first.stderr
    assert "MarianMT: 1 text(s) translated, 0 from the cache" in first.stdout
    [entry] = read_jsonl(root / "model_output" / "translation_cache.jsonl")
    assert entry["backend"] == "marian" and entry["source"] == "남자가 걷는다"
    meta = read_png_metadata(root / "model_output/m.png")
    assert meta["translation"]["backend"] == "marian" and not meta["translation"]["left_out"]
    assert meta["prompt"].startswith("<fs_trg>, full shot, outdoor, ")  # + the tiny model's words
    # the cache answers the second time; a poisoned entry proves the answer comes from the file
    (root / "model_output" / "translation_cache.jsonl").write_text(
        json.dumps({**entry, "target": "a cached man"}, ensure_ascii=False) + "\n", encoding="utf-8")
    second = run_command(argv, cwd=root)
    assert "MarianMT: 0 text(s) translated, 1 from the cache" in second.stdout, second.stderr
    assert read_png_metadata(root / "model_output/m.png")["prompt"] == "<fs_trg>, full shot, outdoor, a cached man"


def test_prompt_mistakes_are_one_line_before_loading(tmp_path, tiny_models, trained_checkpoint):
    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    cases = {
        "풀샷, 미디엄샷, 남자": "two shot sizes",
        "클로즈업, 남자": "was not trained by checkpoint",
    }
    for prompt, expected in cases.items():
        proc = run_command([sys.executable, INFERENCE, "--prompt", prompt, "--output", "o.png"], cwd=root)
        assert_one_line_error(proc, expected)
    proc = run_command([sys.executable, INFERENCE, "--prompt", KOREAN, "--translate", "marian", "--output", "o.png"],
                       cwd=root)
    assert_one_line_error(proc, "--translate marian needs --translate-model")
    assert not (root / "o.png").exists()
