#!/bin/bash
# Issue 22: perf record -F 499 -a -g for SECONDS, starting 0.5 s after the NTH "iperf3 -c 127.0.0.1" seen while a
# "pthost relay KIND" runs (zephyr-e2e: 3rd = the zephyr run after direct and plain; jet: 2nd). Start it before the
# harness; other iperf3 clients on the machine (other benchmarks) would be counted too: check OUT.info.
# usage: record-iperf-phase.sh RELAYKIND NTH OUT.data SECONDS : record the NTH iperf3 client seen while the relay lives
kind=$1; nth=$2; out=$3; secs=$4
declare -A seen; n=0
while true; do
  relay=$(pgrep -f "pthost relay $kind" | head -1)
  if [ -n "$relay" ]; then
    for ip in $(pgrep -f "iperf3 -c 127.0.0.1"); do
      if [ -z "${seen[$ip]}" ]; then seen[$ip]=1; n=$((n+1)); echo "iperf #$n pid $ip $(date +%T.%N)" >> $out.info
        if [ $n -eq $nth ]; then
          sleep 0.5
          ps -eo pid,ppid,etimes,args | grep -E "pthost|iperf3|proxychains" | grep -v grep >> $out.info
          perf record -F 499 -a -g -o $out -- sleep $secs 2>>$out.info
          ps -eo pid,ppid,etimes,args | grep -E "pthost|iperf3|proxychains" | grep -v grep >> $out.info
          exit 0
        fi
      fi
    done
  fi
  sleep 0.05
done
