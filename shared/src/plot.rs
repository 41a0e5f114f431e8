//! Loss curves a person can look at: content, style, TV and total loss
//! (each as weighted into the total) against iteration, log scale, as SVG
//! text (a caller writes it to a file or puts it in storage).

use plotters::prelude::*;
use stylefarm_params::LossRecord;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw the loss plot: {0}")]
pub struct PlotError(String);

/// `history` as an SVG document. `weights` are (α, β, tv_weight), so the
/// curves show each term as it enters the total.
pub fn loss_curves(history: &[LossRecord], weights: (f64, f64, f64), title: &str) -> Result<String, PlotError> {
    let mut svg = String::new();
    draw(&mut svg, history, weights, title)?;
    Ok(svg)
}

fn draw(svg: &mut String, history: &[LossRecord], weights: (f64, f64, f64), title: &str) -> Result<(), PlotError> {
    let fail = PlotError;
    let (a, b, t) = weights;
    let series: Vec<(&str, RGBColor, Vec<(f64, f64)>)> = vec![
        ("total", BLACK, history.iter().map(|r| (r.iteration as f64, r.losses.total)).collect()),
        ("α·content", BLUE, history.iter().map(|r| (r.iteration as f64, a * r.losses.content)).collect()),
        ("β·style", RED, history.iter().map(|r| (r.iteration as f64, b * r.losses.style)).collect()),
        ("tv_weight·tv", GREEN, history.iter().map(|r| (r.iteration as f64, t * r.losses.tv)).collect()),
    ];
    // Only positive, finite points can go on a log axis.
    let series: Vec<_> = series
        .into_iter()
        .map(|(n, c, pts)| (n, c, pts.into_iter().filter(|(_, y)| y.is_finite() && *y > 0.0).collect::<Vec<_>>()))
        .filter(|(_, _, pts)| !pts.is_empty())
        .collect();
    let ys = series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y));
    let (lo, hi) = ys.fold((f64::INFINITY, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo / 2.0, hi * 2.0) } else { (1e-3, 1.0) };
    let last = history.last().map(|r| r.iteration).unwrap_or(0).max(1) as f64;

    let root = SVGBackend::with_string(svg, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..last, (lo..hi).log_scale())
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("loss (log scale)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (name, color, pts) in series {
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_params::Losses;

    #[test]
    fn draws_every_positive_series_and_survives_an_empty_history() {
        let history: Vec<LossRecord> = (0..5)
            .map(|i| LossRecord { iteration: i, losses: Losses { content: 10.0, style: 100.0 / (i + 1) as f64, tv: 0.0, total: 1.0 + i as f64 }, seconds: 0.0 })
            .collect();
        let svg = loss_curves(&history, (0.01, 1.0, 0.0), "cat × starry").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("total") && svg.contains("β·style"), "{}", &svg[..200.min(svg.len())]);
        assert!(!svg.contains("tv_weight·tv"), "an all-zero series has no place on a log axis");
        assert!(loss_curves(&[], (0.01, 1.0, 0.0), "empty").unwrap().starts_with("<svg"));
    }
}
