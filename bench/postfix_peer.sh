#!/usr/bin/env bash
# A Postfix smtpd peer for bench/smtp_sessions.py --postfix 127.0.0.1:2528 (issue #5).
#
# Installs Debian's postfix and turns THIS MACHINE's Postfix into a loopback-only sink: smtpd on
# 127.0.0.1:2528 (and nothing else) accepts mail for bench.test, the cleanup daemon writes and fsyncs
# the queue file before the 250 (Postfix's normal durability), and the queue manager then hands
# every message to the discard transport. Meant for a throw-away benchmark machine: it rewrites
# /etc/postfix/main.cf and master.cf. `postfix stop` ends it.
set -euo pipefail
if ! command -v postfix >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix
fi
postfix stop >/dev/null 2>&1 || true
postconf -e 'inet_interfaces = loopback-only' 'inet_protocols = ipv4' 'myhostname = mx.bench.test' \
  'mydestination = bench.test, localhost' 'local_recipient_maps =' 'local_transport = discard:' \
  'mynetworks = 127.0.0.0/8' 'smtpd_relay_restrictions = permit_mynetworks, reject' \
  'default_process_limit = 200' 'maillog_file = /var/log/postfix.log'
# The stock "smtp inet" line becomes a smtpd on 127.0.0.1:2528, outside the chroot.
sed -i -E 's/^(smtp|127\.0\.0\.1:2528) +inet +n +- +[yn] +- +- +smtpd$/127.0.0.1:2528      inet  n       -       n       -       -       smtpd/' \
  /etc/postfix/master.cf
grep -q '^127.0.0.1:2528 ' /etc/postfix/master.cf || { echo "master.cf: no smtpd line to rewrite" >&2; exit 1; }
postfix check
postfix start
echo "postfix smtpd on 127.0.0.1:2528: python bench/smtp_sessions.py --postfix 127.0.0.1:2528"
