# Sourced by the comparison scripts: draw_charts REPORT.json DIR draws the SVG charts of
# a comparison's JSON report (benches/src/chart.rs, the bench_chart binary) into DIR.
# With build=0 (the scripts' --no-build) it uses an existing target/release/bench_chart
# (or $BENCH_CHART).
# A chart that cannot be drawn is a message, not a failed benchmark: the JSON report and
# the printed tables are the record.
draw_charts() {
    local root bin
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    bin="${BENCH_CHART:-$root/target/release/bench_chart}"
    if [[ "${build:-1}" == 1 && -z "${BENCH_CHART:-}" ]]; then
        if ! (cd "$root" && cargo build --release --quiet -p atrest-benches --bin bench_chart); then
            echo "charts not drawn: cargo build --release -p atrest-benches --bin bench_chart failed" >&2
            return 0
        fi
    fi
    if [[ ! -x "$bin" ]]; then
        echo "charts not drawn: no $bin (cargo build --release -p atrest-benches --bin bench_chart)" >&2
        return 0
    fi
    "$bin" "$1" "$2" | sed 's/^/chart: /' || echo "charts not drawn from $1" >&2
}
