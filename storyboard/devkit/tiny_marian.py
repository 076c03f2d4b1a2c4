"""A tiny Korean -> English MarianMT folder with the layout of Helsinki-NLP's opus-mt-ko-en.

``build_tiny_marian(out_dir, seed)`` writes, through the libraries' own ``save_pretrained``::

    source.spm  target.spm  vocab.json  tokenizer_config.json        (MarianTokenizer)
    config.json  model.safetensors  generation_config.json           (MarianMTModel)

so the translation stage loads it exactly as it loads a downloaded model::

    MarianTokenizer.from_pretrained(out_dir); MarianMTModel.from_pretrained(out_dir)

The SentencePiece models are real, trained here with the ``sentencepiece`` package: source.spm on
the Korean, target.spm on the English lines of film-still captions (a built-in list, or ``corpus``)
plus every spelling of the shot vocabulary. The network has random weights, so it "translates" into
noise, quickly and deterministically (greedy decoding, ``max_new_tokens`` 8 in its generation config).
"""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

from storyboard.core.vocabulary import load_vocabulary

# Korean and English captions of the kind the crawls hold. Shot words come from the vocabulary
# (``_vocabulary_lines``), never from here.
SAMPLE_CAPTIONS: tuple[str, ...] = (
    "남자가 강을 따라 걷는다", "a man walks along the river",
    "여자가 창가에 앉아 비를 바라본다", "a woman sits by the window watching the rain",
    "두 형사가 논밭 사이 길에 서 있다", "two detectives stand on a road between the fields",
    "가족이 반지하 집에서 저녁을 먹는다", "a family eats dinner in a semi-basement house",
    "아이가 계단을 뛰어 내려온다", "a child runs down the stairs",
    "비 내리는 밤 골목길에 한 남자가 서 있다", "a man stands in an alley on a rainy night",
    "노인이 공원 벤치에 앉아 신문을 읽는다", "an old man reads a newspaper on a park bench",
    "소녀가 바닷가에서 웃고 있다", "a girl is smiling at the beach",
    "경찰차가 어두운 터널을 빠져나온다", "a police car comes out of a dark tunnel",
    "두 사람이 식탁에 마주 앉아 이야기한다", "two people sit across the table and talk",
    "남자가 거울 속 자신을 바라본다", "a man looks at himself in the mirror",
    "기차가 눈 덮인 들판을 지나간다", "a train passes through a snowy field",
    "여자가 전화를 받으며 놀란다", "a woman is surprised as she answers the phone",
    "군중이 광장에 모여 있다", "a crowd has gathered in the square",
    "형사가 용의자를 심문한다", "the detective questions the suspect",
    "햇빛이 부엌 창문으로 들어온다", "sunlight comes in through the kitchen window",
    "남자가 옥상에서 도시를 내려다본다", "a man looks down at the city from the rooftop",
    "아이들이 학교 운동장에서 뛰어논다", "children play in the school playground",
    "여자가 우산을 들고 버스를 기다린다", "a woman with an umbrella waits for the bus",
    "차 한 대가 산길을 달린다", "a car drives along a mountain road",
    "두 남자가 주먹다짐을 한다", "two men get into a fistfight",
    "어머니가 아들을 안아 준다", "a mother hugs her son",
    "밤하늘에 불꽃놀이가 터진다", "fireworks burst in the night sky",
    "낡은 집 앞에 자전거가 세워져 있다", "a bicycle is parked in front of an old house",
    "남자가 피 묻은 손을 씻는다", "a man washes his bloody hands",
    "여자가 어두운 복도를 천천히 걷는다", "a woman walks slowly down a dark corridor",
    "사람들이 지하철에서 졸고 있다", "people are dozing on the subway",
    "소년이 창밖을 보며 울고 있다", "a boy is crying while looking out the window",
    "카메라가 배우의 얼굴을 비춘다", "the camera shows the actor's face",
    "장면 전체가 안개에 싸여 있다", "the whole scene is wrapped in fog",
)
PIECES = 300  # SentencePiece vocabulary size asked for (a soft limit: small corpora give fewer)
MAX_NEW_TOKENS = 8  # the tiny model's generation length: enough to show batching, fast to run


def _vocabulary_lines() -> list[str]:

    vocab = load_vocabulary()
    return [s for term in vocab.terms for s in (term.name, *term.ko, *term.en)]


def _is_korean(line: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in line)


def _train_spm(lines: list[str], seed: int) -> bytes:

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=PIECES, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, num_threads=1, unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
        unk_piece="<unk>", eos_piece="</s>", minloglevel=2,
    )
    return model.getvalue()


def build_tiny_marian(out_dir: Path, seed: int, corpus: list[str] | None = None) -> None:
    """Fill ``out_dir`` with a tiny random-weight MarianMT ko->en model and its real tokenizer files."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (corpus if corpus else list(SAMPLE_CAPTIONS)) if line.strip()] + _vocabulary_lines()
    korean = [line for line in lines if _is_korean(line)]
    english = [line for line in lines if not _is_korean(line)]
    if not korean or not english:
        raise ValueError("the tiny Marian corpus needs both Korean and English lines")
    # As in opus-mt-ko-en: source.spm is trained on Korean, target.spm on English, and vocab.json
    # is the union of both piece lists (one shared embedding table).
    spm_files = {"source.spm": _train_spm(korean, seed), "target.spm": _train_spm(english, seed)}
    pieces: list[str] = []
    for spm_bytes in spm_files.values():
        processor = spm.SentencePieceProcessor(model_proto=spm_bytes)
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    # opus-mt's vocab.json: </s> = 0, <unk> = 1, the pieces, <pad> last (it doubles as decoder start).
    tokens = ["</s>", "<unk>"] + [p for p in dict.fromkeys(pieces) if p not in ("</s>", "<unk>")] + ["<pad>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    pad_id = vocab["<pad>"]

    with tempfile.TemporaryDirectory(prefix="tiny-marian-") as scratch:
        scratch = Path(scratch)
        for name, spm_bytes in spm_files.items():
            (scratch / name).write_bytes(spm_bytes)
        (scratch / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")
        tokenizer = MarianTokenizer(source_spm=str(scratch / "source.spm"), target_spm=str(scratch / "target.spm"),
                                    vocab=str(scratch / "vocab.json"), source_lang="kor", target_lang="eng")
        tokenizer.save_pretrained(out_dir)

    config = MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=pad_id, eos_token_id=0, decoder_start_token_id=pad_id, forced_eos_token_id=0,
        scale_embedding=True, share_encoder_decoder_embeddings=True, init_std=0.5,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad_id]], bos_token_id=0, decoder_start_token_id=pad_id, eos_token_id=0,
        forced_eos_token_id=0, pad_token_id=pad_id, num_beams=1, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
