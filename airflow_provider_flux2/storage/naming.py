"""Names people can read: the stored image's name from a template, and folder names without ``:`` or ``+``.

A template is a ``str.format`` string over four fields — ``{index}`` (five digits), ``{id}`` (the
item's id from the prompt source: a SKU, a row key), ``{seed}`` and ``{hash}`` (12 hex digits of the
content). An empty field takes one separator next to it along, so ``{index}-{id}-{hash}`` gives
``00003-SKU-1042-65d8cbb683b3`` with an id and ``00003-65d8cbb683b3`` without. ``/`` in the
template makes sub-folders (``{id}/{index}``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from airflow_provider_flux2.exceptions import FluxValidationError

NAME_FIELDS = ("index", "id", "seed", "hash")
_SEPARATORS = "-_. "
_UNSAFE = re.compile(r"[^A-Za-z0-9._=@,-]")
_UTC_SUFFIX = re.compile(r"\+00:?00$")


def safe_segment(text: str) -> str:
    """A path segment that reads the same on S3, a local disk and in a URL: no ``/``, space, ``:`` or ``+``.

    A run id's time keeps its meaning: ``manual__2026-12-01T12:38:50.911527+00:00`` becomes
    ``manual__2026-12-01T12-38-50.911527Z``.
    """
    text = _UTC_SUFFIX.sub("Z", str(text)).replace(":", "-").replace("+", "_")
    return _UNSAFE.sub("_", text).strip(".") or "_"


def check_template(template: str) -> str:
    """The template, checked before anything is generated.

    :raises FluxValidationError: a field other than :data:`NAME_FIELDS`, a format the fields cannot
        take, or no field that tells two images of a batch apart (``{index}``, ``{hash}`` or ``{id}``).
    """
    allowed = (
        "a name using {index}, {id}, {seed} and {hash} (at least one of {index}, {hash}, {id}), "
        "e.g. '{index}-{id}-{hash}'"
    )
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        render_name(template, index=0, digest="0" * 64, item_id="x", seed=0, _checked=True)
    except (ValueError, KeyError, IndexError) as exc:
        raise FluxValidationError(field="output_name_template", value=template, allowed=allowed) from exc
    if not set(fields) <= set(NAME_FIELDS) or not {"index", "hash", "id"} & set(fields):
        raise FluxValidationError(field="output_name_template", value=template, allowed=allowed)
    if template.startswith("/") or ".." in template.split("/"):
        raise FluxValidationError(field="output_name_template", value=template, allowed=allowed)
    return template


def render_name(
    template: str,
    *,
    index: int,
    digest: str,
    item_id: Any = None,
    seed: int | None = None,
    _checked: bool = False,
) -> str:
    """The object name (no extension) of one image.

    :param index: the image's index in its batch.
    :param digest: the SHA-256 of its bytes (hex).
    :param item_id: the item's id from the prompt source, if any.
    :param seed: the seed it was generated with, if known.
    """
    values = {
        "index": f"{index:05d}",
        "id": "" if item_id in (None, "") else safe_segment(str(item_id)),
        "seed": "" if seed is None else str(seed),
        "hash": digest[:12],
    }
    out = ""
    drop_leading_separator = False
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if drop_leading_separator and literal[:1] in _SEPARATORS and literal:
            literal = literal[1:]
        drop_leading_separator = False
        out += literal
        if name is None:
            continue
        if name not in values:
            raise KeyError(name)
        if conversion:
            raise ValueError(f"conversion !{conversion} is not supported")
        value = format(values[name], spec or "")
        if value:
            out += value
        elif out and out[-1] in _SEPARATORS:
            out = out[:-1]  # "{index}-{id}" without an id: "00003", not "00003-"
        else:
            drop_leading_separator = True  # "{id}-{index}" without an id: "00003", not "-00003"
    segments = [s.strip(_SEPARATORS) for s in out.split("/")]
    name = "/".join(s for s in segments if s)
    return name or values["index"]


def name_fields(record: Any) -> dict[str, Any]:
    """The template fields a record gives: its item id (from the prompt source) and its seed."""
    if isinstance(record, Mapping):
        extra, seed = record.get("extra") or {}, record.get("seed")
    else:
        extra, seed = record.extra or {}, record.seed
    return {"item_id": extra.get("id"), "seed": seed}
