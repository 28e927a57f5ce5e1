//! Reports read back with poppler (`pdfinfo`, `pdftotext`, `pdfimages`), and the infographic in
//! both formats.

use std::process::Command;
use std::sync::Arc;

use afterview_core::catalog::Catalog;
use afterview_reports::infographic::DEFAULT_COLORS;
use afterview_reports::{
    InfographicInput, Paper, Patient, ReportInput, ReportItem, infographic_png, infographic_svg,
    render_report,
};
use image::RgbImage;

fn photo(seed: u8) -> Arc<RgbImage> {
    Arc::new(RgbImage::from_fn(512, 600, |x, y| {
        image::Rgb([(x / 2) as u8 ^ seed, (y / 3) as u8, 150])
    }))
}

pub fn input(procs: &[&str], paper: Paper, include_costs: bool) -> ReportInput {
    let c = Catalog::builtin();
    ReportInput {
        reference: "AV-12345678".into(),
        date: "2026-11-29".into(),
        paper,
        patient: Patient {
            name: Some("Jane Q. Patient".into()),
            date_of_birth: Some("1980-04-02".into()),
            clinic: Some("Lakeside Aesthetic Clinic".into()),
            surgeon: Some("Dr. A. Surgeon, MD".into()),
            notes: Some("Wants a subtle change; worried about downtime.".into()),
        },
        include_costs,
        currency: c.currency.clone(),
        cost_disclaimer: c.disclaimer.clone(),
        items: procs
            .iter()
            .enumerate()
            .map(|(i, p)| ReportItem {
                procedure: c.get(p).unwrap().clone(),
                intensity: "moderate".into(),
                engine: "local".into(),
                before: photo(0),
                after: photo(i as u8 + 1),
                visualization_id: format!("viz-{i}"),
            })
            .collect(),
    }
}

fn poppler(tool: &str, pdf: &[u8], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new(tool)
        .args(extra)
        .arg(&path)
        .args(if tool == "pdftotext" {
            vec!["-"]
        } else {
            vec![]
        })
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is needed for this test (apt-get install poppler-utils): {e}")
        });
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text on a Letter report's first page, only what lies on its paper (612 x 792 pt).
fn letter_first_page(pdf: &[u8]) -> String {
    poppler(
        "pdftotext",
        pdf,
        &[
            "-f", "1", "-l", "1", "-x", "0", "-y", "0", "-W", "612", "-H", "792",
        ],
    )
}

fn pages(pdf: &[u8]) -> usize {
    poppler("pdfinfo", pdf, &[])
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_three_procedure_report_holds_everything_a_patient_takes_home() {
    let pdf = render_report(&input(
        &["rhinoplasty", "blepharoplasty", "facelift"],
        Paper::Letter,
        true,
    ))
    .unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let n = pages(&pdf);
    assert!(
        (5..=8).contains(&n),
        "cover + 3 procedures + comparison/disclaimer: {n} pages"
    );
    let text = poppler("pdftotext", &pdf, &["-layout"]);
    for needle in [
        "Consultation summary",
        "Jane Q. Patient",
        "Lakeside Aesthetic Clinic",
        "Dr. A. Surgeon, MD",
        "1980-04-02",
        "Rhinoplasty",
        "Blepharoplasty",
        "Facelift",
        "Comparison",
        "$6,550 – $12,200",
        "$9,400 – $16,600",
        "not a guarantee",
        "Confidential",
        "Main risks",
        "Recovery",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert_eq!(
        text.matches("ref AV-12345678").count(),
        n,
        "reference on every page"
    );
    assert!(text.contains(&format!("page {n} of {n}")));
    let images = poppler("pdfimages", &pdf, &["-list"]);
    let embedded = images.lines().skip(2).count();
    assert!(
        embedded >= 3 * 2 + 4,
        "before/after per procedure and the comparison strip: {embedded}\n{images}"
    );
    assert!(
        !text.contains("DejaVuSans"),
        "no font name leaks into the text"
    );
    let fonts = poppler("pdffonts", &pdf, &[]);
    assert!(
        fonts.contains("DejaVuSans") && fonts.lines().skip(2).all(|l| l.contains(" yes ")),
        "fonts embedded:\n{fonts}"
    );
}

#[test]
fn paper_sizes_and_optional_sections() {
    let a4 = render_report(&input(&["otoplasty"], Paper::A4, false)).unwrap();
    let info = poppler("pdfinfo", &a4, &[]);
    assert!(info.contains("595.28 x 841.89"), "{info}");
    let text = poppler("pdftotext", &a4, &[]);
    assert!(
        !text.contains("Estimated costs") && !text.contains("Comparison"),
        "no costs, single procedure"
    );
    assert!(text.contains("Otoplasty") && text.contains("not a guarantee"));
    let letter = render_report(&input(&["otoplasty"], Paper::Letter, true)).unwrap();
    assert!(poppler("pdfinfo", &letter, &[]).contains("612 x 792"));
    let mut bare = input(&["otoplasty"], Paper::Letter, true);
    bare.patient = Patient::default();
    let text = poppler("pdftotext", &render_report(&bare).unwrap(), &[]);
    assert!(
        !text.contains("Patient") || !text.contains("Date of birth"),
        "absent fields are not printed"
    );
    assert!(render_report(&input(&[], Paper::Letter, true)).is_err());
}

fn infographic(ids: &[&str]) -> InfographicInput {
    let c = Catalog::builtin();
    InfographicInput {
        procedures: ids.iter().map(|i| c.get(i).unwrap().clone()).collect(),
        currency: "USD".into(),
        colors: DEFAULT_COLORS.map(String::from),
    }
}

#[test]
fn the_infographic_labels_components_totals_and_currency() {
    let svg = infographic_svg(&infographic(&[
        "rhinoplasty",
        "lip-augmentation",
        "facelift",
    ]))
    .unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for needle in [
        "Estimated cost breakdown",
        "USD",
        "Surgeon",
        "Anesthesia",
        "Facility",
        "Other",
        "Rhinoplasty",
        "Lip augmentation",
        "Facelift",
        "Total $6,550 – $12,200",
        "not a guarantee",
    ] {
        assert!(svg.contains(needle), "{needle:?} missing");
    }
    assert!(svg.contains("fill=\"#2e5a88\""));
    let png = infographic_png(&infographic(&[
        "rhinoplasty",
        "lip-augmentation",
        "facelift",
    ]))
    .unwrap();
    let img = image::load_from_memory(&png).unwrap().into_rgb8();
    assert_eq!(img.width(), 1000);
    assert!(img.height() > 450 && img.height() < 900, "{}", img.height());
    let colored = img.pixels().filter(|p| p.0 == [0x2e, 0x5a, 0x88]).count();
    assert!(colored > 1000, "the surgeon segments are drawn: {colored}");
    let mut custom = infographic(&["rhinoplasty"]);
    custom.colors[0] = "#ff0000".into();
    let img = image::load_from_memory(&infographic_png(&custom).unwrap())
        .unwrap()
        .into_rgb8();
    assert!(
        img.pixels().any(|p| p.0 == [255, 0, 0]),
        "colours are configurable"
    );
    custom.colors[1] = "blue".into();
    assert!(infographic_svg(&custom).is_err());
}

#[test]
fn long_patient_fields_wrap_inside_the_page_and_control_characters_are_dropped() {
    let mut r = input(&["otoplasty"], Paper::Letter, false);
    let name = "W".repeat(150);
    let clinic: String = (0..30).map(|i| format!("Clinic{i:02} ")).collect();
    r.patient.name = Some(name);
    r.patient.clinic = Some(clinic);
    r.patient.notes = None;
    r.patient.surgeon = Some("Dr.\u{0}\u{0} Null\u{202E}Reversed\u{1b}[31m".into());
    let pdf = render_report(&r).unwrap();
    let text = letter_first_page(&pdf);
    assert_eq!(
        text.chars().filter(|&c| c == 'W').count(),
        150,
        "the whole name is on the page: {text}"
    );
    for i in 0..30 {
        assert!(
            text.contains(&format!("Clinic{i:02}")),
            "Clinic{i:02} on the page: {text}"
        );
    }
    assert!(text.contains("Dr. NullReversed[31m"), "{text}");
    assert!(!text.contains('\u{0}') && !text.contains('\u{202E}') && !text.contains('\u{1b}'));
}

/// Line breaks in a one-line field (a name pasted from a form) do not push the table's last
/// rows off the paper: the date and the reference are still on the first page.
#[test]
fn line_breaks_in_one_line_fields_keep_the_table_on_the_page() {
    let mut r = input(&["otoplasty"], Paper::Letter, false);
    r.patient.name = Some(format!("Ann{}Lee", "\n".repeat(150)));
    r.patient.clinic = Some("North\r\n\tClinic".into());
    let pdf = render_report(&r).unwrap();
    let text = letter_first_page(&pdf);
    assert!(text.contains("Ann Lee"), "{text}");
    assert!(text.contains("North Clinic"), "{text}");
    assert!(text.contains("Reference"), "{text}");
    assert!(text.contains(&r.reference), "{text}");
}

/// Results of two photos (an export may mix them): the comparison shows each result after the
/// photo it was made from, never one photo's result as another's outcome.
#[test]
fn a_comparison_of_two_photos_shows_each_before() {
    let strip = |r: &ReportInput| -> usize {
        let pdf = render_report(r).unwrap();
        let page = (1..=pages(&pdf))
            .find(|p| {
                let p = p.to_string();
                poppler("pdftotext", &pdf, &["-f", &p, "-l", &p]).contains("Comparison")
            })
            .expect("a comparison page");
        let p = page.to_string();
        let list = poppler("pdfimages", &pdf, &["-list", "-f", &p, "-l", &p]);
        list.lines().skip(2).count()
    };
    let mut r = input(&["rhinoplasty", "facelift"], Paper::Letter, false);
    assert_eq!(strip(&r), 3, "one photo: before and two results");
    r.items[1].before = photo(9);
    assert_eq!(strip(&r), 4, "two photos: each before and its result");
}

/// A CJK face on this machine: Debian's `fonts-droid-fallback` (what `scripts/test.sh`
/// installs), else `fonts-noto-cjk`'s.
fn cjk_face() -> (String, Vec<u8>) {
    let paths = [
        "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    ];
    let path = paths
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("this test needs a CJK font: apt-get install fonts-droid-fallback")
        });
    ((*path).to_owned(), std::fs::read(path).unwrap())
}

/// A Chinese or Japanese name prints in the fallback face (embedded, extractable,
/// wrapped inside the page); without one it would be boxes, which `missing` counts. Text the
/// bundled faces cover never uses the fallback.
#[test]
fn names_in_scripts_dejavu_lacks_print_in_a_fallback_face() {
    let (path, bytes) = cjk_face();
    let fonts = afterview_reports::Fonts::bundled()
        .with_fallback(&path, bytes)
        .unwrap();
    let mut i = input(&["rhinoplasty"], Paper::A4, false);
    i.patient.name = Some("王小明 (Wang Xiaoming)".into());
    i.patient.clinic = Some("東京美容クリニック".into());
    i.patient.notes = Some("鼻を少し細くしたいです。".repeat(30));
    let bundled_only = afterview_reports::Fonts::bundled();
    assert_eq!(bundled_only.missing(i.patient.name.as_ref().unwrap()), 3);
    assert_eq!(fonts.missing(i.patient.name.as_ref().unwrap()), 0);

    let pdf = afterview_reports::render_report_with(&i, &fonts).unwrap();
    let listed = poppler("pdffonts", &pdf, &[]);
    assert!(
        listed.contains("DejaVuSans") && listed.to_lowercase().contains("droid")
            || listed.contains("NotoSansCJK"),
        "the fallback face is embedded:\n{listed}"
    );
    let text = poppler("pdftotext", &pdf, &[]);
    for needle in [
        "王小明 (Wang Xiaoming)",
        "東京美容クリニック",
        "鼻を少し細くしたいです。",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // The long notes, one sentence 30 times without a space, wrap inside the page: every
    // line of the first page's text lies within its width (A4, 595 pt).
    let bbox = poppler("pdftotext", &pdf, &["-bbox", "-f", "1", "-l", "1"]);
    let right_edges: Vec<f32> = bbox
        .lines()
        .filter_map(|l| l.split("xMax=\"").nth(1))
        .filter_map(|r| r.split('"').next()?.parse().ok())
        .collect();
    assert!(!right_edges.is_empty(), "{bbox}");
    assert!(
        right_edges.iter().all(|&x| x <= 595.28 - 40.0),
        "text runs off the page: {right_edges:?}"
    );

    // Latin text alone: the fallback is never used, so never embedded.
    let latin =
        afterview_reports::render_report_with(&input(&["rhinoplasty"], Paper::A4, false), &fonts)
            .unwrap();
    let listed = poppler("pdffonts", &latin, &[]).to_lowercase();
    assert!(
        !listed.contains("droid") && !listed.contains("cjk"),
        "{listed}"
    );
}
