"""What the training loop eats: images and captions from ``Dataset_fin``, in a reproducible order.

Every random choice (which images form micro-batch ``m``, the crop, the flip, the tag shuffle, the
caption dropout) is a pure function of ``(seed, position)``, not of a random state that runs on.
That is what makes ``--resume_from_checkpoint`` exact: micro-batch ``m`` after a resume is the same
micro-batch ``m`` an uninterrupted run saw, whatever the number of loader workers.

* The sample stream is the concatenation of one permutation of the data set per epoch; the
  permutation of epoch ``e`` is drawn from ``(seed, e)``. Micro-batch ``m`` of a run with ``P``
  processes and batch ``B`` takes stream positions ``[m*P*B, (m+1)*P*B)``; process ``p`` takes its
  ``B`` of them. So the data order, epochs and steps are counted once, not per process, and a small
  data set never yields an empty epoch.
* A sample's augmentations come from its stream position (``draw``), so an image seen in two
  epochs gets two different crops/flips/shuffles, and the same ones again after a resume.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from storyboard.core.cli import UserError
from storyboard.train.inputs import TrainItem


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs, unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionPolicy:
    triggers: tuple[str, ...]
    shuffle: bool = False
    keep_tokens: int = 1
    tag_dropout: float = 0.0
    caption_dropout: float = 0.0

    def apply(self, text: str, rng: random.Random) -> str:
        """The caption one training sample sees. Without shuffle or dropout it is ``text`` unchanged.

        With shuffle, comma-separated tags after the first ``keep_tokens`` are shuffled, and any tag
        holding a trigger token is moved to the front first, so the trigger always leads.
        """
        if self.caption_dropout and rng.random() < self.caption_dropout:
            return ""
        if not (self.shuffle or self.tag_dropout):
            return text
        tags = [t.strip() for t in text.split(",") if t.strip()]
        has_trigger = [any(tok in t for tok in self.triggers) for t in tags]
        triggered = [t for t, hit in zip(tags, has_trigger) if hit]
        others = [t for t, hit in zip(tags, has_trigger) if not hit]
        extra_kept = max(self.keep_tokens - len(triggered), 0)
        head, rest = triggered + others[:extra_kept], others[extra_kept:]
        if self.shuffle:
            rng.shuffle(rest)
        if self.tag_dropout:
            rest = [t for t in rest if rng.random() >= self.tag_dropout]
        return ", ".join(head + rest)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePolicy:
    resolution: int
    center_crop: bool = True
    random_flip: bool = False

    def load(self, path, rng: random.Random | None, flip: bool | None = None) -> torch.Tensor:
        """``(3, R, R)`` float32 in [-1, 1]: shorter side resized to R, cropped, maybe flipped."""
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot decode training image {path}: {exc}") from None
        r = self.resolution
        w, h = image.size
        scale = r / min(w, h)
        size = (max(r, round(w * scale)), max(r, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, Image.Resampling.BICUBIC)
        w, h = image.size
        if self.center_crop or rng is None:
            left, top = (w - r) // 2, (h - r) // 2
        else:
            left, top = rng.randint(0, w - r), rng.randint(0, h - r)
        image = image.crop((left, top, left + r, top + r))
        if flip is None:
            flip = self.random_flip and rng is not None and rng.random() < 0.5
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array.transpose(2, 0, 1).copy())


# --------------------------------------------------------------------------------------------
# The data set and its sampler
# --------------------------------------------------------------------------------------------
class TriggerDataset(Dataset):
    """Indexed by ``(index, draw)``: the record and the stream position that seeds its randomness.

    With ``latents`` (from ``cache_latents``) it returns the VAE's distribution parameters instead of
    pixels: ``latents[index][flip]``.
    """

    def __init__(self, items: Sequence[TrainItem], tokenizer, captions: CaptionPolicy, images: ImagePolicy,
                 seed: int, latents: list[list[torch.Tensor]] | None = None):
        self.items = list(items)
        self.tokenizer = tokenizer
        self.captions = captions
        self.images = images
        self.seed = seed
        self.latents = latents

    def __len__(self) -> int:
        return len(self.items)

    def tokenize(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids[0]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw = key
        item = self.items[index]
        rng = random.Random(derive_seed(self.seed, "sample", draw))
        caption = self.captions.apply(item.caption, rng)
        out = {"input_ids": self.tokenize(caption), "index": index, "caption": caption}
        if self.latents is not None:
            flip = self.images.random_flip and rng.random() < 0.5
            out["latent_params"] = self.latents[index][1 if flip else 0]
        else:
            out["pixel_values"] = self.images.load(item.path, rng)
        return out


def collate(samples: list[dict]) -> dict:
    batch = {"input_ids": torch.stack([s["input_ids"] for s in samples]),
             "index": torch.tensor([s["index"] for s in samples]),
             "caption": [s["caption"] for s in samples]}
    for name in ("pixel_values", "latent_params"):
        if name in samples[0]:
            batch[name] = torch.stack([s[name] for s in samples]).contiguous()
    return batch


class StepBatchSampler(Sampler):
    """Yields this process's ``[(index, draw), ...]`` for micro-batches ``start .. stop-1``."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, stop: int,
                 num_processes: int = 1, process_index: int = 0):
        self.n, self.batch_size, self.seed = num_items, batch_size, seed
        self.start, self.stop = start, stop
        self.num_processes, self.process_index = num_processes, process_index
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def positions(self, micro_batch: int) -> range:
        global_batch = self.batch_size * self.num_processes
        first = micro_batch * global_batch + self.process_index * self.batch_size
        return range(first, first + self.batch_size)

    def batch(self, micro_batch: int) -> list[tuple[int, int]]:
        return [(self._perm(q // self.n)[q % self.n], q) for q in self.positions(micro_batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for m in range(self.start, self.stop):
            yield self.batch(m)


def epochs_seen(micro_batches: int, batch_size: int, num_processes: int, num_items: int) -> float:
    """How many passes over the data set ``micro_batches`` micro-batches make (all processes)."""
    return micro_batches * batch_size * num_processes / num_items


def make_loader(dataset: TriggerDataset, sampler: StepBatchSampler, num_workers: int, pin_memory: bool):
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)


# --------------------------------------------------------------------------------------------
# Latent cache
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def cache_latents(items: Sequence[TrainItem], images: ImagePolicy, vae, device, dtype, batch_size: int = 4,
                  progress=None) -> list[list[torch.Tensor]]:
    """The VAE's latent distribution parameters (mean and log-variance, fp32, on CPU) of every image,
    and of its mirror image when ``random_flip``: ``[[plain, flipped?], ...]``.

    Training samples from them exactly as ``vae.encode(x).latent_dist.sample()`` would, so caching
    changes the cost, not what is learned.
    """
    flips = (False, True) if images.random_flip else (False,)
    jobs = [(i, flip) for i in range(len(items)) for flip in flips]
    out: list[list[torch.Tensor]] = [[None] * len(flips) for _ in items]  # type: ignore[list-item]
    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    for chunk in (progress(chunks) if progress else chunks):
        pixels = torch.stack([images.load(items[i].path, None, flip=flip) for i, flip in chunk])
        params = vae.encode(pixels.to(device=device, dtype=dtype)).latent_dist.parameters.float().cpu()
        for (i, flip), p in zip(chunk, params):
            out[i][1 if flip else 0] = p.clone()
    return out
