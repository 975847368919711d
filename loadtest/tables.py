"""Renders the results tables of loadtest/README.md and the main README from a results.json:
python3 loadtest/tables.py loadtest/results/latest.json"""
import json,sys
d=json.load(open(sys.argv[1]))
p=d['parameters']; cs=d['cold_start']; li=d['limit']
def f3(x):
    # A latency no update reached (NaN in the run, null in the JSON) reads "none".
    return 'none' if x is None else f"{x:.3f}"
def lat(x, extra=''):
    return f"{x['updates']} updates: p50 {x['p50_seconds']:.3f} s, p95 {x['p95_seconds']:.3f} s, p99 {x['p99_seconds']:.3f} s, max {x['max_seconds']:.3f} s; {len(x['not_applied'])} not applied{extra}"
date=d['date'][:19].replace('T',' ')
m=d['machine']
import os
# The results file, as linked from loadtest/README.md.
link=os.path.relpath(os.path.abspath(sys.argv[1]), os.path.join(os.path.dirname(os.path.abspath(__file__))))
profile=p.get('profile', 'lean')
fresh='' if 'scale_out' not in d else f"; scale-out with {p['sets']:,} sets and {', '.join(str(x) for x in p.get('scale_out_replicas', []))} replicas, tracing cost with {p['scale_sets']:,} sets"
standby='' if p.get('warm_standby', True) else ', warm standby off'
print(f"**{profile} profile.** Run of {date} UTC on {m['cores']} cores ({m['cpu']}, {m['memory_gib']} GiB), commit `{d['commit']}`, {d['build']} build: {p['sets']:,} sets over {p['namespaces']:,} namespaces, {p['replicas']} replicas, {p['shards']} shards, concurrency {p['concurrency']}, Lease {p['lease_seconds']} s{standby}{fresh}. Full figures: [`{link}`]({link}).")
print()
print("| scenario | figures |\n|---|---|")
def busy(x):
    b=x.get('cpu_busy')
    return '' if not b else f"; machine {b['machine']*100:.0f} % busy (load test {b['loadtest']*100:.0f} %)"
inflight='' if 'concurrency' not in li else f", {li['concurrency']} sets in flight"
print(f"| limit (plain client) | {li['sets_per_second']:.1f} sets/s ({li['seconds']:.0f} s{inflight}); control plane {li['cpu_seconds_per_set']:.3f} CPU s per set{busy(li)} |")
if li.get('sweep'):
    print(f"| limit sweep (sets in flight: sets/s) | " + '; '.join(f"{r['concurrency']}: {r['sets_per_second']:.1f}{busy(r)}" for r in li['sweep']) + " |")
cp=cs['control_plane_cpu_seconds']['total']/p['sets']; op=cs['operator_cpu_seconds']/p['sets']
rss=", ".join(f"{r['peak_rss_mib']:.0f}" for r in cs['per_replica']); cpu=", ".join(f"{r['cpu_seconds']:.0f}" for r in cs['per_replica'])
print(f"| cold start | {cs['sets_per_second']:.1f} sets/s ({cs['seconds']:.0f} s), {cs['reconciles_per_second']:.1f} reconciles/s, {cs['write_requests_per_set']:.2f} write requests per set; **{cs['converge_to_limit_ratio']:.2f} of the limit**; CPU per set {cs['cpu_seconds_per_set']:.3f} s (control plane {cp:.3f}, operator {op:.3f}): CPU ratio {cs['cpu_cost_ratio']:.2f}; peak RSS {rss} MiB, CPU {cpu} s{busy(cs)} |")
if 'half_at' in cs:
    print(f"| cold start curve | first 1 % of the sets converged at {cs['first_percent_at']:.2f}, half at {cs['half_at']:.2f} of its duration |")
print(f"| tenant under flood | {lat(d['flood'])} |")
c=d['churn']
print(f"| churn {c['rate_per_second']:.0f}/s for {c['seconds']} s | {lat(c)} |")
def ops(r):
    if r.get('operator_cpu_seconds') is None:
        return ''
    return f"; operator {r['operator_cpu_seconds']:.1f} CPU s, {r['reconciles']:.0f} reconciles"
def gcs(i):
    # API server GC cycles within the operator's and the plain client's window of rate i.
    o = cl['operator'][i].get('apiserver_gc_cycles') if i < len(cl['operator']) else None
    pl = li['churn'][i].get('apiserver_gc_cycles') if i < len(li['churn']) else None
    return '' if o is None or pl is None else f"; API server GC cycles in the window {o:.0f} against {pl:.0f}"
cl=d.get('churn_limit')
if cl:
    for i, r in enumerate(cl['rates']):
        print(f"| churn {r['rate_per_second']:.0f}/s: operator against plain client | p99 {r['operator_p99_seconds']:.3f} s against {r['plain_p99_seconds']:.3f} s (p50 {r['operator_p50_seconds']:.3f} against {r['plain_p50_seconds']:.3f} s); control plane CPU {r['operator_control_plane_cpu_seconds']:.0f} against {r['plain_control_plane_cpu_seconds']:.0f} s{ops(r)}{gcs(i)} |")
        if 'operator_status_observed_p99_seconds' in r:
            o=cl['operator'][i]
            print(f"| churn {r['rate_per_second']:.0f}/s: the set's status (operator) | observedGeneration p50 {f3(r['operator_status_observed_p50_seconds'])} s, p99 {f3(r['operator_status_observed_p99_seconds'])} s, max {f3(o['status_observed']['max_seconds'])} s; Ready ({o['status_ready']['updates']} updates) p50 {f3(r['operator_status_ready_p50_seconds'])} s, p99 {f3(r['operator_status_ready_p99_seconds'])} s, max {f3(o['status_ready']['max_seconds'])} s, {o['sets_not_ready_within_60s']} not Ready within 60 s; {r['operator_status_writes_per_update']:.2f} status writes per update{busy(o)} |")
    print(f"| highest churn rate with p99 <= 1 s | operator {cl['operator_highest_rate_within_p99_1s']:.0f}/s, plain client {cl['plain_highest_rate_within_p99_1s']:.0f}/s (of those measured) |")
f=d['failover']
fg = '' if f.get('apiserver_gc_cycles') is None else f"; API server GC cycles {f['apiserver_gc_cycles']:.0f}"
print(f"| failover under {f.get('churn_rate_per_second', p['churn_rate']):.0f}/s churn | {lat(f)}; converged {f['converged_after_kill_seconds']:.1f} s after `kill -9` of {f['killed']}{fg} |")
if 'takeover_max_seconds' in f:
    print(f"| failover: takeover | {f['lost_shards']} shards lost, taken over after p50 {f['takeover_p50_seconds']:.2f} s, max {f['takeover_max_seconds']:.2f} s (Lease {f['lease_seconds']} s); the {f['outage_updates']} updates sent after the kill applied within {f['outage_update_max_seconds']:.2f} s |")
i=d['idle']
print(f"| idle | {i['write_requests_per_minute']:.1f} write requests per minute over {i['seconds']} s |")
w=d['whole_run_per_replica']
wr=', '.join('%.0f' % r['peak_rss_mib'] for r in w); wi=', '.join(r['identity'] for r in w)
print(f"| whole run, per replica | peak RSS {wr} MiB ({wi}) |")
def shares(sh):
    per=sh['per_replica']
    j=lambda f: ', '.join(f(x) for x in per)
    def wait(x):
        v=x.get('queue_wait_p99_seconds')
        if v is None or x.get('queue_wait_p99_above_top_bucket'):
            return '> 168'  # above the top bucket (167.8 s) of workqueue_queue_duration_seconds
        return f"{v:.2g}"
    return (f"sets per replica {j(lambda x: str(x['sets']))} (max/mean {sh['max_over_mean_sets']:.3f}); "
            f"shards {j(lambda x: str(x['shards']))}; reconciles {j(lambda x: '%.0f' % x['reconciles'])}; "
            f"CPU {j(lambda x: '%.0f' % x['cpu_seconds'])} s, {j(lambda x: '%.2f' % x['cpu_ms_per_reconcile'])} ms per reconcile; "
            f"queue wait p99 {j(wait)} s")
if cs.get('shares'):
    print(f"| cold start, per replica | {shares(cs['shares'])} |")
so=d.get('scale_out')
if so and 'runs' in so:
    for r in so['runs']:
        print(f"| scale-out: {r['replicas']} replicas, {so['sets']:,} sets | {r['sets_per_second']:.1f} sets/s (×{r['throughput_vs_one_replica']:.2f} of 1 replica); {shares(r['shares'])} |")
elif so:
    o=so['one_replica']; r=so['replicas']
    rr=', '.join('%.0f' % x['peak_rss_mib'] for x in r['per_replica'])
    print(f"| scale-out | 1 replica {o['sets_per_second']:.1f} sets/s (peak RSS {o['per_replica'][0]['peak_rss_mib']:.0f} MiB); {r['replicas']} replicas {r['sets_per_second']:.1f} sets/s (peak RSS {rr} MiB): ×{r['sets_per_second']/o['sets_per_second']:.2f} |")
t=d.get('tracing')
if t:
    runs=lambda side: ', '.join('%.1f' % r['sets_per_second'] for r in t[side].get('runs', []))
    order='' if 'runs' not in t['off'] else f"; runs in the order off {runs('off').split(', ')[0]}, on {runs('on')}, off {runs('off').split(', ')[-1]} sets/s"
    print(f"| tracing cost | off {t['off']['sets_per_second']:.1f} sets/s, sampling {t['sampling_ratio']} {t['on']['sets_per_second']:.1f} sets/s: cost {t['cost']*100:.1f} % (CPU per set {t['off']['cpu_seconds_per_set']:.3f} → {t['on']['cpu_seconds_per_set']:.3f} s){order} |")
tr=d.get('trials')
if tr:
    def trial(x, unit=''):
        return f"median {x['median']:.3f}{unit} (min {x['min']:.3f}, max {x['max']:.3f}{unit}; " + ', '.join('%.3f' % v for v in x['values']) + ")"
    print(f"| {tr['trials']} trials | cold start / limit {trial(tr['converge_to_limit_ratio'])}; churn p99 at {p['churn_rate']:.0f}/s {trial(tr['churn_p99_seconds'], ' s')}; observedGeneration p99 {trial(tr['status_observed_p99_seconds'], ' s')} |")
mem=d.get('memory')
if mem:
    runs='; '.join(f"{r['sets']:,} sets: {r['rss_after_cold_start_mib']:.0f} MiB after the cold start, {r['rss_after_churn_mib']:.0f} MiB after {r['churn_updates']} updates" for r in mem['runs'])
    print(f"| memory per set held (1 replica) | {runs}; {mem['slope_mib_per_1000_sets']:.2f} MiB per 1,000 sets over {mem['base_mib']:.0f} MiB ({mem['slope_after_churn_mib_per_1000_sets']:.2f} over {mem['base_after_churn_mib']:.0f} after {mem['churn_seconds']} s of churn at {mem['churn_rate_per_second']:.0f}/s) |")
print()
print("| bar | wanted | measured | |\n|---|---|---|---|")
for b in d['bars']:
    print(f"| {b['bar']} | {b['wanted']} | {b['value']:.3f} | {'met' if b['met'] else '**missed**'} |")
print()
print("requests per set (cold start):")
for k,v in sorted(cs['requests'].items(), key=lambda kv:-kv[1])[:30]:
    print(f"  {k}: {v/p['sets']:.3f}   (limit: {li['requests'].get(k,0)/p['sets']:.3f})")
print("churn control plane CPU:", d['churn'].get('control_plane_cpu_seconds'))
