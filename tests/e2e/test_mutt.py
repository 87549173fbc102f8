"""mutt (a real mail program) sends over SMTP and reads over IMAP and POP3,
against the peers (or straw client).

Sending works without a terminal (`mutt -s subj rcpt < body`). Reading needs
one (curses), so mutt runs on a pseudo-terminal, with commands pushed by `-e`:
pipe the first message (mailbox order) raw (`pipe_decode=no`) to a file, quit.
mutt pipes messages with LF line endings, so the file must equal the seeded
Maildir file with CRLF -> LF. No TLS (`ssl_starttls=no`): the peers' plain
ports offer STARTTLS.
"""

import os
import pty
import re
import select
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid
from pathlib import Path

from straw_e2e import (
    DOMAIN,
    IMAP,
    PASSWORD,
    POP3,
    SMTP,
    TIMEOUT,
    USER_A,
    USER_B,
    manifest,
    strip_mta_headers,
    wait_for_delivery,
)

COMMON = """\
set ssl_starttls=no
set ssl_force_tls=no
set header_cache=""
set message_cachedir=""
set connect_timeout={timeout}
set timeout={timeout}
set sort=mailbox-order
set pipe_decode=no
set wait_key=no
set move=no
set mark_old=no
set delete=no
set quit=yes
set copy=no
set record=""
set hostname="{domain}"
set mbox_type=Maildir
set folder="{home}"
set spoolfile=""
"""


@unittest.skipUnless(shutil.which("mutt"), "mutt not installed (scripts/e2e installs it)")
class MuttTest(unittest.TestCase):
    def setUp(self):
        self.home = Path(tempfile.mkdtemp(prefix="straw-mutt-"))
        self.addCleanup(shutil.rmtree, self.home, True)
        self.env = dict(os.environ, HOME=str(self.home), TERM="vt100", LC_ALL="C")

    def muttrc(self, extra: str) -> Path:
        rc = self.home / "muttrc"
        rc.write_text(COMMON.format(timeout=int(TIMEOUT), domain=DOMAIN, home=self.home) + extra)
        rc.chmod(0o600)
        return rc

    def test_send_smtp(self):
        host, port = SMTP
        rc = self.muttrc(
            f'set smtp_url="smtp://{host}:{port}/"\nset from="{USER_A}@{DOMAIN}"\nset realname="Alice"\n'
        )
        tag = uuid.uuid4().hex
        subject = f"straw e2e mutt {tag}"
        # A leading-dot line (SMTP dot-stuffing) and a signature separator.
        body = f"Hello bob,\nthis came through mutt ({tag}).\n.a line starting with a dot\n-- \nalice\n".encode()
        p = subprocess.run(
            ["mutt", "-n", "-F", str(rc), "-s", subject, f"{USER_B}@{DOMAIN}"],
            input=body, env=self.env, capture_output=True, timeout=TIMEOUT * 2,
        )
        self.assertEqual(p.returncode, 0, f"mutt send failed: {p.stdout!r} {p.stderr!r}")
        # mutt writes its own Message-ID: find the message by its unique subject.
        path = wait_for_delivery(USER_B, subject.encode(), header=b"Subject")
        delivered = path.read_bytes()
        rest, added = strip_mta_headers(delivered)
        self.assertEqual(added[b"Return-Path"], f"<{USER_A}@{DOMAIN}>".encode())
        head, sep, got_body = rest.partition(b"\n\n")
        self.assertEqual(sep, b"\n\n")
        self.assertIn(f"\nSubject: {subject}\n".encode(), b"\n" + head + b"\n")
        self.assertIn(f"\nTo: {USER_B}@{DOMAIN}\n".encode(), b"\n" + head + b"\n")
        self.assertEqual(got_body, body)

    def read_first(self, url: str, user: str, proto: str) -> bytes:
        rc = self.muttrc(f'set {proto}_user="{user}"\nset {proto}_pass="{PASSWORD}"\n')
        out = self.home / "piped"
        push = f"<first-entry><pipe-message>cat > {out}<enter><quit>"
        screen = run_on_pty(
            self, ["mutt", "-n", "-F", str(rc), "-f", url, "-e", f"push '{push}'"], self.env, TIMEOUT * 3
        )
        text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b" ", screen)[-800:]
        self.assertTrue(out.exists(), f"mutt did not pipe the message; screen tail: {text!r}")
        return out.read_bytes()

    def check_first(self, got: bytes, user: str):
        s = manifest(user)[0]
        self.assertEqual(got, s.maildir_bytes().replace(b"\r\n", b"\n"))

    def test_read_imap(self):
        host, port = IMAP
        self.check_first(self.read_first(f"imap://{host}:{port}/INBOX", USER_B, "imap"), USER_B)

    def test_read_pop3(self):
        host, port = POP3
        self.check_first(self.read_first(f"pop://{host}:{port}/", USER_B, "pop"), USER_B)


def run_on_pty(test: unittest.TestCase, argv: list[str], env: dict, timeout: float) -> bytes:
    """Runs a curses program on a pseudo-terminal, draining its screen output
    (a full pty would block it), until it exits or `timeout` passes."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the program closed the terminal
                    chunk = b""
                screen += chunk
                if not chunk and p.poll() is not None:
                    break
            elif p.poll() is not None:
                break
            if time.monotonic() > deadline:
                p.kill()
                p.wait()
                test.fail(f"{argv[0]} still running after {timeout}s; screen tail: {screen[-500:]!r}")
    finally:
        os.close(master)
    test.assertEqual(p.wait(), 0, f"{argv[0]} failed; screen tail: {screen[-500:]!r}")
    return screen


if __name__ == "__main__":
    unittest.main()
