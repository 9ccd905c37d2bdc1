"""8-bit to 7-bit conversion for a next hop without 8BITMIME (RFC 6152 3, in the spirit of RFC 1652).

`downgrade_8bit(message)` returns the message with every byte below 0x80 and
the same meaning, or raises `DowngradeError` when that cannot be done (an
address with non-ASCII characters needs SMTPUTF8, RFC 6531).  It walks the
MIME structure on bytes (fastmta.mime.entity), never through the `email`
package, and leaves every part that is already 7-bit byte for byte as it was.

Per entity:
- multipart/* (7bit/8bit/binary): each 8-bit part is converted on its own;
  the parts of multipart/digest default to message/rfc822 (RFC 2046 5.1.5).
  8-bit bytes in the preamble or epilogue, which readers do not show
  (RFC 2046 5.1.1), become "?", as do those of a multipart without a boundary.
- message/rfc822: the enclosed message is converted the same way, and its
  Content-Transfer-Encoding becomes 7bit (RFC 2046 5.2.1 allows no other).
- Any other 8-bit body: text/* (and message/global, RFC 6532 3.7) becomes
  quoted-printable in text mode, anything else base64 (what each encoding is
  for, RFC 2045 6.1); a body already in quoted-printable or base64 that holds
  stray 8-bit bytes is decoded leniently and encoded again.  Decoding the new
  body gives back the original bytes exactly.  The Content-Transfer-Encoding
  field is set; a text part that named no charset (or us-ascii, now wrong)
  gets charset=utf-8 if its bytes are UTF-8, else unknown-8bit (RFC 1428); a
  message that gains MIME fields gains MIME-Version: 1.0.
- Header fields with 8-bit bytes: see fastmta.mime.headers.

Rewritten and added lines end in CRLF.  DKIM signatures over a converted body
no longer verify; that is why signers are told to sign 7-bit (RFC 6376 5.3).
"""

from __future__ import annotations

from fastmta import kernels
from fastmta.mime.entity import field_value, find_field, parse_entity, split_multipart
from fastmta.mime.headers import DowngradeError, encode_field
from fastmta.mime.params import format_value, get_param, parse_value

__all__ = ["DowngradeError", "downgrade_8bit", "needs_downgrade"]

MAX_DEPTH = 40  # MIME nesting we follow; deeper is an attack or a broken generator
_IDENTITY = frozenset({b"7bit", b"8bit", b"binary"})
_TEXT_SUBTYPES_OF_MESSAGE = frozenset(
    {b"message/global", b"message/global-headers", b"message/global-delivery-status",
     b"message/global-disposition-notification"}
)  # fmt: skip
_SCRUB = bytes(range(128)) + b"?" * 128


def needs_downgrade(message: bytes) -> bool:
    """True if the message holds any byte >= 0x80 (and so needs 8BITMIME as it is)."""
    return not message.isascii()


def downgrade_8bit(message: bytes) -> bytes:
    """A 7-bit form of `message` with the same meaning; see the module docstring."""
    if message.isascii():
        return message
    return _convert(bytes(message), default_type=b"text/plain", is_message=True, depth=0)


def _convert(data: bytes, default_type: bytes, is_message: bool, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise DowngradeError(
            f"MIME parts are nested more than {MAX_DEPTH} deep; return the message to its "
            "sender (5.6.3), no honest mail program writes that"
        )
    entity = parse_entity(data)
    fields = entity.fields
    type_index = find_field(fields, b"content-type")
    parsed = parse_value(field_value(fields[type_index])) if type_index is not None else None
    if parsed is None or b"/" not in parsed[0]:
        parsed = (default_type, [])  # RFC 2045 5.2: an unreadable type is the default
    kind, params = parsed
    encoding_index = find_field(fields, b"content-transfer-encoding")
    encoding = _transfer_encoding(fields[encoding_index]) if encoding_index is not None else b"7bit"
    body = entity.body
    mime_added = False

    if body.isascii():
        pass
    elif kind.startswith(b"multipart/") and encoding in _IDENTITY:
        boundary = get_param(params, "boundary")
        if boundary:
            child_type = b"message/rfc822" if kind == b"multipart/digest" else b"text/plain"
            body = _convert_multipart(body, boundary, child_type, depth)
        else:  # no boundary: nothing a reader can show, and no encoding may apply
            body = body.translate(_SCRUB)
        if encoding_index is not None:
            fields[encoding_index] = b"Content-Transfer-Encoding: 7bit\r\n"
    elif kind == b"message/rfc822" and encoding in _IDENTITY:
        body = _convert(body, b"text/plain", is_message=True, depth=depth + 1)
        if encoding_index is not None:
            fields[encoding_index] = b"Content-Transfer-Encoding: 7bit\r\n"
    else:
        body, encoding_name, charset = _encode_leaf(body, kind, encoding, params)
        if charset is not None:  # before the encoding field, whose update may move indexes
            _set_charset(fields, type_index, kind, charset)
        _set_transfer_encoding(fields, encoding_name)
        mime_added = True

    fields = [raw if raw.isascii() else encode_field(raw) for raw in fields]
    if mime_added and is_message and find_field(fields, b"mime-version") is None:
        fields.append(b"MIME-Version: 1.0\r\n")
    separator = entity.separator
    if not separator and fields and body:
        # The body began without an empty line; encoded, it must not pass for a field.
        separator = b"\r\n"
    return b"".join(fields) + separator + body


def _transfer_encoding(raw_field: bytes) -> bytes:
    parsed = parse_value(field_value(raw_field))
    return parsed[0] if parsed is not None else b"8bit"


def _is_text(kind: bytes) -> bool:
    return kind.startswith(b"text/") or kind in _TEXT_SUBTYPES_OF_MESSAGE


def _encode_leaf(
    body: bytes, kind: bytes, encoding: bytes, params: list[tuple[str, bytes]]
) -> tuple[bytes, bytes, str | None]:
    """(new body, its transfer encoding, charset to declare or None)."""
    text = _is_text(kind)
    if encoding == b"quoted-printable":
        data = kernels.qp_decode(body)
        name = b"quoted-printable"
    elif encoding == b"base64":
        data = kernels.b64_decode(body, strict=False)
        name = b"base64"
    else:  # 7bit, 8bit, binary, or a token we do not know: the bytes are the data
        data = body
        name = b"quoted-printable" if text else b"base64"
    if name == b"quoted-printable":
        encoded = kernels.qp_encode(data, binary=not text)
    else:
        encoded = kernels.b64_encode(data)
        if not body.endswith(b"\n"):
            encoded = encoded[:-2]  # a line break before a boundary belongs to the boundary
    charset = None
    if kind.startswith(b"text/"):
        declared = (get_param(params, "charset") or b"").lower()
        if declared in (b"", b"us-ascii", b"ascii") and not data.isascii():
            charset = "utf-8" if _is_utf8(data) else "unknown-8bit"
    return encoded, name, charset


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _set_transfer_encoding(fields: list[bytes], name: bytes) -> None:
    new_field = b"Content-Transfer-Encoding: " + name + b"\r\n"
    indexes = [i for i, raw in enumerate(fields) if raw.split(b":", 1)[0].strip().lower()
               == b"content-transfer-encoding"]  # fmt: skip
    if not indexes:
        fields.append(new_field)
        return
    fields[indexes[0]] = new_field
    for index in reversed(indexes[1:]):
        del fields[index]  # a second, contradicting field would confuse the reader


def _set_charset(fields: list[bytes], type_index: int | None, kind: bytes, charset: str) -> None:
    """Declare `charset` on a text part, writing its Content-Type field anew."""
    params: list[tuple[str, bytes]] = []
    if type_index is not None:
        parsed = parse_value(field_value(fields[type_index]), whole=True)
        if parsed is None:
            return  # a value we cannot fully read is left as the sender wrote it
        params = parsed[1]
    kept = [(name, value) for name, value in params if name.split("*")[0] != "charset"]
    new_params = kept + [("charset", charset.encode("ascii"))]
    prefix = b"Content-Type: "
    new_field = prefix + format_value(kind, new_params, len(prefix)) + b"\r\n"
    if type_index is None:
        fields.append(new_field)
    else:
        fields[type_index] = new_field


def _convert_multipart(body: bytes, boundary: bytes, child_type: bytes, depth: int) -> bytes:
    if not boundary.isascii():
        raise DowngradeError(
            "the multipart boundary holds 8-bit bytes, which 7-bit transport cannot carry; "
            "return the message to its sender (5.6.3)"
        )
    split = split_multipart(body, boundary)
    split.preamble = split.preamble.translate(_SCRUB)
    split.epilogue = split.epilogue.translate(_SCRUB)
    split.parts = [
        (delimiter, part if part.isascii() else _convert(part, child_type, False, depth + 1))
        for delimiter, part in split.parts
    ]
    return split.to_bytes()
