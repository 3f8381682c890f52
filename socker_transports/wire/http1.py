"""HTTP/1.1 heads as h11 reads and writes them: the line-limit guard, h11's grammar,
its Content-Length / Transfer-Encoding rules, and plain HTTP answers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_HEADERS_TOO_LARGE = 431
_URI_TOO_LONG = 414


#: How much of a request line is checked as it arrives (`_HeadGuard`): enough for
#: any method and the start of the target, so that bytes which cannot begin a
#: request (random bytes, a TLS ClientHello) are refused at once, without scanning
#: a long line again on every read.
_EARLY_CHECK = 64


class _HeadGuard:
    """Collects an HTTP head (request or response) line by line and enforces the
    line limits before wsproto/h11 sees it, so an oversize or trickling head never
    grows a buffer past (max_headers + 1) * max_line, and each byte is scanned once.

    For a request (`request=True`, a server) it also refuses at once (400), rather
    than waiting for a head that can never be valid: a start that cannot begin a
    request line, a complete first line that is not one, and a bare LF (socker
    takes only CRLF line ends: RFC 9112 2.2 allows refusing a lone LF)."""

    __slots__ = ("buffer", "lf_scan", "lines", "max_headers", "max_line", "pos", "request", "start")

    def __init__(self, max_line: int, max_headers: int, *, request: bool = False) -> None:
        self.buffer = bytearray()
        self.max_line = max_line
        self.max_headers = max_headers
        self.request = request
        self.start = 0  # where the current line starts
        self.pos = 0  # where to look for the next CRLF
        self.lf_scan = 0  # where to look for the next LF (request: bare LF check)
        self.lines = 0  # complete lines so far (request/status line + headers)

    def _bad_request_bytes(self) -> bool:
        """A request that can never be valid: a bare LF, or a first line that is not
        (the start of) a request line."""
        buffer = self.buffer
        at = buffer.find(b"\n", self.lf_scan)
        while at >= 0:
            if at == 0 or buffer[at - 1] != 0x0D:
                return True
            at = buffer.find(b"\n", at + 1)
        self.lf_scan = len(buffer)
        if self.lines:
            return False
        end = buffer.find(b"\r\n")
        if end >= 0:
            return _REQUEST_LINE.fullmatch(buffer, 0, end) is None
        end = len(buffer) - 1 if buffer[-1:] == b"\r" else len(buffer)
        # Every prefix of a request line's start is one too: at most _EARLY_CHECK
        # bytes are looked at, however long the line grows.
        return _REQUEST_LINE_PREFIX.fullmatch(buffer, 0, min(end, _EARLY_CHECK)) is None

    def _too_long(self) -> int:
        return _URI_TOO_LONG if self.lines == 0 else _HEADERS_TOO_LARGE

    def feed(self, data: bytes | bytearray) -> tuple[int, bytes | None, bytes]:
        """Returns (error status or 0, the complete head or None, bytes after it)."""
        buffer = self.buffer
        if not buffer and data[:2] != b"\r\n":
            # The common case: the whole head in the first read, within every limit.
            end = data.find(b"\r\n\r\n")
            if 0 < end <= self.max_line and data.count(b"\r\n", 0, end + 2) - 1 <= self.max_headers:
                return 0, bytes(data[: end + 4]), bytes(data[end + 4 :])
        buffer += data
        if self.request and self._bad_request_bytes():
            return 400, None, b""
        while True:
            end = buffer.find(b"\r\n", self.pos)
            if end < 0:
                if len(buffer) - self.start > self.max_line:
                    return self._too_long(), None, b""
                self.pos = max(self.start, len(buffer) - 1)  # a CR may end the buffer
                return 0, None, b""
            length = end - self.start
            if length > self.max_line:
                return self._too_long(), None, b""
            if length == 0:
                if self.lines == 0:
                    return 400, None, b""  # no request/status line
                head = bytes(buffer[: end + 2])
                rest = bytes(buffer[end + 2 :])
                self.buffer = bytearray()
                return 0, head, rest
            self.lines += 1
            if self.lines - 1 > self.max_headers:
                return _HEADERS_TOO_LARGE, None, b""
            self.start = self.pos = end + 2


# h11's grammar (h11/_abnf.py): every regex is used with fullmatch.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_HEADER_LINE = re.compile(b"(" + _TOKEN + b"):[ \t]*(" + _FIELD_VALUE + b")[ \t]*")
# The same over a block of CRLF-terminated header lines, in two C calls: what follows
# the colon is `OWS field-value OWS` exactly when it holds no NUL, CR, LF, VT or FF
# (every other byte is a field-vchar, a space or a tab); stripped, it is the value.
_LINE_REST = rb"[^\x00\r\n\x0b\x0c]*"
_HEADER_BLOCK = re.compile(b"(?:" + _TOKEN + b":" + _LINE_REST + b"\r\n)*")
_HEADER_PAIRS = re.compile(b"(" + _TOKEN + b"):(" + _LINE_REST + b")\r\n")
_REQUEST_LINE = re.compile(_TOKEN + rb" [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")
#: What a request line may start with (every prefix of `_REQUEST_LINE`).
_REQUEST_LINE_PREFIX = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]*"
    rb"|" + _TOKEN + rb" [\x21-\x7e]*"
    rb"|" + _TOKEN + rb" [\x21-\x7e]+ (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?"
)
_STATUS_LINE_101 = re.compile(rb"HTTP/[0-9]\.[0-9] 101(?: (?:[ \t]|[^\x00\s])*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_NAME = re.compile(_TOKEN)
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)
_CONTENT_LENGTH = re.compile(rb"[0-9]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_OBS_FOLD = re.compile(rb"[ \t]+")

#: h11 reports every malformed head as this (wsproto's RemoteProtocolError text).
_BAD_HTTP = "Bad HTTP message"


class _Refused(Exception):
    """The handshake is refused: `status` (0 for a client), the reason, and headers for
    the HTTP answer."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def _h11_head(head: bytes) -> tuple[bytes | None, bytes, int]:
    """The head as h11 reads it: (start line, or None when h11 finds none; the header
    lines, each ending with CRLF; where h11's head ends).

    A head from `_HeadGuard` ends with CRLF CRLF; h11 also takes a bare LF as a line
    end, so a head with one may end (for h11) before the guard's end."""
    if head.count(b"\n") == head.count(b"\r\n"):
        split = head.find(b"\r\n")
        return head[:split], head[split + 2 : -2], len(head)
    if head[:1] == b"\n":
        return None, b"", 0  # h11: no start line
    blank = _BLANK_LINE.search(head)
    assert blank is not None  # the guard's CRLF CRLF matches
    end = blank.end()
    lines = [line[:-1] if line[-1:] == b"\r" else line for line in head[:end].split(b"\n")]
    return lines[0], b"".join(line + b"\r\n" for line in lines[1:-2]), end


def _h11_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercased name, value) of each header line in `block`, validated as h11 reads
    them, Content-Length and Transfer-Encoding included (`_Refused(400, _BAD_HTTP)`)."""
    if _HEADER_BLOCK.fullmatch(block) is None:
        return _h11_folded_fields(block.split(b"\r\n")[:-1])
    fields = [(name.lower(), rest.strip(b" \t")) for name, rest in _HEADER_PAIRS.findall(block)]
    for name, _ in fields:
        if name == b"content-length" or name == b"transfer-encoding":
            _h11_normalize([(name, name, value) for name, value in fields])
            break
    return fields


def _h11_folded_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """`_h11_fields` for header lines with obsolete line folding or a bad line."""
    unfolded: list[bytes] = []
    for line in lines:
        fold = _OBS_FOLD.match(line)
        if fold is None:
            unfolded.append(line)
        elif not unfolded:
            raise _Refused(400, _BAD_HTTP)  # a continuation line first
        else:
            unfolded[-1] = unfolded[-1] + b" " + line[fold.end() :]
    fields = []
    for line in unfolded:
        found = _HEADER_LINE.fullmatch(line)
        if found is None:
            raise _Refused(400, _BAD_HTTP)
        fields.append((found[1].lower(), found[2]))
    _h11_normalize([(name, name, value) for name, value in fields])
    return fields


def _h11_normalize(
    items: Iterable[tuple[bytes, bytes, bytes]],
) -> list[tuple[bytes, bytes, bytes]]:
    """h11's Content-Length / Transfer-Encoding rules (`normalize_and_validate`) over
    (raw name, lowercased name, value): the headers as h11 keeps them, or
    `_Refused(400, _BAD_HTTP)`."""
    seen_length: bytes | None = None
    chunked = False
    kept = []
    for raw_name, name, value in items:
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                raise _Refused(400, _BAD_HTTP)
            value = lengths.pop()
            if _CONTENT_LENGTH.fullmatch(value) is None or len(value) > 20:
                raise _Refused(400, _BAD_HTTP)
            if seen_length is None:
                seen_length = value
            elif seen_length != value:
                raise _Refused(400, _BAD_HTTP)
            else:
                continue  # a repeat of the same length: h11 keeps one
        elif name == b"transfer-encoding":
            if chunked:
                raise _Refused(400, _BAD_HTTP)
            value = value.lower()
            if value != b"chunked":
                raise _Refused(400, _BAD_HTTP)
            chunked = True
        kept.append((raw_name, name, value))
    return kept


def _h11_write_headers(headers: Iterable[tuple[bytes, bytes]], *, request: bool = False) -> bytes:
    """Header lines and the blank line, as h11 validates and writes them (Host first);
    ValueError for what h11 refuses to send."""
    items = []
    framing = False
    for raw_name, value in headers:
        if _FIELD_NAME.fullmatch(raw_name) is None:
            raise ValueError(f"Illegal header name {raw_name!r}")
        if _FIELD_VALUE_RE.fullmatch(value) is None:
            raise ValueError(f"Illegal header value {value!r}")
        name = raw_name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            framing = True
        items.append((raw_name, name, value))
    if framing:
        try:
            items = _h11_normalize(items)
        except _Refused:
            raise ValueError("bad Content-Length or Transfer-Encoding header") from None
    hosts = [item for item in items if item[1] == b"host"]
    if request and len(hosts) > 1:
        raise ValueError("Found multiple Host: headers")
    out = [b"%s: %s\r\n" % (raw_name, value) for raw_name, _, value in hosts]
    out += [b"%s: %s\r\n" % (raw_name, value) for raw_name, name, value in items if name != b"host"]
    out.append(b"\r\n")
    return b"".join(out)


_STATUS_TEXT = {
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def _http_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    reason = _STATUS_TEXT.get(status, "Error" if status >= 400 else "OK")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
