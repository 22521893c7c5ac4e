"""Figures render anywhere: :func:`analyses._io.write_figure` writes a real PNG and SVG beside the
HTML (kaleido with a Chrome/Chromium), and without them it falls back to the HTML alone."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest

import analyses._io as io_mod

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_figure():
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1, 2, 3], y=[1.0, 3.0, 2.0, 4.0], mode="lines+markers", name="steered"))
    fig.add_bar(x=[0, 1, 2, 3], y=[0.5, 1.5, 1.0, 2.0], name="base")
    fig.update_layout(title="static export", xaxis_title="layer", yaxis_title="effect")
    return fig


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == PNG_SIGNATURE, "PNG signature"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def png_pixel_colours(data: bytes) -> tuple[int, int, int]:
    """(width, height, number of distinct pixel values) of an 8-bit non-interlaced PNG, decoded
    with zlib alone (the filter bytes undone), so the test needs no image library."""
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0, "8-bit, non-interlaced"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    prev, rows = bytearray(stride), []
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = prev[i], (prev[i - channels] if i >= channels else 0)
            if filt == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif filt == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    pixels = {row[i:i + channels] for row in rows[::4] for i in range(0, stride, 4 * channels)}
    return width, height, len(pixels)


def test_png_decoder_on_a_known_image():
    """The test's own decoder: a 2 x 2 RGB image with two colours, written here with zlib."""
    rows = b"\x00" + b"\xff\x00\x00" * 2 + b"\x02" + b"\x00\xff\x00" * 2  # filter 0, then filter 2 (up)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    assert png_pixel_colours(png)[:2] == (2, 2)


def test_falls_back_to_html_with_one_note(tmp_path, monkeypatch, capsys):
    """Without kaleido: the HTML alone, and the note (how to install the extra) printed once."""
    import sys

    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido raises ImportError
    monkeypatch.delenv("INTERP_STATIC_FIGURES", raising=False)
    monkeypatch.setattr(io_mod, "_static_off", None)
    fig = small_figure()
    for name in ("a", "b"):
        assert io_mod.write_html(fig, tmp_path / f"{name}.html") == tmp_path / f"{name}.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html"]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and ".[figures]" in notes[0] and "BROWSER_PATH" in notes[0]


def test_static_files_can_be_turned_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTERP_STATIC_FIGURES", "0")
    monkeypatch.setattr(io_mod, "_static_off", None)
    io_mod.write_figure(small_figure(), tmp_path / "a.html")
    assert [p.name for p in tmp_path.iterdir()] == ["a.html"] and "note:" not in capsys.readouterr().err


def test_a_hanging_export_times_out(monkeypatch):
    """A browser that never answers raises after the timeout instead of hanging the run."""
    import asyncio
    import sys
    import types

    class Hangs:
        def __init__(self, **kwargs):
            pass

        async def __aenter__(self):
            await asyncio.sleep(3600)

        async def __aexit__(self, *exc):
            return False

    monkeypatch.setitem(sys.modules, "kaleido", types.SimpleNamespace(Kaleido=Hangs))
    with pytest.raises(io_mod.StaticExportUnavailable, match="did not finish within"):
        io_mod.figure_images([small_figure()], timeout_s=0.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One real export (one browser start, a few seconds), shared by the checks below."""
    pytest.importorskip("kaleido", reason="kaleido not installed: pip install -e '.[figures]'")
    path = tmp_path_factory.mktemp("figures") / "fig.html"
    before, io_mod._static_off = io_mod._static_off, None
    switch = os.environ.pop("INTERP_STATIC_FIGURES", None)
    try:
        io_mod.write_figure(small_figure(), path)
        reason = io_mod._static_off
    finally:
        io_mod._static_off = before
        if switch is not None:
            os.environ["INTERP_STATIC_FIGURES"] = switch
    if reason is not None:
        pytest.skip(f"no Chrome/Chromium for kaleido: {reason} (apt-get install chromium, or set BROWSER_PATH)")
    return path


def test_png_is_a_real_image(exported):
    data = exported.with_suffix(".png").read_bytes()
    width, height, colours = png_pixel_colours(data)
    try:  # and a real image library agrees, where one is installed
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(exported.with_suffix(".png")) as image:
            assert image.size == (width, height) and len(image.getcolors(maxcolors=1 << 20) or range(2)) > 3
    assert width == io_mod.STATIC_WIDTH and height > 100
    assert colours > 3, "the PNG shows a figure, not a blank page"


def test_svg_is_svg(exported):
    root = ElementTree.parse(exported.with_suffix(".svg")).getroot()
    assert root.tag.rsplit("}", 1)[-1] == "svg"
    assert "static export" in exported.with_suffix(".svg").read_text(encoding="utf-8")  # the title is drawn
    assert "<html>" in exported.read_text(encoding="utf-8")[:200].lower()  # the HTML is still written
