#!/usr/bin/env python3
# Issue 22 (docs/benchmarks.md "Encrypted transports: where the CPU goes"): splits `perf script -F comm,pid,tid,ip,sym,dso`
# output per process (pid=role arguments) into stages. libcrypto is stripped: its AES-GCM code (aesni-gcm + ghash
# assembly) is recognised by address, 0x243000-0x24a200 in Debian 12 libssl3 3.0.22-1~deb12u2, the range that
# `perf record openssl speed -evp aes-256-gcm` spends its time in (check it again after a libssl3 update).
# Usage: split-by-stage.py perf.txt PID=client PID=server PID=relay ...
import sys, re, collections
path=sys.argv[1]; roles=dict(a.split('=') for a in sys.argv[2:])  # pid=role
samples=[]; cur=None
for line in open(path, errors='replace'):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if not line.startswith('\t') and not line.startswith(' '):
        m=re.match(r'(.*?)\s+(\d+)/(\d+)',line.rstrip()); cur=(m.group(1),m.group(2),[]) ; continue
    m=re.match(r'\s*([0-9a-f]+)\s+(.*)\s+\((.*)\)\s*$',line)
    if m and cur: cur[2].append((m.group(2),m.group(3),m.group(1)))
if cur: samples.append(cur)
def cat(frames):
    if not frames: return 'other'
    sym,dso=frames[0][0],frames[0][1]
    dsos=[f[1] for f in frames]; syms=[f[0] for f in frames]
    k='kernel.kallsyms' in dso
    if 'libcrypto' in dso:
        if 0x243000 <= int(frames[0][2],16) < 0x24a200 or re.search(r'gcm|ghash|aesni',sym,re.I): return 'AES-GCM (aesni/ghash)'
        return 'OpenSSL record layer/EVP/BIO'
    if 'libssl' in dso: return 'OpenSSL record layer/EVP/BIO'
    if 'Cryptography.Native' in dso: return 'OpenSSL record layer/EVP/BIO'
    if k:
        if any(re.search(r'schedule|futex|epoll_wait|sched_yield|try_to_wake_up|nanosleep|do_idle|cpuidle|poll_idle|default_idle|wake_up_q|finish_task_switch',s) for s in syms):
            return 'kernel: scheduling/wake-ups'
        if re.search(r'copy_(from|to)_iter|copy_user|rep_movs',sym): return 'kernel: user<->kernel copies'
        return 'kernel: TCP/IP stack, syscalls'
    if 'libc.so' in dso and re.search(r'mem(cpy|move|set)',sym):
        if any('libssl' in d or 'libcrypto' in d or 'Cryptography.Native' in d for d in dsos[1:]): return 'OpenSSL record layer/EVP/BIO'
        if any('perf-' in d or 'deleted' in d or 'doublemapper' in d for d in dsos[1:]): return '.NET managed (SslStream, copies, framing)'
        return 'libc other'
    if 'perf-' in dso or 'doublemapper' in dso or 'deleted' in dso: return '.NET managed (SslStream, copies, framing)'
    if 'System.Private.CoreLib' in dso or '.dll' in dso: return '.NET managed (SslStream, copies, framing)'
    if 'libclrjit' in dso: return 'JIT'
    if 'libcoreclr' in dso: return 'runtime (GC, thread pool, stubs)'
    if 'libSystem.Native' in dso: return 'runtime (GC, thread pool, stubs)'
    if 'libc.so' in dso:
        if any('libssl' in d or 'libcrypto' in d for d in dsos[1:]): return 'OpenSSL record layer/EVP/BIO'
        return 'libc other'
    if 'iperf3' in dso or 'libiperf' in dso: return 'iperf3 own code'
    if 'proxychains' in dso: return 'proxychains'
    return 'other:'+dso.split('/')[-1]
by=collections.defaultdict(collections.Counter); tot=collections.Counter()
for comm,pid,fr in samples:
    r=roles.get(pid, 'idle' if pid=='0' else 'other processes')
    c=cat(fr); by[r][c]+=1; tot[r]+=1
N=len(samples)
print(f'{N} samples (2 CPUs); share of all samples per process, then split within each process')
for r in sorted(tot,key=lambda x:-tot[x]):
    print(f'{r:18s} {tot[r]:5d} {100*tot[r]/N:5.1f} %')
    for c,n in by[r].most_common():
        print(f'    {c:45s} {n:5d} {100*n/tot[r]:5.1f} %')
