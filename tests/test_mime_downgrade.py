"""8-bit to 7-bit downgrade: the result is ASCII, and a mail reader sees the same message."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta import kernels
from fastmta.mime import DowngradeError, downgrade_8bit, encode_field, needs_downgrade


def read(message: bytes) -> EmailMessage:
    """Parse as a mail reader would (the standard library's modern policy)."""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]


def assert_7bit(message: bytes) -> None:
    assert message.isascii()
    assert not needs_downgrade(message)


PLAIN_8BIT = (
    "From: sender@example.com\r\n"
    "To: rcpt@example.org\r\n"
    "Subject: Grüße aus Köln\r\n"
    "\r\n"
    "Schöne Grüße,\r\n"
    "line with trailing space \r\n"
    "=== a line of equals signs ===\r\n"
    ".leading dot\r\n"
).encode()


def test_needs_downgrade_looks_for_any_byte_above_127():
    assert not needs_downgrade(b"Subject: hi\r\n\r\nascii only\r\n")
    assert needs_downgrade(b"Subject: hi\r\n\r\ncaf\xc3\xa9\r\n")
    assert needs_downgrade(b"Subject: \x80\r\n\r\n")


def test_a_7bit_message_is_returned_unchanged():
    message = b"Subject: hi\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbody\r\n"
    assert downgrade_8bit(message) is message


def test_single_part_without_mime_fields_becomes_quoted_printable():
    out = downgrade_8bit(PLAIN_8BIT)
    assert_7bit(out)
    assert b"MIME-Version: 1.0\r\n" in out
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in out
    assert kernels.qp_decode(body_of(out)) == body_of(PLAIN_8BIT)
    reader = read(out)
    assert reader["Subject"] == "Grüße aus Köln"
    assert reader.get_content() == body_of(PLAIN_8BIT).decode()
    assert reader["From"] == "sender@example.com"


def test_a_declared_charset_is_kept_and_the_transfer_encoding_replaced():
    message = (
        b"Subject: test\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"caf\xe9 cr\xe8me\r\n"
    )
    out = downgrade_8bit(message)
    assert_7bit(out)
    assert out.count(b"Content-Transfer-Encoding") == 1
    assert b"charset=iso-8859-1" in out
    assert out.count(b"MIME-Version") == 1
    assert read(out).get_content() == "café crème\r\n"


def test_bytes_that_are_not_utf8_are_labelled_unknown_8bit():
    out = downgrade_8bit(b"Subject: x\r\n\r\ncaf\xe9\r\n")
    assert b"charset=unknown-8bit" in out
    assert kernels.qp_decode(body_of(out)) == b"caf\xe9\r\n"


def test_a_body_that_starts_without_an_empty_line_gets_one():
    # "Note: ..." would read as a header field once encoded; the empty line keeps it body.
    message = b"Subject: x\r\nNot a header line \xc3\xa9\r\nNote: more\r\n"
    out = downgrade_8bit(message)
    assert_7bit(out)
    reader = read(out)
    assert reader.get_content() == "Not a header line é\r\nNote: more\r\n"
    assert reader["Note"] is None


MULTIPART = (
    b"From: a@example.com\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_b1"\r\n'
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"preamble with \xc3\xa9\r\n"
    b"--=_b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
    b"--=_b1\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"an ascii part stays as it is\r\n"
    b"--=_b1\r\n"
    b"Content-Type: image/png\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--=_b1\r\n"
    b'Content-Type: application/octet-stream; name="r\xc3\xa9sum\xc3\xa9.bin"\r\n'
    b'Content-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.bin"\r\n'
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"\x00\x01\x02\xff\xfe\r\n\x80"
    b"\r\n--=_b1--\r\n"
    b"epilogue\r\n"
)


def test_multipart_parts_are_converted_one_by_one():
    out = downgrade_8bit(MULTIPART)
    assert_7bit(out)
    assert out.split(b"\r\n\r\n")[0].endswith(b"\r\nContent-Transfer-Encoding: 7bit")
    assert b"preamble with ??\r\n" in out
    # parts that were already 7-bit come out byte for byte
    assert b"\r\n--=_b1\r\nContent-Type: text/plain\r\n\r\nan ascii part stays as it is\r\n" in out
    assert b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--=_b1\r\n" in out
    parts = list(read(out).iter_parts())
    assert [part.get_content_type() for part in parts] == [
        "text/plain", "text/plain", "image/png", "application/octet-stream"
    ]  # fmt: skip
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[0].get_content() == "Grüße"  # the CRLF before a delimiter is not content
    assert parts[3]["Content-Transfer-Encoding"] == "base64"
    assert parts[3].get_payload(decode=True) == b"\x00\x01\x02\xff\xfe\r\n\x80"
    assert parts[3].get_filename() == "résumé.bin"
    assert parts[3].get_param("name") == "résumé.bin"
    assert out.endswith(b"\r\n--=_b1--\r\nepilogue\r\n")


def test_nested_multipart_and_an_enclosed_message():
    inner = b"Subject: inner \xc3\xa9\r\n\r\ninner body \xc3\xa9\r\n"
    message = (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=outer\r\n"
        b"\r\n"
        b"--outer\r\n"
        b"Content-Type: multipart/alternative; boundary=inner\r\n"
        b"\r\n"
        b"--inner\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"\r\n"
        b"<p>\xc3\xa9</p>\r\n"
        b"--inner--\r\n"
        b"--outer\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + inner + b"--outer--\r\n"
    )
    out = downgrade_8bit(message)
    assert_7bit(out)
    alternative, enclosed = read(out).iter_parts()
    assert next(alternative.iter_parts()).get_content() == "<p>é</p>"
    assert enclosed["Content-Transfer-Encoding"] == "7bit"
    inner_message = enclosed.get_content()
    assert inner_message["Subject"] == "inner é"
    assert inner_message.get_content() == "inner body é"
    assert inner_message["MIME-Version"] == "1.0"


def test_digest_parts_default_to_enclosed_messages():
    message = (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/digest; boundary=d\r\n"
        b"\r\n"
        b"--d\r\n"
        b"\r\n"
        b"Subject: \xc3\xa9\r\n"
        b"\r\n"
        b"digest body \xc3\xa9\r\n"
        b"--d--\r\n"
    )
    out = downgrade_8bit(message)
    assert_7bit(out)
    enclosed = next(read(out).iter_parts()).get_content()
    assert enclosed["Subject"] == "é"
    assert enclosed.get_content() == "digest body é"


def test_encoded_parts_with_stray_8bit_bytes_are_encoded_again():
    message = (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"caf=C3=A9 and raw \xc3\xa9\r\n"
    )
    out = downgrade_8bit(message)
    assert_7bit(out)
    assert read(out).get_content() == "café and raw é\r\n"


def test_header_fields(tmp_path):
    message = (
        'From: "Müller, Jürgen" <j@example.com>\r\n'
        "To: Zoë <z@example.org>, plain@example.net (Büro Köln)\r\n"
        "Cc: Team Ünited: a@example.com, b@example.com;\r\n"
        "Subject: Re: Über den Wolken muss die Freiheit wohl grenzenlos sein, sagt man\r\n"
        "X-Mailer: Bäckerei 2.0\r\n"
        "\r\n"
        "body\r\n"
    ).encode()
    out = downgrade_8bit(message)
    assert_7bit(out)
    header_block = out.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 76 for line in header_block.split(b"\r\n"))
    reader = read(out)
    assert reader["From"].addresses[0].display_name == "Müller, Jürgen"
    assert reader["From"].addresses[0].addr_spec == "j@example.com"
    assert [a.display_name for a in reader["To"].addresses] == ["Zoë", ""]
    assert "Büro Köln" in str(email.header.make_header(email.header.decode_header(
        field_text(out, b"To"))))  # fmt: skip
    assert reader["Cc"].groups[0].display_name == "Team Ünited"
    assert (
        reader["Subject"] == "Re: Über den Wolken muss die Freiheit wohl grenzenlos sein, sagt man"
    )
    assert reader["X-Mailer"] == "Bäckerei 2.0"
    assert b"Subject: Re: =?utf-8?" in out  # the ASCII start stays readable
    assert reader.get_content() == "body\r\n"  # the 7-bit body is left alone
    assert b"Content-Transfer-Encoding" not in out


def field_text(message: bytes, name: bytes) -> str:
    for raw in email.message_from_bytes(message).raw_items():
        if raw[0].encode() == name:
            return str(raw[1])
    raise AssertionError(name)


@pytest.mark.parametrize(
    "field",
    [
        "From: jürgen@example.com\r\n",
        "To: Jürgen <jürgen@example.com>\r\n",
        "Cc: a@example.com, j\u00fcrgen@b\u00fccher.example\r\n",
    ],
)
def test_an_8bit_address_cannot_be_downgraded(field):
    message = (field + "Subject: x\r\n\r\nbody\r\n").encode()
    with pytest.raises(DowngradeError, match="SMTPUTF8"):
        downgrade_8bit(message)


def test_encode_field_keeps_ascii_around_the_8bit_stretch():
    field = "Subject: [list] Grüße from the team (weekly)\r\n".encode()
    encoded = encode_field(field)
    assert encoded.startswith(b"Subject: [list] =?utf-8?")
    assert encoded.endswith(b"?= from the team (weekly)\r\n")
    assert kernels.decode_words(encoded.split(b":", 1)[1].strip()).text == (
        "[list] Grüße from the team (weekly)"
    )


def test_too_deep_nesting_is_refused():
    message = b"MIME-Version: 1.0\r\n"
    for level in range(60):
        message += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
    message += b"Content-Type: text/plain\r\n\r\n\xc3\xa9\r\n"
    with pytest.raises(DowngradeError, match="nested"):
        downgrade_8bit(message)


@given(
    body=st.binary(max_size=3000),
    content_type=st.sampled_from([None, b"text/plain; charset=utf-8", b"application/pdf"]),
)
def test_round_trip_single_part(body, content_type):
    header = b"Subject: round trip\r\n"
    if content_type is not None:
        header += b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n"
    message = header + b"\r\n" + body
    out = downgrade_8bit(message)
    assert_7bit(out)
    new_body = body_of(out)
    if body.isascii():
        assert out == message
    elif b"Content-Transfer-Encoding: base64" in out:
        assert kernels.b64_decode(new_body) == body
    else:
        assert kernels.qp_decode(new_body) == body
        assert all(len(line) <= 76 for line in new_body.split(b"\r\n"))


@given(parts=st.lists(st.binary(max_size=400).filter(lambda b: b"--sep" not in b), max_size=5))
def test_round_trip_multipart(parts):
    message = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=sep\r\n\r\n"
    for part in parts:
        message += b"--sep\r\nContent-Type: application/octet-stream\r\n\r\n" + part + b"\r\n"
    message += b"--sep--\r\n"
    out = downgrade_8bit(message)
    assert_7bit(out)
    decoded = [p.get_payload(decode=True) for p in read(out).iter_parts()]
    assert decoded == parts


def test_contradicting_transfer_encodings_collapse_into_one():
    message = (
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b"Content-Type: text/plain; charset=us-ascii; format=flowed\r\n"
        b"\r\n"
        b"\xc3\xa9t\xc3\xa9\r\n"
    )
    out = downgrade_8bit(message)
    assert_7bit(out)
    assert out.count(b"Content-Transfer-Encoding") == 1
    # us-ascii was wrong for these bytes; the other parameter stays
    assert b"Content-Type: text/plain; format=flowed; charset=utf-8\r\n" in out
    assert read(out).get_content() == "été\r\n"


def test_a_parameter_field_we_cannot_fully_read_keeps_all_its_text():
    field = 'Content-Disposition: attachment; filename=r\u00e9sum\u00e9 final.pdf\r\n'.encode()
    encoded = encode_field(field)
    assert encoded.isascii()
    text = kernels.decode_words(encoded.split(b":", 1)[1].strip()).text
    assert text == "attachment; filename=résumé final.pdf"
