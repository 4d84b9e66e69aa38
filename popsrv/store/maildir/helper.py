"""
The helper process of the Maildir store: work of many small steps on a big
Maildir, done apart from the server, on another core and without taking
the server's GIL.  The server runs it (see L{helperCommand}) as::

    python -I -S -X utf8 helper.py take NEW CUR PARENT
    python -I -S -X utf8 helper.py parse PARENT DIGEST
    python -I -S -X utf8 helper.py list CUR PARENT ENCODING ERRORS DIGEST

given the numbers of inherited directory descriptors and the server's
process id.  C{take} moves C{new/} into C{cur/}, each message with its
sizes (L{popsrv.store.maildir.intake.takeNew}).  C{parse} parses the
names of C{cur/} it reads on its standard input (each ended by a NUL),
and writes them parsed, with their order, on its standard output
(L{packParsed}; the server reads them with L{unpackParsed}).  C{list}
lists C{cur/} itself, decodes the names as the server's file system
encoding and its error handler (ENCODING, ERRORS) decode them, parses
every name and writes them, parsed and in POP3 order, with the names of
the entries that are not regular files (L{packListing},
L{unpackListing}).  DIGEST is the server's
L{popsrv.store.maildir.parsing.CODE_DIGEST}: a helper whose parsing code
differs (popsrv upgraded under a running server) refuses to parse.  Each stops, between two steps, once
the server is gone.  A helper that fails
exits with status 1 and one line on its standard error, and the server
does the work itself.

A helper starts in a few milliseconds: it loads only the modules of popsrv
that import nothing else of popsrv (L{intake}, L{parsing}, framing), and
none of their packages' C{__init__} (which would load the whole server).
"""

from __future__ import annotations

import array
import os
import struct
import sys
import types
from typing import TYPE_CHECKING, Callable, List, Sequence, Tuple

if TYPE_CHECKING:
    from popsrv.store.maildir.parsing import Columns

__all__ = [
    "LISTING_STEP", "PROBLEM_LENGTH", "SPLIT_STEP", "exitProblem", "helperCommand", "joined", "main", "packListing",
    "packParsed", "splitInSteps", "startProblem", "unpackListing", "unpackParsed",
]

# How many names of cur/ a helper parses at a time.
LISTING_STEP = 1024
# The parsed names a helper writes: a mark, then the number of parsed names
# and the length of each text part (uids, names without a size), then the
# times, sizes, order and seen flags of the parsed names, then the text
# parts, each of names ended by a NUL, in UTF-8 (bytes that are not, as
# the file system gave them).
_MARK = b"popsrv-parsed-1\n"
_COUNTS = struct.Struct("<3Q")
# A whole listing: another mark, the lengths of the parsed names (as
# packParsed writes them), of all the names and of the other entries, then
# those three parts.
_LISTING_MARK = b"popsrv-listing-2\n"
_PARTS = struct.Struct("<3Q")
# About how many octets of names are decoded at a time (between pauses).
SPLIT_STEP = 2**18
# Any name the server has (as its file system encoding decoded it) goes
# there and back unchanged: surrogates too, each as three octets.
_ENCODING = ("utf-8", "surrogatepass")


class _Orphaned(Exception):
    """
    The process that started the helper is gone.
    """


def helperCommand(*arguments: object) -> List[str]:
    """
    The command that runs a helper process with C{arguments}: this
    interpreter, isolated from the environment and without site packages
    (the helper needs neither), in UTF-8 mode (its file names, decoded
    with C{surrogateescape}, give back their octets exactly).
    """
    return [sys.executable, "-I", "-S", "-X", "utf8", os.path.abspath(__file__), *map(str, arguments)]


# How much of what a failed helper wrote is kept.
PROBLEM_LENGTH = 200


def startProblem(error: OSError) -> str:
    """
    Why a helper process could not start, in one line.
    """
    return f"cannot start {sys.executable}: {error.strerror or error}"[:PROBLEM_LENGTH]


def exitProblem(status: int, errors: bytes) -> str:
    """
    Why a helper process failed, in one line: the last line it wrote on
    its standard error, or its exit status.
    """
    lines = errors.decode("utf-8", "replace").strip().splitlines()
    return (lines[-1] if lines else f"exit status {status}")[:PROBLEM_LENGTH]


def joined(names: Sequence[str]) -> bytes:
    """
    Names, each ended by a NUL, encoded.
    """
    return ("\0".join(names) + "\0").encode(*_ENCODING) if names else b""


def _split(data: bytes) -> List[str]:
    """
    The names L{joined} made C{data} of.
    """
    return data.decode(*_ENCODING).split("\0")[:-1] if data else []


def splitInSteps(data: bytes, pause: Callable[[], None]) -> List[str]:
    """
    The names L{joined} made C{data} of, decoded a step of about
    L{SPLIT_STEP} octets at a time, pausing between steps (decoding
    megabytes of names at once would hold the GIL for milliseconds).
    """
    names: List[str] = []
    start = 0
    while start < len(data):
        end = data.find(b"\0", min(start + SPLIT_STEP, len(data)) - 1)
        end = len(data) if end < 0 else end + 1
        names += _split(data[start:end])
        start = end
        pause()
    return names


def packListing(
    parsed: Columns, order: Sequence[int], unsized: Sequence[str], names: Sequence[str], others: Sequence[str]
) -> bytes:
    """
    What a helper writes once it listed and parsed C{cur/} itself: the
    parsed names (see L{packParsed}; C{names} are all the names of regular
    files, in the order they were parsed), and the names of the entries
    that are not regular files.
    """
    parts = [packParsed(parsed, order, unsized), joined(names), joined(others)]
    return b"".join([_LISTING_MARK, _PARTS.pack(*map(len, parts)), *parts])


def unpackListing(
    data: bytes, columns: Columns, pause: Callable[[], None] = lambda: None
) -> Tuple[List[int], List[str], List[str]]:
    """
    Read what L{packListing} made into the empty C{columns}; return the
    POP3 order of the names parsed, the names that record no POP3 size,
    and those of the entries that are not regular files.

    @raise ValueError: C{data} is not what L{packListing} makes.
    """
    start = len(_LISTING_MARK) + _PARTS.size
    if not data.startswith(_LISTING_MARK) or len(data) < start:
        raise ValueError("not a listing")
    lengths = _PARTS.unpack_from(data, len(_LISTING_MARK))
    if len(data) != start + sum(lengths):
        raise ValueError("a listing of the wrong length")
    parts = []
    for length in lengths:
        parts.append(data[start:start + length])
        start += length
    parsed, names, others = parts
    for listed in (names, others):
        # Names of entries of one directory: no "/", none starting with a
        # dot (the listing leaves those out), so none is "." or "..".
        if b"/" in listed or listed.startswith(b".") or b"\0." in listed:
            raise ValueError("a listing of names that are not of entries of a directory")
        if listed and not listed.endswith(b"\0"):
            raise ValueError("a listing cut short")
    order, unsized = unpackParsed(parsed, splitInSteps(names, pause), columns, pause)
    return order, unsized, splitInSteps(others, pause)


def packParsed(parsed: Columns, order: Sequence[int], unsized: Sequence[str]) -> bytes:
    """
    What a helper writes once it parsed the names it was given: the times,
    sizes, seen flags and uids of those it parsed, with C{order} their
    indexes in the order of their times, and the names that record no POP3
    size (the others, in the order given, are the names parsed).
    """
    texts = [joined(parsed.uids), joined(unsized)]
    return b"".join(
        [_MARK, _COUNTS.pack(len(parsed), *map(len, texts)), parsed.times.tobytes(), parsed.sizes.tobytes(),
         array.array("q", order).tobytes(), bytes(parsed.seen), *texts]
    )


def unpackParsed(
    data: bytes, names: List[str], columns: Columns, pause: Callable[[], None] = lambda: None
) -> Tuple[List[int], List[str]]:
    """
    Read what L{packParsed} made of C{names} into the empty C{columns};
    return the order of the names parsed, and the names that record no
    POP3 size.

    @raise ValueError: C{data} is not what L{packParsed} makes, or not of
        these names.
    """
    if not data.startswith(_MARK) or len(data) < len(_MARK) + _COUNTS.size:
        raise ValueError("not what a helper writes")
    count, *lengths = _COUNTS.unpack_from(data, len(_MARK))
    offset = len(_MARK) + _COUNTS.size
    numbers = 8 * count
    if len(data) != offset + 3 * numbers + count + sum(lengths):
        raise ValueError("parsed names of the wrong length")
    times, sizes, order = array.array("q"), array.array("q"), array.array("q")
    if times.itemsize != 8:
        raise ValueError("no 64-bit integers")
    for numbered in (times, sizes, order):
        numbered.frombytes(data[offset:offset + numbers])
        offset += numbers
    seen = bytearray(data[offset:offset + count])
    offset += count
    texts = []
    for length in lengths:
        texts.append(splitInSteps(data[offset:offset + length], pause))
        offset += length
    uids, unsized = texts
    if unsized:
        left = set(unsized)
        if len(left) != len(unsized) or not left.issubset(names):
            raise ValueError("names without a size that were not given")
        names = [name for name in names if name not in left]
    if len(names) != count or len(uids) != count or max(seen, default=0) > 1 or min(sizes, default=0) < 0:
        raise ValueError("parsed names that do not add up")
    if count and (min(order) < 0 or max(order) >= count or len(set(order)) != count):
        raise ValueError("an order that is not one of the names")
    columns.times, columns.names, columns.uids, columns.sizes, columns.seen = times, names, uids, sizes, seen
    return order.tolist(), unsized


def _loadModules() -> None:
    """
    Make popsrv's modules that import nothing else of popsrv importable
    without running their packages' C{__init__}: each package is made an
    empty one whose modules are in its directory.  (Only for a helper
    process: the server has the real packages.)
    """
    maildir = os.path.dirname(os.path.abspath(__file__))
    top = os.path.dirname(os.path.dirname(maildir))
    for name in ("popsrv", "popsrv.store", "popsrv.store.maildir", "popsrv.wire"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(top, *name.split(".")[1:])]
        sys.modules[name] = package


def _checkingParent(parent: int, every: int) -> Callable[[int], None]:
    """
    A pacing function (see L{popsrv.store.maildir.intake.Account}) that
    raises L{_Orphaned} once the process C{parent} is gone, looking every
    C{every} units of work.
    """
    done = [0]

    def account(units: int) -> None:
        done[0] += units
        if done[0] >= every:
            done[0] = 0
            if os.getppid() != parent:
                raise _Orphaned()

    return account


def _take(newFd: int, curFd: int, parent: int) -> None:
    from popsrv.store.maildir import intake
    from popsrv.wire.framing import normalizedSize

    intake.takeNew(newFd, curFd, normalizedSize, _checkingParent(parent, intake.LIST_STEP * intake.NAME_WORK))


def _sameCode(digest: str) -> None:
    """
    Refuse to parse with code other than the server's.
    """
    from popsrv.store.maildir import parsing

    if digest != parsing.CODE_DIGEST:
        raise RuntimeError("the helper's code is not the server's (popsrv was upgraded?): restart popsrv")


def _parse(parent: int, digest: str) -> None:
    from popsrv.store.maildir import intake, parsing

    _sameCode(digest)

    with os.fdopen(sys.stdin.fileno(), "rb", closefd=False) as given:
        names = _split(given.read())
    account = _checkingParent(parent, intake.LIST_STEP * intake.NAME_WORK)
    columns = parsing.Columns()
    unsized = parsing.parseInSteps(names, columns, LISTING_STEP, lambda count: account(count * intake.NAME_WORK))
    del names
    times = columns.times.tolist()
    parsed = packParsed(columns, sorted(range(len(times)), key=times.__getitem__), unsized)
    with os.fdopen(sys.stdout.fileno(), "wb", closefd=False) as out:
        out.write(parsed)


def _list(curFd: int, parent: int, encoding: str, errors: str, digest: str) -> None:
    from popsrv.store.maildir import intake, parsing

    _sameCode(digest)

    account = _checkingParent(parent, intake.LIST_STEP * intake.NAME_WORK)
    names, others = intake.listDirectory(curFd, lambda count: account(count * intake.ENTRY_WORK))
    if (encoding, errors) != (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()):
        # Names as the server would read them, which parse as it parses them.
        names = [os.fsencode(name).decode(encoding, errors) for name in names]
        others = [os.fsencode(name).decode(encoding, errors) for name in others]
    columns = parsing.Columns()
    unsized = parsing.parseInSteps(names, columns, LISTING_STEP, lambda count: account(count * intake.NAME_WORK))
    times = columns.times.tolist()
    order = parsing.tiesBroken(sorted(range(len(times)), key=times.__getitem__), times, columns.names)
    listing = packListing(columns, order, unsized, names, others)
    with os.fdopen(sys.stdout.fileno(), "wb", closefd=False) as out:
        out.write(listing)


def main(argv: Sequence[str]) -> int:
    """
    Run as a helper process (see the module's description); return the
    exit status.
    """
    try:
        command, *rest = argv
        if command == "list" and len(rest) == 5:
            _list(int(rest[0]), int(rest[1]), rest[2], rest[3], rest[4])
        elif command == "parse" and len(rest) == 2:
            _parse(int(rest[0]), rest[1])
        elif command == "take" and len(rest) == 3:
            _take(*(int(number) for number in rest))
        else:
            raise ValueError(f"unknown command {' '.join(argv)!r}")
    except _Orphaned:
        return 0
    except Exception as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _loadModules()
    sys.exit(main(sys.argv[1:]))
