"""Trigger tokens, captions and the sampler: the pieces of training that need no full run."""
from __future__ import annotations

import random

import pytest
import torch

from storyboard.core.cli import UserError
from storyboard.core.vocabulary import load_vocabulary
from storyboard.train.data import CaptionPolicy, StepBatchSampler
from storyboard.train.token_specs import resolve_trigger_specs
from storyboard.train.tokens import (
    TriggerEmbedding,
    add_trigger_tokens,
    install_trigger_embedding,
    merge_trigger_embedding,
    trigger_rows,
)


@pytest.fixture(scope="module")
def tokenizer_and_encoder(tiny_models):
    from transformers import CLIPTextModel, CLIPTokenizer

    base = tiny_models / "model_sd"
    return (CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            CLIPTextModel.from_pretrained(base, subfolder="text_encoder"))


def test_specs_default_to_vocabulary_tokens_found_in_captions():
    vocab = load_vocabulary()
    specs = resolve_trigger_specs("", "", vocab, ["<fs_trg>, full shot", "<cu_trg>, close-up, man"])
    assert [s.token for s in specs] == ["<cu_trg>", "<fs_trg>"]  # vocabulary order
    assert [s.initializer for s in specs] == ["close-up", "full shot"]
    one = resolve_trigger_specs("<fs_trg>", "wide view", vocab, ["<fs_trg>, x"])
    assert one[0].initializer == "wide view" and one[0].stem == "fs_trg"


@pytest.mark.parametrize("tokens, inits, captions, message", [
    ("<fs_trg>,<fs_trg>", "", ["<fs_trg>"], "more than once"),
    ("fs_trg", "", ["fs_trg"], "not a token like"),
    ("<fs_trg>,<cu_trg>", "a,b,c", ["<fs_trg> <cu_trg>"], "3 values for 2 tokens"),
    ("<my_trg>", "", ["<my_trg>, x"], "needs initializer words"),
    ("<cu_trg>", "", ["<fs_trg>, x"], "appears in no caption"),
    ("", "", ["a plain caption"], "no trigger token to train"),
])
def test_specs_refuse_bad_token_lists(tokens, inits, captions, message):
    with pytest.raises(UserError, match=message):
        resolve_trigger_specs(tokens, inits, load_vocabulary(), captions)


def test_new_rows_start_at_the_mean_of_their_initializer_words(tokenizer_and_encoder):
    import copy

    tokenizer, encoder = (copy.deepcopy(x) for x in tokenizer_and_encoder)
    base_rows = encoder.get_input_embeddings().weight.detach().clone()
    specs = resolve_trigger_specs("<fs_trg>,<cu_trg>", "", load_vocabulary(), [])
    added = add_trigger_tokens(tokenizer, encoder, specs)
    table = encoder.get_input_embeddings().weight.detach()
    assert added.token_ids == [49408, 49409] and len(tokenizer) == 49410
    full, shot = tokenizer("full shot", add_special_tokens=False).input_ids
    assert torch.allclose(table[49408], (base_rows[full] + base_rows[shot]) / 2)
    assert torch.equal(table[:49408], base_rows)
    assert tokenizer("<fs_trg>, a man", add_special_tokens=False).input_ids[0] == 49408


def test_existing_token_and_empty_initializer_are_refused(tokenizer_and_encoder):
    import copy

    from storyboard.train.token_specs import TriggerSpec

    tokenizer, encoder = (copy.deepcopy(x) for x in tokenizer_and_encoder)
    with pytest.raises(UserError, match="already exists in the tokenizer"):
        add_trigger_tokens(tokenizer, encoder, [TriggerSpec("<|endoftext|>", "end")])
    with pytest.raises(UserError, match="tokenizes to nothing"):
        add_trigger_tokens(tokenizer, encoder, [TriggerSpec("<fs_trg>", "\u3000")])


def test_trigger_embedding_trains_only_the_new_rows(tokenizer_and_encoder):
    """The untouched-rows invariant at the optimizer level: AdamW with weight decay, many steps,
    every base row bit-identical afterwards, the new rows moved."""
    import copy

    tokenizer, encoder = (copy.deepcopy(x) for x in tokenizer_and_encoder)
    specs = resolve_trigger_specs("<fs_trg>,<cu_trg>", "", load_vocabulary(), [])
    add_trigger_tokens(tokenizer, encoder, specs)
    before = encoder.get_input_embeddings().weight.detach().clone()
    module = install_trigger_embedding(encoder, 49408)
    assert isinstance(module, TriggerEmbedding)
    ids = torch.tensor([[49406, 49408, 320, 49409, 49407]])
    assert torch.equal(module(ids), torch.nn.functional.embedding(ids, before))

    encoder.requires_grad_(False)
    module.trigger.requires_grad_(True)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert trainable == [module.trigger]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        loss = encoder(ids).last_hidden_state.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    merge_trigger_embedding(encoder)
    after = encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[:49408], before[:49408])
    assert not torch.equal(after[49408:], before[49408:])
    assert after.shape == before.shape


def test_trigger_rows_reads_the_trainable_part(tokenizer_and_encoder):
    import copy

    tokenizer, encoder = (copy.deepcopy(x) for x in tokenizer_and_encoder)
    add_trigger_tokens(tokenizer, encoder, resolve_trigger_specs("<fs_trg>", "", load_vocabulary(), []))
    install_trigger_embedding(encoder, 49408)
    rows = trigger_rows(encoder)
    assert rows.shape == (1, encoder.config.hidden_size) and rows.dtype == torch.float32


def test_caption_shuffle_keeps_the_trigger_first_and_is_reproducible():
    policy = CaptionPolicy(("<fs_trg>",), shuffle=True, keep_tokens=1)
    text = "a man, street, <fs_trg>, full shot, eye level, outdoor, night"
    seen = set()
    for draw in range(30):
        out = policy.apply(text, random.Random(draw))
        assert out.startswith("<fs_trg>, ")
        assert sorted(out.split(", ")) == sorted(text.split(", "))
        assert out == policy.apply(text, random.Random(draw))
        seen.add(out)
    assert len(seen) > 10
    assert CaptionPolicy(("<fs_trg>",)).apply(text, random.Random(0)) == text  # no shuffle: untouched
    dropped = CaptionPolicy(("<fs_trg>",), caption_dropout=1.0).apply(text, random.Random(0))
    assert dropped == ""
    policy = CaptionPolicy(("<fs_trg>",), keep_tokens=2, tag_dropout=1.0)
    tags = policy.apply("<fs_trg>, full shot, x, y", random.Random(0))
    assert tags == "<fs_trg>, full shot"


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_sampler_counts_every_sample_once_across_processes(processes):
    n, batch = 7, 2
    samplers = [StepBatchSampler(n, batch, seed=3, start=0, stop=14, num_processes=processes, process_index=p)
                for p in range(processes)]
    positions = sorted(q for s in samplers for b in s for _, q in b)
    assert positions == list(range(14 * batch * processes))  # each stream position exactly once
    # each epoch (n consecutive positions) is a permutation of the data set
    stream = {q: i for s in samplers for b in s for i, q in b}
    for e in range(len(stream) // n):
        assert sorted(stream[q] for q in range(e * n, (e + 1) * n)) == list(range(n))
    # a sampler started at micro-batch 5 yields what the full one yields from 5 on (exact resume)
    resumed = StepBatchSampler(n, batch, 3, 5, 14, processes, 0)
    assert list(resumed) == list(samplers[0])[5:]
