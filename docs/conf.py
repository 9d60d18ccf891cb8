"""Sphinx configuration of the openmm-ldb documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``.  Only Sphinx itself is needed
(plain reStructuredText, the bundled alabaster theme); the package must be importable (autodoc).
"""

import importlib.util
import os
import sys

from docutils import nodes
from docutils.parsers.rst import Directive, directives

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(DOCS))

import openmm_ldb  # noqa: E402 - after sys.path is set

project = "openmm-ldb"
author = "openmm-ldb developers"
copyright = "openmm-ldb developers"
release = openmm_ldb.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
HAVE_MYST = importlib.util.find_spec("myst_parser") is not None
if HAVE_MYST:
    extensions.append("myst_parser")

source_suffix = {".rst": "restructuredtext"}  # Markdown files are included, never separate pages
root_doc = "index"
exclude_patterns = ["_build", "*.md", "**/*.md"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_title = f"openmm-ldb {release}"
pygments_style = "sphinx"

# numpydoc docstrings (as in OpenMM) through napoleon
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"        # the numpydoc "Parameters" sections carry the types
autodoc_default_options = {"members": True, "show-inheritance": False}


class OptionalMarkdownInclude(Directive):
    """``.. optional-markdown-include:: file.md``: the file parsed as Markdown when myst-parser is
    installed, as a literal Markdown block otherwise, and a note when the file does not exist."""

    required_arguments = 1
    option_spec = {"missing": directives.unchanged}

    def run(self):
        env = self.state.document.settings.env
        rel, path = env.relfn2path(self.arguments[0])
        if not os.path.exists(path):
            text = self.options.get("missing") or f"{self.arguments[0]} is not written yet."
            return [nodes.note("", nodes.paragraph(text=text))]
        env.note_dependency(rel)
        if HAVE_MYST:
            lines = [f".. include:: {self.arguments[0]}", "   :parser: myst_parser.sphinx_"]
        else:
            lines = [f".. literalinclude:: {self.arguments[0]}", "   :language: markdown"]
        self.state_machine.insert_input(lines, self.state_machine.input_lines.source(0))
        return []


def setup(app):
    app.add_directive("optional-markdown-include", OptionalMarkdownInclude)
    return {"parallel_read_safe": True}


