#!/usr/bin/env python3
# ab.py runs fanout-load against several fanout binaries in alternating
# rounds (the order reverses every round, so that a machine that drifts
# favours none) and prints, for each binary, the median of each figure and
# its ratio to the first binary's in the same round: same-run ratios are the
# only comparison this kind of machine allows (docs/BENCHMARKS.md).
#
#   FANOUT_LOAD=/tmp/fanout-load ab.py ROUNDS "fanout-load args" NAME=BINARY [NAME=BINARY ...]
import json, os, subprocess, sys, statistics
rounds=int(sys.argv[1]); args=sys.argv[2].split(); bins=[a.split('=',1) for a in sys.argv[3:]]
keys=['accepted_events_per_sec','server_cpu_us_per_event','deliveries_per_sec','server_cpu_us_per_delivery','ack_p99_ms','delivery_p99_ms']
res={n:[] for n,_ in bins}
for r in range(rounds):
    order = bins if r%2==0 else bins[::-1]
    for n,b in order:
        out=subprocess.run([os.environ.get('FANOUT_LOAD', 'fanout-load'),'--fanout',b,'--progress=false','--json']+args,capture_output=True,text=True)
        try: d=json.loads(out.stdout)[0]
        except Exception as e:
            print('ERR',n,out.stderr[-500:]); continue
        res[n].append(d)
        print(f"round {r+1} {n}: "+" ".join(f"{k}={d.get(k,0):.1f}" for k in keys if k in d), flush=True)
base=bins[0][0]
for n,_ in bins:
    line=[n]
    for k in keys:
        vals=[d.get(k) for d in res[n] if d.get(k) is not None]
        if not vals: continue
        med=statistics.median(vals)
        bvals=[d.get(k) for d in res[base] if d.get(k) is not None]
        ratios=[a/b for a,b in zip(vals,bvals) if b]
        line.append(f"{k} med {med:.1f} ratio {statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})")
    print(' | '.join(line))
