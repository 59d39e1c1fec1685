#!/usr/bin/env python3
"""Where a lag run's time went, from the nodes' debug logs: the active's capture groups
("group recorded": read, record, total) and the passive's batches ("batch applied":
check, journal, write, durability point, log append, total), as median / p90 / p99 /
max / sum in ms. Usage, after a run with STANDIN_BENCH_KEEP=1 and
STANDIN_BENCH_LOG="warn,standin_engine=debug":

    python3 benches/step_timings.py DIR/.tmpXXXX/lag-standin

(DIR holds alpha.log and beta.log.) "syncfs_ms" is the durability point, whichever way
it was made (fsyncs of the part's paths, or syncfs).
"""
import re, sys
def parse(path, key, fields):
    rows=[]
    for line in open(path):
        if key in line:
            d={k:float(v) for k,v in re.findall(r'(\w+)=([0-9.e-]+)', line[27:]) if k in fields}
            d['t']=line[:27]
            rows.append(d)
    return rows
def q(xs,p):
    xs=sorted(xs); return xs[min(len(xs)-1,int(p*len(xs)))]
d=sys.argv[1]
a=parse(d+'/alpha.log','group recorded',['events','read_ms','mark_ms','record_ms','total_ms','rounds'])
a=[r for r in a if r.get('events',0)>0]
b=parse(d+'/beta.log','batch applied',['events','check_ms','journal_ms','write_ms','syncfs_ms','append_ms','total_ms'])
print("active groups",len(a))
for f in ['events','read_ms','record_ms','total_ms']:
    xs=[r[f] for r in a]; print(f"  {f}: median {q(xs,.5):.2f} p90 {q(xs,.9):.2f} p99 {q(xs,.99):.2f} max {max(xs):.2f} sum {sum(xs):.0f}")
print("passive batches",len(b))
for f in ['events','check_ms','journal_ms','write_ms','syncfs_ms','append_ms','total_ms']:
    xs=[r[f] for r in b]; print(f"  {f}: median {q(xs,.5):.2f} p90 {q(xs,.9):.2f} p99 {q(xs,.99):.2f} max {max(xs):.2f} sum {sum(xs):.0f}")
