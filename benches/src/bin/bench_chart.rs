//! Draws the charts of a comparison script's JSON report.
//!
//! ```text
//! cargo run --release -p atrest-benches --bin bench_chart -- REPORT.json [DIR]
//! ```
//!
//! Writes `DIR/BENCH-CHART.svg` for each chart of the report (DIR defaults to the
//! report's directory) and prints the files written. The comparison scripts run it
//! themselves; run it by hand to redraw an old report.

use std::path::PathBuf;

use anyhow::{bail, Result};
use atrest_benches::chart::Report;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (report, dir) = match args.as_slice() {
        [r] => {
            let r = PathBuf::from(r);
            let dir = r.parent().map(PathBuf::from).unwrap_or_default();
            (r, dir)
        }
        [r, d] => (PathBuf::from(r), PathBuf::from(d)),
        _ => bail!("usage: bench_chart REPORT.json [DIR]"),
    };
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    for file in Report::read(&report)?.render_all(&dir)? {
        println!("{}", file.display());
    }
    Ok(())
}
