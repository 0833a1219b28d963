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
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }}
.sub {{ background: #fd8; }} .ins {{ background: #8df; }} .del {{ background: #f99; text-decoration: line-through; }}
</style></head><body>
<h1>Run {html.escape(str(run_dir))}</h1>
<pre>{html.escape(json.dumps(summary, indent=2))}</pre>
<h2>Curves</h2><div class="grid">{''.join(images)}</div>
<h2>Latest attention maps</h2>{_img(attention) if attention.exists() else '<p>none yet</p>'}
<h2>Worst dev utterances</h2>
<p><span class="sub">substitution</span> <span class="ins">insertion</span> <span class="del">deletion</span></p>
<table><tr><th>id</th><th>CER</th><th>reference</th><th>hypothesis</th></tr>
{rows}
</table></body></html>
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
