"""What a file is: its bytes decide, not its name or the type the client claims.

Binary formats are recognised by their signature (the `filetype` library's magic numbers); a
file without one is accepted only as text: valid UTF-8 throughout, no NUL bytes (checked as the
bytes stream by, so a binary file renamed `.txt` is caught even if it starts like text). A file
is refused when its bytes are of another type than the one claimed, or of a type outside the
allow-list. File names are cleaned up for display and downloads only: storage never uses them.
"""

from __future__ import annotations

import codecs
import mimetypes
import re
import unicodedata
from dataclasses import dataclass, field

import filetype

# Enough for every signature `filetype` knows (its own buffer is 8 KiB; most need < 300 bytes).
SNIFF_BYTES = 8192
TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/csv", "application/json"})
# Names clients commonly give the same type.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "text/x-markdown": "text/markdown",
    "text/comma-separated-values": "text/csv",
    "application/csv": "text/csv",
    "text/json": "application/json",
    "application/x-pdf": "application/pdf",
}
_EXTENSIONS = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv"}
# Types that say nothing: the file name's extension is used instead.
_UNINFORMATIVE = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
MAX_NAME_BYTES = 255


def normalise_type(value: str | None) -> str:
    """`Image/JPG; charset=x` → `image/jpeg`."""
    bare = (value or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def sanitize_file_name(raw: str | None) -> str:
    """A display name that is safe in a Content-Disposition header and on any file system: the
    last path component only, NFC, no control, invisible or reserved characters, no leading
    dots, at most 255 UTF-8 bytes with the extension kept."""
    name = unicodedata.normalize("NFC", raw or "")
    # Invisible format characters (right-to-left overrides) can disguise an extension.
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE_CHARS.sub("_", name).strip().lstrip(".").strip()
    if not name:
        return "file"
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = f".{ext}" if dot and len(ext.encode()) <= 16 else ""
        stem = stem if dot and ext else name
        budget = MAX_NAME_BYTES - len(ext.encode())
        stem = stem.encode()[:budget].decode(errors="ignore")
        name = stem + ext
    return name


def claimed_type(declared: str | None, file_name: str) -> str:
    """The type the client means: the part's Content-Type, or when that says nothing, the one
    the file name's extension implies."""
    declared_type = normalise_type(declared)
    if declared_type not in _UNINFORMATIVE:
        return declared_type
    suffix = ("." + file_name.rsplit(".", 1)[-1].lower()) if "." in file_name else ""
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    guessed, _ = mimetypes.guess_type(file_name, strict=False)
    return normalise_type(guessed) or "application/octet-stream"


class Refused(ValueError):
    """The file's bytes are not an allowed type, or not the type claimed."""

    def __init__(self, message: str, *, claimed: str, detected: str | None) -> None:
        super().__init__(message)
        self.claimed = claimed
        self.detected = detected


@dataclass
class TypeCheck:
    """Follows one file's bytes: decides its type from the first `SNIFF_BYTES` and, for text,
    keeps checking every later chunk. `feed` raises `Refused` as soon as the bytes say no."""

    claimed: str
    allowed: frozenset[str]
    keep_text_bytes: int
    verified: str | None = None
    text: list[str] | None = field(default=None, repr=False)
    _head: bytearray = field(default_factory=bytearray, repr=False)
    _decoder: codecs.IncrementalDecoder | None = field(default=None, repr=False)
    _kept: int = 0

    def feed(self, data: bytes) -> None:
        if self.verified is None:
            self._head += data
            if len(self._head) < SNIFF_BYTES:
                return
            head, self._head = bytes(self._head), bytearray()
            self._decide(head)
            data = head
        if self._decoder is not None:
            self._text(data, final=False)

    def finish(self) -> str:
        """The verified type, once every byte has been fed."""
        if self.verified is None:
            head, self._head = bytes(self._head), bytearray()
            self._decide(head)
            if self._decoder is not None:
                self._text(head, final=False)
        if self._decoder is not None:
            self._text(b"", final=True)
        assert self.verified is not None
        return self.verified

    def _decide(self, head: bytes) -> None:
        if self.claimed not in self.allowed:
            raise Refused(
                f"files of type {self.claimed} are not accepted",
                claimed=self.claimed,
                detected=None,
            )
        kind = filetype.guess(head) if head else None
        detected = normalise_type(kind.mime) if kind is not None else None
        if detected is not None:
            if detected != self.claimed:
                raise Refused(
                    f"the file's content is {detected}, not {self.claimed}",
                    claimed=self.claimed,
                    detected=detected,
                )
            self.verified = detected
            return
        if self.claimed not in TEXT_TYPES:
            raise Refused(
                f"the file's content is not {self.claimed}",
                claimed=self.claimed,
                detected="unknown",
            )
        start = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
        if self.claimed == "application/json" and start not in (
            b"{", b"[", b'"', b"-", b"t", b"f", b"n", *(bytes([d]) for d in b"0123456789")
        ):  # fmt: skip
            raise Refused("the file's content is not JSON", claimed=self.claimed, detected=None)
        self.verified = self.claimed
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self.text = []

    def _text(self, data: bytes, *, final: bool) -> None:
        assert self._decoder is not None
        if b"\x00" in data:
            raise Refused(
                f"the file's content is binary, not {self.claimed}",
                claimed=self.claimed,
                detected="application/octet-stream",
            )
        try:
            decoded = self._decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:
            raise Refused(
                f"the file's content is not UTF-8 text ({self.claimed})",
                claimed=self.claimed,
                detected="application/octet-stream",
            ) from exc
        if self.text is None:
            return
        self._kept += len(data)
        if self._kept > self.keep_text_bytes:
            self.text = None  # too large for the AI context: only named there
        else:
            self.text.append(decoded)

    def context_text(self) -> str | None:
        """The whole text of a text file no larger than `keep_text_bytes`, else None."""
        return "".join(self.text) if self.text is not None else None
