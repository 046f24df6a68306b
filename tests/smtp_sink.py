"""A real SMTP server for the end-to-end tests, built on aiosmtpd.

It accepts mail over TCP and writes each message to --dir as <received-ns>-<n>.eml, with two
extra header lines on top: X-Sink-Rcpt-To and X-Sink-Received-At (Unix nanoseconds).

Failures on demand, by recipient local part:
  reject...@      550 at RCPT, every time
  tempfailN...@   451 at RCPT for the first N attempts to that address, then accepted
  slowN...@       accepted, but the answer to DATA takes N milliseconds
and for every recipient while the file <dir>/fail-451 (or <dir>/fail-550) exists: 451 (or 550).

Failures while a connection is set up, also switched by control files in --dir:
  fail-ehlo       every EHLO and HELO is answered "554 5.7.1 Service refused for now"
  hold-greeting   new connections wait for their 220 greeting for as long as it exists (a
                  server slow to take connections)
  hold-every      holding N: every N-th new connection gets no greeting for a minute (what a
                  full listen backlog does to some connections of a burst)
  fail-greeting   new connections are greeted with "554 5.3.2 Not accepting connections"
                  instead of 220; as RFC 5321 (3.1) asks, the server then waits for QUIT
                  and answers every other command with 503

Every RCPT is logged to <dir>/rcpt.log as "<ns> <code> <address>", every EHLO and HELO to
<dir>/ehlo.log as "<ns> <code>", and every MAIL to <dir>/mail.log as "pipelined" when the
commands after it had already arrived with it (the client did not wait for the answer), else
"waited".

It offers PIPELINING (RFC 2920) in its EHLO answer, as mail relays do, unless --no-pipelining.

With --strict it answers a second HELO or EHLO in one session with "503 Duplicate HELO/EHLO",
as strict servers (and Python's old smtpd) do. RSET does not forget the greeting; STARTTLS
does, so the EHLO that RFC 3207 requires after it is accepted.

TLS (certificates made with trustme; the CA is written to <dir>/ca.pem):
  --starttls      offer and require STARTTLS
  --implicit-tls  TLS from the first byte (SMTPS)

Prints "ready <port>" once it accepts connections, then serves until killed.
"""

import argparse
import asyncio
import itertools
import os
import re
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, out, pipelining, strict):
        self.out = out
        self.pipelining = pipelining
        self.strict = strict
        self.seq = itertools.count()
        self.connections = itertools.count(1)
        self.tempfails = {}
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # With this hook aiosmtpd leaves recording the greeting to the handler.
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # Commands that came in the same write as MAIL are already in the reader's buffer.
        waiting = len(getattr(server._reader, "_buffer", b""))
        with open(os.path.join(self.out, "mail.log"), "a") as log:
            log.write("pipelined\n" if waiting else "waited\n")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.decide(address)
        with open(os.path.join(self.out, "rcpt.log"), "a") as log:
            log.write(f"{time.time_ns()} {answer[:3]} {address}\n")
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    def decide(self, address):
        if os.path.exists(os.path.join(self.out, "fail-550")):
            return "550 5.7.1 Rejected for now"
        if os.path.exists(os.path.join(self.out, "fail-451")):
            return "451 4.3.2 Service unavailable for now"
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 Mailbox unavailable"
        match = re.match(r"tempfail(\d+)", local)
        if match:
            with self.lock:
                seen = self.tempfails.get(address, 0) + 1
                self.tempfails[address] = seen
            if seen <= int(match.group(1)):
                return "451 4.3.0 Try again later"
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            slow = re.match(r"slow(\d+)", rcpt.split("@", 1)[0].lower())
            if slow:
                await asyncio.sleep(int(slow.group(1)) / 1000)
        received = time.time_ns()
        name = f"{received}-{next(self.seq):06d}"
        partial = os.path.join(self.out, "." + name)
        with open(partial, "wb") as f:
            f.write(f"X-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(f"X-Sink-Received-At: {received}\r\n".encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(partial, os.path.join(self.out, name + ".eml"))
        return "250 2.0.0 Message accepted for delivery"


class SinkSMTP(SMTP):
    """One SMTP session (aiosmtpd makes one per connection) with the sink's set-up failures."""

    def control(self, name):
        return os.path.exists(os.path.join(self.event_handler.out, name))

    def hold_every(self):
        try:
            with open(os.path.join(self.event_handler.out, "hold-every")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def log_ehlo(self, code):
        with open(os.path.join(self.event_handler.out, "ehlo.log"), "a") as log:
            log.write(f"{time.time_ns()} {code}\n")

    def refusal(self, hostname):
        """The answer to HELO/EHLO when it is refused, else None."""
        if self.control("fail-ehlo"):
            return "554 5.7.1 Service refused for now"
        # As in smtpd, a missing name is a syntax error (501) before it is a duplicate. The
        # session, with the name it greeted with, is made anew after STARTTLS but not by RSET.
        if self.event_handler.strict and hostname and self.session.host_name:
            return "503 Duplicate HELO/EHLO"
        return None

    async def smtp_HELO(self, hostname):
        await self.greet(hostname, super().smtp_HELO)

    async def smtp_EHLO(self, hostname):
        await self.greet(hostname, super().smtp_EHLO)

    async def greet(self, hostname, accept):
        refusal = self.refusal(hostname)
        if refusal:
            # Refused before anything changes, as in smtpd: the session keeps its state.
            self.log_ehlo(refusal[:3])
            await self.push(refusal)
            return
        self.log_ehlo("250" if hostname else "501")
        await accept(hostname)

    async def _handle_client(self):
        # aiosmtpd 1.4.6 writes the 220 greeting at the start of this method.
        while self.control("hold-greeting"):
            await asyncio.sleep(0.05)
        every = self.hold_every()
        if every and next(self.event_handler.connections) % every == 0:
            await asyncio.sleep(60)
        if not self.control("fail-greeting"):
            return await super()._handle_client()
        try:
            await self.push("554 5.3.2 Not accepting connections")
            while self.transport is not None:
                line = await self._reader.readuntil()
                command = line.strip().split(b" ", 1)[0].upper()
                if command == b"QUIT":
                    await self.push("221 Bye")
                    break
                if command in (b"EHLO", b"HELO"):
                    self.log_ehlo("503")
                await self.push("503 5.5.1 Bad sequence of commands")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        if self.transport is not None:
            self.transport.close()


class SinkController(Controller):
    def factory(self):
        return SinkSMTP(self.handler, **self.SMTP_kwargs)


def tls_context(out):
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(os.path.join(out, "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    options = {"enable_SMTPUTF8": True}
    if args.starttls:
        options.update(tls_context=tls_context(args.dir), require_starttls=True)
    if args.implicit_tls:
        options.update(ssl_context=tls_context(args.dir), server_hostname="localhost")
    sink = Sink(args.dir, pipelining=not args.no_pipelining, strict=args.strict)
    controller = SinkController(sink, hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print(f"ready {args.port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
