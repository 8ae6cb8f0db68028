"""What a file is, from its bytes: magic numbers against the allow-list, never the client's word.

`Sniffer` is fed the upload as it streams in. It decides the type from the first bytes, keeps
checking what can only be checked on the way (UTF-8 text, the Word stream inside an OLE2
container), and `confirm` finishes with what needs random access to the whole file (the zip
directory of a DOCX, the header of an image), on a seekable reader over the sealed spool.
"""

from __future__ import annotations

import codecs
import warnings
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

HEAD_BYTES = 64


@dataclass(frozen=True)
class FileType:
    mime: str
    kind: str  # image | file | audio | video: the message types that may carry it
    ext: str


JPEG = FileType("image/jpeg", "image", "jpg")
PNG = FileType("image/png", "image", "png")
GIF = FileType("image/gif", "image", "gif")
WEBP = FileType("image/webp", "image", "webp")
PDF = FileType("application/pdf", "file", "pdf")
TXT = FileType("text/plain", "file", "txt")
DOC = FileType("application/msword", "file", "doc")
DOCX = FileType(
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "file", "docx"
)
MP3 = FileType("audio/mpeg", "audio", "mp3")
OGG = FileType("audio/ogg", "audio", "ogg")
M4A = FileType("audio/mp4", "audio", "m4a")
AAC = FileType("audio/aac", "audio", "aac")
WAV = FileType("audio/wav", "audio", "wav")
MP4 = FileType("video/mp4", "video", "mp4")

ALLOWED = (JPEG, PNG, GIF, WEBP, PDF, TXT, DOC, DOCX, MP3, OGG, M4A, AAC, WAV, MP4)
PILLOW_FORMATS = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF", WEBP: "WEBP"}

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_WORD_STREAM = "WordDocument".encode("utf-16-le")  # directory entry names are UTF-16LE
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"F4A "}
_VIDEO_BRANDS = {
    b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"dash",
    b"MSNV", b"mmp4", b"f4v ",
}  # fmt: skip


class Rejected(Exception):
    """Not an allowed type (or not what its magic claims); `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooManyPixels(Rejected):
    """An image so large Pillow refuses even its header (far past any configured cap)."""


def from_magic(head: bytes) -> FileType | None:
    """The allowed type these leading bytes announce; None when no magic matches (maybe text).

    Raises Rejected for a recognised container that is not allowed (e.g. QuickTime, HEIC)."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(_OLE2):
        return DOC  # provisional: the WordDocument stream must turn up (Sniffer)
    if head.startswith(b"PK\x03\x04"):
        return DOCX  # provisional: the zip must hold word/ (confirm)
    if head.startswith(b"OggS"):
        return OGG
    if head.startswith(b"ID3"):
        return MP3
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AUDIO_BRANDS:
            return M4A
        if brand in _VIDEO_BRANDS:
            return MP4
        raise Rejected(f"this ISO media file ({brand.decode('latin-1').strip()}) is not allowed")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = head[1] & 0x06
        if layer == 0x00 and head[1] & 0xF0 == 0xF0:
            return AAC  # ADTS
        if layer == 0x02:
            return MP3  # MPEG audio layer III frame
    return None


class Sniffer:
    """Incremental type check over the streamed upload (constant memory)."""

    def __init__(self) -> None:
        self._head = bytearray()
        self.type: FileType | None = None
        self._decided = False
        self._utf8: codecs.IncrementalDecoder | None = None
        self._tail = b""  # overlap for the OLE2 stream-name search across pieces
        self._word_found = False

    def feed(self, piece: bytes) -> FileType | None:
        """Look at the next piece; returns the type once decided (raises Rejected)."""
        if not self._decided:
            self._head += piece
            if len(self._head) < HEAD_BYTES:
                return None
            self._decide(bytes(self._head))
            piece = bytes(self._head)
            self._head = bytearray()
        self._check(piece)
        return self.type

    def _decide(self, head: bytes) -> None:
        self._decided = True
        self.type = from_magic(head)
        if self.type is None:
            self.type = TXT
            self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")

    def _check(self, piece: bytes) -> None:
        if self._utf8 is not None:
            if b"\x00" in piece:
                raise Rejected("binary data of a type that is not allowed (NUL byte)")
            try:
                self._utf8.decode(piece)
            except UnicodeDecodeError as exc:
                raise Rejected("not an allowed type (text must be valid UTF-8)") from exc
        elif self.type is DOC and not self._word_found:
            window = self._tail + piece
            self._word_found = _WORD_STREAM in window
            self._tail = window[-(len(_WORD_STREAM) - 1) :]

    def finish(self) -> FileType:
        """The end of the upload: the type as far as streaming can tell."""
        if not self._decided:
            if not self._head:
                raise Rejected("the file is empty")
            head = bytes(self._head)
            self._head = bytearray()
            self._decide(head)
            self._check(head)
        if self._utf8 is not None:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise Rejected("not an allowed type (text must be valid UTF-8)") from exc
        if self.type is DOC and not self._word_found:
            raise Rejected("this OLE2 document is not a Word document")
        assert self.type is not None
        return self.type


@dataclass(frozen=True)
class Confirmed:
    type: FileType
    width: int | None = None
    height: int | None = None


def confirm(ftype: FileType, fp: BinaryIO) -> Confirmed:
    """Checks that need the whole file: a DOCX's zip directory, an image's header (dimensions,
    and that Pillow agrees on the format). Reads headers only, never decodes pixels."""
    if ftype is DOCX:
        try:
            with zipfile.ZipFile(fp) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise Rejected("a zip file that is not a Word document") from exc
        if "[Content_Types].xml" not in names or not any(n.startswith("word/") for n in names):
            raise Rejected("a zip file that is not a Word document")
        return Confirmed(ftype)
    expected = PILLOW_FORMATS.get(ftype)
    if expected is None:
        return Confirmed(ftype)
    try:
        with warnings.catch_warnings():
            # the caller enforces its own pixel cap on the size we return
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp, formats=[expected]) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise TooManyPixels("the image has too many pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise Rejected(f"not a valid {expected} image") from exc
    return Confirmed(ftype, width, height)
