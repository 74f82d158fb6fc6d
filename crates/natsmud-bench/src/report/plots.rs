//! The PNG plots the report links to.

use std::path::Path;

use anyhow::{Result, anyhow};

use super::{latency, ok, thousands};
use crate::analysis::Latency;
use crate::load::Mode;
use crate::procs::Usage;
use crate::scenario::ScenarioResult;

pub(super) struct Series {
    label: String,
    color: plotters::style::RGBColor,
    points: Vec<(f64, f64)>,
}

pub(super) fn font_bytes() -> Option<&'static [u8]> {
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            return Some(Box::leak(bytes.into_boxed_slice()));
        }
    }
    None
}

pub(super) fn plot_all(results: &[ScenarioResult], dir: &Path) -> Result<Vec<(String, String)>> {
    use plotters::style::full_palette::{BLUE, GREEN, ORANGE, PURPLE, RED};
    let bytes = font_bytes()
        .ok_or_else(|| anyhow!("no TTF font found (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("the font could not be read"))?;
    let good: Vec<&ScenarioResult> = results
        .iter()
        .filter(|r| ok(r) && r.is_standard())
        .collect();
    let mut active: Vec<&&ScenarioResult> =
        good.iter().filter(|r| r.mode == Mode::Active).collect();
    active.sort_by_key(|r| r.players);
    let mut idle: Vec<&&ScenarioResult> = good.iter().filter(|r| r.mode == Mode::Idle).collect();
    idle.sort_by_key(|r| r.players);
    let x = |r: &ScenarioResult| f64::from(r.players);
    let lat = |rs: &[&&ScenarioResult], kind: &str, f: fn(&Latency) -> f64| -> Vec<(f64, f64)> {
        rs.iter()
            .filter_map(|r| latency(r, kind).map(|l| (x(r), f(&l))))
            .collect()
    };
    let mut made = Vec::new();
    if !active.is_empty() {
        let series = vec![
            Series {
                label: "room event p50".into(),
                color: BLUE,
                points: lat(&active, "room_event", |l| l.p50_ms),
            },
            Series {
                label: "room event p99".into(),
                color: RED,
                points: lat(&active, "room_event", |l| l.p99_ms),
            },
            Series {
                label: "room event p99.9".into(),
                color: PURPLE,
                points: lat(&active, "room_event", |l| l.p999_ms),
            },
            Series {
                label: "tick fan-out p99".into(),
                color: GREEN,
                points: lat(&active, "tick", |l| l.p99_ms),
            },
        ];
        line_chart(
            &dir.join("latency.png"),
            "Latency vs active players",
            "players",
            "ms",
            &series,
        )?;
        made.push((
            "latency.png".to_owned(),
            "Latency percentiles vs active players".to_owned(),
        ));
        let usage = |f: fn(&crate::load::Resources) -> &Usage| -> Vec<(f64, f64)> {
            active
                .iter()
                .filter_map(|r| Some((x(r), f(&r.outcome.as_ref()?.resources).cpu_pct_of_core)))
                .collect()
        };
        let series = vec![
            Series {
                label: "natsmud (all nodes)".into(),
                color: RED,
                points: usage(|r| &r.server),
            },
            Series {
                label: "nats-server".into(),
                color: BLUE,
                points: usage(|r| &r.nats),
            },
            Series {
                label: "load generator".into(),
                color: ORANGE,
                points: usage(|r| &r.generator),
            },
        ];
        line_chart(
            &dir.join("cpu.png"),
            "CPU vs active players (100% = one core; 2 cores)",
            "players",
            "% of a core",
            &series,
        )?;
        made.push(("cpu.png".to_owned(), "CPU use vs active players".to_owned()));
    }
    let rss = |rs: &[&&ScenarioResult]| -> Vec<(f64, f64)> {
        rs.iter()
            .filter_map(|r| {
                Some((
                    x(r),
                    r.outcome.as_ref()?.resources.server.rss_end_kib as f64 / 1024.0,
                ))
            })
            .collect()
    };
    if !good.is_empty() {
        let series = vec![
            Series {
                label: "natsmud RSS, active".into(),
                color: RED,
                points: rss(&active),
            },
            Series {
                label: "natsmud RSS, idle".into(),
                color: BLUE,
                points: rss(&idle),
            },
        ];
        line_chart(
            &dir.join("rss.png"),
            "natsmud memory (all nodes) vs players",
            "players",
            "MiB",
            &series,
        )?;
        made.push(("rss.png".to_owned(), "natsmud RSS vs players".to_owned()));
    }
    if !idle.is_empty() {
        let series = vec![
            Series {
                label: "tick fan-out p50".into(),
                color: BLUE,
                points: lat(&idle, "tick", |l| l.p50_ms),
            },
            Series {
                label: "tick fan-out p99".into(),
                color: RED,
                points: lat(&idle, "tick", |l| l.p99_ms),
            },
            Series {
                label: "tick fan-out max".into(),
                color: PURPLE,
                points: lat(&idle, "tick", |l| l.max_ms),
            },
        ];
        line_chart(
            &dir.join("idle-tick.png"),
            "Tick fan-out vs idle players",
            "players",
            "ms",
            &series,
        )?;
        made.push((
            "idle-tick.png".to_owned(),
            "Tick fan-out latency vs idle players".to_owned(),
        ));
    }
    Ok(made)
}

pub(super) fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.08;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| thousands(v.max(0.0).round() as u64))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
