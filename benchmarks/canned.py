"""
The canned server of the load generator's ceiling, in a process of its own:
`python canned.py MESSAGES SIZE` prints its port and serves for at most ten
minutes.
"""

import asyncio
import sys

import loadgen


async def main(messages: int, size: int) -> None:
    server = await loadgen.cannedServer(messages, size)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
