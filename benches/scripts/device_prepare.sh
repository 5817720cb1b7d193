#!/bin/bash
# Builds and packs into .devperf/ (ignored by git) what benches/scripts/device_plan.sh needs on
# the lent 16-core machine: the release daemon, the load generator, redis-server with its
# libraries (../shared/devperf/prepare.sh does those), the start-up bench, and the plan itself.
# With BASE=<commit>, that commit's daemon too (.devperf/sessiond-base, built in a worktree
# with a target directory of its own), which the plan's step 7 alternates with this one.
# Then: run(command="bash .devperf/device_plan.sh", carry=[".devperf"], timeout_s=560)
# Check the plan here first, at small sizes: SMOKE=1 bash .devperf/device_plan.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
bash "$root/../shared/devperf/prepare.sh"
cargo bench --bench persist --no-run 2>&1 | tail -1
tgt=${CARGO_TARGET_DIR:-target}
persist=$(ls -t "$tgt"/release/deps/persist-* | grep -v "\.d$" | head -1)
cp "$persist" .devperf/persist && strip .devperf/persist
cp benches/scripts/device_plan.sh benches/scripts/device_tail.sh benches/scripts/ceiling_summary.py \
  benches/scripts/open_summary.py benches/scripts/tail_verdict.py .devperf/
if [ -n "${BASE:-}" ]; then
  rev=$(git rev-parse --short "$BASE")
  rm -rf /tmp/sessiond-base && git worktree add -f --detach /tmp/sessiond-base "$rev"
  (cd /tmp/sessiond-base && CARGO_TARGET_DIR="$root/target/base" cargo build --release --bin sessiond)
  git worktree remove --force /tmp/sessiond-base
  cp target/base/release/sessiond .devperf/sessiond-base && strip .devperf/sessiond-base
  echo "$rev" > .devperf/sessiond-base.rev
fi
du -sh .devperf
