//! `docs/grafana-dashboard.json` queries only series the Prometheus exporter serves for
//! `idemq::metrics::ALL` (counters and gauges by name, histograms as `_bucket`, `_sum`,
//! `_count`), filters only on labels those metrics carry, and shows every metric.

use idemq::metrics::{Metric, ALL};
use std::collections::HashSet;

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression: panel targets (rows included) and templating queries.
fn expressions(dash: &serde_json::Value) -> Vec<String> {
    fn panels(list: &serde_json::Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().expect("target has an expr").to_string());
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The `idemq_*` series an expression queries, each with the label names its selector uses.
fn queried(expr: &str) -> Vec<(String, Vec<String>)> {
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !ident(bytes[i - 1])) && expr[i..].starts_with("idemq_");
        if !starts {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !ident(bytes[j]))
            .unwrap_or(bytes.len());
        let name = expr[i..end].to_string();
        let mut labels = Vec::new();
        if bytes.get(end) == Some(&b'{') {
            let close = expr[end..].find('}').expect("selector closed") + end;
            for matcher in expr[end + 1..close]
                .split(',')
                .filter(|m| !m.trim().is_empty())
            {
                let label = matcher
                    .split(['=', '!', '~'])
                    .next()
                    .expect("label name")
                    .trim();
                labels.push(label.to_string());
            }
        }
        out.push((name, labels));
        i = end;
    }
    out
}

fn served_by(series: &str) -> Option<&'static Metric> {
    ALL.iter().find(|m| m.series().iter().any(|s| s == series))
}

#[test]
fn every_queried_series_is_one_the_exporter_serves() {
    let dash = dashboard();
    let exprs = expressions(&dash);
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let mut shown = HashSet::new();
    for expr in &exprs {
        let series = queried(expr);
        assert!(
            !series.is_empty() || expr.is_empty(),
            "no idemq metric in {expr}"
        );
        for (name, labels) in series {
            let metric = served_by(&name).unwrap_or_else(|| {
                panic!("{expr}: {name} is not served (histograms: _bucket/_sum/_count)")
            });
            for label in labels {
                assert!(
                    metric.labels.contains(&label.as_str()),
                    "{expr}: {} has no label {label}",
                    metric.name
                );
            }
            shown.insert(metric.name);
        }
    }
    for metric in ALL {
        assert!(
            shown.contains(metric.name),
            "{} is not on the dashboard",
            metric.name
        );
    }
}

#[test]
fn panels_use_the_datasource_variable_and_have_queries() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "idemq-overview");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "scope"]);
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            !p["targets"].as_array().expect("targets").is_empty(),
            "{}",
            p["title"]
        );
    }
}

#[test]
fn the_parser_finds_series_and_their_labels() {
    let got = queried(
        r#"histogram_quantile(0.99, sum by (le) (rate(idemq_handler_duration_seconds_bucket{scope=~"$scope",result!="ok"}[5m]))) / idemq_store_up"#,
    );
    assert_eq!(
        got,
        [
            (
                "idemq_handler_duration_seconds_bucket".to_string(),
                vec!["scope".to_string(), "result".to_string()]
            ),
            ("idemq_store_up".to_string(), vec![]),
        ]
    );
    assert!(
        served_by("idemq_handler_duration_seconds").is_none(),
        "bare histogram name"
    );
    assert!(served_by("idemq_messages_total_count").is_none());
    assert!(served_by("idemq_store_latency_seconds_sum").is_some());
}
