"""The proof's page, ``<work>/index.html``, and its figures as JSON, ``<work>/proof.json``: per shot size
the base and trained grids side by side (the validation report's grids), the fidelity table with counts
and 95 % Wilson intervals, the training loss curve (the trainer's ``logs/loss.jsonl``), the judge's
held-out accuracy and confusion matrices, the configuration and the time of each phase.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from storyboard.core.html import escape, relative_href, render_table, write_page
from storyboard.core.records import atomic_write_json
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.judge_file import read_judge_file

TARGET_TRAINED, TARGET_BASE = 0.85, 0.45  # issue 12: trained >= 85 %, base <= 45 %
PIXELATED = "image-rendering:pixelated;image-rendering:crisp-edges"


def wilson(matched: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of matched / n (what a share of a few dozen images can claim)."""
    if not n:
        return 0.0, 0.0
    p = matched / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(matched: int, n: int) -> str:
    if not n:
        return "-"
    lo, hi = wilson(matched, n)
    return f"{matched}/{n} = {100 * matched / n:.0f} % [{100 * lo:.0f}-{100 * hi:.0f}]"


def fidelity_rows(fidelity: dict) -> tuple[list[str], list[list[str]], dict]:
    """(header, rows, figures) of the report's fidelity.json with Wilson intervals."""
    columns = fidelity["columns"]
    rows, figures = [], {}
    for shot, cells in [*fidelity["by_shot"].items(), ("all", fidelity["total"])]:
        rows.append([shot] + [_cell(cells[c]["matched"], cells[c]["n"]) for c in columns])
        figures[shot] = {c: {**cells[c], "wilson95": wilson(cells[c]["matched"], cells[c]["n"])} for c in columns}
    return ["shot size asked"] + [f"{c}: matched/judged [95 % interval]" for c in columns], rows, figures


def loss_svg(losses: list[float], width: int = 640, height: int = 200) -> str:
    """The per-step loss (grey) and its 20-step moving mean (black) as an inline SVG."""
    if len(losses) < 2:
        return "<p>(fewer than two steps logged)</p>"
    top, bottom = max(losses), min(losses)
    span = (top - bottom) or 1.0

    def points(values: list[float]) -> str:
        return " ".join(f"{40 + i * (width - 50) / (len(values) - 1):.1f},"
                        f"{10 + (top - v) * (height - 30) / span:.1f}" for i, v in enumerate(values))

    window = max(1, min(20, len(losses) // 5))
    mean = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
            for i in range(len(losses))]
    return (f'<svg width="{width}" height="{height}" style="background:#fafafa;border:1px solid #ccc">'
            f'<text x="2" y="16" font-size="11">{top:.3f}</text>'
            f'<text x="2" y="{height - 20}" font-size="11">{bottom:.3f}</text>'
            f'<text x="{width - 90}" y="{height - 4}" font-size="11">step {len(losses)}</text>'
            f'<polyline fill="none" stroke="#bbb" points="{points(losses)}"/>'
            f'<polyline fill="none" stroke="#000" stroke-width="1.5" points="{points(mean)}"/></svg>')


def _confusion_html(name: str, matrix: list[list[int]], classes: list[str]) -> str:
    rows = [[f"true {c}"] + list(r) for c, r in zip(classes, matrix) if any(r)]
    return f"<h3>{escape(name)}</h3>" + render_table(["", *[f"judged {c}" for c in classes]], rows)


def _judge_html(judge_file: Path) -> tuple[str, dict]:
    spec = read_judge_file(judge_file, load_vocabulary())
    details, classes = spec.details, list(spec.classes)
    parts = [f"<p>Held out (images it never trained on): <b>{escape(spec.accuracy_text())}</b>; "
             f"{details.get('held_out_images', '?')} held-out images per set, "
             f"{details.get('train_images', '?')} training images, {spec.pixels} px thumbnails. "
             f"Colour-only control (colour histograms, no positions): "
             f"{100 * details.get('colour_only_control', 0):.0f} %. "
             + ", ".join(f"{k.replace('_', ' ')}: {100 * v:.0f} %" for k, v in details.items()
                         if k.startswith("nobody_rejected")) + ".</p>"]
    for key in ("confusion_renders", "confusion_reconstructions"):
        if key in details:
            parts.append(_confusion_html(key.replace("confusion_", "held-out ") + " (rows: truth)", details[key],
                                         classes))
    return "".join(parts), {"held_out": spec.held_out, "classes": classes,
                            "colour_only_control": details.get("colour_only_control")}


def _times_html(p) -> tuple[str, dict]:
    world = p.world_record
    built = [[name, secs, world.get("cpu_seconds", {}).get(name, "")] for name, secs in world["seconds"].items()]
    run = [[name, secs, p.clock.cpu.get(name, "")] for name, secs in p.clock.seconds.items()]
    text = (f"<p>World built on {escape(world.get('device', '?'))} with {world.get('torch_threads', '?')} torch "
            f"thread(s): {world.get('wall_seconds', sum(world['seconds'].values())):.0f} s wall.</p>"
            + render_table(["world phase", "wall s", "CPU s"], built)
            + "<p>This run (the world phase is the build, or the check that it is cached):</p>"
            + render_table(["run phase", "wall s", "CPU s"], run))
    return text, {"world_build": world["seconds"], "world_build_wall": world.get("wall_seconds"),
                  "run": p.clock.seconds, "run_cpu": p.clock.cpu}


def _grids_html(report_dir: Path, work: Path) -> str:
    parts = []
    for grid in sorted(report_dir.glob("grid-*.png")):
        href = relative_href(grid, work)
        parts.append(f'<figure style="display:inline-block;margin:0 1em 1em 0"><figcaption>{escape(grid.stem)}'
                     f'</figcaption><a href="{href}"><img src="{href}" style="{PIXELATED};height:480px"></a>'
                     f"</figure>")
    return "".join(parts) or "<p class='missing'>No grids (the validation report was not written).</p>"


def _data_html(p) -> str:
    if p.settings.data_path == "direct":
        return ("<h2>Training set</h2><p>Written straight from the world's renderer (--data-path direct), "
                "not through the data stages.</p>")
    rows = [[name, s.get("read"), s.get("written"), sum((s.get("rejected_by_reason") or {}).values())]
            for name, s in p.data_stages.items() if s]
    return ("<h2>Training set, through the data stages</h2><p>The world's renders as a crawl with Korean tags: "
            "collect → 01 → 02 (table) → 03 → clustering (tiny CLIP, clusters named by the tags).</p>"
            + render_table(["stage", "read", "written", "rejected"], rows))


def write_proof_page(p, judge_file: Path, run_name: str) -> Path:
    """``<work>/index.html`` and ``<work>/proof.json`` for the finished proof ``p`` (``run.Proof``)."""
    work = p.work
    report_dir = work / "validation" / "output" / "report"
    fidelity = json.loads((report_dir / "fidelity.json").read_text(encoding="utf-8"))
    header, rows, figures = fidelity_rows(fidelity)
    trained_dir = work / "model_sd_weight" / run_name
    lines = (trained_dir / "logs" / "loss.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [row["loss"] for row in map(json.loads, filter(str.strip, lines)) if "loss" in row]
    training = json.loads((trained_dir / "trigger_manifest.json").read_text(encoding="utf-8"))["training"]
    judge_html, judge_fig = _judge_html(judge_file)
    times_html, times = _times_html(p)
    total = figures["all"]
    base, trained = (total.get("base", {}), total.get(run_name, {}))
    share = {k: (v["matched"] / v["n"] if v.get("n") else 0.0) for k, v in (("base", base), ("trained", trained))}
    reached = share["trained"] >= TARGET_TRAINED and share["base"] <= TARGET_BASE
    verdict = (f"Trained {100 * share['trained']:.0f} % (target ≥ {100 * TARGET_TRAINED:.0f} %), base "
               f"{100 * share['base']:.0f} % (target ≤ {100 * TARGET_BASE:.0f} %): targets "
               + ("reached." if reached else "NOT reached."))
    body = [f"<p><b>{escape(verdict)}</b> Judge: {escape(fidelity['judge'])}.</p>",
            "<h2>Trigger fidelity</h2><p>Share of generated images the learned judge sees as the shot size the "
            "prompt asked for; the base model gets each trigger's plain words. A \"nobody\" judgement is a miss.</p>",
            render_table(header, rows),
            "<h2>Grids: base | trained, per shot size</h2><p>Rows are prompts (same seed across a row); "
            "the left column the base, the right the trained trigger.</p>", _grids_html(report_dir, work),
            f"<h2>Training loss</h2><p>{len(losses)} steps; fixed-noise loss "
            f"{training.get('fixed_noise_loss_start', float('nan')):.4f} → "
            f"{training.get('fixed_noise_loss_end', float('nan')):.4f}; "
            f"{training.get('images_per_s', 0):.1f} images/s.</p>", loss_svg(losses),
            _data_html(p),
            "<h2>The judge</h2>", judge_html,
            "<h2>Time of each phase</h2>", times_html,
            "<h2>Configuration</h2><h3>World</h3><pre>" + escape(json.dumps(p.config.to_dict(), indent=1))
            + "</pre><h3>Proof run</h3><pre>" + escape(json.dumps(p.settings.to_dict(), indent=1)) + "</pre>",
            "<h2>Commands</h2><pre>" + escape("\n".join(f"# {k}\n{v}" for k, v in p.commands.items())) + "</pre>",
            f'<h2>Files</h2><ul><li><a href="{relative_href(report_dir / "index.html", work)}">validation report</a>'
            f'</li><li><a href="Dataset_fin/metadata.jsonl">Dataset_fin/metadata.jsonl</a></li>'
            f'<li><a href="model_sd_weight/{run_name}/trigger_manifest.json">trigger_manifest.json</a></li>'
            f'<li><a href="judge/{judge_file.name}">the judge file</a></li><li>world: {escape(p.world)}</li></ul>']
    atomic_write_json(work / "proof.json", {
        "verdict": verdict, "fidelity": figures, "judge": {"name": fidelity["judge"], **judge_fig},
        "training": training, "times": times, "data_stages": p.data_stages, "world": str(p.world),
        "fingerprint": p.world_record["fingerprint"],
        "config": p.config.to_dict(), "settings": p.settings.to_dict(), "commands": p.commands})
    return write_page(work / "index.html", "Storyboard Trigger: proof that a trigger works", "".join(body),
                      subtitle=f"World {p.world.name}: the project's own stages on a world small enough to "
                               f"train on a CPU.")
