"""A real SMTP server for the end-to-end tests, built on aiosmtpd.

It accepts mail over TCP and writes each message to --dir as <received-ns>-<n>.eml, with two
extra header lines on top: X-Sink-Rcpt-To and X-Sink-Received-At (Unix nanoseconds).

Failures on demand, by recipient local part:
  reject...@      550 at RCPT, every time
  tempfailN...@   451 at RCPT for the first N attempts to that address, then accepted
  slowN...@       accepted, but the answer to DATA takes N milliseconds
and for every recipient while the file <dir>/fail-451 (or <dir>/fail-550) exists: 451 (or 550).
Every RCPT is logged to <dir>/rcpt.log as "<ns> <code> <address>", and every MAIL to
<dir>/mail.log as "pipelined" when the commands after it had already arrived with it (the
client did not wait for the answer), else "waited".

It offers PIPELINING (RFC 2920) in its EHLO answer, as mail relays do, unless --no-pipelining.

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


class Sink:
    def __init__(self, out, pipelining):
        self.out = out
        self.pipelining = pipelining
        self.seq = itertools.count()
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
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    options = {"enable_SMTPUTF8": True}
    if args.starttls:
        options.update(tls_context=tls_context(args.dir), require_starttls=True)
    if args.implicit_tls:
        options.update(ssl_context=tls_context(args.dir), server_hostname="localhost")
    sink = Sink(args.dir, pipelining=not args.no_pipelining)
    controller = Controller(sink, hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print(f"ready {args.port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
