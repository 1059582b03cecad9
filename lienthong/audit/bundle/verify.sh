#!/bin/sh
# Verify this run bundle with POSIX sh and openssl only (plus cat, sed, od, tr, wc, mktemp).
# Exit 0 when every check holds; otherwise print what failed and exit 1.
#   1. manifest.p7s is a valid CMS signature over manifest.json by a certificate from ca.pem
#   2. manifest.tsr is an RFC 3161 time stamp over manifest.p7s by a TSA certified by tsa-ca.pem
#   3. the RFC 6962 Merkle root recomputed from records.jsonl is the root in manifest.json
set -u
cd "$(dirname "$0")" || exit 1
LC_ALL=C
export LC_ALL
failed=0
fail() { echo "FAIL: $*"; failed=1; }
work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT INT TERM

echo "manifest sha256: $(openssl dgst -sha256 -r manifest.json | sed 's/ .*//')"

# 1. The platform's signature.
if openssl cms -verify -binary -inform DER -in manifest.p7s -content manifest.json \
        -CAfile ca.pem -purpose any -signer "$work/signer.pem" -out /dev/null 2>"$work/cms.err"; then
    echo "ok: signature by $(openssl x509 -in "$work/signer.pem" -noout -subject)"
else
    fail "signature: $(tail -n 1 "$work/cms.err")"
fi

# 2. The time stamp over the signature.
if [ ! -f manifest.tsr ]; then
    fail "time stamp: the run was sealed without one (manifest.tsr is absent)"
elif openssl ts -verify -data manifest.p7s -in manifest.tsr -CAfile tsa-ca.pem >"$work/ts.out" 2>&1; then
    echo "ok: time stamp, $(openssl ts -reply -in manifest.tsr -text 2>/dev/null | sed -n 's/^Time stamp: //p')"
else
    fail "time stamp: $(tail -n 1 "$work/ts.out")"
fi

# 3. The Merkle root. Each line of records.jsonl is canonical JSON {"leaf":{...},"leaf_index":i,"proof":[...]};
# the leaf's bytes are exactly what sits between {"leaf": and ,"leaf_index".
tree=$(sed -n 's/.*"tree":{"algorithm":"RFC6962-SHA256","root":"\([0-9a-f]*\)","size":\([0-9]*\)}.*/\1 \2/p' manifest.json)
root=${tree% *}
size=${tree#* }
[ -n "$tree" ] || fail "manifest.json has no RFC6962-SHA256 tree"
n=0
while IFS= read -r line || [ -n "$line" ]; do
    index=$(printf '%s\n' "$line" | sed -n 's/.*,"leaf_index":\([0-9]*\),"proof":\[[0-9a-f",]*\]}$/\1/p')
    if [ "$index" != "$n" ]; then
        fail "records.jsonl line $((n + 1)) is leaf ${index:-?}, expected leaf $n"
        break
    fi
    { printf '\000'; printf '%s' "$line" | sed 's/^{"leaf"://; s/,"leaf_index":[0-9]*,"proof":\[[0-9a-f",]*\]}$//'; } \
        | openssl dgst -sha256 -binary >"$work/0.$n"
    n=$((n + 1))
done < records.jsonl
[ "$n" = "$size" ] || fail "records.jsonl has $n records, the manifest's tree has $size"
# Bottom-up; a level's lone last node moves up unchanged, which is RFC 6962's split for any size.
level=0
count=$n
while [ "$count" -gt 1 ]; do
    i=0
    while [ $((i + 1)) -lt "$count" ]; do
        { printf '\001'; cat "$work/$level.$i" "$work/$level.$((i + 1))"; } \
            | openssl dgst -sha256 -binary >"$work/$((level + 1)).$((i / 2))"
        i=$((i + 2))
    done
    [ "$i" -lt "$count" ] && cp "$work/$level.$i" "$work/$((level + 1)).$((i / 2))"
    level=$((level + 1))
    count=$(((count + 1) / 2))
done
if [ "$n" = 0 ]; then
    computed=$(printf '' | openssl dgst -sha256 -r | sed 's/ .*//')
else
    computed=$(od -An -v -tx1 "$work/$level.0" | tr -d ' \n')
fi
if [ "$computed" = "$root" ]; then
    echo "ok: Merkle root $root over $n records"
else
    fail "Merkle root: records.jsonl gives $computed, the manifest says $root"
fi

if [ "$failed" = 0 ]; then echo "VERIFIED"; else echo "NOT VERIFIED"; fi
exit "$failed"
