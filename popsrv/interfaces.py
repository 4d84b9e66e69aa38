"""
The contracts between popsrv's layers.

L{IMaildrop} is the one storage contract the POP3 protocol uses.  A
twisted.cred realm hands out an L{IMaildrop} as the avatar of a user who has
logged in; the protocol then locks it, takes a snapshot of its messages,
streams messages from it and, at QUIT, commits the deletions.  Message numbers
belong to the protocol: a backend only knows messages by their unique ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attr
from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # pragma: no cover
    from typing import AbstractSet, Sequence

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IConsumer

    from popsrv.messages import MessageInfo

__all__ = [
    "IKnownSchemes",
    "ILoginMethods",
    "IMaildrop",
    "IReloadable",
    "IScramCredentials",
    "IScramParameters",
    "ISecretSource",
    "IWholeMessages",
    "ScramParameters",
]


class IMaildrop(Interface):
    """
    One user's maildrop, as the POP3 protocol uses it for one session.

    The protocol calls, in order: L{lock}; L{listMessages}; any number of
    L{sendMessage}; then either L{commit} followed by L{release} (the client
    said QUIT) or only L{release} (the connection was lost, timed out or the
    client never finished).  Every method except L{release} may return a
    C{Deferred} or its result directly; a failure becomes an C{-ERR [SYS/TEMP]}
    reply for the client and a logged error for the operator.
    """

    name = Attribute(
        """
        A short text naming the maildrop's owner, for replies and logs
        (for example the login name).
        """
    )

    def lock() -> Deferred[None] | None:
        """
        Take the maildrop for this session, exclusively.

        The lock must exclude every other session, in this process or any
        other, until L{release}, and must not outlive the process holding it
        (a crashed server never leaves a maildrop locked).

        @raise popsrv.errors.MaildropLocked: (or fail with it) if another
            session holds the lock.
        """

    def listMessages() -> Deferred[Sequence[MessageInfo]] | Sequence[MessageInfo]:
        """
        Return a snapshot of the messages in the maildrop, in the order they
        are to be numbered (oldest first is what clients expect).

        Messages that arrive after the snapshot are not part of this session.
        Called once per session, after L{lock}.
        """

    def sendMessage(uid: str, consumer: IConsumer) -> Deferred[None]:
        """
        Write the stored octets of one message to C{consumer}.

        The implementation registers a producer (pull or push) with
        C{consumer} before writing anything, writes the message through it
        honouring backpressure, unregisters it, and then fires the returned
        C{Deferred} with C{None}.  The octets are the message as stored, with
        LF or CRLF line ends and without dot-stuffing; the protocol frames
        them.  If the consumer calls the producer's C{stopProducing} (TOP has
        what it needs, or the client went away), the implementation stops
        reading, releases what it holds, unregisters and fires with C{None}.

        @raise popsrv.errors.MessageVanished: (or fail with it, before
            registering a producer) if the message no longer exists.
        """

    def commit(deleted: AbstractSet[str], seen: AbstractSet[str]) -> Deferred[None] | None:
        """
        Apply the end of a session: remove the messages whose uids are in
        C{deleted}, and remember those in C{seen} as retrieved.

        Called at most once, in the UPDATE state, while the lock is held.  A
        removal must never leave a partial message behind; if it fails, raise
        (or fail with) an exception, and as far as the backend can arrange,
        remove nothing.
        """

    def release() -> None:
        """
        Give up the lock taken by L{lock}.  Called exactly once per session
        that called L{lock} successfully; must not fail.
        """


class IWholeMessages(Interface):
    """
    A maildrop that can also hand over a small message whole, read at once,
    so that the protocol sends it in one write: for a local store, reading
    a few kilobytes costs less than setting up a producer to stream them.
    Optional: any L{IMaildrop} works without it.
    """

    def readWhole(uid: str, limit: int) -> bytes | None:
        """
        Read one message's stored octets now, if there are at most C{limit}
        of them (as L{IMaildrop.sendMessage} would write them); return
        C{None} if there are more, or if reading it needs work that should
        not be done on the reactor's thread (the protocol then streams it
        with L{IMaildrop.sendMessage}).  Reading must cost about as much as
        opening a file and reading C{limit} octets from it, never more.

        @raise popsrv.errors.MessageVanished: if the message no longer
            exists.
        @raise popsrv.errors.MaildropError: if it cannot be read.
        """


class ISecretSource(Interface):
    """
    Where a credential backend finds each user's stored secret: a passwd
    file, a database, a directory service.

    A stored secret is a text C{{SCHEME}secret}, in the format Dovecot uses
    (for example C{{ARGON2ID}$argon2id$...}, C{{SHA512-CRYPT}$6$...} or
    C{{PLAIN}hunter2}); the checker built on a source verifies every kind of
    login against it, so a source only looks secrets up.
    """

    def secretFor(username: bytes) -> Deferred[str | None] | str | None:
        """
        Return the stored secret of C{username} (the login name as the client
        sent it, UTF-8), or C{None} if there is no such user.

        @raise popsrv.errors.CredentialsUnavailable: (or fail with it) if the
            source cannot answer now (a database is down or too slow); the
            client is told to try again later, never that its password is
            wrong.
        """


class IKnownSchemes(Interface):
    """
    An L{ISecretSource} that knows which schemes its secrets are stored
    with (a passwd file does; a database usually does not).
    """

    def storedSchemes() -> frozenset[str]:
        """
        The schemes (C{"PLAIN"}, C{"ARGON2ID"}, ...) of the secrets in force
        now.  It is asked at each connection: it must be cheap.
        """


class IReloadable(Interface):
    """
    Something that reads its configuration again on request (on SIGHUP):
    a credential source whose settings file may change.
    """

    def reload() -> None:
        """
        Read the configuration again; keep the one in force if the new one
        cannot be used (and log why).
        """


class ILoginMethods(Interface):
    """
    A credentials checker that can say which ways of logging in it can
    verify now, so that the server offers no other: a mechanism no stored
    secret can verify would make clients that choose it fail with the
    right password.
    """

    def loginMethods() -> frozenset[str] | None:
        """
        The ways of logging in that can succeed: some of C{"USER"}
        (USER/PASS), C{"APOP"} and the SASL mechanism names; C{None} if it
        cannot tell (offer everything its credential interfaces take).
        """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ScramParameters:
    """
    What a SCRAM server tells the client in its first message so that the
    client can derive the keys the server stored (RFC 5802, section 5.1).

    @ivar salt: the salt the keys were derived with.
    @ivar iterations: the PBKDF2 iteration count they were derived with.
    """

    salt: bytes
    iterations: int


class IScramParameters(Interface):
    """
    A twisted.cred checker that may hold SCRAM keys instead of passwords.

    A SCRAM exchange must send the stored salt and iteration count before
    the client proves anything, so the protocol asks the checker that will
    verify the exchange's credentials for them, between the client's first
    message and the server's.
    """

    def scramParameters(username: bytes, mechanism: str) -> Deferred[ScramParameters | None] | ScramParameters | None:
        """
        Return the salt and iteration count of the keys stored for
        C{username} (UTF-8) and C{mechanism} (such as C{"SCRAM-SHA-256"}),
        or C{None} if there are none: an unknown user, or one whose secret
        is of another kind.  The exchange then uses a salt of its own that
        does not tell the two cases apart.

        @raise popsrv.errors.CredentialsUnavailable: (or fail with it) if the
            secrets cannot be looked up now.
        """


class IScramCredentials(Interface):
    """
    The credentials of a SCRAM exchange, which a checker holding the user's
    stored keys verifies with L{checkKeys} (a checker holding the plaintext
    verifies them through C{IUsernameHashedPassword.checkPassword}).
    """

    username = Attribute("The login name, UTF-8 C{bytes}.")
    mechanism = Attribute("The mechanism's name, such as C{\"SCRAM-SHA-256\"}.")
    salt = Attribute("The salt the server sent, C{bytes}.")
    iterations = Attribute("The iteration count the server sent, an C{int}.")

    def checkKeys(storedKey: bytes, serverKey: bytes) -> bool:
        """
        Return whether the client's proof matches C{storedKey}; on success,
        make the server's final message with C{serverKey}.  The keys must be
        those derived for L{salt} and L{iterations}.
        """


from popsrv._deprecation import aliasMoved  # noqa: E402

aliasMoved(__name__, "popsrv.messages", ["MessageInfo", "MessageList"])
