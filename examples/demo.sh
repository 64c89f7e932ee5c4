#!/usr/bin/env bash
# The demo: copy the example repository somewhere fresh, make it a git repository, and let
# pullsmith fix its bug with the bundled model. The checkout itself stays clean.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pullsmith=${PULLSMITH:-"$here/../.venv/bin/pullsmith"}
demo=$(mktemp -d "${TMPDIR:-/tmp}/pullsmith-demo.XXXXXX")
cp -r "$here/inventory/." "$demo/"
git -C "$demo" init -q -b main
git -C "$demo" add -A
git -C "$demo" -c user.name="pullsmith demo" -c user.email=demo@localhost commit -q -m "inventory: initial import"
echo "demo repository: $demo"
echo
status=0
"$pullsmith" exec --attempts 3 --until-pass --repo "$demo" "The CSV export drops the last row of the inventory. Fix to_csv so every row is exported." || status=$?
echo
echo "branches in $demo:"
git -C "$demo" branch --list 'pullsmith/*' -v
# The pull request's branch: the chosen attempt's (the newest commit, with --until-pass).
branch=$("$pullsmith" pr list --repo "$demo" --json 2>/dev/null | python3 -c 'import json,sys; prs=json.load(sys.stdin); print(prs[0]["head"] if prs else "")' 2>/dev/null || true)
if [ -n "$branch" ]; then
  echo
  git -C "$demo" --no-pager log -1 --stat "$branch"
fi
exit $status
