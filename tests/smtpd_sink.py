"""Python's own stdlib SMTP server (smtpd, on asyncore) as a test sink: the strict, old,
single-threaded server that some relays and appliances still resemble. It answers a second
EHLO with 503, and it listens with a backlog of 5, so a burst of new connections leaves some
without their greeting for many seconds, as a busy small server does.

Messages are written to --dir as smtp_sink.py writes them (<received-ns>-<n>.eml with
X-Sink-Rcpt-To and X-Sink-Received-At on top), so the tests read both alike.
Prints "ready <port>" once it accepts connections, then serves until killed.
"""

import argparse
import itertools
import os
import time
import warnings

# Deprecated, and still in 3.11's standard library, which is the point.
warnings.simplefilter("ignore", DeprecationWarning)
import asyncore  # noqa: E402
import smtpd  # noqa: E402


class Sink(smtpd.SMTPServer):
    def __init__(self, port, out):
        super().__init__(("127.0.0.1", port), None, decode_data=False)
        self.out = out
        self.seq = itertools.count()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        received = time.time_ns()
        name = f"{received}-{next(self.seq):06d}"
        partial = os.path.join(self.out, "." + name)
        with open(partial, "wb") as f:
            f.write(f"X-Sink-Rcpt-To: {', '.join(rcpttos)}\r\n".encode())
            f.write(f"X-Sink-Received-At: {received}\r\n".encode())
            f.write(data)
        os.rename(partial, os.path.join(self.out, name + ".eml"))
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    Sink(args.port, args.dir)
    print(f"ready {args.port}", flush=True)
    asyncore.loop()


if __name__ == "__main__":
    main()
