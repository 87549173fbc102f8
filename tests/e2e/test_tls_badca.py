"""Through straw only (scripts/e2e-straw-tls): when `straw server` does not
trust the real server's certificate, the mail program's connection fails
(never plaintext, never a hang) and the server logs why.

STRAW_E2E_BADCA_POP3 / STRAW_E2E_BADCA_IMAP name straw client ports whose
services trust a CA that did not sign the peers' certificate (implicit TLS
for POP3, STARTTLS for IMAP); STRAW_E2E_SERVER_LOG is the straw server's log.
"""

import imaplib
import os
import poplib
import re
import time
import unittest
from pathlib import Path

from straw_e2e import PASSWORD, TIMEOUT, USER_A

POP3 = os.environ.get("STRAW_E2E_BADCA_POP3")
IMAP = os.environ.get("STRAW_E2E_BADCA_IMAP")
LOG = os.environ.get("STRAW_E2E_SERVER_LOG")


def split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


@unittest.skipUnless(POP3 and IMAP and LOG, "only through scripts/e2e-straw-tls")
class BadCaTest(unittest.TestCase):
    def wait_log(self, pattern: str):
        deadline = time.monotonic() + 10
        while True:
            text = Path(LOG).read_text(errors="replace")
            if re.search(pattern, text):
                return
            if time.monotonic() > deadline:
                self.fail(f"no {pattern!r} in {LOG}; tail: {text[-1500:]}")
            time.sleep(0.2)

    def test_pop3_implicit_untrusted(self):
        with self.assertRaises((poplib.error_proto, OSError, EOFError)):
            pop = poplib.POP3(*split(POP3), timeout=TIMEOUT)
            try:
                pop.user(USER_A)
                pop.pass_(PASSWORD)
            finally:
                pop.close()
        self.wait_log(r"TLS handshake with 127\.0\.0\.1:10995 \(name 127\.0\.0\.1\) failed: "
                      r"invalid peer certificate: UnknownIssuer")

    def test_imap_starttls_untrusted(self):
        with self.assertRaises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError, EOFError)):
            imap = imaplib.IMAP4(*split(IMAP), timeout=TIMEOUT)
            try:
                imap.login(USER_A, PASSWORD)
            finally:
                imap.shutdown()
        self.wait_log(r"TLS handshake with 127\.0\.0\.1:10143 \(name straw\.test\) failed: "
                      r"invalid peer certificate: UnknownIssuer")


if __name__ == "__main__":
    unittest.main()
