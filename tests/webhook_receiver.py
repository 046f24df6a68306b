"""A real webhook receiver for the end-to-end tests, built on http.server and standardwebhooks.

It takes POSTs over HTTP on 127.0.0.1 and checks each one's signature as the Standard Webhooks
reference library does (webhook-id, webhook-timestamp, webhook-signature, under --secret, and
a timestamp within 5 minutes of now). Every POST, whatever its fate, is appended to
<dir>/attempts.jsonl as one line:
  {"webhook_id", "status", "verified", "error", "received_at_ns"}
(webhook_id is null when the header is missing; error is null when the signature verified).

Answers:
  400             the signature, its headers or the timestamp do not verify, or the body is
                  not JSON
  500             --fail-first N: the first N verified POSTs of each webhook-id (a retry of a
                  delivery carries the same id), after recording the attempt
  204             otherwise: the delivery is written to <dir>/<received-ns>-<n>.json (through
                  a dot-file and a rename, so a reader never sees half of one) as
                  {"webhook_id", "webhook_timestamp", "webhook_signature", "content_type",
                   "body", "received_at_ns"}, the headers as received and the body parsed
  405             any other method, with "Allow: POST"

Both files are written before the answer is sent, so a sender that has its answer finds its
attempt recorded.

Prints "ready <port>" once it accepts connections, then serves until killed.
"""

import argparse
import itertools
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver:
    def __init__(self, out, secret, fail_first):
        self.out = out
        self.webhook = Webhook(secret)
        self.fail_first = fail_first
        self.seq = itertools.count()
        self.seen = {}
        self.lock = threading.Lock()

    def record(self, webhook_id, status, error, received):
        line = json.dumps(
            {
                "webhook_id": webhook_id,
                "status": status,
                "verified": error is None,
                "error": error,
                "received_at_ns": received,
            }
        )
        with self.lock, open(os.path.join(self.out, "attempts.jsonl"), "a") as log:
            log.write(line + "\n")

    def failing(self, webhook_id):
        """Whether this verified POST is among the first --fail-first of its webhook-id."""
        with self.lock:
            seen = self.seen.get(webhook_id, 0) + 1
            self.seen[webhook_id] = seen
        return seen <= self.fail_first

    def keep(self, headers, payload, received):
        name = f"{received}-{next(self.seq):06d}"
        delivery = {
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "webhook_signature": headers.get("webhook-signature"),
            "content_type": headers.get("content-type"),
            "body": payload,
            "received_at_ns": received,
        }
        partial = os.path.join(self.out, "." + name)
        with open(partial, "w") as f:
            json.dump(delivery, f)
        os.rename(partial, os.path.join(self.out, name + ".json"))

    def handle(self, headers, body):
        """Verifies and keeps one POST; returns the status to answer."""
        received = time.time_ns()
        webhook_id = headers.get("webhook-id")
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError as e:
            self.record(webhook_id, 400, str(e) or type(e).__name__, received)
            return 400
        except ValueError as e:
            # Signed as sent, but not JSON (json.JSONDecodeError and UnicodeDecodeError).
            self.record(webhook_id, 400, f"body is not JSON: {e}", received)
            return 400
        if self.failing(webhook_id):
            self.record(webhook_id, 500, None, received)
            return 500
        self.keep(headers, payload, received)
        self.record(webhook_id, 204, None, received)
        return 204


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "webhook-receiver"
    receiver: Receiver

    def log_message(self, format, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, extra=()):
        self.send_response(status)
        for name, value in extra:
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.read_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.answer(self.receiver.handle(headers, body))

    def not_allowed(self):
        # The body, if any, is not read: the connection is not reused.
        self.close_connection = True
        self.answer(405, [("Allow", "POST"), ("Connection", "close")])

    def __getattr__(self, name):
        # http.server looks up do_<METHOD>: every method but POST is answered 405.
        if name.startswith("do_"):
            return self.not_allowed
        raise AttributeError(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--secret", required=True, help="the signing secret, whsec_ + base64")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    try:
        receiver = Receiver(args.dir, args.secret, args.fail_first)
    except Exception as e:
        parser.error(f"--secret: {e}")
    handler = type("ReceiverHandler", (Handler,), {"receiver": receiver})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"ready {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
