"""
The POP3 servers the benchmarks compare, each behind one small interface:
start(maildirRoot, users) -> a running server with port, cpuSeconds(),
rssKilobytes() and stop().
"""
