#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster with wal_level=logical on its own port, both
# spike programs against it, then the cluster is stopped and removed.
# Never touches the machine's shared cluster.
set -euo pipefail
cd "$(dirname "$0")"
PORT=${SPIKE_PORT:-5499}
BIN=/usr/lib/postgresql/15/bin
D=$(mktemp -d /tmp/pgspike.XXXXXX)
id pgspike >/dev/null 2>&1 || useradd -m pgspike   # postgres refuses to run as root
chown pgspike "$D"
t0=$(date +%s.%N)
runuser -u pgspike -- "$BIN/initdb" -D "$D/data" -U postgres --auth=trust >"$D/initdb.log"
t1=$(date +%s.%N)
runuser -u pgspike -- "$BIN/pg_ctl" -D "$D/data" -l "$D/pg.log" -w \
    -o "-p $PORT -k $D -c wal_level=logical -c listen_addresses=127.0.0.1" start >/dev/null
t2=$(date +%s.%N)
echo "initdb $(echo "$t1-$t0" | bc) s, start $(echo "$t2-$t1" | bc) s"
trap 'runuser -u pgspike -- "$BIN/pg_ctl" -D "$D/data" -m fast stop >/dev/null; rm -rf "$D"' EXIT
export CARGO_TARGET_DIR="$PWD/target" SPIKE_PORT=$PORT
cargo build -q
./target/debug/pg-spike walstream | tee output/walstream.txt
./target/debug/pg-spike pgwire | tee output/pgwire.txt
