"""Active vs wall-clock CPU over time, drawn as a PNG with nothing but a pixel buffer.

Each bucket is a bar: its full height is the vCPU-seconds held (allocated, the wall-clock view),
the darker part the vCPU-seconds actually used (active). Labels use a built-in 5x7 pixel font.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hutch.cli._png import encode_png

Color = tuple[int, int, int]

BACKGROUND: Color = (255, 255, 255)
AXIS: Color = (60, 60, 60)
GRID: Color = (225, 225, 225)
ALLOCATED: Color = (170, 196, 235)
ACTIVE: Color = (31, 92, 184)
TEXT: Color = (30, 30, 30)

# 5x7 glyphs, one string of five pixels per row; characters without a glyph are left blank.
_FONT: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    "-": (".....", ".....", ".....", ".###.", ".....", ".....", "....."),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "a": (".....", ".....", ".###.", "....#", ".####", "#...#", ".####"),
    "c": (".....", ".....", ".###.", "#....", "#....", "#...#", ".###."),
    "d": ("....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"),
    "e": (".....", ".....", ".###.", "#...#", "#####", "#....", ".###."),
    "h": ("#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "i": ("..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."),
    "k": ("#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."),
    "l": (".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "m": (".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"),
    "n": (".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "o": (".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."),
    "p": (".....", ".....", "####.", "#...#", "####.", "#....", "#...."),
    "r": (".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."),
    "s": (".....", ".....", ".###.", "#....", ".###.", "....#", "####."),
    "t": (".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."),
    "u": (".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"),
    "v": (".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "w": (".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."),
    "x": (".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "y": (".....", ".....", "#...#", "#...#", ".####", "....#", ".###."),
}
_GLYPH_W, _GLYPH_H, _SCALE = 5, 7, 2


@dataclass(frozen=True)
class Point:
    label: str
    active: float
    allocated: float


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(BACKGROUND * (width * height))

    def fill(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fills the rectangle [x0, x1) x [y0, y1), clipped to the canvas."""
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x0 >= x1:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, text: str, color: Color = TEXT) -> None:
        for index, char in enumerate(text.lower()):
            glyph = _FONT.get(char)
            if glyph is None:
                continue
            left = x + index * (_GLYPH_W + 1) * _SCALE
            for gy, line in enumerate(glyph):
                for gx, bit in enumerate(line):
                    if bit == "#":
                        px, py = left + gx * _SCALE, y + gy * _SCALE
                        self.fill(px, py, px + _SCALE, py + _SCALE, color)


def text_width(text: str) -> int:
    return len(text) * (_GLYPH_W + 1) * _SCALE


def render(points: Sequence[Point], title: str, width: int = 960, height: int = 480) -> bytes:
    """The chart as PNG bytes."""
    canvas = _Canvas(width, height)
    left, right, top, bottom = 90, 20, 60, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([max(p.allocated, p.active) for p in points] or [0.0]) or 1.0
    canvas.text(left, 14, title)
    canvas.fill(left, 38, left + 14, 48, ALLOCATED)
    canvas.text(left + 20, 38, "allocated")
    legend = left + 20 + text_width("allocated") + 24
    canvas.fill(legend, 38, legend + 14, 48, ACTIVE)
    canvas.text(legend + 20, 38, "active")
    for step in range(5):
        y = top + plot_h - plot_h * step // 4
        canvas.fill(left, y, left + plot_w, y + 1, GRID)
        label = f"{peak * step / 4:.3g}"
        canvas.text(left - 8 - text_width(label), y - _GLYPH_H, label)
    slot = plot_w / max(1, len(points))
    bar = max(1, int(slot * 0.7))
    label_every = max(1, int(text_width("00:00") * 1.5 / slot) + 1)
    for index, point in enumerate(points):
        x = left + int(index * slot + (slot - bar) / 2)
        for value, color in (
            (point.allocated, ALLOCATED),
            (min(point.active, point.allocated or point.active), ACTIVE),
        ):
            top_y = top + plot_h - int(plot_h * value / peak)
            canvas.fill(x, top_y, x + bar, top + plot_h, color)
        if index % label_every == 0:
            canvas.text(x, top + plot_h + 10, point.label)
    canvas.fill(left, top, left + 2, top + plot_h + 1, AXIS)
    canvas.fill(left, top + plot_h, left + plot_w, top + plot_h + 2, AXIS)
    return encode_png(width, height, canvas.pixels)
