#!/bin/sh
# check_exports.sh LIB HEADER — libbraid.so exports exactly the functions
# braid.h declares: every dynamic symbol it defines is a br_ name (no br__
# internal, nothing from the C library or a sanitizer) in the version node
# BRAID_0.1, and every br_ function of the header is among them (a function
# declared but left out of the library would only fail at a user's link).
# Run by meson test (suite lib); NM names another nm for cross builds.
set -eu

lib=$1
header=$2
nm=${NM:-nm}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# "ADDR T br_now_ns@@BRAID_0.1"; the version node itself is an absolute
# symbol ("0 A BRAID_0.1").
"$nm" -D --defined-only "$lib" >"$tmp/nm"
awk '$2 != "A" { print $3 }' "$tmp/nm" | sort >"$tmp/exported"
awk '$2 == "A" { print $3 }' "$tmp/nm" | sort >"$tmp/nodes"

status=0
if [ "$(cat "$tmp/nodes")" != "BRAID_0.1" ]; then
    echo "version nodes: expected BRAID_0.1, found: $(tr '\n' ' ' <"$tmp/nodes")"
    status=1
fi
# Symbols that are not br_<letter or digit>...@@BRAID_0.1.
grep -Ev '^br_[a-zA-Z0-9][a-zA-Z0-9_]*@@BRAID_0\.1$' "$tmp/exported" >"$tmp/stray" || true
if [ -s "$tmp/stray" ]; then
    echo "exported but not public (br_ names of braid.h only):"
    sed 's/^/  /' "$tmp/stray"
    status=1
fi

# The header's functions: a br_ name followed by "(" (function pointer
# typedefs read "(*br_x_cb)(" and do not match; macros are BR_).
grep -oE '\bbr_[a-z0-9_]+[[:space:]]*\(' "$header" | sed 's/[[:space:]]*($//' | sort -u >"$tmp/declared"
sed 's/@@.*//' "$tmp/exported" | sort -u >"$tmp/names"
comm -23 "$tmp/declared" "$tmp/names" >"$tmp/missing"
if [ -s "$tmp/missing" ]; then
    echo "declared in braid.h but not exported:"
    sed 's/^/  /' "$tmp/missing"
    status=1
fi
comm -13 "$tmp/declared" "$tmp/names" >"$tmp/extra"
if [ -s "$tmp/extra" ]; then
    echo "exported but not declared in braid.h:"
    sed 's/^/  /' "$tmp/extra"
    status=1
fi

if [ $status -eq 0 ]; then
    echo "libbraid exports $(wc -l <"$tmp/names") functions, all declared in braid.h, in BRAID_0.1"
fi
exit $status
