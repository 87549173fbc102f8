"""POP3 against Dovecot (or straw client): poplib plus a raw socket for exact bytes."""

import poplib
import socket
import unittest

from straw_e2e import PASSWORD, POP3, TIMEOUT, UIDVALIDITY, USER_A, expected_from_corpus, manifest


def lines_to_bytes(lines: list[bytes]) -> bytes:
    # poplib strips CRLF and undoes dot-stuffing; Dovecot ends every line with CRLF.
    return b"".join(line + b"\r\n" for line in lines)


class Pop3Test(unittest.TestCase):
    def setUp(self):
        self.seeded = manifest(USER_A)
        self.assertEqual(len(self.seeded), 30)
        self.pop = poplib.POP3(*POP3, timeout=TIMEOUT)
        self.addCleanup(self.pop.close)
        self.assertTrue(self.pop.getwelcome().startswith(b"+OK"))
        self.pop.user(USER_A)
        self.pop.pass_(PASSWORD)

    def tearDown(self):
        self.assertTrue(self.pop.quit().startswith(b"+OK"))

    def test_stat_list_uidl(self):
        count, total = self.pop.stat()
        self.assertEqual(count, len(self.seeded))
        self.assertEqual(total, sum(s.size for s in self.seeded))
        _, listing, _ = self.pop.list()
        self.assertEqual(listing, [f"{i} {s.size}".encode() for i, s in enumerate(self.seeded, 1)])
        _, uidls, _ = self.pop.uidl()
        # Dovecot's default pop3_uidl_format %08Xu%08Xv with the seeded UIDVALIDITY.
        want = [f"{i} {s.uid:08x}{UIDVALIDITY:08x}".encode() for i, s in enumerate(self.seeded, 1)]
        self.assertEqual([u.lower() for u in uidls], want)
        self.assertEqual(self.pop.list(7).split()[1:], [b"7", str(self.seeded[6].size).encode()])

    def test_retr_every_message_byte_exact(self):
        for i, s in enumerate(self.seeded, 1):
            with self.subTest(msg=i, corpus=s.corpus_file.name):
                resp, lines, octets = self.pop.retr(i)
                self.assertTrue(resp.startswith(b"+OK"))
                got = lines_to_bytes(lines)
                disk = s.maildir_bytes()
                self.assertEqual(got, disk)
                self.assertEqual(disk, expected_from_corpus(s.corpus_file.read_bytes()))
                self.assertEqual(len(got), s.size)

    def test_top(self):
        for i in (1, 4, 30):
            s = self.seeded[i - 1]
            disk = s.maildir_bytes()
            head_len = disk.index(b"\r\n\r\n") + 4
            _, lines, _ = self.pop.top(i, 0)
            self.assertEqual(lines_to_bytes(lines), disk[:head_len])
            _, lines, _ = self.pop.top(i, 3)
            body3 = b"".join(disk[head_len:].split(b"\r\n")[k] + b"\r\n" for k in range(3))
            self.assertEqual(lines_to_bytes(lines), disk[:head_len] + body3)

    def test_noop_rset_dele_not_committed(self):
        self.assertTrue(self.pop.noop().startswith(b"+OK"))
        self.assertTrue(self.pop.dele(1).startswith(b"+OK"))
        self.assertEqual(self.pop.stat()[0], len(self.seeded) - 1)
        self.assertTrue(self.pop.rset().startswith(b"+OK"))
        self.assertEqual(self.pop.stat()[0], len(self.seeded))

    def test_bad_password_rejected(self):
        other = poplib.POP3(*POP3, timeout=TIMEOUT)
        try:
            other.user(USER_A)
            with self.assertRaises(poplib.error_proto):
                other.pass_("wrong")
        finally:
            other.close()


class Pop3RawTest(unittest.TestCase):
    """Wire bytes without poplib: dot-stuffing and the terminator are checked too."""

    def test_raw_retr_with_dot_stuffing(self):
        # The first seeded message with a line starting with '.'.
        dotted = [s for s in manifest(USER_A) if b"\r\n." in s.maildir_bytes()]
        self.assertTrue(dotted, "no seeded message has a dot line: the test would test nothing")
        s = dotted[0]
        disk = s.maildir_bytes()
        with socket.create_connection(POP3, timeout=TIMEOUT) as sock:
            f = sock.makefile("rwb")

            def cmd(line: bytes) -> bytes:
                f.write(line + b"\r\n")
                f.flush()
                return f.readline()

            self.assertTrue(f.readline().startswith(b"+OK"))
            self.assertTrue(cmd(b"USER " + USER_A.encode()).startswith(b"+OK"))
            self.assertTrue(cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
            self.assertTrue(cmd(b"RETR %d" % s.uid).startswith(b"+OK"))
            wire = b""
            while not wire.endswith(b"\r\n.\r\n"):
                chunk = f.readline()
                self.assertTrue(chunk, "connection closed mid-message")
                wire += chunk
            stuffed = b"".join(
                (b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in disk.split(b"\r\n")[:-1]
            )
            self.assertEqual(wire, stuffed + b".\r\n")
            self.assertTrue(cmd(b"QUIT").startswith(b"+OK"))


if __name__ == "__main__":
    unittest.main()
