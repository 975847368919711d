//! Memory per set held: for each size of `--memory-sets`, on a control plane of its own, one
//! replica holds every set; its resident memory once the cold start converged, and again
//! after `--memory-churn-seconds` of churn at `--memory-churn-rate`. A least-squares line
//! through the sizes gives the base and the slope (MiB per 1,000 sets).

use std::time::Duration;

use vecodex_operator::crd::VecodexSetSpec;

use crate::args::Args;
use crate::churn::{Churner, settle};
use crate::cluster::{Replica, is_tenant, proc_rss};
use crate::results::{Memory, MemoryRun, one_line};
use crate::scenarios::{Before, Fresh, fresh_namespaces, with_fresh_replicas};

const MIB: f64 = 1048576.0;

pub(crate) async fn memory(args: &Args, spec: &VecodexSetSpec) -> anyhow::Result<Memory> {
    let mut runs = Vec::new();
    for &sets in &args.memory_sets {
        let sized = Args {
            sets,
            namespaces: fresh_namespaces(args, sets),
            ..args.clone()
        };
        let run = with_fresh_replicas(
            args,
            spec,
            "memory",
            1,
            sets,
            None,
            async |fresh: &Fresh<'_>, running: &[Replica], _: &Before, _| {
                let Fresh {
                    client, tracker, ..
                } = fresh;
                tracker
                    .wait_converged(sets, is_tenant, args.timeout())
                    .await?;
                let rss = || proc_rss(running[0].child.id()).map_or(f64::NAN, |b| b as f64 / MIB);
                let after_cold_start = rss();
                let scenario = format!("memory-{sets}");
                let sent = Churner::default()
                    .run(
                        client,
                        tracker,
                        &sized,
                        args.memory_churn_rate,
                        &scenario,
                        args.memory_churn_seconds as f64,
                    )
                    .await;
                let lost = settle(tracker, &scenario, Duration::from_secs(60)).await;
                if !lost.is_empty() {
                    anyhow::bail!("memory: {} updates of {sets} sets not applied", lost.len());
                }
                Ok(MemoryRun {
                    sets,
                    rss_after_cold_start_mib: after_cold_start,
                    rss_after_churn_mib: rss(),
                    peak_rss_mib: running[0].stats().peak_rss_mib,
                    churn_updates: sent,
                })
            },
        )
        .await?;
        eprintln!("loadtest: memory: {}", one_line(&run));
        runs.push(run);
    }
    let line = |rss: fn(&MemoryRun) -> f64| {
        fit(&runs
            .iter()
            .map(|r| (r.sets as f64 / 1000.0, rss(r)))
            .collect::<Vec<_>>())
    };
    let (base_mib, slope_mib_per_1000_sets) = line(|r| r.rss_after_cold_start_mib);
    let (base_after_churn_mib, slope_after_churn_mib_per_1000_sets) =
        line(|r| r.rss_after_churn_mib);
    Ok(Memory {
        churn_rate_per_second: args.memory_churn_rate,
        churn_seconds: args.memory_churn_seconds,
        runs,
        base_mib,
        slope_mib_per_1000_sets,
        base_after_churn_mib,
        slope_after_churn_mib_per_1000_sets,
    })
}

/// The least-squares line through `points` (x, y): (intercept, slope); NaN for fewer than
/// two distinct x.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    if sxx == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let slope = sxy / sxx;
    (my - slope * mx, slope)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fit_finds_a_line() {
        let (base, slope) = super::fit(&[(1.0, 44.0), (5.0, 64.0), (10.0, 89.0)]);
        assert!(
            (slope - 5.0).abs() < 1e-9 && (base - 39.0).abs() < 1e-9,
            "{base} {slope}"
        );
        assert!(super::fit(&[(1.0, 1.0)]).1.is_nan());
    }
}
