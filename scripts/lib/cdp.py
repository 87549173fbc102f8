"""Headless Chromium driven over the Chrome DevTools Protocol, with the
standard library only (scripts/test-web).

`Browser()` starts `chromium --headless --remote-debugging-port=0` in its
own process group with a throwaway profile, finds the port in the profile's
DevToolsActivePort file and opens the page target's WebSocket: a minimal
RFC 6455 client (masked text frames out; unmasked frames in, fragments
joined, pings answered). `close()` kills the whole group and removes the
profile; use it as a context manager so that happens on failure too.
"""

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request


class CdpError(Exception):
    pass


class WebSocket:
    """Just enough of a WebSocket client for CDP on loopback."""

    def __init__(self, url, timeout=30):
        assert url.startswith("ws://"), url
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CdpError("WebSocket handshake: connection closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise CdpError(f"WebSocket handshake refused: {head[:200]!r}")

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise CdpError("WebSocket closed by the browser")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send(self, text):
        self._frame(0x1, text.encode())

    def recv(self):
        """The next whole text message."""
        parts = []
        while True:
            b0, b1 = self._exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise CdpError("WebSocket closed by the browser")
            if opcode == 0x9:
                self._frame(0xA, payload)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """One headless Chromium with one page, spoken to over CDP."""

    def __init__(self, width=1200, height=1400, timeout=30):
        self.profile = tempfile.mkdtemp(prefix="straw-web-cdp-")
        self.proc = None
        self.ws = None
        self.next_id = 0
        self.timeout = timeout
        try:
            self._start(width, height)
        except BaseException:
            self.close()
            raise

    def _start(self, width, height):
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             f"--window-size={width},{height}", f"--user-data-dir={self.profile}",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        active = os.path.join(self.profile, "DevToolsActivePort")
        end = time.time() + self.timeout
        port = None
        while port is None:
            if self.proc.poll() is not None:
                raise CdpError(f"chromium exited ({self.proc.returncode}) before listening")
            if time.time() > end:
                raise CdpError("chromium never wrote DevToolsActivePort")
            try:
                with open(active) as f:
                    first = f.readline().strip()
                port = int(first) if first else None
            except (OSError, ValueError):
                pass
            if port is None:
                time.sleep(0.1)
        page = None
        while page is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            page = next((t for t in targets if t.get("type") == "page"
                         and not t.get("url", "").startswith("chrome")), None)
            if page is None:
                if time.time() > end:
                    raise CdpError(f"no page target among {targets}")
                time.sleep(0.1)
        self.ws = WebSocket(page["webSocketDebuggerUrl"], timeout=self.timeout)

    def call(self, method, **params):
        """Sends a command and returns its result (events are skipped)."""
        self.next_id += 1
        me = self.next_id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") != me:
                continue
            if "error" in msg:
                raise CdpError(f"{method}: {msg['error']}")
            return msg.get("result", {})

    def eval(self, expr):
        """The value of a JavaScript expression (awaited if a promise)."""
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CdpError(f"JavaScript threw: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def goto(self, url):
        self.call("Page.navigate", url=url)

    def wait_for(self, expr, what, ok=bool, secs=15, every=0.2):
        """Polls `expr` until `ok(value)`; returns that value. On timeout
        raises with `what` and the last value seen (an error counts as a
        value not ok yet: a page being navigated has no context for a
        moment)."""
        end = time.time() + secs
        while True:
            try:
                last = self.eval(expr)
                if ok(last):
                    return last
            except CdpError as e:
                last = f"error: {e}"
            if time.time() > end:
                raise CdpError(f"timed out after {secs} s waiting for {what} (last seen: {last!r})")
            time.sleep(every)

    def press(self, x, y):
        """The left button goes down at x, y (moved there first)."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)

    def release(self, x, y):
        """The left button comes up at x, y: with press(), a click."""
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def click(self, x, y):
        self.press(x, y)
        self.release(x, y)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        if self.ws:
            self.ws.close()
            self.ws = None
        if self.proc and self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        if self.proc:
            # Helpers (zygote, renderers) may outlive the main process.
            self._signal_group(signal.SIGKILL)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _signal_group(self, sig):
        """Sends `sig` to Chromium's process group, if any of it is left."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
