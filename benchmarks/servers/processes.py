"""
CPU and memory accounting of a server's processes, from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["ProcessTree", "pssKilobytes"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def pssKilobytes(pids) -> int:
    """
    The proportional set size of processes (each page shared by N
    processes counted 1/N in each): what they use together.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _children(pid: int) -> list[int]:
    """
    The live descendants of a process.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[1]) == pid:
                    found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found + [grandchild for child in found for grandchild in _children(child)]


class ProcessTree:
    """
    A server process and its descendants.

    @ivar process: the server's main process.
    """

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def pids(self) -> list[int]:
        """
        The main process and its live descendants.
        """
        return [self.process.pid] + _children(self.process.pid)

    def cpuSeconds(self) -> float:
        """
        User plus system CPU of the processes, including the children they
        have reaped.
        """
        total = 0
        for index, pid in enumerate(self.pids()):
            try:
                fields = _stat(pid)
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
            if index == 0:
                total += int(fields[13]) + int(fields[14])
        return total / _TICKS

    def rssKilobytes(self) -> int:
        """
        Resident memory of the live processes.
        """
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except FileNotFoundError:
                continue
        return total

    def pssKilobytes(self) -> int:
        """
        Proportional set size of the live processes (see L{pssKilobytes}).
        """
        return pssKilobytes(self.pids())

    def stop(self) -> None:
        """
        SIGTERM the main process, wait, SIGKILL it if it will not stop.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
