"""A benchmark's generated section of a Markdown file: the text between its two markers, the
only part of the file the benchmark rewrites."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The HTML comments that open and close the section ``name``."""
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_section(path: str | Path, name: str, body: str) -> None:
    """Replace what lies between the markers of section ``name`` in ``path`` by ``body``; a
    file without them (or no file) gets the section, markers and all, at its end."""
    path = Path(path)
    begin, end = markers(name)
    text = path.read_text() if path.is_file() else ""
    section = f"{begin}\n{body}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
