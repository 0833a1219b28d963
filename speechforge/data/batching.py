"""From utterances to padded batches: dataset, length-bucketed batch sampler, collate."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from speechforge.data.corpus import Utterance, load_features
from speechforge.data.normalization import Normalizer
from speechforge.data.tokenizers import EOS, PAD, SOS, Tokenizer

# A run in bf16 or fp16 pads its batches to lengths in steps of FRAME_STEP frames and
# TOKEN_STEP tokens, so that their shapes repeat. oneDNN, which does a CPU's bf16 matrix
# products and convolutions, builds a kernel for every new shape: with batches padded to
# their longest utterance nearly every batch was a new shape, and the quickstart trained no
# faster in bf16 than in fp32. In steps, 1.3x faster (benchmarks/README.md). fp32 products
# (MKL) build nothing per shape, so an fp32 run pads only to the longest utterance: the
# steps cost it up to 25% on short utterances (spoken digits: 50 frames padded to 64, 6
# tokens to 16). GPU kernels like multiples of 8 too.
FRAME_STEP = 32
TOKEN_STEP = 16


def pad_steps(mixed_precision: str) -> tuple[int, int]:
    """(frame step, token step) of a run computing in ``mixed_precision`` (Accelerate's name)."""
    return (FRAME_STEP, TOKEN_STEP) if mixed_precision in ("bf16", "fp16") else (1, 1)


def padded_length(length: int, step: int) -> int:
    """``length`` rounded up to a multiple of ``step``."""
    return -(-length // step) * step


def token_tensors(sequences: list[list[int]], step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, U) <sos> + tokens and tokens + <eos>, PAD after; U + 1 rounded up to ``step``."""
    width = padded_length(max(len(seq) for seq in sequences) + 1, step)
    tokens_in = torch.full((len(sequences), width), PAD, dtype=torch.long)
    tokens_out = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens_in[i, 0] = SOS
        tokens_in[i, 1 : len(seq) + 1] = torch.tensor(seq, dtype=torch.long)
        tokens_out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        tokens_out[i, len(seq)] = EOS
    return tokens_in, tokens_out


class UtteranceDataset(Dataset):
    """Normalized features and token ids of one split, read lazily from disk.

    An utterance with a ``front_end`` (training utterances of an audio source with
    waveform augmentations) has its features computed from its recording at each read."""

    def __init__(self, utterances: list[Utterance], normalizer: Normalizer, tokenizer: Tokenizer | None,
                 num_mel_bins: int = 80):
        self.utterances = utterances
        self.normalizer = normalizer
        self.tokenizer = tokenizer
        self.num_mel_bins = num_mel_bins

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        if utt.front_end is not None and utt.audio is not None:
            feats = utt.front_end(utt.audio)  # (T, F)
        else:
            feats = load_features(utt.feats, self.num_mel_bins)
        feats = self.normalizer(feats, utt.speaker)
        item = {"id": utt.id, "feats": torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)), "text": utt.text}
        if utt.text is not None and self.tokenizer is not None:
            item["tokens"] = self.tokenizer.encode(utt.text)
        return item


@dataclass
class Batch:
    ids: list[str]
    feats: torch.Tensor  # (B, T, F)
    feat_lens: torch.Tensor  # (B,)
    texts: list[str | None]
    tokens_in: torch.Tensor | None = None  # (B, U) <sos> + tokens, PAD after
    tokens_out: torch.Tensor | None = None  # (B, U) tokens + <eos>, PAD after
    token_lens: torch.Tensor | None = None  # (B,) without <sos>/<eos>

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(self.ids, move(self.feats), move(self.feat_lens), self.texts,
                     move(self.tokens_in), move(self.tokens_out), move(self.token_lens))

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.feat_lens.sum()) / self.feats.shape[0] / self.feats.shape[1]


def collate(items: list[dict], frame_step: int = 1, token_step: int = 1) -> Batch:
    """Utterances -> one batch, frames and tokens padded to the longest rounded up to the steps."""
    lens = torch.tensor([it["feats"].shape[0] for it in items])
    width = padded_length(int(lens.max()), frame_step)
    feats = torch.zeros(len(items), width, items[0]["feats"].shape[1])
    for i, it in enumerate(items):
        feats[i, : it["feats"].shape[0]] = it["feats"]
    batch = Batch([it["id"] for it in items], feats, lens, [it["text"] for it in items])
    if all("tokens" in it for it in items):
        batch.tokens_in, batch.tokens_out = token_tensors([it["tokens"] for it in items], token_step)
        batch.token_lens = torch.tensor([len(it["tokens"]) for it in items])
    return batch


def make_batches(lengths: list[int], max_frames: int | None, batch_size: int | None,
                 bucketed: bool, rng: random.Random | None, indices: list[int] | None = None,
                 step: int = 1) -> list[list[int]]:
    """Group utterance indices (all of them, or ``indices``, which may repeat one) into batches.

    ``max_frames`` bounds the padded size (longest, rounded up to ``step``, x count), not
    the sum of lengths, because padded frames cost compute too. Bucketing sorts by length
    (with a little seeded jitter so batches differ between epochs) so each batch pads little."""
    order = list(range(len(lengths))) if indices is None else list(indices)
    if bucketed:
        if rng is not None:
            jitter = {i: lengths[i] * (1 + 0.1 * rng.random()) for i in order}
            order.sort(key=lambda i: jitter[i])
        else:
            order.sort(key=lambda i: lengths[i])
    elif rng is not None:
        rng.shuffle(order)
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, padded_length(lengths[i], step))
        too_many = batch_size is not None and len(current) >= batch_size
        too_big = max_frames is not None and current and new_longest * (len(current) + 1) > max_frames
        if current and (too_many or too_big):
            batches.append(current)
            current, new_longest = [], padded_length(lengths[i], step)
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


class BucketBatchSampler(Sampler[list[int]]):
    """Dynamic, length-bucketed batches, reshuffled per epoch from (seed, epoch).

    ``start`` skips the batches of an epoch already trained, so a resumed run sees
    exactly the batches an uninterrupted one would. ``draw`` (a mix of corpora's
    ``WeightedDraw``) chooses which utterances each epoch holds, from its own (seed, epoch)
    generator, so an epoch is the same whether or not it is shuffled or resumed."""

    def __init__(self, lengths: list[int], max_frames: int | None, batch_size: int | None,
                 bucketed: bool = True, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, draw: Callable[[random.Random], list[int]] | None = None,
                 step: int = 1):
        self.lengths, self.step = lengths, step
        self.draw = draw
        self.max_frames, self.batch_size = max_frames, batch_size
        self.bucketed, self.shuffle, self.seed = bucketed, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        # Accelerate's loader calls this at every pass: a new epoch starts from its first batch
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def resume_at(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def batches(self) -> list[list[int]]:
        """This process's batches of the epoch (all of them in a one-process run)."""
        rng = random.Random(self.seed * 100003 + self.epoch) if self.shuffle else None
        indices = self.draw(random.Random(f"draw/{self.seed}/{self.epoch}")) if self.draw else None
        batches = make_batches(self.lengths, self.max_frames, self.batch_size, self.bucketed, rng, indices, self.step)
        if self.num_replicas == 1:
            return batches
        return [shard_batch(b, self.lengths, self.num_replicas)[self.rank] for b in merge_small(batches, self.num_replicas)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start :]

    def __len__(self) -> int:
        return len(self.batches()) - self.start


def merge_small(batches: list[list[int]], num_replicas: int) -> list[list[int]]:
    """Fold batches with fewer utterances than processes into a neighbour, so every
    process gets a share of every batch."""
    out: list[list[int]] = []
    for batch in batches:
        if len(batch) < num_replicas and out:
            out[-1] = out[-1] + batch
        else:
            out.append(list(batch))
    if len(out) > 1 and len(out[0]) < num_replicas:
        out[1] = out[0] + out[1]
        out = out[1:]
    if sum(len(b) for b in out) < num_replicas:
        raise ValueError(f"{sum(len(b) for b in out)} utterances cannot be shared among {num_replicas} processes")
    return out


def shard_batch(batch: list[int], lengths: list[int], num_replicas: int) -> list[list[int]]:
    """Split one global batch into ``num_replicas`` shards of similar length.

    The recipe's batch is the global batch: with N processes each takes 1/N of it, so
    an optimizer step sees the same utterances whatever N is, every utterance once,
    and no process runs out of batches before the others (which would hang DDP)."""
    ordered = sorted(batch, key=lambda i: lengths[i])
    return [ordered[r::num_replicas] for r in range(num_replicas)]


def padding_fraction(lengths: list[int], batches: list[list[int]], step: int = 1) -> float:
    """The share of padding in ``batches`` as collate pads them (lengths rounded up to ``step``)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(padded_length(max(lengths[i] for i in b), step) * len(b) for b in batches)
    return 1.0 - real / padded if padded else 0.0


AugmentFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
