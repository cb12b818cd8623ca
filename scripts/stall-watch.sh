#!/usr/bin/env bash
# Catches a process stalled in the kernel: every 20 ms, for each thread of the processes
# whose command line matches PATTERN, prints the time, pid, thread id, name and wait
# channel of every thread in uninterruptible sleep (state D), with its kernel stack and
# current syscall (reading the stack needs root). Run it beside a benchmark, e.g.
#   scripts/stall-watch.sh 'locus router' 300 > stalls.txt &
# It found the router's descriptor-table growth (accept4 -> expand_files ->
# synchronize_rcu; BENCHMARKS.md, flow control).
# Usage: scripts/stall-watch.sh PATTERN [SECONDS]
set -uo pipefail
(( $# )) || { sed -n '2,/^# Usage/p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
pattern=$1
end=$((SECONDS + ${2:-300}))
while (( SECONDS < end )); do
  for pid in $(pgrep -f "$pattern"); do
    for t in /proc/"$pid"/task/*; do
      [[ $(awk '{print $3}' "$t/stat" 2>/dev/null) == D ]] || continue
      echo "== $(date +%s.%N) pid $pid tid ${t##*/} $(cat "$t/comm" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
      cat "$t/stack" "$t/syscall" 2>/dev/null
    done
  done
  sleep 0.02
done
