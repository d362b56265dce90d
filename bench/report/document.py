"""The report as a document: sections of blocks (headings, paragraphs, notes, bullets,
tables, figures), and its writers: ``report.md``, the self-contained ``report.html``
(jinja2, autoescaped), ``tables/<name>.csv`` (formula-safe) and ``.tex`` (booktabs,
LaTeX-escaped), ``plots/<name>.png`` and ``.svg``. Every string that reaches report.md
goes through :func:`md_text` / :func:`md_block`, in :func:`markdown`."""

from __future__ import annotations

import base64
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report import plots

__all__ = ["Block", "Document", "Section", "csv_safe", "html", "latex_escape", "markdown",
           "md_block", "md_text", "slug", "to_latex"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass
class Block:
    kind: str  # heading | para | note | bullets | table | figure
    text: str = ""
    items: list[str] = field(default_factory=list)
    name: str = ""
    caption: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    b64: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


class Document:
    """Collects sections, and writes tables and plots as they are added."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sections: list[Section] = []
        self.tables_dir = run_dir / "tables"
        self.plots_dir = run_dir / "plots"
        self._names: dict[str, set[str]] = {"table": set(), "figure": set()}

    def section(self, title: str) -> Section:
        sec = Section(title, f"s{len(self.sections) + 1}")
        self.sections.append(sec)
        return sec

    def unique(self, kind: str, name: str) -> str:
        base, i = name, 2
        while name in self._names[kind]:
            name, i = f"{base}-{i}", i + 1
        self._names[kind].add(name)
        return name

    def table(self, sec: Section, name: str, display: pd.DataFrame, caption: str,
              raw: pd.DataFrame | None = None, *, show: bool = True) -> None:
        """Write ``tables/name.csv`` (``raw``, else ``display``) and ``.tex`` (``display``);
        show ``display`` in the report unless ``show`` is false."""
        name = self.unique("table", name)
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        csv_safe(raw if raw is not None else display).to_csv(self.tables_dir / f"{name}.csv",
                                                             index=False)
        (self.tables_dir / f"{name}.tex").write_text(to_latex(display, caption), "utf-8")
        if not show:
            return
        sec.blocks.append(Block(
            "table", name=name, caption=caption, columns=[str(c) for c in display.columns],
            rows=[[_cell(v) for v in row] for row in display.itertuples(index=False)],
        ))

    def figure(self, sec: Section, name: str, fig: Any, caption: str) -> None:
        if fig is None:
            return
        name = self.unique("figure", name)
        png = plots.save(fig, self.plots_dir, name)
        sec.blocks.append(Block("figure", name=name, caption=caption,
                                b64=base64.b64encode(png).decode("ascii")))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (a hash is appended when characters change)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:50] or "x"
    if s != text:
        s += "-" + hashlib.sha1(str(text).encode()).hexdigest()[:6]
    return s


# --------------------------------------------------------------------------- LaTeX

_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "Δ": r"$\Delta$", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "—": "---",
    "–": "--", "…": r"\ldots{}", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
    "†": r"\dag{}",
}


def latex_escape(text: object) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs ``table`` of ``df`` (cells as shown in the report, LaTeX-escaped)."""
    def numeric(col: pd.Series) -> bool:
        return all(re.fullmatch(r"[-+]?[\d.,eE+\-\s\[\]±—%]*", _cell(v)) for v in col)

    align = "".join("r" if numeric(df[c]) else "l" for c in df.columns) or "l"
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape(_cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)



# Text that would start a Markdown block (heading, quote, list, rule, table) at a line's start.
_MD_BLOCK_START = re.compile(r"^(?:[#>+*=|~`-]|\d+(?=[.)](?:\s|$)))")
# Spreadsheet formula prefixes (OWASP CSV injection): such a text cell gets a leading '.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_text(text: object) -> str:
    """``text`` safe inside a line of report.md: names and record fields reach the report,
    so no raw HTML (``<script>``, ``<img onerror>``), no line break (a fake heading or table
    row) and no link or image made of them; ordinary text is left as it reads."""
    out = " ".join(str(text).splitlines())
    return out.replace("<", "&lt;").replace(">", "&gt;").replace("](", "]\\(")


def md_block(text: object) -> str:
    """:func:`md_text` for text that starts a line: a leading ``#``, ``-``, ``1.`` ... is
    escaped, so that it stays text."""
    out = md_text(text).lstrip()  # four leading spaces would make a code block
    match = _MD_BLOCK_START.match(out)
    if match is None:
        return out
    end = match.end()
    return out[:end] + "\\" + out[end:] if out[:end].isdigit() else "\\" + out


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell and header that a spreadsheet would run as a formula
    (``=``, ``+``, ``-``, ``@``, tab, CR first) prefixed with a single quote."""
    def cell(value: object) -> object:
        return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) \
            else value

    out = df.copy()
    for i in range(out.shape[1]):  # by position: column names may repeat
        if not pd.api.types.is_numeric_dtype(out.iloc[:, i]):
            out.iloc[:, i] = out.iloc[:, i].map(cell)
    out.columns = [cell(c) for c in out.columns]
    return out


def markdown(title: str, description: str, sections: list[Section]) -> str:
    # Every string goes through md_text/md_block here, the one place report.md is written.
    def md_cell(s: str) -> str:
        return md_text(s).replace("|", r"\|")

    lines = [f"# mtlbench report: {md_text(title)}", ""]
    if description:
        lines += [md_block(description), ""]
    for sec in sections:
        lines += [f"## {md_text(sec.title)}", ""]
        for b in sec.blocks:
            if b.kind == "heading":
                lines += [f"### {md_text(b.text)}", ""]
            elif b.kind in ("para", "note"):
                lines += [md_block(b.text) if b.kind == "para" else f"_{md_text(b.text)}_", ""]
            elif b.kind == "bullets":
                lines += [*(f"- {md_block(i)}" for i in b.items), ""]
            elif b.kind == "table":
                from tabulate import tabulate

                rows = [[md_cell(c) for c in r] for r in b.rows]
                lines += [f"_{md_text(b.caption)}_ (tables/{b.name}.csv)", "",
                          tabulate(rows, headers=[md_cell(c) for c in b.columns],
                                   tablefmt="pipe", disable_numparse=True), ""]
            elif b.kind == "figure":
                alt = md_cell(b.caption).replace("[", r"\[").replace("]", r"\]")
                lines += [f"![{alt}](plots/{b.name}.png)", ""]
    return "\n".join(lines)


def html(title: str, description: str, sections: list[Section]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html.j2").render(title=title, description=description,
                                                     sections=sections)
