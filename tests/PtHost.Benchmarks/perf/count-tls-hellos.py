#!/usr/bin/env python3
# Issue 22 (docs/benchmarks.md, TLS 1.3 resumption): tcpdump is not installed here; this counts, for SECONDS, the
# TLS ClientHello/ServerHello records seen on lo (segments that start with one) with and without pre_shared_key.
# Usage (root): count-tls-hellos.py SECONDS
import socket, struct, sys, time
# Counts TLS ClientHellos / ServerHellos on lo, with and without pre_shared_key (41), for SECONDS.
secs=float(sys.argv[1]); s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3)); s.bind(('lo',0)); s.settimeout(0.5)
def ext41(p, ch):
    try:
        q=p[9+2+32:]; q=q[1+q[0]:]
        if ch: q=q[2+(q[0]<<8|q[1]):]; q=q[1+q[0]:]
        else: q=q[3:]
        n=q[0]<<8|q[1]; q=q[2:2+n]
        while len(q)>=4:
            t=q[0]<<8|q[1]; l=q[2]<<8|q[3]
            if t==41: return True
            q=q[4+l:]
    except Exception: pass
    return False
c={}; end=time.time()+secs
while time.time()<end:
    try: pkt,addr=s.recvfrom(65535)
    except socket.timeout: continue
    if addr[2]==socket.PACKET_OUTGOING: continue
    ip=pkt[14:]
    if len(ip)<20 or ip[0]>>4!=4 or ip[9]!=6: continue
    ihl=(ip[0]&15)*4; tcp=ip[ihl:]; off=(tcp[12]>>4)*4; p=tcp[off:]
    if len(p)>9 and p[0]==22 and p[1]==3 and p[5] in (1,2):
        k=('ClientHello' if p[5]==1 else 'ServerHello', 'pre_shared_key' if ext41(p,p[5]==1) else 'none')
        c[k]=c.get(k,0)+1
print(c)
