"""Tables as a terminal shows them: Korean cells take two columns each, so the columns still line up."""
from __future__ import annotations

from storyboard.core.cli import display_width, format_table


def test_korean_cells_line_up_with_latin_ones():
    table = format_table([("풀샷 실외", 3), ("full shot", 12)], header=("prompt", "n"))
    lines = table.splitlines()
    # the number column ends at the same terminal column on every line
    ends = {display_width(line) for line in lines if not line.startswith("-")}
    assert ends == {display_width(lines[0])}, table
    # negative control: counting characters instead of columns would not line them up
    assert len("풀샷 실외") != display_width("풀샷 실외") == 9
