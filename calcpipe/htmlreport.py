"""A static, self-contained HTML report of a scored cohort (no scripts, figures inline).

``calcpipe report OUT --source SRC [--truth TRUTH] --dest DIR`` writes ``DIR/index.html``:

* the cohort as in the paper's Table 1 (studies, age, sex, prevalence by vessel and CAC
  category) and the distribution of CAC scores;
* with truth: the evaluation of :mod:`calcpipe.evaluation` (Table 2, agreement) with a
  scatter plot and a Bland-Altman plot of CAC (inline SVG);
* a QC gallery: for each study, the slices with the most calcium, windowed, with the
  predicted labels overlaid in the DESIGN.md colours (PNG, inline). Studies are ordered by
  the largest CAC disagreement with the truth when there is truth, else by the lowest model
  confidence ("second reader"). Images carry no text or identifiers.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from calcpipe.labels import COLOURS, LABEL_NAMES

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;padding:6px}
.card img{display:block;image-rendering:pixelated;width:1000px;max-width:100%}
.legend span{padding:0 6px;margin-right:4px;color:#000}
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _svg_points(xs: list[float], ys: list[float], *, title: str, xlabel: str, ylabel: str,
                hlines: tuple[float, ...] = (), diagonal: bool = False) -> str:
    """A scatter plot as inline SVG (no script)."""
    w, h, m = 360, 280, 40
    if not xs:
        return ""
    x0, x1 = min(xs), max(xs)
    y0, y1 = min([*ys, *hlines]), max([*ys, *hlines])
    if diagonal:
        x0 = y0 = min(x0, y0)
        x1 = y1 = max(x1, y1)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(v: float) -> float:
        return m + (v - x0) / (x1 - x0) * (w - 2 * m)

    def sy(v: float) -> float:
        return h - m - (v - y0) / (y1 - y0) * (h - 2 * m)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" '
             'stroke="#999"/>',
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">'
             f"{html.escape(title)}</text>",
             f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle" font-size="11">'
             f"{html.escape(xlabel)}</text>",
             f'<text x="12" y="{h / 2}" font-size="11" transform="rotate(-90 12 {h / 2})" '
             f'text-anchor="middle">{html.escape(ylabel)}</text>']
    if diagonal:
        parts.append(f'<line x1="{sx(x0)}" y1="{sy(y0)}" x2="{sx(x1)}" y2="{sy(y1)}" '
                     'stroke="#bbb" stroke-dasharray="4"/>')
    for v in hlines:
        parts.append(f'<line x1="{m}" y1="{sy(v):.1f}" x2="{w - m}" y2="{sy(v):.1f}" '
                     'stroke="#c33" stroke-dasharray="4"/>')
    for x, y in zip(xs, ys, strict=True):
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#2a6"/>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(values: list[float]) -> str:
    """CAC distribution by the paper's categories, as a small SVG bar chart."""
    from calcpipe.scoring.features import PAPER_CATEGORIES as names
    from calcpipe.scoring.features import risk_category

    counts = [sum(risk_category(v) == n for v in values) for n in names]
    top = max(counts) or 1
    bars = "".join(
        f'<rect x="{20 + 80 * i}" y="{150 - 120 * c / top:.1f}" width="60" '
        f'height="{120 * c / top:.1f}" fill="#47a"/><text x="{50 + 80 * i}" y="168" '
        f'text-anchor="middle" font-size="12">{html.escape(n)}</text><text x="{50 + 80 * i}" '
        f'y="{145 - 120 * c / top:.1f}" text-anchor="middle" font-size="12">{c}</text>'
        for i, (n, c) in enumerate(zip(names, counts, strict=True)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="340" height="180" role="img" '
            f'aria-label="CAC categories">{bars}</svg>')


def _gallery_image(hu: np.ndarray, labels: np.ndarray, slices: int = 4) -> str:
    from calcpipe.viz import montage, png_bytes

    per_slice = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    chosen = sorted(int(k) for k in np.argsort(per_slice)[::-1][:slices])
    image = montage(hu, labels, chosen, columns=slices)
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def write_html_report(out: str, source: str, dest: str | Path, *, truth: Path | None = None,
                      profile: str = "standard", gallery: int = 12,
                      secret: bytes | None = None) -> Path:
    """Write ``dest/index.html``; its path."""
    from calcpipe.catalog import open_catalog
    from calcpipe.dicom import load_volume
    from calcpipe.ingest.study import chosen_series
    from calcpipe.pipeline.report import cohort_summary
    from calcpipe.pipeline.work import result_mask
    from calcpipe.scoring import get_profile

    get_profile(profile)  # KeyError naming the profiles: not an empty result
    con = open_catalog(out).connect()
    rows = con.execute(
        "SELECT study_key, cac_agatston, segmentation_confidence, model_checksum, "
        "input_fingerprint FROM latest_study_scores WHERE profile = ? ORDER BY study_key",
        [profile]).fetchall()
    studies = [row[:3] for row in rows]
    made = {row[0]: row[3:] for row in rows}  # each result's mask origin
    cohort = cohort_summary(out, None, profile)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>calcpipe report</title><style>{_STYLE}</style></head><body>",
             f"<h1>calcpipe report</h1><p>{len(studies)} studies, profile "
             f"<code>{html.escape(profile)}</code>.</p>", "<h2>Cohort (Table 1)</h2>"]
    age = cohort["age_mean_years"]
    parts.append("<p>" + (f"Age {age:.1f} &plusmn; {cohort['age_sd_years'] or 0:.1f} years; "
                          f"female {100 * (cohort['female_share'] or 0):.0f} %."
                          if age is not None else "Age unknown.") + "</p>")
    parts.append(_table(["calcium in", "share of studies"],
                        [[k, f"{100 * v:.0f} %"] for k, v in cohort["prevalence"].items()]))
    parts.append(_table(["CAC category", "studies"], [[k, v] for k, v in
                                                      cohort["cac_category"].items()]))
    parts.append("<h2>CAC distribution</h2>" + _histogram([s[1] for s in studies]))

    disagreement: dict[str, float] = {}
    if truth is not None:
        from calcpipe.evaluation import (
            format_unmatched,
            load_truth_scores,
            p_value,
            run_evaluation,
            table2_cell,
            truth_scores_path,
        )

        result = run_evaluation(out, truth, Path(dest) / "evaluation", profile=profile)
        truth_scores = load_truth_scores(truth) if truth_scores_path(truth) else {}
        if unmatched := format_unmatched(result):
            parts.append("<p>" + html.escape(unmatched[0]) + "</p><ul>" + "".join(
                f"<li>{html.escape(line[2:])}</li>" for line in unmatched[1:]) + "</ul>")
        pairs = [(truth_scores[(k, "CAC")], cac, k) for k, cac, _ in studies
                 if (k, "CAC") in truth_scores]
        disagreement = {k: abs(p - t) for t, p, k in pairs}
        if result.table2:
            parts.append("<h2>Dice per patient (Table 2)</h2>")
            groups = ("overall", "male", "female", "age<65", "age>=65")
            parts.append(_table(
                ["structure", *groups, "p (sex)", "p (age)"],
                [[r["structure"], *(table2_cell(r, g) for g in groups), p_value(r["p_sex"]),
                  p_value(r["p_age"])] for r in result.table2]))
        parts.append("<h2>Agreement with the truth</h2>")
        parts.append(_table(["score", "n", "Spearman", "BA mean (AU)", "ICC(2,1)"], [
            [r["name"], r["n"], f"{r['spearman']:.3f}", f"{r['ba_mean_au']:.1f}",
             f"{r['icc_2_1']:.3f}"] for r in result.agreement]))
        if result.confusion:
            from calcpipe.evaluation import CATEGORIES

            parts.append("<h3>CAC risk categories (rows truth, columns prediction)</h3>")
            parts.append(_table(["truth \\ prediction", *CATEGORIES],
                                [[c, *row] for c, row in zip(CATEGORIES, result.confusion,
                                                            strict=True)]))
            kappa = result.kappa
            parts.append("<p>Linearly weighted kappa " + (
                "undefined (every study in one category on both sides)"
                if kappa is None or np.isnan(kappa) else f"{kappa:.3f}") + ".</p>")
        if pairs:
            t, p = [x[0] for x in pairs], [x[1] for x in pairs]
            diff = [b - a for a, b in zip(t, p, strict=True)]
            mean = [(a + b) / 2 for a, b in zip(t, p, strict=True)]
            md = float(np.mean(diff))
            sd = float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0
            parts.append(_svg_points(t, p, title="CAC: prediction vs truth", xlabel="truth (AU)",
                                     ylabel="prediction (AU)", diagonal=True))
            parts.append(_svg_points(mean, diff, title="CAC: Bland-Altman",
                                     xlabel="mean (AU)", ylabel="prediction - truth (AU)",
                                     hlines=(md, md - 1.96 * sd, md + 1.96 * sd)))
    if disagreement:
        order = sorted(studies, key=lambda s: -disagreement.get(s[0], -1.0))
        why = "largest CAC disagreement with the truth first"
    else:
        order = sorted(studies, key=lambda s: s[2] if s[2] is not None else math.inf)
        why = "lowest model confidence first (second reader)"
    legend = "".join(f'<span style="background:rgb{COLOURS[name]}">{name}</span>'
                     for name in LABEL_NAMES.values() if name in COLOURS)
    parts.append(f"<h2>QC gallery</h2><p>{why}; <span class='legend'>{legend}</span></p>"
                 "<div class='gallery'>")
    found = chosen_series(source, secret=secret)
    shown, not_found, replaced = 0, 0, 0
    for key, cac, confidence in order:
        if shown == gallery:
            break
        if key not in found:
            not_found += 1
            continue
        mask = result_mask(out, None, key, *made[key])
        if mask is None:  # another model's or other inputs' mask: not this result's
            replaced += 1
            continue
        shown += 1
        volume = load_volume(list(found[key]))
        src = _gallery_image(volume.hu, mask)
        note = (f"CAC {cac:.1f} AU" + (f", truth differs by {disagreement[key]:.1f}"
                                       if key in disagreement else "")
                + (f", confidence {confidence:.3f}" if confidence is not None else ""))
        parts.append(f"<div class='card'><img alt='slices with calcium' src='{src}'>"
                     f"<div>{html.escape(key[-16:])}: {html.escape(note)}</div></div>")
    parts.append("</div>")
    if not_found or replaced:
        parts.append("<p>Left out of the gallery: " + ", ".join(
            text for n, text in (
                (not_found, f"{not_found} studies not found under the source (another "
                            "folder, or another pseudonymisation key)"),
                (replaced, f"{replaced} studies whose mask another model or other inputs "
                           "have replaced since")) if n) + ".</p>")
    parts.append("</body></html>")
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    (target / "index.html").write_text("".join(parts), encoding="utf-8")
    return target / "index.html"
