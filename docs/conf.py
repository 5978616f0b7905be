"""Sphinx configuration of the sessions_app docs (``make docs``)."""

project = "sessions_app"
author = "the sessions_app developers"
copyright = "2026, the sessions_app developers"
release = "0.1.0"

extensions = []
root_doc = "index"
exclude_patterns = ["_build"]

# Plain ``::`` blocks are shown as they are; a block that wants colour says
# its language (``.. code-block:: console``, ``python``, ``toml``...).
highlight_language = "none"

html_theme = "furo"
html_title = "sessions_app"
html_theme_options = {"top_of_page_buttons": []}
