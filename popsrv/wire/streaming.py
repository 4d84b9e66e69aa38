"""
A pull producer that streams a file object to a consumer in large chunks.

Storage backends use it to implement L{popsrv.interfaces.IMaildrop.sendMessage}:
the consumer asks for the next chunk only when it has room for it, so a
message of any size is sent with a bounded amount of memory.
"""

from __future__ import annotations

from typing import BinaryIO, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer
from zope.interface import implementer

__all__ = ["CHUNK_SIZE", "FileProducer", "sendFile"]

CHUNK_SIZE = 2**18


@implementer(IPullProducer)
class FileProducer:
    """
    Send a file object to a consumer one chunk per C{resumeProducing}.

    The end of the file is noticed in the same call that sends the last
    chunk, so a reply's terminator can follow the last chunk without a
    round trip through the reactor.

    @ivar done: fires with C{None} when the whole file was written or the
        consumer stopped the producer; the file is closed by then.
    """

    def __init__(self, fileObject: BinaryIO, consumer: IConsumer, chunkSize: int = CHUNK_SIZE) -> None:
        self._file: Optional[BinaryIO] = fileObject
        self._consumer = consumer
        self._chunkSize = chunkSize
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """
        Register with the consumer (which may pull right away) and return
        L{done}.
        """
        self._consumer.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        """
        Write the next chunk; finish if it was the last one.
        """
        if self._file is None:
            return
        try:
            chunk = self._file.read(self._chunkSize)
            atEnd = not chunk
            if 0 < len(chunk) < self._chunkSize:
                # A short read is the end of a regular file; make sure.
                more = self._file.read(self._chunkSize - len(chunk))
                chunk += more
                atEnd = not more
        except Exception as error:
            self._finish(error)
            return
        if chunk:
            self._consumer.write(chunk)
        if atEnd:
            self._finish(None)

    def stopProducing(self) -> None:
        """
        Stop early: close the file and fire L{done}.
        """
        self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        """
        Close the file, unregister, and fire L{done} once.
        """
        if self._file is None:
            return
        self._file.close()
        self._file = None
        self._consumer.unregisterProducer()
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)


def sendFile(fileObject: BinaryIO, consumer: IConsumer, chunkSize: int = CHUNK_SIZE) -> Deferred[None]:
    """
    Stream a file object to a consumer; the returned C{Deferred} fires when
    it has all been written (or the consumer stopped it).
    """
    return FileProducer(fileObject, consumer, chunkSize).start()
