#!/usr/bin/env python3
"""TLS in front of the peers' OpenSMTPD (started by scripts/peers).

Debian 12's OpenSMTPD 6.8 cannot do TLS with OpenSSL 3 (its privsep key
engine fails every handshake: "SSL routines::EVP lib", OpenSMTPD issues
#1171/#1239), so TLS is terminated here and the bytes relayed unchanged:
  --smtps     implicit TLS, then a plain relay to the backend
  --starttls  relays the backend's greeting and EHLO replies, adding
              "250-STARTTLS" before TLS; answers STARTTLS itself (220), does
              the handshake, then relays to a second backend connection (its
              greeting dropped: the client already has one), so that the
              client's second EHLO is the first OpenSMTPD sees there (it
              refuses another: "503 Already identified")
OpenSMTPD still does all of SMTP and delivery; it sees a loopback client.
"""

import argparse
import ctypes
import select
import socket
import ssl
import threading

MAX_LINE = 8192


def hostport(s: str) -> tuple[str, int]:
    h, _, p = s.rpartition(":")
    return h, int(p)


def read_line(sock, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise ValueError("line too long")
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    i = buf.index(b"\n") + 1
    line = bytes(buf[:i])
    del buf[:i]
    return line


def read_reply(sock, buf: bytearray) -> list[bytes]:
    lines = [read_line(sock, buf)]
    while lines[-1][3:4] == b"-":
        lines.append(read_line(sock, buf))
    return lines


def relay(a, b, a_buf: bytes = b"", b_buf: bytes = b"") -> None:
    """Copies bytes both ways until either side closes."""
    if a_buf:
        b.sendall(a_buf)
    if b_buf:
        a.sendall(b_buf)
    socks = {a: b, b: a}
    while True:
        # TLS may hold decrypted bytes that select() cannot see.
        ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select(list(socks), [], [])
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            socks[s].sendall(data)


def starttls(cli: socket.socket, ctx: ssl.SSLContext, backend: tuple[str, int]) -> None:
    be = socket.create_connection(backend, timeout=30)
    be.settimeout(None)
    be_buf, cli_buf = bytearray(), bytearray()
    try:
        cli.sendall(b"".join(read_reply(be, be_buf)))
        tls = False
        while True:
            line = read_line(cli, cli_buf)
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                be.sendall(line)
                reply = read_reply(be, be_buf)
                if not tls and reply[0].startswith(b"250"):
                    last = reply[-1]
                    reply[-1] = last[:3] + b"-" + last[4:]
                    reply.append(b"250 STARTTLS\r\n")
                cli.sendall(b"".join(reply))
            elif verb == b"STARTTLS" and not tls:
                if cli_buf:
                    # Pipelined after STARTTLS: RFC 3207 forbids it.
                    cli.sendall(b"501 5.5.1 no pipelining over STARTTLS\r\n")
                    return
                cli.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                cli = ctx.wrap_socket(cli, server_side=True)
                tls = True
                be.close()
                be = socket.create_connection(backend, timeout=30)
                be.settimeout(None)
                be_buf = bytearray()
                read_reply(be, be_buf)
            else:
                relay(cli, be, bytes(line) + bytes(cli_buf), bytes(be_buf))
                return
    finally:
        be.close()
        cli.close()


def smtps(cli: socket.socket, ctx: ssl.SSLContext, backend: tuple[str, int]) -> None:
    be = socket.create_connection(backend, timeout=30)
    be.settimeout(None)
    try:
        cli = ctx.wrap_socket(cli, server_side=True)
        relay(cli, be)
    finally:
        be.close()
        cli.close()


def serve(listen: tuple[str, int], handler, ctx, backend) -> None:
    srv = socket.create_server(listen, reuse_port=False)
    while True:
        cli, _ = srv.accept()

        def run(c=cli):
            try:
                handler(c, ctx, backend)
            except (OSError, ValueError, ConnectionError):
                pass  # a client going away or failing its handshake

        threading.Thread(target=run, daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--backend", required=True, type=hostport)
    ap.add_argument("--smtps", required=True, type=hostport)
    ap.add_argument("--starttls", required=True, type=hostport)
    a = ap.parse_args()
    # scripts/peers finds this process by name (comm).
    ctypes.CDLL(None).prctl(15, b"smtp-tls-front", 0, 0, 0)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    threading.Thread(target=serve, args=(a.smtps, smtps, ctx, a.backend), daemon=True).start()
    serve(a.starttls, starttls, ctx, a.backend)


if __name__ == "__main__":
    main()
