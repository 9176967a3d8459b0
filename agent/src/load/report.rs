//! `agent load`'s text output: a header, one line per second, and a summary per step and for
//! the run, in the spirit of wrk's. Pure functions of the reports, so the format is tested
//! without a run.

use std::fmt::Write as _;
use std::time::Duration;

use super::engine::LoadSummary;
use super::plan::Model;
use super::stats::{LatencySummary, SecondReport, Tally, per_second};

/// The column header of the per-second lines.
pub fn header(model: Model) -> String {
    let level = match model {
        Model::Closed => "workers",
        Model::Open => "  conns",
    };
    format!(
        "{:>5} {:>4} {level} {:>9} {:>9} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9}",
        "sec",
        "step",
        "intended",
        "achieved",
        "2xx",
        "3xx",
        "4xx",
        "429",
        "5xx",
        "errors",
        "p50 ms",
        "p99 ms"
    )
}

/// One per-second line. `intended` is `-` for the closed model (it has no schedule); latencies
/// are the corrected ones.
pub fn second_line(model: Model, r: &SecondReport) -> String {
    let t = &r.tally;
    let intended = match model {
        Model::Closed => "-".to_string(),
        Model::Open => format!("{:.1}", r.intended_rps()),
    };
    let lat = t.corrected.summary();
    format!(
        "{:>5} {:>4} {:>7} {intended:>9} {:>9.1} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9}",
        r.second + 1,
        r.step,
        r.workers,
        r.achieved_rps(),
        t.status.s2xx,
        t.status.s3xx,
        t.status.s4xx,
        t.status.rate_limited,
        t.status.s5xx,
        t.errors.total(),
        ms(lat.p50),
        ms(lat.p99),
    )
}

/// The final summary: the run's counts, rates and both latency figures, then one line per step.
pub fn summary(s: &LoadSummary) -> String {
    let mut out = String::new();
    let t = &s.total;
    let secs = s.elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "\n{} requests in {secs:.1} s{}: {:.1} responses/s achieved{}",
        t.sent,
        if s.stopped { " (stopped)" } else { "" },
        per_second(t.responses(), s.elapsed),
        match s.model {
            Model::Open => format!(", {:.1} req/s intended", per_second(t.intended, s.elapsed)),
            Model::Closed => String::new(),
        }
    );
    let st = &t.status;
    let _ = writeln!(
        out,
        "  status: 2xx {}, 3xx {}, 4xx {}, 429 rate-limited {}, 5xx {}, other {}",
        st.s2xx, st.s3xx, st.s4xx, st.rate_limited, st.s5xx, st.other
    );
    let e = &t.errors;
    let _ = writeln!(
        out,
        "  errors: connect {}, timeout {}, tls {}, io {}",
        e.connect, e.timeout, e.tls, e.io
    );
    let _ = writeln!(
        out,
        "  latency ms    {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max"
    );
    let _ = writeln!(out, "{}", latency_row("corrected", &t.corrected.summary()));
    let _ = writeln!(
        out,
        "{}",
        latency_row("uncorrected", &t.uncorrected.summary())
    );
    if s.model == Model::Closed {
        let _ = writeln!(
            out,
            "  (closed model: a request is intended when its worker sends it, so both agree)"
        );
    }
    let level = match s.model {
        Model::Closed => "workers",
        Model::Open => "req/s",
    };
    let _ = writeln!(
        out,
        "  per step: {:>4} {level:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "step", "secs", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "429", "errors"
    );
    for step in &s.steps {
        let lat = step.tally.corrected.summary();
        let _ = writeln!(
            out,
            "            {:>4} {:>8} {:>6.1} {:>9.1} {:>9} {:>9} {:>9} {:>8} {:>8}",
            step.step,
            trim_level(step.level),
            step.length.as_secs_f64(),
            per_second(step.tally.responses(), step.length),
            ms(lat.p50),
            ms(lat.p99),
            ms(lat.p999),
            step.tally.status.rate_limited,
            step.tally.errors.total(),
        );
    }
    out
}

/// The run's one-line description for the top of the output.
pub fn banner(url: &str, model: Model, level: f64, duration: Duration) -> String {
    match model {
        Model::Closed => format!(
            "load {url}: closed model, {} workers at start, {:.1} s",
            trim_level(level),
            duration.as_secs_f64()
        ),
        Model::Open => format!(
            "load {url}: open model, {} req/s at start, {:.1} s (latency from intended send times)",
            trim_level(level),
            duration.as_secs_f64()
        ),
    }
}

fn latency_row(name: &str, l: &LatencySummary) -> String {
    format!(
        "    {name:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn trim_level(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Whether a run answered anything (the command's exit status).
pub fn answered_any(t: &Tally) -> bool {
    t.responses() > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{RequestResult, Sample};

    #[test]
    fn lines_show_counts_rates_and_corrected_latency() {
        let t0 = tokio::time::Instant::now();
        let mut tally = Tally::default();
        let mut r = crate::load::stats::Recorder::new(t0);
        for (code, lat) in [(200, 2), (200, 4), (429, 1), (503, 1)] {
            r.record_closed(&Sample {
                intended: t0,
                sent: t0,
                done: t0 + Duration::from_millis(lat),
                result: RequestResult::Status(code),
            });
        }
        tally.merge(&r.take_all());
        let rep = SecondReport {
            second: 0,
            length: Duration::from_secs(1),
            step: 2,
            workers: 7,
            level: 7.0,
            tally,
        };
        let line = second_line(Model::Closed, &rep);
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[..11],
            ["1", "2", "7", "-", "4.0", "2", "0", "0", "1", "1", "0"],
            "{line}"
        );
        assert_eq!(header(Model::Closed).split_whitespace().count(), 15);
        assert!(second_line(Model::Open, &rep).split_whitespace().nth(3) == Some("4.0"));
    }
}
