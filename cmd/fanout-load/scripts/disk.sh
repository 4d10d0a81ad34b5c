#!/bin/bash
# disk.sh measures disk per event behind one paused destination (docs/BENCHMARKS.md, issue 24):
# it starts BIN by hand, creates a paused destination, sends N events in batches of 100 with
# fanout-load, and reports du while running and after SIGTERM, with dbstat per b-tree (needs sqlite3).
# usage: disk.sh BIN N LABEL [extra fanout args...]
set -u
BIN=$1; N=$2; LABEL=$3; shift 3
PORT=$((18000 + RANDOM % 1000))
D=${DISK_DIR:-/tmp/disk}/data-$LABEL-$N
rm -rf $D; mkdir -p $D
$BIN --addr 127.0.0.1:$PORT --data $D --allow-network 127.0.0.0/8 --log-level warn "$@" > $D.log 2>&1 &
PID=$!
for i in $(seq 50); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.2; done
curl -s -X POST -d '{"url":"http://127.0.0.1:9/sink","paused":true}' http://127.0.0.1:$PORT/v1/destinations > $D.dest.json
( while kill -0 $PID 2>/dev/null; do echo "$(date +%s) $(stat -c %s $D/fanout.db 2>/dev/null) $(stat -c %s $D/fanout.db-wal 2>/dev/null)"; sleep 1; done ) > $D.walsamples.txt &
SAMP=$!
${FANOUT_LOAD:-fanout-load} --url http://127.0.0.1:$PORT --mode batch --batch 100 -c 4 --sinks 0 -n $N --progress=false > $D.load.txt 2>&1
sleep 1
DB=$(ls $D/*.db | head -1)
echo "== $LABEL N=$N running"; ls -l $D
RUN=$(du -cb $D/* | tail -1 | cut -f1)
sqlite3 "file:$DB?mode=ro" "PRAGMA page_size; PRAGMA page_count; PRAGMA freelist_count; SELECT name, COUNT(*), SUM(pgsize), SUM(unused), SUM(payload) FROM dbstat GROUP BY name ORDER BY 3 DESC;" > $D.dbstat-running.txt
kill -TERM $PID; wait $PID; kill $SAMP 2>/dev/null
echo "== stopped"; ls -l $D
STOP=$(du -cb $D/* | tail -1 | cut -f1)
sqlite3 "file:$DB?mode=ro" "PRAGMA page_size; PRAGMA page_count; PRAGMA freelist_count; SELECT name, COUNT(*), SUM(pgsize), SUM(unused), SUM(payload) FROM dbstat GROUP BY name ORDER BY 3 DESC;" > $D.dbstat-stopped.txt
sqlite3 "file:$DB?mode=ro" "SELECT state, parent_id IS NULL, tag IS NULL, count(*) FROM calls GROUP BY 1,2,3; SELECT count(*) FROM dedup;" > $D.rows.txt
echo "RESULT $LABEL N=$N running=$RUN B ($(echo "$RUN/$N" | bc) B/ev) stopped=$STOP B ($(echo "$STOP/$N" | bc) B/ev)"
tail -3 $D.load.txt
