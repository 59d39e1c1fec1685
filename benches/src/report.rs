//! Results: a markdown table and JSON under `benches/results/`, with the machine noted.

use std::path::PathBuf;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub case: String,
    pub tool: String,
    pub seconds: f64,
    pub files_per_second: f64,
    pub megabytes_per_second: f64,
    /// This row's rate divided by each peer's rate in the same run (the same work, so
    /// files/s and MB/s give the same ratio; against the disk, MB/s).
    pub ratios: Vec<(String, f64)>,
}

/// Time until a change is on the other side, and the bytes it took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IncrementalRow {
    pub case: String,
    pub tool: String,
    pub seconds: f64,
    pub wire_bytes: u64,
}

/// Write-to-replica latency at a steady change rate, of one tool.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LagRow {
    /// `standin` or its peer (`lsyncd`).
    pub tool: String,
    pub changes_per_second: u32,
    pub changes: usize,
    /// Achieved write rate (the writer falls behind when the machine is busy).
    pub achieved_per_second: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The peer's median and p99 divided by this row's (standin's rows only; above 1:
    /// standin is that many times faster).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<(String, f64)>,
}

/// Peak resident memory and CPU time of one process (or process tree) for one case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResourceRow {
    pub case: String,
    pub process: String,
    pub peak_rss_mb: f64,
    pub cpu_seconds: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub name: String,
    pub when_unix_s: u64,
    pub cpu: String,
    pub cores: usize,
    pub file_system: String,
    pub runs_per_case: usize,
    pub rows: Vec<Row>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incremental: Vec<IncrementalRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lag: Vec<LagRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceRow>,
    /// Figures that are not a throughput (bytes over the wire, takeover, resources).
    pub notes: Vec<String>,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn file_system(path: &std::path::Path) -> String {
    let output = std::process::Command::new("df")
        .args(["--output=fstype", &path.to_string_lossy()])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .unwrap_or("unknown")
            .trim()
            .to_string(),
        Err(_) => "unknown".to_string(),
    }
}

impl Report {
    pub fn new(name: &str, work_dir: &std::path::Path, runs_per_case: usize) -> Report {
        Report {
            name: name.to_string(),
            when_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0),
            cpu: cpu_model(),
            cores: std::thread::available_parallelism()
                .map(|cores| cores.get())
                .unwrap_or(1),
            file_system: file_system(work_dir),
            runs_per_case,
            rows: Vec::new(),
            incremental: Vec::new(),
            lag: Vec::new(),
            resources: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The lag rows of `lags` (as `lag::lag_rates` returns them), each standin row
    /// with its ratios against the peer measured at the same rate.
    pub fn add_lag(&mut self, lags: &[crate::lag::RateLag]) {
        for lag in lags {
            let mut ratios = Vec::new();
            if lag.tool == "standin" {
                for peer in lags
                    .iter()
                    .filter(|peer| peer.tool != "standin" && peer.rate == lag.rate)
                {
                    ratios.push((
                        format!("{} median", peer.tool),
                        peer.at_ms(0.5) / lag.at_ms(0.5).max(1e-3),
                    ));
                    ratios.push((
                        format!("{} p99", peer.tool),
                        peer.at_ms(0.99) / lag.at_ms(0.99).max(1e-3),
                    ));
                }
            }
            self.lag.push(LagRow {
                tool: lag.tool.to_string(),
                changes_per_second: lag.rate,
                changes: lag.latencies.len(),
                achieved_per_second: lag.achieved,
                median_ms: lag.at_ms(0.5),
                p99_ms: lag.at_ms(0.99),
                max_ms: lag.at_ms(1.0),
                ratios,
            });
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## {} \n\nCPU: {} ({} cores), file system: {}, median of {} runs.\n",
            self.name, self.cpu, self.cores, self.file_system, self.runs_per_case
        );
        if !self.rows.is_empty() {
            out.push_str("\n| case | tool | seconds | files/s | MB/s | ratio |\n|---|---|---:|---:|---:|---|\n");
        }
        for row in &self.rows {
            let ratio = row
                .ratios
                .iter()
                .map(|(peer, value)| format!("{value:.2}× {peer}"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push_str(&format!(
                "| {} | {} | {:.3} | {:.0} | {:.1} | {} |\n",
                row.case,
                row.tool,
                row.seconds,
                row.files_per_second,
                row.megabytes_per_second,
                ratio
            ));
        }
        if !self.incremental.is_empty() {
            out.push_str(
                "\n| incremental case | tool | seconds to applied | bytes over the wire |\n|---|---|---:|---:|\n",
            );
            for row in &self.incremental {
                out.push_str(&format!(
                    "| {} | {} | {:.3} | {} |\n",
                    row.case, row.tool, row.seconds, row.wire_bytes
                ));
            }
        }
        if !self.lag.is_empty() {
            out.push_str(
                "\n| lag: changes/s (achieved) | tool | changes | median ms | p99 ms | max ms | ratio |\n|---|---|---:|---:|---:|---:|---|\n",
            );
            for row in &self.lag {
                let ratio = row
                    .ratios
                    .iter()
                    .map(|(what, value)| format!("{value:.2}× {what}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push_str(&format!(
                    "| {} ({:.0}) | {} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
                    row.changes_per_second,
                    row.achieved_per_second,
                    row.tool,
                    row.changes,
                    row.median_ms,
                    row.p99_ms,
                    row.max_ms,
                    ratio
                ));
            }
        }
        if !self.resources.is_empty() {
            out.push_str(
                "\n| resources: case | process | peak RSS MB | CPU s |\n|---|---|---:|---:|\n",
            );
            for row in &self.resources {
                out.push_str(&format!(
                    "| {} | {} | {:.0} | {:.2} |\n",
                    row.case, row.process, row.peak_rss_mb, row.cpu_seconds
                ));
            }
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }

    /// Write `<name>.md` and `<name>.json` under `dir` (default `benches/results/`).
    pub fn save(&self, dir: Option<&std::path::Path>) -> std::io::Result<PathBuf> {
        let dir = dir
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{}.md", self.name)), self.markdown())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(format!("{}.json", self.name)), json)?;
        Ok(dir)
    }
}
