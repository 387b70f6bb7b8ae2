"""The gallery: ``index.html`` (a contact sheet people can open) and ``contact_sheet.png`` beside the manifest.

The page is self-contained: inline CSS, no script, no font or image from the network (a
Content-Security-Policy says so to the browser), thumbnails linked relatively from ``thumbs/``. Every
user-supplied string — prompts first — is HTML-escaped.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from airflow_provider_flux2.quality.decoding import refuse_bombs
from airflow_provider_flux2.storage.manifest import MANIFEST_CSV, MANIFEST_JSON, Manifest

GALLERY_HTML = "index.html"
CONTACT_SHEET_PNG = "contact_sheet.png"
THUMBS_DIR = "thumbs"
THUMB_SIDE = 320
#: A PNG contact sheet of thousands of images would be too large to look at; past this it says how many are left out.
SHEET_MAX_IMAGES = 100

_BADGES = {
    "passed": ("PASSED", "passed"),
    "failed_checks": ("FAILED CHECKS", "failed"),
    "failed": ("FAILED", "failed"),
    "moderated": ("MODERATED", "failed"),
    "dropped": ("DROPPED", "failed dropped"),
    "superseded": ("SUPERSEDED", "failed dropped"),
    "skipped": ("SKIPPED", "neutral"),
    "pending": ("PENDING", "neutral"),
}
_FRAME = {"passed": (46, 160, 67), "failed": (207, 34, 46), "neutral": (140, 140, 140)}


@dataclass(frozen=True)
class Card:
    """One image on the contact sheet.

    :param row: the image's manifest row.
    :param thumb: the thumbnail's path relative to the gallery (``None``: no image to show).
    :param thumb_size: the thumbnail's width and height in pixels.
    :param link: the full image's path relative to the gallery, when it lives under it.
    """

    row: Mapping[str, Any]
    thumb: str | None = None
    thumb_size: tuple[int, int] | None = None
    link: str | None = None


def thumbnail_jpeg(data: bytes | None, side: int = THUMB_SIDE) -> tuple[bytes, tuple[int, int]] | None:
    """A small JPEG of an image (longest side ``side``), and its size; ``None`` if the bytes do not decode.

    The image was verified when it was collected; here only what the thumbnail needs is decoded: a
    JPEG at the smallest of its 1/2, 1/4 or 1/8 scales that is still at least ``side`` (Pillow's
    ``draft``), behind the same decompression-bomb guard as :func:`decode_image`.
    """
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            refuse_bombs(opened)
            opened.draft("RGB", (side, side))  # JPEG only; a no-op for the others
            image = opened.convert("RGB")
    except Exception:  # untrusted bytes fail in many ways (see decode_image): no thumbnail
        return None
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue(), image.size


def thumb_name(row: Mapping[str, Any]) -> str:
    """``thumbs/<image file stem>.jpg``: unique per stored image, stable across re-runs."""
    uri = row.get("uri")
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0] if uri else f"{row['index']:05d}-attempt{row['attempt']}"
    return f"{THUMBS_DIR}/{stem}.jpg"


def relative_link(folder_uri: str, uri: str | None) -> str | None:
    """``uri`` relative to ``folder_uri`` when it is inside it, else ``None`` (no absolute links in the page)."""
    if uri and uri.startswith(folder_uri.rstrip("/") + "/"):
        return uri[len(folder_uri.rstrip("/")) + 1 :]
    return None


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
body{margin:0;padding:24px;color:#1f2328;background:#f6f8fa;
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:20px;margin:0 0 12px}
.summary{display:flex;flex-wrap:wrap;gap:8px 24px;margin:0 0 12px;padding:12px 16px;
  background:#fff;border:1px solid #d0d7de;border-radius:8px}
.summary div{display:flex;flex-direction:column}
.summary dt{font-size:12px;color:#57606a}.summary dd{margin:0;font-weight:600}
.files a{margin-right:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:16px;margin-top:16px}
.card{margin:0;background:#fff;border:3px solid #d0d7de;border-radius:8px;overflow:hidden;position:relative}
.card.passed{border-color:#2ea043}.card.failed{border-color:#cf222e}.card.dropped{opacity:.8}
.thumb{display:flex;align-items:center;justify-content:center;height:240px;background:#eaeef2}
.thumb img{max-width:100%;max-height:240px;display:block}
.noimage{color:#57606a}
.badge{position:absolute;top:8px;left:8px;padding:2px 8px;border-radius:4px;
  font-size:12px;font-weight:700;color:#fff;background:#57606a}
.passed .badge{background:#2ea043}.failed .badge{background:#cf222e}
figcaption{padding:10px 12px}
.prompt{margin:0 0 8px;white-space:pre-wrap;overflow-wrap:anywhere}
.facts{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:0 0 8px;font-size:13px}
.facts dt{color:#57606a}.facts dd{margin:0}
.checks{list-style:none;margin:0;padding:0;font-size:13px}
.checks li{padding:1px 0}.checks .pass{color:#1a7f37}.checks .fail{color:#cf222e;font-weight:600}
"""
_CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def render_gallery(manifest: Manifest, cards: Sequence[Card], title: str = "FLUX 2 batch") -> str:
    """The ``index.html`` page: the batch summary, then one card per image."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>{_summary_html(manifest.summary)}",
        f'<p class="files"><a href="{MANIFEST_JSON}">{MANIFEST_JSON}</a><a href="{MANIFEST_CSV}">{MANIFEST_CSV}</a>'
        f'<a href="{CONTACT_SHEET_PNG}">{CONTACT_SHEET_PNG}</a></p></header>',
        '<main class="grid">',
        *(_card_html(card) for card in cards),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_html(summary: Mapping[str, Any]) -> str:
    facts = [
        ("Images", summary["count"]),
        ("Passed", summary["passed"]),
        ("Failed", summary["failed"]),
        ("Dropped", summary["dropped"]),
        ("Superseded", summary["superseded"]),
        ("Regenerated", summary["regenerated"]),
        ("Billed MP", summary["total_billed_mp"]),
        ("Total cost", f"${summary['total_cost_usd']}"),
        *(
            [("Sentinel", f"${summary['evaluation_cost_usd']} for {summary.get('evaluated', 0)} evaluation(s)")]
            if Decimal(summary.get("evaluation_cost_usd") or "0") or summary.get("evaluated")
            else []
        ),
        ("Spent on dropped", f"${summary['dropped_cost_usd']}"),
        ("Spent on superseded", f"${summary['superseded_cost_usd']}"),
        ("Models", ", ".join(summary["models"])),
        ("Generated", summary["generated_at"]),
    ]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    return f'<dl class="summary" id="summary">{items}</dl>'


def _card_html(card: Card) -> str:
    row = card.row
    label, css = _BADGES.get(row["outcome"], (row["outcome"].upper(), "neutral"))
    return (
        f'<figure class="card {css}" data-index="{_e(row["index"])}" data-outcome="{_e(row["outcome"])}"'
        f"{_id_attribute(row)}>"
        f'<span class="badge">{_e(label)}</span>{_thumb_html(card)}'
        f'<figcaption><p class="prompt">{_e(row["prompt"])}</p>{_facts_html(row)}{_checks_html(row)}</figcaption>'
        "</figure>"
    )


def _id_attribute(row: Mapping[str, Any]) -> str:
    item_id = row.get("item_id")
    return "" if item_id in (None, "") else f' data-id="{_e(item_id)}"'


def _thumb_html(card: Card) -> str:
    if card.thumb is None:
        return '<div class="thumb"><span class="noimage">no image</span></div>'
    size = f' width="{card.thumb_size[0]}" height="{card.thumb_size[1]}"' if card.thumb_size else ""
    img = f'<img src="{_e(card.thumb)}" alt="image {_e(card.row["index"])}"{size}>'
    if card.link:
        img = f'<a href="{_e(card.link)}">{img}</a>'
    return f'<div class="thumb">{img}</div>'


def _facts_html(row: Mapping[str, Any]) -> str:
    item_id = row.get("item_id")
    facts = [
        *([("ID", item_id)] if item_id not in (None, "") else []),
        ("Index", row["index"]),
        ("Seed", "—" if row["seed"] is None else row["seed"]),
        ("Size", f"{row['width']}×{row['height']} ({row['output_format']})"),
        ("Cost", f"${row['billed_cost_usd']} ({row['billed_mp']} MP)"),
        ("Attempt", row["attempt"]),
        ("Model", row["model"]),
    ]
    facts.extend(_sentinel_facts(row.get("sentinel")))
    if row.get("failure_message"):
        facts.append(("Why", row["failure_message"]))
    if not row.get("uri"):
        facts.append(("Stored", "—"))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def _sentinel_facts(verdict: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """Sentinel's verdict on a card: what it said, the score, the cost, the evaluation, issues and strengths."""
    if not verdict:
        return []
    said = {True: "passed", False: "failed", None: "no verdict"}[verdict.get("overall_passed")]
    if verdict.get("status") != "completed":
        code = f", {verdict['failure_code']}" if verdict.get("failure_code") else ""
        said = f"not judged ({verdict.get('status')}{code})"
    score = verdict.get("score")
    gate = {True: " · gate passed", False: " · gate failed", None: ""}[verdict.get("passed")]
    text = said + (f" · score {score:.2f}" if isinstance(score, (int, float)) else "") + gate
    if verdict.get("cost_usd") is not None:
        text += f" · ${verdict['cost_usd']}"
    facts: list[tuple[str, Any]] = [("Sentinel", text)]
    if verdict.get("top_issues"):
        facts.append(("Issues", "; ".join(verdict["top_issues"])))
    if verdict.get("top_strengths"):
        facts.append(("Strengths", "; ".join(verdict["top_strengths"])))
    if verdict.get("evaluation_id"):
        facts.append(("Evaluation", verdict["evaluation_id"]))
    return facts


def _checks_html(row: Mapping[str, Any]) -> str:
    if not row["checks"]:
        return '<ul class="checks"><li>not checked</li></ul>'
    items = "".join(
        f'<li class="{"pass" if v["passed"] else "fail"}">{"✓" if v["passed"] else "✗"} '
        f"{_e(v['check'])}: {_e(v['reason'])}</li>"
        for v in row["checks"]
    )
    return f'<ul class="checks">{items}</ul>'


# --------------------------------------------------------------------------------------------------
# PNG contact sheet
# --------------------------------------------------------------------------------------------------


def contact_sheet_png(
    manifest: Manifest, thumbs: Sequence[bytes | None], *, title: str = "FLUX 2 batch", columns: int = 5
) -> bytes:
    """A PNG grid of the thumbnails (``thumbs[i]`` is row ``i``'s JPEG), each framed green or red and captioned."""
    cell, caption, pad = 200, 62, 12
    shown = list(zip(manifest.rows, thumbs, strict=True))[:SHEET_MAX_IMAGES]
    cols = max(1, min(columns, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    header = 56
    sheet = Image.new("RGB", (pad + cols * (cell + pad), header + rows * (cell + caption + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    title_font = ImageFont.load_default(size=18)
    draw.text((pad, 8), drawable(title, title_font), fill="black", font=title_font)
    draw.text((pad, 32), drawable(_summary_line(manifest, len(shown)), font), fill=(87, 96, 106), font=font)
    for i, (row, thumb) in enumerate(shown):
        x = pad + (i % cols) * (cell + pad)
        y = header + (i // cols) * (cell + caption + pad)
        _draw_cell(sheet, draw, font, (x, y, cell), row, thumb)
    out = io.BytesIO()
    sheet.save(out, "PNG", optimize=True)
    return out.getvalue()


def _summary_line(manifest: Manifest, shown: int) -> str:
    s = manifest.summary
    line = (
        f"{s['count']} images · passed {s['passed']} · failed {s['failed']} · dropped {s['dropped']} · "
        f"superseded {s['superseded']} · regenerated {s['regenerated']} · {s['total_billed_mp']} MP · "
        f"${s['total_cost_usd']}"
    )
    if s.get("evaluated"):
        line += f" (Sentinel ${s['evaluation_cost_usd']})"
    return line if shown == s["count"] else f"{line} · first {shown} shown"


def _draw_cell(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    box: tuple[int, int, int],
    row: Mapping[str, Any],
    thumb: bytes | None,
) -> None:
    x, y, cell = box
    css = _BADGES.get(row["outcome"], ("", "neutral"))[1].split()[0]
    draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(234, 238, 242))
    if thumb is not None:
        with Image.open(io.BytesIO(thumb)) as image:
            image.thumbnail((cell - 8, cell - 8))
            sheet.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
    else:
        draw.text((x + 8, y + cell // 2 - 8), "no image", fill=(87, 96, 106), font=font)
    draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=_FRAME[css], width=4)
    label = "PASS" if row["outcome"] == "passed" else _BADGES.get(row["outcome"], (row["outcome"].upper(), ""))[0]
    failed = ", ".join(row["failed_checks"])
    seed = "-" if row["seed"] is None else row["seed"]
    item = f" {row['item_id']}" if row.get("item_id") not in (None, "") else ""
    lines: list[tuple[str, str | tuple[int, int, int]]] = [
        (f"#{row['index']}{item} · seed {seed} · ${row['billed_cost_usd']}", "black"),
        (f"{label}: {failed}" if failed else label, _FRAME[css]),
        (" ".join(str(row["prompt"]).split()), (87, 96, 106)),
    ]
    for n, (text, colour) in enumerate(lines):
        draw.text((x, y + cell + 4 + n * 18), _fit(draw, font, drawable(text, font), cell), fill=colour, font=font)


#: Look-alikes for characters Pillow's built-in font has no glyph for (it draws a box instead).
_LOOKALIKES = {"—": "-", "–": "-", "−": "-", "×": "x", "•": "*", "→": "->", "←": "<-", "✓": "v", "✗": "x"}


def drawable(text: str, font: Any) -> str:
    """``text`` with every character ``font`` cannot draw replaced by a look-alike, its unaccented
    letter (``é`` → ``e``) or ``?`` — never a missing-glyph box.
    """
    return "".join(ch if _has_glyph(font, ch) else _lookalike(font, ch) for ch in text)


def _lookalike(font: Any, ch: str) -> str:
    import unicodedata

    candidates = [_LOOKALIKES.get(ch, ""), unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()]
    for candidate in candidates:
        if candidate and all(_has_glyph(font, c) for c in candidate):
            return candidate
    return "?"


_NOTDEF = "\U0010fffd"  # a private-use code point no font draws: what a missing glyph looks like
_glyph_cache: dict[tuple[Any, ...], bool] = {}


def _has_glyph(font: Any, ch: str) -> bool:
    if ch.isascii():
        return True
    # Fonts are made per sheet; the same face at the same size answers the same.
    key = (font.getname() if hasattr(font, "getname") else type(font).__name__, getattr(font, "size", 0), ch)
    if key not in _glyph_cache:
        _glyph_cache[key] = _mask(font, ch) != _mask(font, _NOTDEF)
    return _glyph_cache[key]


def _mask(font: Any, ch: str) -> bytes:
    image = Image.new("L", (64, 48))
    ImageDraw.Draw(image).text((4, 4), ch, font=font, fill=255)
    return image.tobytes()


def _fit(draw: ImageDraw.ImageDraw, font: Any, text: str, width: int) -> str:
    """``text`` cut with an ellipsis so it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
