"""Round trips the mail program waits for, as counted by straw client.

Runs only through straw (STRAW_E2E_CLIENT_LOG names the client's log, where
each finished connection logs `connection done ... service=S link_waits=N`).
Each test warms the greeting/capability cache with one session, then counts
the second, as a user's second check of the day would.
"""

import imaplib
import os
import poplib
import re
import smtplib
import time
import unittest
from email.message import EmailMessage
from pathlib import Path

from straw_e2e import DOMAIN, IMAP, PASSWORD, POP3, SMTP, TIMEOUT, USER_A, USER_B, manifest

LOG = os.environ.get("STRAW_E2E_CLIENT_LOG")
DONE = re.compile(rb"connection done .*service=(\w+) link_waits=(\d+) local_replies=(\d+)")


def done_lines(service):
    return [
        (int(m.group(2)), int(m.group(3)))
        for m in DONE.finditer(Path(LOG).read_bytes())
        if m.group(1).decode() == service
    ]


def waits_of_next(service, run):
    """Runs one session and returns the link waits straw counted for it."""
    before = len(done_lines(service))
    run()
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = done_lines(service)
        if len(lines) > before:
            return lines[-1][0]
        time.sleep(0.1)
    raise AssertionError(f"straw logged no finished {service} connection")


def smtp_send():
    msg = EmailMessage()
    msg["From"] = f"{USER_A}@{DOMAIN}"
    msg["To"] = f"{USER_B}@{DOMAIN}"
    msg["Subject"] = "waits"
    msg.set_content("One paragraph of text.\n")
    with smtplib.SMTP(*SMTP, timeout=TIMEOUT) as s:
        s.send_message(msg)


def pop3_session():
    p = poplib.POP3(*POP3, timeout=TIMEOUT)
    p.user(USER_A)
    p.pass_(PASSWORD)
    p.stat()
    p.uidl()
    p.list()
    for i in range(1, 11):
        p.retr(i)
    p.quit()


def pop3_bench_session():
    """The benchmark's poplib session, every message checked byte-exact. With
    straw's RETR prefetch, RETR 2..10 are served from replies asked ahead, and
    RETR 11 (asked ahead with RETR 10) is cut short in-band by QUIT."""
    seeded = manifest(USER_A)
    p = poplib.POP3(*POP3, timeout=TIMEOUT)
    p.user(USER_A)
    p.pass_(PASSWORD)
    p.stat()
    p.list()
    for i in range(1, 11):
        resp, lines, _ = p.retr(i)
        assert resp.startswith(b"+OK"), resp
        got = b"".join(line + b"\r\n" for line in lines)
        assert got == seeded[i - 1].maildir_bytes(), f"message {i} differs"
    assert p.quit().startswith(b"+OK")


def imap_session():
    m = imaplib.IMAP4(*IMAP, timeout=TIMEOUT)
    m.login(USER_A, PASSWORD)
    m.select("INBOX")
    typ, _ = m.fetch("1:10", "(ENVELOPE)")
    assert typ == "OK"
    m.logout()


@unittest.skipUnless(LOG, "STRAW_E2E_CLIENT_LOG not set (only meaningful through straw)")
class WaitsTest(unittest.TestCase):
    def test_smtp_send_at_most_2_waits(self):
        waits_of_next("smtp", smtp_send)  # warms the greeting cache
        n = waits_of_next("smtp", smtp_send)
        print(f"smtp send: {n} link waits")
        self.assertLessEqual(n, 2)

    def test_pop3_session_at_most_12_waits(self):
        waits_of_next("pop3", pop3_session)  # warms the greeting cache
        n = waits_of_next("pop3", pop3_session)
        print(f"pop3 session: {n} link waits")
        self.assertLessEqual(n, 12)

    def test_pop3_bench_session_exact_with_retr_prefetch(self):
        waits_of_next("pop3", pop3_bench_session)  # warms the greeting cache
        n = waits_of_next("pop3", pop3_bench_session)
        print(f"pop3 USER/PASS/STAT/LIST/RETR x10/QUIT: {n} link waits")
        # One message asked ahead hides a round trip only when the message
        # before it takes about as long to cross: the corpus compresses so
        # well that most RETRs still wait, for less time (measured: 10 waits
        # here; at 2400 bit/s and 1 s RTT 10-11 waits and 13-14 s, against
        # 12 waits and 21 s without the prefetch). Without it this is 12.
        self.assertLessEqual(n, 12)

    def test_imap_session_at_most_2_waits(self):
        waits_of_next("imap", imap_session)  # warms the greeting cache
        n = waits_of_next("imap", imap_session)
        print(f"imap LOGIN/SELECT INBOX/FETCH/LOGOUT: {n} link waits")
        # LOGIN and FETCH. SELECT INBOX is answered from the one straw asked
        # for with LOGIN (the first session learned that the server offers
        # UNSELECT); without that prefetch this is 3.
        self.assertLessEqual(n, 2)


if __name__ == "__main__":
    unittest.main()
