//! Pictures for people: the training curves and the confusion matrix, drawn with plotters into
//! memory and returned as PNG bytes, so that the caller writes them atomically like every other
//! file maas writes.
//!
//! The text is drawn with DejaVu Sans embedded in the binary (`assets/fonts/`): a server or a CI
//! machine often has no system fonts, and a plot without labels cannot be read.

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::artifact::checkpoint::EpochMetrics;

/// DejaVu Sans 2.37 (license in `assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// The family every text here uses; plotters' own defaults (axis labels) ask for it too.
const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters, once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if !ok {
        bail!("the font embedded in maas cannot be read");
    }
    Ok(())
}

/// Draws with `paint` on a white `width` x `height` RGB canvas and encodes the result as PNG.
fn render(
    width: u32,
    height: u32,
    paint: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    font()?;
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        paint(&root)?;
        root.present().context("cannot draw")?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels)
        .context("the canvas has the wrong size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .context("cannot encode the picture as PNG")?;
    Ok(png.into_inner())
}

/// plotters' errors carry the backend's type; for us they are all "could not draw".
fn drawing<T, E: std::error::Error + Send + Sync + 'static>(result: Result<T, E>) -> Result<T> {
    result.context("cannot draw")
}

const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOUR: RGBColor = RGBColor(255, 127, 14);
const VALIDATION_COLOUR: RGBColor = RGBColor(44, 160, 44);

/// `curves.png`: loss (left) and accuracy (right) per epoch, train, validation (where the run
/// has it) and test, as PNG bytes.
pub fn curves_png(history: &[EpochMetrics]) -> Result<Vec<u8>> {
    if history.is_empty() {
        bail!("no epoch to plot");
    }
    render(1400, 560, |root| {
        let last = history.len();
        let final_val = history[last - 1]
            .val_accuracy
            .map_or(String::new(), |v| format!("validation accuracy {v:.4}, "));
        let title = format!(
            "maas training: {last} epoch{}, final {final_val}test accuracy {:.4}",
            if last == 1 { "" } else { "s" },
            history[last - 1].test_accuracy
        );
        let body = drawing(root.titled(&title, (FAMILY, 26)))?;
        let (left, right) = body.split_horizontally(700);
        let max_loss = history
            .iter()
            .flat_map(|m| [m.train_loss, m.test_loss, m.val_loss.unwrap_or(0.0)])
            .filter(|v| v.is_finite())
            .fold(0f64, f64::max);
        let loss_top = if max_loss > 0.0 { max_loss * 1.1 } else { 1.0 };
        panel(
            &left,
            history,
            "Loss (mean cross-entropy)",
            "loss",
            0.0..loss_top,
            // Losses fall and accuracies rise: the legend goes where the lines are not.
            SeriesLabelPosition::UpperRight,
            |m| [Some(m.train_loss), m.val_loss, Some(m.test_loss)],
        )?;
        panel(
            &right,
            history,
            "Accuracy",
            "accuracy",
            0.0..1.0,
            SeriesLabelPosition::LowerRight,
            |m| {
                [
                    Some(m.train_accuracy),
                    m.val_accuracy,
                    Some(m.test_accuracy),
                ]
            },
        )
    })
}

/// One panel of [`curves_png`]: train, validation and test of one figure against the epoch.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    history: &[EpochMetrics],
    caption: &str,
    y_label: &str,
    y_range: std::ops::Range<f64>,
    legend: SeriesLabelPosition,
    figure: impl Fn(&EpochMetrics) -> [Option<f64>; 3],
) -> Result<()> {
    let last = history.iter().map(|m| m.epoch).max().unwrap_or(1) as f64;
    let first = history.iter().map(|m| m.epoch).min().unwrap_or(1) as f64;
    // Half an epoch of room on each side keeps the first and last points whole.
    let x_range = first - 0.3..last + 0.3;
    // Epochs are whole numbers: ticks between them stay unlabelled.
    let whole = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 && *v >= 1.0 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    let mut chart = drawing(
        ChartBuilder::on(area)
            .caption(caption, (FAMILY, 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, y_range),
    )?;
    drawing(
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_label)
            .x_labels(((last - first) as usize + 1).clamp(2, 12))
            .x_label_formatter(&whole)
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18))
            .max_light_lines(2)
            .light_line_style(RGBColor(238, 238, 238))
            .draw(),
    )?;
    for (name, colour, pick) in [
        ("train", TRAIN_COLOUR, 0usize),
        ("validation", VALIDATION_COLOUR, 1usize),
        ("test", TEST_COLOUR, 2usize),
    ] {
        let points: Vec<(f64, f64)> = history
            .iter()
            .filter_map(|m| Some((m.epoch as f64, figure(m)[pick]?)))
            .collect();
        // A run without validation has no such line, nor its legend entry.
        if points.is_empty() {
            continue;
        }
        drawing(chart.draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(3),
        )))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(3)));
        drawing(chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled()))))?;
    }
    drawing(
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FAMILY, 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw(),
    )
}

/// The colour of a share in [0, 1]: white through to dark blue (like matplotlib's "Blues").
fn blues(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(mix(247, 8), mix(251, 48), mix(255, 107))
}

/// `confusion.png`: the confusion matrix with each row divided by its total (so a cell is the
/// share of that true class predicted as that column), a colour scale, class names on both axes
/// and the share and count written in every cell, as PNG bytes. `note` goes under the title.
pub fn confusion_png(labels: &[String], confusion: &[Vec<u64>], note: &str) -> Result<Vec<u8>> {
    let n = labels.len();
    if n == 0 || confusion.len() != n || confusion.iter().any(|row| row.len() != n) {
        bail!("the confusion matrix is not square with one row per class");
    }
    // Cells shrink as classes grow, within what stays legible.
    let cell = (760 / n as u32).clamp(34, 80);
    let label_font = 17u32.min(cell / 2 + 4);
    font()?;
    // Room for the longest class name, measured in the embedded font.
    let name_room = labels
        .iter()
        .map(|l| {
            (FAMILY, label_font)
                .into_font()
                .box_size(l)
                .map_or(0, |(w, _)| w)
        })
        .max()
        .unwrap_or(0)
        .min(400);
    let (axis_title, gap) = (40u32, 12u32);
    let (left, top) = (axis_title + name_room + gap, 96u32);
    let grid = cell * n as u32;
    let (bottom, right) = (gap + name_room + axis_title + 8, 150u32);
    let (width, height) = ((left + grid + right).max(640), top + grid + bottom);
    render(width, height, |root| {
        let centre = |h: HPos, v: VPos| Pos::new(h, v);
        drawing(root.draw(&Text::new(
            "Confusion matrix (each row: share of the true class)",
            (width as i32 / 2, 14),
            text(24, &BLACK).pos(centre(HPos::Center, VPos::Top)),
        )))?;
        drawing(root.draw(&Text::new(
            note.to_string(),
            (width as i32 / 2, 50),
            text(17, &GREY_TEXT).pos(centre(HPos::Center, VPos::Top)),
        )))?;
        let (x0, y0) = (left as i32, top as i32);
        let c = cell as i32;
        for (i, row) in confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (j, &count) in row.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                let (x, y) = (x0 + j as i32 * c, y0 + i as i32 * c);
                drawing(root.draw(&Rectangle::new(
                    [(x, y), (x + c, y + c)],
                    blues(share).filled(),
                )))?;
                let ink = if share > 0.5 { &WHITE } else { &BLACK };
                let big = (cell * 30 / 100).clamp(11, 20);
                let centre_xy = (x + c / 2, y + c / 2);
                if cell >= 48 {
                    drawing(root.draw(&Text::new(
                        format!("{share:.2}"),
                        (centre_xy.0, centre_xy.1 - big as i32 / 2),
                        text(big, ink).pos(centre(HPos::Center, VPos::Center)),
                    )))?;
                    drawing(root.draw(&Text::new(
                        format!("({count})"),
                        (centre_xy.0, centre_xy.1 + big as i32 * 2 / 3),
                        text(big * 3 / 4, ink).pos(centre(HPos::Center, VPos::Center)),
                    )))?;
                } else {
                    drawing(root.draw(&Text::new(
                        format!("{share:.2}"),
                        centre_xy,
                        text(big, ink).pos(centre(HPos::Center, VPos::Center)),
                    )))?;
                }
            }
        }
        // Cell borders, so that pale neighbours stay apart.
        for k in 0..=n as i32 {
            let grey = RGBColor(200, 200, 200);
            drawing(root.draw(&PathElement::new(
                [(x0, y0 + k * c), (x0 + n as i32 * c, y0 + k * c)],
                grey,
            )))?;
            drawing(root.draw(&PathElement::new(
                [(x0 + k * c, y0), (x0 + k * c, y0 + n as i32 * c)],
                grey,
            )))?;
        }
        // Class names: true classes left of their rows, predicted ones under their columns,
        // turned upright so that long names fit.
        for (k, label) in labels.iter().enumerate() {
            let mid = k as i32 * c + c / 2;
            drawing(root.draw(&Text::new(
                label.clone(),
                (x0 - 10, y0 + mid),
                text(label_font, &BLACK).pos(centre(HPos::Right, VPos::Center)),
            )))?;
            let upright = TextStyle::from(
                (FAMILY, label_font)
                    .into_font()
                    .transform(FontTransform::Rotate270),
            )
            .color(&BLACK)
            .pos(centre(HPos::Right, VPos::Center));
            drawing(root.draw(&Text::new(
                label.clone(),
                (x0 + mid, y0 + grid as i32 + gap as i32),
                upright,
            )))?;
        }
        let axis = TextStyle::from((FAMILY, 19).into_font()).color(&BLACK);
        drawing(root.draw(&Text::new(
            "predicted class",
            (
                x0 + grid as i32 / 2,
                height as i32 - axis_title as i32 / 2 - 4,
            ),
            axis.pos(centre(HPos::Center, VPos::Center)),
        )))?;
        let axis_upright =
            TextStyle::from((FAMILY, 19).into_font().transform(FontTransform::Rotate270))
                .color(&BLACK)
                .pos(centre(HPos::Center, VPos::Center));
        drawing(root.draw(&Text::new(
            "true class",
            (axis_title as i32 / 2, y0 + grid as i32 / 2),
            axis_upright,
        )))?;
        colour_bar(root, x0 + grid as i32 + 40, y0, grid as i32)
    })
}

const GREY_TEXT: RGBColor = RGBColor(80, 80, 80);

/// Horizontal text of `size` pixels in `colour`.
fn text(size: u32, colour: &'static RGBColor) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(colour)
}

/// The colour scale right of the matrix: 0 at the bottom, 1 at the top.
fn colour_bar(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    x: i32,
    y: i32,
    height: i32,
) -> Result<()> {
    let width = 24;
    for step in 0..height {
        let t = 1.0 - f64::from(step) / f64::from((height - 1).max(1));
        drawing(root.draw(&Rectangle::new(
            [(x, y + step), (x + width, y + step + 1)],
            blues(t).filled(),
        )))?;
    }
    drawing(root.draw(&Rectangle::new(
        [(x, y), (x + width, y + height)],
        BLACK.stroke_width(1),
    )))?;
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let ty = y + ((1.0 - tick) * f64::from(height - 1)).round() as i32;
        drawing(root.draw(&PathElement::new(
            [(x + width, ty), (x + width + 6, ty)],
            BLACK,
        )))?;
        drawing(
            root.draw(&Text::new(
                format!("{tick:.2}"),
                (x + width + 10, ty),
                TextStyle::from((FAMILY, 15).into_font())
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(png: &[u8]) -> image::RgbImage {
        image::load_from_memory(png).unwrap().to_rgb8()
    }

    fn metrics(epoch: usize, loss: f64, acc: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: loss,
            train_accuracy: acc,
            test_loss: loss * 1.2,
            test_accuracy: acc * 0.9,
            val_loss: None,
            val_accuracy: None,
            seconds: 1.0,
            samples_per_second: 100.0,
        }
    }

    /// Pixels that are neither white nor (nearly) a single flat colour: text and lines.
    fn ink(image: &image::RgbImage) -> usize {
        image.pixels().filter(|p| p.0 != [255, 255, 255]).count()
    }

    #[test]
    fn curves_are_a_png_with_text_and_both_series() {
        let history: Vec<_> = (1..=4)
            .map(|e| metrics(e, 2.0 / e as f64, 0.2 * e as f64))
            .collect();
        let png = curves_png(&history).unwrap();
        let image = decoded(&png);
        assert_eq!(image.dimensions(), (1400, 560));
        assert!(ink(&image) > 5_000, "hardly anything was drawn");
        let has = |c: RGBColor| image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(TRAIN_COLOUR) && has(TEST_COLOUR));
        assert!(!has(VALIDATION_COLOUR), "no validation, no line");
        let validated: Vec<_> = history
            .iter()
            .map(|m| EpochMetrics {
                val_loss: Some(m.test_loss * 0.9),
                val_accuracy: Some(m.test_accuracy * 1.05),
                ..m.clone()
            })
            .collect();
        let image = decoded(&curves_png(&validated).unwrap());
        let has = |c: RGBColor| image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(VALIDATION_COLOUR) && has(TEST_COLOUR) && has(TRAIN_COLOUR));
        // A single epoch still gives a picture.
        assert!(curves_png(&history[..1]).is_ok());
        assert!(curves_png(&[]).is_err());
    }

    #[test]
    fn confusion_cells_are_shaded_by_the_row_share() {
        let labels: Vec<String> = ["cat", "dog", "a rather long class name"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let confusion = vec![vec![10, 0, 0], vec![5, 5, 0], vec![0, 0, 0]];
        let png = confusion_png(&labels, &confusion, "3 images").unwrap();
        let image = decoded(&png);
        // One cell of share 1, two of 0.5 and six of 0 (the empty row included), each 80x80
        // less the text written in it.
        let count = |c: RGBColor| image.pixels().filter(|p| p.0 == c.into_rgb()).count();
        let cells = |c: RGBColor| (count(c) as f64 / (80.0 * 80.0)).round() as usize;
        assert_eq!(cells(blues(1.0)), 1);
        assert_eq!(cells(blues(0.5)), 2);
        assert_eq!(cells(blues(0.0)), 6);
        assert!(ink(&image) > 80 * 80 * 9, "the cells are missing");
        assert!(confusion_png(&labels, &confusion[..2], "").is_err());
    }

    trait IntoRgb {
        fn into_rgb(self) -> [u8; 3];
    }
    impl IntoRgb for RGBColor {
        fn into_rgb(self) -> [u8; 3] {
            [self.0, self.1, self.2]
        }
    }
}
