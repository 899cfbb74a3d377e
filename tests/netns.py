"""Network namespaces for tests: separate "hosts" joined by veth pairs, and real network faults.

A ``Net`` is a hub namespace (the broker's) with a bridge, and spokes (``add``), each joined
to the hub by a veth pair, on 10.77.0.0/24: the hub is 10.77.0.1, spoke *n* is 10.77.0.(10+n).
Programs run inside a namespace with ``run_in(ns, argv)`` (``ip netns exec``): nothing in
the test's own namespace ever connects to these addresses, whose traffic stays in the
namespaces.  ``cut(spoke, mode)`` breaks a spoke's link to the hub, ``heal(spoke)`` mends it:

- ``drop``: nftables drops every packet both ways (a blackhole; TCP retransmits into it);
- ``reset``: nftables answers every TCP packet either side sends with a reset, to the sender
  (both sides see ECONNRESET, new connections are refused);
- ``down``: the spoke's end of the veth pair is taken down (``ip link set ... down``).

The nftables rules live in a table of the namespace's own (``inet corral_cut``), in the hub and
in the spoke; ``close()`` stops every process started here (by PID) and deletes the namespaces,
which takes their links and tables with them.  Names hold this process's pid and a counter:
concurrent test sessions do not meet.

Namespaces need root, ``ip`` (iproute2) and ``nft`` (nftables): ``unavailable()`` says why
they cannot be made here, or None (``.ci/netns-setup`` installs both).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time

import psutil

SUBNET = "10.77.0"
HUB_IP = f"{SUBNET}.1"
TABLE = "corral_cut"
MODES = ("drop", "reset", "down")
_serial = itertools.count(1)
_unavailable: list = []  # the probe's answer, once


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (a reason to skip), or None."""
    if not _unavailable:
        _unavailable.append(_probe())
    return _unavailable[0]


def _probe() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (run .ci/netns-setup as root, then the tests as root)"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (.ci/netns-setup installs iproute2 and nftables)"
    name = f"corral-probe-{os.getpid()}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        rules = _run(["ip", "netns", "exec", name, "nft", "add", "table", "inet", TABLE], check=False)
        if rules.returncode != 0:
            return f"nftables does not work in a network namespace: {rules.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def _run(argv: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check)


def namespaces() -> set[str]:
    """The names of the network namespaces there are (``ip netns list``)."""
    return {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()}


class Spoke:
    """A namespace joined to the hub: ``ns`` its name, ``ip`` its address, ``dev`` its end of the link."""

    def __init__(self, ns: str, ip: str, dev: str, port: str):
        self.ns, self.ip, self.dev, self.port = ns, ip, dev, port
        self.cut: str | None = None  # the mode of the fault on its link, if any

    def __repr__(self) -> str:
        return f"Spoke({self.ns}, {self.ip}{', cut: ' + self.cut if self.cut else ''})"


class Net:
    """A hub namespace and its spokes; every namespace, link, table and process goes at ``close()``."""

    def __init__(self, label: str = "t"):
        self.prefix = f"corral{os.getpid()}{label[:8]}{next(_serial)}"
        self.hub = f"{self.prefix}-hub"
        self.names: list[str] = []
        self.spokes: list[Spoke] = []
        self.procs: list[subprocess.Popen] = []
        try:
            self._add_namespace(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
            _ip("-n", self.hub, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.names.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add(self, role: str) -> Spoke:
        """A new namespace joined to the hub (``role`` is part of its name)."""
        n = len(self.spokes) + 1
        ns = f"{self.prefix}-{role}"
        self._add_namespace(ns)
        port = f"p{n}"  # the hub's end, a port of its bridge
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.hub)
        _ip("-n", self.hub, "link", "set", port, "master", "br0")
        _ip("-n", self.hub, "link", "set", port, "up")
        spoke = Spoke(ns, f"{SUBNET}.{10 + n}", "eth0", port)
        _ip("-n", ns, "addr", "add", f"{spoke.ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.spokes.append(spoke)
        return spoke

    # -- programs ---------------------------------------------------------------

    def run_in(self, ns: str | Spoke, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` in namespace ``ns`` (``ip netns exec`` runs it in its own place: the
        Popen's pid is the program's); stopped at ``close()`` if still running."""
        name = ns.ns if isinstance(ns, Spoke) else ns
        proc = subprocess.Popen(["ip", "netns", "exec", name, *argv], **popen)
        self.procs.append(proc)
        return proc

    # -- faults -------------------------------------------------------------------

    def cut(self, spoke: Spoke, mode: str = "drop") -> None:
        """Break ``spoke``'s link to the hub, both ways (``MODES``)."""
        assert mode in MODES, mode
        assert spoke.cut is None, f"{spoke} is cut already"
        if mode == "down":
            _ip("-n", spoke.ns, "link", "set", spoke.dev, "down")
        else:
            # In the spoke: every packet on its link.  In the hub: every packet to or from the spoke's
            # address (the hub's end is a bridge port; routed packets show the bridge as their device).
            # A reset made here goes to the local socket through lo, which no rule matches.
            out = "meta l4proto tcp reject with tcp reset" if mode == "reset" else "drop"
            self._nft(spoke.ns, spoke, f'oifname "{spoke.dev}"', f'iifname "{spoke.dev}"', out)
            self._nft(self.hub, spoke, f"ip daddr {spoke.ip}", f"ip saddr {spoke.ip}", out)
        spoke.cut = mode

    def heal(self, spoke: Spoke | None = None) -> None:
        """Mend ``spoke``'s link (every spoke's, without one)."""
        for each in [spoke] if spoke is not None else self.spokes:
            if each.cut == "down":
                _ip("-n", each.ns, "link", "set", each.dev, "up")
            elif each.cut is not None:
                # The hub first: meanwhile the spoke's own rules still answer its connection
                # attempts at once (reset) or drop them (drop), as during the cut.
                for ns in (self.hub, each.ns):
                    self._nft_delete(ns, each.ip)
            each.cut = None

    def _nft(self, ns: str, spoke: Spoke, out_match: str, in_match: str, out_verdict: str) -> None:
        """Add the spoke's rules to ``ns``'s table (made if missing): what leaves gets ``out_verdict``,
        then anything else is dropped both ways.  The rules carry the spoke's address as a comment,
        so that healing one spoke leaves the others' rules."""
        comment = f'comment "{spoke.ip}"'
        ruleset = f"""
            table inet {TABLE} {{
                chain out {{ type filter hook output priority 0; policy accept; }}
                chain in {{ type filter hook input priority 0; policy accept; }}
            }}
            add rule inet {TABLE} out {out_match} {out_verdict} {comment}
            add rule inet {TABLE} out {out_match} drop {comment}
            add rule inet {TABLE} in {in_match} drop {comment}
        """
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset)

    def _nft_delete(self, ns: str, ip: str) -> None:
        """Remove the rules about spoke ``ip`` from ``ns``'s table (the whole table once no rule is
        left), in one transaction: a packet never meets half of them (a reset rule gone and its drop
        rule still there would drop a SYN, which TCP sends again only after a second)."""
        listing = _run(["ip", "netns", "exec", ns, "nft", "-a", "list", "table", "inet", TABLE], check=False)
        if listing.returncode != 0:
            return
        chain, others, script = None, False, []
        for line in listing.stdout.splitlines():
            words = line.split()
            if words[:1] == ["chain"]:
                chain = words[1]
            elif "comment" in words and "# handle" in line:  # a rule
                if f'comment "{ip}"' in line:
                    script.append(f"delete rule inet {TABLE} {chain} handle {line.rsplit('# handle', 1)[1].strip()}")
                else:
                    others = True
        if not others:
            script = [f"delete table inet {TABLE}"]
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input="\n".join(script) + "\n")

    def tables(self) -> dict[str, str]:
        """Each namespace's nftables ruleset, where it has one (for assertions and failure reports)."""
        found = {}
        for ns in self.names:
            listing = _run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], check=False).stdout.strip()
            if listing:
                found[ns] = listing
        return found

    # -- the end --------------------------------------------------------------------

    def close(self) -> None:
        """Stop what was started here (SIGTERM, SIGKILL after 10 s), then anything else still
        running in the namespaces, by pid; delete the namespaces (and so their links and tables)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in self.names:
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            stragglers = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    stragglers.append(psutil.Process(int(pid)))
            for each in stragglers:
                with contextlib.suppress(psutil.Error):
                    each.kill()
            psutil.wait_procs(stragglers, timeout=5)
        for ns in reversed(self.names):
            _ip("netns", "del", ns, check=False)
        left = namespaces() & set(self.names)
        self.names = []
        if left:
            raise RuntimeError(f"network namespaces left behind: {sorted(left)}")
