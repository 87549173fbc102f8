#!/usr/bin/env python3
"""Run one scripted mail session over a simulated satellite link three ways
(direct, ssh -C -L, straw) and print a comparison table. See scripts/bench."""

import argparse
import fcntl
import json
import math
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SERVICES = ["pop3", "imap", "smtp", "http"]
UPSTREAM = {"pop3": 10110, "imap": 10143, "smtp": 10025, "http": 10080}
# Loopback ports used by the bench itself.
DIRECT_LINK = {"pop3": 10711, "imap": 10712, "smtp": 10713, "http": 10714}
SSHD_PORT = 10022
SSH_LINK = 10721
SSH_FWD = {"pop3": 10811, "imap": 10812, "smtp": 10813, "http": 10814}
STRAW_SERVER = 10700
STRAW_LINK = 10731
STRAW_LOCAL = {"pop3": 10821, "imap": 10822, "smtp": 10823, "http": 10824}

STATS_RE = re.compile(
    r"linksim up bytes=(\d+) segments=(\d+) link_secs=([\d.]+) "
    r"down bytes=(\d+) segments=(\d+) link_secs=([\d.]+)")


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Procs:
    """Children we started, stopped in reverse order by PID on cleanup."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, argv, stdout=None, env=None):
        err = open(os.path.join(self.logdir, f"{name}.log"), "wb")
        out = open(stdout, "wb") if stdout else err
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             start_new_session=True, env=env)
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p, timeout=10.0):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{p.bench_name} (pid {p.pid}) ignored SIGTERM; killing")
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


def listening(port):
    """True if something listens on TCP port (any local address), without
    connecting: a probe connection would cross the link and cost bytes."""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[1].endswith(want) and cols[3] == "0A":
                        return True
        except FileNotFoundError:
            pass
    return False


def wait_listening(ports, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not all(listening(p) for p in ports):
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited (status {proc.returncode}) before listening on {ports}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not listening on {ports} after {timeout:.0f}s")
        time.sleep(0.01)


def ensure_free(ports):
    busy = [p for p in ports if listening(p)]
    if busy:
        raise BenchError(f"port(s) {busy} on loopback already in use (a leftover run?)")


# ------------------------------------------------------------------ linksim

class Linksim:
    def __init__(self, procs, cmd, name, listen_port, to_port, a):
        self.out = os.path.join(procs.logdir, f"{name}.stats")
        self.procs = procs
        argv = cmd + ["--listen", f"127.0.0.1:{listen_port}", "--to", f"127.0.0.1:{to_port}",
                      "--rate", str(a.rate), "--delay", str(a.delay_ms),
                      "--mss", str(a.mss), "--overhead", str(a.overhead)]
        self.proc = procs.start(name, argv, stdout=self.out)
        wait_listening([listen_port], self.proc, name)

    def _lines(self):
        with open(self.out) as f:
            return [m.groups() for m in map(STATS_RE.search, f) if m]

    @staticmethod
    def _stats(g):
        return {"up_bytes": int(g[0]), "up_segments": int(g[1]), "up_secs": float(g[2]),
                "down_bytes": int(g[3]), "down_segments": int(g[4]), "down_secs": float(g[5])}

    def _wait_line(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            lines = self._lines()
            if len(lines) > n:
                return self._stats(lines[n])
            if time.monotonic() > deadline:
                raise BenchError(f"linksim gave no stats line (see {self.out})")
            time.sleep(0.01)

    def count(self):
        return len(self._lines())

    def line(self, n, timeout=10.0):
        """Stats line n (0-based), waiting for it to appear."""
        return self._wait_line(n, timeout)

    def snapshot(self):
        n = len(self._lines())
        self.proc.send_signal(signal.SIGUSR1)
        return self._wait_line(n)

    def stop(self):
        n = len(self._lines())
        self.procs.stop(self.proc)
        return self._wait_line(n, timeout=1.0)


def add_stats(a, b, sign=1):
    return {k: a[k] + sign * b[k] for k in a}


ZERO = {"up_bytes": 0, "up_segments": 0, "up_secs": 0.0,
        "down_bytes": 0, "down_segments": 0, "down_secs": 0.0}


# ------------------------------------------------------------------ workload

def sum_stats(stats):
    out = ZERO
    for st in stats:
        out = add_stats(out, st)
    return out


def run_session(a, ports, logdir, name, links):
    """The mail session, with a link snapshot of every linksim in links
    before it and after each protocol (mail_session signals them), so link
    figures split per protocol."""
    start = sum_stats(ln.snapshot() for ln in links)
    base = [ln.count() for ln in links]
    argv = [sys.executable, os.path.join(HERE, "mail_session.py"),
            "--peers", os.path.join(a.state, "peers"), "--messages", str(a.messages),
            "--signal", ",".join(str(ln.proc.pid) for ln in links)]
    for s in SERVICES:
        argv += [f"--{s}", f"127.0.0.1:{ports[s]}"]
    log(f"{name}: running the mail session")
    with open(os.path.join(logdir, f"{name}.session.log"), "wb") as err:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        raise BenchError(f"{name}: mail session crashed (see {logdir}/{name}.session.log)")
    if not out.get("ok"):
        raise BenchError(f"{name}: mail session failed: {out.get('error')}")
    phases, prev = {}, start
    for i, ph in enumerate(SERVICES):
        cur = sum_stats(ln.line(b + i) for ln, b in zip(links, base))
        phases[ph] = add_stats(cur, prev, -1)
        prev = cur
    out["phases"] = phases
    out["link"] = add_stats(prev, start, -1)
    return out


def run_ttfb(a, port, logdir, name, links):
    """Last phase: time to the first byte of bob's big message, RETR aborted
    mid-message, then a short POP3 session to check the path recovered."""
    settle(a)
    start = sum_stats(ln.snapshot() for ln in links)
    argv = [sys.executable, os.path.join(HERE, "mail_session.py"), "--ttfb",
            "--peers", os.path.join(a.state, "peers"), "--pop3", f"127.0.0.1:{port}",
            "--ttfb-message", str(a.ttfb_message), "--recover-timeout", str(a.recover_timeout)]
    log(f"{name}: time to first byte of POP3 RETR {a.ttfb_message} (bob), then a recovery check")
    with open(os.path.join(logdir, f"{name}.ttfb.log"), "wb") as err:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {"ok": False, "error": f"crashed (see {logdir}/{name}.ttfb.log)"}
    out["link"] = add_stats(sum_stats(ln.snapshot() for ln in links), start, -1)
    return out


def ttfb_safely(a, port, logdir, name, links):
    if a.no_ttfb:
        return None
    try:
        return run_ttfb(a, port, logdir, name, links)
    except BenchError as e:
        return {"ok": False, "error": str(e)}


# straw client: one line per finished accelerated local connection.
DONE_RE = re.compile(r"connection done .*service=(\w+) link_waits=(\d+) local_replies=(\d+)")


def straw_done_lines(path):
    try:
        with open(path, errors="replace") as f:
            return [(m.group(1), int(m.group(2)), int(m.group(3)))
                    for m in map(DONE_RE.search, f) if m]
    except FileNotFoundError:
        return []


def straw_waits(path, since, want, timeout=10.0):
    """{service: {"link_waits", "local_replies", "connections"}} from the done
    lines after the first `since`, waiting until every service in want has
    one (a connection is logged when straw forgets its stream)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {}
        for svc, w, r in straw_done_lines(path)[since:]:
            g = got.setdefault(svc, {"link_waits": 0, "local_replies": 0, "connections": 0})
            g["link_waits"] += w
            g["local_replies"] += r
            g["connections"] += 1
        if all(got.get(s, {}).get("connections", 0) >= n for s, n in want.items()) \
                or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def warm_up(a, ports, logdir, name):
    """--warm: one short connection per mail service before the session,
    counted as setup (straw caches greetings/capabilities and primes its
    codec on first use)."""
    argv = [sys.executable, os.path.join(HERE, "mail_session.py"), "--warm",
            "--peers", os.path.join(a.state, "peers")]
    for s in ("pop3", "imap", "smtp"):
        argv += [f"--{s}", f"127.0.0.1:{ports[s]}"]
    log(f"{name}: warm-up (greetings, capabilities)")
    t0 = time.monotonic()
    with open(os.path.join(logdir, f"{name}.warm.log"), "wb") as err:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        raise BenchError(f"{name}: warm-up crashed (see {logdir}/{name}.warm.log)")
    if not out.get("ok"):
        raise BenchError(f"{name}: warm-up failed: {out.get('error')}")
    settle(a)
    return time.monotonic() - t0


def wait_straw_ready(clog, proc, services, timeout=180.0):
    """Until the client log says the tunnel is up and each service's cache
    was warmed (a fresh install warms them when the link comes up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(clog, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        up = re.search(r"tunnel to \S+ up", text) is not None
        if up and all(f"service {s}: cache warm" in text for s in services):
            return
        if proc.poll() is not None:
            raise BenchError(f"straw client exited (status {proc.returncode}) during setup")
        if time.monotonic() > deadline:
            raise BenchError(f"straw client not ready after {timeout:.0f}s (see {clog})")
        time.sleep(0.05)


def settle(a):
    # Let anything still in flight after setup (e.g. a lazy handshake's reply)
    # land before the session starts, so setup and session don't overlap.
    time.sleep(2 * a.delay / 1000.0 + 0.5)


# --------------------------------------------------------------------- ways

def way_direct(a, procs, cmd):
    ensure_free(DIRECT_LINK.values())
    links = {s: Linksim(procs, cmd, f"direct-link-{s}", DIRECT_LINK[s], UPSTREAM[s], a)
             for s in SERVICES}
    try:
        out = run_session(a, DIRECT_LINK, procs.logdir, "direct", list(links.values()))
        ttfb = ttfb_safely(a, DIRECT_LINK["pop3"], procs.logdir, "direct", list(links.values()))
    finally:
        for s in SERVICES:
            links[s].stop()
    return way_result(out, ttfb, None)


def way_result(out, ttfb, setup, waits=None):
    """Direct and ssh: every client turn crosses the link, so waits = turns."""
    return {"seconds": out["seconds"], "link": out["link"], "phases": out["phases"],
            "turns": out["turns"], "waits": waits or dict(out["turns"]),
            "payload_bytes": out["bytes"],
            "ttfb": ttfb, "setup": setup}


def ensure_sshd_installed():
    if os.path.exists("/usr/sbin/sshd") and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return
    if os.geteuid() != 0:
        raise BenchError("openssh-server is not installed and we are not root to install it")
    log("installing openssh-server")
    # Keep the package's own sshd on port 22 from starting.
    own_policy = not os.path.exists("/usr/sbin/policy-rc.d")
    if own_policy:
        with open("/usr/sbin/policy-rc.d", "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod("/usr/sbin/policy-rc.d", 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "openssh-server", "openssh-client"], check=True, env=env, stdout=sys.stderr)
    except subprocess.CalledProcessError as e:
        raise BenchError(f"installing openssh-server failed: {e}")
    finally:
        if own_policy:
            os.unlink("/usr/sbin/policy-rc.d")


def sshd_setup(a):
    """Own host key, client key, authorized_keys, known_hosts and sshd_config."""
    d = os.path.join(a.state, "bench", "ssh")
    os.makedirs(d, exist_ok=True)
    for key in ("host_ed25519", "client_ed25519"):
        p = os.path.join(d, key)
        if not os.path.exists(p):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"straw-bench-{key}",
                            "-f", p], check=True)
    with open(os.path.join(d, "client_ed25519.pub")) as f:
        client_pub = f.read()
    with open(os.path.join(d, "authorized_keys"), "w") as f:
        f.write(client_pub)
    with open(os.path.join(d, "host_ed25519.pub")) as f:
        host_pub = " ".join(f.read().split()[:2])
    with open(os.path.join(d, "known_hosts"), "w") as f:
        f.write(f"straw-bench-sshd {host_pub}\n")
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write(f"""# Generated by scripts/bench: loopback only, key auth only.
ListenAddress 127.0.0.1:{SSHD_PORT}
HostKey {d}/host_ed25519
AuthorizedKeysFile {d}/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowTcpForwarding local
X11Forwarding no
PrintMotd no
Compression yes
LogLevel INFO
""")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    return d


def stop_stale_sshd(pidfile, cfg):
    """A run killed with SIGKILL leaves its sshd behind: stop exactly that one."""
    try:
        with open(pidfile) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            ours = cfg.encode() in f.read()
    except (OSError, ValueError):
        ours = False
    if ours:
        log(f"stopping a leftover sshd (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
    if os.path.exists(pidfile):
        os.unlink(pidfile)


def way_ssh(a, procs, cmd):
    ensure_sshd_installed()
    d = sshd_setup(a)
    cfg = os.path.join(d, "sshd_config")
    stop_stale_sshd(os.path.join(d, "sshd.pid"), cfg)
    ensure_free([SSHD_PORT, SSH_LINK, *SSH_FWD.values()])
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", cfg], check=True)
    # sshd must be started by absolute path (it re-execs itself).
    sshd = procs.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", cfg])
    with open(os.path.join(d, "sshd.pid"), "w") as f:
        f.write(f"{sshd.pid}\n")
    try:
        wait_listening([SSHD_PORT], sshd, "sshd")
        link = Linksim(procs, cmd, "ssh-link", SSH_LINK, SSHD_PORT, a)
        argv = ["ssh", "-N", "-C", "-F", "/dev/null", "-p", str(SSH_LINK),
                "-i", os.path.join(d, "client_ed25519"),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "HostKeyAlias=straw-bench-sshd",
                "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
                "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=0",
                "-o", "ConnectTimeout=600"]
        for s in SERVICES:
            argv += ["-L", f"127.0.0.1:{SSH_FWD[s]}:127.0.0.1:{UPSTREAM[s]}"]
        argv.append(f"{pwd.getpwuid(os.getuid()).pw_name}@127.0.0.1")
        log("ssh: connecting through the link")
        t0 = time.monotonic()
        ssh = procs.start("ssh", argv)
        wait_listening(SSH_FWD.values(), ssh, "ssh", timeout=600)
        setup_secs = time.monotonic() - t0
        settle(a)
        warm_secs = warm_up(a, SSH_FWD, procs.logdir, "ssh") if a.warm else None
        setup_link = link.snapshot()
        try:
            out = run_session(a, SSH_FWD, procs.logdir, "ssh", [link])
            ttfb = ttfb_safely(a, SSH_FWD["pop3"], procs.logdir, "ssh", [link])
        finally:
            procs.stop(ssh)
            link.stop()
    finally:
        procs.stop(sshd)
        os.unlink(os.path.join(d, "sshd.pid"))
    return way_result(out, ttfb, {"seconds": setup_secs, "link": setup_link, "warm_seconds": warm_secs})


def find_straw(a):
    cands = [a.straw, os.environ.get("STRAW_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "straw"))
    cands.append(os.path.join(REPO, "target", "release", "straw"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


def has_cmd(binary, sub, needs=""):
    """True if `binary sub --help` works and mentions `needs` (a placeholder
    subcommand without the expected options doesn't count)."""
    if not binary:
        return False
    r = subprocess.run([binary, sub, "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    return r.returncode == 0 and needs in r.stdout


def idle_flood(straw):
    """`straw bench idle-flood`: the time a client's tunnel takes to come up
    while 2,000 idle unauthenticated connections from 64 addresses are held
    (and reopened when closed, for 3 s) against a server whose fd limit is
    1,024 (soft and hard). Issue 12's target: under 2 s."""
    if not has_cmd(straw, "bench", "idle-flood"):
        log("idle-flood: skipped (no straw bench idle-flood)")
        return {"ok": False, "skipped": "no straw bench idle-flood"}
    r = subprocess.run([straw, "bench", "idle-flood", "--json", "--reopen-secs", "3",
                        "--tries", "3", "--sources", "64"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                       timeout=180)
    lines = r.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if lines else {}
    except ValueError:
        out = {}
    out["ok"] = r.returncode == 0
    if out["ok"]:
        log(f"idle-flood: tunnel up in {out['tunnel_up_max_secs']:.3f} s (max of "
            f"{len(out['tunnel_up_secs'])}) through {out['connected']} idle connections, "
            f"server fd limit {out['fd_limit']}; target < {out['target_secs']:g} s")
    else:
        out["error"] = r.stderr.strip()[-2000:]
        log(f"idle-flood: FAILED: {out['error']}")
    return out


def control_flood(straw):
    """`straw bench flood --sink-streams 0`: an authorised client floods a
    real server with PINGs, empty DATA frames and OPENs past max_streams
    while another tunnel's 100-byte echo is timed. Issue 12's line: the
    server's RSS stays within its budget, the echo p99 under 100 ms."""
    if not has_cmd(straw, "bench", "flood"):
        log("flood: skipped (no straw bench flood)")
        return {"ok": False, "skipped": "no straw bench flood"}
    r = subprocess.run([straw, "bench", "flood", "--secs", "15", "--sink-streams", "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, text=True, timeout=180)
    for line in r.stdout.strip().splitlines():
        log(f"flood: {line}")
    out = {"ok": r.returncode == 0, "report": r.stdout}
    if not out["ok"]:
        out["error"] = r.stderr.strip()[-2000:]
        log(f"flood: FAILED: {out['error']}")
    return out


def straw_setup(a, straw):
    d = os.path.join(a.state, "bench", "straw")
    os.makedirs(d, exist_ok=True)
    shutil.rmtree(os.path.join(d, "partial"), ignore_errors=True)
    for key in ("server.key", "client.key"):
        if not (os.path.exists(os.path.join(d, key)) and os.path.exists(os.path.join(d, key + ".pub"))):
            subprocess.run([straw, "keygen", os.path.join(d, key)], check=True,
                           stdout=subprocess.DEVNULL)
    with open(os.path.join(d, "client.key.pub")) as f:
        client_pub = f.read().strip()
    with open(os.path.join(d, "authorized_clients"), "w") as f:
        f.write(client_pub + "\n")
    lines = ["# Generated by scripts/bench.",
             f'listen = "127.0.0.1:{STRAW_SERVER}"',
             'private_key = "server.key"',
             'authorized_keys = "authorized_clients"',
             "", "[services]"]
    lines += [f'{s} = {{ upstream = "127.0.0.1:{UPSTREAM[s]}", protocol = '
              f'"{straw_proto(a, s)}" }}'
              for s in SERVICES]
    session = ["", "[session]"] + a.session_opt if a.session_opt else []
    with open(os.path.join(d, "server.toml"), "w") as f:
        f.write("\n".join(lines + session) + "\n")
    lines = ["# Generated by scripts/bench.",
             f'server = "127.0.0.1:{STRAW_LINK}"',
             'server_public_key = "server.key.pub"',
             'private_key = "client.key"',
             "# A fresh install: nothing cached, nothing half-fetched from an earlier run.",
             "[cache]", "persist = false",
             "[partial]", 'dir = "partial"']
    for s in SERVICES:
        proto = straw_proto(a, s)
        lines += ["", "[[service]]", f'name = "{s}"', f'protocol = "{proto}"',
                  f'listen = "127.0.0.1:{STRAW_LOCAL[s]}"']
    extra = ["", "# --client-toml"] + a.client_toml if a.client_toml else []
    with open(os.path.join(d, "client.toml"), "w") as f:
        f.write("\n".join(lines + session + extra) + "\n")
    return d


# straw's accelerators per service; the workload's HTTP GET is origin-form
# (not a proxy request), so it rides a plain `tcp` service.
ACCELERATED = {"pop3": "pop3", "imap": "imap", "smtp": "smtp", "http": "tcp"}


def straw_proto(a, service):
    return ACCELERATED[service] if a.straw_protocol == "auto" else a.straw_protocol


def way_straw(a, procs, cmd, straw):
    d = straw_setup(a, straw)
    ensure_free([STRAW_SERVER, STRAW_LINK, *STRAW_LOCAL.values()])
    env = dict(os.environ)
    env.setdefault("STRAW_LOG", "info")
    server = procs.start("straw-server", [straw, "server", "--config", os.path.join(d, "server.toml")],
                         env=env)
    try:
        wait_listening([STRAW_SERVER], server, "straw server")
        link = Linksim(procs, cmd, "straw-link", STRAW_LINK, STRAW_SERVER, a)
        log("straw: starting the client")
        t0 = time.monotonic()
        client = procs.start("straw-client",
                             [straw, "client", "--config", os.path.join(d, "client.toml")], env=env)
        wait_listening(STRAW_LOCAL.values(), client, "straw client", timeout=600)
        # Like ssh's setup (connect, key exchange, auth): until the tunnel is
        # up and straw has warmed its caches (greetings, capabilities).
        clog = os.path.join(procs.logdir, "straw-client.log")
        wait_straw_ready(clog, client, [s for s in SERVICES if straw_proto(a, s) != "tcp"])
        setup_secs = time.monotonic() - t0
        settle(a)
        warm_secs = warm_up(a, STRAW_LOCAL, procs.logdir, "straw") if a.warm else None
        if client.poll() is not None:
            raise BenchError(f"straw client exited (status {client.returncode})")
        setup_link = link.snapshot()
        try:
            n0 = len(straw_done_lines(clog))
            out = run_session(a, STRAW_LOCAL, procs.logdir, "straw", [link])
            sw = straw_waits(clog, n0, {s: 1 for s in SERVICES if straw_proto(a, s) != "tcp"})
            n1 = len(straw_done_lines(clog))
            ttfb = ttfb_safely(a, STRAW_LOCAL["pop3"], procs.logdir, "straw", [link])
            if ttfb is not None and straw_proto(a, "pop3") != "tcp":
                ttfb["straw_waits"] = straw_waits(clog, n1, {"pop3": 2}).get("pop3")
            if ttfb is not None:
                ttfb["alive"] = {"client": client.poll() is None, "server": server.poll() is None}
        finally:
            procs.stop(client)
            link.stop()
    finally:
        procs.stop(server)
    # straw counts the waits of its accelerated services itself; http rides a
    # plain tcp stream, where every client turn is one link wait.
    waits = {s: out["turns"][s] if straw_proto(a, s) == "tcp" else
             sw[s]["link_waits"] if s in sw else None for s in SERVICES}
    waits["total"] = None if None in waits.values() else sum(waits[s] for s in SERVICES)
    w = way_result(out, ttfb, {"seconds": setup_secs, "link": setup_link, "warm_seconds": warm_secs},
                   waits)
    w["straw_waits"] = sw
    return w


# -------------------------------------------------------------------- report

def link_bytes(w):
    return w["link"]["up_bytes"] + w["link"]["down_bytes"]


def phase_bytes(w, ph):
    if ph == "total":
        return link_bytes(w)
    st = w.get("phases", {}).get(ph)
    return None if st is None else st["up_bytes"] + st["down_bytes"]


def ratios(ways):
    out = {}
    st = ways.get("straw")
    for other in ("direct", "ssh"):
        o = ways.get(other)
        if not (st and st.get("ok") and o and o.get("ok")):
            continue
        r = {"seconds": st["seconds"]["total"] / o["seconds"]["total"],
             "bytes": link_bytes(st) / max(1, link_bytes(o))}
        if o["setup"] and st["setup"]:
            so = o["seconds"]["total"] + o["setup"]["seconds"]
            ss = st["seconds"]["total"] + st["setup"]["seconds"]
            bo = link_bytes(o) + o["setup"]["link"]["up_bytes"] + o["setup"]["link"]["down_bytes"]
            bs = link_bytes(st) + st["setup"]["link"]["up_bytes"] + st["setup"]["link"]["down_bytes"]
            r["seconds_with_setup"] = ss / so
            r["bytes_with_setup"] = bs / max(1, bo)
        phases = {}
        for ph in SERVICES:
            if ph in st["seconds"] and ph in o["seconds"]:
                pr = {"seconds": st["seconds"][ph] / max(1e-9, o["seconds"][ph])}
                bs, bo = phase_bytes(st, ph), phase_bytes(o, ph)
                if bs is not None and bo is not None:
                    pr["bytes"] = bs / max(1, bo)
                phases[ph] = pr
        if phases:
            r["phases"] = phases
        out[f"straw/{other}"] = r
    return out


# Issue 15's targets: the whole mail session's time (setup not counted on
# either side), straw's down-link bytes per IP packet (headers included), and
# the recovery after an abandoned big RETR no slower than direct.
TARGETS = {"straw/direct": 0.18, "straw/ssh": 0.40}
MIN_DOWN_BYTES_PER_PACKET = 400


def per_packet(ln, direction, overhead):
    """Link bytes per IP packet (segment payload plus `overhead` header)."""
    segs = ln[f"{direction}_segments"]
    return (ln[f"{direction}_bytes"] + overhead * segs) / segs if segs else None


def targets(rat, ways=None, overhead=40):
    out = {k: {"ratio": rat[k]["seconds"], "max": m, "pass": rat[k]["seconds"] <= m}
           for k, m in TARGETS.items() if k in rat}
    st = (ways or {}).get("straw")
    if st and st.get("ok"):
        bpp = per_packet(st["link"], "down", overhead)
        if bpp is not None:
            out["down B/packet"] = {"value": bpp, "min": MIN_DOWN_BYTES_PER_PACKET,
                                    "pass": bpp >= MIN_DOWN_BYTES_PER_PACKET}
        rs = ((st.get("ttfb") or {}).get("recover") or {})
        rd = (((ways.get("direct") or {}).get("ttfb") or {}).get("recover") or {})
        if rs.get("ok") and rd.get("ok"):
            out["recovery straw/direct"] = {"ratio": rs["seconds"] / max(1e-9, rd["seconds"]),
                                            "max": 1.0,
                                            "pass": rs["seconds"] <= rd["seconds"]}
    return out


NAMES = {"direct": "direct", "ssh": "ssh -C", "straw": "straw"}

# The reference link's price: Iridium bills $1.50 for every started minute.
COST_PER_MINUTE = 1.50


def call_cost(seconds, per_minute=COST_PER_MINUTE):
    """What a call of `seconds` costs, billed per started minute."""
    return math.ceil(max(0.0, seconds) / 60.0 - 1e-9) * per_minute


def way_cost(w):
    """(session, session + setup) cost of a way: its seconds as one call."""
    secs = w["seconds"]["total"]
    setup = (w.get("setup") or {}).get("seconds") or 0.0
    return call_cost(secs), call_cost(secs + setup)


def fmt(v, spec, width):
    return f"{'-':>{width}}" if v is None else f"{v:{width}{spec}}"


def table(res):
    p = res["params"]
    lines = [f"straw bench: {p['rate']} bit/s, {p['delay_ms']:g} ms one way, mss {p['mss']}, "
             f"overhead {p['overhead']} B/segment; POP3 RETR x{p['messages']}; "
             f"linksim: {res['linksim']}" + ("; warm (ssh/straw warmed up in setup)" if p.get("warm") else "")]
    ways = res["ways"]
    ok = [k for k, w in ways.items() if w.get("ok")]
    for k, w in ways.items():
        if not w.get("ok"):
            lines.append(f"{NAMES[k]:<8} {'FAILED' if 'error' in w else 'skipped'}: "
                         f"{w.get('error') or w.get('skipped')}")
    rat = res.get("ratios", {})
    rkeys = [k for k in ("straw/direct", "straw/ssh") if k in rat]
    if ok:
        lines += ["", "per protocol: seconds, link bytes (up+down payload), waits (request->reply "
                  "turns that crossed the link)"]
        head1 = f"{'':<6}"
        head2 = f"{'proto':<6}"
        for k in ok:
            head1 += f" | {NAMES[k]:^24}"
            head2 += f" | {'s':>7} {'link B':>8} {'waits':>7}"
        for k in rkeys:
            head1 += f" | {k:^13}"
            head2 += f" | {'s':>6} {'B':>6}"
        lines += [head1, head2]
        for ph in SERVICES + ["total"]:
            row = f"{ph:<6}"
            for k in ok:
                w = ways[k]
                row += (f" | {fmt(w['seconds'].get(ph), '.1f', 7)} {fmt(phase_bytes(w, ph), 'd', 8)}"
                        f" {fmt(w.get('waits', {}).get(ph), 'd', 7)}")
            for k in rkeys:
                r = rat[k] if ph == "total" else rat[k].get("phases", {}).get(ph, {})
                row += f" | {fmt(r.get('seconds'), '.2f', 6)} {fmt(r.get('bytes'), '.2f', 6)}"
            lines.append(row)
        st = ways.get("straw")
        if st and st.get("ok") and st.get("turns"):
            t = st["turns"]
            sw = st.get("straw_waits", {})
            lines.append("straw waits: counted by straw client (accelerated services; http = client "
                         "turns); the mail programs' own turns through straw: "
                         + ", ".join(f"{ph} {t[ph]}" for ph in SERVICES)
                         + "; answered locally by straw: "
                         + ", ".join(f"{ph} {sw[ph]['local_replies']}" for ph in SERVICES if ph in sw))
        lines += ["", f"{'way':<8} {'up B':>8} {'down B':>8} {'up segs':>8} {'dn segs':>8}"
                  f" {'B/pkt up':>8} {'B/pkt dn':>8}"
                  f" {'link s up':>10} {'link s dn':>10} {'mail B':>8} {'mail/link':>9}"
                  f" {'$ call':>7} {'$ +setup':>8}  (session totals; segs = IP packets;"
                  f" B/pkt = link bytes per packet, headers included; mail B = what the programs sent"
                  f" and got; $ = the session as one call at ${COST_PER_MINUTE:.2f} per started minute)"]
        for k in ok:
            ln = ways[k]["link"]
            pb = sum(ways[k].get("payload_bytes", {}).get(s, 0) for s in SERVICES) or None
            lines.append(f"{NAMES[k]:<8} {ln['up_bytes']:8d} {ln['down_bytes']:8d} "
                         f"{ln['up_segments']:8d} {ln['down_segments']:8d} "
                         f"{fmt(per_packet(ln, 'up', p['overhead']), '.0f', 8)} "
                         f"{fmt(per_packet(ln, 'down', p['overhead']), '.0f', 8)} "
                         f"{ln['up_secs']:10.1f} {ln['down_secs']:10.1f} {fmt(pb, 'd', 8)} "
                         f"{fmt(pb and pb / max(1, link_bytes(ways[k])), '.2f', 9)} "
                         f"{way_cost(ways[k])[0]:7.2f} {way_cost(ways[k])[1]:8.2f}")
    tt = [(k, ways[k]["ttfb"]) for k in ok if ways[k].get("ttfb")]
    if tt:
        size = next((t.get("message_size") for _, t in tt if t.get("message_size")), None)
        lines += ["", f"big message (POP3 RETR {p.get('ttfb_message', 11)} of bob, "
                  f"{size or '?'} B), read up to the first body line, then closed; "
                  "not in the session figures:",
                  f"{'way':<8} {'+OK s':>7} {'1st byte s':>10} {'1st line s':>10} {'link B':>8}"
                  f"  recovery (POP3 login+STAT+QUIT after the abort)"]
        for k, t in tt:
            if not t.get("ok"):
                lines.append(f"{NAMES[k]:<8} FAILED: {t.get('error')}")
                continue
            rc = t.get("recover", {})
            rtxt = (f"ok in {rc['seconds']:.1f} s" if rc.get("ok")
                    else f"FAILED after {rc.get('seconds', 0):.1f} s: {rc.get('error', rc)}")
            if "alive" in t and not all(t["alive"].values()):
                rtxt += f"; straw processes alive: {t['alive']}"
            ln = t.get("link", ZERO)
            lines.append(f"{NAMES[k]:<8} {t['ok_seconds']:7.1f} {t['first_byte_seconds']:10.1f} "
                         f"{t['first_line_seconds']:10.1f} {ln['up_bytes'] + ln['down_bytes']:8d}  {rtxt}")
    setups = [(NAMES[k], w["setup"]) for k, w in ways.items() if w.get("ok") and w["setup"]]
    if setups:
        lines += ["", "setup (not in the figures above: connect, key exchange, auth; ssh until the "
                  "forwarded ports accept, straw until the tunnel is up and its caches are warm):"]
        for n, st in setups:
            ln = st["link"]
            warm = f" (+ warm-up {st['warm_seconds']:.1f} s)" if st.get("warm_seconds") else ""
            lines.append(f"  {n:<8} {st['seconds']:7.1f} s{warm}   up {ln['up_bytes']} B, "
                         f"down {ln['down_bytes']} B, link s {ln['up_secs']:.1f}/{ln['down_secs']:.1f}")
    if rat:
        lines += ["", f"{'ratio':<14} {'seconds':>8} {'bytes':>8} {'s+setup':>8} {'B+setup':>8}"]
        for k, r in rat.items():
            extra = ""
            if "seconds_with_setup" in r:
                extra = f" {r['seconds_with_setup']:8.2f} {r['bytes_with_setup']:8.2f}"
            lines.append(f"{k:<14} {r['seconds']:8.2f} {r['bytes']:8.2f}{extra}")
    tg = res.get("targets") or {}
    if tg:
        lines += ["", "TARGET (issue 15; session time without setup on either side; IP packets "
                  "with their headers):"]
        for k, t in tg.items():
            if "min" in t:
                lines.append(f"  {k:<22} {t['value']:6.0f}  (target >= {t['min']})  "
                             f"{'PASS' if t['pass'] else 'MISS'}")
            else:
                lines.append(f"  {k:<22} {t['ratio']:6.2f}  (target <= {t['max']:.2f})  "
                             f"{'PASS' if t['pass'] else 'MISS'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main

def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("--rate", type=int, default=int(env("STRAW_BENCH_RATE", "2400")),
                    help="link rate, bit/s (env STRAW_BENCH_RATE; default 2400)")
    ap.add_argument("--delay", type=int, default=int(env("STRAW_BENCH_DELAY", "500")),
                    help="one-way delay, ms (env STRAW_BENCH_DELAY; default 500)")
    ap.add_argument("--mss", type=int, default=536)
    ap.add_argument("--client-toml", action="append", default=[], metavar="LINE",
                    help="a line appended to straw's client.toml (repeatable), e.g. '[imap]' "
                         "then 'prefetch_select = false'")
    ap.add_argument("--session-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a line for both straw configs' [session] (repeatable), e.g. inflight_secs=3")
    ap.add_argument("--overhead", type=int, default=40)
    ap.add_argument("--messages", type=int, default=None, help="POP3 messages to RETR (default 10)")
    ap.add_argument("--quick", action="store_true", help="2 POP3 messages instead of 10")
    ap.add_argument("--no-direct", action="store_true")
    ap.add_argument("--no-ssh", action="store_true")
    ap.add_argument("--no-straw", action="store_true")
    ap.add_argument("--straw", help="straw binary (default: $STRAW_BIN, "
                    "$CARGO_TARGET_DIR/release/straw, target/release/straw)")
    ap.add_argument("--straw-protocol", default="auto",
                    help="protocol for every straw service (auto: pop3/imap/smtp accelerators, tcp for http)")
    ap.add_argument("--warm", action="store_true",
                    help="ssh and straw: one short connection per mail service (greeting, capabilities) "
                    "before the session, counted as setup: a proxy that has run a while")
    ap.add_argument("--no-ttfb", action="store_true",
                    help="skip the big-message phase (time to first byte of a ~300 KB RETR)")
    ap.add_argument("--ttfb-message", type=int, default=11,
                    help="bob's POP3 message for the time-to-first-byte phase (default 11, ~300 KB)")
    ap.add_argument("--recover-timeout", type=float, default=120.0,
                    help="seconds per socket operation of the check after the aborted RETR")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--no-idle-flood", action="store_true",
                    help="skip `straw bench idle-flood` (tunnels through 2,000 idle "
                         "connections, server fd limit 1,024; about 4 s)")
    ap.add_argument("--state", default=env("STRAW_STATE") or os.path.join(REPO, ".state"))
    a = ap.parse_args()
    a.messages = a.messages or (2 if a.quick else 10)
    a.delay_ms = a.delay
    a.state = os.path.abspath(a.state)
    os.environ["STRAW_STATE"] = a.state
    if a.rate < 1 or a.delay < 0 or a.messages < 1 or a.mss < 1:
        ap.error("rate, mss and messages must be positive, delay not negative")

    logdir = os.path.join(a.state, "bench", "logs")
    os.makedirs(logdir, exist_ok=True)
    # `peers up` reseeds the Maildirs, which would break a concurrent run's session.
    lock = open(os.path.join(a.state, "bench", "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another scripts/bench is running on {a.state}")
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    procs = Procs(logdir)
    peers = env("STRAW_PEERS_CMD") or os.path.join(REPO, "scripts", "peers")
    peers_started = False
    rc = 0
    try:
        if not os.access(peers, os.X_OK):
            raise BenchError(f"{peers} not found: the peer servers come from scripts/peers")
        was_up = subprocess.run([peers, "status"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode == 0
        subprocess.run([peers, "up"], check=True, stdout=sys.stderr)
        peers_started = not was_up

        straw = find_straw(a)
        # Every way runs over `straw linksim`, the direct and ssh ones too.
        if not has_cmd(straw, "linksim", "--rate"):
            raise BenchError("no straw binary with a linksim command "
                             "(cargo build --release -p straw-cli, or --straw PATH)")
        cmd, lname = [straw, "linksim"], "straw linksim"
        log(f"link: {a.rate} bit/s, {a.delay:g} ms one way; linksim: {lname}")

        res = {"params": {"rate": a.rate, "delay_ms": a.delay, "mss": a.mss,
                          "overhead": a.overhead, "messages": a.messages,
                          "ttfb_message": None if a.no_ttfb else a.ttfb_message, "warm": a.warm},
               "linksim": lname, "ways": {}}
        plan = [("direct", not a.no_direct), ("ssh", not a.no_ssh), ("straw", not a.no_straw)]
        for name, on in plan:
            if not on:
                continue
            if name == "straw" and not has_cmd(straw, "server", "--config"):
                res["ways"][name] = {"ok": False, "skipped": "no straw binary with a server command "
                                     "(cargo build --release -p straw-cli, or --straw PATH)"}
                log(f"straw: skipped ({res['ways'][name]['skipped']})")
                continue
            log(f"{name}: start")
            try:
                if name == "direct":
                    w = way_direct(a, procs, cmd)
                elif name == "ssh":
                    w = way_ssh(a, procs, cmd)
                else:
                    w = way_straw(a, procs, cmd, straw)
                w["ok"] = True
                log(f"{name}: {w['seconds']['total']:.1f} s, "
                    f"{link_bytes(w)} link bytes")
            except (BenchError, subprocess.CalledProcessError, OSError) as e:
                w = {"ok": False, "error": str(e)}
                log(f"{name}: FAILED: {e}")
                rc = 1
            finally:
                procs.stop_all()
            res["ways"][name] = w
        if not a.no_idle_flood:
            res["idle_flood"] = idle_flood(straw)
            if not res["idle_flood"].get("ok"):
                rc = 1
            res["flood"] = control_flood(straw)
            if not res["flood"].get("ok"):
                rc = 1
        res["ratios"] = ratios(res["ways"])
        res["targets"] = targets(res["ratios"], res["ways"], a.overhead)
        print(table(res), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)
                f.write("\n")
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        rc = 130
    finally:
        procs.stop_all()
        if peers_started:
            subprocess.run([peers, "down"], stdout=sys.stderr, stderr=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
