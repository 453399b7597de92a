"""One picture of every evaluation head before and after each masker: ``pediface evaluate --grid FILE``.

A row per head, a column per render (the head before defacing, then each masker's result), each cell
the front and 45-degree-left surface renders side by side, the faces the detector accepts outlined in
red. Where a masker refused the head, its cell is dark and says why in one word ("refused"). It is the
page a reviewer scans to see which faces went, which ears went, and what a masker left behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from evaluation.detector import FaceBox

CELL_PX = 150
"""Height of each render in the picture; renders are scaled to it, keeping their aspect."""

GRID_VIEWS = ("front", "left45")
"""The views shown per cell: the front, and the three-quarter view where the ear and cheek show."""

_LABEL_W, _TITLE_H, _GAP = 110, 22, 6
_RED, _TEXT, _BACKGROUND, _EMPTY = (255, 40, 40), (235, 235, 235), (24, 24, 24), (52, 52, 52)


@dataclass
class Cell:
    """The renders of one head in one column (view -> image and accepted faces), or why there are none."""

    renders: dict[str, tuple[np.ndarray, list[FaceBox]]] = field(default_factory=dict)
    note: str = ""


@dataclass
class GridPictures:
    """The cells collected during an evaluation, in the order heads and columns were first seen."""

    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    #: A longer row title than the head's name, where there is one (a synthetic head's contrast).
    titles: dict[str, str] = field(default_factory=dict)

    def add(self, head: str, column: str, view: str, image: np.ndarray, faces: list[FaceBox]) -> None:
        if view in GRID_VIEWS:
            self._cell(head, column).renders[view] = (image, list(faces))

    def refused(self, head: str, column: str, outcome: str) -> None:
        self._cell(head, column).note = outcome

    def _cell(self, head: str, column: str) -> Cell:
        if column not in self.columns:
            self.columns.append(column)
        return self.cells.setdefault(head, {}).setdefault(column, Cell())


def _scaled(image: np.ndarray, faces: list[FaceBox]) -> Image.Image:
    picture = Image.fromarray(image).convert("RGB")
    scale = CELL_PX / picture.height
    picture = picture.resize((max(1, round(picture.width * scale)), CELL_PX), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(picture)
    for box in faces:
        corners = [box.x * scale, box.y * scale, (box.x + box.w) * scale, (box.y + box.h) * scale]
        draw.rectangle(corners, outline=_RED, width=2)
    return picture


def grid_picture(pictures: GridPictures) -> Image.Image:
    """The grid as an RGB image (heads in rows, columns as collected; see the module docstring)."""
    if not pictures.cells:
        raise ValueError("no renders were collected: nothing to draw")
    cell_w = len(GRID_VIEWS) * CELL_PX + _GAP
    width = _LABEL_W + len(pictures.columns) * cell_w
    height = _TITLE_H + len(pictures.cells) * (CELL_PX + _GAP)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, column in enumerate(pictures.columns):
        title = "before" if column == "before" else f"after {column}"
        draw.text((_LABEL_W + index * cell_w + 4, 4), title, fill=_TEXT)
    for row, (head, cells) in enumerate(pictures.cells.items()):
        top = _TITLE_H + row * (CELL_PX + _GAP)
        draw.multiline_text((4, top + CELL_PX // 2 - 6), pictures.titles.get(head, head), fill=_TEXT)
        for index, column in enumerate(pictures.columns):
            left = _LABEL_W + index * cell_w
            cell = cells.get(column, Cell(note="not run"))
            x = left
            for view in GRID_VIEWS:
                if view in cell.renders:
                    picture = _scaled(*cell.renders[view])
                    canvas.paste(picture.crop((0, 0, min(picture.width, CELL_PX), CELL_PX)), (x, top))
                else:
                    draw.rectangle([x, top, x + CELL_PX - 1, top + CELL_PX - 1], fill=_EMPTY)
                x += CELL_PX
            if cell.note and not cell.renders:
                draw.text((left + 8, top + CELL_PX // 2 - 6), cell.note, fill=_TEXT)
    return canvas


def write_grid(pictures: GridPictures, path: Path) -> Path:
    """:func:`grid_picture` saved as PNG at ``path`` (its folder created), in 64 colours: grey renders,
    red boxes and text need no more, and the file is half the size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_picture(pictures).quantize(64).save(path, optimize=True)
    return path
