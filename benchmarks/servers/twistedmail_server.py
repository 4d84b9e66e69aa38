"""
Twisted's own POP3 server (L{twisted.mail.pop3.POP3}) over Maildirs, for the
benchmarks: the protocol class is used as shipped; only the mailbox is ours.

    python twistedmail_server.py --root DIR --passwd FILE --port 0 [--nodelay]

Users come from FILE (lines C{user:password}); user C{u}'s Maildir is
C{DIR/u}. The server listens on 127.0.0.1 only and prints one line,
C{listening on 127.0.0.1:PORT}, once it does. SIGTERM stops it.

Why a mailbox of our own: Twisted's L{twisted.mail.maildir.MaildirMailbox}
does not work on Python 3 (it opens messages in text mode, so RETR hands
C{str} chunks to a C{bytes} transform and fails), reports file sizes where
POP3 wants the size with CRLF line ends, and moves a message to C{.Trash} at
DELE, so a dropped connection still loses it. L{MaildirMailbox} below fixes
exactly that and otherwise keeps the stock behaviour:

    - the message list is snapshotted at login (the stock class lists C{cur/}
      and C{new/} in its constructor; we first move C{new/} into C{cur/},
      as POP3 servers do), sorted by file name;
    - the stock class C{stat}s a message at every C{listMessages} call
      (STAT, LIST, UIDL, and each RETR and TOP ask for it), and so do we;
      its size is the file size, wrong for LF files, so we also measure
      the POP3 size (reading the file) once per session and reuse it;
    - messages are handed to the protocol with LF line ends (stored CRLF
      becomes LF), as the stock class's text-mode file does, because
      L{POP3.transformChunk} turns every LF into CRLF; a CR that is not
      followed by LF stays line content (text mode would make it a line
      end);
    - all file work runs on the reactor thread, and the maildrop is not
      locked, like the stock class.

Deletion happens at C{sync} (QUIT) by unlinking; the UIDL of a message is
its Maildir base name (the name before C{:}).

What twisted.mail.pop3 itself does wrong, left as it is (the mailbox does
not work around the protocol class):
    - dot-stuffing is done per 16 KiB chunk by C{chunk.replace(b"\\r\\n.",
      ...)}, so a first line starting with "." and a "." line that starts a
      chunk are sent unstuffed (a strict client removes that dot, and such
      a line that is just "." ends the reply early);
    - an empty message is sent as one empty line (a message without a
      final line end gets a CRLF, as it should): the sizes here count that
      CRLF, so LIST always matches what RETR sends;
    - STAT, LIST and UIDL still count and list messages deleted in the
      session (with size 0), and a size of 0 means "deleted" to it;
    - TOP drops an unterminated last line;
    - a DELE with a non-numeric argument drops the connection (its error
      handler joins C{str} exception arguments as C{bytes}).
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import protocol
from twisted.mail import pop3
from twisted.python import log
from zope.interface import implementer

_MEASURE_CHUNK = 2**16


class LineEndReader:
    """
    A binary file read with its CRLF line ends turned into LF, the input that
    L{pop3.POP3.transformChunk} expects; closes the file at its end.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")
        self._carry = b""

    def read(self, size: int = -1) -> bytes:
        """
        Return up to about C{size} octets (fewer when CRLFs shrink), or
        C{b""} only at the end of the file.
        """
        while self._file is not None and size != 0:
            chunk = self._file.read(size)
            data, self._carry = self._carry + chunk, b""
            if not chunk:
                self.close()
                return data
            if data.endswith(b"\r"):
                # An LF may follow in the next chunk: hold the CR back.
                data, self._carry = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n")
            if data:
                return data
        return b""

    def close(self) -> None:
        """
        Close the file.
        """
        if self._file is not None:
            self._file.close()
            self._file = None


def popSize(path: str) -> int:
    """
    Return the octets twisted.mail.pop3 sends for a stored message, without
    dot-stuffing: every line end becomes CRLF, and a CRLF is added after an
    unterminated (or empty) last line, see L{pop3.POP3.finishedFileTransfer}.
    """
    reader = LineEndReader(path)
    size = 0
    last = b""
    while chunk := reader.read(_MEASURE_CHUNK):
        size += len(chunk) + chunk.count(b"\n")
        last = chunk[-1:]
    return size if last == b"\n" else size + 2


@implementer(pop3.IMailbox)
class MaildirMailbox:
    """
    One POP3 session's view of a Maildir: new mail moved to C{cur/} at
    login, deletions applied at C{sync}.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        cur = os.path.join(path, "cur")
        new = os.path.join(path, "new")
        for sub in (cur, new, os.path.join(path, "tmp")):
            os.makedirs(sub, mode=0o700, exist_ok=True)
        for name in os.listdir(new):
            if not name.startswith("."):
                info = "" if ":" in name else ":2,"
                os.rename(os.path.join(new, name), os.path.join(cur, name + info))
        self.paths = [os.path.join(cur, name) for name in sorted(os.listdir(cur)) if not name.startswith(".")]
        self.deleted: set[int] = set()
        self._sizes: dict[int, int] = {}

    def _check(self, i: int) -> str:
        """
        Return the path of message C{i} (0-based), or raise L{ValueError}.
        """
        if not 0 <= i < len(self.paths):
            raise ValueError(b"no such message")
        return self.paths[i]

    def _size(self, i: int) -> int:
        """
        The POP3 size of message C{i}; 0 if it is deleted or has vanished.
        """
        if i in self.deleted:
            return 0
        try:
            os.stat(self.paths[i])
            if i not in self._sizes:
                self._sizes[i] = popSize(self.paths[i])
            return self._sizes[i]
        except FileNotFoundError:
            return 0

    def listMessages(self, i: int | None = None):
        """
        Return the POP3 size of message C{i}, or the list of all sizes; 0
        stands for a deleted message.
        """
        if i is None:
            return [self._size(n) for n in range(len(self.paths))]
        self._check(i)
        return self._size(i)

    def getMessage(self, i: int) -> LineEndReader:
        """
        Return message C{i} as a file with LF line ends.
        """
        path = self._check(i)
        if i in self.deleted:
            raise ValueError(b"message deleted")
        return LineEndReader(path)

    def getUidl(self, i: int) -> bytes:
        """
        Return the unique id of message C{i}: its Maildir base name.
        """
        return os.path.basename(self._check(i)).partition(":")[0].encode("utf-8", "surrogateescape")

    def deleteMessage(self, i: int) -> None:
        """
        Mark message C{i} for deletion at L{sync}.
        """
        self._check(i)
        if i in self.deleted:
            raise ValueError(b"message already deleted")
        self.deleted.add(i)

    def undeleteMessages(self) -> None:
        """
        Unmark every message marked for deletion.
        """
        self.deleted.clear()

    def sync(self) -> None:
        """
        Unlink the messages marked for deletion (at QUIT).
        """
        for i in sorted(self.deleted):
            try:
                os.unlink(self.paths[i])
            except FileNotFoundError:
                pass


@implementer(IRealm)
class MaildirRealm:
    """
    Gives each authenticated user the Maildir named after them under a root.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def requestAvatar(self, avatarId, mind, *interfaces):
        """
        Return an L{pop3.IMailbox} on the user's Maildir.
        """
        if pop3.IMailbox not in interfaces:
            raise NotImplementedError("only IMailbox is supported")
        user = avatarId.decode("utf-8", "surrogateescape")
        return pop3.IMailbox, MaildirMailbox(os.path.join(self.root, user)), lambda: None


class NoDelayPOP3(pop3.POP3):
    """
    L{pop3.POP3} with TCP_NODELAY set on its connection.
    """

    def connectionMade(self) -> None:
        """
        Disable Nagle's algorithm, then greet as usual.
        """
        self.transport.setTcpNoDelay(True)
        super().connectionMade()


class POP3Factory(protocol.ServerFactory):
    """
    Builds POP3 protocols that authenticate against a portal.
    """

    noisy = False  # no log line per connection

    def __init__(self, portal: Portal, nodelay: bool) -> None:
        self.portal = portal
        self.protocol = NoDelayPOP3 if nodelay else pop3.POP3

    def buildProtocol(self, addr):
        """
        Build a protocol and give it the portal.
        """
        p = super().buildProtocol(addr)
        p.portal = self.portal
        return p


def readUsers(path: str) -> InMemoryUsernamePasswordDatabaseDontUse:
    """
    Return a checker for the C{user:password} lines of a file (bytes names
    and passwords, as twisted.mail.pop3 passes bytes).
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line and not line.startswith(b"#"):
                user, _, password = line.partition(b":")
                checker.addUser(user, password)
    return checker


def main(argv=None) -> None:
    """
    Serve until SIGTERM.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="directory of the users' Maildirs")
    parser.add_argument("--passwd", required=True, help="file of user:password lines")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--nodelay", action="store_true", help="set TCP_NODELAY on each connection")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    log.startLogging(sys.stderr, setStdout=False)
    portal = Portal(MaildirRealm(os.path.abspath(args.root)), [readUsers(args.passwd)])
    port = reactor.listenTCP(args.port, POP3Factory(portal, args.nodelay), interface="127.0.0.1")
    address = port.getHost()
    print(f"listening on {address.host}:{address.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
