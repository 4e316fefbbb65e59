//! Pictures: the learning curves `na train` draws beside its checkpoint and
//! the confusion matrix `na eval` draws.
//!
//! Each picture renders to PNG (pixels through `image`) or SVG, chosen by the
//! file name's extension. Text is drawn with the bundled Go font
//! (`assets/Go-Regular.ttf`, BSD-3-Clause, see `assets/Go-Regular.LICENSE`),
//! so no system font library is needed and the output is the same on every
//! machine.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Result};
use na_model::train::run::{EpochRecord, Measured};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// The Go font's regular face.
const FONT: &[u8] = include_bytes!("../assets/Go-Regular.ttf");

/// The font family every text of a picture names.
const FAMILY: &str = "sans-serif";

/// A picture's file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 8-bit RGB PNG.
    Png,
    /// SVG 1.1 (text as `<text>` elements in the font family `sans-serif`).
    Svg,
}

impl Format {
    /// The format a file name asks for (`.png` or `.svg`, any case); `flag`
    /// names the option in the error.
    pub fn of(flag: &str, path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => bail!(
                "{flag} {}: name a .png or .svg file (the extension chooses the format)",
                path.display()
            ),
        }
    }
}

/// Something that draws itself on any plotters backend.
pub trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws on `root` (already filled white).
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Renders `picture` as a whole file's bytes in `format`.
pub fn render(picture: &impl Picture, format: Format) -> Result<Vec<u8>> {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The bundled bytes are a valid TrueType font; a failure would
        // surface below as "font unavailable" on the first text.
        let _ = register_font(FAMILY, FontStyle::Normal, FONT);
    });
    let (w, h) = picture.size();
    let fail = |e: String| anyhow!("drawing the picture: {e}");
    match format {
        Format::Png => {
            let mut px = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut px, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
                picture.draw(&root).map_err(|e| fail(e.to_string()))?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            let img = image::RgbImage::from_raw(w, h, px)
                .ok_or_else(|| fail("pixel buffer of the wrong size".into()))?;
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| fail(e.to_string()))?;
            Ok(out.into_inner())
        }
        Format::Svg => {
            let mut s = String::new();
            {
                let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
                picture.draw(&root).map_err(|e| fail(e.to_string()))?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            Ok(s.into_bytes())
        }
    }
}

/// An epoch axis' tick label: whole epochs only.
fn epoch_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// Line colours: blue, orange, green, red (colour-blind friendly).
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

/// A training run's learning curves: training loss and learning rate per
/// epoch (left), training and validation accuracy per epoch and the test
/// accuracy of the chosen weights (right).
#[derive(Clone, Debug)]
pub struct Curves<'a> {
    /// The title over both panels.
    pub title: String,
    /// One record per completed epoch.
    pub history: &'a [EpochRecord],
    /// The epoch whose weights were chosen on the validation split.
    pub chosen: Option<usize>,
    /// The chosen weights' test accuracy, once measured.
    pub test: Option<Measured>,
}

impl Picture for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 480)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let root = root.titled(&self.title, (FAMILY, 22))?;
        let (left, right) = root.split_horizontally(600);
        let n = self.history.len().max(1);
        let xs = 0.5f64..n as f64 + 0.5;
        let epochs = self.history.iter().map(|r| r.epoch as f64);

        // Left: training loss, and the learning rate on the right-hand axis.
        let loss: Vec<(f64, f64)> = epochs
            .clone()
            .zip(self.history.iter().map(|r| r.train_loss))
            .filter(|(_, l)| l.is_finite())
            .collect();
        let top = loss.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-3) * 1.05;
        let lr_top = self
            .history
            .iter()
            .map(|r| r.lr as f64)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-12)
            * 1.05;
        let mut chart = ChartBuilder::on(&left)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(70)
            .caption("training loss and learning rate", (FAMILY, 17))
            .build_cartesian_2d(xs.clone(), 0.0f64..top)?
            .set_secondary_coord(xs.clone(), 0.0f64..lr_top);
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("loss")
            .x_labels(n.min(10) + 1)
            .x_label_formatter(&epoch_label)
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(loss.iter().copied(), BLUE.stroke_width(2)))?
            .label("training loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(
                epochs.clone().zip(self.history.iter().map(|r| r.lr as f64)),
                ORANGE.stroke_width(2),
            ))?
            .label("learning rate (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;

        // Right: accuracies, in percent.
        let pct = |a: f64| 100.0 * a;
        let train: Vec<(f64, f64)> = epochs
            .clone()
            .zip(self.history.iter().map(|r| pct(r.train_accuracy)))
            .collect();
        let val: Vec<(f64, f64)> = self
            .history
            .iter()
            .filter_map(|r| r.val_accuracy.map(|a| (r.epoch as f64, pct(a))))
            .collect();
        let test: Vec<(f64, f64)> = self
            .test
            .iter()
            .map(|t| (t.epoch as f64, pct(t.accuracy)))
            .collect();
        let all = || train.iter().chain(&val).chain(&test).map(|p| p.1);
        let lo = all().filter(|v| v.is_finite()).fold(100.0f64, f64::min);
        let hi = all().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
        let (lo, hi) = ((lo - 1.0).floor().max(0.0), (hi + 1.0).ceil().min(100.0));
        let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 100.0) };
        let mut chart = ChartBuilder::on(&right)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .caption("accuracy (%)", (FAMILY, 17))
            .build_cartesian_2d(xs, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy (%)")
            .x_labels(n.min(10) + 1)
            .x_label_formatter(&epoch_label)
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), BLUE.stroke_width(2)))?
            .label("training (augmented images)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().copied(), GREEN.stroke_width(2)))?
                .label("validation")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2))
                });
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))?;
        }
        if let Some(c) = self.chosen {
            if let Some(&p) = val.iter().find(|p| p.0 == c as f64) {
                chart
                    .draw_series(std::iter::once(Circle::new(p, 7, GREEN.stroke_width(2))))?
                    .label(format!("chosen: epoch {c} ({:.2}%)", p.1))
                    .legend(|(x, y)| Circle::new((x + 10, y), 6, GREEN.stroke_width(2)));
            }
        }
        if let Some(&p) = test.first() {
            chart
                .draw_series(std::iter::once(TriangleMarker::new(p, 8, RED.filled())))?
                .label(format!("test, measured once ({:.2}%)", p.1))
                .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, RED.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    }
}

/// A confusion matrix: rows are true classes, columns predicted ones; each
/// cell shows its count, shaded by its share of the row.
#[derive(Clone, Debug)]
pub struct Confusion<'a> {
    /// The title.
    pub title: String,
    /// Class names, in index order.
    pub classes: &'a [&'a str],
    /// `counts[true][predicted]`.
    pub counts: &'a [Vec<usize>],
}

impl Picture for Confusion<'_> {
    fn size(&self) -> (u32, u32) {
        let n = self.classes.len() as u32;
        (200 + 64 * n + 30, 90 + 64 * n + 110)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let n = self.classes.len() as i32;
        let cell = 64i32;
        let (x0, y0) = (200i32, 90i32);
        let text = |size: f64, colour: &'static RGBColor, h: HPos, v: VPos| {
            TextStyle::from((FAMILY, size).into_font())
                .color(colour)
                .pos(Pos::new(h, v))
        };
        root.draw(&Text::new(
            self.title.clone(),
            ((x0 + n * cell / 2), 30),
            text(20.0, &BLACK, HPos::Center, VPos::Center),
        ))?;
        root.draw(&Text::new(
            "predicted class",
            (x0 + n * cell / 2, 62),
            text(15.0, &BLACK, HPos::Center, VPos::Center),
        ))?;
        for (i, row) in self.counts.iter().enumerate().take(n as usize) {
            let total: usize = row.iter().sum();
            for (j, &c) in row.iter().enumerate().take(n as usize) {
                let share = if total == 0 {
                    0.0
                } else {
                    c as f64 / total as f64
                };
                // White to dark blue by the share of the row.
                let mix = |hi: u8, lo: u8| (hi as f64 + (lo as f64 - hi as f64) * share) as u8;
                let fill = RGBColor(mix(255, 8), mix(255, 48), mix(255, 107));
                let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    fill.filled(),
                ))?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    BLACK.mix(0.15).stroke_width(1),
                ))?;
                let ink: &'static RGBColor = if share > 0.5 { &WHITE } else { &BLACK };
                root.draw(&Text::new(
                    c.to_string(),
                    (x + cell / 2, y + cell / 2),
                    text(15.0, ink, HPos::Center, VPos::Center),
                ))?;
            }
            let acc = if total == 0 {
                String::new()
            } else {
                format!(
                    " {:.1}%",
                    100.0 * row.get(i).copied().unwrap_or(0) as f64 / total as f64
                )
            };
            root.draw(&Text::new(
                format!("{}{acc}", self.classes[i]),
                (x0 - 8, y0 + i as i32 * cell + cell / 2),
                text(14.0, &BLACK, HPos::Right, VPos::Center),
            ))?;
        }
        for (j, name) in self.classes.iter().enumerate() {
            root.draw(&Text::new(
                name.to_string(),
                (x0 + j as i32 * cell + cell / 2, y0 + n * cell + 8),
                TextStyle::from((FAMILY, 14).into_font())
                    .color(&BLACK)
                    .transform(FontTransform::Rotate90)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        root.draw(&Text::new(
            "true class (its accuracy)",
            (x0 - 8, y0 - 14),
            text(15.0, &BLACK, HPos::Right, VPos::Center),
        ))?;
        Ok(())
    }
}
