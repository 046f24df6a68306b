#!/usr/bin/env bash
# A private Postfix instance for the end-to-end tests: a real MTA between the worker and the
# SMTP sink (tests/smtp_sink.py). Debian's postfix package, installed by scripts/test-deps.
#
#   tests/postfix_relay.sh start DIR LISTEN_PORT RELAY_PORT
#   tests/postfix_relay.sh stop DIR
#
# start: writes DIR/etc/main.cf and DIR/etc/master.cf and starts the instance, whose queue
# (DIR/spool) and data (DIR/data) are under DIR too. Its smtpd listens on 127.0.0.1:LISTEN_PORT
# and nowhere else; it accepts mail for any recipient from 127.0.0.0/8 and relays every
# message at once to [127.0.0.1]:RELAY_PORT, without DNS and without TLS. A deferred message
# is retried within about two seconds (queue_run_delay 1s, backoff 1s to 2s). Its log is
# DIR/maillog. Prints "ready" once the instance greets on LISTEN_PORT with 220.
#
# stop: stops that instance (and no other); DIR is left for the caller to remove.
#
# Instances are independent: each has its own DIR and ports, so several can run at once.
# Runs as root, as `postfix start` requires; the system's own instance is not touched, nor
# /etc/postfix/main.cf: as root, `postfix -c DIR` (and `postqueue -c DIR/etc -p` to look at the
# queue) needs no alternate_config_directories, which only the set-gid commands consult.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR LISTEN_PORT RELAY_PORT | $0 stop DIR" >&2
  exit 2
}

postfix=/usr/sbin/postfix

# `postfix -c` wants an absolute path; DIR need not exist yet.
absolute() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

# Whether 127.0.0.1:PORT answers with a 220 greeting (then says QUIT). In a subshell, so a
# refused connection only fails this function.
greets() (
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  read -r -t 2 line <&3 && [[ $line == 220* ]] || exit 1
  printf 'QUIT\r\n' >&3
  read -r -t 2 line <&3 || true
)

start() {
  local dir=$1 listen=$2 relay=$3
  [ -x "$postfix" ] || {
    echo "postfix_relay: no $postfix: run scripts/test-deps" >&2
    exit 1
  }
  # `postfix start` makes the queue's subdirectories and the data directory, owned by postfix.
  mkdir -p "$dir/etc" "$dir/spool"

  cat >"$dir/etc/main.cf" <<EOF
# A private relay for the tests: everything from 127.0.0.0/8 goes to [127.0.0.1]:$relay.
compatibility_level = 3.6
config_directory = $dir/etc
queue_directory = $dir/spool
data_directory = $dir/data
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
syslog_name = postfix-relay-$listen

# A name of its own: Postfix refuses to relay to a server that greets with its own name.
myhostname = relay-$listen.postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no

relayhost = [127.0.0.1]:$relay
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none

queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
transport_retry_time = 1s
EOF

  # Only the smtpd on 127.0.0.1:LISTEN is a network listener; the rest are sockets in the
  # queue directory. Nothing is chrooted.
  cat >"$dir/etc/master.cf" <<EOF
# service          type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$listen  inet  n       -       n       -       -       smtpd
pickup             unix  n       -       n       60      1       pickup
cleanup            unix  n       -       n       -       0       cleanup
qmgr               unix  n       -       n       300     1       qmgr
rewrite            unix  -       -       n       -       -       trivial-rewrite
bounce             unix  -       -       n       -       0       bounce
defer              unix  -       -       n       -       0       bounce
trace              unix  -       -       n       -       0       bounce
verify             unix  -       -       n       -       1       verify
flush              unix  n       -       n       1000?   0       flush
proxymap           unix  -       -       n       -       -       proxymap
proxywrite         unix  -       -       n       -       1       proxymap
smtp               unix  -       -       n       -       -       smtp
relay              unix  -       -       n       -       -       smtp
showq              unix  n       -       n       -       -       showq
error              unix  -       -       n       -       -       error
retry              unix  -       -       n       -       -       error
discard            unix  -       -       n       -       -       discard
anvil              unix  -       -       n       -       1       anvil
scache             unix  -       -       n       -       1       scache
postlog            unix-dgram n  -       n       -       1       postlogd
EOF

  # The master daemon keeps no descriptor of ours: the caller may be reading our stdout.
  if ! "$postfix" -c "$dir/etc" start </dev/null >"$dir/start.log" 2>&1; then
    echo "postfix_relay: postfix did not start:" >&2
    cat "$dir/start.log" "$dir/maillog" >&2 2>/dev/null || true
    exit 1
  fi
  for _ in $(seq 1 100); do
    if greets "$listen" 2>/dev/null; then
      echo ready
      return 0
    fi
    sleep 0.1
  done
  echo "postfix_relay: nothing greets on 127.0.0.1:$listen" >&2
  tail -n 20 "$dir/maillog" >&2 2>/dev/null || true
  "$postfix" -c "$dir/etc" stop </dev/null >/dev/null 2>&1 || true
  exit 1
}

stop() {
  local dir=$1
  [ -f "$dir/etc/main.cf" ] || return 0
  if "$postfix" -c "$dir/etc" status </dev/null >/dev/null 2>&1; then
    "$postfix" -c "$dir/etc" stop </dev/null >>"$dir/start.log" 2>&1
  fi
}

case ${1:-} in
  start)
    [ $# -eq 4 ] || usage
    start "$(absolute "$2")" "$3" "$4"
    ;;
  stop)
    [ $# -eq 2 ] || usage
    stop "$(absolute "$2")"
    ;;
  *) usage ;;
esac
