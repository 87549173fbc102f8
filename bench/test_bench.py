"""Tests for the bench helpers: python3 -m unittest discover -s bench"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def straw_binary():
    """$STRAW_BIN, else the release binary, built (or brought up to date) first
    so the test never runs a stale linksim."""
    if os.environ.get("STRAW_BIN"):
        return os.environ["STRAW_BIN"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "straw-cli"], cwd=bench.REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(bench.REPO, "target")
    return os.path.join(bench.REPO, target, "release", "straw")


class StrawLinksim(unittest.TestCase):
    """bench.Linksim's parsing against the real `straw linksim`."""

    def test_rate_delay_and_stats(self):
        straw = straw_binary()
        payload = os.urandom(12000)
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        to = srv.getsockname()[1]

        def serve():
            c, _ = srv.accept()
            c.sendall(payload)
            c.close()

        threading.Thread(target=serve, daemon=True).start()
        port = free_port()
        rate, delay = 96000, 50
        p = subprocess.Popen([straw, "linksim",
                              "--listen", f"127.0.0.1:{port}", "--to", f"127.0.0.1:{to}",
                              "--rate", str(rate), "--delay", str(delay)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            deadline = time.monotonic() + 10
            while not bench.listening(port):
                self.assertLess(time.monotonic(), deadline, "linksim did not listen")
                time.sleep(0.01)
            t0 = time.monotonic()
            got = bytearray()
            with socket.create_connection(("127.0.0.1", port)) as c:
                while chunk := c.recv(65536):
                    got += chunk
            took = time.monotonic() - t0
        finally:
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=5)
            srv.close()
        self.assertEqual(bytes(got), payload)
        segs = -(-len(payload) // 536)
        # handshake (the server's first byte waits for the final ACK: 3 one-way
        # delays) + serialisation + one delay
        want = segs * 576 * 8 / rate + 4 * delay / 1000
        self.assertGreater(took, 0.8 * want)
        self.assertLess(took, 1.5 * want + 0.2)
        m = bench.STATS_RE.search(out)
        self.assertIsNotNone(m, out)
        st = bench.Linksim._stats(m.groups())
        self.assertEqual(st["down_bytes"], len(payload))
        self.assertGreaterEqual(st["down_segments"], segs)
        self.assertEqual(st["up_bytes"], 0)
        self.assertAlmostEqual(st["down_secs"], (len(payload) + 40 * st["down_segments"]) * 8 / rate,
                               places=3)


def way(total, up, down, setup=None):
    w = {"ok": True, "seconds": {"total": total},
         "link": dict(bench.ZERO, up_bytes=up, down_bytes=down), "setup": None}
    if setup:
        w["setup"] = {"seconds": setup[0], "link": dict(bench.ZERO, up_bytes=setup[1], down_bytes=0)}
    return w


class Ratios(unittest.TestCase):
    def test_ratios(self):
        r = bench.ratios({"direct": way(200, 1000, 9000), "ssh": way(100, 500, 4500, (20, 5000)),
                          "straw": way(50, 250, 2250, (5, 1000))})
        self.assertAlmostEqual(r["straw/direct"]["seconds"], 0.25)
        self.assertAlmostEqual(r["straw/direct"]["bytes"], 0.25)
        self.assertNotIn("seconds_with_setup", r["straw/direct"])
        self.assertAlmostEqual(r["straw/ssh"]["seconds"], 0.5)
        self.assertAlmostEqual(r["straw/ssh"]["seconds_with_setup"], 55 / 120)
        self.assertAlmostEqual(r["straw/ssh"]["bytes_with_setup"], 3500 / 10000)

    def test_no_ratio_for_failed_way(self):
        r = bench.ratios({"direct": {"ok": False, "error": "x"}, "straw": way(50, 1, 1)})
        self.assertEqual(r, {})


def full_way(secs, link_b, waits, ttfb=None):
    ph = {s: dict(bench.ZERO, up_bytes=link_b[s] // 10, down_bytes=link_b[s] - link_b[s] // 10)
          for s in bench.SERVICES}
    w = {"ok": True, "seconds": dict(secs, total=sum(secs.values())), "phases": ph,
         "link": bench.sum_stats(ph.values()), "setup": None,
         "waits": dict(waits, total=sum(waits.values())), "turns": dict(waits), "ttfb": ttfb}
    return w


class PerProtocol(unittest.TestCase):
    def res(self):
        secs = {"pop3": 100.0, "imap": 40.0, "smtp": 20.0, "http": 40.0}
        link_b = {"pop3": 30000, "imap": 6000, "smtp": 1000, "http": 6000}
        waits = {"pop3": 16, "imap": 6, "smtp": 7, "http": 1}
        ttfb = {"ok": True, "ok_seconds": 1.1, "first_byte_seconds": 1.2, "first_line_seconds": 1.5,
                "message_size": 307439, "link": bench.ZERO,
                "recover": {"ok": True, "seconds": 3.0}}
        st = full_way({k: v / 4 for k, v in secs.items()}, {k: v // 5 for k, v in link_b.items()},
                      {"pop3": 3, "imap": 4, "smtp": 2, "http": 1},
                      dict(ttfb, recover={"ok": False, "seconds": 120, "error": "timeout"}))
        st["straw_waits"] = {"pop3": {"link_waits": 3, "local_replies": 5, "connections": 1}}
        ways = {"direct": full_way(secs, link_b, waits, ttfb),
                "ssh": full_way({k: v / 2 for k, v in secs.items()}, link_b, waits),
                "straw": st}
        res = {"params": {"rate": 2400, "delay_ms": 500, "mss": 536, "overhead": 40, "messages": 10,
                          "ttfb_message": 11},
               "linksim": "test", "ways": ways}
        res["ratios"] = bench.ratios(ways)
        res["targets"] = bench.targets(res["ratios"], ways, 40)
        return res

    def test_phase_ratios_and_targets(self):
        res = self.res()
        r = res["ratios"]["straw/direct"]
        self.assertAlmostEqual(r["seconds"], 0.25)
        self.assertAlmostEqual(r["phases"]["pop3"]["seconds"], 0.25)
        self.assertAlmostEqual(r["phases"]["imap"]["bytes"], 0.2)
        self.assertAlmostEqual(res["ratios"]["straw/ssh"]["phases"]["http"]["seconds"], 0.5)
        self.assertFalse(res["targets"]["straw/direct"]["pass"])  # 0.25 > 0.18
        self.assertFalse(res["targets"]["straw/ssh"]["pass"])  # 0.5 > 0.40
        res["ways"]["straw"]["seconds"]["total"] = 30.0  # 0.15 of direct, 0.3 of ssh
        t = bench.targets(bench.ratios(res["ways"]), res["ways"])
        self.assertTrue(t["straw/direct"]["pass"])
        self.assertTrue(t["straw/ssh"]["pass"])
        res["ways"]["straw"]["seconds"]["total"] = 45.0  # 0.225 of direct, 0.45 of ssh
        t = bench.targets(bench.ratios(res["ways"]), res["ways"])
        self.assertFalse(t["straw/ssh"]["pass"])
        # The straw way's recovery failed: no recovery target can be judged.
        self.assertNotIn("recovery straw/direct", t)

    def test_bytes_per_packet_and_recovery_targets(self):
        res = self.res()
        st = res["ways"]["straw"]
        st["link"] = dict(bench.ZERO, down_bytes=3600, down_segments=10, up_bytes=200,
                          up_segments=10)
        st["ttfb"]["recover"] = {"ok": True, "seconds": 2.0}
        t = bench.targets(res["ratios"], res["ways"], 40)
        self.assertAlmostEqual(t["down B/packet"]["value"], 400.0)
        self.assertTrue(t["down B/packet"]["pass"])
        self.assertAlmostEqual(t["recovery straw/direct"]["ratio"], 2.0 / 3.0)
        self.assertTrue(t["recovery straw/direct"]["pass"])
        st["link"]["down_segments"] = 12  # (3600 + 480) / 12 = 340 B per packet
        st["ttfb"]["recover"] = {"ok": True, "seconds": 3.5}
        t = bench.targets(res["ratios"], res["ways"], 40)
        self.assertAlmostEqual(t["down B/packet"]["value"], 340.0)
        self.assertFalse(t["down B/packet"]["pass"])
        self.assertFalse(t["recovery straw/direct"]["pass"])
        out = bench.table(dict(res, targets=t))
        self.assertRegex(out, r"down B/packet +340 +\(target >= 400\) +MISS")
        self.assertIsNone(bench.per_packet(bench.ZERO, "down", 40))

    def test_table(self):
        out = bench.table(self.res())
        rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.split()}
        for ph in bench.SERVICES + ["total"]:
            self.assertIn(ph, rows)
        # pop3: direct 100 s, 30000 B, 16 waits ... straw 25 s, 6000 B, 3 waits, ratios 0.25/0.20
        self.assertEqual(rows["pop3"].replace("|", " ").split(),
                         ["pop3", "100.0", "30000", "16", "50.0", "30000", "16", "25.0", "6000", "3",
                          "0.25", "0.20", "0.50", "0.20"])
        self.assertRegex(out, r"straw/direct +0\.25 +\(target <= 0\.18\) +MISS")
        self.assertIn("answered locally by straw: pop3 5", out)
        self.assertRegex(out, r"direct\s+1\.1\s+1\.2\s+1\.5\s+0\s+ok in 3\.0 s")
        self.assertIn("FAILED after 120.0 s: timeout", out)

    def test_cost_per_started_minute(self):
        self.assertEqual(bench.call_cost(0), 0)
        self.assertEqual(bench.call_cost(1), 1.5)
        self.assertEqual(bench.call_cost(60), 1.5)
        self.assertEqual(bench.call_cost(60.5), 3.0)
        out = bench.table(self.res())
        # direct: 200 s is 4 started minutes, $6.00; straw 50 s, $1.50.
        totals = {ln.split()[0]: ln.split() for ln in out.splitlines()
                  if len(ln.split()) == 13 and ln.split()[1].isdigit()}
        self.assertEqual(totals["direct"][-2:], ["6.00", "6.00"])
        self.assertEqual(totals["straw"][-2:], ["1.50", "1.50"])

    def test_straw_waits_from_log(self):
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("x INFO straw::client: tunnel up\n"
                    "x INFO straw::tunnel: connection done tunnel=a stream=1 service=pop3 link_waits=5 local_replies=3\n"
                    "x INFO straw::tunnel: connection done tunnel=a stream=3 service=imap link_waits=4 local_replies=1\n"
                    "x INFO straw::tunnel: connection done tunnel=a stream=5 service=pop3 link_waits=2 local_replies=2\n")
        try:
            self.assertEqual(len(bench.straw_done_lines(f.name)), 3)
            w = bench.straw_waits(f.name, 0, {"pop3": 2, "imap": 1})
            self.assertEqual(w["pop3"], {"link_waits": 7, "local_replies": 5, "connections": 2})
            self.assertEqual(w["imap"]["link_waits"], 4)
            w = bench.straw_waits(f.name, 1, {"imap": 1})
            self.assertEqual(w["pop3"]["link_waits"], 2)
            t0 = time.monotonic()
            w = bench.straw_waits(f.name, 3, {"smtp": 1}, timeout=0.3)
            self.assertEqual(w, {})
            self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        finally:
            os.unlink(f.name)


class ClientTurns(unittest.TestCase):
    def test_turns_count_waits_not_reads(self):
        import mail_session
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def serve():
            c, _ = srv.accept()
            c.sendall(b"+OK hi\r\n")  # greeting: turn 1
            f = c.makefile("rb")
            f.readline()
            c.sendall(b"+OK one\r\n")  # turn 2, sent in three pieces
            time.sleep(0.05)
            c.sendall(b"line\r\n")
            time.sleep(0.05)
            c.sendall(b".\r\n")
            f.readline()
            f.readline()  # two pipelined commands, one wait: turn 3
            c.sendall(b"+OK a\r\n+OK b\r\n")
            c.close()

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        mail_session.Turns.take()
        s = mail_session.counting_create_connection(srv.getsockname(), timeout=5)
        with s:
            r = s.makefile("rb")
            self.assertEqual(r.readline(), b"+OK hi\r\n")
            s.sendall(b"CMD\r\n")
            self.assertEqual([r.readline() for _ in range(3)], [b"+OK one\r\n", b"line\r\n", b".\r\n"])
            s.sendall(b"A\r\n")
            s.sendall(b"B\r\n")
            self.assertEqual([r.readline() for _ in range(2)], [b"+OK a\r\n", b"+OK b\r\n"])
        th.join(5)
        srv.close()
        self.assertEqual(mail_session.Turns.take(), 3)


if __name__ == "__main__":
    unittest.main()
