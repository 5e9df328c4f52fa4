"""The client->server half of the PostgreSQL wire protocol, as much as the fault proxy needs to find a COMMIT.

It only reads message headers (and the text of Parse/Query messages); it never changes or holds a byte.
"""

from __future__ import annotations

import struct


class PgFrontendScanner:
    """Walks the client->server PostgreSQL stream: keeps the statement texts sent, finds simple-query COMMITs.

    Only headers are parsed; bodies are skipped by length, except Parse/Query bodies, which carry statement text.
    """

    _STARTUP_CODES = (80877103, 80877104)  # SSLRequest, GSSENCRequest: another startup message follows
    _MAX_TEXT = 1 << 20
    _MAX_TEXTS = 512

    def __init__(self) -> None:
        self._startup = True
        self._header = bytearray()
        self._kind = 0
        self._remaining = 0
        self._body: bytearray | None = None
        self._length = 0  # of the message being read, its type byte included
        self.texts: set[bytes] = set()

    def feed(self, data: bytes) -> list[int]:
        """Consume a chunk; return the end position in `data` of every COMMIT query message completed in it."""
        return [end for _, end in self.feed_commits(data)]

    def feed_commits(self, data: bytes) -> list[tuple[int, int]]:
        """Consume a chunk; (start, end) in `data` of every COMMIT query message completed in it. A start below 0
        means the message began in an earlier chunk (those bytes were already seen)."""
        commits: list[tuple[int, int]] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining == 0 and not self._in_body():
                need = (4 if self._startup else 5) - len(self._header)
                take = data[pos : pos + need]
                self._header += take
                pos += len(take)
                if len(self._header) < (4 if self._startup else 5):
                    break
                self._start_body()
                if self._remaining == 0 and self._finish():
                    commits.append((pos - self._length, pos))
                continue
            take = data[pos : pos + self._remaining]
            if self._body is not None and len(self._body) + len(take) <= self._MAX_TEXT:
                self._body += take
            else:
                self._body = None
            pos += len(take)
            self._remaining -= len(take)
            if self._remaining == 0 and self._finish():
                commits.append((pos - self._length, pos))
        return commits

    def _in_body(self) -> bool:
        return self._kind != 0

    def _start_body(self) -> None:
        if self._startup:
            (length,) = struct.unpack("!i", self._header)
            self._kind = -1
        else:
            self._kind = self._header[0]
            (length,) = struct.unpack("!i", self._header[1:])
        self._remaining = max(0, length - 4)
        self._length = length + (0 if self._startup else 1)
        keep = self._kind in (-1, ord("Q"), ord("P"))
        self._body = bytearray() if keep else None
        self._header.clear()

    def _finish(self) -> bool:
        """A message is complete; True when it was a COMMIT simple query."""
        kind, body = self._kind, bytes(self._body) if self._body is not None else None
        self._kind, self._body = 0, None
        if kind == -1:
            code = struct.unpack("!i", body[:4])[0] if body is not None and len(body) >= 4 else 0
            self._startup = code in self._STARTUP_CODES
            return False
        if body is None:
            return False
        if kind == ord("P"):
            text = body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else b""
        else:
            text = body.rstrip(b"\0")
        if len(self.texts) < self._MAX_TEXTS:
            self.texts.add(text)
        return kind == ord("Q") and text.strip().rstrip(b";").strip().upper() == b"COMMIT"

    def carried(self, marker: bytes) -> bool:
        return any(marker in text for text in self.texts)
