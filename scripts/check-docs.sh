#!/usr/bin/env bash
# Checks that the documents say what the code does where a drift would mislead a newcomer: the
# README's "Try it" is exactly the walkthrough that up.sh prints (scripts/walkthrough.sh), and
# every relative link of the Markdown documents points at a file that exists. (The
# configuration tables are checked against the services' flags by reservation-svc/tests/docs.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."

expected=$(scripts/walkthrough.sh)
shown=$(awk '/^## Try it/{on=1} on && /^```sh$/{inside=1; next} inside && /^```$/{exit} inside' README.md)
if [ "$expected" != "$shown" ]; then
    echo "README.md's Try it differs from scripts/walkthrough.sh:" >&2
    diff <(printf '%s\n' "$shown") <(printf '%s\n' "$expected") >&2 || true
    exit 1
fi

status=0
for doc in README.md docs/*.md bench/README.md shared/protocol-model/README.md deploy/k8s/README.md; do
    [ -f "$doc" ] || continue
    dir=$(dirname "$doc")
    while read -r target; do
        path=${target%%#*}
        [ -z "$path" ] && continue
        if [ ! -e "$dir/$path" ]; then
            echo "$doc links to $target, which does not exist" >&2
            status=1
        fi
    done < <(grep -o '](\([^)]*\))' "$doc" | sed 's/^](\(.*\))$/\1/' | grep -v '^[a-z]*://' || true)
done
exit $status
