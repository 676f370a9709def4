"""``aicli diff``: a task's changes as a coloured unified diff, or ``git diff --stat``-like lines."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from aicm.aicli.render import Output

STAT_WIDTH = 40  # columns for the +/- bar, as git uses at most
LINE_STYLES = (
    ("diff --git ", "bold"),
    ("index ", "bold"),
    ("--- ", "bold"),
    ("+++ ", "bold"),
    ("@@", "cyan"),
    ("+", "green"),
    ("-", "red"),
)


def show_diff(out: Output, changes: dict[str, Any] | None, *, stat: bool) -> None:
    if changes is None:
        out.note("no changes yet: they are stored when the task's run ends")
        return
    if out.json:
        out.emit_json(changes)
        return
    files = changes["files"]
    if stat:
        for line in stat_lines(changes):
            out.console.print(line) if out.rich else out.plain(line.plain)
        return
    for change in files:
        patch = change.get("patch")
        if patch is None:
            note = "binary file" if change.get("binary") else "patch cut at runner.max_patch_bytes"
            out.note(f"{change['path']}: {change['status'].lower()}, {note}")
            continue
        if out.rich:
            for line in patch.splitlines():
                out.console.print(colour(line))
        else:
            out.stdout.write(patch if patch.endswith("\n") else patch + "\n")
    out.stdout.flush()
    if changes.get("truncated"):
        out.note("(some patches were cut at the server's runner.max_patch_bytes)")


def colour(line: str) -> Text:
    style = next((style for prefix, style in LINE_STYLES if line.startswith(prefix)), "")
    return Text(line, style=style)


def stat_lines(changes: dict[str, Any]) -> list[Text]:
    """One line per file (``path | 12 +++++---``), then the totals."""
    files = changes["files"]
    names = [_name(change) for change in files]
    width = max((len(name) for name in names), default=0)
    biggest = max((change["additions"] + change["deletions"] for change in files), default=0)
    digits = len(str(biggest))
    scale = min(1.0, STAT_WIDTH / biggest) if biggest else 1.0
    lines = []
    for name, change in zip(names, files, strict=True):
        line = Text(f" {name.ljust(width)} | ")
        if change.get("binary"):
            line.append("Bin")
        else:
            added, deleted = _bar(change["additions"], scale), _bar(change["deletions"], scale)
            line.append(f"{change['additions'] + change['deletions']:>{digits}} ")
            line.append("+" * added, style="green")
            line.append("-" * deleted, style="red")
        lines.append(line)
    lines.append(Text(totals(changes)))
    return lines


def totals(changes: dict[str, Any]) -> str:
    count = changes["filesChanged"]
    parts = [f" {count} file{'s' if count != 1 else ''} changed"]
    if changes["additions"] or not changes["deletions"]:
        parts.append(f"{changes['additions']} insertion{'s' if changes['additions'] != 1 else ''}(+)")
    if changes["deletions"]:
        parts.append(f"{changes['deletions']} deletion{'s' if changes['deletions'] != 1 else ''}(-)")
    return ", ".join(parts)


def _name(change: dict[str, Any]) -> str:
    old = change.get("oldPath")
    return f"{old} => {change['path']}" if old and old != change["path"] else change["path"]


def _bar(count: int, scale: float) -> int:
    return max(1, round(count * scale)) if count else 0
