//! Phase results and their two renderings: JSON (for tools) and markdown tables (for people).

use std::fmt::Write as _;

use serde::Serialize;
use serde::ser::SerializeMap;

/// Outcome of one phase against one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Ran, and nothing was lost or failed.
    Ok,
    /// Ran, but lost deliveries, failed connections or requests.
    Failed,
    /// Cannot run against this target (or not implemented yet).
    NotApplicable,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Metric {
    /// Name, e.g. `latency_p99_ms`.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit shown in tables.
    pub unit: &'static str,
}

/// Metrics keep their insertion order in JSON too.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub Vec<Metric>);

impl Metrics {
    /// Appends a metric.
    pub fn push(&mut self, name: &str, value: f64, unit: &'static str) {
        self.0.push(Metric { name: name.to_string(), value, unit });
    }

    /// Value of metric `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|m| m.name == name).map(|m| m.value)
    }
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for m in &self.0 {
            if m.value.is_finite() {
                map.serialize_entry(&m.name, &m.value)?;
            } else {
                map.serialize_entry(&m.name, &Option::<f64>::None)?;
            }
        }
        map.end()
    }
}

/// Result of one phase against one target.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    /// Stable key, e.g. `fanout_paced_2`.
    pub key: String,
    /// Human title.
    pub title: String,
    /// `wshub`, `go`, or `kernel` for the probe.
    pub target: String,
    /// Outcome.
    pub status: Status,
    /// True when the load generator's CPU was saturated: the figures then bound the generator,
    /// not the hub.
    pub generator_saturated: bool,
    /// Explanations (failures, n/a reasons, saturation).
    pub notes: Vec<String>,
    /// Figures.
    pub metrics: Metrics,
}

impl PhaseResult {
    /// An empty result.
    pub fn new(key: &str, title: &str, target: &str) -> Self {
        Self {
            key: key.to_string(),
            title: title.to_string(),
            target: target.to_string(),
            status: Status::Ok,
            generator_saturated: false,
            notes: Vec::new(),
            metrics: Metrics::default(),
        }
    }

    /// A phase that cannot run against `target`.
    pub fn not_applicable(key: &str, title: &str, target: &str, why: &str) -> Self {
        let mut r = Self::new(key, title, target);
        r.status = Status::NotApplicable;
        r.notes.push(format!("n/a: {why}"));
        r
    }

    /// Marks the phase failed with a reason.
    pub fn fail(&mut self, why: String) {
        self.status = Status::Failed;
        self.notes.push(why);
    }
}

/// One row of the headline summary.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    /// What is compared.
    pub figure: String,
    /// wshub's value.
    pub wshub: Option<f64>,
    /// The Go hub's value.
    pub go: Option<f64>,
    /// wshub / go.
    pub ratio: Option<f64>,
    /// The target for this figure.
    pub target: String,
    /// `met`, `missed`, or `n/a`.
    pub verdict: String,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Machine and settings.
    pub environment: serde_json::Value,
    /// Every phase result in run order.
    pub results: Vec<PhaseResult>,
    /// Headline figures against the targets.
    pub summary: Vec<SummaryRow>,
}

/// Formats a figure compactly.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1000.0 || (v.fract() == 0.0 && a < 1e15) {
        let s = format!("{:.0}", v);
        // thousands separators for readability
        let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", s.as_str()));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

impl Report {
    /// Value of `metric` of phase `key` against `target`, if it ran.
    pub fn value(&self, key: &str, target: &str, metric: &str) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.key == key && r.target == target && r.status != Status::NotApplicable)
            .and_then(|r| r.metrics.get(metric))
    }

    /// Renders every phase as a markdown table (one column per target, plus wshub/go ratios).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# wshub benchmark\n");
        if let Some(obj) = self.environment.as_object() {
            for (k, v) in obj {
                let _ = writeln!(out, "- {k}: {}", v.to_string().trim_matches('"'));
            }
            out.push('\n');
        }
        if !self.summary.is_empty() {
            let _ = writeln!(out, "## Summary\n");
            let _ = writeln!(out, "| figure | wshub | go | wshub/go | target | verdict |");
            let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
            let opt = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "n/a".into());
            for r in &self.summary {
                let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.figure,
                    opt(r.wshub),
                    opt(r.go),
                    ratio,
                    r.target,
                    r.verdict
                );
            }
            out.push('\n');
        }
        let mut keys: Vec<&str> = Vec::new();
        for r in &self.results {
            if !keys.contains(&r.key.as_str()) {
                keys.push(&r.key);
            }
        }
        for key in keys {
            let rows: Vec<&PhaseResult> = self.results.iter().filter(|r| r.key == key).collect();
            let _ = writeln!(out, "## {}\n", rows[0].title);
            for r in &rows {
                let sat = if r.generator_saturated { " — **load generator saturated**" } else { "" };
                let status = match r.status {
                    Status::Ok => "ok",
                    Status::Failed => "**FAILED**",
                    Status::NotApplicable => "n/a",
                };
                let _ = writeln!(out, "- {}: {status}{sat}", r.target);
                for n in &r.notes {
                    let _ = writeln!(out, "  - {n}");
                }
            }
            out.push('\n');
            let ran: Vec<&&PhaseResult> = rows.iter().filter(|r| !r.metrics.0.is_empty()).collect();
            if ran.is_empty() {
                continue;
            }
            let mut names: Vec<(&str, &str)> = Vec::new();
            for r in &ran {
                for m in &r.metrics.0 {
                    if !names.iter().any(|(n, _)| *n == m.name) {
                        names.push((&m.name, m.unit));
                    }
                }
            }
            let has_ratio = ran.iter().any(|r| r.target == "wshub") && ran.iter().any(|r| r.target == "go");
            let mut header = String::from("| metric | unit |");
            let mut rule = String::from("|---|---|");
            for r in &ran {
                let _ = write!(header, " {} |", r.target);
                rule.push_str("---:|");
            }
            if has_ratio {
                header.push_str(" wshub/go |");
                rule.push_str("---:|");
            }
            let _ = writeln!(out, "{header}\n{rule}");
            for (name, unit) in names {
                let mut line = format!("| {name} | {unit} |");
                for r in &ran {
                    let v = r.metrics.get(name).map(fmt_num).unwrap_or_else(|| "-".into());
                    let _ = write!(line, " {v} |");
                }
                if has_ratio {
                    let w = self.value(key, "wshub", name);
                    let g = self.value(key, "go", name);
                    let ratio = match (w, g) {
                        (Some(w), Some(g)) if g != 0.0 => format!("{:.2}", w / g),
                        _ => "-".into(),
                    };
                    let _ = write!(line, " {ratio} |");
                }
                let _ = writeln!(out, "{line}");
            }
            out.push('\n');
        }
        out
    }
}
