"""Tests for the bench helpers: python3 -m unittest discover -s bench"""

import os
import signal
import socket
import subprocess
import sys
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


class LinksimStandIn(unittest.TestCase):
    def test_rate_delay_and_stats(self):
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
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "linksim.py"),
                              "--listen", f"127.0.0.1:{port}", "--to", f"127.0.0.1:{to}",
                              "--rate", str(rate), "--delay", str(delay)],
                             stdout=subprocess.PIPE, text=True)
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
        self.assertEqual(bytes(got), payload)
        segs = -(-len(payload) // 536)
        # handshake (~2 one-way delays) + serialisation + one delay
        want = segs * 576 * 8 / rate + 3 * delay / 1000
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


if __name__ == "__main__":
    unittest.main()
