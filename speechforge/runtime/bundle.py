"""What an export folder holds, for the exporter that writes it and the runtime that reads it.

```
export.json          the manifest: format, graphs with every input and output, files, decoder
encoder.onnx         feats, feat_lens -> enc_out, enc_lens, memory_k, memory_v[, ctc_log_probs]
decoder_step.onnx    tokens, self_k, self_v, memory_k, memory_v, memory_valid -> log_probs, next_self_k, next_self_v
tokenizer/           the run's tokenizer
normalization.json   the run's feature normalization (statistics included)
features.json        the filterbank settings (speechforge.data.audio.FrontEnd)
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from speechforge.data.errors import DataError

MANIFEST = "export.json"
FORMAT = "speechforge-onnx"
VERSION = 1
ENCODER = "encoder.onnx"
DECODER_STEP = "decoder_step.onnx"
TOKENIZER = "tokenizer"
NORMALIZATION = "normalization.json"
FEATURES = "features.json"


def is_export_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"not an export folder (no {MANIFEST}); make one with: speechforge export RUN_DIR --format onnx",
                        directory)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the manifest ({err})", path) from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"format {manifest.get('format')!r} version {manifest.get('version')!r}; this speechforge reads "
                        f"{FORMAT!r} version {VERSION}: export the run again", path)
    for graph in manifest["graphs"].values():
        if not (Path(directory) / graph["file"]).is_file():
            raise DataError(f"the manifest names {graph['file']}, which is missing", directory)
    return manifest
