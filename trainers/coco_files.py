"""COCO annotation files: reading, validating and indexing the "instances" JSON format, and reading the images
they list.

Trainers read their training and val ground truth through these functions and the evaluators in
``gpnas.objectives.accuracy`` score against ground truth read the same way, so a file is checked by one set of
rules whether it is trained on or scored against. They live here, on the lower floor, because reading data is
the trainer's job; objectives import them from here (imports flow search_space -> trainers -> objectives).

Every error names the file, the record (list index and id) and the field, and says how to fix it.
Box format: ``bbox = [x, y, w, h]`` in original image pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image
from pycocotools.coco import COCO

from gpnas.errors import DataError

__all__ = ["quiet_coco", "read_coco_json", "read_image_rgb", "validate_coco_dict"]

_ANN_KEYS = ("id", "image_id", "category_id", "bbox")
#: What PIL raises on a file it cannot decode (UnidentifiedImageError and truncated data are OSErrors; some
#: decoders raise SyntaxError or ValueError on corrupt headers; a huge image raises DecompressionBombError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file; DataError if it is missing or not valid JSON (with the parse position)."""
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; pass the path of a COCO instances JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (char {err.pos}); "
            "fix or regenerate the file"
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); pass a COCO instances JSON file") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with images/annotations/categories")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_LABELS = {"images": "image", "categories": "category", "annotations": "annotation"}


def _check_ids(data: dict[str, Any], name: str, keys: Sequence[str], source: str) -> set[int]:
    """Each entry of ``data[name]`` is an object with ``keys`` and a unique integer ``id``; -> the ids."""
    seen: dict[int, int] = {}
    for i, entry in enumerate(data[name]):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing and name == "annotations":
            ann_id = entry.get("id", "?") if isinstance(entry, dict) else "?"
            raise DataError(f"{source}: annotations[{i}] (id {ann_id}) has no key {missing[0]!r}; "
                            f"each annotation needs {_ANN_KEYS} with bbox = [x, y, w, h] in pixels")
        if missing:
            raise DataError(f"{source}: {name}[{i}] has no key {missing[0]!r}; each entry needs {tuple(keys)}")
        entry_id = entry["id"]
        if not _is_int(entry_id):
            raise DataError(f"{source}: {name}[{i}] has id {entry_id!r}; {_LABELS[name]} ids must be integers")
        if entry_id in seen:
            raise DataError(f"{source}: {name}[{i}] has a duplicate {_LABELS[name]} id {entry_id} (also "
                            f"{name}[{seen[entry_id]}]); ids in '{name}' must be unique")
        seen[entry_id] = i
    return set(seen)


def _check_image_fields(images: list[dict[str, Any]], source: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """``width``/``height`` positive whole pixels (integral floats become ints), ``file_name`` a relative path
    inside the images folder. -> the images, with sizes as ints."""
    out = []
    for i, img in enumerate(images):
        where = f"{source}: image id {img['id']} (images[{i}])"
        if "file_name" in keys:
            name = img["file_name"]
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{where} has file_name {name!r}; give the image's path relative to the images "
                                "folder")
            if any(p.is_absolute() or ".." in p.parts for p in (PurePosixPath(name), PureWindowsPath(name))):
                raise DataError(f"{where} has file_name {name!r}, which leaves the images folder; give a path "
                                "relative to the images folder, without '..'")
        sizes = {}
        for key in ("width", "height"):
            if key in keys:
                value = img[key]
                if not _is_number(value) or value != int(value) or value < 1:
                    raise DataError(f"{where} has {key} {value!r}; give the image's {key} as a positive whole "
                                    "number of pixels")
                sizes[key] = int(value)
        out.append({**img, **sizes})
    return out


def _check_annotation(i: int, ann: dict[str, Any], source: str, image_ids: set[int],
                      category_ids: set[int]) -> None:
    where = f"{source}: annotation id {ann['id']}"
    at = f"(annotations[{i}])"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise DataError(f"{where} has bbox {box!r} {at}; expected 4 finite numbers [x, y, w, h] in pixels")
    if not _is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
        raise DataError(f"{where} refers to image_id {ann['image_id']!r} {at}, which is not in 'images'")
    if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
        raise DataError(f"{where} has category_id {ann['category_id']!r} {at}, which is not in 'categories' "
                        f"{sorted(category_ids)}")
    if "area" in ann and not _is_number(ann["area"]):
        raise DataError(f"{where} has area {ann['area']!r} {at}; give a number (pixels²) or leave it out")
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        raise DataError(f"{where} has iscrowd {ann['iscrowd']!r} {at}; give 0 or 1, or leave it out")


def validate_coco_dict(
    data: dict[str, Any], source: str, *, image_keys: Sequence[str] = ("id",)
) -> dict[str, Any]:
    """Check the keys COCO tools rely on and return a copy with defaults filled in.

    ``images`` must not be empty; image, category and annotation ids are unique integers. ``image_keys`` names
    the keys every image needs (a dataset needs ``file_name``, ``width`` and ``height``, checked as a relative
    path inside the images folder and positive whole pixels). Missing ``area`` becomes ``w * h`` of the bbox
    and missing ``iscrowd`` becomes 0 (COCOeval reads both). Raises DataError naming ``source`` (the file), the
    list index and id of the record, and the field.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing key {key!r} (a list); a COCO instances file needs "
                            "'images', 'annotations' and 'categories'")
    if not data["images"]:
        raise DataError(f"{source}: 'images' is empty; a COCO instances file lists at least one image")
    image_ids = _check_ids(data, "images", tuple(image_keys), source)
    images = _check_image_fields(data["images"], source, image_keys)
    category_ids = _check_ids(data, "categories", ("id",), source)
    _check_ids(data, "annotations", _ANN_KEYS, source)
    anns = []
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(i, ann, source, image_ids, category_ids)
        if "area" not in ann or "iscrowd" not in ann:
            box = ann["bbox"]
            ann = {"area": float(box[2] * box[3]), "iscrowd": 0, **ann}
        anns.append(ann)
    return {**data, "images": images, "annotations": anns}


def read_image_rgb(path: Path, *, image_id: int, width: int, height: int, source: str | Path,
                   draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode one listed image as RGB. DataError naming the file, the image id and ``source`` (its annotation
    file) if it cannot be decoded or its size is not the ``width`` × ``height`` the annotation file says.

    ``draft_size`` (w, h): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale when that is still at least this size
    (``Image.draft``: the decoder skips the work; other formats ignore it), so the result can be smaller than
    ``width`` × ``height``. An RGB decode is returned as is (no ``convert`` copy)."""
    try:
        with Image.open(path) as img:
            size = img.size
            rgb = None
            if size == (width, height):
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", draft_size)
                img.load()
                rgb = img if img.mode == "RGB" else img.convert("RGB")
    except _DECODE_ERRORS as err:
        raise DataError(f"{path} (image id {image_id} in {source}) cannot be read as an image: {err}; replace "
                        "the file or remove its entry") from None
    if rgb is None:
        raise DataError(f"{path} is {size[0]}x{size[1]} but {source} says {width}x{height} for image id "
                        f"{image_id}; fix the file")
    return rgb


def quiet_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over an already-validated dict, without its stdout chatter."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
