"""An export's two ONNX graphs behind the interface the searches use: ``encode`` once per
batch, then ``step`` once per token with the decoder's state held in numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from speechforge.runtime import bundle


def pad(feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(T_i, F) arrays -> a zero-padded (B, max T, F) float32 batch and the lengths (B,)."""
    lens = np.array([f.shape[0] for f in feats], dtype=np.int64)
    padded = np.zeros((len(feats), int(lens.max()), feats[0].shape[1]), dtype=np.float32)
    for i, f in enumerate(feats):
        padded[i, : f.shape[0]] = f
    return padded, lens


@dataclass
class Encoded:
    """What the encoder graph gives for a batch of B utterances."""

    enc_out: np.ndarray  # (B, S, D)
    enc_lens: np.ndarray  # (B,) int64
    memory_k: np.ndarray  # (L, B, H, S, Dh) cross-attention keys of every decoder layer
    memory_v: np.ndarray
    ctc_log_probs: np.ndarray | None  # (B, S, V); None without a CTC head

    @property
    def memory_valid(self) -> np.ndarray:  # (B, S) True at real frames
        return np.arange(self.enc_out.shape[1])[None, :] < self.enc_lens[:, None]


@dataclass
class StepState:
    """The decoder's state between steps: N hypotheses over B utterances, N / B in a row
    per utterance (beam search's beams), and the self-attention cache of each."""

    self_k: np.ndarray  # (L, N, H, P, Dh), P tokens fed so far
    self_v: np.ndarray
    memory_k: np.ndarray  # (L, B, H, S, Dh)
    memory_v: np.ndarray
    memory_valid: np.ndarray  # (B, S)

    def select(self, index: np.ndarray, utterances: np.ndarray | None = None) -> "StepState":
        """Keep hypotheses ``index`` (N',) and, when given, utterances ``utterances``."""
        mk, mv, valid = self.memory_k, self.memory_v, self.memory_valid
        if utterances is not None:
            mk, mv, valid = mk[:, utterances], mv[:, utterances], valid[utterances]
        return StepState(self.self_k[:, index], self.self_v[:, index], mk, mv, valid)


class OnnxModel:
    def __init__(self, folder: Path, manifest: dict[str, Any] | None = None, threads: int | None = None):
        manifest = manifest or bundle.read_manifest(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1

        def session(name: str) -> ort.InferenceSession:
            path = Path(folder) / manifest["graphs"][name]["file"]
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        self.encoder, self.decoder_step = session("encoder"), session("decoder_step")
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        m = manifest["model"]
        self.num_layers, self.num_heads, self.head_dim = m["decoder_layers"], m["num_heads"], m["head_dim"]
        self.vocab_size, self.has_ctc = m["vocab_size"], m["ctc"]

    def encode(self, feats: np.ndarray, feat_lens: np.ndarray) -> Encoded:
        """feats (B, T, F) normalised, padded; feat_lens (B,)."""
        out = dict(zip(self.encoder_outputs, self.encoder.run(None, {
            "feats": np.ascontiguousarray(feats, dtype=np.float32),
            "feat_lens": np.asarray(feat_lens, dtype=np.int64)})))
        return Encoded(out["enc_out"], out["enc_lens"], out["memory_k"], out["memory_v"], out.get("ctc_log_probs"))

    def init_state(self, enc: Encoded, beams: int = 1) -> StepState:
        """The state before <sos>: an empty cache for ``beams`` hypotheses per utterance."""
        n = enc.enc_lens.shape[0] * beams
        empty = np.zeros((self.num_layers, n, self.num_heads, 0, self.head_dim), dtype=np.float32)
        return StepState(empty, empty, enc.memory_k, enc.memory_v, enc.memory_valid)

    def step(self, tokens: np.ndarray, state: StepState) -> np.ndarray:
        """Feed one token per hypothesis (N,); the next-token log-probabilities (N, V).
        The state's cache grows by one position."""
        log_probs, state.self_k, state.self_v = self.decoder_step.run(None, {
            "tokens": np.asarray(tokens, dtype=np.int64), "self_k": state.self_k, "self_v": state.self_v,
            "memory_k": state.memory_k, "memory_v": state.memory_v, "memory_valid": state.memory_valid})
        return log_probs
