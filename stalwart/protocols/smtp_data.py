"""The SMTP/LMTP DATA body reader (RFC 5321 §4.1.1.4, §4.5.2), sans-IO, in bounded memory.

:class:`DataReader` takes the raw bytes after ``354`` as they come and finds the end (``CRLF . CRLF``
only: a bare-LF variant never ends the message, which closes the SMTP-smuggling hole). A small
message stays in memory and is unstuffed once at the end, exactly as cheaply as before; once more
than ``threshold`` bytes are pending, :meth:`DataReader.take` hands out the unstuffed part that is
safe to hand out, and the session writes it to a spool file through a pool job.

How chunks stay exact across reads: the buffer always starts with two bytes of context, the last
two raw bytes already handed out (at first the CRLF that ended the ``DATA`` line). A dot is removed
iff the two raw bytes before it are CRLF, a decision that needs only those two bytes, so unstuffing
``buffer[:q]`` with ``replace(CRLF ".", CRLF)`` and dropping the two context bytes is exact for any
cut ``q``. :meth:`take` keeps the last four bytes, since the terminator (five bytes) may have begun
in them; the terminator search therefore starts four bytes before the new data.

Size: the limit applies to the unstuffed body. While the raw bytes could still fit, nothing is
counted; past that, the bytes that are certainly body are counted exactly, and once over the limit
the reader only drains (keeping four bytes for the terminator) and the session answers ``552`` at
the end (STYLE.md: oversized input is drained and answered once).
"""
from __future__ import annotations

#: Bytes of a message kept in memory before the rest goes to a spool file. Nearly all mail is far
#: smaller (tens of KiB), so the common case does one write at the end, as before; 100 sessions
#: receiving huge messages hold about 100 MiB plus their read buffers instead of up to 25 GiB; and a
#: 1 MiB write amortises the pool round trip and the read pause of each spool job (20 for 20 MiB).
SPOOL_THRESHOLD = 1 << 20

_TERMINATOR = b"\r\n.\r\n"
#: :meth:`DataReader.feed`: the end is not here yet; and: nor is it, but ``threshold`` bytes are pending
NEED_MORE, SPOOL = -1, -2


class DataReader:
    """One DATA body. :meth:`feed` raw bytes until it returns an offset, :meth:`take` unstuffed
    chunks when :attr:`pending` grows, then :meth:`finish` for the rest of the body."""

    __slots__ = ("_buf", "_end", "max_size", "oversize", "size", "threshold")

    def __init__(self, max_size: int, threshold: int = SPOOL_THRESHOLD):
        self._buf = bytearray(b"\r\n")  # context: the CRLF that ended the DATA line starts line one
        self._end = -1
        self.size = 0  # unstuffed bytes handed out by take() and finish()
        self.oversize = False
        self.max_size = max_size
        self.threshold = threshold

    @property
    def pending(self) -> int:
        """Raw bytes held in memory."""
        return len(self._buf)

    def feed(self, buf: bytearray, start: int) -> int:
        """Take ``buf[start:]``. Returns the offset in ``buf`` just after the terminator (the bytes from
        there on are commands again); or, every byte taken, :data:`SPOOL` when ``threshold`` bytes
        are pending (call :meth:`take`), else :data:`NEED_MORE`."""
        data = self._buf
        prior = len(data)
        data += memoryview(buf)[start:]
        end = data.find(_TERMINATOR, max(0, prior - 4))
        if end >= 0:
            self._end = end
            return start + end + 5 - prior
        if self.size + len(data) - 2 > self.max_size and (self.oversize or self._certain() > self.max_size):
            self.oversize = True
            del data[:-4]  # drained; the tail may hold the start of the terminator
            return NEED_MORE
        return SPOOL if len(data) >= self.threshold and not self.oversize else NEED_MORE

    def _certain(self) -> int:
        """Unstuffed body bytes seen so far, not counting the last three raw bytes: they may be the
        "." CR of a terminator still arriving."""
        data = self._buf
        n = len(data) - 3
        if n <= 2:
            return self.size
        return self.size + n - 2 - data.count(b"\r\n.", 0, n)

    def take(self) -> bytearray:
        """The unstuffed bytes that can be handed out now (all but the last four raw bytes)."""
        data = self._buf
        q = len(data) - 2
        if q <= 2:
            return bytearray()  # only context and a possible terminator start
        out = data[:q].replace(b"\r\n.", b"\r\n")
        del out[:2]  # the context, handed out before
        self._buf = data[q - 2:]  # a new small buffer: the big one is freed
        self.size += len(out)
        if self.size > self.max_size:
            self.oversize = True
        return out

    def finish(self) -> bytes:
        """After :meth:`feed` found the end: the unstuffed rest of the body (b"" if oversize)."""
        if self.oversize:
            return b""
        # RFC 5321 §4.5.2: a leading "." on a line was added by the client; remove it.
        body = bytes(self._buf[:self._end + 2]).replace(b"\r\n.", b"\r\n")[2:]
        self.size += len(body)
        if self.size > self.max_size:
            self.oversize = True
            return b""
        return body


def spool_job(spool, received: bytes | None, chunk) -> None:
    """Blocking job: append ``chunk`` to the spool; the first one creates the file, which starts
    with the ``Received:`` header dated now (the core has no clock)."""
    from .mailcommon import rfc5322_date

    head = b"" if spool.opened or received is None else received + rfc5322_date().encode() + b"\r\n"
    spool.append(head, chunk)


def deliver_spool_job(store, spool, tail: bytes, extra: bytes, accounts: list[str]) -> dict:
    """Blocking job: the end of a spooled message; delivered to every account (see ``Spool.deliver``)."""
    return spool.deliver(store, tail, extra, accounts)
