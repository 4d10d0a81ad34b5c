#!/usr/bin/env python3
# abpar.py is ab.py for low load: it runs fanout-load against every binary
# at the same time, ROUNDS times, and prints each figure's median and its
# ratio to the first binary's in the same round. At low load (100-400
# events/s on 2 cores) the machine's noise moves a figure by up to 1.5x from
# one 10-second run to the next, more than the changes measured; binaries
# that run side by side share that noise, and their ratio keeps still.
# Each run has its own sinks and its own fanout, so they interfere with each
# other only as any neighbour would, and alike.
#
#   FANOUT_LOAD=/tmp/fanout-load abpar.py ROUNDS "fanout-load args" NAME=BINARY [NAME=BINARY ...]
import json, os, subprocess, sys, statistics
rounds=int(sys.argv[1]); args=sys.argv[2].split(); bins=[a.split('=',1) for a in sys.argv[3:]]
keys=['accepted_events_per_sec','server_cpu_us_per_event','deliveries_per_sec','ack_p99_ms','delivery_p99_ms']
res={n:[] for n,_ in bins}
for r in range(rounds):
    procs=[(n,subprocess.Popen([os.environ.get('FANOUT_LOAD','fanout-load'),'--fanout',b,'--progress=false','--json']+args,
                              stdout=subprocess.PIPE,stderr=subprocess.PIPE,text=True)) for n,b in bins]
    for n,p in procs:
        out,err=p.communicate()
        try: d=json.loads(out)[0]
        except Exception:
            print('ERR',n,err[-500:]); d=None
        res[n].append(d)
        if d:
            lost=sum(d.get('missing_per_destination') or [0])
            print(f"round {r+1} {n}: "+" ".join(f"{k}={d.get(k,0):.1f}" for k in keys)+f" missing={lost} drained={d.get('drained')}", flush=True)
base=bins[0][0]
for n,_ in bins:
    line=[n]
    for k in keys:
        pairs=[(d[k],b[k]) for d,b in zip(res[n],res[base]) if d and b and d.get(k) is not None and b.get(k)]
        if not pairs: continue
        ratios=[a/b for a,b in pairs]
        line.append(f"{k} med {statistics.median(a for a,_ in pairs):.1f} ratio {statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})")
    print(' | '.join(line))
