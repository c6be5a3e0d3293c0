"""Write the tutorial notebooks (tutorials/NN_*.ipynb) from the cell sources in tutorials/_cells/.

The notebooks are stored without outputs and executed by the test suite
(``pytest --nbmake tutorials/``). Edit the cell sources, then regenerate::

    python tutorials/_make_notebooks.py            # all notebooks
    python tutorials/_make_notebooks.py 02 05      # some of them

A cell source file is plain Python: lines ``# %% [markdown]`` and ``# %%``
start a markdown and a code cell (the "percent" format of Jupytext and VS Code);
markdown lines are written with a leading ``# `` that is removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "_cells"


def parse_cells(text: str) -> list:
    """Split a percent-format source into ``(kind, source)`` pairs, ``kind`` being "markdown" or "code".

    Examples
    --------
    >>> parse_cells("# %% [markdown]\\n# # Title\\n# %%\\nx = 1\\n")
    [('markdown', '# Title'), ('code', 'x = 1')]
    """
    cells = []
    kind, lines = None, []

    def close():
        if kind is not None:
            body = "\n".join(lines).strip("\n")
            if body:
                cells.append((kind, body))

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# %%"):
            close()
            kind, lines = ("markdown" if "[markdown]" in stripped else "code"), []
            continue
        if kind == "markdown":
            line = line[2:] if line.startswith("# ") else ("" if line.strip() == "#" else line)
        lines.append(line)
    close()
    return cells


def build_notebook(source: Path):
    """Notebook object (nbformat v4, kernel python3, no outputs) from one cell source file."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    for kind, body in parse_cells(source.read_text()):
        if kind == "markdown":
            notebook.cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(body))
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    return notebook


def main(argv=None) -> int:
    import nbformat

    wanted = list(sys.argv[1:] if argv is None else argv)
    for source in sorted(SOURCES.glob("*.py")):
        if wanted and not any(source.stem.startswith(prefix) for prefix in wanted):
            continue
        target = HERE / f"{source.stem}.ipynb"
        nbformat.write(build_notebook(source), target)
        print(f"wrote {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
