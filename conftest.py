"""Settings for every test, doctest and notebook: no screen, figures closed after each test."""

import os

import matplotlib

os.environ.setdefault("MPLBACKEND", "Agg")
matplotlib.use("Agg")

import pytest  # noqa: E402

# The cell sources in tutorials/_cells/ are the notebooks' text, not modules:
# only the generated notebooks are run.
collect_ignore_glob = ["tutorials/_cells/*", "tutorials/_make_notebooks.py"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
