"""Sphinx configuration: the API reference from the docstrings, and the
Markdown pages (MyST), as optax and flax build theirs."""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'optax_lambc'
author = 'optax_lambc authors'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'myst_parser']
source_suffix = {'.md': 'markdown'}
exclude_patterns = ['_build', 'lm/runs.jsonl', 'lm/round2/runs.jsonl']
autodoc_typehints = 'description'
autodoc_member_order = 'bysource'
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
suppress_warnings = ['myst.xref_missing']  # links to files outside docs/
html_theme = 'alabaster'
