//! The consultation report: header with clinic and patient fields, one section per procedure
//! (before/after, description, recovery, risks, itemized costs), a comparison page when several
//! procedures are chosen, the disclaimer; reference, date and page numbers on every page.

use std::sync::Arc;

use afterview_core::catalog::Procedure;
use image::RgbImage;

use crate::fonts::Fonts;
use crate::layout::{ACCENT, Flow, INK, MUTED, Op, width_in, wrap_in};
use crate::{DISCLAIMER, ReportError, range};

/// Paper size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Paper {
    /// US Letter, 8.5 × 11 in.
    #[default]
    Letter,
    /// ISO A4.
    A4,
}

impl Paper {
    fn points(self) -> (f32, f32) {
        match self {
            Self::Letter => (612.0, 792.0),
            Self::A4 => (595.28, 841.89),
        }
    }
}

/// Patient and clinic fields; only those given are printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patient {
    pub name: Option<String>,
    /// Date of birth.
    pub date_of_birth: Option<String>,
    pub clinic: Option<String>,
    pub surgeon: Option<String>,
    /// Notes (the patient's goals, in their words).
    pub notes: Option<String>,
}

/// One simulated procedure.
#[derive(Debug, Clone)]
pub struct ReportItem {
    pub procedure: Procedure,
    /// `subtle`, `moderate`, `pronounced`.
    pub intensity: String,
    /// `local` or `gemini`.
    pub engine: String,
    /// The photo.
    pub before: Arc<RgbImage>,
    /// The simulation.
    pub after: Arc<RgbImage>,
    pub visualization_id: String,
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// Reference printed on every page.
    pub reference: String,
    /// Date printed on every page.
    pub date: String,
    pub paper: Paper,
    /// Patient fields.
    pub patient: Patient,
    /// Print the cost tables.
    pub include_costs: bool,
    /// Currency of every amount.
    pub currency: String,
    /// The catalog's cost disclaimer.
    pub cost_disclaimer: String,
    /// The procedures, in order.
    pub items: Vec<ReportItem>,
}

/// Longest side of pictures embedded in the PDF (keeps reports small and fast): larger
/// pictures are scaled down to it ([`fit_to_print`]), so callers need not keep more.
pub const PICTURE_SIDE: u32 = 900;

/// `img` no larger than the report prints it: its longest side at most [`PICTURE_SIDE`], its
/// proportions kept, at least a pixel each way (a very thin photo, 3000 x 3, would otherwise
/// scale to 0 rows, which the encoder refuses). `None` when it already fits.
pub fn fit_to_print(img: &RgbImage) -> Option<RgbImage> {
    let (w, h) = img.dimensions();
    if w.max(h) <= PICTURE_SIDE {
        return None;
    }
    let k = PICTURE_SIDE as f32 / w.max(h) as f32;
    Some(image::imageops::resize(
        img,
        ((w as f32 * k) as u32).max(1),
        ((h as f32 * k) as u32).max(1),
        image::imageops::FilterType::Triangle,
    ))
}

fn jpeg(img: &RgbImage) -> Arc<Vec<u8>> {
    let scaled = fit_to_print(img);
    let img = scaled.as_ref().unwrap_or(img);
    let mut out = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(img)
        .expect("encoding in memory");
    Arc::new(out)
}

/// Places pictures side by side with captions, fitting the content width and `max_h`.
fn pictures(f: &mut Flow, pics: &[(&str, &RgbImage)], max_h: f32) {
    let gap = 12.0;
    let cw = f.content_w();
    let fonts = f.fonts.clone();
    let n = pics.len() as f32;
    let ratios: f32 = pics
        .iter()
        .map(|(_, p)| p.width() as f32 / p.height() as f32)
        .sum();
    let h = ((cw - gap * (n - 1.0)) / ratios).min(max_h);
    let width_of = |p: &RgbImage| h * p.width() as f32 / p.height() as f32;
    // Each caption wrapped to its picture's width (and its share of the gaps): with eight
    // pictures in a row, one-line captions ran into each other.
    let (size, leading) = (8.5, 10.0);
    let captions: Vec<Vec<String>> = pics
        .iter()
        .map(|(c, p)| wrap_in(&fonts, c, size, true, width_of(p) + gap - 2.0))
        .collect();
    let lines = captions.iter().map(Vec::len).max().unwrap_or(1) as f32;
    f.need(h + 14.0 + leading * lines);
    let total_w: f32 = pics.iter().map(|(_, p)| width_of(p)).sum::<f32>() + gap * (n - 1.0);
    let mut x = f.margin + (cw - total_w) / 2.0;
    let y = f.y;
    for ((_, p), caption) in pics.iter().zip(&captions) {
        let w = width_of(p);
        f.push(Op::Image {
            x,
            y,
            w,
            h,
            jpeg: jpeg(p),
        });
        for (k, line) in caption.iter().enumerate() {
            let cap_w = width_in(&fonts, line, size, true);
            f.push(Op::Text {
                x: x + (w - cap_w) / 2.0,
                y: y + h + 13.0 + leading * k as f32,
                size,
                bold: true,
                color: MUTED,
                text: line.clone(),
            });
        }
        x += w + gap;
    }
    f.y = y + h + 12.0 + leading * lines;
}

fn cost_rows(p: &Procedure, currency: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = p
        .costs
        .components()
        .iter()
        .map(|(label, r)| vec![(*label).to_owned(), range(*r, currency)])
        .collect();
    rows.push(vec![
        "Total estimate".into(),
        range(p.costs.total(), currency),
    ]);
    rows
}

/// Renders the report.
pub fn render_report(input: &ReportInput) -> Result<Vec<u8>, ReportError> {
    render_report_with(input, &Fonts::bundled())
}

/// [`render_report`] with `fonts`' fallback faces for what the bundled faces lack.
pub fn render_report_with(input: &ReportInput, fonts: &Fonts) -> Result<Vec<u8>, ReportError> {
    if input.items.is_empty() {
        return Err(ReportError::Invalid(
            "a report needs at least one visualization".into(),
        ));
    }
    let (w, h) = input.paper.points();
    let mut f = Flow::new(w, h, fonts.clone());
    summary_page(&mut f, input, w);
    for item in &input.items {
        procedure_section(&mut f, input, item);
    }
    if input.items.len() > 1 {
        comparison_page(&mut f, input);
    }
    closing(&mut f, input);
    let reference = input.reference.clone();
    let date = input.date.clone();
    let footer = move |i: usize, n: usize| {
        format!("Afterview consultation summary · ref {reference} · {date} · page {i} of {n}")
    };
    f.finish(&footer, "Consultation summary")
}

/// The first page: title, procedures, patient and clinic fields, notes, the simulation notice.
fn summary_page(f: &mut Flow, input: &ReportInput, w: f32) {
    f.push(Op::Rect {
        x: 0.0,
        y: 0.0,
        w,
        h: 6.0,
        color: ACCENT,
    });
    f.paragraph("Consultation summary", 22.0, true, INK);
    let names: Vec<&str> = input
        .items
        .iter()
        .map(|i| i.procedure.name.as_str())
        .collect();
    f.paragraph(
        &format!("Simulated results: {}", names.join(", ")),
        11.0,
        false,
        MUTED,
    );
    f.space(8.0);
    let p = &input.patient;
    let fields: Vec<(&str, &Option<String>)> = vec![
        ("Patient", &p.name),
        ("Date of birth", &p.date_of_birth),
        ("Clinic", &p.clinic),
        ("Surgeon", &p.surgeon),
    ];
    // One line each (however long it wraps): a name of 150 line breaks would make a row
    // taller than the page, and a table row never splits across pages.
    let mut rows: Vec<Vec<String>> = fields
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().filter(|s| !s.trim().is_empty()).map(|v| {
                vec![
                    (*k).to_owned(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                ]
            })
        })
        .collect();
    rows.push(vec!["Date".into(), input.date.clone()]);
    rows.push(vec!["Reference".into(), input.reference.clone()]);
    f.table(&["", ""], &rows, &[0.28, 0.72], &[false, false], false);
    if let Some(notes) = p.notes.as_ref().filter(|n| !n.trim().is_empty()) {
        f.heading("Goals and notes", 13.0);
        f.paragraph(notes, 10.0, false, INK);
    }
    f.space(6.0);
    f.paragraph(
        "The pictures in this document are simulations made to support the conversation with your surgeon. They are not a \
         guarantee or a prediction of your result.",
        9.0,
        false,
        MUTED,
    );
}

/// One procedure: before/after, what it is, recovery and risks, costs.
fn procedure_section(f: &mut Flow, input: &ReportInput, item: &ReportItem) {
    f.new_page();
    let pr = &item.procedure;
    f.heading(&pr.name, 17.0);
    let engine = if item.engine == "gemini" {
        "AI image editing (Gemini), blended into the treated region"
    } else {
        "local deformation of the photo"
    };
    f.paragraph(
        &format!("Simulation: {} intensity, {engine}.", item.intensity),
        9.0,
        false,
        MUTED,
    );
    f.space(6.0);
    pictures(
        f,
        &[
            ("Before", &*item.before),
            ("SIMULATION — not a guarantee", &*item.after),
        ],
        220.0,
    );
    f.paragraph(&pr.description, 10.0, false, INK);
    f.space(4.0);
    f.paragraph(
        &format!(
            "Typical operating time {}; {} anesthesia; {}.",
            pr.duration, pr.anesthesia_type, pr.setting
        ),
        9.5,
        false,
        MUTED,
    );
    f.space(4.0);
    let mut recovery = vec![format!(
        "Downtime {}; final result after {}.",
        pr.recovery.downtime, pr.recovery.final_result
    )];
    recovery.extend(pr.recovery.timeline.iter().cloned());
    f.two_lists(("Recovery", &recovery), ("Main risks", &pr.risks), 9.0);
    if input.include_costs {
        f.heading(&format!("Estimated costs ({})", input.currency), 12.0);
        f.table(
            &["Component", "Range"],
            &cost_rows(pr, &input.currency),
            &[0.55, 0.45],
            &[false, true],
            true,
        );
        f.paragraph(&format!("Sources: {}", pr.cost_source), 7.5, false, MUTED);
    }
}

/// Every procedure side by side, with downtime and (when asked) the cost estimate.
fn comparison_page(f: &mut Flow, input: &ReportInput) {
    f.new_page();
    f.heading("Comparison", 17.0);
    // One "Before" when every result is of the same photo; otherwise each result follows the
    // photo it was made from, so no simulation is shown as another photo's outcome.
    let same = |a: &Arc<RgbImage>, b: &Arc<RgbImage>| Arc::ptr_eq(a, b) || **a == **b;
    let first = &input.items[0];
    let one_photo = input.items.iter().all(|i| same(&i.before, &first.before));
    let mut pics: Vec<(&str, &RgbImage)> = vec![];
    let mut shown: Option<&Arc<RgbImage>> = None;
    for i in &input.items {
        if shown.is_none_or(|b| !one_photo && !same(b, &i.before)) {
            pics.push(("Before", &*i.before));
            shown = Some(&i.before);
        }
        pics.push((i.procedure.name.as_str(), &*i.after));
    }
    pictures(f, &pics, 220.0);
    let rows: Vec<Vec<String>> = input
        .items
        .iter()
        .map(|i| {
            vec![
                i.procedure.name.clone(),
                i.procedure.recovery.downtime.clone(),
                range(i.procedure.costs.total(), &input.currency),
            ]
        })
        .collect();
    let header = if input.include_costs {
        ["Procedure", "Downtime", "Total estimate"]
    } else {
        ["Procedure", "Downtime", ""]
    };
    let rows = if input.include_costs {
        rows
    } else {
        rows.into_iter()
            .map(|mut r| {
                r[2].clear();
                r
            })
            .collect()
    };
    f.table(
        &header,
        &rows,
        &[0.4, 0.25, 0.35],
        &[false, false, true],
        false,
    );
}

/// The disclaimers and the confidentiality line.
fn closing(f: &mut Flow, input: &ReportInput) {
    f.heading("Important information", 13.0);
    f.paragraph(DISCLAIMER, 9.0, false, INK);
    if input.include_costs {
        f.space(4.0);
        f.paragraph(&input.cost_disclaimer, 8.5, false, MUTED);
    }
    f.space(6.0);
    f.paragraph(
        "Confidential — contains protected health information.",
        8.5,
        true,
        MUTED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::width;

    /// Nine pictures in a row (a photo and eight results): every caption stays within its
    /// picture's column, so no two run into each other.
    #[test]
    fn captions_of_many_pictures_do_not_overlap() {
        let mut f = Flow::new(612.0, 792.0, Fonts::bundled());
        let img = RgbImage::from_pixel(410, 500, image::Rgb([200, 150, 120]));
        let names = [
            "Before",
            "Rhinoplasty",
            "Blepharoplasty",
            "Lip augmentation",
            "Chin augmentation",
            "Facelift",
            "Brow lift",
            "Otoplasty",
            "Skin resurfacing",
        ];
        let pics: Vec<(&str, &RgbImage)> = names.iter().map(|n| (*n, &img)).collect();
        pictures(&mut f, &pics, 200.0);
        let mut spans: Vec<(f32, f32, f32)> = f.pages[0]
            .iter()
            .filter_map(|op| match op {
                Op::Text {
                    x, y, size, text, ..
                } => Some((*y, *x, *x + width(text, *size, true))),
                _ => None,
            })
            .collect();
        assert!(spans.len() >= names.len());
        spans.sort_by(|a, b| (a.0, a.1).partial_cmp(&(b.0, b.1)).unwrap());
        for pair in spans.windows(2) {
            let ((y0, _, end), (y1, start, _)) = (pair[0], pair[1]);
            if y0 == y1 {
                assert!(end <= start + 0.01, "captions overlap: {spans:?}");
            }
        }
    }

    #[test]
    fn a_very_thin_picture_is_embedded() {
        for (w, h) in [(3000, 3), (3, 3000), (1, 1)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([200, 150, 120]));
            let back = image::load_from_memory(&jpeg(&img)).unwrap();
            assert!(back.width() >= 1 && back.height() >= 1, "{w}x{h}");
        }
    }
}
