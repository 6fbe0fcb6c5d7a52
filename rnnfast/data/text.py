"""Text files and character vocabularies: :func:`read_text` reads a file checked (missing, empty,
binary, undecodable are DataErrors), :class:`Vocab` maps characters to ids and back.
"""
from __future__ import annotations

import codecs
import os
import stat

import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.errors import CheckpointError, DataError, existing_file


_ENCODING_HINT = "if it is text in another encoding, name it (--encoding latin-1, or encoding='latin-1')"

# Read in chunks of this size, so that a binary or undecodable file is refused after its first
# chunk rather than after reading all of it (a 1 GiB file of NULs used to cost 2.1 GB and 7 s).
CHUNK_BYTES = 1 << 20
# A pipe or device (/dev/stdin, a FIFO, /dev/zero) has no size to check beforehand and may never
# end, so at most this much is read from one; a regular file may be as large as memory allows.
MAX_STREAM_BYTES = 1 << 30


def read_text(path, encoding: str = "utf-8") -> str:
    """The whole text of a file, checked: a missing, empty, binary or undecodable file is a DataError.

    The file is read and decoded in chunks of :data:`CHUNK_BYTES`, each checked as it arrives, so a
    bad file costs one chunk. A file that is not a regular one (a pipe, a device) may give at most
    :data:`MAX_STREAM_BYTES`; running out of memory is a DataError too.
    """
    p = existing_file(path, DataError)
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; "
                        "use a Python codec name such as utf-8, latin-1 or utf-16") from None
    pieces, offset, length = [], 0, 0  # offset: bytes read before this chunk; length: characters decoded
    try:
        with open(p, "rb") as f:
            regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
            while True:
                chunk = f.read(CHUNK_BYTES)
                if not regular and offset + len(chunk) > MAX_STREAM_BYTES:
                    raise DataError(f"{p} is not a regular file and gives more than {MAX_STREAM_BYTES:,} bytes; "
                                    "save the text to a regular file and pass that")
                pending = decoder.getstate()[0]  # the bytes of a character cut by the last chunk
                try:
                    piece = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as exc:
                    bad = (pending + chunk)[exc.start : exc.start + 1]
                    raise DataError(
                        f"{p} is not valid {encoding} text (byte 0x{bad.hex()} at offset "
                        f"{offset - len(pending) + exc.start}); pass a text file, or {_ENCODING_HINT}"
                    ) from None
                # Checked after decoding, so UTF-16 text (whose bytes are full of NULs) is not called binary.
                nul = piece.find("\x00")
                if nul >= 0:
                    raise DataError(f"{p} looks like a binary file (NUL character at position {length + nul}); "
                                    f"pass a text file, or {_ENCODING_HINT}")
                pieces.append(piece)
                offset, length = offset + len(chunk), length + len(piece)
                if not chunk:
                    break
            text = "".join(pieces)
    except OSError as exc:
        raise DataError(f"cannot read {p} ({exc.strerror}); check its permissions") from None
    except MemoryError:
        raise DataError(f"not enough memory to read {p} ({offset:,} bytes read); "
                        "pass a smaller file or use a machine with more memory") from None
    # Editors on Windows write a byte-order mark; it is not part of the text.
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{p} is empty" + (" (only whitespace)" if text else "") + "; pass a file with text in it")
    return text


def _codepoints(text: str) -> np.ndarray:
    """(N,) uint32 code points of ``text``, one per character, without a Python loop."""
    # surrogatepass keeps lone surrogates (from surrogateescape-decoded text) as their own characters.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Vocab:
    """A character vocabulary: id ``k`` is the k-th character in code-point order. Any script works.

        >>> v = Vocab.from_text("床前明月光")
        >>> len(v), v.decode(v.encode("明月"))
        (5, '明月')

    It shares ``unit``, ``tokens``, ``separator``, ``encode``, ``decode`` and ``len`` with
    :class:`~rnnfast.data.TokenVocab`, so a model's text code serves both; it has no special ids.
    """

    unit = "char"
    separator = ""  # what decode writes between two ids' texts

    def __init__(self, chars):
        """``chars``: the distinct characters, in id order (as :meth:`from_text` sorts them)."""
        self.chars = tuple(chars)
        if not self.chars:
            raise DataError("the vocabulary is empty; build it from a non-empty text")
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("a vocabulary needs distinct single characters")
        codes = _codepoints("".join(self.chars))
        self._order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[self._order]
        self._char_array = np.array(self.chars, dtype="<U1")

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The sorted distinct characters of ``text``."""
        if not text:
            raise DataError("cannot build a vocabulary from empty text; pass a corpus with text in it")
        return cls(chr(c) for c in np.unique(_codepoints(text)))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def tokens(self) -> tuple:
        """The characters in id order (the name a :class:`~rnnfast.data.TokenVocab` gives its tokens)."""
        return self.chars

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def encode(self, text: str) -> np.ndarray:
        """``text`` as ids, (N,) int32; characters outside the vocabulary are a DataError naming them."""
        codes = _codepoints(text)
        pos = np.minimum(np.searchsorted(self._sorted_codes, codes), len(self) - 1)
        unknown = self._sorted_codes[pos] != codes
        if unknown.any():
            where = np.flatnonzero(unknown)
            names = list(dict.fromkeys(text[i] for i in where))
            shown = ", ".join(repr(c) for c in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            raise DataError(
                f"{len(names)} character(s) not in the model's vocabulary: {shown} (first at position {where[0]}); "
                f"use only characters the model was trained on ({len(self)} in its vocabulary)"
            )
        return self._order[pos].astype(np.int32)

    def decode(self, ids) -> str:
        """``ids``: (N,) integers (NumPy, CuPy or a list) -> the text they stand for."""
        ids = np.asarray(to_numpy(ids)).reshape(-1)
        if ids.size == 0:  # [] arrives as float64, which cannot index
            return ""
        if ids.min() < 0 or ids.max() >= len(self):
            raise ValueError(f"ids must lie in [0, {len(self)}), got values in [{ids.min()}, {ids.max()}]")
        return "".join(self._char_array[ids].tolist())

    def to_dict(self) -> dict:
        """A JSON-able description, stored in checkpoints' metadata."""
        return {"kind": "char", "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """Inverse of :meth:`to_dict`; a malformed entry (a damaged checkpoint) is a CheckpointError."""
        try:
            if d["kind"] != "char":
                raise ValueError(f"unknown vocabulary kind {d['kind']!r}")
            return cls(d["chars"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's vocabulary is malformed ({exc}); "
                                  "use a checkpoint written by rnnfast") from None
