"""CLIP loading from local files (every accepted form and the clear errors), the content-keyed
embedding cache (a re-run embeds nothing; a grown set embeds only what is new), merging caches, and
sharding."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from storyboard.clustering.cache import EmbeddingCache, merge_caches
from storyboard.clustering.clip import load_clip
from storyboard.clustering.decode import open_for_embedding, ramp_batches, thread_loader
from storyboard.clustering.embed import embed_keys, iter_embeddings, shard_indices
from storyboard.clustering.settings import ClusteringSettings
from storyboard.core.cli import UserError
from storyboard.core.runtime import Processes, parse_shard
from storyboard.devkit.shot_composites import composite


@pytest.fixture(scope="module")
def clip(tiny_models):
    return load_clip(f"local-dir:{tiny_models / 'clip'}", device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("embed_images")
    paths = []
    for i, shot in enumerate(("close_up", "medium", "full", "long", "medium_close_up")):
        path = folder / f"{i}_{shot}.jpg"
        composite(shot, 320, 240, seed=i).image.save(path, quality=90)
        paths.append(path)
    return paths


def embed(clip, paths):
    feats, failed = {}, {}
    for batch in iter_embeddings(clip, paths, batch_size=2, workers=0):
        for row, i in enumerate(batch.indices):
            feats[i] = batch.features[row]
        failed.update(dict(batch.failed))
    return feats, failed


def test_the_three_loading_forms_give_the_same_features(clip, tiny_models, images, tmp_path):
    folder = tiny_models / "clip"
    by_config = load_clip(str(folder / "tiny-clip.json"), folder / "tiny-clip.safetensors", device="cpu")
    # an open_clip .pt state dict, read with weights_only=True
    pt = tmp_path / "tiny-clip.pt"
    torch.save(by_config.model.state_dict(), pt)
    by_pt = load_clip(str(folder / "tiny-clip.json"), pt, device="cpu")
    reference, _ = embed(clip, images[:2])
    for other in (by_config, by_pt):
        feats, _ = embed(other, images[:2])
        assert np.allclose(feats[0], reference[0], atol=1e-5) and np.allclose(feats[1], reference[1], atol=1e-5)
    assert np.isclose(np.linalg.norm(reference[0]), 1.0, atol=1e-5)
    assert by_pt.info["format"] == "torch" and by_config.info["format"] == "safetensors"


@pytest.mark.filterwarnings("ignore")  # the tracer's warnings about open_clip's Python branches
def test_openai_style_torchscript_checkpoint_loads(clip, tiny_models, images, tmp_path):
    # OpenAI's release files are TorchScript archives, which torch.load(weights_only=True) refuses.
    model = clip.model.eval()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)),
                             strict=False, check_trace=False)
    path = tmp_path / "tiny-openai.pt"
    traced.save(str(path))
    loaded = load_clip(str(tiny_models / "clip" / "tiny-clip.json"), path, device="cpu", quick_gelu="off")
    assert loaded.info["format"] == "torchscript"
    a, _ = embed(clip, images[:1])
    b, _ = embed(loaded, images[:1])
    assert np.allclose(a[0], b[0], atol=1e-5)


def test_a_checkpoint_that_is_not_clip_names_file_and_architecture(tiny_models, tmp_path):
    path = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3), "conv_in.bias": torch.zeros(4)}, path)
    with pytest.raises(UserError) as err:
        load_clip("ViT-B-32", path, device="cpu")
    assert "unet.pt" in str(err.value) and "not a CLIP checkpoint" in str(err.value) and "ViT-B-32" in str(err.value)


def test_a_clip_of_another_architecture_names_both(tiny_models):
    with pytest.raises(UserError) as err:
        load_clip("ViT-B-32", tiny_models / "clip" / "tiny-clip.safetensors", device="cpu")
    message = str(err.value)
    assert "tiny-clip.safetensors" in message and "ViT-B-32" in message and "width 32" in message


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Path("/")}, path)  # an arbitrary Python object: weights_only refuses it
    with pytest.raises(UserError, match="weights_only"):
        load_clip("ViT-B-32", path, device="cpu")


def test_missing_and_unknown(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_clip("ViT-B-32", tmp_path / "ViT-B-32-openai.pt", device="cpu")
    with pytest.raises(UserError, match="unknown CLIP architecture"):
        load_clip("ViT-Q-99", tmp_path / "x.pt", device="cpu")
    with pytest.raises(UserError, match="open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path}", device="cpu")


def test_unreadable_image_is_reported_not_raised(clip, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    feats, failed = embed(clip, [images[0], broken])
    assert list(feats) == [0] and failed[1][0] == "unreadable_image"


def test_fast_jpeg_decode_keeps_features(clip, tmp_path):
    path = tmp_path / "big.jpg"
    composite("medium", 1024, 1024, seed=2).image.save(path, quality=92)
    small = open_for_embedding(path, 64)
    assert min(small.size) >= 64 and small.size[0] < 1024  # decoded at a DCT scale
    fast = next(iter_embeddings(clip, [path], workers=0, fast_decode=True)).features[0]
    full = next(iter_embeddings(clip, [path], workers=0, fast_decode=False)).features[0]
    assert float(fast @ full) > 0.99


def test_cache_hit_on_rerun_and_only_new_images_embedded(clip, images, tmp_path):
    settings = ClusteringSettings(metadata=tmp_path / "m.jsonl", batch_size=2, workers=0)
    cache_dir = tmp_path / "cache"
    keyed = {f"key{i}": p for i, p in enumerate(images[:3])}
    first = embed_keys(clip, EmbeddingCache(cache_dir, clip.fingerprint, clip.info), keyed, settings)
    assert (first.embedded_now, first.cache_hits) == (3, 0)
    again = embed_keys(clip, EmbeddingCache(cache_dir, clip.fingerprint, clip.info), keyed, settings)
    assert (again.embedded_now, again.cache_hits) == (0, 3)
    assert all(np.array_equal(first.features[k], again.features[k]) for k in keyed)
    grown = dict(keyed, key3=images[3])
    third = embed_keys(clip, EmbeddingCache(cache_dir, clip.fingerprint, clip.info), grown, settings)
    assert (third.embedded_now, third.cache_hits) == (1, 3)
    # another model never sees these entries
    assert len(EmbeddingCache(cache_dir, "0" * 64).load()) == 0


def test_merge_caches_folds_shards_into_one_part(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    fp = "f" * 64
    EmbeddingCache(a, fp, {"model": "x"}).add(["k1", "k2"], np.eye(2, 4, dtype=np.float32))
    EmbeddingCache(b, fp, {"model": "x"}).add(["k3"], np.ones((1, 4), np.float32))
    EmbeddingCache(dest, fp, {"model": "x"}).add(["k0"], np.zeros((1, 4), np.float32))
    summary = merge_caches([a, b], dest)
    merged = EmbeddingCache(dest, fp)
    assert sorted(merged.load()) == ["k0", "k1", "k2", "k3"] and len(merged.parts()) == 1
    assert summary.models[0][3] == 4 and "entries after" in summary.table()
    assert len(EmbeddingCache(a, fp).load()) == 2  # sources untouched
    with pytest.raises(UserError, match="no embedding cache"):
        merge_caches([tmp_path], tmp_path / "other")
    shutil.rmtree(b)
    with pytest.raises(UserError, match="not found"):
        merge_caches([b], dest)


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_shards_cover_every_input_once(processes):
    for count in (1, 2, 3):
        seen = []
        for shard in range(count):
            for rank in range(processes):
                seen += shard_indices(23, (shard, count), Processes(rank, processes))
        assert sorted(seen) == list(range(23))


def test_parse_shard():
    assert parse_shard(None) == (0, 1) and parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 2 ") == (0, 2)
    for bad in ("4/4", "x", "1-4", "0/0"):
        with pytest.raises(UserError):
            parse_shard(bad)


class _SlowDataset:
    """Items that finish out of order (later indices sooner), some failing: what threads can reorder."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad = n, bad

    def __getitem__(self, i: int):
        import time

        time.sleep(0.002 * ((self.n - i) % 5))
        if i in self.bad:
            return i, None, ("unreadable_image", f"item {i}")
        return i, torch.full((1, 2), float(i)), None


@pytest.mark.parametrize("threads,ahead", [(0, 2), (1, 2), (2, 2), (3, 0), (4, 5)])
def test_thread_loader_keeps_batch_order_and_failures(threads, ahead):
    n, bad = 23, {0, 7, 22}
    batches = ramp_batches(n, 8)
    seen_ok, seen_failed = [], []
    for batch, (indices, tensor, failed) in zip(batches, thread_loader(_SlowDataset(n, bad), batches, ahead, threads)):
        assert indices == [i for i in batch if i not in bad]  # each batch whole, in order
        assert [i for i, _ in failed] == [i for i in batch if i in bad]
        if indices:
            assert tensor[:, 0, 0].tolist() == [float(i) for i in indices]  # tensors match their indices
        seen_ok += indices
        seen_failed += [i for i, _ in failed]
    assert sorted(seen_ok + seen_failed) == list(range(n)) and set(seen_failed) == bad


def test_the_small_copy_is_read_when_it_still_covers_the_model_input(clip, tmp_path):
    """03 writes a box-reduced PNG beside each 1024 px square: the embedding reads it instead of the
    square and gets the very features of the square's own reduced decode when the factors agree (here
    1024 // 64 for the tiny CLIP's 64 px input; 1024 // 256 = 1024 // 224 for ViT-B-32 and the default
    copies). A small copy holding another picture proves which file is read; one smaller than the
    model's input is passed over."""
    from storyboard.images.finalize import encode_image, small_copy

    square = np.asarray(composite("medium", 1024, 1024, seed=3).image.convert("RGB"))
    big = tmp_path / "square.png"
    big.write_bytes(encode_image(square, "png", 95))
    copy = tmp_path / "small.png"
    copy.write_bytes(encode_image(small_copy(square, 64), "png", 0))
    other = tmp_path / "other.png"
    other.write_bytes(encode_image(small_copy(np.asarray(composite("long", 1024, 1024, seed=4).image.convert("RGB")),
                                              64), "png", 0))
    tiny_copy = tmp_path / "tiny.png"
    tiny_copy.write_bytes(encode_image(small_copy(square, 32), "png", 0))  # 32 px: under the model's 64

    def features(smalls):
        return [b.features[0] for b in iter_embeddings(clip, [big] * len(smalls), batch_size=1, workers=0,
                                                       smalls=smalls)]

    from_big, from_copy, from_other, from_tiny = features([None, copy, other, tiny_copy])
    assert np.array_equal(from_copy, from_big)  # the same pixels reach the model
    assert not np.allclose(from_other, from_big)  # ... and it is the small file that was read
    assert np.array_equal(from_tiny, from_big)  # too small: the square itself
