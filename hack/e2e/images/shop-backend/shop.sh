#!/bin/sh
# The e2e's application: writes and checks the shop's keys through the sidecar on
# 127.0.0.1:6379, as any Redis client would. Every key's value is derived from the key, so a
# check needs no record of what was written.
#
#   shop write PREFIXES FIRST COUNT [VALUE]
#       SET <prefix><n> for n in FIRST..FIRST+COUNT-1, the prefixes (comma-separated) taken in
#       turn, to VALUE or to the key's own value; one pipeline
#   shop check PREFIXES FIRST COUNT [VALUE]
#       MGET them back (500 per command); prints how many hold what was written (and how many
#       are missing); fails unless all do
#   shop set KEY VALUE | shop get KEY
set -eu

ADDR_HOST=${REDIS_HOST:-127.0.0.1}
ADDR_PORT=${REDIS_PORT:-6379}
cli() { redis-cli -h "$ADDR_HOST" -p "$ADDR_PORT" "$@"; }

# keys PREFIXES FIRST COUNT: one key per line.
keys() {
  awk -v prefixes="$1" -v first="$2" -v count="$3" 'BEGIN {
    n = split(prefixes, p, ",")
    for (i = first; i < first + count; i++) print p[i % n + 1] i
  }'
}

# The value of a key: FIXED (an awk variable) when set, else the key, a colon and 600 bytes.
value_awk='function value(k,   pad) { if (fixed != "") return fixed; pad = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; pad = pad pad pad pad pad pad; return k ":" pad }'

case "${1:-}" in
  write)
    keys "$2" "$3" "$4" | awk -v fixed="${5:-}" "$value_awk"'
      { v = value($0); printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length($0), $0, length(v), v }' |
      cli --pipe
    ;;
  check)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    keys "$2" "$3" "$4" >"$tmp/keys"
    awk '{ line = line " " $0 } NR % 500 == 0 { print "MGET" line; line = "" } END { if (line != "") print "MGET" line }' \
      "$tmp/keys" | cli >"$tmp/values"
    awk -v fixed="${5:-}" "$value_awk"'
      NR == FNR { want[FNR] = value($0); total++; next }
      { if ($0 == want[FNR]) good++; else if ($0 == "") missing++ }
      END {
        printf "%d of %d keys intact (%d missing, %d with another value)\n", good, total, missing, total - good - missing
        exit good == total ? 0 : 1
      }' \
      "$tmp/keys" "$tmp/values"
    ;;
  set) cli SET "$2" "$3" ;;
  get) cli GET "$2" ;;
  *)
    echo "usage: shop write|check PREFIXES FIRST COUNT [VALUE] | shop set KEY VALUE | shop get KEY" >&2
    exit 2
    ;;
esac
