#!/usr/bin/env python3
"""One scripted mail session against given host:port endpoints, timed per protocol.

  POP3  USER/PASS/STAT/LIST/RETR of N messages/QUIT
  IMAP  LOGIN/SELECT INBOX/FETCH 1 (BODY.PEEK[])/LOGOUT
  SMTP  EHLO/MAIL/RCPT/DATA/QUIT of a one-paragraph message
  HTTP  GET of the ~6 KB page

Content is verified (sizes and SHA-256 against the peers' manifest and www
files; the SMTP message must land in the recipient's Maildir), so a broken
path fails instead of looking fast. Per protocol it reports seconds, payload
bytes and client turns: reads that had to wait for the other end after the
client connected or wrote (each one crosses the link unless a proxy answers
locally). `--signal PID,...` sends SIGUSR1 to those PIDs (linksims: a stats
line each) after every protocol, so link figures can be split per protocol.

`--warm` instead connects once per mail service (greeting, capabilities,
quit), as a proxy that has been running a while would have seen.

`--ttfb` instead logs in as --ttfb-user, sends RETR of --ttfb-message (a big
one), times the +OK line and the first body byte, checks the body's first
line against the Maildir file, and closes mid-message; then a short POP3
session (login, STAT, QUIT) checks that the path recovered.

Prints one JSON object on stdout; exits 1 if anything failed to verify.
"""

import argparse
import email.utils
import hashlib
import http.client
import imaplib
import json
import os
import poplib
import signal
import smtplib
import socket
import sys
import time
import uuid

TIMEOUT = 900  # seconds per socket operation; a 2,400 bit/s link is slow


class VerifyError(Exception):
    pass


class Turns:
    """Counts client turns: a read that returns data after a connect or a
    write, i.e. the client waited for the far end."""
    n = 0
    pending = False

    @classmethod
    def take(cls):
        n, cls.n = cls.n, 0
        return n


T0 = time.monotonic()


def trace(what):
    """A timeline of the client's turns on stderr (the bench's session log)."""
    print(f"{time.monotonic() - T0:9.3f} {what}", file=sys.stderr, flush=True)


def show(data):
    line = bytes(data[:40]).split(b"\r\n")[0]
    return repr(b"PASS ***" if line.upper().startswith(b"PASS ") else line)


class CountingSocket(socket.socket):
    # poplib, imaplib, smtplib and http.client all write with sendall and
    # read through makefile(), whose SocketIO calls recv_into.
    def sendall(self, data, *args):
        Turns.pending = True
        trace(f"> {show(data)} ({len(data)} B)")
        return super().sendall(data, *args)

    def send(self, data, *args):
        Turns.pending = True
        trace(f"> {show(data)} ({len(data)} B)")
        return super().send(data, *args)

    def _got(self, data):
        if data and Turns.pending:
            Turns.n += 1
            Turns.pending = False
            trace(f"< {show(data)}")

    def recv_into(self, buf, *args):
        n = super().recv_into(buf, *args)
        self._got(memoryview(buf)[:n])
        return n

    def recv(self, *args):
        data = super().recv(*args)
        self._got(data)
        return data


def counting_create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT,
                               source_address=None, **_kw):
    host, port = address
    err = None
    for af, kind, proto, _, sa in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        s = CountingSocket(af, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                s.settimeout(timeout)
            if source_address:
                s.bind(source_address)
            s.connect(sa)
            Turns.pending = True  # the greeting is a wait too
            trace(f"connected to {host}:{port}")
            return s
        except OSError as e:
            err = e
            s.close()
    raise err or OSError(f"cannot resolve {host}")


def install():
    """Count turns on every connection the mail libraries open (they look
    socket.create_connection up at call time)."""
    socket.create_connection = counting_create_connection


def hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def load_manifest(peers, user):
    """uid -> (size, sha256) of the user's seeded messages."""
    out = {}
    with open(os.path.join(peers, "manifest.tsv")) as f:
        cols = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(cols, line.rstrip("\n").split("\t")))
            if row["user"] == user:
                out[int(row["uid"])] = (int(row["size"]), row["sha256"])
    if not out:
        raise VerifyError(f"manifest has no messages for {user}")
    return out


def check(what, data, want):
    size, sha = want
    got = hashlib.sha256(data).hexdigest()
    if len(data) != size or got != sha:
        raise VerifyError(f"{what}: got {len(data)} bytes sha256 {got[:12]}, "
                          f"want {size} bytes sha256 {sha[:12]}")


def do_pop3(addr, user, password, n, manifest):
    host, port = hostport(addr)
    p = poplib.POP3(host, port, timeout=TIMEOUT)
    p.user(user)
    p.pass_(password)
    count, _ = p.stat()
    _, listing, _ = p.list()
    if count < n or len(listing) != count:
        raise VerifyError(f"pop3: STAT says {count}, LIST has {len(listing)}, need {n}")
    total = 0
    for i in range(1, n + 1):
        _, lines, _ = p.retr(i)
        data = b"".join(line + b"\r\n" for line in lines)  # poplib un-dot-stuffs
        check(f"pop3 RETR {i}", data, manifest[i])
        total += len(data)
    p.quit()
    return total


def do_imap(addr, user, password, manifest):
    host, port = hostport(addr)
    m = imaplib.IMAP4(host, port, timeout=TIMEOUT)
    m.login(user, password)
    typ, _ = m.select("INBOX")
    if typ != "OK":
        raise VerifyError(f"imap: SELECT INBOX -> {typ}")
    typ, resp = m.fetch("1", "(BODY.PEEK[])")
    if typ != "OK" or not resp or not isinstance(resp[0], tuple):
        raise VerifyError(f"imap: FETCH 1 -> {typ} {resp!r:.200}")
    data = resp[0][1]
    check("imap FETCH 1", data, manifest[1])
    m.logout()
    return len(data)


PARAGRAPH = (
    "Hello Bob, the supply run reached the northern camp this morning. The "
    "generator is running again after we replaced the fuel filter, and the "
    "weather station is logging normally. We expect to cross the ridge on "
    "Thursday if the wind drops below forty knots; otherwise we will wait at "
    "the hut. Please forward the updated forecast and the tide tables for next "
    "week when the link allows. All well here. Alice"
)


def do_smtp(addr, sender, rcpt, maildir):
    host, port = hostport(addr)
    msgid = f"<{uuid.uuid4().hex}@straw.test>"
    msg = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: field report\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {msgid}\r\n\r\n{PARAGRAPH}\r\n"
    )
    # local_hostname avoids getfqdn(), which may stall on a machine without DNS.
    s = smtplib.SMTP(host, port, local_hostname="client.straw.test", timeout=TIMEOUT)
    code, _ = s.ehlo()
    if code != 250:
        raise VerifyError(f"smtp: EHLO -> {code}")
    refused = s.sendmail(sender, [rcpt], msg)
    if refused:
        raise VerifyError(f"smtp: refused {refused}")
    s.quit()
    return len(msg), msgid


def wait_delivered(maildir, msgid, timeout=20.0):
    """True once a file containing Message-ID msgid is in maildir/new or cur."""
    needle = msgid.encode()
    deadline = time.monotonic() + timeout
    while True:
        for sub in ("new", "cur"):
            d = os.path.join(maildir, sub)
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    with open(os.path.join(d, name), "rb") as f:
                        if needle in f.read():
                            return True
                except OSError:
                    pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def do_http(addr, path, want):
    host, port = hostport(addr)
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    c.request("GET", path, headers={"Connection": "close", "User-Agent": "straw-bench"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise VerifyError(f"http: GET {path} -> {r.status}")
    if body != want:
        raise VerifyError(f"http: GET {path}: got {len(body)} bytes, want {len(want)} (content differs)")
    return len(body)


def first_line_of(peers, user, uid):
    """First line of the user's seeded message uid, from its Maildir file."""
    with open(os.path.join(peers, "manifest.tsv")) as f:
        cols = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(cols, line.rstrip("\n").split("\t")))
            if row["user"] == user and int(row["uid"]) == uid:
                d = os.path.join(peers, row["dir"])
                for sub in (d, os.path.join(os.path.dirname(d), "new"),
                            os.path.join(os.path.dirname(d), "cur")):
                    for name in sorted(os.listdir(sub)) if os.path.isdir(sub) else []:
                        if name.startswith(row["base"]):
                            with open(os.path.join(sub, name), "rb") as m:
                                return m.readline().rstrip(b"\r\n"), int(row["size"])
    raise VerifyError(f"manifest/Maildir has no message {uid} of {user}")


def recv_line(sock, buf):
    """(line without CRLF, rest of buf); reads until a LF arrives."""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise VerifyError(f"connection closed mid-line after {buf[:80]!r}")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line.rstrip(b"\r"), rest


def pop3_cmd(sock, buf, cmd):
    sock.sendall(cmd + b"\r\n")
    line, buf = recv_line(sock, buf)
    if not line.startswith(b"+OK"):
        raise VerifyError(f"pop3 {cmd.split()[0].decode()}: {line[:80]!r}")
    return line, buf


def do_ttfb(addr, user, password, uid, first_line, size):
    """RETR of a big message: seconds from sending RETR to the +OK line and
    to the first body byte; then close mid-message (the rest would take
    minutes at 2,400 bit/s)."""
    host, port = hostport(addr)
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        buf = b""
        line, buf = recv_line(sock, buf)
        if not line.startswith(b"+OK"):
            raise VerifyError(f"pop3 greeting: {line[:80]!r}")
        _, buf = pop3_cmd(sock, buf, b"USER " + user.encode())
        _, buf = pop3_cmd(sock, buf, b"PASS " + password.encode())
        t = time.monotonic()
        sock.sendall(b"RETR %d\r\n" % uid)
        line, buf = recv_line(sock, buf)
        t_ok = time.monotonic() - t
        if not line.startswith(b"+OK"):
            raise VerifyError(f"pop3 RETR {uid}: {line[:80]!r}")
        while not buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise VerifyError(f"pop3 RETR {uid}: closed before the body")
            buf = chunk
        t_first = time.monotonic() - t
        body1, buf = recv_line(sock, buf)
        t_line = time.monotonic() - t
        if body1.startswith(b".."):
            body1 = body1[1:]
        if body1 != first_line:
            raise VerifyError(f"pop3 RETR {uid}: body starts {body1[:60]!r}, want {first_line[:60]!r}")
        got = len(buf) + len(body1) + 2
    finally:
        sock.close()  # mid-message, on purpose
    return {"ok_seconds": t_ok, "first_byte_seconds": t_first, "first_line_seconds": t_line,
            "message_size": size, "read_bytes": got}


def do_pop3_stat(addr, user, password, timeout):
    host, port = hostport(addr)
    p = poplib.POP3(host, port, timeout=timeout)
    p.user(user)
    p.pass_(password)
    count, _ = p.stat()
    p.quit()
    return count


def signal_pids(pids):
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)


PHASES = ["pop3", "imap", "smtp", "http"]


def main():
    ap = argparse.ArgumentParser(description="Timed, verified mail session.")
    ap.add_argument("--pop3", required=True, metavar="HOST:PORT")
    ap.add_argument("--imap", metavar="HOST:PORT")
    ap.add_argument("--smtp", metavar="HOST:PORT")
    ap.add_argument("--http", metavar="HOST:PORT")
    ap.add_argument("--peers", required=True, help="$STRAW_STATE/peers (manifest, www, mail)")
    ap.add_argument("--messages", type=int, default=10, help="POP3 messages to RETR")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--password", default="straw-pass")
    ap.add_argument("--rcpt", default="bob@straw.test")
    ap.add_argument("--page", default="/page.html")
    ap.add_argument("--signal", default="", metavar="PID,...",
                    help="SIGUSR1 these PIDs after each protocol")
    ap.add_argument("--ttfb", action="store_true", help="time to first byte of a big RETR instead")
    ap.add_argument("--ttfb-user", default="bob")
    ap.add_argument("--ttfb-message", type=int, default=11)
    ap.add_argument("--recover-timeout", type=float, default=120.0,
                    help="--ttfb: seconds per socket operation of the recovery check")
    ap.add_argument("--warm", action="store_true",
                    help="warm-up instead: per service connect, greeting, CAPA/CAPABILITY/EHLO, quit")
    a = ap.parse_args()
    install()
    pids = [int(p) for p in a.signal.split(",") if p]
    if a.ttfb:
        return main_ttfb(a)
    if a.warm:
        return main_warm(a)
    if not (a.imap and a.smtp and a.http):
        ap.error("--imap, --smtp and --http are needed for the session")

    manifest = load_manifest(a.peers, a.user)
    with open(os.path.join(a.peers, "www", a.page.lstrip("/")), "rb") as f:
        page = f.read()
    rcpt_user = a.rcpt.split("@")[0]
    maildir = os.path.join(a.peers, "mail", rcpt_user, "Maildir")

    out = {"seconds": {}, "bytes": {}, "turns": {}, "ok": False}
    runs = {
        "pop3": lambda: do_pop3(a.pop3, a.user, a.password, a.messages, manifest),
        "imap": lambda: do_imap(a.imap, a.user, a.password, manifest),
        "smtp": lambda: do_smtp(a.smtp, f"{a.user}@straw.test", a.rcpt, maildir),
        "http": lambda: do_http(a.http, a.page, page),
    }
    msgid = None
    t0 = time.monotonic()
    try:
        for ph in PHASES:
            trace(f"== {ph}")
            Turns.take()
            t = time.monotonic()
            r = runs[ph]()
            out["seconds"][ph] = time.monotonic() - t
            out["turns"][ph] = Turns.take()
            signal_pids(pids)
            if ph == "smtp":
                r, msgid = r
            out["bytes"][ph] = r
        out["seconds"]["total"] = time.monotonic() - t0
        out["turns"]["total"] = sum(out["turns"][ph] for ph in PHASES)
        # Outside the timing: delivery happens server-side, off the link.
        if not wait_delivered(maildir, msgid):
            raise VerifyError(f"smtp: message {msgid} not delivered to {maildir}")
        out["ok"] = True
    except (VerifyError, OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error,
            smtplib.SMTPException, http.client.HTTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    json.dump(out, sys.stdout)
    print()
    return 0 if out["ok"] else 1


def main_warm(a):
    """What a proxy that has run for a while has seen: each service's
    greeting and capabilities (straw caches them; its codec is primed)."""
    out = {"ok": False}
    try:
        host, port = hostport(a.pop3)
        p = poplib.POP3(host, port, timeout=TIMEOUT)
        p.capa()
        p.quit()
        if a.imap:
            host, port = hostport(a.imap)
            imaplib.IMAP4(host, port, timeout=TIMEOUT).logout()  # CAPABILITY on connect
        if a.smtp:
            host, port = hostport(a.smtp)
            s = smtplib.SMTP(host, port, local_hostname="client.straw.test", timeout=TIMEOUT)
            s.ehlo()
            s.quit()
        out["ok"] = True
    except (OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error, smtplib.SMTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    json.dump(out, sys.stdout)
    print()
    return 0 if out["ok"] else 1


def main_ttfb(a):
    out = {"ok": False}
    try:
        first, size = first_line_of(a.peers, a.ttfb_user, a.ttfb_message)
        Turns.take()
        out.update(do_ttfb(a.pop3, a.ttfb_user, a.password, a.ttfb_message, first, size))
        out["turns"] = Turns.take()
        t = time.monotonic()
        try:
            count = do_pop3_stat(a.pop3, a.ttfb_user, a.password, a.recover_timeout)
            out["recover"] = {"ok": count >= a.ttfb_message, "seconds": time.monotonic() - t,
                              "turns": Turns.take(), "stat": count}
        except (OSError, EOFError, poplib.error_proto) as e:
            out["recover"] = {"ok": False, "seconds": time.monotonic() - t,
                              "error": f"{type(e).__name__}: {e}"}
        out["ok"] = True
    except (VerifyError, OSError, EOFError, poplib.error_proto) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    json.dump(out, sys.stdout)
    print()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
