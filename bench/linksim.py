#!/usr/bin/env python3
"""Stand-in for `straw linksim`, used by scripts/bench only while the straw
binary has no `linksim` command. Same CLI, same model, same stats line:

  linksim.py --listen ADDR --to ADDR --rate BITS_PER_S --delay MS [--mss 536] [--overhead 40]

Per direction, data is cut into segments of at most MSS bytes; each occupies
that direction's link for (len + overhead) * 8 / rate seconds, one after
another (shared by all connections), and is delivered DELAY later (segments
pipeline). The source is read only as the link frees up, so a backlog stays
in the sender's buffers. On SIGUSR1 and on exit (SIGTERM/SIGINT) it prints:

  linksim up bytes=N segments=N link_secs=F down bytes=N segments=N link_secs=F
"""

import argparse
import asyncio
import signal
import socket
import sys

RCVBUF = 4096
READ_AHEAD = 0.002


class Dir:
    def __init__(self):
        self.free_at = 0.0
        self.bytes = 0
        self.segments = 0
        self.link_secs = 0.0


class Link:
    def __init__(self, rate, delay, mss, overhead):
        self.rate, self.delay, self.mss, self.overhead = rate, delay, mss, overhead
        self.dirs = (Dir(), Dir())  # up, down

    def line(self):
        u, d = self.dirs
        return (f"linksim up bytes={u.bytes} segments={u.segments} link_secs={u.link_secs:.6f} "
                f"down bytes={d.bytes} segments={d.segments} link_secs={d.link_secs:.6f}")


def split_addr(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


async def pump(link, d, reader, writer, not_before):
    """Move reader -> writer through direction d; half-closes on EOF."""
    loop = asyncio.get_running_loop()
    if not_before > loop.time():
        await asyncio.sleep(not_before - loop.time())
    q = asyncio.Queue()

    async def deliver():
        while True:
            at, data = await q.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(deliver())
    try:
        while True:
            wait = d.free_at - READ_AHEAD - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            data = await reader.read(link.mss)
            if not data:
                break
            now = loop.time()
            start = max(now, d.free_at)
            ser = (len(data) + link.overhead) * 8 / link.rate
            d.free_at = start + ser
            d.bytes += len(data)
            d.segments += 1
            d.link_secs += ser
            q.put_nowait((d.free_at + link.delay, data))
        # EOF follows the last segment.
        q.put_nowait((max(d.free_at, loop.time()) + link.delay, None))
        await task
    finally:
        task.cancel()


def reserve(link, d, loop):
    """A header-only segment (handshake): occupies the link, not counted."""
    d.free_at = max(loop.time(), d.free_at) + link.overhead * 8 / link.rate
    return d.free_at


async def sleep_until(loop, t):
    if t > loop.time():
        await asyncio.sleep(t - loop.time())


async def handle(link, to, reader, writer):
    loop = asyncio.get_running_loop()
    up, down = link.dirs
    # TCP handshake over the link, as straw linksim: SYN up, then dial;
    # SYN-ACK down before client data, final ACK up before server data.
    await sleep_until(loop, reserve(link, up, loop) + link.delay)
    try:
        host, port = to
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        ur, uw = await asyncio.open_connection(sock=sock, limit=link.mss)
    except OSError as e:
        print(f"linksim: connect {to}: {e}", file=sys.stderr)
        writer.close()
        return
    for w in (writer, uw):
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    synack_at = reserve(link, down, loop) + link.delay
    await sleep_until(loop, synack_at)
    ack_at = reserve(link, up, loop) + link.delay
    try:
        await asyncio.gather(pump(link, up, reader, uw, synack_at),
                             pump(link, down, ur, writer, ack_at))
    except (ConnectionError, OSError):
        pass
    finally:
        for w in (writer, uw):
            w.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--rate", type=int, default=2400)
    ap.add_argument("--delay", type=float, default=500, help="one-way delay, ms")
    ap.add_argument("--mss", type=int, default=536)
    ap.add_argument("--overhead", type=int, default=40)
    a = ap.parse_args()
    if a.rate < 1 or a.mss < 1:
        ap.error("rate and mss must be positive")
    link = Link(a.rate, a.delay / 1000.0, a.mss, a.overhead)
    to = split_addr(a.to)
    host, port = split_addr(a.listen)
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # inherited by accepted sockets
    lsock.bind((host, port))
    lsock.listen(64)
    # A small stream limit keeps the backlog in the sender's buffers, not ours.
    server = await asyncio.start_server(lambda r, w: handle(link, to, r, w), sock=lsock,
                                        limit=link.mss)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(link.line(), flush=True))
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    async with server:
        await done.wait()
    print(link.line(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
