"""SMTP submission to OpenSMTPD (or straw client), checked in bob's Maildir."""

import poplib
import smtplib
import unittest

from straw_e2e import (
    DOMAIN,
    PASSWORD,
    POP3,
    SMTP,
    TIMEOUT,
    USER_B,
    corpus_message,
    lf_to_crlf,
    strip_mta_headers,
    wait_for_delivery,
)

SENDER = f"tester@{DOMAIN}"
RCPT = f"{USER_B}@{DOMAIN}"


class SmtpTest(unittest.TestCase):
    def check_delivered(self, msg_lf: bytes, msgid: bytes, sender: str = SENDER):
        """Delivered file = 3 MTA headers + the submitted message with LF endings."""
        path = wait_for_delivery(USER_B, msgid)
        delivered = path.read_bytes()
        rest, added = strip_mta_headers(delivered)
        self.assertEqual(rest, msg_lf)
        self.assertEqual(added[b"Return-Path"], f"<{sender}>".encode())
        self.assertEqual(added[b"Delivered-To"], RCPT.encode())
        self.assertIn(f"for <{RCPT}>".encode(), added[b"Received"])
        return path, delivered

    def test_send_corpus_message_and_read_back(self):
        # 00049: plain ASCII and has a body line starting with '.' (dot-stuffing).
        msg, msgid = corpus_message("00049")
        self.assertIn(b"\n.", msg)
        with smtplib.SMTP(*SMTP, timeout=TIMEOUT) as s:
            code, ehlo = s.ehlo("e2e.straw.test")
            self.assertEqual(code, 250)
            self.assertIn(b"8BITMIME", ehlo)
            # smtplib only fixes line endings for str input; SMTP requires CRLF.
            refused = s.sendmail(SENDER, [RCPT], lf_to_crlf(msg))
            self.assertEqual(refused, {})
        path, delivered = self.check_delivered(msg, msgid)

        # The same message read back over POP3 is the Maildir file with CRLF.
        pop = poplib.POP3(*POP3, timeout=TIMEOUT)
        try:
            pop.user(USER_B)
            pop.pass_(PASSWORD)
            count, _ = pop.stat()
            found = None
            for i in range(1, count + 1):
                _, lines, _ = pop.top(i, 0)
                if any(line == b"Message-ID: " + msgid for line in lines):
                    found = i
            self.assertIsNotNone(found, "sent message not visible over POP3")
            _, lines, _ = pop.retr(found)
            self.assertEqual(b"".join(ln + b"\r\n" for ln in lines), lf_to_crlf(delivered))
            pop.quit()
        finally:
            pop.close()

    def test_unknown_recipient_rejected(self):
        with smtplib.SMTP(*SMTP, timeout=TIMEOUT) as s:
            s.ehlo("e2e.straw.test")
            s.mail(SENDER)
            code, _ = s.rcpt(f"nobody@{DOMAIN}")
            self.assertGreaterEqual(code, 500)
            code, _ = s.rcpt(f"{USER_B}@example.invalid")
            self.assertGreaterEqual(code, 500)
            self.assertEqual(s.rset()[0], 250)


if __name__ == "__main__":
    unittest.main()
