//! bench.png: four panels (delivered pps, latency, CPU per packet, legit requests served
//! under flood), one group of bars per mode; unavailable modes are labelled, not drawn.
//! Text needs a TrueType font: DejaVu Sans from Debian's fonts-dejavu-core, read at run time
//! (plotters' ab_glyph backend needs no system font libraries).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use plotters::prelude::*;

use super::report::Summary;

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!("no DejaVuSans.ttf in {FONT_PATHS:?}: apt-get install fonts-dejavu-core")
            })?;
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(path)
                .map_err(|e| format!("reading {path}: {e}"))?
                .into_boxed_slice(),
        );
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One bar series of a panel.
struct Series<'a> {
    label: &'a str,
    color: RGBColor,
    values: Vec<Option<f64>>,
}

pub fn draw(summaries: &[Summary], kernel: &str, path: &Path) -> Result<()> {
    register_font()?;
    if summaries.is_empty() {
        bail!("nothing to draw");
    }
    let root = BitMapBackend::new(path, (1400, 950)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(50);
    title
        .titled(
            &format!("portproxy data paths, same run (kernel {kernel}); rates and CPU: best round, latency and flood: pooled"),
            (FONT, 24),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let panels = body.split_evenly((2, 2));
    let names: Vec<&str> = summaries.iter().map(|s| s.name.as_str()).collect();
    let unavailable: Vec<bool> = summaries.iter().map(|s| s.unavailable.is_some()).collect();
    let blue = RGBColor(52, 101, 164);
    let light = RGBColor(170, 190, 215);
    let orange = RGBColor(230, 130, 40);
    let red = RGBColor(190, 50, 50);
    let green = RGBColor(80, 150, 70);
    let get = |f: &dyn Fn(&Summary) -> Option<f64>| summaries.iter().map(f).collect::<Vec<_>>();
    panel(
        &panels[0],
        "delivered requests per second at the CGN",
        "packets/s",
        &names,
        &unavailable,
        &[
            Series {
                label: "generator sent",
                color: light,
                values: get(&|s| s.sent_pps),
            },
            Series {
                label: "delivered",
                color: blue,
                values: get(&|s| s.delivered_pps),
            },
        ],
    )?;
    panel(
        &panels[1],
        "request -> reply latency (one at a time)",
        "microseconds",
        &names,
        &unavailable,
        &[
            Series {
                label: "p50",
                color: blue,
                values: get(&|s| s.p50_us),
            },
            Series {
                label: "p99",
                color: orange,
                values: get(&|s| s.p99_us),
            },
            Series {
                label: "p99.9",
                color: red,
                values: get(&|s| s.p999_us),
            },
        ],
    )?;
    panel(
        &panels[2],
        "CPU time per delivered packet",
        "ns/packet",
        &names,
        &unavailable,
        &[
            Series {
                label: "whole machine (/proc/stat)",
                color: blue,
                values: get(&|s| s.sys_ns_per_pkt),
            },
            Series {
                label: "portproxy (utime+stime)",
                color: orange,
                values: get(&|s| s.daemon_ns_per_pkt),
            },
        ],
    )?;
    panel(
        &panels[3],
        "legitimate requests answered during a flood from lan2",
        "percent",
        &names,
        &unavailable,
        &[Series {
            label: "answered within 1 s",
            color: green,
            values: get(&|s| s.flood_legit_pct),
        }],
    )?;
    root.present()
        .map_err(|e| anyhow!("{e}"))
        .context("writing the PNG")?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    names: &[&str],
    unavailable: &[bool],
    series: &[Series<'_>],
) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let n = names.len();
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                names[i as usize].to_owned()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{:.1}M", y / 1e6)
            } else if *y >= 1e4 {
                format!("{:.0}k", y / 1e3)
            } else {
                format!("{y:.0}")
            }
        })
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(err)?;
    let k = series.len() as f64;
    let width = 0.8 / k;
    for (j, s) in series.iter().enumerate() {
        let color = s.color;
        let bars = s.values.iter().enumerate().filter_map(|(i, v)| {
            let v = (*v)?;
            if unavailable[i] {
                return None;
            }
            let x0 = i as f64 - 0.4 + j as f64 * width;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.92, v)],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(s.label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        // The value on top of each bar.
        let labels = s.values.iter().enumerate().filter_map(|(i, v)| {
            let v = (*v)?;
            if unavailable[i] {
                return None;
            }
            let x0 = i as f64 - 0.4 + j as f64 * width;
            let text = if v >= 1e4 {
                format!("{:.0}k", v / 1e3)
            } else if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            Some(Text::new(
                text,
                (x0, v + top * 0.01),
                (FONT, 11).into_font().color(&BLACK),
            ))
        });
        chart.draw_series(labels).map_err(err)?;
    }
    let notes = unavailable
        .iter()
        .enumerate()
        .filter(|(_, u)| **u)
        .map(|(i, _)| {
            Text::new(
                "unavailable",
                (i as f64 - 0.3, top * 0.5),
                (FONT, 14).into_font().color(&RED),
            )
        });
    chart.draw_series(notes).map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(err)?;
    Ok(())
}
