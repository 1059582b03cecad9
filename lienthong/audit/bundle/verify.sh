#!/bin/sh
# Verify this run bundle with POSIX sh and openssl only (plus awk, cat, mv, sed, tail, mktemp).
# Exit 0 when every check holds; otherwise print what failed and exit 1.
#   1. manifest.tsr is an RFC 3161 time stamp over manifest.p7s by a TSA certified by tsa-ca.pem
#   2. manifest.p7s is a valid CMS signature over manifest.json by a certificate from ca.pem,
#      judged at the stamped time (the certificate may have expired since; that is no forgery)
#   3. the RFC 6962 Merkle root recomputed from records.jsonl is the root in manifest.json
set -u
cd "$(dirname "$0")" || exit 1
LC_ALL=C
export LC_ALL
failed=0
fail() { echo "FAIL: $*"; failed=1; }
# Section 3 rewrites its 1,000 small files hundreds of times: in memory (/dev/shm) where there is
# one and no TMPDIR says otherwise (100,000 records: 6 s there, 27 s on a disk mounted with discard).
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    TMPDIR=/dev/shm
    export TMPDIR
fi
work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT INT TERM

echo "manifest sha256: $(openssl dgst -sha256 -r manifest.json | sed 's/ .*//')"

# Seconds since 1970 of openssl's "Nov 29 19:00:00[.123] 2026 GMT", for -attime (POSIX sh has no
# date parser): days from the civil date, proleptic Gregorian, in integer arithmetic.
epoch_of() {
    set -- $1
    case $1 in Jan) m=1;; Feb) m=2;; Mar) m=3;; Apr) m=4;; May) m=5;; Jun) m=6;; Jul) m=7;; Aug) m=8;;
               Sep) m=9;; Oct) m=10;; Nov) m=11;; Dec) m=12;; *) return 1;; esac
    t=${3%%.*}
    h=${t%%:*}; ms=${t#*:}; mi=${ms%%:*}; sec=${ms#*:}
    d=${2#0}; h=${h#0}; mi=${mi#0}; sec=${sec#0}; y=$4
    [ "$m" -le 2 ] && y=$((y - 1))
    era=$((y / 400)); yoe=$((y - era * 400))
    doe=$((yoe * 365 + yoe / 4 - yoe / 100 + (153 * ((m + 9) % 12) + 2) / 5 + d - 1))
    echo $(((era * 146097 + doe - 719468) * 86400 + h * 3600 + mi * 60 + sec))
}

# 1. The time stamp over the signature: proof that the signature existed at that time.
stamped_at=""
if [ ! -f manifest.tsr ]; then
    fail "time stamp: the run was sealed without one (manifest.tsr is absent)"
elif openssl ts -verify -data manifest.p7s -in manifest.tsr -CAfile tsa-ca.pem >"$work/ts.out" 2>&1; then
    when=$(openssl ts -reply -in manifest.tsr -text 2>/dev/null | sed -n 's/^Time stamp: //p')
    stamped_at=$(epoch_of "$when") || fail "time stamp: cannot read its time '$when'"
    echo "ok: time stamp, $when"
else
    fail "time stamp: $(tail -n 1 "$work/ts.out")"
fi

# 2. The platform's signature; its certificate judged at the stamped time, or now if unstamped.
if openssl cms -verify -binary -inform DER -in manifest.p7s -content manifest.json \
        -CAfile ca.pem -purpose any ${stamped_at:+-attime "$stamped_at"} \
        -signer "$work/signer.pem" -out /dev/null 2>"$work/cms.err"; then
    echo "ok: signature by $(openssl x509 -in "$work/signer.pem" -noout -subject)"
else
    fail "signature: $(tail -n 1 "$work/cms.err")"
fi

# 3. The Merkle root. Each line of records.jsonl is canonical JSON {"leaf":{...},"leaf_index":i,"proof":[...]};
# the leaf's bytes are exactly what sits between {"leaf": and ,"leaf_index". One openssl process
# per hash would take hours for a million records, so awk writes what each hash covers (0x00 ||
# leaf; 0x01 || left || right) to one of 1,000 files and openssl hashes the 1,000 at once, a
# level of the tree at a time; the files are rewritten, never more than 1,000 of them at a time.
tree=$(sed -n 's/.*"tree":{"algorithm":"RFC6962-SHA256","root":"\([0-9a-f]*\)","size":\([0-9]*\)}.*/\1 \2/p' manifest.json)
root=${tree% *}
size=${tree#* }
[ -n "$tree" ] || fail "manifest.json has no RFC6962-SHA256 tree"
mkdir "$work/h" || exit 1
# awk: next_file() names the file for the next hash's bytes; flush() appends the hashes of the files
# named so far, in order, to the file "out", one hex digest a line. openssl writes to a file of its
# own, not into a pipe whose status would be sed's: awk then exits 1 when openssl fails.
batch='
function next_file() { if (count == 1000) flush(); return dir "/" count++ }
function flush(   i, names) {
    for (i = 0; i < count; i++) names = names " " i
    if (count && system("cd \"" dir "\" && openssl dgst -sha256 -r" names " >digests && sed \"s/ .*//\" digests >>\"" out "\""))
        exit 1
    count = 0
}'
computed=""
if ! awk -v dir="$work/h" -v out="$work/level" -v bad="$work/bad" "$batch"'
    {
        at = "?"
        if (substr($0, 1, 8) == "{\"leaf\":" && match($0, /,"leaf_index":[0-9]+,"proof":[[][0-9a-f",]*[]][}]$/)) {
            at = substr($0, RSTART + 14)
            sub(/,.*/, "", at)
        }
        if (at != NR - 1 "") {
            printf "records.jsonl line %d is leaf %s, expected leaf %d\n", NR, at, NR - 1 > bad
            exit
        }
        file = next_file()
        printf "%c%s", 0, substr($0, 9, RSTART - 9) > file
        close(file)
    }
    END { flush(); print NR > (dir "/n") }
' records.jsonl; then
    [ -f "$work/bad" ] ||
        echo "Merkle root: the leaves could not be hashed (awk's or openssl's message above)" >"$work/bad"
fi
n=$(cat "$work/h/n" 2>/dev/null)
if [ -f "$work/bad" ]; then
    :
elif [ "$n" = 0 ]; then
    computed=$(printf '' | openssl dgst -sha256 -r | sed 's/ .*//')
else
    count=$n
    # Bottom-up; a level's lone last node moves up unchanged, which is RFC 6962's split for any size.
    while [ "$count" -gt 1 ]; do
        awk -v dir="$work/h" -v out="$work/next" "$batch"'
            BEGIN { for (i = 0; i < 256; i++) byte[sprintf("%02x", i)] = i }
            function put(hex, file,   i) { for (i = 1; i < 64; i += 2) printf "%c", byte[substr(hex, i, 2)] > file }
            NR % 2 == 1 { left = $0; next }
            {
                file = next_file()
                printf "%c", 1 > file
                put(left, file)
                put($0, file)
                close(file)
            }
            END {
                flush()
                if (NR % 2 == 1) { print left >> out; close(out) }
            }
        ' "$work/level" || {
            echo "Merkle root: a level of the tree could not be hashed (awk's or openssl's message above)" >"$work/bad"
            break
        }
        mv "$work/next" "$work/level"
        count=$(((count + 1) / 2))
    done
    [ "$count" = 1 ] && computed=$(cat "$work/level")
fi
if [ -f "$work/bad" ]; then
    fail "$(cat "$work/bad")"
else
    [ "$n" = "$size" ] || fail "records.jsonl has $n records, the manifest's tree has $size"
    if [ "$computed" = "$root" ]; then
        echo "ok: Merkle root $root over $n records"
    else
        fail "Merkle root: records.jsonl gives $computed, the manifest says $root"
    fi
fi

if [ "$failed" = 0 ]; then echo "VERIFIED"; else echo "NOT VERIFIED"; fi
exit "$failed"
