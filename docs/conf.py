"""Sphinx configuration for keras-pneumonia."""

import os
import socket
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

INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "tensorflow": (
        "https://www.tensorflow.org/api_docs/python",
        "https://raw.githubusercontent.com/GPflow/tensorflow-intersphinx/master/tf2_py_objects.inv",
    ),
    "keras": ("https://keras.io/api", None),
}


def _online(host: str = "docs.python.org") -> bool:
    try:
        socket.create_connection((host, 443), timeout=2).close()
        return True
    except OSError:
        return False


# The docs also build offline (CI here has no network): links to the Python, NumPy,
# TensorFlow and Keras docs are made only when their inventories can be fetched.
intersphinx_mapping = INTERSPHINX if _online() else {}
intersphinx_timeout = 5

# Doctests run from the repository root, where tests/data lives.
doctest_global_setup = f"import os; os.chdir({str(ROOT)!r})"

# Single backticks in docstrings are cross-references (`load_image`), and every
# reference must resolve: `nox -s docs` builds nitpicky with warnings as errors.
default_role = "py:obj"
nitpicky = True
nitpick_ignore_regex = [
    # Keras, TensorFlow, tf-keras-vis, Matplotlib and pydicom are not linked: Keras' site
    # is not built with Sphinx (no inventory), and the others are not in the mapping.
    # Type hints and show-inheritance name them (keras.src.callbacks.callback.Callback).
    (r"py:.*", r"(keras|tensorflow|tf_keras_vis|matplotlib|pydicom)(\..*)?"),
]
if not intersphinx_mapping:
    # Offline (CI here): the Python and NumPy inventories cannot be fetched, so their
    # classes in type hints (pathlib.Path, numpy.ndarray, collections.abc.Sequence)
    # cannot link. Online builds link and check them.
    nitpick_ignore_regex += [
        (r"py:.*", r"(pathlib|numpy|collections\.abc|typing|concurrent\.futures)\..*"),
        (r"py:class", r"Path"),
    ]

html_theme = "furo"
html_title = f"keras-pneumonia {version}"
html_static_path = ["_static"]
