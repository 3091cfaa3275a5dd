#!/bin/sh
# check.sh EXE NAME [ARGS...] — runs an example and passes when it exits 0
# and its last line is "NAME: OK ..." (each example checks its own results
# and says so on that line). The output is shown either way.
set -u
exe=$1
name=$2
shift 2
out=$("$exe" "$@" 2>&1)
rc=$?
printf '%s\n' "$out"
last=$(printf '%s\n' "$out" | tail -n 1)
case $last in
"$name: OK"*) [ $rc -eq 0 ] && exit 0 ;;
esac
echo "check.sh: $name exited $rc; expected a last line \"$name: OK ...\"" >&2
exit 1
