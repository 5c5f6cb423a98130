"""One self-contained HTML page about a run, from its workdir alone (images inlined, so one file):

    python -m vision_jax.report --workdir=DIR              # writes DIR/report.html
    vision-jax-report --workdir=DIR --out=simclr.html

It holds the config, the loss and learning-rate curves (and the evaluations' scores) from
DIR/metrics.jsonl, the results tables (DIR/results.json; DIR/eval_results_step*.json from
`vision-jax-evaluate`), and every picture in DIR/pictures (views, kNN retrieval, samples,
reconstructions).
"""
from __future__ import annotations

import argparse
import base64
import glob
import html
import io
import json
import os
import re
import shlex
import sys

from vision_jax.errors import MissingDataError, UserError

CURVES = {  # plot title: which metrics.jsonl keys it draws
    "loss": lambda key: key.startswith("train/") and "loss" in key,
    "learning rate": lambda key: key.startswith("train/") and "learning_rate" in key,
    "evaluation during training": lambda key: key.startswith("eval/"),
}
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}"
         "td:first-child,th:first-child{text-align:left}pre{background:#f4f4f4;padding:1em;overflow:auto}"
         "figure{display:inline-block;margin:.5em;vertical-align:top}img.picture{image-rendering:pixelated}")


def read_workdir(workdir: str) -> dict:
    """What the report shows, read from the workdir: config, metric records, results tables, pictures."""
    config_path, metrics_path = os.path.join(workdir, "config.json"), os.path.join(workdir, "metrics.jsonl")
    if not (os.path.isfile(config_path) or os.path.isfile(metrics_path)):
        raise MissingDataError(f"{workdir} is not a run's workdir (it has no config.json or metrics.jsonl): pass "
                               f"--workdir=DIR, the directory given to vision-jax-train --workdir=DIR.")
    config = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    records = []
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    tables = {}
    for path in [os.path.join(workdir, "results.json"),
                 *sorted(glob.glob(os.path.join(workdir, "eval_results_step*.json")), key=_step_of)]:
        if os.path.isfile(path):
            with open(path) as f:
                tables[os.path.basename(path)] = json.load(f)
    pictures = sorted(glob.glob(os.path.join(workdir, "pictures", "*.png")))
    return {"config": config, "records": records, "tables": tables, "pictures": pictures}


def _step_of(path: str) -> int:
    return int(re.search(r"step(\d+)", os.path.basename(path)).group(1))


def curves_png(records: list[dict], title: str, wanted) -> bytes | None:
    """A PNG plot of every metric `wanted` selects against the step; None when no record has one."""
    from matplotlib.figure import Figure  # here: only the report needs matplotlib, and it is slow to import

    keys = sorted({key for record in records for key in record if wanted(key)})
    if not keys:
        return None
    figure = Figure(figsize=(6, 3.5), dpi=100, layout="tight")
    axes = figure.subplots()
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        axes.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    axes.set(title=title, xlabel="step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _img(png: bytes, css_class: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def results_html(results: dict[str, dict[str, float]]) -> str:
    """A results table as the console prints it (evaluators/report.py format_table): rows of
    representations, a column per metric, two decimals, '-' where a row has no value."""
    columns = sorted({column for row in results.values() for column in row})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["features", *columns])
    rows = "".join("<tr><td>" + html.escape(name) + "</td>"
                   + "".join(f"<td>{row[c]:.2f}</td>" if c in row else "<td>-</td>" for c in columns) + "</tr>"
                   for name, row in results.items())
    return f"<table><tr>{head}</tr>{rows}</table>"


def render(workdir: str, content: dict) -> str:
    config = content["config"]
    name = " / ".join(str(config[k]["name"]) for k in ("method", "model") if isinstance(config.get(k), dict))
    title = f"vision_jax run {os.path.abspath(workdir)}" + (f": {name}" if name else "")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    steps = [r["step"] for r in content["records"]]
    if steps:
        parts.append(f"<p>{len(steps)} metric records, steps {min(steps)} to {max(steps)}"
                     + (f" of {config['total_steps']}" if "total_steps" in config else "") + ".</p>")
    parts.append("<h2>Results</h2>")
    for file_name, results in content["tables"].items():
        parts.append(f"<h3>{html.escape(file_name)}</h3>{results_html(results)}")
    if not content["tables"]:
        parts.append("<p>No results yet (the run writes results.json when it finishes).</p>")
    parts.append("<h2>Curves</h2>")
    for plot_title, wanted in CURVES.items():
        png = curves_png(content["records"], plot_title, wanted)
        if png is not None:
            parts.append(_img(png, "curve", plot_title))
    parts.append("<h2>Pictures</h2>")
    for path in content["pictures"]:
        with open(path, "rb") as f:
            png = f.read()
        caption = html.escape(os.path.basename(path))
        parts.append(f"<figure>{_img(png, 'picture', caption)}<figcaption>{caption}</figcaption></figure>")
    parts.append(f"<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2), quote=False)}</pre></body></html>")
    return "\n".join(parts)


def write_report(workdir: str, out: str | None = None) -> str:
    """Writes the report of `workdir` to `out` (default WORKDIR/report.html); returns its path."""
    out = out or os.path.join(workdir, "report.html")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):  # checked before reading anything
        raise MissingDataError(f"--out={out}: folder {folder} does not exist; create it (mkdir -p {shlex.quote(folder)}) "
                               f"or choose another --out.")
    page = render(workdir, read_workdir(workdir))
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out


def main(argv: list[str] | None = None) -> None:
    """The `vision-jax-report` command (and `python -m vision_jax.report`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a run's workdir (read only)")
    parser.add_argument("--out", default=None, help="the HTML file to write (default: WORKDIR/report.html)")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.workdir, args.out)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"Wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
