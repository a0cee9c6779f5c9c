"""Progress views rendered to a fixed-width console: what a user sees."""

from __future__ import annotations

import io

from rich.console import Console

from imgfetch.messages import Messages
from imgfetch.progress import (
    PlainView,
    ProductLine,
    ProgressView,
    RichView,
    Tally,
    choose_view,
    format_bytes,
    format_duration,
)


def _console(terminal: bool) -> Console:
    return Console(
        file=io.StringIO(), width=100, force_terminal=terminal, color_system=None
    )


def test_auto_is_plain_off_a_terminal_and_rich_on_one() -> None:
    msg, tally = Messages("en"), Tally()
    lines: list[str] = []
    assert isinstance(
        choose_view("auto", msg, tally, lambda: _console(False), lines.append),
        PlainView,
    )
    assert isinstance(
        choose_view("auto", msg, tally, lambda: _console(True), lines.append), RichView
    )
    none = choose_view("none", msg, tally, lambda: _console(True), lines.append)
    assert type(none) is ProgressView


def test_plain_view_prints_one_spec_line_per_product() -> None:
    lines: list[str] = []
    view = PlainView(Messages("zh"), Tally(), lines.append)
    view.begin(2, 0)
    view.product_finished(ProductLine(1, 2, "a", {"main": 1, "sku": 0, "qc": 0}))
    view.end()
    assert lines == ["进度: 1/2 - 商品 a: 主图1 张, SKU图0 张, QC图0 张 (共1张)"]


def test_rich_view_shows_bar_counts_and_latest_products() -> None:
    console = _console(True)
    tally = Tally()
    view = RichView(Messages("en"), tally, console)
    view.begin(12, 4)
    for n in range(5, 12):
        tally.images += 2
        tally.bytes += 2048
        tally.per_category["main"] += 2
        view.product_finished(ProductLine(n, 12, f"p{n}", {"main": 2}))
    frame = _console(True)
    frame.print(view._render())  # the frame the refresh thread draws next
    view.end()
    screen = frame.file.getvalue()  # type: ignore[attr-defined]
    assert "11/12" in screen
    assert "14 images" in screen
    assert "14.0 KB" in screen
    assert "main 14" in screen and "failed: 0" in screen
    # Only the latest five product lines stay on screen.
    for n in range(7, 12):
        assert f"Progress: {n}/12 - product p{n}: main 2 (2 images)" in screen
    assert "product p6:" not in screen


def test_rich_view_end_is_idempotent() -> None:
    view = RichView(Messages("en"), Tally(), _console(True))
    view.begin(1, 0)
    view.end()
    view.end()


def test_formatting_helpers() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KB"
    assert format_bytes(5 * 1024**3) == "5.0 GB"
    assert format_duration(5) == "5s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3725) == "1h02m05s"
