"""
C{python -m popsrv}: popsrv's command-line tools.  The server itself runs
under twistd (C{twistd popsrv}).
"""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: python -m popsrv check [-u USER] [-g GROUP] [the options of twistd popsrv]
       python -m popsrv passwd add|set|del|list FILE [USER]

  check    check a configuration without serving it (python -m popsrv check --help)
  passwd   manage the users of a passwd file (twistd popsrv --auth passwd-file:FILE)

The server runs with 'twistd popsrv' (see 'twistd popsrv --help').
"""


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run the tool named by the first argument; return the exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        from popsrv.app.check import main as check

        return check(argv[1:])
    if argv and argv[0] == "passwd":
        from popsrv.auth.passwdtool import main as passwd

        return passwd(argv[1:])
    sys.stderr.write(USAGE)
    return 0 if argv and argv[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
