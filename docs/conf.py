"""Sphinx configuration for keras-pneumonia."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from keras_pneumonia import __version__  # noqa: E402

project = "keras-pneumonia"
author = "keras-pneumonia developers"
copyright = "2026, keras-pneumonia developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "myst_parser",
    "sphinxarg.ext",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "tensorflow": (
        "https://www.tensorflow.org/api_docs/python",
        "https://raw.githubusercontent.com/GPflow/tensorflow-intersphinx/master/tf2_py_objects.inv",
    ),
    "keras": ("https://keras.io/api", None),
}
# The docs build offline (CI has no network): intersphinx inventories that cannot be
# fetched are skipped with a warning we do not turn into an error.
suppress_warnings = ["intersphinx.external", "config.cache"]
intersphinx_timeout = 3

# Doctests run from the repository root, where tests/data lives.
doctest_global_setup = f"import os; os.chdir({str(ROOT)!r})"

html_theme = "furo"
html_title = f"keras-pneumonia {version}"
html_static_path = ["_static"]
nitpicky = False
