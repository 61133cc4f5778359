//! The machine line of the report: CPU model, cores, rustc version, date, commit.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::process;

/// Facts about the machine and the tree a bench ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub(crate) cpu: String,
    /// Logical CPUs available to this process.
    pub(crate) threads: usize,
    /// `rustc -V`.
    pub(crate) rustc: String,
    /// `git rev-parse --short HEAD` (plus `-dirty`), if available.
    pub(crate) commit: String,
    /// UTC date `YYYY-MM-DD`.
    pub(crate) date: String,
    /// The 1-minute load average when the run started (other work on the machine skews timings).
    pub(crate) load: Option<f64>,
}

impl Machine {
    /// Probes the current machine.
    pub(crate) fn probe(root: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let rustc = process::output_of(Command::new(rustc).arg("-V"))
            .unwrap_or_else(|| "rustc (unknown)".into());
        let git =
            |args: &[&str]| process::output_of(Command::new("git").current_dir(root).args(args));
        let mut commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            commit.push_str("-dirty");
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Machine {
            cpu: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".into()),
            threads,
            rustc,
            commit,
            date: civil_date(secs / 86_400),
            load: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        }
    }

    /// One line for the report.
    pub(crate) fn line(&self) -> String {
        let load = self
            .load
            .map(|l| format!(", load average {l:.1} at start"))
            .unwrap_or_default();
        format!(
            "{}, {} threads, {}, commit {}, {}{load}",
            self.cpu, self.threads, self.rustc, self.commit, self.date
        )
    }
}

/// The first `model name` of a /proc/cpuinfo text.
pub(crate) fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (H. Hinnant's civil-from-days).
pub(crate) fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_first_model_name() {
        let t =
            "processor\t: 0\nvendor_id\t: X\nmodel name\t: AMD EPYC 7B13\nmodel name\t: other\n";
        assert_eq!(cpu_model(t).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_000), "2024-10-04");
    }
}
