"""``speechforge report RUN_DIR``: one self-contained HTML page about a run.

Images are embedded as base64 PNG, so the page can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Any

import jiwer

from speechforge import plots
from speechforge.decode.outputs import decoder_defaults


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def highlight(ref: str, hyp: str) -> str:
    """The hypothesis with word errors marked: substitutions, insertions, deletions."""
    if not ref.strip():
        return html.escape(hyp)
    out = jiwer.process_words(ref, hyp or "")
    r, h = out.references[0], out.hypotheses[0]
    parts = []
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            parts.append(html.escape(" ".join(h[chunk.hyp_start_idx:chunk.hyp_end_idx])))
        elif chunk.type == "substitute":
            parts.append('<span class="sub" title="{}">{}</span>'.format(
                html.escape(" ".join(r[chunk.ref_start_idx:chunk.ref_end_idx])),
                html.escape(" ".join(h[chunk.hyp_start_idx:chunk.hyp_end_idx]))))
        elif chunk.type == "insert":
            parts.append(f'<span class="ins">{html.escape(" ".join(h[chunk.hyp_start_idx:chunk.hyp_end_idx]))}</span>')
        else:
            parts.append(f'<span class="del">{html.escape(" ".join(r[chunk.ref_start_idx:chunk.ref_end_idx]))}</span>')
    return " ".join(parts)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def worst_utterances(run_dir: Path, n: int = 10) -> list[dict[str, Any]]:
    files = sorted((run_dir / "decode").glob("*/dev.hyps.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    records = [json.loads(line) for line in files[-1].read_text().splitlines()]
    scored = [r for r in records if r.get("ref")]
    for r in scored:
        r["cer"] = jiwer.cer(r["ref"], r["hyp"] or " ")
    return sorted(scored, key=lambda r: -r["cer"])[:n]


def run_parameters(run_dir: Path) -> int | None:
    """Numbers in the run's saved weights (buffers such as batch-norm statistics included), a tied
    tensor counted once."""
    path = run_dir / "best.pt"
    if not path.exists():
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    seen, total = set(), 0
    for tensor in state.get("model", state).values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel()
    return total


def decodes(run_dir: Path) -> list[dict[str, Any]]:
    """Every decode of the run: its folder, decoder and arguments, precision, scores per split."""
    out = []
    for path in sorted((run_dir / "decode").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime):
        m = json.loads(path.read_text())
        out.append({"folder": path.parent.name, "decoder": m.get("decoder", {}), "precision": m.get("precision", "-"),
                    # every scored split: dev, and test or each folder of a list in data.test
                    **{split: v for split, v in m.items() if isinstance(v, dict) and "utterances" in v}})
    return out


def _splits(rows: list[dict[str, Any]]) -> list[str]:
    """The table's splits: dev and test, or dev and each folder of a data.test list."""
    found = dict.fromkeys(k for d in rows for k, v in d.items() if isinstance(v, dict) and "utterances" in v)
    others = [k for k in found if k not in ("dev", "test")]
    return ["dev", *(["test"] if "test" in found or not others else []), *others]


def _first_screen(run_dir: Path, summary: dict[str, Any], epochs: list[dict[str, Any]]) -> str:
    """What a person wants first: what was trained on what, for how long, and how well."""
    def cell(x: Any, fmt: str = "{:.4f}") -> str:
        return "-" if x is None else fmt.format(x)

    stats_path = run_dir / "dataset_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    recipe = (run_dir / "recipe.toml").read_text() if (run_dir / "recipe.toml").exists() else ""
    params = run_parameters(run_dir)
    facts = [
        ("parameters", "-" if params is None else f"{params:,}"),
        ("training data", cell(stats.get("train", {}).get("hours"), "{:.2f} hours") + ", "
         + cell(stats.get("train", {}).get("utterances"), "{} utterances")),
        ("training time", cell(sum(e.get("seconds", 0) for e in epochs) or None, "{:.0f} s")
         + f" ({summary.get('step', '-')} steps, {summary.get('epochs', '-')} epochs, "
           f"{summary.get('precision', '-')})"),
        ("best dev CER (greedy, while training)", cell(summary.get("best_dev_cer"))),
    ]
    rows = []
    runs = decodes(run_dir)
    splits = _splits(runs)
    for d in runs:
        name = d["decoder"].get("name", d["folder"])
        try:
            defaults = decoder_defaults(name)
        except Exception:  # a plugin decoder no longer installed: show every argument
            defaults = {}
        args = ", ".join(f"{k}={v}" for k, v in d["decoder"].items() if k != "name" and defaults.get(k, object()) != v)
        scores = "".join(f"<td>{cell(d.get(split, {}).get(k))}</td>" for split in splits for k in ("cer", "wer"))
        seconds = sum(d.get(split, {}).get("seconds", 0) for split in splits)
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(args)}</td>"
                    f"<td>{html.escape(str(d['precision']))}</td>{scores}<td>{seconds:.1f}</td></tr>")
    heads = "".join(f"<th>{html.escape(split)} {k}</th>" for split in splits for k in ("CER", "WER"))
    table = ("<table><tr><th>decoder</th><th>arguments</th><th>precision</th>" + heads +
             "<th>seconds</th></tr>" + "".join(rows) + "</table>") if rows else \
        "<p>no decodes yet</p>"
    listing = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    return (f'<table class="facts">{listing}</table><h2>Decodes</h2>{table}'
            f"<details><summary>recipe</summary><pre>{html.escape(recipe)}</pre></details>")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out = out or run_dir / "report.html"
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "loss" in m]
    epochs = [m for m in metrics if "train_loss" in m]
    dev = [m for m in epochs if "dev_cer" in m]
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        plots.curves({"train loss (step)": ([m["step"] for m in steps], [m["loss"] for m in steps]),
                      "dev loss (validation)": ([m["step"] for m in dev], [m["dev_loss"] for m in dev])},
                     tmp_dir / "loss.png", "loss")
        plots.curves({"dev CER": ([m["step"] for m in dev], [m["dev_cer"] for m in dev]),
                      "dev WER": ([m["step"] for m in dev], [m["dev_wer"] for m in dev])},
                     tmp_dir / "cer.png", "error rates (greedy, dev)")
        plots.curves({"learning rate": ([m["step"] for m in steps], [m["lr"] for m in steps])},
                     tmp_dir / "lr.png", "learning rate")
        images = [_img(tmp_dir / f"{name}.png") for name in ("loss", "cer", "lr")]
    attention = run_dir / "plots" / "attention-latest.png"
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    rows = "\n".join(
        f"<tr><td>{html.escape(r['id'])}</td><td>{r['cer']:.3f}</td><td>{html.escape(r['ref'])}</td>"
        f"<td>{highlight(r['ref'], r['hyp'])}</td></tr>"
        for r in worst_utterances(run_dir)
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>speechforge report: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
img {{ max-width: 100%; }} .grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} .facts th {{ text-align: left; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }}
.sub {{ background: #fd8; }} .ins {{ background: #8df; }} .del {{ background: #f99; text-decoration: line-through; }}
</style></head><body>
<h1>Run {html.escape(str(run_dir))}</h1>
{_first_screen(run_dir, summary, epochs)}
<h2>Curves</h2><div class="grid">{''.join(images)}</div>
<h2>Latest attention maps</h2>{_img(attention) if attention.exists() else '<p>none yet</p>'}
<h2>Worst dev utterances</h2>
<p><span class="sub">substitution</span> <span class="ins">insertion</span> <span class="del">deletion</span></p>
<table><tr><th>id</th><th>CER</th><th>reference</th><th>hypothesis</th></tr>
{rows}
</table>
<details><summary>summary.json</summary><pre>{html.escape(json.dumps(summary, indent=2))}</pre></details>
</body></html>
"""
    out.write_text(page)
    return out


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run directory below root with its best dev CER."""
    runs = []
    for recipe in sorted(Path(root).glob("**/recipe.toml")):
        run_dir = recipe.parent
        dev = [m["dev_cer"] for m in read_metrics(run_dir) if "dev_cer" in m and m["dev_cer"] == m["dev_cer"]]
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        runs.append({"run_dir": str(run_dir), "best_dev_cer": min(dev) if dev else None,
                     "best_val_ppl": summary.get("best_val_ppl"), "steps": summary.get("step"),
                     "finished": bool(summary)})
    return runs
