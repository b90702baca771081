"""The baseline for the Linux control-plane benchmark: kube-proxy's iptables layout.

Generates what kube-proxy (iptables mode) would load for N ClusterIP services
with M endpoints each (KUBE-SERVICES → KUBE-SVC-* with statistic-random
jumps → KUBE-SEP-* DNAT chains, masquerade marking), and times loading it with
one ``iptables-restore`` inside a throwaway network namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import time
import uuid


def _chain(prefix: str, text: str) -> str:
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:16].upper()


def kube_proxy_rules(services: int, endpoints: int) -> str:
    """iptables-restore input for ``services`` × ``endpoints`` in kube-proxy's layout."""
    vip0 = ipaddress.ip_address("10.96.0.0")
    pod0 = ipaddress.ip_address("10.64.0.0")
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    rules = [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
    ]
    for s in range(services):
        vip = vip0 + 1 + s
        name = f"ns{s % 100}/svc{s}:http"
        svc = _chain("KUBE-SVC-", name)
        chains.append(f":{svc} - [0:0]")
        rules.append(f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" "
                     f"-m tcp --dport 80 -j {svc}")
        rules.append(f"-A {svc} ! -s 10.64.0.0/16 -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" "
                     f"-m tcp --dport 80 -j KUBE-MARK-MASQ")
        for e in range(endpoints):
            ip = pod0 + s * endpoints + e
            sep = _chain("KUBE-SEP-", f"{name}-{ip}")
            chains.append(f":{sep} - [0:0]")
            left = endpoints - e
            prob = "" if left == 1 else f"-m statistic --mode random --probability {1 / left:.11f} "
            rules.append(f"-A {svc} -m comment --comment \"{name} -> {ip}:8080\" {prob}-j {sep}")
            rules.append(f"-A {sep} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ")
            rules.append(f"-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ip}:8080")
    return "*nat\n" + "\n".join(chains + rules) + "\nCOMMIT\n"


def time_restore(text: str, backend: str = "nft") -> tuple[float, int]:
    """Seconds to load ``text`` with one iptables-restore in a fresh netns; and its line count."""
    ns = f"kpb-{uuid.uuid4().hex[:8]}"
    binary = "iptables-nft-restore" if backend == "nft" else "iptables-legacy-restore"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        t0 = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns, binary, "--noflush", "--wait"], input=text.encode(),
                       check=True)
        return time.perf_counter() - t0, text.count("\n")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    for backend in ("nft", "legacy"):
        seconds, lines = time_restore(kube_proxy_rules(5000, 3), backend)
        print(f"kube-proxy layout, 5000 services x 3 endpoints, iptables-{backend}-restore: "
              f"{lines} lines in {seconds:.2f} s")
