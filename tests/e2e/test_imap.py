"""IMAP against Dovecot (or straw client) with imaplib."""

import imaplib
import re

import unittest

from straw_e2e import IMAP, PASSWORD, TIMEOUT, UIDVALIDITY, USER_A, expected_from_corpus, header_value, manifest


def responses(data) -> list[bytes]:
    """imaplib FETCH data -> one flat bytes string per message (literals inlined)."""
    out: list[bytes] = []
    for item in data:
        seg = item[0] + item[1] if isinstance(item, tuple) else item
        if re.match(rb"\d+ \(", seg) or not out:
            out.append(seg)
        else:
            out[-1] += seg
    return out


def literals(data) -> dict[int, tuple[bytes, bytes]]:
    """imaplib FETCH data -> {seq: (response prefix, literal bytes)}."""
    out = {}
    for item in data:
        if isinstance(item, tuple):
            seq = int(item[0].split()[0])
            out[seq] = (item[0], item[1])
    return out


class ImapTest(unittest.TestCase):
    def setUp(self):
        self.seeded = manifest(USER_A)
        self.imap = imaplib.IMAP4(*IMAP, timeout=TIMEOUT)
        self.addCleanup(self._close)
        typ, _ = self.imap.login(USER_A, PASSWORD)
        self.assertEqual(typ, "OK")
        typ, data = self.imap.select("INBOX", readonly=False)
        self.assertEqual(typ, "OK")
        self.assertEqual(int(data[0]), len(self.seeded))

    def tearDown(self):
        typ, _ = self.imap.logout()
        self.assertEqual(typ, "BYE")

    def _close(self):
        if self.imap.state != "LOGOUT":
            self.imap.shutdown()

    def test_capability_and_status(self):
        typ, caps = self.imap.capability()
        self.assertEqual(typ, "OK")
        self.assertIn(b"IMAP4rev1", caps[0])
        typ, data = self.imap.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY)")
        self.assertEqual(typ, "OK")
        self.assertIn(f"UIDVALIDITY {UIDVALIDITY}".encode(), data[0])
        self.assertIn(f"MESSAGES {len(self.seeded)}".encode(), data[0])

    def test_fetch_envelopes_sizes_uids(self):
        typ, data = self.imap.fetch("1:*", "(UID RFC822.SIZE ENVELOPE)")
        self.assertEqual(typ, "OK")
        data = responses(data)
        self.assertEqual(len(data), len(self.seeded))
        for line, s in zip(data, self.seeded):
            with self.subTest(uid=s.uid):
                self.assertRegex(line, rb"\bUID %d\b" % s.uid)
                self.assertRegex(line, rb"\bRFC822.SIZE %d\b" % s.size)
                msgid = header_value(s.maildir_bytes(), "Message-Id")
                self.assertIsNotNone(msgid)
                self.assertIn(msgid, line)

    def test_fetch_whole_messages_byte_exact(self):
        picks = [1, 4, 9, 17, 30]  # 9 has 8-bit text, 4 a dot line
        typ, data = self.imap.fetch(",".join(map(str, picks)), "(BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        got = literals(data)
        self.assertEqual(sorted(got), picks)
        for seq in picks:
            s = self.seeded[seq - 1]
            with self.subTest(seq=seq):
                prefix, body = got[seq]
                self.assertIn(b"{%d}" % s.size, prefix)
                disk = s.maildir_bytes()
                self.assertEqual(body, disk)
                self.assertEqual(disk, expected_from_corpus(s.corpus_file.read_bytes()))

    def test_uid_fetch_all_byte_exact(self):
        typ, data = self.imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        got = literals(data)
        self.assertEqual(len(got), len(self.seeded))
        for s in self.seeded:
            prefix, body = got[s.uid]  # seq == uid in the seeded mailbox
            self.assertIn(b"UID %d" % s.uid, prefix)
            self.assertEqual(body, s.maildir_bytes(), f"uid {s.uid}")

    def test_fetch_header_and_partial(self):
        s = self.seeded[1]
        disk = s.maildir_bytes()
        head = disk[: disk.index(b"\r\n\r\n") + 4]
        typ, data = self.imap.fetch("2", "(BODY.PEEK[HEADER] BODY.PEEK[]<100.500>)")
        self.assertEqual(typ, "OK")
        parts = [x for x in data if isinstance(x, tuple)]
        self.assertEqual(len(parts), 2)
        by_kind = {}
        for prefix, lit in parts:
            by_kind["header" if b"HEADER" in prefix else "partial"] = lit
        self.assertEqual(by_kind["header"], head)
        self.assertEqual(by_kind["partial"], disk[100:600])

    def test_search_and_noop(self):
        msgid = header_value(self.seeded[4].maildir_bytes(), "Message-Id").decode()
        typ, data = self.imap.search(None, "HEADER", "Message-ID", f'"{msgid}"')
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0].split(), [b"5"])
        self.assertEqual(self.imap.noop()[0], "OK")


class ImapBeforeSelectTest(unittest.TestCase):
    """What a program does after LOGIN and before (or instead of) SELECT
    INBOX: through straw, which selects INBOX ahead with the login, the
    answers must be those of a server with no mailbox selected."""

    def login(self):
        m = imaplib.IMAP4(*IMAP, timeout=TIMEOUT)
        self.addCleanup(lambda: m.state == "LOGOUT" or m.shutdown())
        self.assertEqual(m.login(USER_A, PASSWORD)[0], "OK")
        return m

    def test_close_before_select_expunges_nothing(self):
        seeded = manifest(USER_A)
        m = self.login()
        m.select("INBOX")
        self.assertEqual(m.store("1", "+FLAGS", r"(\Deleted)")[0], "OK")
        m.logout()  # LOGOUT never expunges
        try:
            m = self.login()
            # No mailbox selected: the server refuses CLOSE.
            with self.assertRaises(imaplib.IMAP4.error):
                m._simple_command("CLOSE")
            typ, data = m.select("INBOX")
            self.assertEqual(typ, "OK")
            self.assertEqual(int(data[0]), len(seeded), "CLOSE expunged INBOX")
            m.logout()
        finally:
            m = self.login()
            m.select("INBOX")
            m.store("1", "-FLAGS", r"(\Deleted)")
            m.logout()

    def test_examine_other_mailbox_and_list_before_select(self):
        m = self.login()
        typ, data = m.list()
        self.assertEqual(typ, "OK")
        self.assertTrue(any(b"INBOX" in d for d in data), data)
        typ, data = m.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK")
        self.assertIn("READ-ONLY", m.untagged_responses)
        typ, _ = m.select("No-Such-Mailbox")
        self.assertEqual(typ, "NO")
        typ, data = m.select("INBOX")
        self.assertEqual(typ, "OK")
        self.assertEqual(int(data[0]), len(manifest(USER_A)))
        m.logout()


if __name__ == "__main__":
    unittest.main()
