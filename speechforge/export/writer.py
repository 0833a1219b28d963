"""Writing an export folder: trace the two graphs, check them, check that onnxruntime
computes what PyTorch does, and put the tokenizer, normalization, feature settings and
manifest beside them.

Tracing uses the TorchScript exporter (``dynamo=False``): with torch 2.13 it needs only
``onnx``, while the torch.export-based one also needs onnxscript, and the graphs in
``graphs.py`` are written to trace (no Python branch on shapes or values)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from speechforge import experiment
from speechforge.data.errors import DataError
from speechforge.data.tokenizers import BLANK, SOS
from speechforge.export import graphs
from speechforge.extras import require
from speechforge.model.attention import padding_mask
from speechforge.runtime import bundle
from speechforge.runtime.decoders import DECODERS

OPSET = 17  # LayerNormalization is one op from 17 on
# log-probabilities and encoder outputs from onnxruntime may differ from PyTorch's by
# float32 rounding (measured ~2e-6 on the quickstart model); more means a bad trace
TOLERANCE = 1e-3

Log = Callable[[str], None]


def default_out(run_dir: Path, weights: str) -> Path:
    return Path(run_dir) / ("onnx" if weights == "best" else f"onnx-{weights}")


def export_onnx(run_dir: Path, out: Path | None = None, weights: str = "best", log: Log = print) -> Path:
    """Export ``run_dir``'s model (``weights``: best, last or averaged) to ``out``
    (default ``RUN_DIR/onnx``, or ``RUN_DIR/onnx-<weights>``); returns the folder."""
    require("export", ("onnx", "onnxruntime"), "speechforge export")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else default_out(run_dir, weights)
    if out.exists() and any(out.iterdir()) and not bundle.is_export_dir(out):
        raise DataError("exists and is not an export folder; choose another --out or empty it", out)
    run = experiment.open_run(run_dir, weights=weights)
    # written beside the destination and moved in at the end: never half an export
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        manifest = _write(run, partial, weights, log)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / bundle.MANIFEST).write_text(json.dumps(manifest, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def _write(run: experiment.TrainedRun, folder: Path, weights: str, log: Log) -> dict[str, Any]:
    """Everything but the manifest into ``folder``; returns the manifest."""
    import onnx

    model = run.model.float().eval()
    has_ctc = model.ctc_head is not None
    front_end = experiment.front_end(run.recipe)
    feats, feat_lens = _example_feats(2, 96, front_end.num_mel_bins)
    _trace(graphs.EncoderGraph(model), (feats, feat_lens), folder / bundle.ENCODER, graphs.ENCODER_INPUTS,
           graphs.ENCODER_OUTPUTS + ((graphs.CTC_OUTPUT,) if has_ctc else ()), graphs.ENCODER_AXES)
    with torch.no_grad():
        _, enc_lens, memory_k, memory_v = graphs.EncoderGraph(model)(feats, feat_lens)[:4]
    layers, _, heads, frames, head_dim = memory_k.shape
    # two hypotheses per utterance: DecoderLayer.cross_attend then takes the path where rows
    # share their utterance's memory, which is also right for one hypothesis per utterance
    hyps = 2 * feats.shape[0]
    past = torch.randn(layers, hyps, heads, 2, head_dim, generator=torch.Generator().manual_seed(0))
    step_args = (torch.full((hyps,), BLANK + 1), past, past.clone(), memory_k, memory_v, padding_mask(enc_lens, frames))
    _trace(graphs.DecoderStepGraph(model), step_args, folder / bundle.DECODER_STEP, graphs.STEP_INPUTS,
           graphs.STEP_OUTPUTS, graphs.STEP_AXES)

    described = {}
    for name, file in (("encoder", bundle.ENCODER), ("decoder_step", bundle.DECODER_STEP)):
        onnx.checker.check_model(str(folder / file), full_check=True)
        described[name] = {"file": file, **_signature(onnx.load(str(folder / file)))}
    run.tokenizer.save(folder / bundle.TOKENIZER)
    run.normalizer.save(folder / bundle.NORMALIZATION)
    (folder / bundle.FEATURES).write_text(json.dumps(front_end.settings(), indent=2))
    manifest = {
        "format": bundle.FORMAT,
        "version": bundle.VERSION,
        "run_dir": str(run.run_dir),
        "weights": weights,
        "opset": OPSET,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
        "model": {"vocab_size": int(model.vocab_size), "decoder_layers": int(layers), "num_heads": int(heads),
                  "head_dim": int(head_dim), "ctc": has_ctc},
        "tokens": {"sos": run.tokenizer.sos_id, "eos": run.tokenizer.eos_id, "blank": run.tokenizer.blank_id},
        "graphs": described,
        "files": {"tokenizer": bundle.TOKENIZER, "normalization": bundle.NORMALIZATION, "features": bundle.FEATURES},
        "decode": runtime_decoder(run.recipe.decode.name, run.recipe.decode.args, has_ctc, log),
    }
    differences = _compare_with_torch(model, folder, manifest, front_end.num_mel_bins)
    log("onnxruntime against PyTorch, largest difference: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))
    return {**manifest, "max_abs_difference_from_torch": differences}


def runtime_decoder(name: str, args: dict[str, Any], has_ctc: bool, log: Log = print) -> dict[str, Any]:
    """The run's decoder as the runtime will run it: the arguments its version takes, or
    greedy where the runtime has no such decoder; what is left out is said."""
    needs_ctc = name == "ctc_greedy" or (args.get("ctc_weight") or 0) > 0
    if name not in DECODERS or (needs_ctc and not has_ctc):
        log(f"decode: the runtime has no {name} decoder for this model; the export decodes greedily")
        name, args = "greedy", {}
    accepted = inspect.signature(DECODERS[name]).parameters
    dropped = [k for k, v in args.items() if k not in accepted and v not in (None, 0, 0.0, 1.0)]
    if dropped:
        log(f"decode: the runtime's {name} decoder leaves out {', '.join(dropped)}")
    return {"name": name, **{k: v for k, v in args.items() if k in accepted}}


def _example_feats(batch: int, frames: int, num_mel_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised features are about unit normal; lengths all different."""
    feats = torch.randn(batch, frames, num_mel_bins, generator=torch.Generator().manual_seed(frames))
    lens = torch.tensor([frames - 7 * i for i in range(batch)])
    return feats, lens


@contextmanager
def _native_output_silenced():
    """The tracer's C++ side writes straight to file descriptors 1 and 2 (an IR dump of the
    whole graph on failure, shape-inference notes for packed LSTMs); the error raised says
    what matters, and --debug shows its traceback."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _trace(module: torch.nn.Module, args: tuple, path: Path, inputs, outputs, axes) -> None:
    # torch.onnx.export puts the module back in the mode it found it in, submodules included:
    # a wrapper built in training mode would leave the model training (batch-norm statistics
    # from the batch, dropout on) for the parity check that follows
    module.eval()
    with warnings.catch_warnings(), torch.no_grad(), _native_output_silenced():
        # the TorchScript exporter's deprecation notice, and tracer warnings about Python
        # values taken from shapes: graphs.py takes none that vary (checked by _compare_with_torch)
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes={k: v for k, v in axes.items()
                                                                        if k in inputs or k in outputs})
        except Exception as err:  # the tracer's errors are long IR dumps: keep the first line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"cannot be traced to ONNX ({type(err).__name__}: {reason[:300]}); the layers of this "
                            "model (run with --debug for the whole trace) need a trace-friendly path", path.name) from err


def _signature(model) -> dict[str, list[dict[str, Any]]]:
    import onnx

    def values(vs):
        return [{"name": v.name,
                 "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vs]

    return {"inputs": values(model.graph.input), "outputs": values(model.graph.output)}


def _compare_with_torch(model, folder: Path, manifest: dict[str, Any], num_mel_bins: int) -> dict[str, float]:
    """The largest differences between onnxruntime and PyTorch on shapes other than the
    traced ones: 3 utterances of other lengths, three greedy steps, then a step with two
    beams per utterance. Raises when one is beyond ``TOLERANCE``: a trace that kept a
    shape or a branch it should not have."""
    from speechforge.runtime.model import OnnxModel

    onnx_model = OnnxModel(folder, manifest, threads=1)
    feats, feat_lens = _example_feats(3, 157, num_mel_bins)
    enc = onnx_model.encode(feats.numpy(), feat_lens.numpy())
    diffs: dict[str, float] = {}
    with torch.no_grad():
        enc_out, enc_lens = model.encode(feats, feat_lens)
        if not np.array_equal(enc.enc_lens, enc_lens.numpy()):
            raise DataError(f"the encoder graph gives lengths {enc.enc_lens.tolist()}, PyTorch {enc_lens.tolist()}",
                            bundle.ENCODER)
        valid = enc.memory_valid
        diffs["enc_out"] = float(np.abs(enc.enc_out - enc_out.numpy())[valid].max())
        if enc.ctc_log_probs is not None:
            diffs["ctc_log_probs"] = float(np.abs(enc.ctc_log_probs - model.ctc_log_probs(enc_out).numpy())[valid].max())
        worst, generator = 0.0, torch.Generator().manual_seed(0)
        for beams in (1, 2):
            state, onnx_state = model.init_state(enc_out, enc_lens, beams), onnx_model.init_state(enc, beams)
            tokens = torch.full((3 * beams,), SOS, dtype=torch.long)
            for _ in range(3 if beams == 1 else 2):
                expected = model.step(tokens, state).float().log_softmax(-1)
                worst = max(worst, float(np.abs(onnx_model.step(tokens.numpy(), onnx_state) - expected.numpy()).max()))
                tokens = torch.randint(BLANK + 1, model.vocab_size, tokens.shape, generator=generator)
        diffs["log_probs"] = worst
    for name, diff in diffs.items():
        if not diff <= TOLERANCE:
            graph = bundle.DECODER_STEP if name == "log_probs" else bundle.ENCODER
            raise DataError(f"onnxruntime's {name} differ from PyTorch's by {diff:.2g} (tolerance {TOLERANCE}): "
                            "this model does not trace faithfully; nothing was written", graph)
    return diffs
