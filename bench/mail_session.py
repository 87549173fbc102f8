#!/usr/bin/env python3
"""One scripted mail session against given host:port endpoints, timed per protocol.

  POP3  USER/PASS/STAT/LIST/RETR of N messages/QUIT
  IMAP  LOGIN/SELECT INBOX/FETCH 1 (BODY.PEEK[])/LOGOUT
  SMTP  EHLO/MAIL/RCPT/DATA/QUIT of a one-paragraph message
  HTTP  GET of the ~6 KB page

Content is verified (sizes and SHA-256 against the peers' manifest and www
files; the SMTP message must land in the recipient's Maildir), so a broken
path fails instead of looking fast. Prints one JSON object on stdout; exits 1
if anything failed to verify.
"""

import argparse
import email.utils
import hashlib
import http.client
import imaplib
import json
import os
import poplib
import smtplib
import sys
import time
import uuid

TIMEOUT = 900  # seconds per socket operation; a 2,400 bit/s link is slow


class VerifyError(Exception):
    pass


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


def main():
    ap = argparse.ArgumentParser(description="Timed, verified mail session.")
    ap.add_argument("--pop3", required=True, metavar="HOST:PORT")
    ap.add_argument("--imap", required=True, metavar="HOST:PORT")
    ap.add_argument("--smtp", required=True, metavar="HOST:PORT")
    ap.add_argument("--http", required=True, metavar="HOST:PORT")
    ap.add_argument("--peers", required=True, help="$STRAW_STATE/peers (manifest, www, mail)")
    ap.add_argument("--messages", type=int, default=10, help="POP3 messages to RETR")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--password", default="straw-pass")
    ap.add_argument("--rcpt", default="bob@straw.test")
    ap.add_argument("--page", default="/page.html")
    a = ap.parse_args()

    manifest = load_manifest(a.peers, a.user)
    with open(os.path.join(a.peers, "www", a.page.lstrip("/")), "rb") as f:
        page = f.read()
    rcpt_user = a.rcpt.split("@")[0]
    maildir = os.path.join(a.peers, "mail", rcpt_user, "Maildir")

    out = {"seconds": {}, "bytes": {}, "ok": False}
    t0 = time.monotonic()
    try:
        t = time.monotonic()
        out["bytes"]["pop3"] = do_pop3(a.pop3, a.user, a.password, a.messages, manifest)
        out["seconds"]["pop3"] = time.monotonic() - t

        t = time.monotonic()
        out["bytes"]["imap"] = do_imap(a.imap, a.user, a.password, manifest)
        out["seconds"]["imap"] = time.monotonic() - t

        t = time.monotonic()
        out["bytes"]["smtp"], msgid = do_smtp(a.smtp, f"{a.user}@straw.test", a.rcpt, maildir)
        out["seconds"]["smtp"] = time.monotonic() - t

        t = time.monotonic()
        out["bytes"]["http"] = do_http(a.http, a.page, page)
        out["seconds"]["http"] = time.monotonic() - t

        out["seconds"]["total"] = time.monotonic() - t0
        # Outside the timing: delivery happens server-side, off the link.
        if not wait_delivered(maildir, msgid):
            raise VerifyError(f"smtp: message {msgid} not delivered to {maildir}")
        out["ok"] = True
    except (VerifyError, OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error,
            smtplib.SMTPException, http.client.HTTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    json.dump(out, sys.stdout)
    print()
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
