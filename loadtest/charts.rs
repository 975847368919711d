//! The SVG charts: convergence over time per cold start, and the latency distributions.

use std::fmt::Write as _;

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];
const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 50.0;

fn frame(title: &str, x_label: &str, y_label: &str, max_x: f64, max_y: &str) -> String {
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{PAD}" y="20">{title}</text>
<line x1="{PAD}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{y0}" stroke="black"/>
<text x="{x1}" y="{xl}" text-anchor="end">{x_label}</text>
<text x="4" y="{PAD}">{max_y}</text>
<text x="4" y="{ym}">{y_label}</text>
"##,
        y0 = H - PAD,
        x1 = W - PAD,
        xl = H - PAD + 32.0,
        ym = H / 2.0,
    );
    // Ticks at every quarter of the x axis, labelled with their value.
    for q in 0..=4 {
        let x = PAD + f64::from(q) / 4.0 * (W - 2.0 * PAD);
        let value = max_x * f64::from(q) / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{y1}\" stroke=\"black\"/><text x=\"{x:.1}\" y=\"{yl}\" text-anchor=\"middle\">{value:.2}</text>",
            y0 = H - PAD,
            y1 = H - PAD + 4.0,
            yl = H - PAD + 16.0,
        );
    }
    out
}

/// A dashed vertical line at `x` (of `max_x`), labelled: a bar on the x axis.
fn marker(x: f64, max_x: f64, label: &str) -> String {
    let px = PAD + x / max_x.max(1e-9) * (W - 2.0 * PAD);
    format!(
        "<line x1=\"{px:.1}\" y1=\"{PAD}\" x2=\"{px:.1}\" y2=\"{y0}\" stroke=\"gray\" stroke-dasharray=\"4 4\"/><text x=\"{tx:.1}\" y=\"{ty}\" fill=\"gray\">{label}</text>\n",
        y0 = H - PAD,
        tx = px + 3.0,
        ty = PAD + 12.0,
    )
}

fn polyline(points: &[(f64, f64)], max_x: f64, max_y: f64, color: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let px = PAD + x / max_x.max(1e-9) * (W - 2.0 * PAD);
            let py = H - PAD - y / max_y.max(1e-9) * (H - 2.0 * PAD);
            format!("{px:.1},{py:.1}")
        })
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
        pts.join(" ")
    )
}

fn legend(out: &mut String, i: usize, label: &str) {
    let y = PAD + 16.0 * i as f64;
    let x = W - PAD - 280.0;
    let _ = writeln!(
        out,
        "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{label}</text>",
        y - 5.0,
        COLORS[i % COLORS.len()],
        x + 16.0
    );
}

/// A chart of fractions (0 to 1) over x from 0 to `max_x`: one line per (label, points),
/// and `markers` (x, label) drawn as dashed lines.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    max_x: f64,
    lines: &[(&str, Vec<(f64, f64)>)],
    markers: &[(f64, &str)],
) -> String {
    let mut out = frame(title, x_label, y_label, max_x, "100%");
    for (x, label) in markers {
        out += &marker(*x, max_x, label);
    }
    for (i, (label, points)) in lines.iter().enumerate() {
        out += &polyline(points, max_x, 1.0, COLORS[i % COLORS.len()]);
        legend(&mut out, i, label);
    }
    out + "</svg>\n"
}

/// A cold start's curve: its label, its sets, and (seconds, converged sets) samples.
pub type Curve = (String, usize, Vec<(f64, usize)>);

/// Converged fraction over time, one curve per cold start, each over its own duration (1 =
/// its end), so that runs of 2,000 and 10,000 sets share one axis; the cold-start curve's
/// bars (1 % by 0.1, half by 0.6) are marked.
pub fn convergence(curves: &[Curve]) -> String {
    let owned: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(label, total, curve)| {
            let end = curve.last().map_or(1.0, |p| p.0).max(1e-9);
            let points = curve
                .iter()
                .map(|(t, n)| (*t / end, *n as f64 / (*total).max(1) as f64))
                .collect();
            (format!("{label}: {total} sets, {end:.0} s"), points)
        })
        .collect();
    let lines: Vec<(&str, Vec<(f64, f64)>)> = owned
        .iter()
        .map(|(label, points)| (label.as_str(), points.clone()))
        .collect();
    chart(
        "Cold start: converged sets over each run's duration",
        "fraction of the run's duration",
        "% converged",
        1.0,
        &lines,
        &[(0.1, "1 % by here"), (0.6, "half by here")],
    )
}

/// Cumulative distribution of update latencies, one curve per scenario.
pub fn latency(series: &[(String, Vec<f64>)]) -> String {
    let max_l = series
        .iter()
        .filter_map(|s| s.1.last().copied())
        .fold(0.1, f64::max);
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, sorted)| {
            let n = sorted.len().max(1) as f64;
            let points = std::iter::once((0.0, 0.0))
                .chain(
                    sorted
                        .iter()
                        .enumerate()
                        .map(|(k, l)| (*l, (k + 1) as f64 / n)),
                )
                .collect();
            (label.as_str(), points)
        })
        .collect();
    chart(
        "Update latency: cumulative distribution",
        "s",
        "% applied",
        max_l,
        &lines,
        &[],
    )
}
