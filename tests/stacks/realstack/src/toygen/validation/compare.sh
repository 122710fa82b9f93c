#!/bin/sh
# GenSer-style validation of toygen: compare a summary with the reference shipped in the sources.
# toygen uses no libm and fixed-order sums, so the summary must match byte for byte.
# usage: compare.sh REFERENCE SUMMARY
set -eu
if [ $# -ne 2 ]; then
    echo "usage: compare.sh REFERENCE SUMMARY" >&2
    exit 2
fi
if diff -u "$1" "$2"; then
    echo "toygen validation PASSED: $2 matches $1"
else
    echo "toygen validation FAILED: $2 differs from $1 (diff above)" >&2
    exit 1
fi
