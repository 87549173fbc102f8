"""Hold ashore (POP3) with real Dovecot, fetchmail and mutt, through a straw
client whose [pop3] hold_over_bytes is 51200 (scripts/e2e-straw starts it and
sets STRAW_E2E_HOLD_POP3, STRAW_E2E_HOLD_SOCKET and STRAW_BIN; without them
these tests are skipped).

The held message is bob's ~300 KB mail with a PNG and two licence texts
attached (scripts/lib/peers_seed.py). Each test walks the whole cycle:
the program fetches, gets the stub (marked subject, the original's From and
Message-ID, release words with the id); the original stays in the Maildir
(also after mutt deletes the stub); `straw hold release ID`; the next
session brings the original byte-exact (CRLF -> LF, as the programs deliver
it) as one more message under its own UIDL.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from straw_e2e import PASSWORD, TIMEOUT, USER_B, manifest
from test_mutt import COMMON, run_on_pty

HOLD = os.environ.get("STRAW_E2E_HOLD_POP3")
SOCKET = os.environ.get("STRAW_E2E_HOLD_SOCKET")
STRAW = os.environ.get("STRAW_BIN")
MSGID = b"<attachment.1@example.org>"
MARKED = b"Subject: [held ashore] the plot you asked for\n"


def big():
    """The seeded ~300 KB message (bob's last seeded one)."""
    rows = manifest(USER_B)
    s = rows[-1]
    assert s.size > 250_000, f"bob's last seeded message is {s.size} bytes, expected the ~300 KB one"
    return s


@unittest.skipUnless(HOLD and SOCKET and STRAW, "needs the hold client of scripts/e2e-straw")
class HoldTest(unittest.TestCase):
    def setUp(self):
        self.home = Path(tempfile.mkdtemp(prefix="straw-hold-"))
        self.addCleanup(shutil.rmtree, self.home, True)
        self.big = big()
        self.original = self.big.maildir_bytes()
        self.host, self.port = HOLD.rsplit(":", 1)

    def straw_hold(self, *args: str) -> dict:
        p = subprocess.run(
            [STRAW, "hold", *args, "--socket", SOCKET, "--json"],
            capture_output=True, timeout=TIMEOUT,
        )
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        return json.loads(p.stdout)

    def entry(self) -> dict:
        held = self.straw_hold("list")["held"]
        mine = [e for e in held if e["subject"] == "the plot you asked for" and e["user"] == USER_B]
        self.assertEqual(len(mine), 1, held)
        return mine[0]

    def check_stub(self, stub: bytes) -> str:
        """The stub's contents; returns the id it names."""
        self.assertLess(len(stub), 8 * 1024)
        self.assertIn(MARKED, stub)
        self.assertIn(b"\nMessage-ID: " + MSGID + b"\n", stub)
        self.assertIn(b"From: Alice Example <alice@example.org>\n", stub)
        self.assertIn(b"straw kept this message ashore", stub)
        self.assertIn(b"Deleting this message does not delete the original", stub)
        self.assertRegex(stub, rb"image/png, [0-9,]+ bytes\)")
        m = re.search(rb"\n    straw hold release ([0-9a-f]{8})\n", stub)
        self.assertIsNotNone(m, stub[-800:])
        return m.group(1).decode()

    def check_original_on_server(self):
        # Still there, unchanged: neither the stub nor its DELE touched it.
        self.assertEqual(self.big.maildir_bytes(), self.original)

    def release(self, id_: str):
        e = self.entry()
        self.assertEqual((e["id"], e["state"]), (id_, "held"))
        self.assertEqual(e["size"], len(self.original))
        rel = self.straw_hold("release", id_)["released"]
        self.assertEqual(rel["state"], "released")

    # --- fetchmail: leaves mail on the server, keeps UIDL state ---

    def fetchmail(self) -> list[bytes]:
        out = self.home / "out"
        shutil.rmtree(out, True)
        out.mkdir()
        rc = self.home / ".fetchmailrc"
        rc.write_text(
            f'poll {self.host} protocol pop3 port {self.port} auth password'
            f' user "{USER_B}" password "{PASSWORD}" sslproto \'\' no sslcertck\n'
        )
        rc.chmod(0o600)
        cmd = [
            "fetchmail", "-f", str(rc), "--keep", "--invisible", "--uidl",
            "--timeout", str(int(TIMEOUT)), "--nosyslog", "-i", str(self.home / ".fetchids"),
            "--mda", f"cat > {out}/msg.$$",
        ]
        env = dict(os.environ, HOME=str(self.home))
        p = subprocess.run(cmd, env=env, capture_output=True, timeout=TIMEOUT * 3)
        self.assertIn(p.returncode, (0, 1), f"fetchmail failed: {p.stderr.decode(errors='replace')}")
        return [f.read_bytes() for f in sorted(out.iterdir())]

    @unittest.skipUnless(shutil.which("fetchmail"), "fetchmail not installed")
    def test_fetchmail_stub_then_release_brings_the_original(self):
        got = self.fetchmail()
        stubs = [m for m in got if MARKED in m]
        self.assertEqual(len(stubs), 1, [m[:300] for m in got])
        want = self.original.replace(b"\r\n", b"\n")
        self.assertNotIn(want, got, "the original crossed the link")
        id_ = self.check_stub(stubs[0])
        self.check_original_on_server()
        uidls = (self.home / ".fetchids").read_text()
        self.assertIn("~straw-held", uidls)

        self.release(id_)
        # Next session: only the released original is new to fetchmail.
        again = self.fetchmail()
        self.assertEqual(len(again), 1, [m[:300] for m in again])
        self.assertEqual(again[0], want)
        self.assertEqual(self.entry()["state"], "fetched")
        # And once fetched, it is not presented again.
        self.assertEqual(self.fetchmail(), [])
        self.check_original_on_server()

    # --- mutt: reads on a terminal, deletes the stub ---

    def mutt(self, push: str) -> bytes:
        rc = self.home / "muttrc"
        rc.write_text(
            COMMON.format(timeout=int(TIMEOUT), domain="straw.test", home=self.home)
            + f'set pop_user="{USER_B}"\nset pop_pass="{PASSWORD}"\n'
            # No pop_authenticators: with hold on, straw's CAPA offers no
            # SASL, so mutt logs in with USER/PASS on its own.
            + 'set delete=yes\n'
        )
        rc.chmod(0o600)
        env = dict(os.environ, HOME=str(self.home), TERM="vt100", LC_ALL="C")
        url = f"pop://{self.host}:{self.port}/"
        return run_on_pty(self, ["mutt", "-n", "-F", str(rc), "-f", url, "-e", f"push '{push}'"], env, TIMEOUT * 3)

    @unittest.skipUnless(shutil.which("mutt"), "mutt not installed")
    def test_mutt_stub_dele_keeps_the_original_and_release_brings_it(self):
        stub_file = self.home / "stub"
        limit = "<limit>~i attachment.1@example.org<enter>"
        self.mutt(f"{limit}<first-entry><pipe-message>cat > {stub_file}<enter>"
                  "<delete-message><sync-mailbox><quit>")
        self.assertTrue(stub_file.exists(), "mutt did not pipe the stub")
        id_ = self.check_stub(stub_file.read_bytes())
        # mutt sent DELE for the stub and QUIT: the original is still there.
        self.check_original_on_server()

        self.release(id_)
        got_file = self.home / "original"
        # The released message is one more, after the real ones.
        self.mutt(f"{limit}<last-entry><pipe-message>cat > {got_file}<enter><quit>")
        self.assertTrue(got_file.exists(), "mutt did not pipe the released message")
        self.assertEqual(got_file.read_bytes(), self.original.replace(b"\r\n", b"\n"))
        self.check_original_on_server()


if __name__ == "__main__":
    unittest.main()
