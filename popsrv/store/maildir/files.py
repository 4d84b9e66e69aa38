"""
The files of one snapshot's messages in C{cur/}: each is found by the
name the snapshot saw, or, once another program renamed it (new flags), by
its new name, looked for in a listing of C{cur/}.  That listing is the one
step of unbounded cost; a caller on the reactor thread forbids it, and
does the work through its runner instead when it is needed.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Dict, Mapping, Optional

from popsrv.errors import MaildropError, MessageVanished
from popsrv.store.maildir.directory import Directory, NotAFile
from popsrv.store.maildir.listing import splitName

__all__ = ["MessageFiles", "NeedsListing"]


class NeedsListing(Exception):
    """
    Finding a message's file needs a listing of C{cur/}, which the caller
    forbade.
    """


class MessageFiles:
    """
    Where the messages of one snapshot are in C{cur/}, by uid.

    @param cur: C{cur/}, as opened at lock time.
    @param names: the file name of each message as the snapshot saw it
        (never changed here).
    @param account: called with the number of entries a listing is about
        to look at, every so often (to pace the work).

    @ivar names: C{names}.
    """

    def __init__(self, cur: Directory, names: Mapping[str, str], account: Callable[[int], None]) -> None:
        self._cur = cur
        self.names = names
        self._account = account
        # The new names of messages renamed since the snapshot.
        self._renamed: Dict[str, str] = {}

    def known(self, uid: str) -> Optional[str]:
        """
        The last name a message was known by, or C{None} if it is not in
        the snapshot.
        """
        return self._renamed.get(uid) or self.names.get(uid)

    def locate(self, uid: str, mayList: bool = True) -> str:
        """
        Look for the current file name of a message whose last known name
        is gone (another program changed its flags, and so its name), in a
        listing of C{cur/}.

        @raise KeyError: if the message is gone.
        @raise NeedsListing: if C{mayList} is false.
        """
        fileName = self.known(uid)
        if fileName is None:
            raise KeyError(uid)
        if not mayList:
            raise NeedsListing(uid)
        base, _ = splitName(fileName)
        names, _ = self._cur.listFiles(self._account)
        for candidate in names:
            if splitName(candidate)[0] == base:
                self._renamed[uid] = candidate
                return candidate
        raise KeyError(uid)

    def open(self, uid: str, fileName: Optional[str] = None) -> BinaryIO:
        """
        Open a message's file: by the name it was last known by, or by
        C{fileName}.

        @raise FileNotFoundError: if there is no file of that name.
        @raise MessageVanished: if the message is not in the snapshot, or
            its file is not a regular file (any more).
        @raise MaildropError: if the file cannot be opened.
        """
        fileName = fileName or self.known(uid)
        if fileName is None:
            raise MessageVanished(uid)
        try:
            return self._cur.openMessage(fileName)
        except NotAFile:
            raise MessageVanished(uid) from None
        except FileNotFoundError:
            raise
        except OSError as error:
            raise MaildropError(f"cannot read message {uid}: {error.strerror}") from None

    def read(self, uid: str, limit: int) -> Optional[bytes]:
        """
        Read a message's file whole by the name it was last known by, if it
        holds at most C{limit} octets; C{None} if it holds more, or if there
        is no file of that name (another program renamed it: finding it
        needs a listing).

        @raise MessageVanished: if the message is not in the snapshot, or
            its file is not a regular file (any more).
        @raise MaildropError: if the file cannot be read.
        """
        fileName = self.known(uid)
        if fileName is None:
            raise MessageVanished(uid)
        try:
            return self._cur.readWhole(fileName, limit)
        except NotAFile:
            raise MessageVanished(uid) from None
        except FileNotFoundError:
            return None
        except OSError as error:
            raise MaildropError(f"cannot read message {uid}: {error.strerror}") from None

    def _withFile(self, uid: str, act: Callable[[str], None], mayList: bool) -> None:
        """
        Call C{act} with a message's file name: the name it was last known
        by, or, if C{act} finds no file of that name, its new name (see
        L{locate}).  No name is looked up before C{act} uses it.

        @raise KeyError: if the message is gone.
        @raise NeedsListing: as L{locate} does.
        """
        fileName = self.known(uid)
        if fileName is None:
            raise KeyError(uid)
        try:
            act(fileName)
        except FileNotFoundError:
            act(self.locate(uid, mayList))

    def markSeen(self, uid: str, mayList: bool = True) -> None:
        """
        Add the Maildir "seen" flag to a message's name.

        @raise KeyError: if the message is gone.
        @raise NeedsListing: as L{locate} does.
        @raise OSError: if it cannot be renamed.
        """

        def addSeen(fileName: str) -> None:
            base, info = splitName(fileName)
            flags = info[2:] if info.startswith("2,") else ""
            if "S" in flags:
                return
            newName = f"{base}:2,{''.join(sorted(flags + 'S'))}"
            self._cur.rename(fileName, self._cur, newName)
            self._renamed[uid] = newName

        self._withFile(uid, addSeen, mayList)

    def unlink(self, uid: str, mayList: bool = True) -> None:
        """
        Remove one message, wherever its flags have put it; a message
        already gone is no error.

        @raise NeedsListing: as L{locate} does.
        @raise OSError: if it cannot be removed.
        """
        try:
            self._withFile(uid, self._cur.unlink, mayList)
        except (KeyError, FileNotFoundError):
            pass
