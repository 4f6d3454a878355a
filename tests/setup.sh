#!/usr/bin/env bash
# Prepares a machine for `cargo test --workspace`: installs what the tests drive besides the
# PostgreSQL 15 binaries (already on the image): libfaketime (instances with a wrong clock),
# HAProxy (a fleet behind a load balancer) and Prometheus with promtool (scraping, the shipped
# rules and dashboard); and builds the previous release's server for the
# rolling-upgrade test (the commit in tests/upgrade-from), once per target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/setup.sh: installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The previous release's server, for server/tests/upgrade.rs (instances of N-1 and N side by side).
target="${CARGO_TARGET_DIR:-$PWD/target}"
prev="$(tr -d '[:space:]' < tests/upgrade-from)"
out="$target/previous/strata-server-$prev"
if [ ! -x "$out" ]; then
  echo "tests/setup.sh: building strata-server at $prev (the previous release) for the upgrade test"
  # A shallow clone may lack the commit: fetch just that one.
  git cat-file -e "$prev^{commit}" 2>/dev/null || git fetch --quiet --depth=1 origin "$prev"
  tree="$(mktemp -d)/strata-$prev"
  git worktree add --quiet --detach "$tree" "$prev"
  # Its own target directory under ours: the shared one would overwrite this tree's binary.
  (cd "$tree" && CARGO_TARGET_DIR="$target/previous/build" cargo build --quiet -p strata-server --bin strata-server)
  mkdir -p "$target/previous"
  cp "$target/previous/build/debug/strata-server" "$out"
  git worktree remove --force "$tree"
fi
