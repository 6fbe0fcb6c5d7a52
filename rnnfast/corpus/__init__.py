"""The built-in default corpus: the text ``rnnfast train`` learns when no corpus is named.

It is the project's own writing (a short play, letters, songs and essays on recurrent networks,
about 60 KB of plain English), so a fresh install can train without downloading anything.

    >>> default_corpus_path().name
    'default.txt'
"""
from importlib import resources
from pathlib import Path


def default_corpus_path() -> Path:
    """Path of the bundled corpus file (installed as package data beside this module)."""
    # A real file path is needed (the CLI reads it like any user corpus and records it in the
    # checkpoint); setuptools installs package data as plain files, so as_file is not needed.
    return Path(str(resources.files(__name__) / "default.txt"))
