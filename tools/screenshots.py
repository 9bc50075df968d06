"""
Retake the README's screenshots (docs/screenshots/) from a realistic
install: a clinic PC started as a clinic starts it (`medimage-tx serve`,
HOME=/home/clinic, so its data is the default ~/MedImage), photos filed to
/home/clinic/Practice/Photos, paired through "AtomJump's" pairing service
with the relay at relay.example.org:5566, a photo from the WiFi and one
through the relay.

Nothing leaves the machine: it runs in mount and network namespaces of its
own (root, `unshare`). There /home is an empty tmpfs; the PC's "WiFi" is
one end of a veth pair (wlan0, 192.168.1.20/24) whose other end is in a
second namespace of ours holding the relay, at 203.0.113.10 (a
documentation address), which /etc/hosts names relay.example.org (Chromium
gets the same mapping with --host-resolver-rules); AtomJump's pairing
service is the tests' local stand-in (tests/central_pairing.py, through
MEDIMAGE_CENTRAL_PAIRING).

    make test PYTEST_ARGS=--co   # builds .venv with Playwright (once)
    .venv/bin/python tools/screenshots.py [--out docs/screenshots]

Needs Debian's chromium (apt-get install chromium).  Look at each picture
before committing it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

RELAY_NAME = "relay.example.org"
RELAY_ADDRESS = "203.0.113.10"
RELAY_NAMESPACE = "medimage-shots-relay"
RELAY_URL = f"http://{RELAY_NAME}:5566"
HOME = Path("/home/clinic")
PRACTICE = HOME / "Practice" / "Photos"
PC = "http://localhost:5566"


def inside_namespaces() -> None:
    """
    Set up the namespace's view: loopback up, an empty /home, the relay's
    name in /etc/hosts.
    """
    def ip(*args: str, namespace: str = "") -> None:
        subprocess.run(["ip", *(["-n", namespace] if namespace else []), *args], check=True)

    ip("link", "set", "lo", "up")
    # /run too: `ip netns` keeps its names there, here only.
    for folder in ("/home", "/run"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", folder], check=True)
    ip("netns", "add", RELAY_NAMESPACE)
    ip("link", "add", "wlan0", "type", "veth", "peer", "name", "eth0", "netns", RELAY_NAMESPACE)
    ip("addr", "add", "192.168.1.20/24", "dev", "wlan0")
    ip("link", "set", "wlan0", "up")
    ip("route", "add", f"{RELAY_ADDRESS}/32", "dev", "wlan0")
    ip("link", "set", "lo", "up", namespace=RELAY_NAMESPACE)
    ip("addr", "add", f"{RELAY_ADDRESS}/32", "dev", "eth0", namespace=RELAY_NAMESPACE)
    ip("link", "set", "eth0", "up", namespace=RELAY_NAMESPACE)
    ip("route", "add", "192.168.1.0/24", "dev", "eth0", namespace=RELAY_NAMESPACE)
    hosts = Path(tempfile.mkdtemp(prefix="medimage-shots-")) / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{RELAY_ADDRESS} {RELAY_NAME}\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


def serve(data_args: list[str], env: dict, log: Path, namespace: str = "") -> subprocess.Popen:
    command = [str(REPO / ".venv" / "bin" / "medimage-tx"), "serve", *data_args]
    if namespace:
        command = ["ip", "netns", "exec", namespace, *command]  # execs the server: its pid
    return subprocess.Popen(command, env=env, cwd=str(HOME), stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_for(check, what: str, seconds: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"screenshots: {what} did not happen within {seconds:.0f} s")


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def app_date() -> str:
    """
    Now, as the MedImage app writes it in a file name (27-Nov-2026-10-11-12).
    """
    import time

    return time.strftime("%d-%b-%Y-%H-%M-%S")


def upload(url: str, name: str, photo: bytes) -> None:
    from conftest import multipart

    body, content_type = multipart(name, photo)
    request = urllib.request.Request(url + "/api/photo", data=body, headers={"Content-Type": content_type.decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.status


def take(out: Path) -> None:
    from twisted.internet import reactor, threads
    from twisted.internet.defer import ensureDeferred

    from browser import run_browser
    from central_pairing import start_central
    from conftest import jpeg_bytes

    PRACTICE.mkdir(parents=True)
    data = HOME / "MedImage"
    data.mkdir()
    (data / "config.json").write_text(json.dumps({
        "backupTo": [PRACTICE.as_posix()], "keepMaster": False, "basicAuthent": "Harbour-Clinic-2026",
        "serverName": "reception-pc"}, indent=2))
    relay_data = Path(tempfile.mkdtemp(prefix="relay-"))
    (relay_data / "config.json").write_text(json.dumps({
        "allowPhotosLeaving": True, "allowGettingRemotePhotos": False, "lanMode": False}))
    processes: list[subprocess.Popen] = []

    async def run() -> None:
        central, central_url, _ = await start_central()
        env = {**os.environ, "HOME": str(HOME), "MEDIMAGE_CENTRAL_PAIRING": central_url}
        processes.append(serve(["--data", str(relay_data)], env, relay_data / "console.log", RELAY_NAMESPACE))
        processes.append(serve([], env, HOME / "console.log"))
        await threads.deferToThread(wait_for, lambda: answers(RELAY_URL + "/"), "the relay answering")
        await threads.deferToThread(wait_for, lambda: answers(PC + "/"), "the PC answering")
        # A photo from a phone on the clinic's WiFi.
        await threads.deferToThread(upload, PC, f"#moles-John123-{app_date()}.jpg", jpeg_bytes(180_000))

        def pair(page) -> None:
            page.goto(PC + "/admin/pair")
            page.get_by_label("Country of the AtomJump relay").select_option(label="New Zealand")
            page.get_by_label("AtomJump relay address").fill(RELAY_URL)
            page.get_by_label("AtomJump relay address").blur()
            page.screenshot(path=out / "pairing.png", full_page=True)
            page.get_by_role("button", name="Pair through AtomJump").click()
            page.locator("#code").wait_for()
            page.screenshot(path=out / "pairing-code.png", full_page=True)

        await threads.deferToThread(run_browser, pair, f"--host-resolver-rules=MAP {RELAY_NAME} {RELAY_ADDRESS}")
        paired_id = json.loads((data / "config.json").read_text())["globalId"]
        # A photo from a phone away from the WiFi, through the relay.
        await threads.deferToThread(upload, RELAY_URL, f"#{paired_id}-#ward5-Smith77-{app_date()}.jpg",
                                    jpeg_bytes(240_000))
        await threads.deferToThread(wait_for, lambda: any(PRACTICE.rglob("Smith77-*.jpg")),
                                    "the relay's photo on the PC")

        def pages(page) -> None:
            for path, name in (("/", "home"), ("/admin/settings", "settings"), ("/admin/logs", "logs"),
                               ("/admin/addons", "addons")):
                page.goto(PC + path)
                page.screenshot(path=out / f"{name}.png", full_page=True)

        await threads.deferToThread(run_browser, pages, f"--host-resolver-rules=MAP {RELAY_NAME} {RELAY_ADDRESS}")

    def done(result):
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        reactor.stop()
        return result

    failures = []
    reactor.callWhenRunning(lambda: ensureDeferred(run()).addErrback(failures.append).addBoth(done))
    reactor.run()
    if failures:
        failures[0].printTraceback()
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if not args.inside:
        if os.geteuid() != 0:
            raise SystemExit("screenshots: needs root (it makes mount and network namespaces of its own)")
        os.execvp("unshare", ["unshare", "--mount", "--net", "--propagation", "private",
                              sys.executable, __file__, "--inside", "--out", str(out)])
    inside_namespaces()
    out.mkdir(parents=True, exist_ok=True)
    take(out)
    print(f"screenshots: written to {out}; look at each before committing")


if __name__ == "__main__":
    main()
