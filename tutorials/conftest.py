"""The cell sources in _cells/ are the notebooks' text, not modules: only the generated notebooks are run."""

collect_ignore_glob = ["_cells/*"]
